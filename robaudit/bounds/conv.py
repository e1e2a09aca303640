"""All numbers of one convolution on one input shape, assembled into a frozen :class:`ConvBounds`.

* ``operator_norm``: σ_max of the layer as it really acts (:mod:`robaudit.bounds.opnorm`),
  a lower bound with a residual error bound.
* ``circular_exact``: Sedghi's exact value of the circular convolution at size n + 2p
  (:mod:`robaudit.bounds.fourier`), an upper bound for the zero-padded layer.
* ``strided_exact``: the same for the strided circular convolution (polyphase).
* ``singla_bound``: Singla & Feizi's reshape bound (:mod:`robaudit.bounds.reshape`).
* ``gram_bound``: Delattre et al.'s Gram iteration (:mod:`robaudit.bounds.gram`), on request.
* ``heuristic``: Miyato's reshape norm, not a bound.

The bound used in the composition is :func:`tightest` of the valid upper bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from robaudit.bounds.fourier import (BlockMax, Strided, block_max_eig, certification_gap, certified_sigma, gram_blocks,
                                     output_side, rounding_margin, scale_blocks, strided_circular, top_right_vector,
                                     unphase)
from robaudit.bounds.geometry import ConvGeometry
from robaudit.bounds.gram import gram_iteration
from robaudit.bounds.opnorm import ConvMap, NormEstimate, crop_to_input, operator_norms
from robaudit.bounds.reshape import fantastic_four, spectral_norm_upper


def tightest(*bounds: float | None) -> float:
    """The one rule for the bound a layer contributes: the smallest valid upper bound."""
    return min(b for b in bounds if b is not None)


@dataclass(frozen=True)
class Circular:
    """Sedghi's value of one kernel on one geometry, with what the warm start and the fused pass reuse.

    Attributes:
        exact: σ_max of the circular convolution at ``fft_size`` times the pad factor.
        upper: certified upper bound (tournament certificate and rounding slack included).
        is_exact: the layer *is* that circular convolution.
        pad_factor, fft_size: see :class:`ConvGeometry`.
        blocks: the Gram blocks (computed once per kernel); top: their BlockMax.
        strided: the polyphase bound of a strided layer, or None.
    """

    exact: float
    upper: float
    is_exact: bool
    pad_factor: float
    fft_size: tuple[int, ...]
    blocks: Tensor
    top: BlockMax
    strided: Strided | None

    @property
    def tightest(self) -> float:
        return tightest(self.upper, self.strided.upper if self.strided else None)


def circular(weight: Tensor, geom: ConvGeometry, *, with_strided: bool = True) -> Circular:
    """Circular and strided-circular bounds of ``weight`` (c_out, c_in/g, *k) on ``geom``
    (the strided one only ``with_strided``)."""
    ksize = tuple(weight.shape[2:])
    fft_size = geom.fft_size()
    factor, is_exact = geom.pad_factor(ksize)
    h = gram_blocks(weight, fft_size, geom.dilation, geom.groups)
    top = block_max_eig(h)
    inner = max(weight.shape[0] // geom.groups, weight.shape[1]) * math.prod(ksize)
    return Circular(exact=math.sqrt(max(top.value, 0.0)) * factor,
                    upper=certified_sigma(top, factor, weight.dtype, inner),
                    is_exact=is_exact, pad_factor=factor, fft_size=fft_size, blocks=h, top=top,
                    strided=strided_circular(weight, geom) if with_strided else None)


def scaled_kernel(weight: Tensor, scale: Tensor) -> Tensor:
    """``weight`` with each output channel (row) multiplied by ``scale``: a folded BatchNorm's gain."""
    return weight * scale.to(weight).reshape(-1, *([1] * (weight.dim() - 1)))


