"""robaudit.cli.allocator: glibc reuses freed tensors instead of faulting them in again (counted, not timed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

_STEPS = textwrap.dedent("""
    import resource, sys
    from robaudit.cli import allocator
    applied = allocator.tune() if sys.argv[1] == "tuned" else False
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(400, 10))
    x = torch.rand(128, 1, 28, 28)
    def step():
        xs = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(xs).sum(), xs)
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ROBAUDIT_MALLOC"}
    proc = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, timeout=300,
                          env={**clean, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, proc.stderr
    applied, faults = proc.stdout.split()
    return applied, int(faults)


def test_tuned_steps_fault_far_less() -> None:
    """20 forward+backward steps of a LeNet-sized net at batch 128: the tuned process reuses its heap
    (measured here: 786 minor faults against 52,502 with glibc's defaults)."""
    applied, tuned = _faults("tuned")
    _, plain = _faults("plain")
    assert applied == "True"
    assert tuned < 0.25 * plain, (tuned, plain)


_BIG = textwrap.dedent("""
    import resource, sys, threading
    from robaudit.cli import allocator
    applied = allocator.tune() if sys.argv[1] == "tuned" else False
    import torch
    torch.set_num_threads(1)
    def work():
        for _ in range(4):
            for m, b in ((64, 1740), (128, 480), (256, 144)):  # Fourier blocks of ImageNet-sized convolutions
                h = torch.ones(b, m, m, dtype=torch.complex64)
                low, info = torch.linalg.cholesky_ex(h * 0 + torch.eye(m))
                del h, low, info
    work()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    work()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def test_large_blocks_and_threads_reuse_the_heap() -> None:
    """Fourier blocks of 18-57 MB and their Cholesky factors, on the main thread and on two others (as the layer
    bounds run): glibc's defaults mmap and fault in each one; the tuned process reuses one heap (measured here:
    2,291,254 faults against 244,315-376,926 in five runs, later 245,914-585,821 in eight and 719,644 once: how
    the two threads' blocks interleave decides how often the heap's top is trimmed and faulted in again)."""
    def faults(mode: str) -> tuple[str, int]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ROBAUDIT_MALLOC"}
        proc = subprocess.run([sys.executable, "-c", _BIG, mode], capture_output=True, text=True, timeout=300,
                              env={**clean, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        applied, count = proc.stdout.split()
        return applied, int(count)

    applied, tuned = faults("tuned")
    _, plain = faults("plain")
    assert applied == "True"
    assert plain > 36 * 2 * 4_000  # every block and factor faulted in anew (≥ 4,000 pages each)
    assert tuned < 0.5 * plain, (tuned, plain)  # at most 0.31 seen in 14 runs


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"}, {"ROBAUDIT_MALLOC": "default"}],
                         ids=["user-malloc-setting", "opt-out"])
def test_the_users_setting_wins(env: dict[str, str]) -> None:
    applied, _ = _faults("tuned", **env)
    assert applied == "False"
