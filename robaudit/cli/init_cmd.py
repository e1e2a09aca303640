"""``robaudit init``: write a commented starter robaudit.yaml (never over an existing file)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

HELP = ("Write a commented starter robaudit.yaml (model, data, analyses, gate thresholds) into the current "
        "directory; an existing file is never overwritten.")


def starter_text() -> str:
    """The starter config shipped in the package (robaudit/examples/robaudit.yaml)."""
    from importlib.resources import files

    return files("robaudit").joinpath("examples", "robaudit.yaml").read_text(encoding="utf-8")


def init(
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="FILE", help="Where to write it [default: ./robaudit.yaml].")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> int:
    from robaudit.cli.console import Diagnostics
    from robaudit.errors import UsageError

    path = output or "robaudit.yaml"
    if os.path.lexists(path):
        raise UsageError(f"{path} already exists; not overwritten (edit it, delete it, or pass -o OTHER.yaml)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--output: the directory {parent!r} does not exist")
    try:
        # "x": create only, so a file appearing meanwhile is not overwritten either
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(starter_text())
    except FileExistsError:
        raise UsageError(f"{path} already exists; not overwritten") from None
    except PermissionError:
        raise UsageError(f"cannot write {path} (permission denied)") from None
    Diagnostics().note(f"wrote {path}: edit it, then run 'robaudit audit' (it reads ./robaudit.yaml)")
    return 0
