"""--dtype float64 is float64 end to end: the normalisation carries no float32 rounding."""

from __future__ import annotations

import torch
from torch import nn

from robaudit.models.adapt import adapt


def test_normalisation_buffers_are_exact_in_float64():
    std = (0.2470, 0.2435, 0.2616)
    mean = (0.4914, 0.4822, 0.4465)
    loaded = adapt(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), input_shape=(3, 4, 4), mean=mean, std=std)
    loaded.module.double()
    norm = loaded.module.normalize
    assert norm.std.dtype == torch.float64
    assert norm.std.flatten().tolist() == list(std)   # exact, not float32(0.247) = 0.24699999392...
    assert norm.mean.flatten().tolist() == list(mean)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    expected = (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.equal(norm(x), expected)
    # float32 stays float32 (the default)
    loaded32 = adapt(nn.Sequential(nn.Flatten(), nn.Linear(48, 5)), input_shape=(3, 4, 4), mean=mean, std=std)
    assert loaded32.module.normalize.std.dtype == torch.float32