def fused_tightest(weight: Tensor, scale: Tensor, geom: ConvGeometry, circ: Circular | None = None) -> float:
    """``circular(weight scaled by scale on its output channels, geom).tightest``: the bound of conv→BatchNorm.

    With ``circ`` (the unfused kernel's result) the fused Gram blocks are S·H·S of the unfused ones
    wherever they are output-side blocks (:func:`robaudit.bounds.fourier.output_side`: every kernel
    with c_out ≤ c_in, and the polyphase kernel of nearly every strided one), so only the certified
    block maximum is computed again. The rounding slack is the unfused one plus 4 eps for the two
    products per entry (‖E‖₂ ≤ ‖E‖_F ≤ 2·eps·‖H'‖_F ≤ 2·eps·√m·λ_max, inside the slack for m ≤ n).

    A strided layer's fused strided value is computed first. The fused circular value is at least
    min|s| times the unfused one (S² ⪰ min s²·I, on either side of the Gram blocks: λ_max(S·H·S) and
    λ_max(Gᴴ·S²·G) are both ≥ min s²·λ_max(H)), and at least the top eigenvalue of any one fused block
    (the one at the unfused maximum is taken). When the strided value is below either, the circular
    tournament cannot change the minimum and is not run: the result is the same number.

    Gains equal to within the tournament's own certification gap (a freshly initialised BatchNorm, or
    one with a single gain) give max|s| times the unfused value: S = s·I up to that gap, and no tournament
    could certify a smaller number.
    """
    g = geom.groups
    co, cig = weight.shape[0] // g, weight.shape[1]
    if circ is None:
        return circular(scaled_kernel(weight, scale), geom).tightest
    mag = scale.abs()
    lo, hi = float(mag.min()), float(mag.max())
    if hi <= lo * (1.0 + certification_gap(weight.dtype)):
        return hi * circ.tightest
    extra = 4 * torch.finfo(weight.dtype).eps
    strided: float | None = None
    if circ.strided is not None:
        st = circ.strided
        sco, scig = st.kernel.shape[0] // g, st.kernel.shape[1]
        if output_side(sco, scig):
            stop = block_max_eig(scale_blocks(st.blocks, scale, g))
            strided = certified_sigma(stop, st.factor, weight.dtype, max(sco, scig) * math.prod(st.kernel.shape[2:]),
                                      extra)
        else:
            fused = strided_circular(scaled_kernel(weight, scale), geom)
            strided = fused.upper if fused is not None else None
        if strided is not None and strided <= lo * circ.exact:
            return strided
    if output_side(co, cig):
        blocks = scale_blocks(circ.blocks, scale, g)
    else:  # input-side blocks Gᴴ·S²·G: a new autocorrelation of the scaled kernel, as circular() computes it
        blocks = gram_blocks(scaled_kernel(weight, scale), circ.fft_size, geom.dilation, g)
        extra = 0.0
    if strided is not None:
        # any one block's top eigenvalue bounds the fused circular value from below; at the block of the conv's
        # own maximum it is usually close to it, and above the strided value the tournament cannot matter
        one = float(torch.linalg.eigvalsh(blocks[circ.top.index])[-1])
        if strided <= math.sqrt(max(one, 0.0)) * circ.pad_factor:
            return strided
    top = block_max_eig(blocks)
    upper = certified_sigma(top, circ.pad_factor, weight.dtype, max(co, cig) * math.prod(weight.shape[2:]), extra)
    return tightest(upper, strided)


def warm_start(weight: Tensor, geom: ConvGeometry, circ: Circular) -> Tensor:
    """The top right singular vector of the circular problem, cut to the layer's input (C, *spatial)."""
    if circ.strided is not None:
        s = circ.strided
        vec = unphase(top_right_vector(s.kernel, s.blocks, s.top, s.canvas, None, geom.groups), geom.stride)
    else:
        vec = top_right_vector(weight, circ.blocks, circ.top, circ.fft_size, geom.dilation, geom.groups)
    return crop_to_input(vec, geom)


@dataclass(frozen=True)
class ConvBounds:
    """All numbers for one convolution on one input shape (JSON-safe via :meth:`as_dict`).

    ``circular_exact``, ``singla_bound`` and ``gram_bound`` are valid upper bounds for
    the layer (each includes ``pad_factor``); ``circular_is_exact`` says whether the
    layer *is* the circular convolution. Numbers not computed are None.
    """

    circular_exact: float
    circular_upper: float
    circular_is_exact: bool
    strided_exact: float | None
    fft_size: tuple[int, ...]
    pad_factor: float
    blocks: int
    exact_blocks: int
    singla_bound: float | None = None
    reshapes: dict[str, float] | None = None
    heuristic: float | None = None
    gram_bound: float | None = None
    gram_lower: float | None = None
    gram_steps: int | None = None
    operator_norm: float | None = None
    iterations: int | None = None
    converged: bool | None = None
    residual: float | None = None
    error_bound: float | None = None

    @property
    def upper(self) -> float:
        """The tightest valid upper bound (the circular value is exact up to its certificate gap)."""
        return tightest(self.circular_upper, self.strided_exact, self.singla_bound, self.gram_bound)

    def with_power(self, est: NormEstimate | None) -> "ConvBounds":
        if est is None:
            return self
        return replace(self, operator_norm=est.value, iterations=est.iterations, converged=est.converged,
                       residual=est.residual, error_bound=est.error_bound)

    def as_dict(self) -> dict[str, Any]:
        op = self.operator_norm

        def ratio(v: float | None) -> float | None:
            return v / op if (op and v is not None) else None

        return {
            "operator_norm": op, "iterations": self.iterations, "converged": self.converged,
            "residual": self.residual, "error_bound": self.error_bound,
            "circular_exact": self.circular_exact, "circular_is_exact": self.circular_is_exact,
            "circular_upper": self.circular_upper, "strided_exact": self.strided_exact,
            "fft_size": list(self.fft_size), "pad_factor": self.pad_factor,
            "singla_bound": self.singla_bound, "reshape_bounds": dict(self.reshapes) if self.reshapes else None,
            "gram_bound": self.gram_bound, "gram_steps": self.gram_steps,
            "heuristic": self.heuristic, "upper": self.upper,
            "ratios": {"circular_exact": ratio(self.circular_exact), "singla_bound": ratio(self.singla_bound),
                       "gram_bound": ratio(self.gram_bound), "heuristic": ratio(self.heuristic),
                       "strided_exact": ratio(self.strided_exact),
                       "gram_over_circular": (self.gram_bound / self.circular_exact
                                              if self.gram_bound is not None and self.circular_exact else None)},
        }


