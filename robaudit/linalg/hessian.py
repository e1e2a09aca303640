"""Input Hessians of a per-sample scalar, matrix-free (Cui et al. 2022, Sec. 3.1 and 3.4).

For each sample i, fᵢ(x) is the cross-entropy at the true label (``loss``) or
the logit margin z_y − z_t against the runner-up class t at xᵢ (``margin``).
With the model in eval mode the samples do not interact, so the Hessian of
Σᵢ fᵢ is block diagonal and one Hessian-vector product gives every Hᵢvᵢ:

* double backward: g = ∇ₓΣfᵢ is built once with ``create_graph``; then
  Hv = ∇ₓ⟨g, v⟩ is one backward pass over g's graph per product;
* forward over reverse: the JVP of x ↦ ∇ₓΣfᵢ (``torch.func``), which rebuilds
  the graph on every product.

The top-k eigenvalues largest in magnitude, with sign, come from the batched
Lanczos of :mod:`robaudit.linalg.lanczos` (or power iteration, or the dense
Hessian for small inputs, for checking).

Piecewise-linear networks (ReLU, max-pool): z is linear in x between kinks, so
autograd's margin Hessian is 0 almost everywhere, while the loss Hessian is
Jᵀ(diag(p) − ppᵀ)J with p = softmax(z) (the curvature of the softmax only).
:func:`classify_activations` says which case a model is in.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robaudit.kinds import CurvatureMethod, CurvatureTarget
from robaudit.linalg.lanczos import Which, lanczos
from robaudit.linalg.power import power_method
from robaudit.linalg.products import check_output, pullback
from robaudit.linalg.tol import default_tol


class HvpMode(str, enum.Enum):
    """How Hessian-vector products are computed."""

    DOUBLE_BACKWARD = "double_backward"
    FORWARD_OVER_REVERSE = "forward_over_reverse"


def runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) the highest-scoring class other than the label."""
    masked = logits.detach().clone()
    masked.scatter_(1, y[:, None], float("-inf"))
    return masked.argmax(dim=1)


