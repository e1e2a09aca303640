"""The helpers behind the hostile suite's guarantees, tested directly (the lead's code calls them)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile_factories as hfac  # noqa: E402

from robaudit.errors import ModelLoadError, UsageError  # noqa: E402


# ------------------------------------------------------------------------------ check_differentiable

@pytest.mark.parametrize("factory,problem", [
    ("fine", None),
    ("returns_dict", "not a logits tensor"),
    ("argmax", "not float logits"),
    ("one_hot_argmax", "do not depend on its input"),
    ("detached", "do not depend on its input"),
    ("no_grad", "do not depend on its input"),
    ("rounded", "zero"),
    ("nan_logits", "NaN or Inf"),
    ("raises", "forward pass failed"),
])
def test_check_differentiable(factory: str, problem: str | None) -> None:
    from robaudit.models.checks import check_differentiable

    torch.manual_seed(0)
    net = getattr(hfac, factory)().train()
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.rand(2, 1, 28, 28)
    if problem is None:
        check_differentiable(net, x)
    else:
        with pytest.raises(ModelLoadError, match=problem):
            check_differentiable(net, x)
    # the model is left as it was: mode, requires_grad, no accumulated parameter gradients
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert not x.requires_grad


def test_check_differentiable_accepts_softmax_output() -> None:
    """A softmax output sums to 1 (zero gradient of the sum); a random projection still sees it."""
    from robaudit.models.checks import check_differentiable

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.Softmax(dim=1))
    check_differentiable(net, torch.rand(2, 1, 28, 28))


# ------------------------------------------------------------------------------ safe_text / clip

@pytest.mark.parametrize("text", ["[/bold]", "a[red]b[/red]", "[link=file:///etc/passwd]x", "x\\", "[/]", ":smile:",
                                  "\x1b[2J\x1b]0;t\x07", "a\rb\bc", "abc\u202edcba", "multi\nline\ttab"])
def test_safe_text_renders_literally(text: str) -> None:
    from rich.console import Console

    from robaudit.cli.console import safe_text, strip_controls

    buf = io.StringIO()
    Console(file=buf, width=200, emoji=False, color_system=None).print(f"[bold]{safe_text(text)}[/bold]")
    out = buf.getvalue().rstrip("\n")
    assert out == strip_controls(text)
    assert "\x1b" not in out and "\r" not in out and "\n" not in out and "\u202e" not in out


def test_clip_never_builds_a_huge_repr() -> None:
    from robaudit.cli.console import clip

    bomb: list = ["lol"] * 9
    for _ in range(9):
        bomb = [bomb] * 9  # 9**10 leaves if expanded
    start = time.perf_counter()
    assert len(clip(bomb)) <= 210
    assert len(clip("x" * 10_000_000)) < 260
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------ indices

def test_indices_stay_ranges_until_checked() -> None:
    from robaudit.data.indices import parse_indices

    start = time.perf_counter()
    idx = parse_indices("0:200000000,5")
    assert len(idx) == 200_000_001 and idx.largest == 199_999_999
    assert time.perf_counter() - start < 0.1  # nothing was expanded
    assert parse_indices("3,1:3") == [3, 1, 2]
    for bad in ("-1", "5:2", "a", "", "1:", True):
        with pytest.raises(UsageError, match="--indices"):
            parse_indices(bad)


def test_out_of_range_indices_fail_before_expansion() -> None:
    import numpy as np

    from robaudit.data.indices import parse_indices
    from robaudit.data.load import _select_rows

    stored = np.arange(1000)
    start = time.perf_counter()
    with pytest.raises(UsageError, match="200000 is out of range"):
        _select_rows(stored, parse_indices("0:10,200000:300000000"), None, "x")
    assert time.perf_counter() - start < 0.1
    rows = _select_rows(stored, parse_indices("0:1000,0:1000"), 3, "x")  # with a limit only 3 are expanded
    assert rows.tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------ YAML expansion

@pytest.mark.parametrize("text,limited", [
    ("a: &a [1, 2]\nb: [*a, *a]\n", False),
    ("a: &a [*a]\n", True),
    ("".join(f"{k}: &{k} [{', '.join(['*' + p] * 9) if p else 'x'}]\n" for k, p in zip("abcdef", ["", *"abcde"])), True),
])
def test_yaml_expansion_is_bounded(tmp_path: Path, text: str, limited: bool) -> None:
    from robaudit.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    if limited:
        with pytest.raises(ConfigError):
            load_config(str(path))
    else:
        with pytest.raises(ConfigError, match="unknown key"):  # parsed fine, then the keys are checked
            load_config(str(path))


# ------------------------------------------------------------------------------ report validation

def test_a_written_report_validates_and_every_broken_copy_is_refused(tmp_path: Path) -> None:
    import json

    from robaudit.cli.app import run
    from robaudit.report.validate import validate_report

    path = tmp_path / "r.json"
    assert run(["norms", "--limit", "2", "-q", "-o", str(path)]) == 0
    report = json.loads(path.read_text())
    validate_report(report, "r.json")
    broken = [("schema_version", "1"), ("schema_version", True), ("model", []), ("analyses", None),
              ("complete", "no"), ("warnings", [1]), ("timings", {"total": "fast"})]
    for key, value in broken:
        with pytest.raises(UsageError, match="not a robaudit report"):
            validate_report({**report, key: value}, "r.json")
