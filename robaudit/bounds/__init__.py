"""Per-layer spectral norms and upper bounds, and the global Lipschitz bound (AutoLip).

Usage as a library::

    from robaudit.bounds import conv_bounds, lipschitz_bound, RuleOptions

    b = conv_bounds(model.conv1, (3, 32, 32))      # operator_norm, circular_exact, singla_bound, gram_bound, …
    gb = lipschitz_bound(model, x)                 # gb.lipschitz_upper, gb.layers (per-layer table)

* :mod:`robaudit.bounds.conv`: conv/linear numbers (power iteration, Sedghi, Singla, Gram iteration).
* :mod:`robaudit.bounds.rules`: registry module type → per-layer Lipschitz bound.
* :mod:`robaudit.bounds.graph`: composition over the torch.fx graph.
"""

from __future__ import annotations

from robaudit.bounds.conv import (ConvBounds, ConvGeometry, circular_norm, conv_bounds, fantastic_four,
                                  gram_blocks, gram_iteration, heuristic, linear_norm, operator_norm)
from robaudit.bounds.graph import GraphBound, LayerRecord, lipschitz_bound, preserved
from robaudit.bounds.rules import RULES, LayerBound, RuleOptions, bound_module, has_rule

__all__ = [
    "ConvBounds", "ConvGeometry", "circular_norm", "conv_bounds", "fantastic_four", "gram_blocks", "gram_iteration",
    "heuristic", "linear_norm", "operator_norm", "GraphBound", "LayerRecord", "lipschitz_bound", "preserved",
    "RULES", "LayerBound", "RuleOptions", "bound_module", "has_rule",
]
