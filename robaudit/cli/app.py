"""The Typer application and the one place where exceptions become exit codes.

Exit codes: 0 ok · 1 gate threshold violated · 2 usage/config error ·
3 the audit could not run. A crash is never 0 or 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Sequence

import typer

from robaudit import __version__

def _plain_type_names() -> None:
    """Show value types in ``--help`` as people know them (TEXT, INT, FLOAT, LIST; nothing for a
    switch) instead of Typer 0.2x's ``<str>``, ``<bool>``, ``<list[str]>``. Help text only: parsing
    is untouched. Skipped when Typer has no such hook (older/newer versions print their own names).
    """
    try:
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover
        return
    original = getattr(_TyperParameter, "display_type", None)
    if original is None or getattr(original, "_robaudit", False):  # pragma: no cover
        return
    names = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "bool": ""}

    def display_type(self, ctx):
        if getattr(self, "is_flag", False):
            return ""
        label = str(original(self, ctx)).strip("<>")
        if label.startswith("list["):
            return names.get(label[5:-1], label[5:-1].upper()) + " (repeatable)"
        return names.get(label, label.upper())

    display_type._robaudit = True  # type: ignore[attr-defined]
    _TyperParameter.display_type = display_type  # type: ignore[method-assign]


_plain_type_names()

app = typer.Typer(
    name="robaudit",
    help="Audit how stable a trained image classifier is to input perturbations.\n\n"
    "Every command works with no arguments on the embedded sample (a LeNet trained on "
    "Fashion-MNIST, and 1,000 Fashion-MNIST test images).",
    no_args_is_help=False,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"robaudit {__version__}")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


_registered = False


def _register() -> None:
    """Add the commands (imports every analysis module) once, inside :func:`run`, so that an
    interrupt or an import error there is mapped to an exit code like any other failure."""
    global _registered
    if not _registered:
        from robaudit.cli import commands

        commands.register(app)
        _registered = True


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("ROBAUDIT_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app and exit with the right code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # OpenMP's busy-wait policy makes small LAPACK calls 10-100x slower on shared cores;
    # must be set before torch is imported (the user's own setting wins).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from robaudit.cli import allocator

    allocator.tune()  # reuse freed tensors instead of faulting them in again (glibc; the user's MALLOC_* wins)
    from robaudit.cli.interrupts import guarded_imports

    try:
        with guarded_imports():  # Ctrl-C is held back while torch & co. initialise (see the module)
            code = run(argv)
        # The run is over and its output written: a Ctrl-C from here on would only race the interpreter's
        # shutdown, which restores SIGINT's default action (death by signal, exit -2, no message) unless
        # the signal is ignored; an ignored signal is left ignored.
        with contextlib.suppress(ValueError):  # (only the main thread may set handlers)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # a second Ctrl-C while the first is being reported, or one just at the end
        code = 130
    if code == 130:
        _exit_interrupted()
    if "torch" in sys.modules and sys.gettrace() is None and sys.getprofile() is None:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown, once robaudit's work is out.

    With torch loaded, CPython's finalisation (freeing modules, then the C++ libraries' static
    destructors) takes about half a second here, a tenth of a quick audit, and shows the user
    nothing. The exit handlers still run (logging, temporary files, weakref finalizers) and the
    streams are flushed; every file robaudit writes is closed when its writer returns. Not under a
    tracer or profiler (coverage, cProfile), which write their results during the normal exit.
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        _flush_streams()
        os._exit(code)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more to say
            pass


def _exit_interrupted() -> None:
    """Exit 130 now, after flushing the streams (the partial report is already written).

    A plain ``sys.exit(130)`` after a handled Ctrl-C sometimes ended as death by SIGINT
    (exit -2 for the parent process, no output): CPython's ``Py_RunMain`` re-raises SIGINT
    after finalisation when its "unhandled KeyboardInterrupt" flag is set, and that flag is
    also set when the interrupt passes through code a C extension ran with ``PyRun_*``,
    even if robaudit caught it later. ``os._exit`` makes the documented code certain.
    """
    _flush_streams()
    os._exit(130)


def run(argv: Sequence[str]) -> int:
    """Run the CLI on ``argv`` and return the exit code; never raises.

    The one place where exceptions become exit codes. ``--debug`` adds the traceback on
    stderr and changes nothing else: the exit code is the same with and without it.
    A closed stdout (``robaudit info | head -1``) does not change the exit code either:
    the rest of the output is discarded and the command finishes (a gate result is never
    lost to a broken pipe).
    """
    if _completion_requested(argv):
        return _complete(argv)
    debug = _debug_requested(argv)
    guard = _PipeGuard(sys.stdout)
    saved, sys.stdout = sys.stdout, guard  # type: ignore[assignment]
    try:
        code, exc = _invoke(argv)
    finally:
        sys.stdout = saved
    if exc is not None:
        if debug:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        _report(exc, code)
    return code


def _completion_requested(argv: Sequence[str]) -> bool:
    """Shell completion: the shell calls us with _ROBAUDIT_COMPLETE set, or the user installs it."""
    return bool(os.environ.get("_ROBAUDIT_COMPLETE")) or any(
        a in ("--install-completion", "--show-completion") or a.startswith(("--install-completion=", "--show-completion="))
        for a in argv)


def _complete(argv: Sequence[str]) -> int:
    """Let click answer the completion request; it ends with sys.exit, which here is expected."""
    try:
        _register()  # the commands are the candidates (in a fresh process nothing else has added them)
        app(args=list(argv), prog_name="robaudit")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


def _invoke(argv: Sequence[str]) -> tuple[int, BaseException | None]:
    """(exit code, the exception to report or None)."""
    from robaudit.errors import RobauditError

    exits, aborts, usage = _framework_exceptions()
    try:
        _register()
        result = app(args=list(argv), prog_name="robaudit", standalone_mode=False)
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0), None
    except aborts as exc:
        # click turns KeyboardInterrupt *and* EOFError into Abort; only the first is an interrupt.
        if isinstance(exc.__context__, EOFError):
            return 3, exc.__context__
        return 130, exc
    except usage as exc:  # bad flags, missing values: usage error
        return 2, exc
    except RobauditError as exc:
        return exc.exit_code, exc
    except KeyboardInterrupt as exc:
        return 130, exc
    except SystemExit as exc:
        # Only robaudit's own code paths return exit codes; a SystemExit here came from the
        # user's model or a library (e.g. sys.exit(0) in forward) and must not read as a pass.
        return 3, exc
    except Exception as exc:  # a crash is never a pass (0) nor a gate failure (1)
        return 3, exc
    return int(result or 0), None


def _report(exc: BaseException, code: int) -> None:
    """The one-line error message for ``exc`` (exit ``code``) on stderr."""
    from robaudit.errors import RobauditError

    if code == 130:
        _error("interrupted")
        return
    _, _, usage = _framework_exceptions()
    if isinstance(exc, usage):
        _error(exc.format_message() if hasattr(exc, "format_message") else str(exc), hint=_usage_hint(exc))
    elif isinstance(exc, RobauditError):
        _error(str(exc))
    elif isinstance(exc, SystemExit):
        _error(f"the model or a library called sys.exit({exc.code!r}) while robaudit was running; "
               "the audit could not run")
    else:
        _error(f"internal error: {type(exc).__name__}: {_first_line(exc)} (run again with --debug for the traceback)")


def _first_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ itself fails
        return ""
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


class _PipeGuard:
    """sys.stdout stand-in that turns a broken pipe into "discard the rest of the output".

    Python ignores SIGPIPE, so a reader that stops early (``| head -1``) makes the next write
    raise BrokenPipeError. Raising would abort the command and lose its exit code; instead the
    output is dropped and the command finishes. The real stdout fd is pointed at /dev/null so
    the interpreter's final flush does not fail either.
    """

    def __init__(self, inner) -> None:
        self._inner = inner
        self.broken = False

    def _broke(self) -> None:
        self.broken = True
        try:
            fd = self._inner.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass  # not a real file (pytest capture): nothing to flush at exit

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._inner.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._inner.flush()
            except BrokenPipeError:
                self._broke()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _framework_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception classes of Typer and of click.

    Recent Typer vendors its own click; older Typer re-exports click's. Both
    are caught so the exit-code mapping does not depend on the version.
    """
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    usage: list[type] = []
    try:
        from typer._click import exceptions as vendored  # Typer >= 0.2x

        if hasattr(vendored, "Exit"):
            exits.append(vendored.Exit)
        usage.append(vendored.ClickException)
    except ImportError:
        pass
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.ClickException)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(usage)


def _usage_hint(exc: BaseException) -> str | None:
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return f"see '{ctx.command_path} --help'"
    return None


def _error(message: str, hint: str | None = None) -> None:
    """``error: <message>`` on stderr: one line, capped in length, user text never read as markup."""
    from robaudit.cli.console import clip_message, safe_text, stderr_console

    text = clip_message(message)
    if hint:
        text += f" ({hint})"
    try:
        stderr_console().print(f"[bold red]error:[/bold red] {safe_text(text)}", highlight=False, soft_wrap=True)
    except (BrokenPipeError, OSError):
        pass  # stderr closed too: the exit code still tells


if __name__ == "__main__":
    main()
