"""The engine of ``robaudit train``: a small, deterministic trainer for sample and comparison models.

One flow: load data (pixel space [0,1]) → build a zoo architecture behind its
normalisation → Adam with cosine decay, loss = ce + λ·penalty from
:mod:`robaudit.regularizers` → clean test accuracy → a robaudit checkpoint
(``arch``, ``arch_kwargs``, ``state_dict``, ``meta``) written atomically.
It never prints: ``progress`` receives one call per step.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from robaudit.errors import DataError, UsageError

# Called after every step with (epoch, step, steps_per_epoch, running loss, running train accuracy).
Progress = Callable[[int, int, int, float, float], None]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What ``robaudit train`` was asked to do (recorded in the checkpoint's meta).

    Attributes:
        arch: zoo architecture name (``robaudit info --list-arch``).
        data: dataset name or path :func:`robaudit.data.load_data` accepts (needs a train split).
        data_root: folder holding named datasets (None: the default search).
        regularizer: a :data:`robaudit.regularizers.REGULARIZERS` name.
        lam: λ; None uses the regularizer's paper default.
        reg_options: keyword options of the regularizer (e.g. n_iter).
        epochs, lr, batch_size, seed: optimisation (Adam, cosine decay per epoch).
        limit: use only the first ``limit`` images of each split (quick runs); None: all.
        device: "cpu", "cuda", "auto", …
    """

    arch: str = "lenet"
    data: str = "fashionmnist"
    data_root: str | None = None
    regularizer: str = "none"
    lam: float | None = None
    reg_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None
    device: str = "cpu"

    def check(self) -> None:
        """UsageError (exit 2) naming the flag for out-of-range values."""
        if self.epochs < 1:
            raise UsageError(f"--epochs: expected an integer ≥ 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size: expected an integer ≥ 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr: expected a positive number, got {self.lr}")
        if self.lam is not None and not (self.lam >= 0 and math.isfinite(self.lam)):
            raise UsageError(f"--lam: expected a number ≥ 0, got {self.lam}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit: expected an integer ≥ 1, got {self.limit}")


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        path: the checkpoint written.
        meta: the checkpoint's metadata (also in the file).
    """

    path: Path
    meta: dict[str, Any]


def _pixel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images in [0,1] (the checkpoint's normalisation)."""
    chans = x.shape[1]
    mean, sq = torch.zeros(chans, dtype=torch.float64), torch.zeros(chans, dtype=torch.float64)
    n = 0
    for start in range(0, x.shape[0], 4096):  # chunks: the train split as float64 would be 376 MB
        xb = x[start:start + 4096].to(torch.float64)
        xb = xb / 255.0 if x.dtype == torch.uint8 else xb
        mean += xb.sum(dim=(0, 2, 3))
        sq += xb.square().sum(dim=(0, 2, 3))
        n += xb.shape[0] * xb.shape[2] * xb.shape[3]
    mu = mean / n
    std = (sq / n - mu.square()).clamp_min(0).sqrt()
    return [round(float(v), 4) for v in mu], [round(max(float(v), 1e-4), 4) for v in std]


def accuracy(model: torch.nn.Module, data: Any, device: torch.device, batch: int = 1000) -> float:
    """Clean accuracy of ``model`` (eval mode for the call, restored after) on AuditData."""
    from robaudit.linalg.products import eval_mode

    correct = 0
    with eval_mode(model), torch.no_grad():
        for _, x, y in data.batches(batch, device=device):
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(len(data), 1)


