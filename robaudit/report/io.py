"""Report files: safe writes and validated reads.

What a write to ``-o``/``--markdown``/``--plots`` does to what is already at the path:

* nothing there, or a regular file: the text goes to a temp file in the same folder, which
  is then renamed over the path (a reader never sees half a file; on failure the old file
  is left as it was). A new file gets the usual permissions (0666 minus the umask), a
  replaced file keeps its permissions.
* a symlink: it is followed. The *resolved target* is written as above and the link stays a
  link (so ``-o latest.json`` pointing at ``runs/42.json`` updates ``runs/42.json``); the
  link itself is never replaced by a regular file.
* a character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe): written
  through, in place; the node is never replaced. A FIFO without a reader is refused rather
  than blocking forever.
* a directory, a block device or a socket: refused (exit 2).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from typing import Any

from robaudit.errors import RobauditError, UsageError

#: Largest report file ``gate``/``show``/``compare`` will parse (robaudit's own are a few MB).
MAX_REPORT_BYTES = 256 * 1024 * 1024

# OSErrors that mean "the user named a path that cannot be written" (exit 2); others
# (disk full, I/O error) mean the run could not finish (exit 3).
_USAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EROFS,
                 errno.ENAMETOOLONG, errno.ELOOP, errno.ENXIO}


class WriteError(RobauditError, OSError):
    """The output could not be written (disk full, I/O error): exit 3. Also an OSError, as before."""


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no race-free read elsewhere; restored at once
    os.umask(mask)
    return mask


def _os_error(exc: OSError, path: str, flag: str) -> RobauditError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _USAGE_ERRNOS:
        return UsageError(f"{flag}: cannot write {path}: {reason}")
    return WriteError(f"{flag}: could not write {path}: {reason}")


def resolve_output(path: str, flag: str = "--output") -> tuple[str, str]:
    """Where a write to ``path`` goes, checked without writing: (target path, kind).

    ``kind`` is "file" (atomic replace or create), "device" (character device: write
    through) or "fifo". Call it before computing anything so a bad path fails at once.

    Raises:
        UsageError: empty path, missing or unwritable folder, a directory, a block device,
            a socket (exit 2).
    """
    if path is None or str(path).strip() == "":
        raise UsageError(f"{flag}: expected a file path, got an empty string")
    path = os.fspath(path)
    try:
        st = os.stat(path)  # follows symlinks: what a write would reach
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _os_error(exc, path, flag) from None
    if st is not None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{flag}: {path} is a directory; expected a file path")
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            # Written through the path as given (open follows links, e.g. /dev/stdout → a pipe).
            if not os.access(path, os.W_OK):
                raise UsageError(f"{flag}: cannot write {path}: permission denied")
            return path, "device" if stat.S_ISCHR(mode) else "fifo"
        if not stat.S_ISREG(mode):
            what = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
            raise UsageError(f"{flag}: {path} is {what}; refusing to write a report there")
    # A regular file or nothing yet: the temp file + rename go next to the resolved target, so a
    # symlink (even a dangling one) stays a link and its target is what gets replaced.
    target = os.path.realpath(path) if os.path.islink(path) else path
    folder = os.path.dirname(os.path.abspath(target)) or "."
    if not os.path.isdir(folder):
        raise UsageError(f"{flag}: folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write into {folder}: permission denied")
    return target, "file"


def check_output_path(path: str | None, flag: str = "--output") -> None:
    """UsageError (exit 2) now if a later write to ``path`` would certainly fail; None passes."""
    if path is not None:
        resolve_output(path, flag)


def write_text_atomic(path: str, text: str, flag: str = "--output") -> None:
    """Write ``text`` (UTF-8) to ``path`` following the rules in the module docstring.

    Raises:
        UsageError: the path cannot be written (exit 2).
        WriteError: the write failed part-way, e.g. the disk is full (exit 3); the previous
            file at ``path`` is left as it was.
    """
    write_bytes_atomic(path, text.encode("utf-8"), flag)


def write_bytes_atomic(path: str, data: bytes, flag: str = "--output") -> None:
    """Write ``data`` to ``path`` by the same rules (e.g. a PNG rendered into a BytesIO for --plots)."""
    target, kind = resolve_output(path, flag)
    if kind == "device":
        _write_through(target, data, path, flag, os.O_WRONLY)
        return
    if kind == "fifo":
        # O_NONBLOCK: open fails with ENXIO at once when nobody reads, instead of hanging.
        _write_through(target, data, path, flag, os.O_WRONLY | os.O_NONBLOCK)
        return
    try:
        old_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        old_mode = None
    except OSError as exc:
        raise _os_error(exc, path, flag) from None
    folder = os.path.dirname(os.path.abspath(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".robaudit-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _os_error(exc, path, flag) from None
    try:
        try:
            # mkstemp creates 0600; a report is an ordinary file, so honour the umask.
            os.fchmod(fd, old_mode if old_mode is not None else 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise _os_error(exc, path, flag) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_through(target: str, data: bytes, path: str, flag: str, flags: int) -> None:
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise UsageError(f"{flag}: {path} is a FIFO with no reader; start the reader first") from None
        raise _os_error(exc, path, flag) from None
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _os_error(exc, path, flag) from None
    finally:
        os.close(fd)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write_report(path: str, report: dict[str, Any], flag: str = "--output") -> None:
    write_text_atomic(path, dumps(report), flag)


def read_report(path: str) -> dict[str, Any]:
    """Load a report JSON and check it is one (UsageError, exit 2, if not).

    The result is validated against the report schema (:mod:`robaudit.report.validate`) and
    its strings carry no control characters, so renderers can print any field.
    """
    from robaudit.report.validate import sanitize, validate_report

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such report file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory; expected a report file")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: not a regular file; expected a report file")
    try:
        size = os.path.getsize(path)
        if size > MAX_REPORT_BYTES:
            raise UsageError(f"not a robaudit report: {path}: {size:,} bytes (larger than {MAX_REPORT_BYTES:,})")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        report = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"not a robaudit report: {path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"not a robaudit report: {path}: not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})") from None
    except RecursionError:
        raise UsageError(f"not a robaudit report: {path}: nested too deeply") from None
    validate_report(report, path)
    return sanitize(report)


__all__ = ["write_text_atomic", "write_bytes_atomic", "write_report", "read_report", "dumps", "resolve_output", "check_output_path",
           "WriteError", "MAX_REPORT_BYTES"]
