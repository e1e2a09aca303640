"""The one default tolerance of the iterative solvers (power iteration, Lanczos, curvature).

A solver stops a sample when its eigen-residual satisfies ‖Av − θv‖ ≤ tol·|θ|
(the Ritz residual for Lanczos). For symmetric A this puts an eigenvalue within
tol·|θ| of θ, so σ = √θ of a Gram operator is then within tol/2 relative.
The values are a few hundred ulps above what JVP/VJP rounding lets the residual reach.
"""

from __future__ import annotations

from robaudit.kinds import TOL_FLOAT32, TOL_FLOAT64, default_tol  # noqa: F401  (one definition, torch-free)
