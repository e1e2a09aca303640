"""Train the sample zoo: one LeNet (Johansson et al. 2022, App. A.1) per regularizer, on Fashion-MNIST.

    apt-get install -y dataset-fashion-mnist          # the Debian package (MIT, Zalando)
    nice -n 10 python sample_models/zoo/train_zoo.py  # single-threaded, deterministic
    python sample_models/zoo/train_zoo.py --measure 40  # per-step cost of each model, projected per epoch

Every model uses the engine of ``robaudit train`` (:func:`robaudit.train.train`)
with the same seed, epochs, optimiser and batch size; only the regularizer and λ
differ. λ is the paper's value where the paper gives one for its regularizer
(``LAMBDAS`` says which). Johansson et al. and Cui et al. give a grid, not a
value, for the Jacobian spectral norm: for those the script runs a recorded pilot
(1 epoch on the first ``--pilot-limit`` training images) over Johansson's grid
{1e-1, 1e-2, 1e-3, 1e-4}, from the largest down, and keeps the first λ whose pilot
test accuracy is within 3 points of the plain pilot's.

Writes ``sample_models/zoo/<name>.pt`` (robaudit checkpoints with their meta),
``plain.onnx`` (the one ONNX export) and ``train_log.json`` (λ choices, pilots,
times, accuracies).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from robaudit.train import TrainConfig, train  # noqa: E402

HERE = Path(__file__).resolve().parent
LOG = HERE / "train_log.json"

# name → (regularizer, λ or "pilot", where λ comes from)
LAMBDAS: dict[str, tuple[str, float | str, str]] = {
    "plain": ("none", 0.0, "no regularizer"),
    "weight_decay": ("weight_decay", 5e-4, "Hoffman et al. 2019 Sec. 3: λ_WD = 5e-4"),
    "jacobian_frobenius": ("jacobian_frobenius", 0.01, "Hoffman et al. 2019 Sec. 3: λ_JR = 0.01, n_proj = 1"),
    "jacobian_spectral": ("jacobian_spectral", "pilot", "Johansson et al. 2022 App. A.2 grid, pilot rule"),
    "jacobian_spectral_lanczos": ("jacobian_spectral_lanczos", "pilot", "Johansson grid (Cui et al. give none), pilot rule"),
    "conv_bound": ("conv_bound", 1.4e-3, "Singla & Feizi 2019 Table 3: best β without weight decay"),
    "global_spectral": ("global_spectral", 3e-4, "Roth et al. 2019 Table 1: λ = 3e-4, 1 iteration"),
    "data_dependent_spectral": ("data_dependent_spectral", 2e-2, "Roth et al. 2019 Table 1: λ = 2e-2, ε = 1.75, 10 iterations"),
    "pgd_adversarial": ("pgd_adversarial", 1.0, "ce(x) + ce(x*), equal weights (Goodfellow et al. 2015 α = ½)"),
}
PILOT_GRID = (1e-1, 1e-2, 1e-3, 1e-4)
ACCURACY_SLACK = 0.03


def measure(steps: int, batch: int) -> dict[str, float]:
    """Seconds per training step of each model's regularizer, on real batches; projected per epoch."""
    from robaudit.data import load_data
    from robaudit.models.adapt import AuditModel, Normalize
    from robaudit.models.zoo import build
    from robaudit.regularizers import make

    data = load_data("fashionmnist", split="train", limit=steps * batch)
    torch.manual_seed(0)
    out = {}
    for name, (reg_name, lam, _) in LAMBDAS.items():
        model = AuditModel(build("lenet"), Normalize((0.286,), (0.353,)))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        reg = make(reg_name)
        lam = reg.default_lam if lam == "pilot" else lam
        start = time.perf_counter()
        for _, x, y in data.batches(batch):
            loss = reg.loss(model, x, y, lam)
            opt.zero_grad()
            loss.total.backward()
            opt.step()
        per_step = (time.perf_counter() - start) / steps
        out[name] = per_step
        print(f"{name:28s} {per_step * 1000:8.1f} ms/step  ~{per_step * 60000 / batch:7.0f} s/epoch", flush=True)
    return out


