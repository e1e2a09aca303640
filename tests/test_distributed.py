"""Sharded runs (torch.distributed, gloo on CPU) and resumable runs.

Ranks are started the way torchrun starts them: one process per rank with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Every rank's exit code
is then visible to the test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"created", "timings"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT),
                "ROBAUDIT_DIST_TIMEOUT": "60"})
    env.update(extra or {})
    return env


def launch(args: list[str], cwd: Path, world: int, extra: dict[str, str] | None = None,
           timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Run ``robaudit ARGS`` as ``world`` ranks (world=1: a plain single process)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = _env(extra)
        if world > 1:
            env.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen([sys.executable, "-m", "robaudit", *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"ranks hung beyond {timeout} s")
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _no_seconds(node):
    if isinstance(node, dict):
        return {k: _no_seconds(v) for k, v in node.items() if k not in ("seconds", "wall_time")}
    if isinstance(node, list):
        return [_no_seconds(v) for v in node]
    return node


def _strip(report: dict) -> dict:
    """The report less what may differ between equal runs: timings and the world size."""
    report = _no_seconds({k: v for k, v in report.items() if k not in VOLATILE})
    env = dict(report["environment"])
    env.pop("world_size", None)
    report["environment"] = env
    return report


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from tests.distributed.models import small

    path = tmp_path_factory.mktemp("dist") / "small.pt"
    torch.save(small().state_dict(), path)
    return str(path)


def _model_args(small_model: str) -> list[str]:
    return [small_model, "--arch", "tests.distributed.models:small", "--input-shape", "1,28,28"]


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["norms"],
    ["spectrum", "--steps", "2"],
    ["attack", "--fgsm", "--pgd", "--steps", "3", "--eps", "2/255,8/255"],
])
def test_two_ranks_give_the_single_process_report(command, small_model, tmp_path):
    common = [*_model_args(small_model), "--limit", "40", "-b", "8", "--quiet"]
    one = launch([*command, *common, "-o", "one.json"], tmp_path, world=1)[0]
    assert one.returncode == 0, one.stderr
    ranks = launch([*command, *common, "-o", "two.json"], tmp_path, world=2)
    assert [r.returncode for r in ranks] == [0, 0], [r.stderr[-400:] for r in ranks]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert b["environment"]["world_size"] == 2 and a["environment"]["world_size"] == 1
    assert _strip(a) == _strip(b)
    # rank 1 is silent: it neither prints tables nor writes
    assert ranks[1].stdout == ""


@pytest.mark.slow
def test_gate_is_evaluated_once_by_rank_zero(small_model, tmp_path):
    args = ["audit", "-a", "norms", *_model_args(small_model), "--limit", "24", "-b", "8",
            "--fail-above", "norms.spectral.max=1e-9"]
    ranks = launch(args, tmp_path, world=2)
    assert [r.returncode for r in ranks] == [1, 0]
    assert ranks[0].stdout.count("gate: FAIL") == 1 and "gate" not in ranks[1].stdout


@pytest.mark.slow
def test_a_rank_that_raises_fails_every_rank_with_exit_3(small_model, tmp_path):
    start = time.monotonic()
    ranks = launch(["norms", *_model_args(small_model), "--limit", "64", "-b", "4", "--quiet"], tmp_path, world=2,
                   extra={"TEST_RAISE_ON_RANK": "1"})
    assert [r.returncode for r in ranks] == [3, 3], [r.stderr[-300:] for r in ranks]
    assert time.monotonic() - start < 60
    assert "rank 1 failed" in ranks[0].stderr and "injected failure on rank 1" in ranks[0].stderr
    assert "Traceback" not in ranks[0].stderr + ranks[1].stderr


@pytest.mark.slow
def test_a_rank_that_dies_before_any_collective_still_fails_the_others(small_model, tmp_path):
    # rank 1 dies in the model checks, before the runner: rank 0 learns it from the broken collective
    ranks = launch(["norms", *_model_args(small_model), "--limit", "16", "-b", "4", "--quiet"], tmp_path, world=2,
                   extra={"TEST_SIGKILL_AFTER": "0", "TEST_SIGKILL_RANK": "1"})
    assert ranks[1].returncode == -9 and ranks[0].returncode == 3
    assert "another rank stopped or failed" in ranks[0].stderr and "Traceback" not in ranks[0].stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_identical_report(small_model, tmp_path):
    common = ["norms", *_model_args(small_model), "--limit", "48", "-b", "4", "--quiet",
              "--checkpoint-dir", str(tmp_path / "ckpt")]
    killed = launch([*common, "-o", "r.json"], tmp_path, world=2,
                    extra={"TEST_SIGKILL_AFTER": "5", "TEST_SIGKILL_RANK": "1"})
    assert killed[1].returncode == -9 and killed[0].returncode == 3
    assert not (tmp_path / "r.json").exists()
    saved = json.loads((tmp_path / "ckpt" / "norms.rank1.json").read_text())["batches"]
    assert 0 < len(saved) < 6  # rank 1 finished some of its 6 batches before it died
    resumed = launch([*common, "-o", "r.json"], tmp_path, world=2)
    assert [r.returncode for r in resumed] == [0, 0], [r.stderr[-300:] for r in resumed]
    fresh = launch([*common[:-2], "-o", "fresh.json"], tmp_path, world=1)[0]
    assert fresh.returncode == 0
    a = json.loads((tmp_path / "r.json").read_text())
    b = json.loads((tmp_path / "fresh.json").read_text())
    assert _strip(a) == _strip(b)


def test_checkpoint_dir_refuses_other_arguments_and_resumes_single_process(small_model, tmp_path, capsys):
    from robaudit.cli.app import run as cli

    ckpt = str(tmp_path / "ckpt")
    args = ["norms", *_model_args(small_model), "--limit", "12", "-b", "4", "--quiet", "--checkpoint-dir", ckpt]
    sys.path.insert(0, str(ROOT))
    assert cli([*args, "-o", str(tmp_path / "a.json")]) == 0
    assert sorted(os.listdir(ckpt)) == ["norms.rank0.json", "run.json"]
    # the same arguments: everything is loaded, nothing recomputed, the same report
    assert cli([*args, "-o", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert _strip(a)["analyses"] == _strip(b)["analyses"]
    capsys.readouterr()
    assert cli([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "different arguments" in err and "seed" in err
