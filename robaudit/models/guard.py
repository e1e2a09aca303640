"""The one model-state guard of the package (captum-style: restore everything in ``finally``).

Analyses, attacks and bounds run the user's model in eval mode, sometimes with
frozen parameters and temporary hooks. ``preserved`` records the state first
and puts it back on success, on error and on Ctrl-C, so the caller gets the
model exactly as it was.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


@contextlib.contextmanager
def preserved(model: nn.Module, *, eval: bool = False, freeze: bool = False) -> Iterator[nn.Module]:
    """Restore modes, ``requires_grad`` and hooks of ``model`` on exit.

    Args:
        model: any module.
        eval: put the model in eval mode inside (samples must not interact).
        freeze: set ``requires_grad=False`` on every parameter inside (attacks
            need input gradients only).
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    hooks = [(m, name, dict(getattr(m, name))) for m in model.modules() for name in _HOOK_DICTS
             if isinstance(getattr(m, name, None), dict)]
    try:
        if eval:
            model.eval()
        if freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, name, saved in hooks:
            current = getattr(m, name)
            if current.keys() != saved.keys():
                current.clear()
                current.update(saved)


def state_of(model: nn.Module) -> tuple:
    """A comparable snapshot of what ``preserved`` restores (for tests)."""
    return (tuple(m.training for m in model.modules()),
            tuple(p.requires_grad for p in model.parameters()),
            tuple(len(getattr(m, name)) for m in model.modules() for name in _HOOK_DICTS
                  if isinstance(getattr(m, name, None), dict)))
