"""``robaudit cross-section``: the in-plane boundary distance of a linear model against its closed
form, reproducible planes, file safety (never a silent overwrite), --index parsing, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import cli
from robaudit.analyses import cross_section as xs
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.errors import UsageError
from robaudit.geometry.cross_section import cross_section, plane_basis
from robaudit.kinds import parse_ints
from robaudit.models.adapt import adapt

SHAPE = (1, 5, 5)
D = 25


def _linear(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, classes))


def _ctx(net, n=5, batch_size=64):
    loaded = adapt(net.float().eval(), input_shape=SHAPE)
    loaded.module.double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
    data = AuditData(name="t", split="test", x=x, y=torch.arange(n) % 4, indices=torch.arange(n) + 20,
                     class_names=["a", "b", "c", "d"])
    return AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float64,
                        batch_size=batch_size), loaded, x


def _closed_form(net, x, u, v):
    """min over j of (z_y − z_j) / ‖((w_y − w_j)·u, (w_y − w_j)·v)‖: the in-plane distance to the
    boundary of x's cell (a convex polygon in the plane), y the predicted class."""
    w, b = net[1].weight.detach().double(), net[1].bias.detach().double()
    z = w @ x.reshape(-1) + b
    y = int(z.argmax())
    best = math.inf
    for j in range(w.shape[0]):
        if j == y:
            continue
        dw = w[y] - w[j]
        best = min(best, float((z[y] - z[j]) / torch.hypot(dw @ u, dw @ v)))
    return best


@pytest.mark.parametrize("kind", ["random", "adversarial"])
@pytest.mark.parametrize("resolution", [21, 61])
def test_linear_boundary_distance_matches_closed_form(kind, resolution):
    net = _linear(seed=2)
    ctx, loaded, x = _ctx(net)
    for i in range(3):
        plane = plane_basis(loaded.module, x[i:i + 1], int(ctx.data.y[i]), 20 + i, kind, extent=3.0, seed=0,
                            n_classes=4)
        assert plane.kind == kind
        assert float(plane.u @ plane.v) == pytest.approx(0.0, abs=1e-12)
        assert float(plane.u.norm()) == pytest.approx(1.0) and float(plane.v.norm()) == pytest.approx(1.0)
        sec = cross_section(loaded.module, x[i:i + 1], plane, extent=3.0, resolution=resolution, chunk=50)
        truth = _closed_form(net, x[i], plane.u, plane.v)
        h = 6.0 / (resolution - 1)
        assert truth < 3.0, "the test needs the boundary inside the square"
        # never nearer than the true boundary; at most one grid diagonal farther
        assert truth - 1e-8 <= sec.boundary_distance <= truth + h * math.sqrt(2)
        s, t = sec.boundary_point
        assert math.hypot(s, t) == pytest.approx(sec.boundary_distance)
        assert sec.centre_pred == int(loaded.module(x[i:i + 1]).argmax())
        assert sec.classes_seen == sorted(set(sec.pred.flatten().tolist()))
        assert bool(((sec.top_prob >= 0.25 - 1e-12) & (sec.top_prob <= 1)).all())


def test_adversarial_plane_contains_pgd_direction():
    # for a linear model the ℓ2 PGD step is along Wᵀ(p − e_y): u must lie in the row space of W
    net = _linear(seed=3)
    ctx, loaded, x = _ctx(net)
    x0 = 0.5 + 0.1 * (x[:1] - 0.5)  # away from the box edges: PGD's clipping would leave the row space
    plane = plane_basis(loaded.module, x0, int(ctx.data.y[0]), 20, "adversarial", extent=0.1, seed=0, n_classes=4)
    w = net[1].weight.detach().double()
    q, _ = torch.linalg.qr(w.T)
    assert float((q.T @ plane.u).norm()) == pytest.approx(1.0, abs=1e-9)
    assert 0 < plane.adversarial_distance <= 0.1 + 1e-9