def pilot(reg_name: str, limit: int, plain_acc: float) -> float:
    """The largest λ of the grid whose 1-epoch pilot accuracy is within 3 points of plain's."""
    runs = []
    for lam in PILOT_GRID:
        res = train(TrainConfig(regularizer=reg_name, lam=lam, epochs=1, limit=limit, seed=0), HERE / "_pilot.pt")
        runs.append({"lam": lam, "test_accuracy": res.meta["test_accuracy"], "seconds": res.meta["train_seconds"]})
        print(f"  pilot {reg_name} λ={lam:g}: acc {res.meta['test_accuracy']:.4f} (plain {plain_acc:.4f})", flush=True)
        if res.meta["test_accuracy"] >= plain_acc - ACCURACY_SLACK:
            break
    (HERE / "_pilot.pt").unlink(missing_ok=True)
    record = {"plain_accuracy": plain_acc, "runs": runs, "limit": limit}
    update_log(lambda log: log["pilots"].__setitem__(reg_name, record))
    return runs[-1]["lam"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pilot-limit", type=int, default=10000)
    ap.add_argument("--only", nargs="*", help="train only these zoo names")
    ap.add_argument("--measure", type=int, metavar="STEPS", help="only time STEPS steps of each model and exit")
    ap.add_argument("--export-onnx", action="store_true", help="only write plain.onnx from plain.pt and exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.measure:
        measure(args.measure, args.batch_size)
        return
    if args.export_onnx:
        export_onnx(HERE / "plain.pt", HERE / "plain.onnx")
        return

    settings = {"epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size, "threads": 1,
                "accuracy_slack": ACCURACY_SLACK, "pilot_grid": list(PILOT_GRID)}
    if not args.only:  # a full run starts a fresh log; --only runs add to it
        LOG.unlink(missing_ok=True)
    update_log(lambda log: log.update(settings))
    started = time.perf_counter()
    names = args.only or list(LAMBDAS)
    plain_pilot = None
    for name in names:
        reg_name, lam, source = LAMBDAS[name]
        t0 = time.perf_counter()
        if lam == "pilot":
            if plain_pilot is None:
                plain_pilot = train(TrainConfig(regularizer="none", epochs=1, limit=args.pilot_limit, seed=0),
                                    HERE / "_pilot.pt").meta["test_accuracy"]
            lam = pilot(reg_name, args.pilot_limit, plain_pilot)
        cfg = TrainConfig(regularizer=reg_name, lam=None if reg_name == "none" else lam, epochs=args.epochs,
                          seed=args.seed, batch_size=args.batch_size)
        res = train(cfg, HERE / f"{name}.pt")
        entry = {"regularizer": reg_name, "lam": res.meta["lam"], "lam_source": source,
                 "test_accuracy": res.meta["test_accuracy"], "train_seconds": res.meta["train_seconds"],
                 "wall_seconds_incl_pilot": round(time.perf_counter() - t0, 1)}
        update_log(lambda log: log["models"].__setitem__(name, entry))
        print(f"{name:28s} λ={res.meta['lam']:g}  acc {res.meta['test_accuracy']:.4f}  "
              f"{res.meta['train_seconds']:.0f} s", flush=True)
    if not args.only:
        update_log(lambda log: log.__setitem__("total_seconds", round(time.perf_counter() - started, 1)))
    if "plain" in names:
        export_onnx(HERE / "plain.pt", HERE / "plain.onnx")


def update_log(change: Callable[[dict], None]) -> None:
    """Read train_log.json, apply ``change``, write it back, under a file lock (--only runs may overlap)."""
    with open(Path(tempfile.gettempdir()) / "robaudit_train_zoo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log = json.loads(LOG.read_text()) if LOG.exists() else {"models": {}, "pilots": {}}
        change(log)
        LOG.write_text(json.dumps(log, indent=2) + "\n")


def export_onnx(pt: Path, onnx_path: Path) -> None:
    """The one ONNX export: the plain model with its normalisation, pixels in [0,1] → logits."""
    from robaudit.models.adapt import AuditModel, Normalize
    from robaudit.models.zoo import build

    ck = torch.load(pt, weights_only=True)
    net = build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    model = AuditModel(net, Normalize(ck["meta"]["mean"], ck["meta"]["std"])).eval()
    torch.onnx.export(model, torch.rand(1, 1, 28, 28), str(onnx_path), input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)


if __name__ == "__main__":
    main()
