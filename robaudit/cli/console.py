"""Consoles: data to stdout, diagnostics to stderr."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from rich.console import Console


def _width() -> int | None:
    cols = os.environ.get("COLUMNS")
    return int(cols) if cols and cols.isdigit() else None


def stdout_console() -> Console:
    return Console(width=_width(), soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True, width=_width())


class Diagnostics:
    """Warnings, notes and progress bars on stderr (silent with --quiet)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = stderr_console()
        self.warnings: list[str] = []

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{message}[/dim]", highlight=False)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator["_Task"]:
        if self.quiet:
            yield _Task(None, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield _Task(bar, task)


class _Task:
    def __init__(self, bar, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)
