"""Spectral norms and upper bounds of convolution and linear layers.

For a convolution acting on a given input shape this module computes:

* ``operator_norm``: the spectral norm of the layer *as it really acts* (its
  padding, stride, dilation, groups), by block power iteration through the
  layer and its adjoint (autograd). A lower bound that converges to the exact
  value (Johansson et al. 2022, Alg. 1, applied to one layer).
* ``circular_exact``: Sedghi et al.'s exact top singular value of the circular
  convolution with the same kernel, from the Fourier blocks of the kernel
  (Singla & Feizi 2019, App. A, eq. 7-8). Computed at size n + 2p it is an
  upper bound for the zero-padded layer; with circular padding it is exact.
* ``singla_bound``: √(hw)·min(‖R‖, ‖S‖, ‖T‖, ‖U‖) over four reshapes of the
  kernel (Singla & Feizi 2019, Theorem 1; "Fantastic Four", 2021).
* ``gram_bound``: Gram iteration on the Fourier blocks with rescaling
  (Delattre et al. 2023), an upper bound at every step.
* ``heuristic``: Miyato's c_out × c_in·h·w reshape norm. Not a bound.

Layout: a conv layer is ``Select ∘ Circ_M ∘ P`` where ``P`` pads the input
(an embedding for zero padding, norm 1), ``Circ_M`` is the circular
convolution at size M and ``Select`` keeps (strided) output positions. Hence
‖layer‖ ≤ ‖Circ_M‖ · ‖P‖ · √(max repetitions in Select): the ``pad_factor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class ConvGeometry:
    """Everything besides the weight that fixes a convolution's linear map.

    Attributes:
        spatial: input spatial size, e.g. (H, W) or (L,).
        stride, dilation: per spatial dim.
        pads: (left, right) padding per spatial dim (asymmetric for padding='same').
        groups: channel groups.
        padding_mode: zeros | circular | reflect | replicate.
    """

    spatial: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, module: nn.Module, input_shape: Sequence[int]) -> "ConvGeometry":
        """Geometry of ``module`` (Conv1d/Conv2d) on one sample of shape (C, *spatial)."""
        d = len(module.kernel_size)
        spatial = tuple(int(s) for s in input_shape[-d:])
        rev = list(module._reversed_padding_repeated_twice)  # [left_last, right_last, left_prev, ...]
        pads = tuple((int(rev[2 * (d - 1 - i)]), int(rev[2 * (d - 1 - i) + 1])) for i in range(d))
        return cls(spatial=spatial, stride=tuple(int(s) for s in module.stride),
                   dilation=tuple(int(s) for s in module.dilation), pads=pads, groups=int(module.groups),
                   padding_mode=str(module.padding_mode))

    def output_size(self, kernel: Sequence[int]) -> tuple[int, ...]:
        return tuple((n + pl + pr - dl * (k - 1) - 1) // s + 1
                     for n, (pl, pr), dl, k, s in zip(self.spatial, self.pads, self.dilation, kernel, self.stride))

    def fft_size(self) -> tuple[int, ...]:
        """Size M of the circular convolution that dominates the layer."""
        if self.padding_mode == "circular":
            return self.spatial
        return tuple(n + pl + pr for n, (pl, pr) in zip(self.spatial, self.pads))

    def pad_factor(self, kernel: Sequence[int]) -> tuple[float, bool]:
        """(‖P‖·√(max repetitions of Select), whether Select∘Circ_M∘P *is* Circ_M).

        Computed per dimension from index maps, exactly (no autograd).
        """
        factor_sq = 1
        exact = True
        out = self.output_size(kernel)
        for n, (pl, pr), s, o in zip(self.spatial, self.pads, self.stride, out):
            if self.padding_mode == "circular":
                reps = [0] * n  # output i reads circular row (i*s - pl) mod n
                for i in range(o):
                    reps[(i * s - pl) % n] += 1
                factor_sq *= max(reps)
                exact = exact and s == 1 and o == n and max(reps) == 1
            else:
                counts = [0] * n  # multiplicity of each input pixel in the padded signal
                for q in range(-pl, n + pr):
                    src = _pad_source(q, n, self.padding_mode)
                    if src >= 0:
                        counts[src] += 1
                factor_sq *= max(counts)
                # without padding and with stride 1 and a 1-wide kernel the crop keeps everything
                exact = exact and pl == 0 and pr == 0 and s == 1 and o == n
        return math.sqrt(factor_sq), exact


def _pad_source(q: int, n: int, mode: str) -> int:
    """Input index that padded position q copies (-1 for a zero)."""
    if 0 <= q < n:
        return q
    if mode == "zeros":
        return -1
    if mode == "reflect":
        while q < 0 or q >= n:  # torch requires pad < n, so one reflection suffices; loop for safety
            q = -q if q < 0 else 2 * (n - 1) - q
        return q
    if mode == "replicate":
        return min(max(q, 0), n - 1)
    raise ValueError(f"unknown padding mode {mode!r}")


# ---------------------------------------------------------------------------
# Power iteration (lower bound through the real layer)


def _orthonormal_rows(v: Tensor) -> Tensor:
    """Orthonormal basis (as rows) of the row span of ``v``, by SVQB twice (Stathopoulos & Wu 2002).

    Directions with negligible weight are dropped, so the result may have fewer rows.
    """
    for _ in range(2):
        norms = torch.linalg.vector_norm(v, dim=1).clamp_min(torch.finfo(v.dtype).tiny)
        v = v / norms[:, None]
        g = v @ v.T
        lam, vec = torch.linalg.eigh((g + g.T) / 2)
        keep = lam > lam[-1] * v.shape[0] * torch.finfo(v.dtype).eps
        v = (vec[:, keep].T @ v) / lam[keep].clamp_min(torch.finfo(v.dtype).tiny).sqrt()[:, None]
    return v


@dataclass(frozen=True)
class PowerEstimate:
    """σ_max of a linear map by block power iteration.

    Attributes:
        value: the largest Ritz value's square root: a lower bound on σ_max.
        iterations: iterations run.
        converged: relative change of ``value`` fell below the tolerance.
    """

    value: float
    iterations: int
    converged: bool


def operator_norm(op: Callable[[Tensor], Tensor], input_shape: Sequence[int], *, dtype: torch.dtype,
                  device: torch.device | str = "cpu", iters: int = 100, tol: float = 1e-6, block: int = 4,
                  generator: torch.Generator | None = None) -> PowerEstimate:
    """σ_max of the linear map ``op`` by block power iteration on AᵀA (adjoint by autograd).

    The block of ``block`` vectors is the batch dimension of one call. Each
    step is accelerated as in LOBPCG (Knyazev 2001): Rayleigh-Ritz of AᵀA on
    span{X, residual, previous step}, which converges much faster than plain
    power iteration when the top singular values are close. Every Ritz value
    is ≤ σ_max², so the estimate is a lower bound at every step.

    Args:
        op: batched *linear* map (k, *input_shape) → (k, ...), no bias.
        input_shape: shape of one input (without the batch dimension).
        iters: iteration cap; tol: stop when the relative change is below it.
        block: vectors per block (capped at the input dimension).

    Returns:
        PowerEstimate(value, iterations, converged).
    """
    shape = tuple(int(s) for s in input_shape)
    dim = math.prod(shape)
    k = max(1, min(block, dim))
    x = _orthonormal_rows(torch.randn((k, dim), generator=generator, dtype=dtype).to(device))
    k = x.shape[0]
    # op is linear, so one pullback serves every adjoint product.
    y0, pullback = torch.func.vjp(op, torch.zeros((k, *shape), dtype=dtype, device=device))
    out_shape = tuple(y0.shape)

    def forward(v: Tensor) -> Tensor:  # rows (s, dim) → rows (s, out)
        with torch.no_grad():
            return op(v.reshape(v.shape[0], *shape)).reshape(v.shape[0], -1)

    ax = forward(x)
    prev = value = 0.0
    p: Tensor | None = None
    for it in range(1, iters + 1):
        bx = pullback(ax.reshape(out_shape))[0].reshape(k, dim)  # rows of AᵀA X
        theta = ax @ ax.T  # XᵀAᵀAX (rows of X orthonormal)
        evals, evecs = torch.linalg.eigh((theta + theta.T) / 2)
        x, bx = evecs.T @ x, evecs.T @ bx  # Ritz vectors of span(X)
        resid = bx - evals[:, None] * x
        extra = torch.cat([resid] + ([p] if p is not None else []))
        for _ in range(2):  # project out span(X) so that q[k:] is its complement (LOBPCG's P needs it)
            extra = extra - (extra @ x.T) @ x
        q = torch.cat([x, _orthonormal_rows(extra)])
        aq = forward(q)
        gram = aq @ aq.T
        w, c = torch.linalg.eigh((gram + gram.T) / 2)
        value = float(w[-1].clamp_min(0).sqrt())  # Ritz value on span(Q): a lower bound
        if not math.isfinite(value):
            from robaudit.errors import NumericalError

            raise NumericalError("power iteration on a layer produced NaN/Inf: check the layer's weights")
        c = c[:, -k:]
        x, ax = c.T @ q, c.T @ aq  # still orthonormal rows
        p = c[k:].T @ q[k:]  # the step taken outside span(X) (LOBPCG's P)
        if value == 0.0 or (it > 1 and abs(value - prev) <= tol * value):
            return PowerEstimate(value, it, True)
        prev = value
    return PowerEstimate(value, iters, False)


# ---------------------------------------------------------------------------
# Kernel reshapes: Singla & Feizi bounds and Miyato's heuristic


def _grouped_kernel(weight: Tensor, groups: int) -> Tensor:
    """(c_out, c_in/g, *k) → (g, c_out/g, c_in/g, kh, kw); 1-D kernels get kh = 1."""
    w = weight if weight.dim() == 4 else weight.unsqueeze(2)
    co, cig, kh, kw = w.shape
    return w.reshape(groups, co // groups, cig, kh, kw)


def lanczos_top(h: Tensor, steps: int = 48, generator: torch.Generator | None = None) -> Tensor:
    """Largest Ritz value of each Hermitian block after ``steps`` Lanczos steps (≤ λ_max).

    Full reorthogonalisation; batched over the leading dimension (Cui et al. 2022, Alg. 1).

    Args:
        h: (B, n, n) Hermitian.

    Returns:
        (B,) real lower bounds on λ_max, converging to it.
    """
    bsz, n, _ = h.shape
    k = min(steps, n)
    q = torch.randn(bsz, n, generator=generator, dtype=h.real.dtype).to(device=h.device, dtype=h.dtype)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    basis = [q]
    alphas, betas = [], []
    for j in range(k):
        w = (h @ basis[-1].unsqueeze(-1)).squeeze(-1)
        alphas.append((basis[-1].conj() * w).sum(-1).real)
        qs = torch.stack(basis, dim=1)  # (B, j+1, n)
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            w = w - (qs.transpose(1, 2) @ (qs.conj() @ w.unsqueeze(-1))).squeeze(-1)
        beta = torch.linalg.vector_norm(w, dim=-1)
        if j == k - 1 or bool((beta <= 1e-12 * alphas[0].abs().clamp_min(1e-300)).all()):
            break
        betas.append(beta)
        basis.append(w / beta.clamp_min(torch.finfo(beta.dtype).tiny).unsqueeze(-1))
    m = len(alphas)
    t = torch.diag_embed(torch.stack(alphas, -1))
    if betas:
        off = torch.stack(betas[: m - 1], -1)
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.eigvalsh(t)[:, -1]


def spectral_norm_upper(mat: Tensor, *, exact_below: int = 256) -> Tensor:
    """A certified upper bound on ‖A‖₂ for each matrix of a batch, tight to ~1e-6 relative.

    Small matrices: svdvals. Large ones: Lanczos on the smaller Gram matrix
    gives θ ≤ λ_max; a Cholesky factorisation of μI − AᴴA with μ = θ(1+δ)
    certifies λ_max < μ (δ grows if it fails; eigvalsh as the last resort).

    Args:
        mat: (B, r, c).

    Returns:
        (B,) upper bounds (rounding slack included).
    """
    r, c = mat.shape[-2:]
    margin = 1.0 + _rounding_margin(mat.real.dtype, min(r, c))
    if min(r, c) <= exact_below:
        return torch.linalg.matrix_norm(mat, ord=2) * margin
    gram = mat.mH @ mat if r >= c else mat @ mat.mH
    theta = lanczos_top(gram, generator=torch.Generator().manual_seed(0)).clamp_min(0)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    delta = 1e-9 if mat.real.dtype == torch.float64 else 1e-5
    mu = theta * (1 + delta) + torch.finfo(theta.dtype).tiny
    for _ in range(4):
        _, info = torch.linalg.cholesky_ex(mu[:, None, None] * eye - gram)
        if bool((info == 0).all()):
            return mu.sqrt() * margin
        mu = torch.where(info == 0, mu, mu * (1 + 100 * delta))
        delta *= 100
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt() * margin


def fantastic_four(weight: Tensor, groups: int = 1) -> dict[str, float]:
    """The four reshape bounds √(hw)·‖·‖₂ and their minimum (Singla & Feizi 2019 Thm. 1; 2021).

    R: (c_out·h) × (c_in·w), S: (c_out·w) × (c_in·h), T: c_out × (c_in·h·w),
    U: c_in × (c_out·h·w). For grouped convolutions the layer is block
    diagonal, so each bound is the max over groups and ``singla_bound`` is
    max over groups of the per-group minimum. Dilation does not change the
    bound (the proof only needs unit-modulus Fourier factors on the taps).
    Norms are certified upper bounds (:func:`spectral_norm_upper`).

    Returns:
        {"R", "S", "T", "U", "singla_bound"} (floats).
    """
    w = _grouped_kernel(weight, groups)
    g, co, ci, kh, kw = w.shape
    mats = {
        "R": w.permute(0, 1, 3, 2, 4).reshape(g, co * kh, ci * kw),
        "S": w.permute(0, 1, 4, 2, 3).reshape(g, co * kw, ci * kh),
        "T": w.reshape(g, co, ci * kh * kw),
        "U": w.permute(0, 2, 1, 3, 4).reshape(g, ci, co * kh * kw),
    }
    scale = math.sqrt(kh * kw)
    per_group = {name: spectral_norm_upper(m) * scale for name, m in mats.items()}  # (g,)
    stacked = torch.stack(list(per_group.values()))  # (4, g)
    out = {name: float(v.max()) for name, v in per_group.items()}
    out["singla_bound"] = float(stacked.min(0).values.max())
    return out


def heuristic(weight: Tensor, groups: int = 1) -> float:
    """Miyato et al.'s c_out × c_in·h·w reshape norm (max over groups). NOT an upper bound."""
    w = _grouped_kernel(weight, groups)
    g, co = w.shape[:2]
    return float(torch.linalg.matrix_norm(w.reshape(g, co, -1), ord=2).max())


