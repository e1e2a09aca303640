"""The Typer application and the one place where exceptions become exit codes.

Exit codes: 0 ok · 1 gate threshold violated · 2 usage/config error ·
3 the audit could not run. A crash is never 0 or 1.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import typer

from robaudit import __version__

app = typer.Typer(
    name="robaudit",
    help="Audit how stable a trained image classifier is to input perturbations.\n\n"
    "Every command works with no arguments on the embedded sample (a LeNet trained on "
    "Fashion-MNIST, and 1,000 Fashion-MNIST test images).",
    no_args_is_help=False,
    add_completion=False,
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


def _register() -> None:
    from robaudit.cli import commands

    commands.register(app)


_register()


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("ROBAUDIT_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app and exit with the right code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # OpenMP's busy-wait policy makes small LAPACK calls 10-100x slower on shared cores;
    # must be set before torch is imported (the user's own setting wins).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(run(argv))


def run(argv: Sequence[str]) -> int:
    """Run the CLI on ``argv`` and return the exit code (never raises, but SystemExit on --help)."""
    from robaudit.errors import RobauditError

    debug = _debug_requested(argv)
    exits, aborts, usage = _framework_exceptions()
    try:
        result = app(args=list(argv), prog_name="robaudit", standalone_mode=False)
    except exits as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except aborts:
        _error("interrupted")
        return 130
    except usage as exc:  # bad flags, missing values: usage error
        if debug:
            raise
        _error(exc.format_message() if hasattr(exc, "format_message") else str(exc),
               hint=_usage_hint(exc))
        return 2
    except RobauditError as exc:
        if debug:
            raise
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # a crash is never a pass (0) nor a gate failure (1)
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        _error(f"internal error: {type(exc).__name__}: {first} (run again with --debug for the traceback)")
        return 3
    return int(result or 0)


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
    from robaudit.cli.console import stderr_console

    text = f"[bold red]error:[/bold red] {message}"
    if hint:
        text += f" ({hint})"
    stderr_console().print(text, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
