"""Common CLI options, declared once and shared by every command.

Each entry is ``name → (type, typer.Option)``. Commands are assembled from
these lists by :mod:`robaudit.cli.commands`; values the user did not type are
dropped so that precedence CLI > config > defaults holds.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Optional

import typer

MODEL_ARG = inspect.Parameter(
    "model",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    default=None,
    annotation=Annotated[
        Optional[str],
        typer.Argument(
            help="Model file (.pt/.pth/.th checkpoint or state_dict, TorchScript, .onnx). "
            "Default: 'model:' in --config or ./robaudit.yaml, else the embedded sample LeNet.",
            show_default=False,
            metavar="MODEL",
        ),
    ],
)

_M = "Model"
_D = "Data"
_R = "Run"
_O = "Output"

# name → (annotation type, typer.Option); every default is None/False and
# "not given" is detected from click's parameter source.
COMMON: dict[str, tuple[Any, Any]] = {
    "arch": (Optional[str], typer.Option("--arch", help="Architecture for a bare state_dict: a zoo name (see 'robaudit info --list-arch'), a torchvision model name, or package.module:factory.", rich_help_panel=_M)),
    "mean": (Optional[str], typer.Option("--mean", help="Per-channel normalisation mean, e.g. 0.4914,0.4822,0.4465 (goes inside the adapted model).", rich_help_panel=_M)),
    "std": (Optional[str], typer.Option("--std", help="Per-channel normalisation std, e.g. 0.247,0.243,0.261.", rich_help_panel=_M)),
    "input_shape": (Optional[str], typer.Option("--input-shape", help="Input shape C,H,W when the model file does not say (e.g. 3,32,32).", rich_help_panel=_M)),
    "select": (Optional[str], typer.Option("--select", help="Which output holds the logits when the model returns a tuple/list (an index) or a dict (a key).", rich_help_panel=_M)),
    "unsafe_load": (bool, typer.Option("--unsafe-load", help="Allow loading a full pickled nn.Module. This executes code from the file: only for files you trust.", rich_help_panel=_M)),
    "data": (Optional[str], typer.Option("--data", help="Dataset name (embedded, mnist, fashionmnist, kmnist, cifar10, cifar100, svhn) or a path (.npz, .pt, image folder). Default: the embedded Fashion-MNIST sample.", rich_help_panel=_D)),
    "data_root": (Optional[str], typer.Option("--data-root", envvar="ROBAUDIT_DATA_ROOT", help="Folder holding standard datasets.", rich_help_panel=_D)),
    "split": (Optional[str], typer.Option("--split", help="Dataset split: test (default) or train.", rich_help_panel=_D)),
    "limit": (Optional[int], typer.Option("--limit", "-n", help="Use the first N samples (after --indices).", rich_help_panel=_D)),
    "indices": (Optional[str], typer.Option("--indices", help="Dataset indices: 0,5,9 or ranges 0:100.", rich_help_panel=_D)),
    "batch_size": (Optional[int], typer.Option("--batch-size", "-b", help="Samples per batch.", rich_help_panel=_D)),
    "download": (bool, typer.Option("--download", help="Allow downloading a missing standard dataset (never done otherwise).", rich_help_panel=_D)),
    "device": (Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=_R)),
    "seed": (Optional[int], typer.Option("--seed", help="Random seed (default 0).", rich_help_panel=_R)),
    "dtype": (Optional[str], typer.Option("--dtype", help="Computation dtype: float32 (default) or float64.", rich_help_panel=_R)),
    "config": (Optional[str], typer.Option("--config", "-c", help="YAML config (default: ./robaudit.yaml if present).", rich_help_panel=_R)),
    "output": (Optional[str], typer.Option("--output", "-o", help="Write the JSON report to FILE (atomically).", rich_help_panel=_O)),
    "json": (bool, typer.Option("--json", help="Print the JSON report to stdout instead of tables.", rich_help_panel=_O)),
    "markdown": (Optional[str], typer.Option("--markdown", help="Write a Markdown summary to FILE (for CI job summaries).", rich_help_panel=_O)),
    "plots": (Optional[str], typer.Option("--plots", help="Write PNG plots into DIR.", rich_help_panel=_O)),
    "dist_backend": (Optional[str], typer.Option("--dist-backend", help="torch.distributed backend under torchrun: gloo, nccl or mpi [default: nccl on CUDA, else gloo].", rich_help_panel=_R)),
    "checkpoint_dir": (Optional[str], typer.Option("--checkpoint-dir", metavar="DIR", help="Keep finished per-sample rows in DIR; a run started again with the same arguments and DIR resumes where it stopped.", rich_help_panel=_R)),
    "checkpoint_every": (Optional[int], typer.Option("--checkpoint-every", metavar="K", help="Save finished rows to --checkpoint-dir every K batches [default: 1].", rich_help_panel=_R)),
    "html": (Optional[str], typer.Option("--html", help="Write a self-contained HTML report (tables, gate, embedded plots) to FILE.", rich_help_panel=_O)),
    "wide": (bool, typer.Option("--wide", help="Show every table column even when the terminal is narrower (lines may wrap).", rich_help_panel=_O)),
    "quiet": (bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.", rich_help_panel=_O)),
    "debug": (bool, typer.Option("--debug", help="Show tracebacks on errors.", rich_help_panel=_O)),
}

from robaudit.settings import CONFIG_KEYS, DEFAULTS  # noqa: E402,F401  (defaults live below the CLI)


# --help names value types people know (Typer would print <str>, <int>, <bool>).
METAVARS: dict[str, str] = {
    "arch": "NAME", "mean": "LIST", "std": "LIST", "input_shape": "C,H,W", "select": "KEY", "data": "NAME|PATH",
    "data_root": "DIR", "split": "test|train", "limit": "INT", "indices": "LIST", "batch_size": "INT",
    "device": "DEVICE", "seed": "INT", "dtype": "float32|float64", "config": "PATH", "output": "FILE",
    "markdown": "FILE", "plots": "DIR", "html": "FILE", "dist_backend": "gloo|nccl|mpi",
}


def parameters(names: list[str] | None = None) -> list[inspect.Parameter]:
    """inspect.Parameters for the common options (all of them by default)."""
    out = []
    for name in names or list(COMMON):
        typ, option = COMMON[name]
        if option.metavar is None:
            option.metavar = "" if typ is bool else METAVARS.get(name)  # a switch takes no value
        default = False if typ is bool else None
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=Annotated[typ, option]))
    return out