# ---------------------------------------------------------------------------
# Fourier blocks


def gram_blocks(weight: Tensor, fft_size: Sequence[int], dilation: Sequence[int] | None = None,
                groups: int = 1) -> Tensor:
    """Gram matrices H(ω) = G(ω)ᴴG(ω) of the Fourier blocks of a kernel, on the smaller side.

    G(ω) = Σ_a W_a e^{-i⟨ω, a⟩} is the c_out × c_in block of the circular
    convolution at frequency ω (Sedghi et al.; Singla & Feizi App. A eq. 8);
    its singular values are the square roots of H(ω)'s eigenvalues. H is
    assembled from the kernel's autocorrelation, H(ω) = Σ_δ e^{-i⟨ω, δ⟩} M_δ
    with M_δ = Σ_{b-a=δ} W_aᵀW_b, which is one real GEMM plus a small DFT
    over the lags instead of an FFT and a batched complex Gram product.
    Frequencies cover the half-spectrum (rfft layout): G(-ω) = conj(G(ω)) has
    the same singular values.

    Args:
        weight: (c_out, c_in/g, *k) real kernel (1-D or 2-D).
        fft_size: M per spatial dim (every M_d ≥ 1).
        dilation: per-dim dilation (taps at a·d).
        groups: channel groups; blocks of all groups are stacked.

    Returns:
        (g·F, m, m) complex Hermitian PSD, m = min(c_out/g, c_in/g).
    """
    d = weight.dim() - 2
    dilation = tuple(dilation or (1,) * d)
    g = groups
    co, cig = weight.shape[0] // g, weight.shape[1]
    ksize = tuple(weight.shape[2:])
    taps = math.prod(ksize)
    # X_a: (g, rows, m) per tap so that H = Σ X_aᵀ X_b e^{...}; transpose when c_out < c_in.
    w = weight.reshape(g, co, cig, taps)
    x = w if co >= cig else w.transpose(1, 2)
    m = x.shape[2]
    xm = x.permute(0, 1, 3, 2).reshape(g, x.shape[1], taps * m)  # column block a holds X_a
    # Lag b - a of each tap pair, per spatial dim, and the distinct lags.
    pos = torch.cartesian_prod(*[torch.arange(k) * dl for k, dl in zip(ksize, dilation)]).reshape(taps, d)
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
    # Frequencies: full range on all but the last dim, half on the last (rfft).
    axes = [torch.arange(M, dtype=torch.float64) / M for M in fft_size[:-1]]
    axes.append(torch.arange(fft_size[-1] // 2 + 1, dtype=torch.float64) / fft_size[-1])
    freqs = torch.cartesian_prod(*axes).reshape(-1, d)  # (F, d) in cycles per sample
    phase = (-2 * math.pi) * (freqs @ uniq.to(torch.float64).T)  # (F, lags)
    phase = phase.to(device=weight.device, dtype=weight.dtype)
    re = torch.cos(phase) @ mlag  # (g, F, m²)
    im = torch.sin(phase) @ mlag
    h = torch.complex(re, im)
    return h.reshape(-1, m, m)


def fourier_blocks(weight: Tensor, fft_size: Sequence[int], dilation: Sequence[int] | None = None,
                   groups: int = 1) -> Tensor:
    """The c_out/g × c_in/g Fourier blocks G(ω) on the rfft half-spectrum (reference / tests).

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
    g = groups
    co, cig = w.shape[0] // g, w.shape[1]
    blocks = fft.reshape(g, co, cig, -1).permute(0, 3, 1, 2)
    return blocks.reshape(-1, co, cig)


def _rounding_margin(dtype: torch.dtype, m: int) -> float:
    """Relative slack that covers floating-point error in a computed upper bound."""
    eps = torch.finfo(dtype).eps
    return 8 * math.sqrt(max(m, 1)) * eps


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
    """

    value: float
    certified_upper: float
    exact_blocks: int
    certified_blocks: int


def block_max_eig(h: Tensor, *, rel_gap: float | None = None, first: int | None = None) -> BlockMax:
    """Largest eigenvalue over a batch of Hermitian PSD blocks, without eigvalsh on every block.

    Tournament: compute the eigenvalues of the most promising blocks (ranked by
    the cheap lower bound tr(H²)/tr(H) ≤ λ_max), then certify every other block
    below μ = L·(1+rel_gap) by a Cholesky factorisation of μI − H_b (it exists
    iff λ_max(H_b) < μ); blocks that fail are candidates for the next round.
    Blocks whose Frobenius norm (≥ λ_max) is below L are dropped for free. The
    answer is an exact eigenvalue; the certificate says no block exceeds it by
    more than ``rel_gap`` (plus rounding).

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
        rel_gap = 1e-9 if real_dtype == torch.float64 else 1e-6
    if m == 1:
        v = float(h.real.max())
        return BlockMax(v, v, b, 0)
    if b <= 8 or m <= 8:
        v = float(torch.linalg.eigvalsh(h)[:, -1].max())
        return BlockMax(v, v, b, 0)
    diag = torch.diagonal(h, dim1=-2, dim2=-1).real
    fro2 = torch.view_as_real(h).square().sum((-3, -2, -1))  # ‖H‖_F² = Σλ² (cheaper than matrix_norm)
    bound = fro2.sqrt()  # ≥ λ_max: prunes blocks for free
    proxy = fro2 / diag.sum(-1).clamp_min(torch.finfo(real_dtype).tiny)  # Σλ²/Σλ ≤ λ_max: ranks blocks
    order = torch.argsort(proxy, descending=True)
    if first is None:
        first = 8 if m <= 128 else 3  # eigvalsh gets dear for big blocks
    tiny = torch.finfo(real_dtype).tiny
    top = order[:first]
    best = float(torch.linalg.eigvalsh(h[top])[:, -1].max())
    exact = int(top.numel())
    # Round 1 certifies every other block; the later rounds only the blocks that failed.
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
        best = max(best, float(torch.linalg.eigvalsh(h[top])[:, -1].max()))
        exact += int(top.numel())
        keep = bound[active] >= best
        certified += int((~keep).sum())
        active = active[keep]
    return BlockMax(best, best * (1.0 + rel_gap), exact, certified)


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


@dataclass(frozen=True)
class GramResult:
    """Gram-iteration bound on σ_max over all blocks (Delattre et al. 2023).

    Attributes:
        bound: a valid upper bound on max_b σ_max(G_b).
        lower: a valid lower bound from the same iterates.
        steps: Gram squarings performed.
    """

    bound: float
    lower: float
    steps: int


def gram_iteration(h: Tensor, *, iters: int = 12, tol: float = 5e-3, probe: int = 8) -> GramResult:
    """Gram iteration with rescaling on H_b = G_bᴴG_b, per block.

    After t squarings H_b^(t) = H_b^p / c_b with p = 2^t. Since λ^{2p} ≤
    tr(H^{2p}) = ‖H^p‖_F², σ_max ≤ ‖H^p‖_F^{1/(2p)} at every step; and since
    tr(H^{2p}) ≤ λ_max^p tr(H^p), σ_max ≥ (‖H^p‖_F² / tr(H^p))^{1/(2p)}. A
    second lower bound comes from Lanczos on the ``probe`` most promising
    blocks. The iteration stops when bound/lower ≤ 1+tol, which bounds the
    overestimate by tol. Blocks whose upper bound falls below the best lower
    bound are dropped (they cannot hold the maximum). Rescaling by the
    Frobenius norm keeps the iterates finite; log c_b tracks it.

    Args:
        h: (B, m, m) Hermitian PSD Gram blocks.
        iters: maximum squarings; tol: target ratio bound/lower − 1 on σ.
        probe: blocks given a Lanczos lower bound (0 to skip).

    Returns:
        GramResult (σ units), the bound inflated by a rounding margin.
    """
    real_dtype = h.real.dtype
    m = h.shape[-1]
    tiny = torch.finfo(real_dtype).tiny
    logc = torch.zeros(h.shape[0], dtype=torch.float64, device=h.device)
    log_probe = -math.inf
    if probe and m > 1:
        fro2 = torch.view_as_real(h).square().sum((-3, -2, -1))
        tr = torch.diagonal(h, dim1=-2, dim2=-1).real.sum(-1)
        top = torch.argsort(fro2 / tr.clamp_min(tiny), descending=True)[:probe]
        ritz = float(lanczos_top(h[top], steps=32, generator=torch.Generator().manual_seed(0)).max())
        log_probe = math.log(ritz) if ritz > 0 else -math.inf
    cur = h
    p = 1
    steps = 0
    log_up = log_lo = 0.0
    while True:
        fro2 = torch.view_as_real(cur).square().sum((-3, -2, -1)).to(torch.float64)
        tr = torch.diagonal(cur, dim1=-2, dim2=-1).real.sum(-1).to(torch.float64)
        zero = fro2 <= 0
        lfro2 = torch.log(fro2.clamp_min(tiny))
        up = (0.5 * lfro2 + logc) / p  # log λ upper, per block
        lo = (lfro2 - torch.log(tr.clamp_min(tiny)) + logc) / p  # log λ lower
        up = torch.where(zero, torch.full_like(up, -math.inf), up)
        lo = torch.where(zero, torch.full_like(lo, -math.inf), lo)
        log_lo = max(float(lo.max()), log_probe)
        log_up = float(up.max())
        if not math.isfinite(log_up):  # every block is zero
            return GramResult(0.0, 0.0, steps)
        if log_up - log_lo <= 2 * math.log1p(tol) or steps >= iters:
            break
        keep = up >= log_lo
        cur, logc, fro2 = cur[keep], logc[keep], fro2[keep]
        scale = fro2.to(real_dtype)  # divide by ‖H‖_F² so the square has Frobenius norm ≤ 1
        cur = (cur @ cur) / scale[:, None, None]
        logc = 2 * logc + torch.log(fro2)
        p *= 2
        steps += 1
    margin = 1.0 + _rounding_margin(real_dtype, m) * (steps + 1)
    return GramResult(math.exp(log_up / 2) * margin, math.exp(log_lo / 2), steps)


# ---------------------------------------------------------------------------
# One layer, all numbers


@dataclass
class ConvBounds:
    """All numbers for one convolution on one input shape (JSON-safe via ``as_dict``).

    ``circular_exact``, ``singla_bound`` and ``gram_bound`` are valid upper
    bounds for the layer: each includes ``pad_factor`` (1 for zero and
    full circular padding). ``circular_is_exact`` says whether the layer *is*
    the circular convolution (then circular_exact is its exact norm).
    ``strided_exact`` (strided layers only) is the exact norm of the strided
    circular convolution by the polyphase decomposition: up to ~2× tighter.
    """

    operator_norm: float | None
    iterations: int | None
    converged: bool | None
    strided_exact: float | None
    circular_exact: float
    circular_upper: float
    circular_is_exact: bool
    fft_size: tuple[int, ...]
    pad_factor: float
    singla_bound: float
    reshapes: dict[str, float]
    gram_bound: float
    gram_lower: float
    gram_steps: int
    heuristic: float
    blocks: int
    exact_blocks: int
    upper: float = field(init=False)

    def __post_init__(self) -> None:
        # The tightest valid bound; the circular value is exact up to its certificate gap.
        bounds = [self.circular_upper, self.singla_bound, self.gram_bound]
        if self.strided_exact is not None:
            bounds.append(self.strided_exact)
        self.upper = min(bounds)

    def as_dict(self) -> dict[str, Any]:
        op = self.operator_norm
        ratio = (lambda v: v / op if op else None)
        return {
            "operator_norm": op, "iterations": self.iterations, "converged": self.converged,
            "circular_exact": self.circular_exact, "circular_is_exact": self.circular_is_exact,
            "circular_upper": self.circular_upper, "strided_exact": self.strided_exact,
            "fft_size": list(self.fft_size), "pad_factor": self.pad_factor,
            "singla_bound": self.singla_bound, "reshape_bounds": dict(self.reshapes),
            "gram_bound": self.gram_bound, "gram_steps": self.gram_steps,
            "heuristic": self.heuristic, "upper": self.upper,
            "ratios": {"circular_exact": ratio(self.circular_exact), "singla_bound": ratio(self.singla_bound),
                       "gram_bound": ratio(self.gram_bound), "heuristic": ratio(self.heuristic),
                       "strided_exact": ratio(self.strided_exact) if self.strided_exact else None,
                       "gram_over_circular": self.gram_bound / self.circular_exact if self.circular_exact else None},
        }


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


def strided_circular(weight: Tensor, geom: ConvGeometry) -> tuple[float, Tensor] | None:
    """Sedghi's exact norm of the *strided* circular convolution (polyphase), times the pad factor.

    For zero/reflect/replicate padding the layer is a crop of the strided circular
    convolution on any canvas M ≥ n+2p, so M is rounded up to a multiple of the
    stride. Circular padding needs n divisible by the stride and no repeated rows.

    Returns:
        (σ upper bound for the layer, Gram blocks), or None when the geometry does not allow it.
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
    value = block_max_eig(h)
    return math.sqrt(max(value.certified_upper, 0.0)) * factor, h


def conv_upper_bounds(weight: Tensor, geom: ConvGeometry, *, gram_iters: int = 12,
                      gram_tol: float = 5e-3) -> dict[str, Any]:
    """The three upper bounds (and the heuristic) of a conv layer; no power iteration.

    Args:
        weight: (c_out, c_in/g, *k) in the dtype to compute in (float64 recommended).
        geom: the layer's geometry on its real input.

    Returns:
        dict with circular_exact, circular_upper (certified, with rounding slack), circular_is_exact,
        strided_exact (polyphase bound for strided layers, else None), fft_size, pad_factor,
        singla_bound, reshapes, gram_bound, gram_lower, gram_steps, heuristic, blocks, exact_blocks.
    """
    ksize = tuple(weight.shape[2:])
    fft_size = geom.fft_size()
    factor, is_exact = geom.pad_factor(ksize)
    h = gram_blocks(weight, fft_size, geom.dilation, geom.groups)
    circ, res = circular_norm(weight, fft_size, geom.dilation, geom.groups, h=h)
    gram = gram_iteration(h, iters=gram_iters, tol=gram_tol)
    four = fantastic_four(weight, geom.groups)
    margin = 1.0 + _rounding_margin(weight.dtype, h.shape[-1])
    strided = strided_circular(weight, geom)
    return {
        "strided_exact": strided[0] * margin if strided else None,
        "circular_exact": circ * factor, "circular_is_exact": is_exact,
        "circular_upper": math.sqrt(max(res.certified_upper, 0.0)) * factor * margin, "fft_size": fft_size,
        "pad_factor": factor, "singla_bound": four["singla_bound"] * factor,
        "reshapes": {k: four[k] * factor for k in ("R", "S", "T", "U")},
        # the Gram bound is never below the exact circular value (they differ by rounding only)
        "gram_bound": max(gram.bound, circ * margin) * factor, "gram_lower": gram.lower * factor,
        "gram_steps": gram.steps, "heuristic": heuristic(weight, geom.groups),
        "blocks": int(h.shape[0]), "exact_blocks": res.exact_blocks,
    }


def conv_bounds(module: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
                iters: int = 100, tol: float = 1e-6, gram_iters: int = 12, gram_tol: float = 5e-3,
                power: bool = True, generator: torch.Generator | None = None,
                weight: Tensor | None = None) -> ConvBounds:
    """Every number for a Conv1d/Conv2d ``module`` acting on one sample of ``input_shape``.

    Args:
        module: the layer (its bias is ignored: it does not change the Lipschitz constant).
        input_shape: (C, *spatial) of one sample, as recorded by a forward hook.
        dtype: computation dtype for weights and iterates.
        iters, tol: power-iteration cap and tolerance for ``operator_norm``.
        gram_iters, gram_tol: Gram-iteration cap and target tightness.
        power: run the power iteration (else operator_norm is None).
        weight: override the kernel (e.g. with a following BatchNorm folded in).

    Returns:
        ConvBounds.
    """
    w = (module.weight if weight is None else weight).detach().to(dtype)
    geom = ConvGeometry.of(module, input_shape)
    ub = conv_upper_bounds(w, geom, gram_iters=gram_iters, gram_tol=gram_tol)
    est = None
    if power:
        def op(x: Tensor) -> Tensor:
            return module._conv_forward(x, w, None)  # the real layer's padding/stride/groups, no bias

        est = operator_norm(op, tuple(input_shape), dtype=dtype, device=w.device, iters=iters, tol=tol,
                            generator=generator)
    return ConvBounds(operator_norm=est.value if est else None, iterations=est.iterations if est else None,
                      converged=est.converged if est else None, **ub)


def linear_norm(weight: Tensor) -> float:
    """Exact ‖W‖₂ of a Linear layer."""
    return float(spectral_norm_upper(weight.unsqueeze(0))[0]) if min(weight.shape) > 256 else \
        float(torch.linalg.matrix_norm(weight, ord=2))


__all__ = [
    "ConvGeometry", "PowerEstimate", "operator_norm", "lanczos_top", "spectral_norm_upper", "fantastic_four", "heuristic", "gram_blocks",
    "fourier_blocks", "BlockMax", "block_max_eig", "circular_norm", "GramResult", "gram_iteration",
    "ConvBounds", "conv_upper_bounds", "conv_bounds", "linear_norm", "polyphase_kernel", "strided_circular",
]
