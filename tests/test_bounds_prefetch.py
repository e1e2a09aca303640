"""The per-layer thread pool (Composer.prefetch): the same table and bound as one layer at a time.

The test session runs torch on one thread (conftest), where the pool is skipped; these tests turn two
threads on, so the pool runs, and compare with the one-thread pass on the same model.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from robaudit.bounds import compose
from robaudit.bounds import rules as R
from robaudit.errors import NumericalError

F64 = torch.float64


class Net(nn.Module):
    """conv→BN pairs on both Gram sides, a strided conv, a module called twice, a grouped conv, linear→BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)  # c_out > c_in
        self.conv3, self.bn3 = nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8)  # c_out < c_in: S·H·S
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc1, self.bnf = nn.Linear(8 * 8 * 8, 32), nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        x = self.grouped(x)
        return self.fc2(torch.relu(self.bnf(self.fc1(x.flatten(1)))))


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = Net().to(F64)
    with torch.no_grad():  # trained-looking BatchNorms: running statistics and gains that differ per channel
        for bn in (net.bn1, net.bn2, net.bn3, net.bnf):
            bn.running_var.uniform_(0.2, 3.0)
            bn.running_mean.normal_()
            bn.weight.uniform_(-2.0, 2.0)
    return net.eval()


OPTS = R.RuleOptions(iters=300, tol=1e-10, dtype=F64)


def _bound(net: nn.Module, threads: int) -> compose.GraphBound:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return compose.lipschitz_bound(net, torch.zeros(1, 3, 16, 16, dtype=F64), opts=OPTS)
    finally:
        torch.set_num_threads(before)


def _numbers(result: compose.GraphBound) -> list[tuple]:
    rows = []
    for rec in result.layers:
        info = rec.bound.info
        rows.append((rec.name, rec.bound.upper, info.get("operator_norm"), info.get("circular_exact"),
                     info.get("singla_bound"), (rec.fused or {}).get("upper")))
    return rows


@pytest.fixture()
def workers(monkeypatch) -> list[str]:
    """Names of the threads that bounded a layer."""
    seen: list[str] = []
    original = compose.Composer._bound_job

    def job(self, *args):
        seen.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(compose.Composer, "_bound_job", job)
    return seen


def _same(a: list[tuple], b: list[tuple], rel: float = 1e-9) -> None:
    assert [r[0] for r in a] == [r[0] for r in b]
    for ra, rb in zip(a, b):
        for x, y in zip(ra[1:], rb[1:]):
            assert (x is None) == (y is None), (ra, rb)
            if x is not None:
                assert x == pytest.approx(y, rel=rel), (ra[0], ra, rb)


def test_pool_gives_the_one_thread_table_and_bound(workers) -> None:
    net = _model()
    alone = _bound(net, 1)
    assert not workers  # one thread: no pool
    pooled = _bound(net, 2)
    assert workers and all(name.startswith("robaudit-bounds") for name in workers)
    # six conv/linear calls with distinct shapes (the shared conv is bounded once for its two calls) + two linears
    assert len(workers) == 7
    _same(_numbers(alone), _numbers(pooled))
    assert pooled.lipschitz_upper == pytest.approx(alone.lipschitz_upper, rel=1e-9)
    fused = [rec.name for rec in pooled.layers if rec.fused]
    assert fused == ["conv1", "conv2", "conv3", "fc1"]
    for rec in pooled.layers:  # every operator norm ran, in the pool
        if rec.bound.kind in ("conv", "linear"):
            assert rec.bound.job is None and rec.bound.info["operator_norm"] > 0
            assert rec.bound.circular is None  # Gram blocks freed once the fused value is known


def test_fused_values_are_the_bounds_of_the_folded_kernels() -> None:
    """The pair bound the pool computes equals conv_bounds of the kernel with the BatchNorm folded in."""
    from robaudit.bounds.conv import conv_bounds

    net = _model()
    pooled = {rec.name: rec for rec in _bound(net, 2).layers}
    for conv, bn, shape in ((net.conv1, net.bn1, (3, 16, 16)), (net.conv2, net.bn2, (8, 16, 16)),
                            (net.conv3, net.bn3, (16, 8, 8))):
        scale = R.batchnorm_scale(bn)
        folded = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
        direct = conv_bounds(conv, shape, dtype=F64, gram=False, power=False, weight=folded).upper
        name = next(n for n, m in net.named_modules() if m is conv)
        assert pooled[name].fused["upper"] == pytest.approx(min(direct, pooled[name].fused["separate"]), rel=1e-12)


def test_threads_are_restored(workers) -> None:
    before = torch.get_num_threads()
    _bound(_model(), 2)
    assert workers
    assert torch.get_num_threads() == before


def test_a_rule_failing_in_the_pool_is_bounded_again_in_the_pass(monkeypatch, workers) -> None:
    net = _model()
    alone = _numbers(_bound(net, 1))
    original = R.conv_layer

    def flaky(*args, **kwargs):
        if threading.current_thread().name.startswith("robaudit-bounds"):
            raise RuntimeError("transient failure in a worker")
        return original(*args, **kwargs)

    monkeypatch.setattr(R, "conv_layer", flaky)
    pooled = _numbers(_bound(net, 2))
    assert workers
    _same(alone, pooled)


def test_robaudit_errors_in_the_pool_propagate_and_threads_come_back(monkeypatch, workers) -> None:
    def broken(*args, **kwargs):
        raise NumericalError("kernel holds NaN")

    monkeypatch.setattr(R, "conv_layer", broken)
    before = torch.get_num_threads()
    with pytest.raises(NumericalError, match="NaN"):
        _bound(_model(), 2)
    assert torch.get_num_threads() == before
