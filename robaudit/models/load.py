"""Loading model files of every supported format into a :class:`LoadedModel`.

Formats (detected from the file's content, ``.onnx`` by suffix):

* robaudit checkpoint: ``{"arch", "arch_kwargs", "state_dict", "meta"}``;
* bare ``state_dict`` (or ``{"state_dict": …}``, e.g. ``{"best_prec1", "state_dict"}``) plus ``--arch``;
* TorchScript (the zip archive written by ``torch.jit.save``);
* ONNX (:mod:`robaudit.models.onnx`);
* a full pickled ``nn.Module``: only with ``unsafe_load=True``.

Pickles are read with ``torch.load(weights_only=True)``, which refuses to run code; only
``--unsafe-load`` falls back to full unpickling. The user's file is only ever read.
Precedence for normalisation and input shape: CLI flags > the file's metadata > zoo defaults.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from robaudit.errors import ModelLoadError, UsageError
from robaudit.models.adapt import LoadedModel, adapt
from robaudit.models import zoo

#: Extra file a TorchScript archive may carry with robaudit meta (mean, std, input_shape, class_names, dataset).
TORCHSCRIPT_META = "robaudit.json"
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile wrappers


def sample_model_path() -> Path:
    """The embedded sample checkpoint (LeNet on Fashion-MNIST)."""
    import robaudit

    return Path(robaudit.__file__).parent / "assets" / "lenet_fmnist.pt"


@dataclass
class _Found:
    """What a format loader learned, before CLI overrides and adaptation."""

    net: nn.Module
    format: str
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    shape_source: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    norm_source: str | None = None
    class_names: list[str] | None = None
    dataset: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | None, *, arch: str | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, input_shape: Sequence[int] | None = None,
               select: str | int | None = None, unsafe_load: bool = False,
               device: torch.device | str = "cpu") -> LoadedModel:
    """Load a model file and adapt it: pixels in [0,1] → logits (N, C), eval mode, on ``device``.

    Args:
        path: model file; None loads the embedded sample LeNet.
        arch: architecture for a bare state_dict (zoo name, torchvision name, package.module:factory).
        mean, std: normalisation (override the file's meta and zoo defaults).
        input_shape: (C, H, W) of one sample (overrides the file's meta).
        select: index/key of the logits when the network returns a tuple/list/dict.
        unsafe_load: allow unpickling a full nn.Module (runs code from the file).
        device: where the adapted model lives.

    Returns:
        a LoadedModel with format, path, sha256, arch, class_names, dataset and meta filled.

    Raises:
        UsageError: the file does not exist, or a flag is invalid (exit 2).
        ModelLoadError: the file cannot be loaded or adapted (exit 3).
    """
    embedded = path is None
    file = sample_model_path() if embedded else Path(path)  # type: ignore[arg-type]
    label = str(file) if not embedded else "embedded sample model"
    if not file.exists():
        raise UsageError(f"model file not found: {path}" if not embedded else f"embedded sample model missing: {file} (reinstall robaudit)")
    if file.is_dir():
        raise UsageError(f"model path is a directory, expected a file: {path}")
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: pass both or neither")
    if input_shape is not None:
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s <= 0 for s in input_shape):
            raise UsageError(f"--input-shape: expected positive sizes like 3,32,32, got {','.join(map(str, input_shape))}")
    digest = _sha256(file)

    kind = _sniff(file)
    if kind == "onnx":
        found = _load_onnx(file, input_shape)
    elif kind == "torchscript":
        found = _load_torchscript(file)
    else:
        found = _load_pickle(file, arch=arch, unsafe_load=unsafe_load)
    # Audits run in float32 (float64 is chosen later by --dtype); half/double files are cast on our copy.
    found.net.float()

    meta = dict(found.meta)
    if embedded:
        meta["embedded"] = True
    shape, shape_source = found.input_shape, found.shape_source
    if input_shape is not None:
        shape, shape_source = input_shape, "--input-shape"
    if shape is None:
        raise ModelLoadError(f"{label}: the {found.format} file does not say its input shape; pass --input-shape C,H,W")
    meta["input_shape_source"] = shape_source
    norm_mean, norm_std, norm_source = found.mean, found.std, found.norm_source
    if mean is not None:
        norm_mean, norm_std, norm_source = tuple(mean), tuple(std), "--mean/--std"  # type: ignore[arg-type]
    meta["normalisation_source"] = norm_source or "none"
    if norm_mean is not None and len(norm_mean) not in (1, shape[0]):
        raise UsageError(f"{label}: normalisation has {len(norm_mean)} channel values but the input has {shape[0]} channels "
                         f"(input shape {_fmt(shape)}); check --mean/--std")

    try:
        loaded = adapt(found.net, input_shape=shape, mean=norm_mean, std=norm_std, select=select, device=device,
                       format=found.format, path=None if embedded else str(path), sha256=digest, arch=found.arch,
                       class_names=found.class_names, dataset=found.dataset, meta=meta)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{label}: {exc}") from exc.__cause__
    if loaded.class_names is not None and len(loaded.class_names) != loaded.num_classes:
        raise ModelLoadError(f"{label}: meta has {len(loaded.class_names)} class names but the model outputs "
                             f"{loaded.num_classes} logits")
    return loaded


# --------------------------------------------------------------------------------------- sniffing

def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sniff(file: Path) -> str:
    """'onnx' | 'torchscript' | 'torch' (torch.save zip or legacy pickle; also anything unrecognised,
    so that torch.load reports corrupt files)."""
    if file.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"
        # torch.jit.save writes <archive>/constants.pkl and <archive>/code/…; torch.save does not.
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch"
    with open(file, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80" or head[:2] == b"PK":  # a pickle (legacy torch.save) or a damaged zip
        return "torch"
    return "onnx" if _looks_like_onnx(file) else "torch"


def _looks_like_onnx(file: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(file), load_external_data=False)
    except Exception:
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -------------------------------------------------------------------------------------- formats

def _load_onnx(file: Path, input_shape: tuple[int, ...] | None) -> _Found:
    from robaudit.models.onnx import load_onnx

    net, shape, meta = load_onnx(str(file), input_shape=input_shape)
    return _Found(net=net, format="onnx", input_shape=shape, shape_source="onnx graph input", meta={"onnx": meta})


def _load_torchscript(file: Path) -> _Found:
    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated but still the reader
            net = torch.jit.load(str(file), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelLoadError(f"{file}: not a readable TorchScript archive (corrupt or truncated?): {_first_line(exc)}") from None
    found = _Found(net=net, format="torchscript", arch=getattr(net, "original_name", None))
    raw = extra.get(TORCHSCRIPT_META) or ""
    if raw:
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ModelLoadError(f"{file}: extra file {TORCHSCRIPT_META} is not valid JSON") from None
        _apply_meta(found, meta, file, source=f"TorchScript {TORCHSCRIPT_META}")
    if found.input_shape is None:
        _shape_from_zoo_match(found)
    return found


def _load_pickle(file: Path, *, arch: str | None, unsafe_load: bool) -> _Found:
    obj = _torch_load(file, unsafe_load)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if isinstance(obj, nn.Module):  # only reachable with unsafe_load
        found = _Found(net=obj, format="pickle", arch=type(obj).__name__, meta={"class": type(obj).__qualname__})
        _shape_from_zoo_match(found)
        return found
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{file}: expected a checkpoint dict or state_dict, found a {type(obj).__name__}")
    if isinstance(obj.get("arch"), str) and isinstance(obj.get("state_dict"), Mapping):
        return _from_checkpoint(obj, file, arch)
    state_dict, where = _find_state_dict(obj, file)
    if arch is None:
        raise UsageError(f"{file}: a bare state_dict holds weights but not the architecture; pass --arch NAME "
                         f"(a zoo name: {', '.join(zoo.ZOO)}; a torchvision model name; or package.module:factory)")
    found = _from_state_dict(state_dict, file, zoo.resolve(arch), kwargs=None, fmt="state_dict")
    if where:
        found.meta["state_dict_key"] = where
    extra = {k: v for k, v in obj.items() if k != where and isinstance(v, (int, float, str, bool))}
    if extra:
        found.meta["checkpoint"] = extra
    return found


def _torch_load(file: Path, unsafe_load: bool) -> Any:
    """torch.load with weights_only=True; full unpickling only when ``unsafe_load`` and needed."""
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" not in text:
            raise ModelLoadError(f"{file}: not a readable PyTorch file (corrupt or truncated?): {_weights_only_reason(text)}") from None
        if not unsafe_load:
            raise ModelLoadError(f"{file}: holds pickled Python objects ({_weights_only_reason(text)}), not just weights; "
                                 "loading it runs code from the file. Pass --unsafe-load only if you trust it, "
                                 "or save a state_dict or TorchScript instead") from None
    except Exception as exc:  # RuntimeError (bad zip), EOFError (truncated pickle), OSError, …
        raise ModelLoadError(f"{file}: not a readable PyTorch file (corrupt or truncated?): {_first_line(exc)}") from None
    try:
        return torch.load(str(file), map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling ran user code, which failed (e.g. a class that no longer imports)
        raise ModelLoadError(f"{file}: --unsafe-load could not unpickle the file: {type(exc).__name__}: {_first_line(exc)}") from None


def _weights_only_reason(text: str) -> str:
    """The informative line of torch's weights_only error (e.g. 'Unsupported global: GLOBAL x.Y …')."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:"):
            line = line[len("WeightsUnpickler error:"):].strip()
            if line:
                return line.split(" was not an allowed global")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "Weights only load failed" not in ln]
    for ln in lines:
        if ln.startswith("Unsupported") or "invalid load key" in ln:
            return ln
    return lines[-1] if lines else "unreadable pickle"


def _find_state_dict(obj: Mapping[str, Any], file: Path) -> tuple[Mapping[str, torch.Tensor], str | None]:
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj, None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        value = obj.get(key)
        if isinstance(value, Mapping) and value and all(torch.is_tensor(v) for v in value.values()):
            return value, key
    keys = ", ".join(map(str, list(obj)[:8]))
    raise ModelLoadError(f"{file}: no state_dict found: expected tensors or a 'state_dict' entry, found keys [{keys}]")


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    sd = dict(state_dict)
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}, prefix
    return sd, None


