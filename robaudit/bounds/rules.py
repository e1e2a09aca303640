"""Layer rules: module type → per-layer ℓ2 Lipschitz upper bound (and the exact value when known).

An explicit registry (type → rule), looked up by exact type or by a base
class whose ``forward`` the subclass does not override, so a subclass that
changes the computation never silently inherits a rule. Every rule returns a
:class:`LayerBound`; ``upper=None`` means "no valid bound" and carries the
reason. :func:`bound_module` never raises for a missing rule: the graph pass
collects every unsupported layer and reports them all at once.

Constants (all global Lipschitz constants w.r.t. ℓ2, sup of the Jacobian norm):

* Linear: ‖W‖₂; Conv1d/Conv2d: see :mod:`robaudit.bounds.conv`.
* BatchNorm (eval, running statistics): max_c |γ_c / √(var_c + ε)| (exact).
* Activations: sup |σ'| (ReLU 1, LeakyReLU max(1,|a|), ELU max(1,|α|),
  SELU λ·max(1,α), GELU 1.12891, SiLU 1.09984, Mish 1.08850, Hardswish 1.5,
  Sigmoid 1/4, Hardsigmoid 1/6, Softmax 1/2, LogSoftmax √n ...).
* Max pooling: √(max number of windows containing one input pixel) (exact:
  a pixel that wins every window it is in attains it). Average pooling: the
  exact norm ∏_d ‖A_d‖₂ of its separable averaging matrices, probed from
  torch's own pooling so padding, ceil_mode and count_include_pad match.
* Flatten, Unflatten, Identity, Dropout (eval), zero padding: 1.
* Callers add rules for their own wrapper modules (``rules=`` of :func:`bound_module`): the
  engine knows nothing of robaudit's model wrappers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robaudit.bounds.conv import Circular, circular, kernel_bounds, linear_norm, warm_start
from robaudit.bounds.geometry import ConvGeometry
from robaudit.bounds.opnorm import ConvMap, LinearMap, NormEstimate, operator_norms


# Residual tolerance of the per-layer operator norm: σ then lies within 5e-4 (relative) of a singular value,
# 20× closer than a plain power iteration stopped on a 1e-4 step change gets on resnet18 (see benchmarks/).
LAYER_TOL = 1e-3


@dataclass(frozen=True)
class RuleOptions:
    """Numerical settings shared by the rules.

    Attributes:
        iters, tol: Lanczos cap and residual tolerance ‖AᵀAv − θv‖ ≤ tol·θ for ``operator_norm``
            (iters 0: skip it; tol None: the solvers' default for ``dtype``, see :mod:`robaudit.linalg.tol`).
        gram: also run the Gram iteration (it never beats the exact circular value).
        gram_iters, gram_tol: Gram-iteration cap and target tightness.
        dtype: computation dtype for weights; upper bounds carry the rounding slack of this dtype.
        seed: seed of the random part of the start vectors.
    """

    iters: int = 100
    tol: float | None = LAYER_TOL
    gram: bool = False
    gram_iters: int = 12
    gram_tol: float = 5e-3
    dtype: torch.dtype = torch.float32
    seed: int = 0

    @property
    def residual_tol(self) -> float:
        from robaudit.linalg.tol import default_tol

        return default_tol(self.dtype) if self.tol is None else self.tol


@dataclass
class PowerJob:
    """A pending operator-norm computation; jobs of one graph run in shape-batched Lanczos calls."""

    map: ConvMap | LinearMap
    warm: torch.Tensor | None


@dataclass
class LayerBound:
    """What a rule says about one layer on one input shape.

    Attributes:
        upper: a valid global ℓ2 Lipschitz upper bound, or None (unbounded / no rule).
        exact: the exact constant when known (None otherwise).
        kind: conv | linear | batchnorm | activation | pool | reshape | normalize | pad | unbounded.
        method: one line on how ``upper`` was obtained.
        info: JSON-safe extras (conv/linear numbers).
        reason: why ``upper`` is None.
        job: the operator-norm computation still to run (see :func:`run_power`), or None.
        linear: for conv/linear layers, (weight, geometry or None): what BatchNorm fusion needs.
        circular: a conv's :class:`Circular` (its Gram blocks), kept only until a following BatchNorm
            has been fused with it (the composer drops it; the blocks are large).
        fused_with: BatchNorm name → the bound of this layer with that BatchNorm folded in, when it was
            computed ahead of the composition (:meth:`robaudit.bounds.compose.Composer.prefetch`).
    """

    upper: float | None
    exact: float | None
    kind: str
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    job: PowerJob | None = field(default=None, repr=False)
    linear: tuple[torch.Tensor, ConvGeometry | None] | None = field(default=None, repr=False)
    circular: Circular | None = field(default=None, repr=False, compare=False)
    fused_with: dict[str, float] = field(default_factory=dict, repr=False, compare=False)


Rule = Callable[[nn.Module, tuple, tuple, RuleOptions], LayerBound]
RULES: dict[type, Rule] = {}
# Types that are known to have no global Lipschitz constant, with the reason.
UNBOUNDED: dict[type, str] = {}


def register(*types: type) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        for t in types:
            RULES[t] = rule
        return rule
    return deco


def constant(kind: str, value: float, method: str) -> LayerBound:
    return LayerBound(upper=value, exact=value, kind=kind, method=method)


def unbounded(reason: str) -> LayerBound:
    return LayerBound(upper=None, exact=None, kind="unbounded", method="none", reason=reason)


# ---------------------------------------------------------------------------
# Linear maps


def conv_layer(weight: torch.Tensor, geom: ConvGeometry, in_shape: Sequence[int], opts: RuleOptions) -> LayerBound:
    """Bound of a convolution given by what it computes: kernel and geometry (module or ``F.conv2d`` call).

    The operator norm is left as a :class:`PowerJob` (the graph batches them); :func:`run_power` runs it.
    """
    w = weight.detach().to(opts.dtype)
    circ = circular(w, geom)
    b = kernel_bounds(w, geom, gram=opts.gram, gram_iters=opts.gram_iters, gram_tol=opts.gram_tol, circ=circ)
    job = PowerJob(ConvMap(w, geom, tuple(int(s) for s in in_shape)), warm_start(w, geom, circ)) \
        if opts.iters > 0 else None
    method = "min(circular_exact, strided, singla" + (", gram)" if opts.gram else ")")
    return LayerBound(upper=b.upper, exact=b.circular_exact if b.circular_is_exact else None, kind="conv",
                      method=method, info=b.as_dict(), job=job, linear=(w, geom), circular=circ)


def linear_layer(weight: torch.Tensor, opts: RuleOptions) -> LayerBound:
    """Bound of x ↦ Wx: the exact ‖W‖₂; the operator norm (a cross-check) is left as a PowerJob."""
    w = weight.detach().to(opts.dtype)
    exact = linear_norm(w)
    info: dict[str, Any] = {"exact": exact, "operator_norm": None, "iterations": None, "converged": None}
    job = PowerJob(LinearMap(w), None) if opts.iters > 0 else None
    return LayerBound(upper=exact, exact=exact, kind="linear", method="‖W‖₂", info=info, job=job,
                      linear=(w, None))


def apply_power(bound: LayerBound, est: NormEstimate) -> None:
    """Write an operator-norm estimate into a bound's info (conv or linear)."""
    info = bound.info
    info.update(operator_norm=est.value, iterations=est.iterations, converged=est.converged,
                residual=est.residual, error_bound=est.error_bound)
    op = est.value
    if bound.kind == "linear":
        info["ratios"] = {"exact": info["exact"] / op if op else None}
    else:
        info["ratios"] = {key: (info.get(key) / op if op and info.get(key) is not None else None)
                          for key in ("circular_exact", "singla_bound", "gram_bound", "heuristic", "strided_exact")}
        gram, circ = info.get("gram_bound"), info.get("circular_exact")
        info["ratios"]["gram_over_circular"] = gram / circ if gram is not None and circ else None
    bound.job = None


def run_power(bounds: Sequence[LayerBound], opts: RuleOptions) -> None:
    """Run the pending operator-norm jobs of ``bounds``, layers of equal shapes in one batch."""
    pending = [b for b in bounds if b.job is not None]
    if not pending:
        return
    ests = operator_norms([b.job.map for b in pending], warm=[b.job.warm for b in pending],
                          iters=opts.iters, tol=opts.residual_tol, seed=opts.seed)
    for b, est in zip(pending, ests):
        apply_power(b, est)


@register(nn.Conv1d, nn.Conv2d)
def _conv(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    return conv_layer(module.weight, ConvGeometry.of(module, in_shape), in_shape, opts)


@register(nn.Linear)
def _linear(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    return linear_layer(module.weight, opts)


def batchnorm_scale(module: nn.Module) -> torch.Tensor | None:
    """Per-channel γ/√(var+ε) of a BatchNorm in eval mode with running stats, else None."""
    if module.training or module.running_var is None:
        return None
    scale = 1.0 / torch.sqrt(module.running_var.detach().double() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().double()
    return scale


#: Rules that are pure functions of (module, shapes, options) and dear enough to run on a thread of their own
#: (:meth:`robaudit.bounds.compose.Composer.prefetch`).
PARALLEL_RULES = frozenset({_conv, _linear})


def power_key(module: nn.Module, in_shape: Sequence[int], opts: RuleOptions) -> tuple | None:
    """The batching key (:attr:`ConvMap.key` / :attr:`LinearMap.key`) of the operator-norm job that the conv or
    linear rule will leave for ``module`` on ``in_shape``, known before the rule runs; None for other modules."""
    rule, weight = rule_for(module), getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or opts.iters <= 0:
        return None
    if rule is _conv:
        return ConvMap.key_for(weight.shape, ConvGeometry.of(module, in_shape), in_shape, opts.dtype, weight.device)
    if rule is _linear:
        return LinearMap.key_for(weight.shape, opts.dtype, weight.device)
    return None


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batchnorm(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    scale = batchnorm_scale(module)
    if scale is None:
        why = "training mode" if module.training else "no running statistics (track_running_stats=False)"
        return unbounded(f"BatchNorm uses batch statistics ({why}): not a fixed per-sample map")
    v = float(scale.abs().max())
    return constant("batchnorm", v, "max|γ/√(var+ε)|")


# ---------------------------------------------------------------------------
# Activations: sup |σ'| (computed on a fine grid and rounded up; see tests)

GELU_ERF = 1.1289041452  # Φ(√2) + √2 φ(√2)
GELU_TANH = 1.1289930687
SILU = 1.0998393202
MISH = 1.0884981613
SELU = 1.0507009873554805 * 1.6732632423543772

ACTIVATIONS: dict[type, Callable[[nn.Module], float]] = {
    nn.ReLU: lambda m: 1.0,
    nn.ReLU6: lambda m: 1.0,
    nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    nn.PReLU: lambda m: max(1.0, float(m.weight.detach().abs().max())),
    nn.RReLU: lambda m: max(1.0, abs(m.lower), abs(m.upper)),
    nn.ELU: lambda m: max(1.0, abs(m.alpha)),
    nn.CELU: lambda m: 1.0,
    nn.SELU: lambda m: SELU,
    nn.GELU: lambda m: GELU_TANH if m.approximate == "tanh" else GELU_ERF,
    nn.SiLU: lambda m: SILU,
    nn.Mish: lambda m: MISH,
    nn.Hardswish: lambda m: 1.5,
    nn.Hardsigmoid: lambda m: 1.0 / 6.0,
    nn.Hardtanh: lambda m: 1.0,
    nn.Sigmoid: lambda m: 0.25,
    nn.Tanh: lambda m: 1.0,
    nn.Softplus: lambda m: 1.0,
    nn.Softsign: lambda m: 1.0,
    nn.Tanhshrink: lambda m: 1.0,
    nn.Softshrink: lambda m: 1.0,
    nn.LogSigmoid: lambda m: 1.0,
    nn.Softmax: lambda m: 0.5,  # J = diag(p) − ppᵀ: vᵀJv is a variance of values with Σv²=1, ≤ 1/2
    nn.Softmin: lambda m: 0.5,
}


def _activation(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    value = ACTIVATIONS[_rule_type(module, ACTIVATIONS)](module)
    return constant("activation", value, f"sup|{type(module).__name__}'|")


for _t in ACTIVATIONS:
    RULES[_t] = _activation


@register(nn.LogSoftmax)
def _log_softmax(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    # J = I − 1pᵀ per slice, an oblique projection with norm ‖1‖·‖p‖ < √n (sup as p → a vertex).
    dim = module.dim if module.dim is not None else 1
    n = in_shape[dim] if dim < 0 else in_shape[dim - 1]  # in_shape excludes the batch dim
    return LayerBound(upper=math.sqrt(n), exact=math.sqrt(n), kind="activation", method="√n (I − 1pᵀ)")


for _t, _why in ((nn.Threshold, "discontinuous"), (nn.Hardshrink, "discontinuous"),
                 (nn.LayerNorm, "divides by the input's own standard deviation: not globally Lipschitz"),
                 (nn.GroupNorm, "divides by the input's own standard deviation: not globally Lipschitz"),
                 (nn.InstanceNorm1d, "divides by the input's own standard deviation: not globally Lipschitz"),
                 (nn.InstanceNorm2d, "divides by the input's own standard deviation: not globally Lipschitz"),
                 (nn.LocalResponseNorm, "divides by a function of the input: not globally Lipschitz"),
                 (nn.MultiheadAttention, "dot-product attention is not globally Lipschitz"),
                 (nn.Bilinear, "bilinear in its input: not globally Lipschitz")):
    UNBOUNDED[_t] = _why


# ---------------------------------------------------------------------------
# Shape-only and identity-like layers


@register(nn.Identity, nn.Flatten, nn.Unflatten)
def _identity(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    return constant("reshape", 1.0, "isometry")


@register(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
def _dropout(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    if module.training:
        return unbounded("Dropout in training mode is random: put the model in eval mode")
    return constant("reshape", 1.0, "identity in eval mode")


@register(nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d,
          nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d)
def _pad(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    return pad_constant(in_shape, lambda x: module(x))


def pad_constant(in_shape: Sequence[int], pad: Callable[[torch.Tensor], torch.Tensor]) -> LayerBound:
    """√(max multiplicity of an input pixel in the padded output) (exact: a copy map, PᵀP diagonal)."""
    ones = torch.ones((1, *in_shape), dtype=torch.float64, requires_grad=True)
    (counts,) = torch.autograd.grad(pad(ones).sum(), ones)
    value = math.sqrt(float(counts.max()))
    return constant("pad", value, "√(max copies of a pixel)")


# ---------------------------------------------------------------------------
# Pooling


def _tuple(v: Any, d: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * d


def window_counts(n: int, out: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> list[int]:
    """How many pooling windows contain each input position (1-D)."""
    counts = [0] * n
    for o in range(out):
        for j in range(kernel):
            i = o * stride - padding + j * dilation
            if 0 <= i < n:
                counts[i] += 1
    return counts


def adaptive_windows(n: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows [start, end) per output position."""
    return [((o * n) // out, -((-(o + 1) * n) // out)) for o in range(out)]


def max_pool_constant(in_spatial: Sequence[int], out_spatial: Sequence[int], kernel: Sequence[int],
                      stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> float:
    """Exact ℓ2 Lipschitz constant of max pooling: √(∏_d max windows per position)."""
    prod = 1
    for n, o, k, s, p, dl in zip(in_spatial, out_spatial, kernel, stride, padding, dilation):
        prod *= max(window_counts(n, o, k, s, p, dl))
    return math.sqrt(prod)


def adaptive_max_pool_constant(in_spatial: Sequence[int], out_spatial: Sequence[int]) -> float:
    prod = 1
    for n, o in zip(in_spatial, out_spatial):
        counts = [0] * n
        for a, b in adaptive_windows(n, o):
            for i in range(a, b):
                counts[i] += 1
        prod *= max(counts)
    return math.sqrt(prod)


def _probe_norm(n: int, apply_1d: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """‖A‖₂ of a 1-D pooling matrix, probed by applying the pooling to the identity basis."""
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)
    cols = apply_1d(eye).reshape(n, -1)  # row i = A e_i, i.e. Aᵀ
    return float(torch.linalg.matrix_norm(cols, ord=2))


def avg_pool_constant(in_spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
                      divisor_override: int | None) -> float:
    """Exact ‖·‖₂ of average pooling: the map is ⊗_d A_d (a divisor override scales the 0/1 windows)."""
    prod = 1.0
    for n, k, s, p in zip(in_spatial, kernel, stride, padding):
        def pool(x: torch.Tensor, k=k, s=s, p=p) -> torch.Tensor:
            return F.avg_pool1d(x, k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad) \
                if divisor_override is None else \
                F.avg_pool2d(x.unsqueeze(-1), (k, 1), (s, 1), (p, 0), ceil_mode=ceil_mode,
                             count_include_pad=count_include_pad, divisor_override=1).squeeze(-1)
        prod *= _probe_norm(n, pool)
    if divisor_override is not None:
        prod /= float(divisor_override)
    return prod


def adaptive_avg_pool_constant(in_spatial: Sequence[int], out_spatial: Sequence[int]) -> float:
    prod = 1.0
    for n, o in zip(in_spatial, out_spatial):
        prod *= _probe_norm(n, lambda x, o=o: F.adaptive_avg_pool1d(x, o))
    return prod


@register(nn.MaxPool1d, nn.MaxPool2d)
def _max_pool(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    d = 1 if isinstance(module, nn.MaxPool1d) else 2
    k = _tuple(module.kernel_size, d)
    s = _tuple(module.stride if module.stride is not None else module.kernel_size, d)
    v = max_pool_constant(in_shape[-d:], out_shape[-d:], k, s, _tuple(module.padding, d), _tuple(module.dilation, d))
    return constant("pool", v, "√(max windows per pixel)")


@register(nn.AvgPool1d, nn.AvgPool2d)
def _avg_pool(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    d = 1 if isinstance(module, nn.AvgPool1d) else 2
    k = _tuple(module.kernel_size, d)
    s = _tuple(module.stride if module.stride is not None else module.kernel_size, d)
    v = avg_pool_constant(in_shape[-d:], k, s, _tuple(module.padding, d), bool(module.ceil_mode),
                          bool(module.count_include_pad), getattr(module, "divisor_override", None))
    return constant("pool", v, "∏‖A_d‖₂ (separable averaging)")


@register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
def _adaptive_avg(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    d = 1 if isinstance(module, nn.AdaptiveAvgPool1d) else 2
    v = adaptive_avg_pool_constant(in_shape[-d:], out_shape[-d:])
    return constant("pool", v, "∏‖A_d‖₂ (separable averaging)")


@register(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
def _adaptive_max(module: nn.Module, in_shape: tuple, out_shape: tuple, opts: RuleOptions) -> LayerBound:
    d = 1 if isinstance(module, nn.AdaptiveMaxPool1d) else 2
    if getattr(module, "return_indices", False):
        return unbounded("adaptive max pooling with return_indices returns a tuple")
    return constant("pool", adaptive_max_pool_constant(in_shape[-d:], out_shape[-d:]), "√(max windows per pixel)")


# ---------------------------------------------------------------------------
# Lookup


def _rule_type(module: nn.Module, table: dict) -> type | None:
    """The registered type that applies to ``module``: its own, or a base whose forward it inherits."""
    cls = type(module)
    if cls in table:
        return cls
    for base in cls.__mro__[1:]:
        if base in table and cls.forward is base.forward:
            return base
    return None


def rule_for(module: nn.Module, rules: Mapping[type, Rule] | None = None) -> Rule | None:
    """The rule :func:`bound_module` would apply to ``module`` (None: no rule)."""
    table = rules if rules is not None else RULES
    t = _rule_type(module, table)
    return table[t] if t is not None else None


def has_rule(module: nn.Module, rules: Mapping[type, Rule] | None = None) -> bool:
    """Whether a rule (or a known 'unbounded' reason) exists for ``module``: the graph keeps it a leaf.

    ``rules`` replaces :data:`RULES` (e.g. RULES plus a caller's rules for its own wrapper modules).
    """
    return _rule_type(module, rules if rules is not None else RULES) is not None \
        or _rule_type(module, UNBOUNDED) is not None


SMALL_LAYER = 1 << 17  # input + output elements below which a rule runs on one thread


@contextlib.contextmanager
def threads_for(size: int) -> Iterator[None]:
    """One thread for small layers: their tiny LAPACK/BLAS calls gain nothing from threads, and on a
    loaded shared CPU spinning OpenMP workers make them 10-100× slower. Restored on exit."""
    threads = torch.get_num_threads()
    if size >= SMALL_LAYER or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bound_module(module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int],
                 opts: RuleOptions | None = None, *, rules: Mapping[type, Rule] | None = None,
                 defer_power: bool = False) -> LayerBound:
    """Apply the rule for ``module`` on one sample's input/output shapes (no batch dimension).

    Never raises for a missing rule: returns ``upper=None`` with the reason. With
    ``defer_power`` the operator norm stays a pending :class:`PowerJob` (see :func:`run_power`).
    """
    opts = opts or RuleOptions()
    table = rules if rules is not None else RULES
    t = _rule_type(module, table)
    if t is not None:
        with threads_for(math.prod(in_shape) + math.prod(out_shape)):
            bound = table[t](module, tuple(in_shape), tuple(out_shape), opts)
            if not defer_power:
                run_power([bound], opts)
        return bound
    t = _rule_type(module, UNBOUNDED)
    if t is not None:
        return unbounded(UNBOUNDED[t])
    return unbounded(f"no rule for {type(module).__module__}.{type(module).__qualname__}")


__all__ = ["RuleOptions", "LayerBound", "PowerJob", "conv_layer", "linear_layer", "run_power", "apply_power", "RULES", "PARALLEL_RULES", "UNBOUNDED", "rule_for", "power_key", "ACTIVATIONS", "register", "has_rule",
           "bound_module", "batchnorm_scale", "max_pool_constant", "avg_pool_constant",
           "adaptive_avg_pool_constant", "adaptive_max_pool_constant", "window_counts", "pad_constant",
           "threads_for"]
