"""Every analysis leaves the user's model as it found it: modes, requires_grad and hooks,
after success and after a failure in the middle (captum's hook test, for robaudit)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit import analyses
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.models.adapt import adapt
from robaudit.models.guard import state_of

# Small, fast options per analysis (an analysis not listed runs with its quick profile).
FAST = {
    "norms": {"method": "exact"},
    "spectrum": {"steps": 2, "max_samples": 4},
    "attacks": {"fgsm": True, "eps": "4/255"},
    "cross_section": {"index": "0", "resolution": 9},
    "curvature": {"k": 1},
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Boom(RuntimeError):
    pass


def _setup():
    torch.manual_seed(0)
    loaded = adapt(Net(), input_shape=(1, 8, 8))
    net = loaded.module
    # a state the analyses must not disturb: mixed modes, a frozen parameter, a user hook
    net.net.bn.train()
    net.net.fc.bias.requires_grad_(False)
    net.net.conv.register_forward_hook(lambda m, i, o: None)
    data = AuditData(name="t", split="test", x=torch.rand(6, 1, 8, 8), y=torch.arange(6) % 5,
                     indices=torch.arange(6), class_names=None)
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float32, batch_size=3)
    return loaded, ctx


def _options(name):
    analysis = analyses.get(name)
    values = dict(analysis.profiles.get("quick", {}))
    values.update(FAST.get(name, {}))
    return analysis, analysis.make_options(values)


@pytest.mark.parametrize("name", analyses.available())
def test_model_state_restored_after_success_and_failure(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # analyses that write images write them here
    loaded, ctx = _setup()
    analysis, options = _options(name)
    before = state_of(loaded.module)
    analysis.run(ctx, options)
    assert state_of(loaded.module) == before

    # a failure in the middle: the model raises on its second forward call
    calls = {"n": 0}

    def fail(module, inputs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("injected")

    handle = loaded.module.net.fc.register_forward_pre_hook(fail)
    before = state_of(loaded.module)
    with pytest.raises(Exception) as info:
        analysis.run(ctx, options)
    assert calls["n"] >= 2  # the injected failure did happen
    assert state_of(loaded.module) == before
    handle.remove()
