"""Local geometry of a classifier around its data: engines for the linearity, cross-section and
decision-cell analyses (pure torch; the plug-ins in :mod:`robaudit.analyses` wire them to the CLI).

* :mod:`robaudit.geometry.linearity`: deviation from local linearity along random and adversarial
  directions, σ_max along the same paths, and the per-sample linearity radius (Roth et al. 2019, Sec. 5.3).
* :mod:`robaudit.geometry.cross_section`: the predicted class over a 2-D plane through a sample,
  and the distance to the nearest boundary in that plane (Hoffman et al. 2019, Fig. 1, App. A).
* :mod:`robaudit.geometry.cells`: distances to the decision boundary (sphere search, line search,
  minimal adversarial, certified).
* :mod:`robaudit.geometry.common`: named-layer features, unit directions, chunked forwards.
"""