def kernel_bounds(weight: Tensor, geom: ConvGeometry, *, reshape: bool = True, gram: bool = False,
                  gram_iters: int = 12, gram_tol: float = 5e-3,
                  circ: Circular | None = None) -> ConvBounds:
    """Every upper bound (no power iteration) of a kernel on a geometry.

    Args:
        weight: (c_out, c_in/g, *k) in the dtype to compute in.
        geom: the layer's geometry on its real input.
        reshape: compute Singla's bound and the heuristic; gram: run the Gram iteration.
        circ: a :func:`circular` result to reuse (the Gram blocks are computed once per kernel).
    """
    circ = circ or circular(weight, geom)
    out = ConvBounds(circular_exact=circ.exact, circular_upper=circ.upper, circular_is_exact=circ.is_exact,
                     strided_exact=circ.strided.upper if circ.strided else None, fft_size=circ.fft_size,
                     pad_factor=circ.pad_factor, blocks=int(circ.blocks.shape[0]),
                     exact_blocks=circ.top.exact_blocks)
    if reshape:
        four = fantastic_four(weight, geom.groups)
        out = replace(out, singla_bound=four["singla_bound"] * circ.pad_factor,
                      reshapes={k: four[k] * circ.pad_factor for k in ("R", "S", "T", "U")},
                      # Miyato's heuristic is the T reshape's norm: reuse it rather than a second SVD
                      heuristic=four["T"] / math.sqrt(math.prod(weight.shape[2:])))
    if gram:
        res = gram_iteration(circ.blocks, iters=gram_iters, tol=gram_tol)
        margin = 1.0 + rounding_margin(weight.dtype, circ.blocks.shape[-1])
        # the Gram bound is never below the exact circular value (they differ by rounding only)
        out = replace(out, gram_bound=max(res.bound, circ.exact / circ.pad_factor * margin) * circ.pad_factor,
                      gram_lower=res.lower * circ.pad_factor, gram_steps=res.steps)
    return out


def conv_bounds(module: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
                iters: int = 100, tol: float = 1e-10, gram: bool = True, gram_iters: int = 12,
                gram_tol: float = 5e-3, power: bool = True, seed: int = 0,
                weight: Tensor | None = None) -> ConvBounds:
    """Every number for a Conv1d/Conv2d ``module`` acting on one sample of ``input_shape``.

    Args:
        module: the layer (its bias does not change the Lipschitz constant).
        input_shape: (C, *spatial) of one sample.
        dtype: computation dtype; iters, tol: Lanczos cap and residual tolerance for ``operator_norm``.
        gram, gram_iters, gram_tol: run the Gram iteration, its cap and target tightness.
        power: compute ``operator_norm``; seed: of its random start component.
        weight: override the kernel (e.g. with a following BatchNorm folded in).
    """
    w = (module.weight if weight is None else weight).detach().to(dtype)
    geom = ConvGeometry.of(module, input_shape)
    circ = circular(w, geom)
    out = kernel_bounds(w, geom, gram=gram, gram_iters=gram_iters, gram_tol=gram_tol, circ=circ)
    if power:
        (est,) = operator_norms([ConvMap(w, geom, tuple(int(s) for s in input_shape))],
                                warm=[warm_start(w, geom, circ)], iters=iters, tol=tol, seed=seed)
        out = out.with_power(est)
    return out


def linear_norm(weight: Tensor) -> float:
    """Exact ‖W‖₂ of a Linear layer (certified from above for large ones)."""
    if min(weight.shape) > 256:
        return float(spectral_norm_upper(weight.unsqueeze(0))[0])
    return float(torch.linalg.matrix_norm(weight, ord=2))


__all__ = ["tightest", "Circular", "circular", "scaled_kernel", "fused_tightest", "warm_start", "ConvBounds", "kernel_bounds", "conv_bounds",
           "linear_norm"]
