"""Consoles: data to stdout, diagnostics to stderr; and the one way user text reaches them.

Everything robaudit prints through Rich is markup. Text that robaudit did not write itself
(paths, checkpoint meta, class names, any field of a report read from disk, exception
messages) must pass through :func:`safe_text` first: it makes ``[/bold]`` print literally
instead of raising ``MarkupError`` and turns terminal control sequences (ANSI escapes,
carriage returns, bidi overrides) into visible ``\\x1b``-style text, so a report cannot
drive the terminal.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from rich.console import Console

from robaudit.text import CLIP, MAX_MESSAGE, _short_repr, clip, clip_message, strip_controls  # noqa: E402,F401


def safe_text(s: Any) -> str:
    """User text made safe for Rich markup: control characters shown as ``\\xNN`` and markup escaped.

    Use for every value robaudit did not write itself before it goes into a markup string
    or a table cell (Rich parses both as markup).
    """
    from rich.markup import escape

    return escape(strip_controls(s))


def _width() -> int | None:
    cols = os.environ.get("COLUMNS")
    return int(cols) if cols and cols.isdigit() else None


def stdout_console() -> Console:
    # emoji=False: ':smile:' in a path or class name is text, not an emoji code.
    return Console(width=_width(), soft_wrap=False, emoji=False)


def stderr_console() -> Console:
    return Console(stderr=True, width=_width(), emoji=False)


class Diagnostics:
    """Warnings, notes and progress bars on stderr (silent with --quiet).

    Messages are plain text (they often hold paths and values from files): they are
    escaped here, never interpreted as markup.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = stderr_console()
        self.warnings: list[str] = []

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{safe_text(message)}[/dim]", highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {safe_text(message)}", highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator["_Task"]:
        # Without a terminal (CI logs, pipes) a live bar only prints blank lines: show nothing.
        if self.quiet or not self.console.is_terminal:
            yield _Task(None, None)
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        if total is None:  # one step of unknown length: a spinner and the time so far, never "0/?"
            columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn()]
        else:
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(safe_text(description), total=total)
            yield _Task(bar, task)


class _Task:
    def __init__(self, bar, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)
