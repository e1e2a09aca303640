"""The console script: ``robaudit`` and ``python -m robaudit`` start here.

Only the standard library is imported before :func:`robaudit.cli.app.main` takes over, so a
Ctrl-C in the first fraction of a second (while Typer and Rich import) is an exit 130 with
one line, like any later interrupt, instead of a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from robaudit.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    run()
