"""Per-layer spectral norms and upper bounds, and the global Lipschitz bound (AutoLip).

Usage as a library::

    from robaudit.bounds import conv_bounds, lipschitz_bound, RuleOptions

    b = conv_bounds(model.conv1, (3, 32, 32))      # operator_norm, circular_exact, singla_bound, gram_bound, …
    gb = lipschitz_bound(model, x)                 # gb.lipschitz_upper, gb.layers (per-layer table)

One idea per module:

* :mod:`~robaudit.bounds.geometry`: a convolution's geometry (padding, stride, dilation, groups).
* :mod:`~robaudit.bounds.fourier`: Sedghi's exact circular norm, polyphase for strides, warm starts.
* :mod:`~robaudit.bounds.reshape`: Singla & Feizi's reshape bounds, Miyato's heuristic.
* :mod:`~robaudit.bounds.gram`: Gram iteration (Delattre et al. 2023).
* :mod:`~robaudit.bounds.opnorm`: σ_max of the real layer by Lanczos through conv / conv_transpose.
* :mod:`~robaudit.bounds.conv`: the assembly into a frozen ``ConvBounds``; the tightest-bound rule.
* :mod:`~robaudit.bounds.rules`: registry module type → per-layer bound.
* :mod:`~robaudit.bounds.trace`, :mod:`~robaudit.bounds.ops`, :mod:`~robaudit.bounds.compose`,
  :mod:`~robaudit.bounds.sequential`: the graph: tracer and shape recorder, the op registry,
  the composer (AutoLip, BN fusion) and the nn.Sequential fallback.
"""

from __future__ import annotations

from robaudit.bounds.conv import ConvBounds, conv_bounds, kernel_bounds, linear_norm, tightest
from robaudit.bounds.fourier import block_max_eig, circular_norm, gram_blocks
from robaudit.bounds.geometry import ConvGeometry
from robaudit.bounds.gram import gram_iteration
from robaudit.bounds.opnorm import NormEstimate, operator_norms
from robaudit.bounds.reshape import fantastic_four, heuristic

__all__ = [
    "ConvBounds", "ConvGeometry", "circular_norm", "conv_bounds", "kernel_bounds", "fantastic_four",
    "gram_blocks", "gram_iteration", "block_max_eig", "heuristic", "linear_norm", "tightest", "NormEstimate",
    "operator_norms", "GraphBound", "LayerRecord", "lipschitz_bound", "RULES", "LayerBound", "RuleOptions",
    "bound_module", "has_rule",
]


def __getattr__(name: str):
    # The graph half imports torch.fx: load it on first use only.
    if name in ("GraphBound", "LayerRecord", "lipschitz_bound"):
        from robaudit.bounds import compose

        return getattr(compose, name)
    if name in ("RULES", "LayerBound", "RuleOptions", "bound_module", "has_rule"):
        from robaudit.bounds import rules

        return getattr(rules, name)
    raise AttributeError(f"module 'robaudit.bounds' has no attribute {name!r}")
