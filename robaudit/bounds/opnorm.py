"""σ_max of a layer as it really acts, at the cost of a power step per iteration.

Each product AᵀA·v is one ``conv`` and one ``conv_transpose`` with the layer's
real padding, stride, dilation and groups (or two matrix products for a
linear layer): no autograd graph, and the layer's own dtype. Lanczos on AᵀA
(robaudit's :func:`robaudit.linalg.lanczos.lanczos`) from a warm start (the
top right singular vector of the circular problem) converges in a few steps
even where σ₂/σ₁ is close to 1 and a plain power iteration crawls.

Stopping rule: the Ritz residual ‖AᵀAv − θv‖ ≤ tol·θ. For the symmetric AᵀA it
puts an eigenvalue within the residual of θ, so ``error_bound`` says how far
the reported σ can be from a singular value of the layer; θ itself is a
Rayleigh quotient, hence σ = √θ ≤ σ_max always (a lower bound).

Layers with the same shapes run as one batch: their kernels are stacked into
one grouped convolution, so one call serves all of them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robaudit.bounds.geometry import ConvGeometry
from robaudit.linalg.lanczos import lanczos
from robaudit.linalg.products import pullback

WARM_NOISE = 1e-2  # share of a random vector mixed into a warm start, so no direction is missed
RESTART = 16  # Lanczos steps between restarts


@dataclass(frozen=True)
class NormEstimate:
    """σ_max of a linear map from Lanczos on AᵀA.

    Attributes:
        value: √θ for the top Ritz value θ: a lower bound on σ_max.
        iterations: products AᵀA·v computed.
        converged: the residual is within ``tol``·θ.
        residual: ‖AᵀAv − θv‖ / θ (relative eigen-residual).
        error_bound: a singular value of the map lies in [value, value·(1 + error_bound)].
    """

    value: float
    iterations: int
    converged: bool
    residual: float
    error_bound: float


@dataclass(frozen=True)
class ConvMap:
    """A bias-free convolution on one sample shape, with its forward and adjoint as conv calls.

    ``weight`` (c_out, c_in/g, *k); ``in_shape`` (C, *spatial) of one sample; ``geom`` its geometry.
    Several maps with the same :attr:`key` are applied at once as one grouped convolution.
    """

    weight: Tensor
    geom: ConvGeometry
    in_shape: tuple[int, ...]

    @property
    def key(self) -> tuple:
        return self.key_for(self.weight.shape, self.geom, self.in_shape, self.weight.dtype, self.weight.device)

    @staticmethod
    def key_for(shape: Sequence[int], geom: ConvGeometry, in_shape: Sequence[int], dtype: torch.dtype,
                device: torch.device) -> tuple:
        """The :attr:`key` of a map with a kernel of this shape, dtype and device, before the kernel exists."""
        return ("conv", tuple(shape), geom, tuple(int(s) for s in in_shape), dtype, device)

    def _fns(self) -> tuple:
        d = self.weight.dim() - 2
        return (F.conv1d, F.conv_transpose1d) if d == 1 else (F.conv2d, F.conv_transpose2d)

    def forward(self, x: Tensor, weight: Tensor, groups: int) -> Tensor:
        """x (1, G·C, *spatial) → (1, G·c_out, *out) for G stacked kernels ``weight``."""
        conv, _ = self._fns()
        g = self.geom
        if g.padding_mode == "zeros" and g.symmetric:
            return conv(x, weight, None, g.stride, tuple(p for p, _ in g.pads), g.dilation, groups)
        return conv(self._pad(x), weight, None, g.stride, 0, g.dilation, groups)

    def adjoint(self, y: Tensor, weight: Tensor, groups: int) -> Tensor:
        """The exact transpose of :meth:`forward`."""
        _, conv_t = self._fns()
        g = self.geom
        k = weight.shape[2:]
        if g.padding_mode == "zeros" and g.symmetric:
            pads = tuple(p for p, _ in g.pads)
            extra = tuple(n + 2 * p - ((o - 1) * s + dl * (kk - 1) + 1)
                          for n, p, o, s, dl, kk in zip(g.spatial, pads, y.shape[2:], g.stride, g.dilation, k))
            return conv_t(y, weight, None, g.stride, pads, extra, groups, g.dilation)
        padded = tuple(n + pl + pr for n, (pl, pr) in zip(g.spatial, g.pads))
        extra = tuple(n - ((o - 1) * s + dl * (kk - 1) + 1)
                      for n, o, s, dl, kk in zip(padded, y.shape[2:], g.stride, g.dilation, k))
        z = conv_t(y, weight, None, g.stride, 0, extra, groups, g.dilation)
        return self._unpad(z)

    def _pad(self, x: Tensor) -> Tensor:
        flat = [p for pl, pr in reversed(self.geom.pads) for p in (pl, pr)]
        mode = "constant" if self.geom.padding_mode == "zeros" else self.geom.padding_mode
        return F.pad(x, flat, mode=mode)

    def _unpad(self, z: Tensor) -> Tensor:
        """Pᵀ: the adjoint of the padding (a crop for zeros; sums the copies for the other modes)."""
        if self.geom.padding_mode == "zeros":
            idx = (slice(None), slice(None), *[slice(pl, pl + n) for n, (pl, _) in zip(self.geom.spatial,
                                                                                        self.geom.pads)])
            return z[idx]
        with torch.enable_grad():  # a pad is linear: its vector-Jacobian product is its transpose
            x = torch.zeros((z.shape[0], z.shape[1], *self.geom.spatial), dtype=z.dtype, device=z.device,
                            requires_grad=True)
            (out,) = pullback(self._pad(x), x, z)
        return out

    def stack(self, maps: Sequence["ConvMap"]) -> tuple[Tensor, int]:
        """The kernels of ``maps`` (same key) as one grouped kernel, and its group count."""
        return torch.cat([m.weight for m in maps]), self.geom.groups * len(maps)


@dataclass(frozen=True)
class LinearMap:
    """x ↦ W x for a (out, in) matrix W."""

    weight: Tensor

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (int(self.weight.shape[1]),)

    @property
    def key(self) -> tuple:
        return self.key_for(self.weight.shape, self.weight.dtype, self.weight.device)

    @staticmethod
    def key_for(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> tuple:
        """The :attr:`key` of a map with a matrix of this shape, dtype and device, before the matrix exists."""
        return ("linear", tuple(shape), dtype, device)

    def stack(self, maps: Sequence["LinearMap"]) -> tuple[Tensor, int]:
        return torch.stack([m.weight for m in maps]), len(maps)

    def forward(self, x: Tensor, weight: Tensor, groups: int) -> Tensor:
        return torch.bmm(weight, x.reshape(groups, -1, 1))

    def adjoint(self, y: Tensor, weight: Tensor, groups: int) -> Tensor:
        return torch.bmm(weight.transpose(1, 2), y)


Map = ConvMap | LinearMap


def _gram_matvec(maps: Sequence[Map]):
    """AᵀA for a batch of maps with one key: (B, n) → (B, n), one forward and one adjoint call."""
    first = maps[0]
    weight, groups = first.stack(maps)
    b, shape = len(maps), first.in_shape

    def matvec(v: Tensor) -> Tensor:
        with torch.no_grad():
            if isinstance(first, LinearMap):
                return first.adjoint(first.forward(v, weight, groups), weight, groups).reshape(b, -1)
            x = v.reshape(1, b * shape[0], *shape[1:])
            return first.adjoint(first.forward(x, weight, groups), weight, groups).reshape(b, -1)

    return matvec


def operator_norms(maps: Sequence[Map], *, warm: Sequence[Tensor | None] | None = None, iters: int = 100,
                   tol: float = 1e-3, seed: int = 0, restart: int = RESTART) -> list[NormEstimate]:
    """σ_max of each map by restarted Lanczos on AᵀA, maps with equal shapes batched into one grouped call.

    Lanczos runs ``restart`` steps, then restarts from its Ritz vector while the residual is above
    ``tol``·θ: its full reorthogonalisation then stays cheap next to the convolutions, and memory
    stays at ``restart`` vectors per layer.

    Args:
        maps: the layers (ConvMap / LinearMap).
        warm: per map, a start vector of its input shape (e.g. :func:`fourier.top_right_vector`
            cropped to the input), or None for a random one.
        iters: maximum products per map; tol: residual tolerance relative to θ.
        seed: seed of the random start vectors and of the noise added to warm starts.

    Returns:
        One :class:`NormEstimate` per map, in order.
    """
    warm = list(warm) if warm is not None else [None] * len(maps)
    out: list[NormEstimate | None] = [None] * len(maps)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(m.key, []).append(i)
    for key, idx in groups.items():
        # each group draws from its own stream (seed, key): the same starts whichever groups run, in any order
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(repr(key[:-1]).encode()))
        init = _starts([maps[i] for i in idx], [warm[i] for i in idx], gen)
        for i, est in zip(idx, _restarted([maps[i] for i in idx], init, iters, tol, restart)):
            out[i] = est
    return out  # type: ignore[return-value]


def _starts(batch: Sequence[Map], warm: Sequence[Tensor | None], gen: torch.Generator) -> Tensor:
    """(B, n) start vectors: the warm start plus a little noise, or noise alone."""
    w0 = batch[0].weight
    n = math.prod(batch[0].in_shape)
    noise = torch.randn(len(batch), n, generator=gen, dtype=w0.dtype).to(w0.device)
    noise = noise / noise.norm(dim=1, keepdim=True)
    init = noise.clone()
    for row, start in enumerate(warm):
        if start is not None:
            start = start.reshape(-1).to(init)
            norm = float(start.norm())
            if norm > 0 and math.isfinite(norm):
                init[row] = start / norm + WARM_NOISE * noise[row]
    return init


def _restarted(batch: Sequence[Map], init: Tensor, iters: int, tol: float, restart: int) -> list[NormEstimate]:
    """Restarted Lanczos (robaudit.linalg) on a batch of maps with one key."""
    b = len(batch)
    theta = torch.zeros(b, dtype=torch.float64)
    resid = torch.full((b,), math.inf, dtype=torch.float64)
    steps = torch.zeros(b, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    active = list(range(b))
    vec = init
    while active:
        left = iters - int(steps[active[0]])
        if left <= 0:
            break
        res = lanczos(_gram_matvec([batch[i] for i in active]), vec, k=1, iters=min(restart, left), tol=tol,
                      return_vectors=True)
        vals = res.values[:, 0].double()
        if not bool(torch.isfinite(vals).all()):
            from robaudit.errors import NumericalError

            raise NumericalError("power iteration on a layer produced NaN/Inf: check the layer's weights")
        rows = torch.tensor(active)
        theta[rows], resid[rows] = vals, res.residual[:, 0].double()
        steps[rows] += res.iterations.cpu()
        done[rows] = res.converged.cpu()
        keep = [j for j, i in enumerate(active) if not bool(done[i])]
        # a Krylov space that is the whole space is exact even if the residual says otherwise
        if not keep or int(res.iterations.max()) >= math.prod(batch[0].in_shape):
            break
        vec = res.vectors[keep, 0]
        active = [active[j] for j in keep]
    out = []
    for row in range(b):
        t = max(float(theta[row]), 0.0)
        r = float(resid[row])
        rel = r / t if t > 0 else (0.0 if r == 0 else math.inf)
        err = math.sqrt(1.0 + rel) - 1.0 if math.isfinite(rel) else math.inf
        out.append(NormEstimate(math.sqrt(t), int(steps[row]), bool(done[row]), rel, err))
    return out


def crop_to_input(canvas: Tensor, geom: ConvGeometry) -> Tensor:
    """The input-sized window of a vector on the padded canvas (input pixel i sits at canvas i + left pad)."""
    if geom.padding_mode == "circular":  # the canvas is the periodic padded signal: pixel i sits at i + left pad
        canvas = torch.roll(canvas, shifts=[-pl for pl, _ in geom.pads], dims=list(range(1, canvas.dim())))
        idx = [slice(0, n) for n in geom.spatial]
    else:
        idx = [slice(pl, pl + n) for n, (pl, _) in zip(geom.spatial, geom.pads)]
    return canvas[(slice(None), *idx)]


__all__ = ["NormEstimate", "ConvMap", "LinearMap", "operator_norms", "crop_to_input", "WARM_NOISE"]
