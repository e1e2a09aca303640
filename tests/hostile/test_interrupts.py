"""The deferral of Ctrl-C around compiled-package imports (robaudit.cli.interrupts), in-process."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from robaudit.cli import interrupts


def test_deferred_holds_the_signal_until_the_block_ends() -> None:
    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            with interrupts.deferred():  # re-entrant: the inner end does not raise yet
                pass
            reached_end_of_block = True
    assert reached_end_of_block
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_deferred_without_a_signal_is_silent() -> None:
    with interrupts.deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_compiled_import_finishes_before_the_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that is interrupted half-way through its import still initialises fully;
    the KeyboardInterrupt comes right after, so nothing is left half-imported."""
    pkg = tmp_path / "slowext"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import os, signal
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the import
        READY = True
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(interrupts, "COMPILED", interrupts.COMPILED | {"slowext"})
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.guarded_imports():
                import slowext  # noqa: F401
        assert sys.modules["slowext"].READY is True
    finally:
        sys.modules.pop("slowext", None)
    import builtins

    assert builtins.__import__ is interrupts._original_import  # the hook is gone after the block


def test_an_interrupt_while_the_cli_itself_imports_is_130_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """The console script imports only the standard library before the app: a Ctrl-C while Typer and
    Rich load is exit 130 with one line, not a traceback."""
    import builtins

    from robaudit.cli import entry

    real = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "robaudit.cli.app":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"
