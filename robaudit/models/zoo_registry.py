"""The sample zoo: ``zoo:NAME`` model names → checkpoints under ``sample_models/zoo/``.

Nine LeNets trained on Fashion-MNIST by ``sample_models/zoo/train_zoo.py``, one
per regularizer of :mod:`robaudit.regularizers` (see ``sample_models/README.md``).
The checkpoints live in the source repository, not in the installed package;
``ROBAUDIT_ZOO_DIR`` points elsewhere. Torch-free, so ``--help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from robaudit.errors import UsageError

PREFIX = "zoo:"

# name → one line for ``robaudit info --list-zoo``
ZOO_MODELS: dict[str, str] = {
    "plain": "LeNet, cross-entropy only",
    "weight_decay": "LeNet, L2 weight decay (Krogh & Hertz 1991)",
    "jacobian_frobenius": "LeNet, Jacobian Frobenius norm by random projections (Hoffman et al. 2019)",
    "jacobian_spectral": "LeNet, Jacobian spectral norm by power iteration (Johansson et al. 2022)",
    "jacobian_spectral_lanczos": "LeNet, Jacobian spectral norm by Lanczos (Cui et al. 2022)",
    "conv_bound": "LeNet, sum of per-layer Singla & Feizi bounds (2019)",
    "global_spectral": "LeNet, sum of squared layer spectral norms (Yoshida & Miyato 2017)",
    "data_dependent_spectral": "LeNet, data-dependent spectral norm, sum-of-squares form (Roth et al. 2019, eq. 9)",
    "pgd_adversarial": "LeNet, ℓ∞ PGD adversarial training, eps 8/255 (Madry et al. 2018)",
}


def zoo_dir() -> Path:
    """Where the zoo checkpoints are: ``$ROBAUDIT_ZOO_DIR`` or the repository's ``sample_models/zoo``."""
    env = os.environ.get("ROBAUDIT_ZOO_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "sample_models" / "zoo"


def zoo_names() -> list[str]:
    """Every zoo model name, in table order."""
    return list(ZOO_MODELS)


def is_zoo_spec(spec: str | None) -> bool:
    """Whether a model argument is a ``zoo:NAME`` name."""
    return bool(spec) and spec.startswith(PREFIX)


def zoo_path(name: str) -> str:
    """The checkpoint path of zoo model ``name`` (with or without the ``zoo:`` prefix).

    Raises:
        UsageError: unknown name, or the checkpoint is not present (exit 2).
    """
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if key not in ZOO_MODELS:
        raise UsageError(f"zoo:{key}: expected one of {', '.join(ZOO_MODELS)} (robaudit info --list-zoo)")
    path = zoo_dir() / f"{key}.pt"
    if not path.is_file():
        raise UsageError(f"zoo:{key}: {path} not found; the zoo ships with the source repository "
                         f"(sample_models/zoo), or set ROBAUDIT_ZOO_DIR")
    return str(path)
