"""Random start and probe vectors keyed by sample, so results do not depend on batching.

A sample's vectors come from a generator seeded with (seed, key), where the key
is normally the dataset index. The same sample then gets the same vectors
whatever its batch size or position in the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, key) over the 63-bit seed space


def keyed_normal(keys: torch.Tensor | Sequence[int], shape: Sequence[int], *, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal tensor (B, *shape), row i drawn from a generator seeded by (seed, keys[i]).

    Args:
        keys: (B,) integer keys (dataset indices).
        shape: shape of one sample's draw.
        seed: base seed.
    """
    keys = [int(k) for k in (keys.tolist() if isinstance(keys, torch.Tensor) else keys)]
    gen = torch.Generator(device="cpu")
    rows = []
    for key in keys:
        gen.manual_seed(((seed * _MIX) ^ (key * 0xBF58476D1CE4E5B9 + 1)) % (2**63 - 1))
        rows.append(torch.randn(*shape, generator=gen, dtype=torch.float64))
    if not rows:
        return torch.empty(0, *shape, dtype=dtype, device=device)
    return torch.stack(rows).to(dtype=dtype, device=device)


def keyed_sphere(keys: torch.Tensor | Sequence[int], shape: Sequence[int], **kwargs) -> torch.Tensor:
    """Like :func:`keyed_normal`, with each (last-axis) vector scaled to unit ℓ2 norm (uniform on the sphere)."""
    z = keyed_normal(keys, shape, **kwargs)
    return z / z.norm(dim=-1, keepdim=True)
