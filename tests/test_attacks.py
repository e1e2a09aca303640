"""The attacks analysis on the sample LeNet and the embedded Fashion-MNIST sample.

Invariants checked against independent truths: robust ≤ clean, PGD ≤ FGSM,
eps = 0 gives clean accuracy, monotone in eps, reproducible by seed, every
returned example re-checked here (not by the code under test), worst case per
sample, the noise baseline recomputed by hand, and the model left as found.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from robaudit.analyses.attacks import ANALYSIS
from robaudit.attacks import registry
from robaudit.attacks.battery import NOISE_SEED_OFFSET
from robaudit.attacks.registry import AttackSpec, Kind
from robaudit.attacks.run import attack_batch, seed_for
from robaudit.attacks.threat import Norm
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.errors import AttackError, UsageError
from robaudit.models.adapt import adapt

N = 128



@pytest.fixture(scope="module")
def sample():
    from robaudit.data import load_data
    from robaudit.models import load_model

    model = load_model(None, device="cpu")
    data = load_data(None, limit=N)
    return model, data


def make_ctx(model, data, seed: int = 0, batch_size: int = 64, **kw) -> AuditContext:
    return AuditContext(model=model, data=data, device=torch.device("cpu"), dtype=torch.float32, seed=seed,
                        batch_size=batch_size, **kw)


def subset(data, n):
    return AuditData(data.name, data.split, data.x[:n], data.y[:n], data.indices[:n])


def run(model, data, seed: int = 0, batch_size: int = 64, **options):
    return ANALYSIS.run(make_ctx(model, data, seed, batch_size), ANALYSIS.make_options(options))


def by(section, attack, eps_label):
    (row,) = [r for r in section["results"] if r["attack"] == attack and r["eps_label"] == eps_label]
    return row


@pytest.fixture(scope="module")
def quick(sample):
    return run(*sample)


def test_default_is_the_quick_battery(quick):
    assert quick["battery"] == "quick"
    assert quick["attacks_run"] == ["fgsm", "pgd"]
    assert [e["label"] for e in quick["eps"]] == ["2/255", "8/255"]
    assert {(r["attack"], r["eps_label"]) for r in quick["results"]} == {
        ("fgsm", "2/255"), ("fgsm", "8/255"), ("pgd", "2/255"), ("pgd", "8/255")}
    assert by(quick, "pgd", "8/255")["steps"] == 10
    assert by(quick, "pgd", "8/255")["eps"] == pytest.approx(8 / 255, abs=0)


def test_clean_accuracy_matches_a_direct_forward(sample, quick):
    model, data = sample
    with torch.no_grad():
        pred = model.module(data.images(slice(None))).argmax(1)
    assert quick["clean_accuracy"] == pytest.approx(float((pred == data.y).double().mean()), abs=0)
    assert quick["clean_accuracy"] > 0.8  # the sample model is ~89 % accurate


def test_robust_accuracy_at_most_clean_and_worst_case_at_most_each(quick):
    n = quick["n"]
    for r in quick["results"]:
        assert r["status"] == "ok"
        assert r["violations"] == 0
        assert r["robust_accuracy"] <= quick["clean_accuracy"]
        assert r["robust_accuracy"] >= quick["worst_case"][r["eps_label"]]
        # success rate is over correctly classified samples: robust = clean · (1 − success)
        assert r["robust_accuracy"] * n == pytest.approx(quick["clean_accuracy"] * n * (1 - r["success_rate"]), abs=1e-6)


def test_pgd_not_weaker_than_fgsm(quick):
    n = quick["n"]
    for label in ("2/255", "8/255"):
        assert by(quick, "pgd", label)["robust_accuracy"] * n <= by(quick, "fgsm", label)["robust_accuracy"] * n + 1


def test_eps_zero_gives_clean_accuracy(sample):
    # At eps 0 the ball is {x} (checked without running the attack); at 1e-12 the attacks
    # really run and must not change a single prediction of this model either.
    section = run(*sample, fgsm=True, pgd=True, tpgd=True, square=True, queries=20, eps="0,1e-12")
    assert len(section["results"]) == 8
    for r in section["results"]:
        assert r["status"] == "ok" and r["violations"] == 0
        assert r["robust_accuracy"] == section["clean_accuracy"], (r["attack"], r["eps_label"])
        assert r["success_rate"] == 0
        assert (r["note"] is not None) == (r["eps"] == 0)
    assert section["worst_case"]["0"] == section["worst_case"]["1e-12"] == section["clean_accuracy"]
    assert not section["sanity"]


def test_pgd_monotone_over_eps_grid(sample):
    section = run(*sample, pgd=True, eps="0,1/255,2/255,4/255,8/255,16/255", steps=10)
    accs = [r["robust_accuracy"] for r in section["results"]]
    assert [r["eps_label"] for r in section["results"]] == ["0", "1/255", "2/255", "4/255", "8/255", "16/255"]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0]  # the attack does something
    assert not any("not monotone" in s for s in section["sanity"])
    assert section["curve"]["series"]["pgd"] == accs


def _strip_times(section):
    out = json.loads(json.dumps(section))
    for r in out["results"] + out["noise"]:
        r.pop("seconds")
    for d in out["distances"].values():
        d.pop("seconds")
    for r in out.get("per_sample", []):
        r.pop("seconds")
    return out


def test_same_seed_same_results(sample):
    model, data = sample
    data = subset(data, 64)
    opts = dict(pgd=True, square=True, noise=True, eps="4/255", queries=50, per_sample=True)
    a = run(model, data, seed=3, **opts)
    torch.manual_seed(999)  # whatever the caller did to the RNG in between
    torch.rand(10)
    b = run(model, data, seed=3, **opts)
    assert _strip_times(a) == _strip_times(b)
    c = run(model, data, seed=4, **opts)
    assert c["seed"] == 4
    # a different seed draws different noise for every sample (the ℓ2 size of clipped noise is continuous) ...
    for sa, sc in zip(a["per_sample"], c["per_sample"]):
        assert all(sa["noise_l2"][k] != sc["noise_l2"][k] for k in sa["noise_l2"])
    # ... and different PGD random starts: the examples differ, the same seed reproduces them bit for bit
    x, y = data.images(slice(0, 16)), data.y[:16]
    x3, _ = attack_batch(model.module, x, y, "pgd", eps=4 / 255, steps=2, seed=3, first_index=0)
    x3b, _ = attack_batch(model.module, x, y, "pgd", eps=4 / 255, steps=2, seed=3, first_index=0)
    x4, _ = attack_batch(model.module, x, y, "pgd", eps=4 / 255, steps=2, seed=4, first_index=0)
    assert torch.equal(x3, x3b)
    assert bool(((x3 - x4).flatten(1).abs().amax(1) > 0).all())


@pytest.mark.parametrize("name, norm, eps", [("fgsm", "linf", 8 / 255), ("pgd", "linf", 8 / 255),
                                             ("pgdl2", "l2", 0.5), ("tpgd", "linf", 4 / 255),
                                             ("apgd", "linf", 8 / 255), ("apgd", "l2", 0.5),
                                             ("square", "linf", 8 / 255), ("deepfool", "l2", None),
                                             ("cw", "l2", None), ("fab", "l2", 1.0)])
def test_every_returned_example_passes_an_independent_recheck(sample, name, norm, eps):
    model, data = sample
    n = 8 if name in ("deepfool", "fab") else 24  # one sample at a time / C backward passes per step
    x, y = data.images(slice(0, n)), data.y[:n]
    kw = {"steps": {"cw": 100, "deepfool": 20, "fab": 10}[name]} if name in ("cw", "deepfool", "fab") else {}
    x_adv, check = attack_batch(model.module, x, y, name, norm=norm, eps=eps, queries=100, **kw)
    # the check, redone here without the code under test
    assert x_adv.shape == x.shape and bool(torch.isfinite(x_adv).all())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    delta = (x_adv.double() - x.double()).flatten(1)
    if eps is not None:
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps + 1e-6
    assert not bool(check.violation.any())
    with torch.no_grad():
        pred = model.module(x_adv).argmax(1)
    assert torch.equal(check.misclassified, pred != y)
    assert torch.allclose(check.dist_l2, delta.norm(dim=1)) and torch.allclose(check.dist_linf, delta.abs().amax(1))
    assert bool(check.misclassified.any())  # the attack found something on a 89 %-accurate LeNet


# ---------------------------------------------------------------- injected attacks

class _Fake:
    """A stand-in for a torchattacks attack (built through the registry)."""

    def __init__(self, model, fn):
        self.model, self.fn = model, fn

    def set_device(self, device):
        pass

    def __call__(self, x, y):
        return self.fn(self.model, x, y)


def _inject(monkeypatch, name, fn, kind=Kind.BUDGET):
    spec = AttackSpec(name=name, title=name, kind=kind, norms=frozenset({Norm.LINF, Norm.L2}),
                      takes=frozenset({"eps"}) if kind is Kind.BUDGET else frozenset(),
                      build=lambda model, params: _Fake(model, lambda m, x, y: fn(m, x, y, params)))
    monkeypatch.setitem(registry.REGISTRY, name, spec)
    # the Options dataclass has one field per built-in attack: replace one of them
    return spec


def test_violations_are_counted_and_not_successes(sample, monkeypatch):
    model, data = sample

    def over_budget(m, x, y, params):
        out = x.clone()
        out[::2] = (x[::2] + 3 * params.eps).clamp(0, 1)  # every other sample: 3× the budget
        out[1::2] = x[1::2] * float("nan")                 # the others: NaN
        return out

    _inject(monkeypatch, "fgsm", over_budget)
    section = run(model, data, fgsm=True, eps="8/255", prune="exhaustive")  # every correct sample is attacked
    r = section["results"][0]
    assert r["attacked"] == round(section["clean_accuracy"] * N)
    assert r["violations"] == r["attacked"]
    assert r["robust_accuracy"] == section["clean_accuracy"]  # nothing counts as a success
    assert any("failed the re-check" in s for s in section["sanity"])


def test_attack_that_raises_stops_the_run_with_exit_3(sample, monkeypatch):
    model, data = sample

    def broken(m, x, y, params):
        raise RuntimeError("boom inside torchattacks\nsecond line")

    _inject(monkeypatch, "tpgd", broken)
    with pytest.raises(AttackError) as info:
        run(*sample, tpgd=True, pgd=True, eps="2/255,8/255")
    assert info.value.exit_code == 3
    assert str(info.value) == "attack tpgd at eps 2/255 failed: RuntimeError: boom inside torchattacks"
    assert isinstance(info.value.__cause__, RuntimeError)  # --debug shows the library's traceback


@pytest.mark.parametrize("error", [TypeError("robaudit's own bug"), MemoryError()])
def test_own_bugs_and_out_of_memory_are_not_attack_failures(sample, monkeypatch, error):
    import robaudit.attacks.battery as battery

    def bad_verify(*args, **kwargs):
        raise error

    monkeypatch.setattr(battery, "verify", bad_verify)  # robaudit's code after the attack call
    with pytest.raises(type(error)):
        run(*sample, fgsm=True, eps="8/255")

    def oom(m, x, y, params):
        raise MemoryError

    monkeypatch.undo()
    _inject(monkeypatch, "fgsm", oom)  # out of memory inside the library propagates as it is
    with pytest.raises(MemoryError):
        run(*sample, fgsm=True, eps="8/255")


def test_ctrl_c_attaches_the_finished_batches(sample, monkeypatch):
    model, data = sample
    calls = []

    def interrupt_on_second_batch(m, x, y, params):
        calls.append(len(y))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return x.clone()

    _inject(monkeypatch, "tpgd", interrupt_on_second_batch)  # tpgd runs after pgd in each batch
    with pytest.raises(KeyboardInterrupt) as info:
        run(model, data, pgd=True, tpgd=True, eps="8/255", batch_size=64)
    partial = info.value.partial_section
    assert partial["complete"] is False and partial["n"] == 64  # the first batch, whole
    assert [r["attack"] for r in partial["results"]] == ["pgd", "tpgd"]
    # per-attack rows (the default): the worst case is at most every attack's own robust accuracy
    assert partial["worst_case"]["8/255"] <= min(r["robust_accuracy"] for r in partial["results"])
    assert model.module.training is False


# ---------------------------------------------------------------- model state

class _Tiny(nn.Module):
    def __init__(self, n_classes=12):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 28 * 28, n_classes)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _tiny_loaded(n_classes=12):
    torch.manual_seed(0)
    loaded = adapt(_Tiny(n_classes), input_shape=(1, 28, 28))
    return loaded


def _tiny_data(n=16, n_classes=12):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return AuditData("random", "-", x, y, torch.arange(n))


@pytest.mark.parametrize("fail", [False, True])
def test_model_left_as_found(fail, monkeypatch):
    loaded = _tiny_loaded()
    module = loaded.module
    module.train()                       # the user left it in train mode
    module.net.conv.weight.requires_grad_(False)  # and froze one tensor
    state = copy.deepcopy(module.state_dict())
    modes = {name: m.training for name, m in module.named_modules()}
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    if fail:
        def broken(m, x, y, params):
            raise RuntimeError("boom")
        _inject(monkeypatch, "pgd", broken)
    options = ANALYSIS.make_options({"pgd": True, "cw": True, "deepfool": True, "fgsm": True, "steps": 5,
                                     "eps": "8/255", "prune": "exhaustive"})
    if fail:
        with pytest.raises(AttackError, match="pgd"):
            ANALYSIS.run(make_ctx(loaded, _tiny_data(), batch_size=8), options)
    else:
        section = ANALYSIS.run(make_ctx(loaded, _tiny_data(), batch_size=8), options)
        assert {r["attack"]: r["status"] for r in section["results"]} == {"fgsm": "ok", "pgd": "ok", "cw": "ok",
                                                                          "deepfool": "ok"}
    assert {name: m.training for name, m in module.named_modules()} == modes
    assert {name: p.requires_grad for name, p in module.named_parameters()} == flags
    after = module.state_dict()
    # BatchNorm running statistics unchanged: the attacks ran in eval mode
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in module.parameters())  # CW/DeepFool call backward()
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in module.modules())


def test_n_classes_comes_from_the_model():
    from robaudit.attacks.plan import make_plan
    from robaudit.attacks.run import resolve_params

    opts = ANALYSIS.make_options({"fab": True, "apgdt": True, "autoattack": True})
    plan = make_plan(opts, 12)
    assert plan.n_classes == 12
    loaded = _tiny_loaded(12)
    for planned in plan.attacks:
        params = resolve_params(planned.spec, norm=plan.norm, eps=8 / 255, n_classes=plan.n_classes)
        atk = planned.spec.build(loaded.module, params)
        if planned.spec.name == "autoattack":
            assert atk.n_classes == 12
            assert atk.seed is not None  # never torchattacks' time-based default
        else:
            assert atk.n_target_classes == 11
    with pytest.raises(UsageError, match="--n-classes"):
        make_plan(ANALYSIS.make_options({"fab": True, "n_classes": 20}), 12)


def test_apgdt_runs_on_a_12_class_model():
    loaded = _tiny_loaded(12)
    section = ANALYSIS.run(make_ctx(loaded, _tiny_data(), batch_size=8),
                           ANALYSIS.make_options({"apgdt": True, "steps": 3, "eps": "8/255"}))
    assert section["results"][0]["status"] == "ok", section["results"][0]


# ---------------------------------------------------------------- targeted, minimal, noise

def test_targeted_successes_hit_their_targets(sample):
    from robaudit.attacks.run import keyed_targets

    model, data = sample
    index = torch.as_tensor(data.indices)
    targets = keyed_targets(index, data.y, 10, seed_for(0, "targets"))
    assert bool((targets != data.y).all()) and len(set(targets.tolist())) == 10
    # keyed by dataset index: any split into batches gives the same targets
    halves = torch.cat([keyed_targets(index[:50], data.y[:50], 10, seed_for(0, "targets")),
                        keyed_targets(index[50:], data.y[50:], 10, seed_for(0, "targets"))])
    assert torch.equal(targets, halves)
    section = run(model, data, pgd=True, targeted=True, eps="16/255", steps=20, per_sample=True)
    r = section["results"][0]
    assert r["targeted"] is True and r["status"] == "ok"
    # a targeted success is a misclassification; robust accuracy still counts any misclassification
    assert r["success_rate"] > 0
    assert r["n_success"] <= sum(s["fooled"]["pgd@16/255"] and s["correct"] for s in section["per_sample"])
    assert [s["target"] for s in section["per_sample"]] == targets.tolist()
    hits = sum(s["success"]["pgd@16/255"] and s["correct"] for s in section["per_sample"])
    assert r["n_success"] == hits


def test_minimal_attacks_rows_follow_from_their_distances(sample):
    model, data = sample
    # DeepFool (torchattacks) attacks one sample at a time: keep it small.
    section = run(model, subset(data, 16), deepfool=True, pgdl2=True, eps="0.25,0.5,1", steps=10, per_sample=True)
    dist = [s["distance"]["deepfool"] for s in section["per_sample"]]
    for r in (r for r in section["results"] if r["attack"] == "deepfool"):
        robust = sum(s["correct"] and not (d is not None and d <= r["eps"] + 1e-6)
                     for s, d in zip(section["per_sample"], dist))
        assert r["robust_accuracy"] == pytest.approx(robust / section["n"], abs=0)
        assert r["shared_run"] is True
    accs = [r["robust_accuracy"] for r in section["results"] if r["attack"] == "deepfool"]
    assert accs == sorted(accs, reverse=True)
    assert section["distances"]["deepfool"]["searched_norm"] == "l2"
    assert "deepfool" in section["curve"]["distance_curves"]


def test_worst_case_is_per_sample(sample):
    model, data = sample
    section = run(model, data, fgsm=True, pgd=True, tpgd=True, eps="4/255,8/255", per_sample=True)
    for label in ("4/255", "8/255"):
        expected = [s["correct"] and not any(v for k, v in s["fooled"].items() if k.endswith("@" + label))
                    for s in section["per_sample"]]
        assert [s["robust"][label] for s in section["per_sample"]] == expected
        assert section["worst_case"][label] == pytest.approx(sum(expected) / len(expected), abs=0)
        assert section["worst_case"][label] <= min(by(section, a, label)["robust_accuracy"] for a in ("fgsm", "pgd", "tpgd"))


def test_noise_matches_a_hand_computation(sample):
    model, data = sample
    sigmas = (0.1, 0.3)
    section = run(model, data, noise=True, sigmas="0.1,0.3", seed=5, batch_size=50)
    for sigma, r in zip(sigmas, section["noise"]):
        correct = 0
        for start in range(0, N, 50):
            # each batch is seeded from (seed, "noise", its first dataset index)
            torch.manual_seed(seed_for(5, "noise", int(data.indices[start])) + NOISE_SEED_OFFSET)
            x, y = data.images(slice(start, start + 50)), data.y[start:start + 50]
            noisy = (x + sigma * torch.randn_like(x)).clamp(0, 1)
            with torch.no_grad():
                correct += int((model.module(noisy).argmax(1) == y).sum())
        assert r["accuracy"] == pytest.approx(correct / N, abs=0)
        assert r["violations"] == 0
    assert section["results"] == []
    metrics = ANALYSIS.metrics(section)
    assert metrics["attacks.noise@0.1.accuracy"].value == section["noise"][0]["accuracy"]
    assert metrics["attacks.noise@0.1.accuracy"].better == "higher"


# ---------------------------------------------------------------- sanity flags

def test_gradient_masking_is_flagged():
    class Rounded(nn.Module):  # round() has zero gradient almost everywhere
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(torch.round(x * 4).flatten(1))

    torch.manual_seed(0)
    loaded = adapt(Rounded(), input_shape=(1, 28, 28))
    section = ANALYSIS.run(make_ctx(loaded, _tiny_data(16, 10), batch_size=8),
                           ANALYSIS.make_options({"fgsm": True, "eps": "8/255"}))
    assert section["gradient_check"] == {"n": 16, "zero": 16, "nan": 0}
    assert any("gradient masking" in s for s in section["sanity"])


def test_gradient_check_subset_is_keyed_by_index_not_batching(sample):
    from robaudit.attacks.battery import GRAD_CHECK_SAMPLES, clean_check

    model, data = sample
    index = torch.as_tensor(data.indices)
    x, y = data.images(slice(None)), data.y
    # pretend the run has 1,024 samples: about GRAD_CHECK_SAMPLES / 1024 = 1/4 of them are checked
    whole = clean_check(model.module, index, x, y, seed=0, n_total=1024)
    parts = [clean_check(model.module, index[s:s + 48], x[s:s + 48], y[s:s + 48], seed=0, n_total=1024)
             for s in range(0, N, 48)]
    for i in range(4):
        assert torch.equal(whole[i], torch.cat([p[i] for p in parts]))
    checked = int(whole[1].sum())
    assert 0.1 * N < checked < 0.45 * N  # ~N/4 (binomial)
    with torch.no_grad():
        assert torch.equal(whole[0], model.module(x).argmax(1))
    assert not bool(whole[2].any()) and not bool(whole[3].any())  # a healthy LeNet
    assert bool(clean_check(model.module, index, x, y, seed=0, n_total=GRAD_CHECK_SAMPLES)[1].all())


def _plan(norm="linf", eps="2/255,8/255", prune="per-attack"):
    from robaudit.attacks.plan import make_plan

    return make_plan(ANALYSIS.make_options({"pgd": True, "square": True, "eps": eps, "norm": norm,
                                            "prune": prune}), 10)


def _fake_rows(n, fooled):
    from types import SimpleNamespace

    return [SimpleNamespace(correct=True, grad_checked=True, zero_grad=False, nan_grad=False,
                            fooled={k: v[i] for k, v in fooled.items()},
                            violations={k: 0 for k in fooled}) for i in range(n)]


def test_square_beating_white_box_and_non_monotone_are_flagged():
    from robaudit.attacks.summary import sanity

    plan = _plan()
    n = 10
    results = [
        {"attack": "pgd", "eps": 2 / 255, "eps_label": "2/255", "robust_accuracy": 0.6, "status": "ok"},
        {"attack": "pgd", "eps": 8 / 255, "eps_label": "8/255", "robust_accuracy": 0.7, "status": "ok"},
        {"attack": "square", "eps": 2 / 255, "eps_label": "2/255", "robust_accuracy": 0.6, "status": "ok"},
        {"attack": "square", "eps": 8 / 255, "eps_label": "8/255", "robust_accuracy": 0.5, "status": "ok"},
    ]
    keys = ["pgd@2/255", "pgd@8/255", "square@2/255", "square@8/255"]
    flags = sanity(_fake_rows(n, {k: [False] * n for k in keys}), plan, results, {}, [])
    assert sum("Square" in f for f in flags) == 1 and any("8/255" in f and "Square" in f for f in flags)
    assert any("pgd is not monotone" in f for f in flags)
    assert not any("square is not monotone" in f for f in flags)


def test_square_after_white_box_in_a_cascade_is_flagged_per_sample():
    from robaudit.attacks.summary import sanity

    plan = _plan(prune="cascade")
    assert [a.spec.name for a in plan.attacks] == ["pgd", "square"]
    fooled = {"pgd@2/255": [True, False, False, False], "pgd@8/255": [True, True, False, False],
              "square@2/255": [False, True, False, False], "square@8/255": [False, False, True, False]}
    flags = sanity(_fake_rows(4, fooled), plan, [], {}, [])
    assert len([f for f in flags if "Square" in f]) == 2
    assert any("eps 2/255" in f and "broke 1 sample" in f for f in flags)
    fooled["square@2/255"] = [False] * 4
    fooled["square@8/255"] = [True, True, False, False]  # only what pgd found already
    assert not any("Square" in f for f in sanity(_fake_rows(4, fooled), plan, [], {}, []))


# ---------------------------------------------------------------- metrics, render, plot

def test_metrics_canonical_names_and_decimal_aliases(quick):
    from robaudit.gate import metrics_of

    declared = ANALYSIS.metrics(quick)
    pgd8 = by(quick, "pgd", "8/255")["robust_accuracy"]
    assert declared["attacks.pgd@8/255.robust_accuracy"].value == pgd8
    # decimal spellings are gate aliases, never shown as metrics of their own
    assert not any("@0.0" in name for name in declared)
    m = metrics_of({"analyses": {"attacks": quick}}, declared, ANALYSIS.aliases(quick))
    assert m["attacks.pgd@0.0313725.robust_accuracy"] == pgd8
    assert m["attacks.pgd@0.03137.robust_accuracy"] == pgd8
    assert m["attacks.worst_case@8/255"] == quick["worst_case"]["8/255"]
    assert m["attacks.worst_case@0.00784314"] == quick["worst_case"]["2/255"]
    assert m["attacks.worst_case.min"] == min(quick["worst_case"].values())
    assert m["attacks.clean_accuracy"] == quick["clean_accuracy"]
    assert m["attacks.violations"] == 0
    assert declared["attacks.worst_case@8/255"].better == "higher"
    assert declared["attacks.violations"].better == "lower"


def render_text(section) -> str:
    from rich.console import Console

    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    for r in ANALYSIS.render(json.loads(json.dumps(section))):
        console.print(r)
    return console.export_text()


def test_render_from_json_only(quick):
    text = render_text(quick)
    assert "worst case" in text and "8/255" in text and "pgd" in text
    assert f"{100 * by(quick, 'pgd', '8/255')['robust_accuracy']:.1f}%" in text


def test_plot_writes_a_png(quick, tmp_path):
    path = tmp_path / "curve.png"
    ANALYSIS.plot(quick, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_usage_errors_from_options(sample):
    model, data = sample
    bad = [
        ({"deepfool": True, "eps": "0.5"}, "--eps"),
        ({"noise": True, "eps": "0.1"}, "--eps"),
        ({"fgsm": True, "steps": 5}, "--steps"),
        ({"fgsm": True, "alpha": "1/255"}, "--alpha"),
        ({"pgd": True, "eps": "2"}, "--allow-large-eps"),
        ({"pgd": True, "eps": "abc"}, "analyses.attacks.eps"),
        ({"pgd": True, "eps": "-1/255"}, "analyses.attacks.eps"),
        ({"pgd": True, "eps": "1/0"}, "analyses.attacks.eps"),
        ({"pgd": True, "eps": "nan"}, "analyses.attacks.eps"),
        ({"pgd": True, "eps": "1/255,1/255"}, "duplicate"),
        ({"fgsm": True, "norm": "l2"}, "--fgsm"),
        ({"pgd": True, "pgdl2": True}, "one norm per run"),
        ({"tpgd": True, "targeted": True}, "--targeted"),
        ({"pgd": True, "sigmas": "0.1"}, "--sigmas"),
        ({"noise": True, "sigmas": "0,-1"}, "analyses.attacks.sigmas"),
        ({"noise": True, "sigmas": "0,0.1"}, "--sigmas"),
        ({"pgd": True, "norm": "l3"}, "analyses.attacks.norm"),
        ({"pgd": True, "prune": "some"}, "analyses.attacks.prune"),
        ({"pgd": True, "alpha": "0"}, "--alpha"),
    ]
    for options, pattern in bad:
        with pytest.raises(UsageError, match=pattern.replace("-", r"\-").replace(".", r"\.")):
            run(model, data, **options)
    ok = run(model, data, pgd=True, eps="2", allow_large_eps=True, steps=1)
    assert ok["results"][0]["robust_accuracy"] is not None


def test_registry_is_complete_and_every_spec_returns_checked_examples(sample):
    from robaudit.analyses.attacks import Options
    from robaudit.attacks.run import budget_of, build_attack, resolve_params, verify

    attack_flags = {f for f, v in Options.__dataclass_fields__.items() if v.default is False} - {
        "noise", "targeted", "allow_large_eps", "per_sample"}
    assert set(registry.REGISTRY) == attack_flags
    model, data = sample
    x, y = data.images(slice(0, 4)), data.y[:4]
    for spec in registry.REGISTRY.values():
        for norm in sorted(spec.norms):
            params = resolve_params(spec, norm=norm, eps=0.1, steps=2, queries=20, n_classes=10, seed=1)
            atk = build_attack(model.module, spec, params, torch.device("cpu"), [None])
            assert getattr(atk, "eps", params.eps) == params.eps  # the budget reached the library object
            if spec.name == "autoattack":  # four attacks at 100 steps each: too slow to run here
                assert (atk.norm, atk.n_classes, atk.seed) == ({"linf": "Linf", "l2": "L2"}[norm.value], 10, 1)
                continue
            check = verify(model.module, x, y, atk(x, y), budget_of(spec, params))
            assert not bool(check.violation.any()), (spec.name, norm)
    for battery in registry.BATTERIES.values():
        for names in battery.attacks.values():
            assert set(names) <= set(registry.REGISTRY)


def test_restarts_only_add_successes(sample):
    # One batch: the first restart draws exactly what the single run draws, so the union over
    # restarts can only lower robust accuracy.
    model, data = sample
    opts = dict(pgd=True, tpgd=True, eps="4/255", steps=5, per_sample=True, prune="per-attack")
    one = run(model, data, batch_size=N, **opts)
    three = run(model, data, batch_size=N, restarts=3, **opts)
    for name in ("pgd", "tpgd"):
        key = f"{name}@4/255"
        assert by(three, name, "4/255")["restarts"] == 3
        assert all(b["fooled"][key] for a, b in zip(one["per_sample"], three["per_sample"]) if a["fooled"][key])
        assert by(three, name, "4/255")["robust_accuracy"] <= by(one, name, "4/255")["robust_accuracy"]


def test_fab_refuses_float64_before_any_attack_runs(monkeypatch):
    loaded = _tiny_loaded(12)
    loaded.module.double()
    data = _tiny_data()
    data = AuditData(data.name, data.split, data.x.double(), data.y, data.indices)
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float64, batch_size=8)

    def never(*args, **kwargs):
        raise AssertionError("an attack ran")

    monkeypatch.setattr("robaudit.attacks.battery.run_battery", never)
    with pytest.raises(UsageError, match="--fab.*--dtype float32") as info:
        ANALYSIS.run(ctx, ANALYSIS.make_options({"fab": True, "fgsm": True, "eps": "8/255"}))
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="float32"):
        attack_batch(loaded.module, data.x[:2], data.y[:2], "fab", norm="l2", eps=1.0)
