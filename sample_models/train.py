"""Train the sample LeNet (Johansson et al. 2022, App. A.1) on Fashion-MNIST.

Reproducible: fixed seed, deterministic single-threaded CPU training.

    apt-get install -y dataset-fashion-mnist      # the Debian package, MIT licence (Zalando)
    python sample_models/train.py                 # ~3 min on a 2-core CPU

Writes
    sample_models/lenet_fmnist.pt     robaudit checkpoint (arch, arch_kwargs, state_dict, meta)
    sample_models/lenet_fmnist.onnx   ONNX export of the adapted model (input: pixels in [0,1])
    robaudit/assets/lenet_fmnist.pt   the same checkpoint, shipped inside the package as the default model
and prints the test accuracy on all 10,000 test images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robaudit.data.idx import read_idx
from robaudit.models.adapt import AuditModel, Normalize
from robaudit.models.zoo import build

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST train-split pixel statistics


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += (model(x[i:i + 1000].float() / 255).argmax(1) == y[i:i + 1000]).sum().item()
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "sample_models")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train = load("train")
    x_test, y_test = load("test")
    net = build("lenet", in_channels=1, num_classes=10)
    model = AuditModel(net, Normalize(MEAN, STD))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(x_train[idx].float() / 255), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.4f}  test acc {accuracy(model, x_test, y_test):.4f}  "
              f"({time.time() - start:.0f} s)", flush=True)
    acc = accuracy(model, x_test, y_test)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "arch": "lenet",
        "arch_kwargs": {"in_channels": 1, "num_classes": 10},
        "state_dict": net.state_dict(),
        "meta": {"mean": list(MEAN), "std": list(STD), "input_shape": [1, 28, 28], "class_names": CLASSES,
                 "dataset": "fashionmnist", "test_accuracy": acc, "seed": args.seed, "epochs": args.epochs},
    }
    pt = args.out / "lenet_fmnist.pt"
    torch.save(ckpt, pt)
    shutil.copyfile(pt, ROOT / "robaudit" / "assets" / "lenet_fmnist.pt")
    onnx_path = args.out / "lenet_fmnist.onnx"
    torch.onnx.export(model, torch.rand(1, 1, 28, 28), str(onnx_path), input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    print(f"test accuracy {acc:.4f} on {len(x_test)} images; wrote {pt}, {onnx_path} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
