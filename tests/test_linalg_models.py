"""Small float64 models with a dense ground truth, shared by the linalg/norms/spectrum tests.

The ground truth is ``torch.autograd.functional.jacobian`` per sample plus an SVD,
which shares no code with :mod:`robaudit.linalg`.
"""

from __future__ import annotations

import torch
from torch import nn

from robaudit.models import zoo


class MaxPoolCNN(nn.Module):
    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(6 * 2 * 2, classes)

    def forward(self, x):
        return self.head(self.body(x))


class BatchNormCNN(nn.Module):
    """Conv → BatchNorm (eval, non-trivial running stats) → ReLU → avg-pool → linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 5 * 5, classes)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.3, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class ResidualNet(nn.Module):
    """conv → [conv → BN → ReLU → conv] + identity → ReLU → linear (a residual block)."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, classes)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.c2(torch.relu(self.bn(self.c1(h)))))
        return self.fc(h.flatten(1))


def lenet() -> nn.Module:
    return zoo.build("lenet")


# name → (factory, input shape of one sample)
MODELS = {
    "lenet": (lenet, (1, 28, 28)),
    "maxpool": (MaxPoolCNN, (1, 10, 10)),
    "batchnorm": (BatchNormCNN, (1, 10, 10)),
    "residual": (ResidualNet, (1, 8, 8)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """(float64 model in eval mode, a batch of 4 inputs in [0, 1])."""
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    model = factory().double().eval()
    x = torch.rand(4, *shape, dtype=torch.float64)
    return model, x


def dense_jacobians(model: nn.Module, x: torch.Tensor, target: str = "logits") -> torch.Tensor:
    """(B, C, D) by torch.autograd.functional.jacobian, one sample at a time."""
    def f(z):
        out = model(z[None])[0]
        if target == "probs":
            return torch.softmax(out, 0)
        if target == "logprobs":
            return torch.log_softmax(out, 0)
        return out

    return torch.stack([torch.autograd.functional.jacobian(f, xi).reshape(-1, xi.numel()) for xi in x])
