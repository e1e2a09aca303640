"""Batches attacked side by side (runner.collect_rows(parallel=True)): the rows of one batch at a time, bit for bit.

The test session runs torch on one thread (conftest), where batches run one at a time; these tests turn two
threads on, so two batches run side by side on one intra-op thread each, and compare with the one-thread run
(also one intra-op thread: the same kernels, so the same bits).
"""

from __future__ import annotations

import io
import sys
import threading

import pytest
import torch

from robaudit.analyses import runner
from robaudit.analyses.attacks import ANALYSIS
from robaudit.attacks.run import KeyedDraws, quiet
from robaudit.context import AuditContext

N = 160  # 5 batches of 32: the pool refills as batches finish, and the last one is short of company


@pytest.fixture(scope="module")
def sample():
    from robaudit.data import load_data
    from robaudit.models import load_model

    return load_model(None, device="cpu"), load_data(None, limit=N)


def _run(sample, threads: int, **options):
    model, data = sample
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ctx = AuditContext(model=model, data=data, device=torch.device("cpu"), dtype=torch.float32, seed=0,
                           batch_size=32)
        return ANALYSIS.run(ctx, ANALYSIS.make_options({"per_sample": True, **options}))
    finally:
        torch.set_num_threads(before)


def _rows(section):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in section["per_sample"]]


@pytest.fixture()
def pool_threads(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = runner._side_by_side

    def spy(todo, compute, finish, workers):
        def traced(batch):
            seen.append(threading.current_thread().name)
            return compute(batch)
        return original(todo, traced, finish, workers)

    monkeypatch.setattr(runner, "_side_by_side", spy)
    return seen


@pytest.mark.parametrize("options", [
    {"battery": "quick", "prune": "cascade"},
    # random starts (keyed), APGD-T's own draws, a targeted attack's keyed targets and the noise baseline (streamed)
    {"pgd": True, "apgdt": True, "eps": "2/255,8/255", "steps": 5, "noise": True, "sigmas": "0.1",
     "targeted": True, "prune": "per-attack"},
], ids=["quick-cascade", "random-draws"])
def test_side_by_side_gives_the_rows_of_one_batch_at_a_time(sample, pool_threads, options) -> None:
    one = _run(sample, 1, **options)
    assert not pool_threads
    two = _run(sample, 2, **options)
    assert len(pool_threads) == N // 32 and all(name.startswith("robaudit-batch") for name in pool_threads)
    assert _rows(two) == _rows(one)
    assert two["worst_case"] == one["worst_case"]


def test_threads_and_the_global_random_state_come_back(sample, pool_threads) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    before = torch.get_num_threads()
    _run(sample, 2, pgd=True, eps="8/255", steps=3)
    assert pool_threads
    torch.set_num_threads(before)
    assert torch.equal(torch.rand(3), expected)  # the attacks drew nothing from the global generator


def test_a_failing_batch_fails_the_run_with_its_own_error(sample, monkeypatch) -> None:
    from robaudit.attacks import battery
    from robaudit.errors import AttackError

    original = battery._run_on
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky(*args, **kwargs):
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 3:
            raise AttackError("attack pgd at eps 8/255 failed: boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(battery, "_run_on", flaky)
    before = torch.get_num_threads()
    with pytest.raises(AttackError, match="boom"):
        _run(sample, 2, pgd=True, eps="8/255", steps=3)
    assert torch.get_num_threads() == before


def test_keyed_draws_stream_the_rest_and_leave_the_global_generator_alone() -> None:
    torch.manual_seed(7)
    state = torch.get_rng_state()
    with KeyedDraws([10, 11], seed=3, stream=99):
        batch_shaped = torch.rand(2, 5)  # keyed by sample
        other = torch.randint(0, 100, (4,))  # not batch-shaped: the stream
        perm = torch.randperm(6)
    assert torch.equal(torch.get_rng_state(), state)
    gen = torch.Generator().manual_seed(99)
    assert torch.equal(other, torch.randint(0, 100, (4,), generator=gen))
    assert torch.equal(perm, torch.randperm(6, generator=gen))
    with KeyedDraws([10], seed=3, stream=99):  # the same sample alone: the same row
        alone = torch.rand(1, 5)
    assert torch.equal(alone[0], batch_shaped[0])


def test_quiet_mutes_its_own_thread_only_and_restores_stdout(monkeypatch) -> None:
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    inside = threading.Barrier(3, timeout=30)

    def noisy():
        with quiet():
            inside.wait()  # both threads are inside at once
            print("library chatter")
            inside.wait()

    threads = [threading.Thread(target=noisy) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    print("the report")  # the main thread, while both workers are muted
    inside.wait()
    for t in threads:
        t.join()
    assert sys.stdout is real
    assert real.getvalue() == "the report\n"
