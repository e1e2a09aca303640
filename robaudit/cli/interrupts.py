"""Ctrl-C never lands inside the import of a compiled package.

A KeyboardInterrupt raised while torch (or torchvision, torchattacks, onnx, ...) is half-way
through initialising its C extension leaves the interpreter in a state where the next
import of that package aborts the process or recurses without end: exit -6, -2 or 3 with
no message, instead of 130. The fix is at the root: while such an import runs, SIGINT is
only recorded, and raised as a KeyboardInterrupt the moment the import has finished, where
the normal interrupt path (partial report, exit 130) takes over. The delay is the import
time (a few seconds for torch at most); an interrupt is never dropped.

Installed by the console entry point only (:func:`robaudit.cli.app.main`); a library user's
own process keeps its own import and signal handling.
"""

from __future__ import annotations

import builtins
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

#: Top-level packages with compiled parts whose initialisation must not be interrupted.
COMPILED = frozenset({"torch", "torchvision", "torchattacks", "onnx", "onnx2torch", "onnxruntime", "numpy",
                      "scipy", "sympy", "matplotlib", "PIL", "yaml"})

_depth = 0
_pending = False
_previous: Any = None


def _record(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    global _pending
    _pending = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT inside the block is held back and raised as KeyboardInterrupt when it ends.

    Re-entrant; a no-op outside the main thread (only it receives signals in Python).
    """
    global _depth, _pending, _previous
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _previous = signal.signal(signal.SIGINT, _record)
        _pending = False
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            signal.signal(signal.SIGINT, _previous)
            if _pending:
                _pending = False
                raise KeyboardInterrupt


_original_import = builtins.__import__


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and _depth == 0 and name not in sys.modules and name.partition(".")[0] in COMPILED:
        with deferred():
            return _original_import(name, globals, locals, fromlist, level)
    return _original_import(name, globals, locals, fromlist, level)


@contextlib.contextmanager
def guarded_imports() -> Iterator[None]:
    """Within the block, first imports of :data:`COMPILED` packages run under :func:`deferred`."""
    builtins.__import__ = _guarded_import
    try:
        yield
    finally:
        builtins.__import__ = _original_import