def target_values(logits: torch.Tensor, y: torch.Tensor, target: CurvatureTarget,
                  other: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) per-sample scalar: CE at label y, or z_y − z_t with t = ``other`` (the runner-up if None).

    Computed in float64 from the logits: for a confident sample p_y(1 − p_y) and p − e_y are
    differences of nearly equal numbers, which float32 would leave with ~1e-3 relative error.
    """
    logits = logits.to(torch.float64)
    if target is CurvatureTarget.LOSS:
        return F.cross_entropy(logits, y, reduction="none")
    t = runner_up(logits, y) if other is None else other
    return logits.gather(1, y[:, None])[:, 0] - logits.gather(1, t[:, None])[:, 0]


class HessianOperator:
    """Hᵢ = ∇²ₓ fᵢ(xᵢ) for every sample of a batch, as a batched matvec (B, D) → (B, D).

    Args:
        model: (B, *input) → logits (B, C), in eval mode.
        x: (B, *input) inputs; not modified.
        y: (B,) labels.
        target: ``loss`` (CE at y) or ``margin`` (z_y − z_t, t the runner-up at x, held fixed).
        mode: double backward (default: reuses one graph) or forward over reverse.

    Attributes:
        value: (B,) fᵢ(xᵢ), detached.
        other: (B,) the runner-up class t (for both targets).
        n_hvp: Hessian-vector products so far (one per ``matvec`` call, all samples at once).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 target: CurvatureTarget | str = CurvatureTarget.LOSS,
                 mode: HvpMode | str = HvpMode.DOUBLE_BACKWARD) -> None:
        self.model = model
        self.target = CurvatureTarget(target)
        self.mode = HvpMode(mode)
        self.batch = int(x.shape[0])
        self.input_shape = tuple(x.shape[1:])
        self.dim = int(x[0].numel()) if self.batch else 0
        self.y = y.to(device=x.device, dtype=torch.long)
        self.x = x.detach().requires_grad_(True)
        self.n_hvp = 0
        self._grad: torch.Tensor | None = None
        with torch.enable_grad():
            logits = check_output(model(self.x), self.batch)
            self.logits = logits.detach()
            self.other = runner_up(logits, self.y)
            values = target_values(logits, self.y, self.target, self.other)
            self.value = values.detach()
            if self.mode is HvpMode.DOUBLE_BACKWARD:
                (g,) = torch.autograd.grad(values.sum(), self.x, create_graph=True, allow_unused=True)
                # g without a graph: f is at most linear in x, so H = 0
                self._grad = g if g is not None and g.requires_grad else None

    def _f_sum(self, x: torch.Tensor) -> torch.Tensor:
        return target_values(self.model(x), self.y, self.target, self.other).sum()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Hᵢvᵢ for every sample: (B, D) → (B, D), detached."""
        self.n_hvp += 1
        tangent = v.reshape(self.batch, *self.input_shape).to(self.x.dtype)
        if self.mode is HvpMode.FORWARD_OVER_REVERSE:
            with warnings.catch_warnings():
                # torch's forward-AD decompositions call the deprecated torch.jit.script on first use
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
                _, hv = torch.func.jvp(torch.func.grad(self._f_sum), (self.x.detach(),), (tangent,))
            return hv.detach().reshape(self.batch, -1)
        if self._grad is None:
            return torch.zeros(self.batch, self.dim, dtype=self.x.dtype, device=self.x.device)
        with torch.enable_grad():
            (hv,) = pullback(self._grad, self.x, tangent, retain_graph=True, allow_unused=True)
        if hv is None:  # the gradient does not depend on x (piecewise-linear margin)
            return torch.zeros(self.batch, self.dim, dtype=self.x.dtype, device=self.x.device)
        return hv.detach().reshape(self.batch, -1)

    def dense(self) -> torch.Tensor:
        """(B, D, D) the full Hessians from D products (one per basis vector; for small inputs and checks)."""
        eye = torch.eye(self.dim, dtype=self.x.dtype, device=self.x.device)
        cols = [self.matvec(eye[j].expand(self.batch, -1)) for j in range(self.dim)]
        h = torch.stack(cols, dim=2)
        return (h + h.transpose(1, 2)) / 2  # symmetric in exact arithmetic; remove the rounding

    def release(self) -> None:
        """Drop the retained graph."""
        self._grad = None


@dataclass(frozen=True)
class CurvatureResult:
    """Top-k input-Hessian eigenvalues of every sample, largest in magnitude first, with sign.

    Attributes:
        eigenvalues: (B, k) sorted by |λ| descending (NaN where not finite).
        converged: (B,) every residual ≤ tol·|λ₁| (always True for exact where finite).
        residual: (B, k) eigen-residual bound: an eigenvalue of the computed operator lies within it
            of each value. It covers the solver, not the rounding of the products themselves
            (float32: a few 1e-6·|λ_max| on the sample LeNet, measured against float64).
        error_bound: (B,) max residual / |λ₁| (0 when λ₁ = 0 with zero residual; 0 for exact).
        iterations: (B,) Hessian-vector products used for the sample.
        value: (B,) the target scalar at x (CE, or the margin z_y − z_t).
        other: (B,) runner-up class t.
        finite: (B,) whether every product stayed finite.
    """

    eigenvalues: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    error_bound: torch.Tensor
    iterations: torch.Tensor
    value: torch.Tensor
    other: torch.Tensor
    finite: torch.Tensor

    @property
    def lambda_max(self) -> torch.Tensor:
        """(B,) the eigenvalue largest in magnitude, with sign."""
        return self.eigenvalues[:, 0]


def _by_magnitude(values: torch.Tensor, k: int) -> torch.Tensor:
    order = values.abs().argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order)


def top_eigenvalues(op: HessianOperator, *, k: int = 1, method: CurvatureMethod | str = CurvatureMethod.LANCZOS,
                    iters: int = 100, tol: float | None = None, init: torch.Tensor | None = None,
                    generator: torch.Generator | None = None,
                    callback: Callable[[int, torch.Tensor], None] | None = None) -> CurvatureResult:
    """The k eigenvalues of each Hᵢ largest in magnitude, with sign.

    Args:
        op: the batch's Hessian operator.
        k: how many eigenvalues (``power``: k = 1 only).
        method: ``lanczos`` (Cui et al. 2022, Alg. 1, on an indefinite operator), ``power``
            (largest |λ| only), or ``exact`` (D products, then eigvalsh of the dense Hessian).
        iters: cap on Hessian-vector products (lanczos/power).
        tol: stop a sample when every residual ≤ tol·|λ₁| (default :func:`default_tol`).
        init: (B, D) start vectors (use :func:`robaudit.linalg.rng.keyed_normal` for batch-independent
            results); random if None.
        callback: per step, (step, current estimates (B, ≤k)), to trace convergence.

    Returns:
        :class:`CurvatureResult`.
    """
    method = CurvatureMethod(method)
    b, d = op.batch, op.dim
    dtype, device = op.x.dtype, op.x.device
    tol = default_tol(dtype) if tol is None else tol
    k = min(k, d)
    if method is CurvatureMethod.POWER and k != 1:
        raise ValueError(f"power iteration gives the largest |λ| only: expected k = 1, got k = {k}")
    if method is CurvatureMethod.EXACT:
        h = op.dense()
        finite = torch.isfinite(h).flatten(1).all(dim=1)
        h = torch.where(finite[:, None, None], h, torch.zeros_like(h))
        values = _by_magnitude(torch.linalg.eigvalsh(h), k)
        zeros = torch.zeros(b, k, dtype=dtype, device=device)
        iterations = torch.full((b,), d, dtype=torch.long, device=device)
        return _result(values, finite, zeros, iterations, finite, op)
    if init is None:
        init = torch.randn(b, d, dtype=dtype, device=device, generator=generator)
    init = init.reshape(b, d).to(dtype=dtype, device=device)
    if method is CurvatureMethod.POWER:
        pm = power_method(op.matvec, init, iters=iters, tol=tol,
                          callback=None if callback is None else (lambda s, v: callback(s, v[:, None])))
        return _result(pm.value[:, None], pm.converged, pm.residual[:, None], pm.iterations, pm.finite, op)
    lz = lanczos(op.matvec, init, k=k, iters=iters, tol=tol, which=Which.MAGNITUDE, generator=generator,
                 callback=callback)
    return _result(lz.values, lz.converged, lz.residual, lz.iterations, lz.finite, op)


def _result(values: torch.Tensor, converged: torch.Tensor, residual: torch.Tensor, iterations: torch.Tensor,
            finite: torch.Tensor, op: HessianOperator) -> CurvatureResult:
    top = values[:, 0].abs()
    worst = residual.max(dim=1).values
    tiny = torch.finfo(values.dtype).tiny
    bound = torch.where(top > 0, worst / top.clamp_min(tiny),
                        torch.where(worst > 0, torch.full_like(worst, float("inf")), torch.zeros_like(worst)))
    nan = torch.full_like(values, float("nan"))
    return CurvatureResult(eigenvalues=torch.where(finite[:, None], values, nan), converged=converged & finite,
                           residual=residual, error_bound=torch.where(finite, bound, nan[:, 0]),
                           iterations=iterations, value=op.value, other=op.other, finite=finite)


def second_order_radius(margin: torch.Tensor, lambda_max: torch.Tensor) -> torch.Tensor:
    """(B,) r with ½·r²·|λ_max| = |margin|: where the quadratic term of the margin's Taylor
    expansion reaches the margin itself (inf when λ_max = 0; the linear model never bends)."""
    lam = lambda_max.abs()
    return torch.where(lam > 0, torch.sqrt(2 * margin.abs() / lam.clamp_min(torch.finfo(lam.dtype).tiny)),
                       torch.full_like(lam, float("inf")))


# Leaf modules whose output is piecewise linear in their input (eval mode), and known smooth ones.
_PIECEWISE_LINEAR = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Threshold,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
    nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)
_SMOOTH = (
    nn.Softplus, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.ELU, nn.CELU, nn.SELU, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Hardswish, nn.Hardsigmoid,
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.Bilinear, nn.MultiheadAttention,
)

# robaudit's own wrappers (normalisation, output selection, the zoo's option-A shortcut): affine or slicing.
_ROBAUDIT_AFFINE = frozenset({"Normalize", "SelectOutput", "ShortcutA", "PerSample"})


@dataclass(frozen=True)
class Activations:
    """What the model's leaf modules say about its second derivative.

    Attributes:
        piecewise_linear: True when every leaf is a known piecewise-linear module, False when a
            smooth (or otherwise curved) one is present, None when unknown leaves leave it open.
        curved: type names of the leaves that give the margin Hessian its curvature.
        unknown: type names of leaves in neither list. Functional activations (``F.gelu`` inside a
            forward) are invisible here: a margin Hessian that is not exactly 0 reveals them.
    """

    piecewise_linear: bool | None
    curved: tuple[str, ...]
    unknown: tuple[str, ...]


def classify_activations(model: nn.Module) -> Activations:
    """Scan ``model``'s leaf modules for piecewise-linear vs curved operations."""
    curved: list[str] = []
    unknown: list[str] = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves decide
        name = type(module).__name__
        if type(module).__module__.startswith("robaudit.models") and name in _ROBAUDIT_AFFINE:
            continue
        if isinstance(module, _SMOOTH):
            curved.append(name)
        elif not isinstance(module, _PIECEWISE_LINEAR) and (list(module.parameters(recurse=False))
                                                             or type(module).forward is not nn.Module.forward):
            unknown.append(name)
    verdict = False if curved else (None if unknown else True)
    return Activations(piecewise_linear=verdict, curved=tuple(sorted(set(curved))), unknown=tuple(sorted(set(unknown))))
