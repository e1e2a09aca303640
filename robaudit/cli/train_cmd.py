"""``robaudit train``: train a zoo architecture with a regularizer and write a robaudit checkpoint.

Thin: it parses flags into a :class:`robaudit.train.TrainConfig`, shows a
progress bar on stderr and calls :func:`robaudit.train.train`. For making sample
and comparison models, not a training framework.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

HELP = ("Train a zoo architecture (e.g. lenet) on a dataset robaudit can load, with a regularizer from "
        "robaudit.regularizers, and write a robaudit checkpoint whose meta records how it was made.")

_T = "Training"


def train(
    output: Annotated[str, typer.Option("--output", "-o", help="Checkpoint file to write (atomically).",
                                        show_default=False)],
    arch: Annotated[str, typer.Option("--arch", help="Zoo architecture (robaudit info --list-arch).",
                                      rich_help_panel=_T)] = "lenet",
    data: Annotated[str, typer.Option("--data", help="Dataset name or path with a train split, e.g. fashionmnist.",
                                      rich_help_panel=_T)] = "fashionmnist",
    data_root: Annotated[Optional[str], typer.Option("--data-root", envvar="ROBAUDIT_DATA_ROOT",
                                                     help="Folder holding standard datasets.")] = None,
    regularizer: Annotated[str, typer.Option("--regularizer", help="none, weight_decay, jacobian_frobenius, "
                                             "jacobian_spectral, jacobian_spectral_lanczos, conv_bound, "
                                             "global_spectral, data_dependent_spectral, pgd_adversarial.",
                                             rich_help_panel=_T)] = "none",
    lam: Annotated[Optional[float], typer.Option("--lam", help="Regularization weight λ [default: the paper's value "
                                                 "for the regularizer].", rich_help_panel=_T)] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training images.", rich_help_panel=_T)] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine decay per epoch).",
                                      rich_help_panel=_T)] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per step.", rich_help_panel=_T)] = 128,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", help="Use only the first N images of each split "
                                                 "(quick runs).", rich_help_panel=_T)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisation, batch order and random vectors.",
                                      rich_help_panel=_T)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> int:
    from robaudit.cli.console import Diagnostics
    from robaudit.train import TrainConfig, train as run_training

    diag = Diagnostics(quiet=quiet)
    cfg = TrainConfig(arch=arch, data=data, data_root=data_root, regularizer=regularizer, lam=lam, epochs=epochs,
                      lr=lr, batch_size=batch_size, limit=limit, seed=seed, device=device)
    cfg.check()  # bad flags fail before any data is read
    with diag.progress(f"training {arch} ({regularizer})") as task:
        def progress(epoch: int, step: int, steps: int, loss: float, acc: float) -> None:
            bar = task._bar  # the step count is known only once the engine has read the data
            if bar is not None:
                bar.update(task._task, total=steps * epochs,
                           description=f"epoch {epoch + 1}/{epochs} loss {loss:.3f} acc {acc:.3f}")
            task.advance()

        result = run_training(cfg, output, progress=progress)
    meta = result.meta
    diag.note(f"{result.path}: {meta['regularizer']} λ={meta['lam']:g}, {meta['epochs']} epoch(s), "
              f"test accuracy {meta['test_accuracy']:.4f} on {meta['test_size']} images, {meta['train_seconds']:.0f} s")
    return 0
