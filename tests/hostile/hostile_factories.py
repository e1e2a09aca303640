"""Misbehaving models for the hostile suite, named on the command line as ``--arch hostile_factories:NAME``.

Each factory builds a tiny 1×28×28 → 10 network (a Linear layer, so a state_dict exists)
that misbehaves in one specific way. ``PAYLOAD`` is set by the test to a path that must
never be created.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


class _Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Fine(_Base):
    def forward(self, x):
        return self.logits(x)


class Raises(_Base):
    def forward(self, x):
        raise RuntimeError("boom in forward")


class RaisesMarkup(_Base):
    def forward(self, x):
        raise ValueError("bad [/bold] [red]markup[/red] \x1b[31mred\x1b[0m\nsecond line")


class BadStr(Exception):
    def __str__(self) -> str:
        raise TypeError("__str__ fails too")


class RaisesBadStr(_Base):
    def forward(self, x):
        raise BadStr()


class Recurses(_Base):
    def forward(self, x):
        return self.forward(x)


class Tuple(_Base):
    def forward(self, x):
        return self.logits(x), x


class Dict(_Base):
    def forward(self, x):
        return {"logits": self.logits(x)}


class Flat(_Base):
    def forward(self, x):
        return self.logits(x).sum(1)


class Argmax(_Base):
    def forward(self, x):
        return self.logits(x).argmax(1)


class OneHotArgmax(_Base):
    def forward(self, x):
        out = self.logits(x)
        return nn.functional.one_hot(out.argmax(1), 10).to(x.dtype)


class Detached(_Base):
    def forward(self, x):
        return self.logits(x).detach()


class NoGrad(_Base):
    def forward(self, x):
        with torch.no_grad():
            return self.logits(x)


class Rounded(_Base):
    def forward(self, x):
        return torch.round(self.logits(x))


class NaNLogits(_Base):
    def forward(self, x):
        return self.logits(x) * float("nan")


class InfLogits(_Base):
    def forward(self, x):
        return self.logits(x) + float("inf")


class Exits(_Base):
    def forward(self, x):
        sys.exit(0)


class ExitsOne(_Base):
    def forward(self, x):
        sys.exit(1)


class WrongClassesLater(_Base):
    """Fine on a batch of 2 (the probe), wrong shape on other batch sizes."""

    def forward(self, x):
        out = self.logits(x)
        return out if x.shape[0] == 2 else out[:, :3]


class RaisesLater(_Base):
    """Fine on the probe batch of 2, raises on the data batches (run with --limit 3)."""

    def forward(self, x):
        if x.shape[0] != 2:
            raise RuntimeError("fails on real batches")
        return self.logits(x)


def fine() -> nn.Module:
    return Fine()


def raises() -> nn.Module:
    return Raises()


def raises_markup() -> nn.Module:
    return RaisesMarkup()


def raises_bad_str() -> nn.Module:
    return RaisesBadStr()


def recurses() -> nn.Module:
    return Recurses()


def returns_tuple() -> nn.Module:
    return Tuple()


def returns_dict() -> nn.Module:
    return Dict()


def returns_flat() -> nn.Module:
    return Flat()


def argmax() -> nn.Module:
    return Argmax()


def one_hot_argmax() -> nn.Module:
    return OneHotArgmax()


def detached() -> nn.Module:
    return Detached()


def no_grad() -> nn.Module:
    return NoGrad()


def rounded() -> nn.Module:
    return Rounded()


def nan_logits() -> nn.Module:
    return NaNLogits()


def inf_logits() -> nn.Module:
    return InfLogits()


def exits() -> nn.Module:
    return Exits()


def exits_one() -> nn.Module:
    return ExitsOne()


def wrong_classes_later() -> nn.Module:
    return WrongClassesLater()


def raises_later() -> nn.Module:
    return RaisesLater()


def factory_raises() -> nn.Module:
    raise RuntimeError("the factory itself fails")


def not_a_module() -> str:
    return "not a module"
