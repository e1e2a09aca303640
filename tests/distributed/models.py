"""Architectures for the distributed tests, passed as ``--arch tests.distributed.models:NAME``
(a factory from the command line, as users pass their own). Misbehaviour is switched by
environment variables read here, in test code, never by robaudit."""

from __future__ import annotations

import os
import signal

import torch
from torch import nn


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2)
        self.fc = nn.Linear(4 * 12 * 12, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # count only differentiated calls: the loader's and the fit checks' plain forwards do not count,
        # so "after N" lands inside the per-sample runner (call 1 is the differentiability check)
        self.calls += int(x.requires_grad)
        rank = os.environ.get("RANK", "0")
        if os.environ.get("TEST_RAISE_ON_RANK") == rank and self.calls > 3:
            raise RuntimeError(f"injected failure on rank {rank}")
        after = os.environ.get("TEST_SIGKILL_AFTER")
        if after and os.environ.get("TEST_SIGKILL_RANK", "1") == rank and self.calls > int(after):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def small(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return Small()
