"""User text in messages: clipped, one line, control characters made visible (no Rich, no torch).

Used by every layer that echoes a user's value in an error (config, settings, loaders) and by
the CLI's consoles; it lives below the CLI so engines need not import it.
"""

from __future__ import annotations

from typing import Any

#: Longest user value echoed inside a message (one bad YAML value was once 39 MB long).
CLIP = 200
#: Longest error message the CLI prints (messages stay one line and readable).
MAX_MESSAGE = 2000


def strip_controls(text: Any, *, newlines: bool = False) -> str:
    """``text`` as a str with control characters shown as ``\\xNN`` (never sent raw to a terminal).

    Args:
        newlines: keep ``\\n`` (multi-line text such as Markdown); otherwise newlines and tabs
            become spaces, so a value stays on its line.
    """
    from robaudit.report.validate import show_controls

    text = str(text)
    if not newlines:
        text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return show_controls(text)


def clip(value: Any, limit: int = CLIP) -> str:
    """``repr``-like text of ``value`` for a message, at most ~``limit`` characters (plus a count of the rest).

    Never builds the full repr first: a YAML alias bomb's value expands to gigabytes.
    """
    if isinstance(value, str):
        text = strip_controls(repr(value[:limit]))
        return text if len(value) <= limit else f"{text}… ({len(value) - limit:,} more characters)"
    text = strip_controls(_short_repr(value, limit))
    return text if len(text) <= limit else f"{text[:limit]}…"


def _short_repr(value: Any, limit: int) -> str:
    """repr of ``value`` without building a huge string first (a YAML alias bomb expands to GBs)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 16
    r.maxlevel = 4
    return r.repr(value)


def clip_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """One line, at most ``limit`` characters."""
    message = strip_controls(message)
    if len(message) > limit:
        message = f"{message[:limit]}… ({len(message) - limit:,} more characters)"
    return message