def test_run_writes_images_reproducibly_and_never_overwrites(tmp_path):
    net = _linear(seed=4)
    ctx, _, _ = _ctx(net)
    out = str(tmp_path / "cs_{index}.png")
    opts = xs.ANALYSIS.make_options({"index": "21,23", "extent": 4, "resolution": 31, "out": out})
    section = xs.run(ctx, opts)
    json.dumps(section, allow_nan=False)
    assert [im["index"] for im in section["images"]] == [21, 23]
    for im in section["images"]:
        data = open(im["path"], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert im["plane"] == "random" and im["boundary_distance"] is not None
    # the files exist now: refused up front, before any computation
    with pytest.raises(UsageError, match="exists; pass --force"):
        xs.ANALYSIS.make_options({"index": "21", "out": out})
    again = xs.run(ctx, xs.ANALYSIS.make_options({"index": "21,23", "extent": 4, "resolution": 31, "out": out,
                                                  "force": True}))
    assert [im["boundary_distance"] for im in again["images"]] == [im["boundary_distance"] for im in section["images"]]
    # a file appearing during the run is not overwritten either
    path = tmp_path / "late_20.png"
    opts = xs.ANALYSIS.make_options({"index": "20", "out": str(tmp_path / "late_{index}.png"), "resolution": 5})
    path.write_bytes(b"user data")
    with pytest.raises(UsageError, match="appeared during the run"):
        xs.run(ctx, opts)
    assert path.read_bytes() == b"user data"
    m = xs.metrics(section)
    assert m["cross_section.boundary_distance@21"].value == section["images"][0]["boundary_distance"]
    assert m["cross_section.boundary_distance.min"].value == min(im["boundary_distance"] for im in section["images"])
    sheet = tmp_path / "sheet.png"
    xs.plot(section, str(sheet))
    assert sheet.read_bytes()[:4] == b"\x89PNG"


def test_boundary_beyond_extent_and_missing_index(tmp_path):
    net = _linear(seed=5)
    ctx, _, _ = _ctx(net)
    section = xs.run(ctx, xs.ANALYSIS.make_options({"index": "20", "extent": 1e-6, "resolution": 5,
                                                    "out": str(tmp_path / "a_{index}.png")}))
    im = section["images"][0]
    assert im["beyond_extent"] and im["boundary_distance"] is None and len(im["classes_seen"]) == 1
    assert xs.metrics(section)["cross_section.boundary_distance.min"].value is None
    with pytest.raises(UsageError, match="999 not in the data"):
        xs.run(ctx, xs.ANALYSIS.make_options({"index": "999", "out": str(tmp_path / "b_{index}.png")}))


@pytest.mark.parametrize("values, message", [
    ({}, "--index: give"), ({"index": "1,2", "out": "same.png"}, "same file"),
    ({"index": "1", "out": "x_{nope}.png"}, "only placeholder"), ({"index": "1", "out": "x.jpg"}, ".png"),
    ({"index": "1", "extent": 0}, "positive"), ({"index": "-1"}, ">= 0"), ({"index": "1.5"}, "integers"),
    ({"index": "1", "out": "/nonexistent-dir/x.png"}, "does not exist")])
def test_bad_options_refused(values, message):
    with pytest.raises(UsageError, match=message):
        xs.ANALYSIS.make_options(values)


def test_parse_ints():
    assert parse_ints("3,7", "w") == (3, 7)
    assert parse_ints(["3", "7,9"], "w") == (3, 7, 9)
    assert parse_ints([3, 7.0], "w") == (3, 7)
    assert parse_ints(4, "w") == (4,)
    for bad in ("", "a", [True], ["1.5"], [1.5], ","):
        with pytest.raises(UsageError, match="^w: expected integers"):
            parse_ints(bad, "w")


def test_cli_cross_section_repeated_index(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli("cross-section", "--index", "0", "--index", "5,7", "--resolution", "15", "--plane", "adversarial",
               "--extent", "2", "--json", "--quiet")
    out = capsys.readouterr().out
    assert code == 0, out
    images = json.loads(out)["analyses"]["cross_section"]["images"]
    assert [im["index"] for im in images] == [0, 5, 7]
    assert all((tmp_path / f"cross_section_{i}.png").stat().st_size > 1000 for i in (0, 5, 7))
    assert cli("cross-section", "--index", "0", "--resolution", "5", "--quiet") == 2  # exists: refused
    assert "exists; pass --force" in capsys.readouterr().err
