"""Sedghi et al.'s exact norm of a circular convolution from its Fourier blocks.

The circular convolution at size M is block diagonalised by the DFT: its
singular values are those of the c_out × c_in blocks G(ω) = Σ_a W_a e^{-i⟨ω, a⟩}
(Sedghi et al. 2019; Singla & Feizi 2019, App. A, eq. 7-8). Strided circular
convolutions reduce to unstrided ones on the polyphase components of the input
(a permutation of coordinates), which gives their exact norm too.

Everything here works on one kernel; :mod:`robaudit.bounds.conv` assembles the
numbers of a layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from robaudit.bounds.geometry import ConvGeometry


def rounding_margin(dtype: torch.dtype, n: int) -> float:
    """Relative slack covering floating-point error in a computed upper bound.

    ``n`` is the length of the longest inner product behind the number (a GEMM's inner
    dimension); rounding errors of such sums grow like √n·eps (Higham 2002, §3.1 and §3.5),
    and the factor 8 covers the eigen-solver's backward error on top.
    """
    return 8 * math.sqrt(max(n, 1)) * torch.finfo(dtype).eps


def certified_sigma(top: "BlockMax", factor: float, dtype: torch.dtype, inner: int, extra: float = 0.0) -> float:
    """The certified σ upper bound of a layer from its Gram blocks' certified maximum:
    √μ · pad factor · (1 + :func:`rounding_margin` for sums of length ``inner`` + ``extra``)."""
    return math.sqrt(max(top.certified_upper, 0.0)) * factor * (1.0 + rounding_margin(dtype, inner) + extra)


def certification_gap(dtype: torch.dtype) -> float:
    """The relative slack :func:`block_max_eig` certifies with by default: 1e-9 in float64, 1e-6 otherwise."""
    return 1e-9 if dtype == torch.float64 else 1e-6


def _frequencies(fft_size: Sequence[int]) -> Tensor:
    """(F, d) frequencies in cycles per sample, rfft layout: full range on all dims but the last, half on it."""
    axes = [torch.arange(m, dtype=torch.float64) / m for m in fft_size[:-1]]
    axes.append(torch.arange(fft_size[-1] // 2 + 1, dtype=torch.float64) / fft_size[-1])
    return torch.cartesian_prod(*axes).reshape(-1, len(fft_size))


def _tap_positions(ksize: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """(taps, d) integer positions a·dilation of the kernel taps, row-major like ``weight.reshape``."""
    return torch.cartesian_prod(*[torch.arange(k) * dl for k, dl in zip(ksize, dilation)]).reshape(-1, len(ksize))


def output_side(c_out: int, c_in: int) -> bool:
    """Whether the Gram blocks of a kernel with ``c_out`` × ``c_in`` blocks (per group) are taken on the
    output side, conj(G(ω)G(ω)ᴴ), rather than the input side, G(ω)ᴴG(ω).

    The output side whenever it is not the larger one (square kernels included): a scale S of the
    output channels (a folded BatchNorm) then acts on those blocks as S·H·S, so the fused kernel's
    blocks come from the unfused ones without a second autocorrelation (:func:`scale_blocks`).
    """
    return c_out <= c_in


def scale_blocks(h: Tensor, scale: Tensor, groups: int = 1) -> Tensor:
    """Output-side Gram blocks of the kernel S·W from those of W: H'(ω) = S·H(ω)·S.

    With G'(ω) = S·G(ω), conj(G'G'ᴴ) = S·conj(GGᴴ)·S (S real diagonal). ``h`` is
    (g·F, m, m) group-major as :func:`gram_blocks` returns it with :func:`output_side`
    true; ``scale`` holds the g·m output-channel factors.
    """
    m = h.shape[-1]
    s = scale.to(device=h.device, dtype=h.real.dtype).reshape(groups, 1, m)
    outer = (s.transpose(1, 2) * s).to(h.dtype)  # (g, m, m): s_i·s_j per group
    return (h.reshape(groups, -1, m, m) * outer[:, None]).reshape(h.shape)


def gram_blocks(weight: Tensor, fft_size: Sequence[int], dilation: Sequence[int] | None = None,
                groups: int = 1) -> Tensor:
    """Gram matrices of the Fourier blocks G(ω) of a kernel, on the side :func:`output_side` picks.

    H is assembled from the kernel's autocorrelation, H(ω) = Σ_δ e^{-i⟨ω, δ⟩} M_δ
    with M_δ = Σ_{b-a=δ} W_aᵀW_b: one real GEMM plus a small DFT over the lags
    instead of an FFT and a batched complex Gram product. Frequencies cover the
    half-spectrum (G(-ω) = conj(G(ω)) has the same singular values). On the output
    side (c_out ≤ c_in) the blocks are of Gᵀ, conj(GGᴴ) (same nonzero eigenvalues).

    Args:
        weight: (c_out, c_in/g, *k) real kernel (1-D or 2-D).
        fft_size: M per spatial dim (every M_d ≥ 1).
        dilation: per-dim dilation (taps at a·d).
        groups: channel groups; blocks of all groups are stacked (group-major).

    Returns:
        (g·F, m, m) complex Hermitian PSD, m = min(c_out/g, c_in/g); F = 1 for a 1-tap kernel.
    """
    d = weight.dim() - 2
    dilation = tuple(dilation or (1,) * d)
    g = groups
    co, cig = weight.shape[0] // g, weight.shape[1]
    ksize = tuple(weight.shape[2:])
    taps = math.prod(ksize)
    w = weight.reshape(g, co, cig, taps)
    x = w.transpose(1, 2) if output_side(co, cig) else w
    m = x.shape[2]
    xm = x.permute(0, 1, 3, 2).reshape(g, x.shape[1], taps * m)  # column block a holds X_a
    pos = _tap_positions(ksize, dilation)
    lag = pos[None, :, :] - pos[:, None, :]  # [a, b] -> b - a
    uniq, inv = torch.unique(lag.reshape(taps * taps, d), dim=0, return_inverse=True)
    inv = inv.reshape(taps, taps).tolist()
    mlag = torch.zeros(g, uniq.shape[0], m, m, dtype=weight.dtype, device=weight.device)
    for a in range(taps):
        # X_aᵀ [X_a … X_last]: only pairs b ≥ a (X_bᵀX_a is the transpose), half the GEMM work
        row = xm[:, :, a * m:(a + 1) * m].transpose(1, 2) @ xm[:, :, a * m:]
        for b in range(a, taps):
            block = row[:, :, (b - a) * m:(b - a + 1) * m]
            mlag[:, inv[a][b]] += block
            if b != a:
                mlag[:, inv[b][a]] += block.transpose(1, 2)
    mlag = mlag.reshape(g, uniq.shape[0], m * m)
    if uniq.shape[0] == 1:  # a 1-tap kernel: the same block at every frequency
        return torch.complex(mlag, torch.zeros_like(mlag)).reshape(-1, m, m)
    phase = (-2 * math.pi) * (_frequencies(fft_size) @ uniq.to(torch.float64).T)  # (F, lags)
    phase = phase.to(device=weight.device, dtype=weight.dtype)
    h = torch.complex(torch.cos(phase) @ mlag, torch.sin(phase) @ mlag)  # (g, F, m²)
    return h.reshape(-1, m, m)


def fourier_blocks(weight: Tensor, fft_size: Sequence[int], dilation: Sequence[int] | None = None,
                   groups: int = 1) -> Tensor:
    """The c_out/g × c_in/g Fourier blocks G(ω) on the rfft half-spectrum (reference for tests).

    Returns:
        (g·F, c_out/g, c_in/g) complex.
    """
    d = weight.dim() - 2
    dilation = tuple(dilation or (1,) * d)
    w = weight
    if any(dl > 1 for dl in dilation):  # dilate the kernel: zeros between taps
        k_eff = [dl * (k - 1) + 1 for k, dl in zip(w.shape[2:], dilation)]
        wd = torch.zeros(*w.shape[:2], *k_eff, dtype=w.dtype, device=w.device)
        wd[(slice(None), slice(None), *[slice(None, None, dl) for dl in dilation])] = w
        w = wd
    fft = torch.fft.rfftn(w, s=tuple(fft_size), dim=tuple(range(2, 2 + d)))
    co, cig = w.shape[0] // groups, w.shape[1]
    return fft.reshape(groups, co, cig, -1).permute(0, 3, 1, 2).reshape(-1, co, cig)


# ---------------------------------------------------------------------------
# Top eigenvalue over many Hermitian blocks


@dataclass(frozen=True)
class BlockMax:
    """max_b λ_max(H_b) with its certificate.

    Attributes:
        value: the largest eigenvalue (an eigvalsh of one block).
        certified_upper: every block is certified ≤ this (Cholesky of μI − H_b).
        exact_blocks: blocks that needed a full eigvalsh.
        certified_blocks: blocks certified below the max by a Cholesky (or pruned).
        index: the block holding ``value``.
    """

    value: float
    certified_upper: float
    exact_blocks: int
    certified_blocks: int
    index: int = 0


def _top_of(h: Tensor, idx: Tensor) -> tuple[float, int]:
    top = torch.linalg.eigvalsh(h[idx])[:, -1]
    j = int(top.argmax())
    return float(top[j]), int(idx[j])


def block_max_eig(h: Tensor, *, rel_gap: float | None = None, first: int | None = None) -> BlockMax:
    """Largest eigenvalue over a batch of Hermitian PSD blocks, without eigvalsh on every block.

    Tournament: compute the eigenvalues of the most promising blocks (ranked by
    the cheap lower bound tr(H²)/tr(H) ≤ λ_max), then certify every other block
    below μ = L·(1+rel_gap) by a Cholesky factorisation of μI − H_b (it exists
    iff λ_max(H_b) < μ); blocks that fail are candidates for the next round.
    Blocks whose Frobenius norm (≥ λ_max) is below L are dropped for free.

    Args:
        h: (B, m, m) Hermitian PSD.
        rel_gap: certification slack (default: 1e-9 in float64, 1e-6 in float32).
        first: blocks given a full eigvalsh in each round (default 8, or 3 for blocks over 128).

    Returns:
        BlockMax.
    """
    b, m, _ = h.shape
    real_dtype = h.real.dtype
    if rel_gap is None:
        rel_gap = certification_gap(real_dtype)
    if m == 1:
        flat = h.real.reshape(-1)
        j = int(flat.argmax())
        return BlockMax(float(flat[j]), float(flat[j]), b, 0, j)
    if b <= 8 or m <= 8:
        v, j = _top_of(h, torch.arange(b, device=h.device))
        return BlockMax(v, v, b, 0, j)
    diag = torch.diagonal(h, dim1=-2, dim2=-1).real
    fro2 = torch.view_as_real(h).square().sum((-3, -2, -1))  # ‖H‖_F² = Σλ² (cheaper than matrix_norm)
    bound = fro2.sqrt()  # ≥ λ_max: prunes blocks for free
    proxy = fro2 / diag.sum(-1).clamp_min(torch.finfo(real_dtype).tiny)  # Σλ²/Σλ ≤ λ_max: ranks blocks
    order = torch.argsort(proxy, descending=True)
    if first is None:
        first = 8 if m <= 128 else 3  # eigvalsh gets dear for big blocks
    tiny = torch.finfo(real_dtype).tiny
    top = order[:first]
    best, where = _top_of(h, top)
    exact = int(top.numel())
    cand = bound >= best
    cand[top] = False
    active = order[cand[order]]  # in proxy order
    certified = b - exact - int(active.numel())
    full = active.numel() > 0.7 * b  # then factor h in place of gathering the candidates
    while active.numel():
        mu = max(best * (1.0 + rel_gap), tiny)
        if full:
            shifted = h.neg()
            shifted.diagonal(dim1=-2, dim2=-1).add_(mu)
            _, info = torch.linalg.cholesky_ex(shifted)
            fails = info[active] != 0
            full = False
        else:
            shifted = h[active].neg_()
            shifted.diagonal(dim1=-2, dim2=-1).add_(mu)
            _, info = torch.linalg.cholesky_ex(shifted)
            fails = info != 0
        del shifted
        certified += int((~fails).sum())
        active = active[fails]
        if not active.numel():
            break
        top, active = active[:first], active[first:]
        value, j = _top_of(h, top)
        if value > best:
            best, where = value, j
        exact += int(top.numel())
        keep = bound[active] >= best
        certified += int((~keep).sum())
        active = active[keep]
    return BlockMax(best, best * (1.0 + rel_gap), exact, certified, where)


def circular_norm(weight: Tensor, fft_size: Sequence[int], dilation: Sequence[int] | None = None,
                  groups: int = 1, h: Tensor | None = None) -> tuple[float, BlockMax]:
    """Sedghi's exact σ_max of the circular convolution at size ``fft_size``.

    Returns:
        (σ_max, BlockMax of the eigenvalues λ = σ²).
    """
    if h is None:
        h = gram_blocks(weight, fft_size, dilation, groups)
    res = block_max_eig(h)
    return math.sqrt(max(res.value, 0.0)), res


# ---------------------------------------------------------------------------
# Strided layers: the polyphase decomposition


def polyphase_kernel(weight: Tensor, stride: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """Kernel of the stride-1 convolution equivalent to a strided one on polyphase inputs.

    With k = s·q + r, y[i] = Σ_k w[k] x[s·i + k] = Σ_r Σ_q w[s·q + r] x_r[i + q] where
    x_r[j] = x[s·j + r]: a stride-1 convolution of the s^d phases of x (a permutation
    of its coordinates), with c_in·∏s input channels. Dilation is applied first.

    Returns:
        (c_out, c_in/g · ∏s, *ceil(k_eff/s)); phases are the fastest channel index, so groups stay contiguous.
    """
    d = weight.dim() - 2
    k_eff = [dl * (k - 1) + 1 for k, dl in zip(weight.shape[2:], dilation)]
    q = [-(-ke // st) for ke, st in zip(k_eff, stride)]
    full = torch.zeros(*weight.shape[:2], *[qq * st for qq, st in zip(q, stride)], dtype=weight.dtype,
                       device=weight.device)
    full[(slice(None), slice(None), *[slice(0, ke, dl) for ke, dl in zip(k_eff, dilation)])] = weight
    co, ci = weight.shape[:2]
    if d == 1:
        out = full.reshape(co, ci, q[0], stride[0]).permute(0, 1, 3, 2)
    else:
        out = full.reshape(co, ci, q[0], stride[0], q[1], stride[1]).permute(0, 1, 3, 5, 2, 4)
    return out.reshape(co, ci * math.prod(stride), *q)


@dataclass(frozen=True)
class Strided:
    """Exact norm of a strided circular convolution (polyphase), as a bound for the layer.

    Attributes:
        upper: certified σ upper bound for the layer (pad factor and rounding slack included).
        kernel: the polyphase kernel; canvas: the polyphase canvas size; blocks: its Gram blocks.
        top: the BlockMax of ``blocks``; factor: the pad factor in ``upper`` (1 for circular padding).
    """

    upper: float
    kernel: Tensor
    canvas: tuple[int, ...]
    blocks: Tensor
    top: BlockMax
    factor: float = 1.0


def strided_circular(weight: Tensor, geom: ConvGeometry) -> Strided | None:
    """Sedghi's exact norm of the *strided* circular convolution (polyphase), times the pad factor.

    For zero/reflect/replicate padding the layer is a crop of the strided circular
    convolution on any canvas M ≥ n+2p, so M is rounded up to a multiple of the
    stride. Circular padding needs n divisible by the stride and no repeated rows.

    Returns:
        :class:`Strided`, or None when the layer has stride 1 or the geometry does not allow it.
    """
    stride = geom.stride
    if all(s == 1 for s in stride):
        return None
    ksize = tuple(weight.shape[2:])
    size = geom.fft_size()
    factor, _ = geom.pad_factor(ksize)
    if geom.padding_mode == "circular":
        out = geom.output_size(ksize)
        if any(n % s or o > n // s for n, s, o in zip(size, stride, out)):
            return None
        factor = 1.0
    canvas = tuple(-(-m // s) for m, s in zip(size, stride))
    wp = polyphase_kernel(weight, stride, geom.dilation)
    h = gram_blocks(wp, canvas, None, geom.groups)
    top = block_max_eig(h)
    upper = certified_sigma(top, factor, weight.dtype, max(wp.shape[0], wp.shape[1]) * math.prod(wp.shape[2:]))
    return Strided(upper, wp, canvas, h, top, factor)


# ---------------------------------------------------------------------------
# The top right singular vector of the circular problem (a warm start for the real layer)


def top_right_vector(weight: Tensor, h: Tensor, top: BlockMax, fft_size: Sequence[int],
                     dilation: Sequence[int] | None = None, groups: int = 1) -> Tensor:
    """A real top right singular vector of the circular convolution, on its M-sized canvas.

    The block ``top.index`` holds λ_max at frequency ω; with v the top right singular vector
    of G(ω), x[n] = Re(conj(v) e^{i⟨ω, n⟩}) is mapped to σ_max·(unit output) by torch's
    cross-correlation (y[n] = Σ_a W_a x[n + a] = e^{i⟨ω,n⟩} conj(G(ω)) conj(v)).

    Returns:
        (c_in, *fft_size) real, unit norm.
    """
    d = weight.dim() - 2
    dilation = tuple(dilation or (1,) * d)
    co, cig = weight.shape[0] // groups, weight.shape[1]
    per_group = h.shape[0] // groups
    gi, f = divmod(top.index, per_group)
    freq = _frequencies(fft_size)[f] if per_group > 1 else torch.zeros(d, dtype=torch.float64)
    w = weight[gi * co:(gi + 1) * co].reshape(co, cig, -1)  # (co, cig, taps)
    pos = _tap_positions(tuple(weight.shape[2:]), dilation).to(torch.float64)
    phase = (-2 * math.pi) * (pos @ freq)  # (taps,)
    cdtype = torch.complex128 if weight.dtype == torch.float64 else torch.complex64
    g = (w.to(cdtype) * torch.polar(torch.ones_like(phase), phase).to(device=w.device, dtype=cdtype)).sum(-1)  # G(ω)
    _, vecs = torch.linalg.eigh(h[top.index])
    u = vecs[:, -1]
    v = g.mH @ u.conj() if output_side(co, cig) else u  # H = conj(GGᴴ) (blocks of Gᵀ), or GᴴG
    v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(weight.dtype).tiny)
    grid = torch.cartesian_prod(*[torch.arange(m, dtype=torch.float64) for m in fft_size]).reshape(-1, d)
    wave = torch.polar(torch.ones(grid.shape[0], dtype=torch.float64), 2 * math.pi * (grid @ freq)).to(cdtype)
    pattern = (v.conj()[:, None] * wave[None, :].to(v.device)).real  # (cig, prod M)
    x = torch.zeros(weight.shape[1] * groups, grid.shape[0], dtype=weight.dtype, device=weight.device)
    x[gi * cig:(gi + 1) * cig] = pattern.to(weight.dtype)
    if float(x.norm()) == 0.0:  # ω = 0 with a purely imaginary v: take the other quadrature
        x[gi * cig:(gi + 1) * cig] = (v.conj()[:, None] * wave[None, :].to(v.device)).imag.to(weight.dtype)
    x = x / torch.linalg.vector_norm(x).clamp_min(torch.finfo(weight.dtype).tiny)
    return x.reshape(weight.shape[1] * groups, *fft_size)


def unphase(x: Tensor, stride: Sequence[int]) -> Tensor:
    """Inverse of the polyphase split: (c·∏s, *canvas) → (c, *canvas·s), x[c, s·j + r] = x_r[c, j]."""
    d = len(stride)
    c = x.shape[0] // math.prod(stride)
    canvas = x.shape[1:]
    if d == 1:
        return x.reshape(c, stride[0], canvas[0]).permute(0, 2, 1).reshape(c, canvas[0] * stride[0])
    y = x.reshape(c, stride[0], stride[1], canvas[0], canvas[1]).permute(0, 3, 1, 4, 2)
    return y.reshape(c, canvas[0] * stride[0], canvas[1] * stride[1])


__all__ = ["rounding_margin", "certification_gap", "certified_sigma", "output_side", "scale_blocks", "gram_blocks", "fourier_blocks", "BlockMax", "block_max_eig", "circular_norm",
           "polyphase_kernel", "Strided", "strided_circular", "top_right_vector", "unphase"]
