"""Convolution geometry: everything besides the kernel that fixes a convolution's linear map.

Layout used by every bound: a conv layer is ``Select ∘ Circ_M ∘ P`` where ``P``
pads the input (an embedding for zero padding, norm 1), ``Circ_M`` is the
circular convolution at size M and ``Select`` keeps (strided) output
positions. Hence ‖layer‖ ≤ ‖Circ_M‖ · ‖P‖ · √(max repetitions in Select): the
``pad_factor``. The same geometry describes an ``nn.Conv2d`` and a bare
``F.conv2d`` call (possibly after an explicit ``F.pad``), so both are bounded
by the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

from torch import nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class ConvGeometry:
    """Input size, stride, dilation, (asymmetric) padding, groups and padding mode of a convolution.

    Attributes:
        spatial: input spatial size, e.g. (H, W) or (L,).
        stride, dilation: per spatial dim.
        pads: (left, right) padding per spatial dim (asymmetric for padding='same' or TF-style convs).
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
        rev = list(module._reversed_padding_repeated_twice)  # [left_last, right_last, left_prev, ...]
        pads = tuple((int(rev[2 * (d - 1 - i)]), int(rev[2 * (d - 1 - i) + 1])) for i in range(d))
        return cls(spatial=tuple(int(s) for s in input_shape[-d:]), stride=tuple(int(s) for s in module.stride),
                   dilation=tuple(int(s) for s in module.dilation), pads=pads, groups=int(module.groups),
                   padding_mode=str(module.padding_mode))

    @classmethod
    def of_call(cls, kernel: Sequence[int], input_shape: Sequence[int], *, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1, groups: int = 1) -> "ConvGeometry":
        """Geometry of ``F.conv{1,2}d(x, w, stride=…, padding=…, dilation=…, groups=…)`` on one sample.

        ``padding`` may be an int, a tuple, 'valid' or 'same' (torch's rule: the extra pixel goes right).
        """
        d = len(kernel)
        spatial = tuple(int(s) for s in input_shape[-d:])
        st, dl = _tuple(stride, d), _tuple(dilation, d)
        if padding == "valid":
            pads = ((0, 0),) * d
        elif padding == "same":
            total = [dli * (k - 1) for dli, k in zip(dl, kernel)]
            pads = tuple((t // 2, t - t // 2) for t in total)
        else:
            pads = tuple((p, p) for p in _tuple(padding, d))
        return cls(spatial=spatial, stride=st, dilation=dl, pads=pads, groups=int(groups))

    def with_input_pad(self, pads: Sequence[tuple[int, int]], mode: str) -> "ConvGeometry | None":
        """The geometry of this conv applied after an explicit ``F.pad`` of its input, or None.

        Only a padding-free conv absorbs a pad, and then only a pad this type can express: zero
        padding (any amounts) or one of reflect/replicate/circular. ``spatial`` is the unpadded size.
        """
        if any(p != (0, 0) for p in self.pads) or mode not in PADDING_MODES:
            return None
        spatial = tuple(n - pl - pr for n, (pl, pr) in zip(self.spatial, pads))
        if any(n <= 0 for n in spatial):
            return None
        return replace(self, spatial=spatial, pads=tuple((int(a), int(b)) for a, b in pads), padding_mode=mode)

    def output_size(self, kernel: Sequence[int]) -> tuple[int, ...]:
        return tuple((n + pl + pr - dl * (k - 1) - 1) // s + 1
                     for n, (pl, pr), dl, k, s in zip(self.spatial, self.pads, self.dilation, kernel, self.stride))

    def fft_size(self) -> tuple[int, ...]:
        """Size M of the circular convolution that dominates the layer."""
        if self.padding_mode == "circular":
            return self.spatial
        return tuple(n + pl + pr for n, (pl, pr) in zip(self.spatial, self.pads))

    @property
    def symmetric(self) -> bool:
        return all(pl == pr for pl, pr in self.pads)

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
                    src = pad_source(q, n, self.padding_mode)
                    if src >= 0:
                        counts[src] += 1
                factor_sq *= max(counts)
                # without padding and with stride 1 and a 1-wide kernel the crop keeps everything
                exact = exact and pl == 0 and pr == 0 and s == 1 and o == n
        return math.sqrt(factor_sq), exact


def pad_source(q: int, n: int, mode: str) -> int:
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


def f_pad_to_pads(pad: Sequence[int], d: int) -> tuple[tuple[int, int], ...] | None:
    """``F.pad``'s flat (left_last, right_last, left_prev, …) → per-dim (left, right) of the last d dims."""
    pad = [int(p) for p in pad]
    if len(pad) > 2 * d or len(pad) % 2 or any(p < 0 for p in pad):
        return None  # pads a channel dim, or crops: not a conv's padding
    pad = pad + [0] * (2 * d - len(pad))
    return tuple((pad[2 * (d - 1 - i)], pad[2 * (d - 1 - i) + 1]) for i in range(d))


def _tuple(v: Any, d: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * d


__all__ = ["ConvGeometry", "pad_source", "f_pad_to_pads", "PADDING_MODES"]
