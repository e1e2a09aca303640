"""Attacks on linear classifiers, against closed forms.

For logits z = Wx + b the decision boundary between classes y and j is a
hyperplane, so (away from the [0,1] box):

* the minimal ℓ2 distance to misclassification is min_j (z_y − z_j) / ‖w_y − w_j‖₂;
* for two classes, the minimal ℓ∞ distance is (z_y − z_j) / ‖w_y − w_j‖₁, and FGSM / PGD
  reach it exactly (sign of the gradient = sign of w_j − w_y);
* no attack can beat these: robust accuracy from any attack ≥ the true robust accuracy.

Samples are chosen so that the optimal perturbation stays inside the box.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robaudit.analyses.attacks import ANALYSIS
from robaudit.attacks.run import attack_batch
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.models.adapt import adapt

SIDE = 8
D = SIDE * SIDE



def linear_model(n_classes: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, n_classes))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(n_classes, D, generator=gen))
        net[1].bias.copy_(0.1 * torch.randn(n_classes, generator=gen))
    loaded = adapt(net, input_shape=(1, SIDE, SIDE))
    if dtype == torch.float64:
        loaded.module.double()
    return loaded


def closed_form(loaded, x: torch.Tensor):
    """Labels (the model's predictions), minimal ℓ2 distance, the ℓ∞ size of the ℓ2-optimal
    step, and (binary models) the minimal ℓ∞ distance."""
    lin = loaded.module.net[1]
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    z = x.double().flatten(1) @ W.T + b
    y = z.argmax(1)
    d2 = torch.full((len(x),), float("inf"), dtype=torch.float64)
    dinf = d2.clone()
    step_inf = torch.zeros_like(d2)
    for j in range(W.shape[0]):
        g = W[y] - W[j]
        margin = z.gather(1, y[:, None]).squeeze(1) - z[:, j]
        dj = torch.where(y == j, torch.inf, margin / g.norm(dim=1))
        step_inf = torch.where(dj < d2, dj * g.abs().amax(1) / g.norm(dim=1), step_inf)
        d2 = torch.minimum(d2, dj)
        dinf = torch.minimum(dinf, torch.where(y == j, torch.inf, margin / g.abs().sum(dim=1)))
    return y, d2, step_inf, dinf


def interior_samples(loaded, n: int, seed: int, *, min_d2: float = 0.1, room: float = 0.25):
    """Points in [0.3, 0.7] whose minimal ℓ2 step stays inside the box (per-pixel move < room)."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(40 * n, 1, SIDE, SIDE, generator=gen, dtype=torch.float64)
    _, d2, step_inf, _ = closed_form(loaded, x)
    keep = (d2 > min_d2) & (step_inf < room)
    assert int(keep.sum()) >= n, "not enough interior samples; change the seed"
    return x[keep][:n]


def boundary_distances(loaded, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C) ℓ2 distance to each pairwise boundary z_y = z_j (inf for j = y)."""
    lin = loaded.module.net[1]
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    z = x.double().flatten(1) @ W.T + b
    zy = z.gather(1, y[:, None])
    g = (W[y][:, None, :] - W[None, :, :]).norm(dim=2)
    d = (zy - z) / g
    d[torch.arange(len(y)), y] = torch.inf
    return d


@pytest.mark.parametrize("name, n_classes, seed", [("deepfool", 5, 1), ("deepfool", 5, 41), ("cw", 2, 1), ("cw", 2, 43)])
def test_minimal_l2_distance_matches_closed_form(name, n_classes, seed):
    loaded = linear_model(n_classes, seed=seed)
    x = interior_samples(loaded, 48, seed=seed + 1)
    y, d2, _, _ = closed_form(loaded, x)
    _, check = attack_batch(loaded.module, x, y, name, norm="l2", seed=0)
    assert bool(check.success.all()), f"{name} missed {int((~check.success).sum())} samples"
    ratio = check.dist_l2 / d2
    # Sound: nothing is closer than the closed form (1e-9 for rounding).
    assert float(ratio.min()) >= 1 - 1e-9
    assert float(ratio.max()) <= 1.05, f"{name}: worst distance ratio {float(ratio.max()):.4f}"


@pytest.mark.parametrize("seed", [31, 41])
def test_cw_multiclass_stops_on_a_pairwise_boundary(seed):
    # CW's objective is not convex for more than two classes (min over classes inside f):
    # torchattacks' CW (no restarts) can settle on the second-closest boundary. It is still
    # sound, and each distance is the distance to one of the pairwise boundaries.
    loaded = linear_model(5, seed=seed)
    x = interior_samples(loaded, 48, seed=seed + 1)
    y, d2, _, _ = closed_form(loaded, x)
    _, check = attack_batch(loaded.module, x, y, "cw", norm="l2", seed=0)
    assert bool(check.success.all())
    assert float((check.dist_l2 / d2).min()) >= 1 - 1e-9
    to_reached = boundary_distances(loaded, x, y).gather(1, check.pred[:, None]).squeeze(1)
    assert torch.allclose(check.dist_l2, to_reached, rtol=0.05, atol=0)
    assert float(check.dist_l2.median()) == pytest.approx(float(d2.median()), rel=0.05)


def test_fab_l2_distance_matches_closed_form():
    # FAB casts inputs to float32 inside torchattacks, so it runs on a float32 model.
    loaded = linear_model(5, seed=1, dtype=torch.float32)
    x = interior_samples(loaded, 48, seed=2).float()
    y, d2, _, _ = closed_form(loaded, x)
    _, check = attack_batch(loaded.module, x, y, "fab", norm="l2", eps=10.0, steps=20, seed=0)
    assert bool(check.success.all())
    ratio = check.dist_l2 / d2
    assert float(ratio.min()) >= 1 - 1e-5
    assert float(ratio.max()) <= 1.05


def _ctx(loaded, x, y) -> AuditContext:
    data = AuditData("linear", "-", x, y, torch.arange(len(y)))
    return AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=x.dtype, seed=0, batch_size=32)


def test_binary_linf_robust_accuracy_is_exact_for_fgsm_and_pgd():
    loaded = linear_model(2, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = 0.3 + 0.4 * torch.rand(400, 1, SIDE, SIDE, generator=gen, dtype=torch.float64)
    y_pred, _, _, dinf = closed_form(loaded, x)
    # True labels: the prediction, with every 10th flipped (those are misclassified from the start).
    y = y_pred.clone()
    y[::10] = 1 - y[::10]
    eps_values = [0.01, 0.02, 0.05]
    # Keep away from ties at the thresholds, and keep x ± eps inside [0,1].
    near = torch.zeros(len(x), dtype=torch.bool)
    for e in eps_values:
        near |= (dinf - e).abs() < 1e-6
    x, y, y_pred, dinf = x[~near], y[~near], y_pred[~near], dinf[~near]
    opts = ANALYSIS.make_options({"fgsm": True, "pgd": True, "eps": ",".join(map(str, eps_values))})
    section = ANALYSIS.run(_ctx(loaded, x, y), opts)
    correct = y_pred == y
    assert section["clean_accuracy"] == pytest.approx(float(correct.double().mean()), abs=0)
    for r in section["results"]:
        truth = float((correct & (dinf > r["eps"])).double().mean())
        assert r["robust_accuracy"] == pytest.approx(truth, abs=1e-12), (r["attack"], r["eps"])
        assert r["violations"] == 0
    for e in eps_values:
        truth = float((correct & (dinf > e)).double().mean())
        assert section["worst_case"][str(e)] == pytest.approx(truth, abs=1e-12)


@pytest.mark.parametrize("n_classes, must_find", [(2, ("pgdl2", "deepfool", "cw")), (4, ("deepfool", "cw"))])
def test_l2_attacks_never_beat_the_closed_form_and_find_the_easy_ones(n_classes, must_find):
    # For two classes the CE gradient points at the only boundary, so PGD-ℓ2 must find every
    # sample closer than 0.9·eps; with more classes only the minimal-distance attacks must.
    loaded = linear_model(n_classes, seed=5)
    x = interior_samples(loaded, 48, seed=6, min_d2=0.02)
    y, d2, _, _ = closed_form(loaded, x)
    eps = float(torch.quantile(d2, 0.5))
    attacks = ("pgdl2", "deepfool", "cw")
    opts = ANALYSIS.make_options({**{a: True for a in attacks}, "eps": f"{eps:.6f}", "steps": 1000})
    section = ANALYSIS.run(_ctx(loaded, x, y), opts)
    truth = float((d2 > eps).double().mean())
    easy = float((d2 > 0.9 * eps).double().mean())
    assert {r["attack"] for r in section["results"]} == set(attacks)
    for r in section["results"]:
        assert r["status"] == "ok", r
        assert r["robust_accuracy"] >= truth - 1e-12, r["attack"]
        if r["attack"] in must_find:
            assert r["robust_accuracy"] <= easy + 1e-12, r["attack"]
    # The minimal-distance summary matches the closed form too (median within 5 %).
    for name in ("cw", "deepfool"):
        med = section["distances"][name]["median_l2"]
        assert med == pytest.approx(float(torch.quantile(d2, 0.5)), rel=0.05)


def test_model_copy_unchanged_by_attacks():
    loaded = linear_model(3, seed=7)
    before = copy.deepcopy(loaded.module.state_dict())
    x = interior_samples(loaded, 16, seed=8)
    y, *_ = closed_form(loaded, x)
    for name in ("cw", "deepfool", "pgd"):
        attack_batch(loaded.module, x, y, name, norm="linf" if name == "pgd" else "l2", eps=0.05, steps=20)
    after = loaded.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in loaded.module.parameters())