def _from_state_dict(state_dict: Mapping[str, torch.Tensor], file: Path, arch: zoo.Arch,
                     kwargs: Mapping[str, Any] | None, fmt: str) -> _Found:
    """Build ``arch`` and load ``state_dict`` into it with strict key and shape matching."""
    sd, prefix = _strip_prefix(state_dict)
    kwargs = dict(kwargs) if kwargs is not None else zoo.infer_kwargs(arch, sd)
    try:
        net = arch.factory(**kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{file}: cannot build --arch {arch.name} with {kwargs}: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ModelLoadError(f"{file}: --arch {arch.name} returned a {type(net).__name__}, not an nn.Module")
    filled = _fill_batch_counters(net, sd)
    _check_keys(net, sd, file, arch.name)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{file}: state_dict does not fit --arch {arch.name}: {_first_line(exc)}") from None
    found = _Found(net=net, format=fmt, arch=arch.name, meta={"arch_kind": arch.kind, "arch_kwargs": kwargs})
    if prefix:
        found.meta["stripped_prefix"] = prefix
    if filled:
        found.meta["filled_num_batches_tracked"] = filled
    if arch.entry is not None:
        found.input_shape, found.shape_source = zoo.input_shape_for(arch.name, kwargs), f"zoo default for {arch.name}"
        if arch.entry.mean is not None and arch.entry.std is not None:
            found.mean, found.std = arch.entry.mean, arch.entry.std
            found.norm_source = f"zoo default for {arch.name}"
    return found


def _fill_batch_counters(net: nn.Module, sd: dict[str, torch.Tensor]) -> int:
    """Add BatchNorm ``num_batches_tracked`` counters that checkpoints from PyTorch < 0.4.1 lack.

    PyTorch itself fills them with 0 for old checkpoints (BatchNorm's versioned state-dict
    loading); the counter only matters in training with momentum=None, never in eval mode.
    Returns how many were added (in place).
    """
    added = 0
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
            added += 1
    return added


def _check_keys(net: nn.Module, sd: Mapping[str, torch.Tensor], file: Path, arch: str, shown: int = 3) -> None:
    """One-line error naming the first missing/unexpected keys and shape mismatches."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {_fmt(sd[k].shape)} vs {_fmt(expected[k].shape)}" for k in expected
              if k in sd and torch.is_tensor(sd[k]) and sd[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches (file vs arch)", shapes)):
        if items:
            more = f", … +{len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} {title}: {', '.join(items[:shown])}{more}")
    raise ModelLoadError(f"{file}: state_dict does not match --arch {arch}: {'; '.join(parts)}")


def _from_checkpoint(ck: Mapping[str, Any], file: Path, arch_override: str | None) -> _Found:
    """A robaudit checkpoint: {"arch", "arch_kwargs", "state_dict", "meta"}."""
    name = arch_override or ck["arch"]
    # The file may only name zoo or torchvision architectures: importing a factory named by a
    # file would let the file run code.
    arch = zoo.resolve(name, allow_import=arch_override is not None,
                       flag="--arch" if arch_override else f"{file}: checkpoint 'arch'")
    kwargs = ck.get("arch_kwargs") if arch_override is None or arch_override == ck["arch"] else None
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ModelLoadError(f"{file}: checkpoint 'arch_kwargs' must be a dict, found {type(kwargs).__name__}")
    found = _from_state_dict(ck["state_dict"], file, arch, kwargs=kwargs, fmt="robaudit-checkpoint")
    meta = ck.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise ModelLoadError(f"{file}: checkpoint 'meta' must be a dict, found {type(meta).__name__}")
    _apply_meta(found, meta, file, source="checkpoint meta")
    return found


def _apply_meta(found: _Found, meta: Mapping[str, Any], file: Path, source: str) -> None:
    """Take mean/std/input_shape/class_names/dataset from a file's meta dict (validated)."""
    def floats(key: str) -> tuple[float, ...] | None:
        value = meta.get(key)
        if value is None:
            return None
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{file}: {source} '{key}' must be a list of numbers, found {value!r}") from None

    mean, std = floats("mean"), floats("std")
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):  # type: ignore[arg-type]
        raise ModelLoadError(f"{file}: {source} needs 'mean' and 'std' of equal length, found {meta.get('mean')!r} and {meta.get('std')!r}")
    if mean is not None:
        found.mean, found.std, found.norm_source = mean, std, source
    shape = meta.get("input_shape")
    if shape is not None:
        try:
            found.input_shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{file}: {source} 'input_shape' must be a list of ints, found {shape!r}") from None
        found.shape_source = source
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, (list, tuple)):
            raise ModelLoadError(f"{file}: {source} 'class_names' must be a list, found {type(names).__name__}")
        found.class_names = [str(n) for n in names]
    if meta.get("dataset") is not None:
        found.dataset = str(meta["dataset"])
    extra = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool)) and k != "dataset"}
    if extra:
        found.meta["file_meta"] = extra


def _shape_from_zoo_match(found: _Found) -> None:
    """Input shape (and zoo normalisation) for a pickled/TorchScript copy of a zoo architecture."""
    match = zoo.match_module(found.net)
    if match is None:
        return
    name, kwargs = match
    found.arch = name
    found.input_shape, found.shape_source = zoo.input_shape_for(name, kwargs), f"recognised as zoo {name}"
    entry = zoo.ZOO[name]
    if found.mean is None and entry.mean is not None and entry.std is not None:
        found.mean, found.std, found.norm_source = entry.mean, entry.std, f"zoo default for {name}"
