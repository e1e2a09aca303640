"""Report files: atomic writes and validated reads."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from robaudit.errors import UsageError


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder + rename.

    A reader never sees a half-written file; on failure the temp file is removed
    and any previous file at ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--output: folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=".robaudit-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write_report(path: str, report: dict[str, Any]) -> None:
    write_text_atomic(path, dumps(report))


def read_report(path: str) -> dict[str, Any]:
    """Load a report JSON, checking it is one (exit 2 if not)."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such report file")
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON report ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(report, dict) or "schema_version" not in report or "analyses" not in report:
        raise UsageError(f"{path}: not a robaudit report (no schema_version/analyses keys)")
    from robaudit.report import SCHEMA_VERSION

    if report["schema_version"] > SCHEMA_VERSION:
        raise UsageError(f"{path}: schema_version {report['schema_version']} is newer than this robaudit supports ({SCHEMA_VERSION}); upgrade robaudit")
    return report


__all__ = ["write_text_atomic", "write_report", "read_report", "dumps"]