def _build(arch: str, in_channels: int, num_classes: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from robaudit.models import zoo

    if arch not in zoo.ZOO:
        raise UsageError(f"--arch: expected a zoo architecture ({', '.join(zoo.ZOO)}), got {arch!r}")
    spec = zoo.resolve(arch)
    kwargs: dict[str, Any] = {}
    if spec.accepts("num_classes"):
        kwargs["num_classes"] = num_classes
    if spec.entry and spec.entry.channels_kwarg:
        kwargs[spec.entry.channels_kwarg] = in_channels
    elif spec.entry and spec.entry.input_shape[0] != in_channels:
        raise DataError(f"--data has {in_channels}-channel images but --arch {arch} takes {spec.entry.input_shape[0]}")
    return zoo.build(arch, **kwargs), kwargs


def train(cfg: TrainConfig, output: str | Path, *, progress: Progress | None = None) -> TrainResult:
    """Train ``cfg.arch`` on ``cfg.data`` with ``cfg.regularizer`` and write a robaudit checkpoint to ``output``.

    Deterministic for a given seed, device and thread count: the seed fixes the
    initialisation, the batch order and every random vector of the regularizers.

    Raises:
        UsageError: a bad option (exit 2). DataError: the data cannot be used (exit 3).
    """
    from robaudit import __version__
    from robaudit.data import load_data
    from robaudit.device import resolve_device
    from robaudit.models.adapt import AuditModel, Normalize
    from robaudit.regularizers import make

    cfg.check()
    reg = make(cfg.regularizer, **cfg.reg_options)
    lam = reg.default_lam if cfg.lam is None else float(cfg.lam)
    if reg.name != "none" and lam == 0:
        raise UsageError(f"--lam 0 turns --regularizer {reg.name} off: use --regularizer none")
    if reg.name == "none" and cfg.lam not in (None, 0):
        raise UsageError(f"--lam {cfg.lam} has no effect with --regularizer none")
    from robaudit.models import zoo

    if cfg.arch not in zoo.ZOO:  # before any data is read
        raise UsageError(f"--arch: expected a zoo architecture ({', '.join(zoo.ZOO)}), got {cfg.arch!r}")
    device = resolve_device(cfg.device)
    output = Path(output)
    if not output.parent.exists():
        raise UsageError(f"-o/--output {output}: folder {output.parent} does not exist")

    train_data = load_data(cfg.data, root=cfg.data_root, split="train", limit=cfg.limit)
    test_data = load_data(cfg.data, root=cfg.data_root, split="test", limit=cfg.limit)
    if len(train_data) == 0:
        raise DataError(f"--data {cfg.data}: the train split is empty")
    labels = train_data.y
    if bool((labels < 0).any()):
        raise DataError(f"--data {cfg.data}: training needs labels for every image (found -1)")
    num_classes = len(train_data.class_names) if train_data.class_names else int(labels.max()) + 1
    mean, std = _pixel_stats(train_data.x)

    torch.manual_seed(cfg.seed)
    net, arch_kwargs = _build(cfg.arch, train_data.sample_shape[0], num_classes)
    model = AuditModel(net, Normalize(mean, std)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    order = torch.Generator().manual_seed(cfg.seed)
    n = len(train_data)
    steps = math.ceil(n / cfg.batch_size)
    start = time.perf_counter()
    last = {"ce": float("nan"), "penalty": float("nan")}
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=order)
        seen, correct, total_loss = 0, 0, 0.0
        for step in range(steps):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = train_data.images(idx, device=device)
            y = train_data.y[idx].to(device)
            loss = reg.loss(model, x, y, lam)
            if not torch.isfinite(loss.total):
                raise DataError(f"training diverged at epoch {epoch + 1}, step {step + 1} (loss {float(loss.total)}): "
                                f"lower --lr or --lam")
            opt.zero_grad(set_to_none=True)
            # only the parameters: the input gradients the Jacobian losses would also accumulate are waste
            loss.total.backward(inputs=params)
            opt.step()
            seen += len(idx)
            correct += int((loss.logits.argmax(dim=1) == y).sum())
            total_loss += float(loss.total.detach()) * len(idx)
            last = {"ce": float(loss.ce), "penalty": float(loss.penalty)}
            if progress is not None:
                progress(epoch, step, steps, total_loss / seen, correct / seen)
        sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    test_acc = accuracy(model, test_data, device)

    meta = {
        "mean": mean, "std": std, "input_shape": list(train_data.sample_shape),
        "class_names": train_data.class_names, "dataset": cfg.data,
        "train_size": n, "test_size": len(test_data), "test_accuracy": test_acc,
        "regularizer": reg.name, "regularizer_options": reg.options(), "regularizer_reference": reg.reference,
        "lam": lam, "epochs": cfg.epochs, "seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "optimizer": "Adam, cosine decay per epoch", "train_seconds": round(seconds, 1),
        "final_step": last, "device": str(device), "threads": torch.get_num_threads(),
        "robaudit_version": __version__, "torch_version": str(torch.__version__), "python": platform.python_version(),
        "config": asdict(cfg),
    }
    ckpt = {"arch": cfg.arch, "arch_kwargs": arch_kwargs,
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "meta": meta}
    tmp = output.with_name(output.name + ".partial")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, output)
    finally:
        if tmp.exists():  # a half-written checkpoint is never left behind
            tmp.unlink()
    return TrainResult(path=output, meta=meta)
