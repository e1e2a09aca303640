"""Shared fixtures: a pinned console width, the fake 'probe' analysis, asset paths."""

from __future__ import annotations

import os
import signal
from pathlib import Path

# With OpenMP's default busy-wait policy, small LAPACK calls slow down 10-100x when the
# two cores are shared; passive waiting keeps test times stable. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from robaudit.cli import allocator

allocator.tune()  # in-process runs get the CLI's malloc settings too (the CLI's subprocesses set their own)

# A shell that starts pytest in the background (`pytest &` in a script) hands it SIGINT ignored; the
# interrupt tests need Python's own handler, as in a terminal or CI.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO.parent / "shared" / "assets"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Results do not depend on the thread count, but tiny per-sample ops (DeepFool, small LAPACK
    # calls) slow down 10-100x when intra-op threads compete on a shared 2-core runner.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _pinned_width(monkeypatch):
    # Rich wraps to the terminal; pin it so outputs compare byte for byte.
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def probe_analysis(monkeypatch):
    """Register tests/fake_analysis.py as the analysis 'probe'."""
    from robaudit import analyses

    monkeypatch.setitem(analyses.REGISTRY, "probe", "fake_analysis")
    return analyses.get("probe")


def shared_asset(*parts: str) -> Path:
    path = SHARED_ASSETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset not present: {path} (../shared is absent on a user's clone)")
    return path


def cli(*args: str) -> int:
    from robaudit.cli.app import run

    return run(list(args))
