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
import math
import pickle
import re
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
               device: torch.device | str = "cpu", sources: Mapping[str, str] | None = None) -> LoadedModel:
    """Load a model file and adapt it: pixels in [0,1] → logits (N, C), eval mode, on ``device``.

    Args:
        path: model file; None loads the embedded sample LeNet.
        arch: architecture for a bare state_dict (zoo name, torchvision name, package.module:factory).
        mean, std: normalisation (override the file's meta and zoo defaults).
        input_shape: (C, H, W) of one sample (overrides the file's meta).
        select: index/key of the logits when the network returns a tuple/list/dict.
        unsafe_load: allow unpickling a full nn.Module (runs code from the file).
        device: where the adapted model lives.
        sources: where ``arch``/``mean``/``std``/``input_shape``/``select`` came from, for messages
            (e.g. ``{"std": "robaudit.yaml: std"}``); the flag name by default.

    Returns:
        a LoadedModel with format, path, sha256, arch, class_names, dataset and meta filled.

    Raises:
        UsageError: the file does not exist, or a flag is invalid (exit 2).
        ModelLoadError: the file cannot be loaded or adapted (exit 3).
    """
    src = {"arch": "--arch", "mean": "--mean", "std": "--std", "input_shape": "--input-shape", "select": "--select",
           **(sources or {})}
    from robaudit.models.zoo_registry import is_zoo_spec, zoo_path

    if is_zoo_spec(path):  # zoo:NAME → a committed sample-zoo checkpoint (robaudit info --list-zoo)
        path = zoo_path(path)  # type: ignore[arg-type]
    embedded = path is None
    file = sample_model_path() if embedded else Path(path)  # type: ignore[arg-type]
    label = str(file) if not embedded else "embedded sample model"
    if not file.exists():
        raise UsageError(f"model file not found: {path}" if not embedded else f"embedded sample model missing: {file} (reinstall robaudit)")
    if file.is_dir():
        raise UsageError(f"model path is a directory, expected a file: {path}")
    if not file.is_file():  # a FIFO or device would block or never end when hashed and read
        raise UsageError(f"model path is not a regular file: {path}")
    if (mean is None) != (std is None):
        raise UsageError(f"{src['mean']} and {src['std']} go together: pass both or neither")
    if input_shape is not None:
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s <= 0 for s in input_shape):
            raise UsageError(f"{src['input_shape']}: expected positive sizes like 3,32,32, "
                             f"got {','.join(map(str, input_shape))}")
    digest = _sha256(file)

    kind = _sniff(file)
    if kind == "onnx":
        found = _load_onnx(file, input_shape)
    elif kind == "torchscript":
        found = _load_torchscript(file)
    else:
        found = _load_pickle(file, arch=arch, unsafe_load=unsafe_load, arch_flag=src["arch"])
    # Audits run in float32 (float64 is chosen later by --dtype); half/double files are cast on our copy.
    found.net.float()

    meta = dict(found.meta)
    if embedded:
        meta["embedded"] = True
    shape, shape_source = found.input_shape, found.shape_source
    if input_shape is not None:
        shape, shape_source = input_shape, src["input_shape"]
    if shape is None:
        raise ModelLoadError(f"{label}: the {found.format} file does not say its input shape; pass --input-shape C,H,W")
    meta["input_shape_source"] = shape_source
    _check_shape_size(shape, shape_source, label, user=input_shape is not None)
    norm_mean, norm_std, norm_source = found.mean, found.std, found.norm_source
    user_norm = f"{src['mean']}/{src['std']}" if src["mean"] == "--mean" else f"{src['mean']} / {src['std']}"
    if mean is not None:
        norm_mean, norm_std, norm_source = tuple(mean), tuple(std), user_norm  # type: ignore[arg-type]
    meta["normalisation_source"] = norm_source or "none"
    if norm_mean is not None and len(norm_mean) not in (1, shape[0]):
        # Name where the values came from: the flags or config keys, the file's meta, or a zoo default.
        where = user_norm if mean is not None else f"the {norm_source} 'mean'/'std'"
        error = UsageError if mean is not None else ModelLoadError
        raise error(f"{label}: normalisation has {len(norm_mean)} channel values but the input has {shape[0]} channels "
                    f"(input shape {_fmt(shape)} from {shape_source}); check {where}")

    try:
        loaded = adapt(found.net, input_shape=shape, mean=norm_mean, std=norm_std, select=select, device=device,
                       format=found.format, path=None if embedded else str(path), sha256=digest, arch=found.arch,
                       class_names=found.class_names, dataset=found.dataset, meta=meta)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{label}: {exc}") from exc.__cause__
    if loaded.class_names is not None and len(loaded.class_names) != loaded.num_classes:
        raise ModelLoadError(f"{label}: meta has {len(loaded.class_names)} class names but the model outputs "
                             f"{loaded.num_classes} logits")
    if select is not None:
        _check_select_used(loaded, select, src["select"])
    return loaded


def _check_select_used(loaded: LoadedModel, select: Any, flag: str) -> None:
    """UsageError if the network returns a plain tensor: ``--select`` would do nothing (issue 10 §3)."""
    module = loaded.module
    ref = next(iter(module.parameters()), None)
    device = ref.device if ref is not None else "cpu"
    probe = torch.rand(2, *loaded.input_shape, device=device)
    was_training = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            raw = module.net(module.normalize(probe))
    finally:
        for m, training in was_training.items():
            m.train(training)
    if isinstance(raw, torch.Tensor):
        raise UsageError(f"{flag} {_clip(str(select), 60)}: the model returns a single tensor of logits, so there is "
                         f"nothing to select; drop {flag}")


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


def _clip(value: Any, limit: int = 200) -> str:
    """A value from a file, cut for a one-line message."""
    from robaudit.text import clip

    return clip(value, limit)


def _cut(text: str, limit: int = 60) -> str:
    """A name from a file (a key), cut for a message."""
    return text if len(text) <= limit else text[:limit] + "…"


#: Largest input robaudit builds a probe batch for (elements per sample; 3×4096×4096 fits).
MAX_INPUT_ELEMENTS = 1 << 26


def _check_shape_size(shape: Sequence[int], source: str | None, label: str, *, user: bool) -> None:
    """Refuse input shapes whose probe batch alone would take gigabytes (e.g. from a crafted meta)."""
    numel = math.prod(int(s) for s in shape)
    if numel > MAX_INPUT_ELEMENTS:
        raise (UsageError if user else ModelLoadError)(
            f"{label}: input shape {_fmt(shape)} (from {source}) has {numel:,} values per sample; "
            f"robaudit handles at most {MAX_INPUT_ELEMENTS:,}")


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


def _load_pickle(file: Path, *, arch: str | None, unsafe_load: bool, arch_flag: str = "--arch") -> _Found:
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
        return _from_checkpoint(obj, file, arch, arch_flag)
    state_dict, where = _find_state_dict(obj, file)
    if arch is None:
        raise UsageError(f"{file}: a bare state_dict holds weights but not the architecture; pass --arch NAME "
                         f"(a zoo name: {', '.join(zoo.ZOO)}; a torchvision model name; or package.module:factory)")
    # Only a name typed as --arch may be imported; one from a config file may not (defence in depth:
    # load_config refuses it too).
    arch_resolved = zoo.resolve(arch, flag=arch_flag, allow_import=arch_flag == "--arch")
    found = _from_state_dict(state_dict, file, arch_resolved, kwargs=None, fmt="state_dict")
    if where:
        found.meta["state_dict_key"] = where
    extra = {k: v for k, v in obj.items() if k != where and isinstance(v, (int, float, str, bool))}
    if extra:
        found.meta["checkpoint"] = extra
    return found


def _torch_load(file: Path, unsafe_load: bool) -> Any:
    """torch.load with weights_only=True; full unpickling only when ``unsafe_load`` and needed.

    The file is checked before torch allocates anything (:func:`check_torch_file`), and zip-format
    files are memory-mapped, so tensor data is paged in from the file instead of copied.
    """
    check_torch_file(file)
    try:
        return _weights_only_load(file)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if _blocked_global(text) is None:
            raise ModelLoadError(f"{file}: not a readable PyTorch file (corrupt or truncated?): {_weights_only_reason(text)}") from None
        if not unsafe_load:
            name = _blocked_global(text) or "(unnamed)"
            raise ModelLoadError(f"{file}: holds pickled Python objects (global {name}), not just weights; safe "
                                 f"loading blocks it and --unsafe-load would import and run {name} (code from the "
                                 "file). Use it only if you trust the file, or save a state_dict or TorchScript "
                                 "instead") from None
    except Exception as exc:  # RuntimeError (bad zip), EOFError (truncated pickle), OSError, …
        raise ModelLoadError(f"{file}: not a readable PyTorch file (corrupt or truncated?): {_first_line(exc)}") from None
    try:
        return torch.load(str(file), map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling ran user code, which failed (e.g. a class that no longer imports)
        raise ModelLoadError(f"{file}: --unsafe-load could not unpickle the file: {type(exc).__name__}: {_first_line(exc)}") from None


def _weights_only_load(file: Path) -> Any:
    if zipfile.is_zipfile(file):
        try:
            return torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise
        except RuntimeError:
            pass  # compressed entries (re-zipped by hand) cannot be mapped; sizes were checked in check_torch_file
    return torch.load(str(file), map_location="cpu", weights_only=True)


def _blocked_global(text: str) -> str | None:
    """The global a weights_only load refused, e.g. 'posix.system', or None if that was not the error.

    torch words it "Unsupported global: GLOBAL x.y was not an allowed global" or
    "Trying to load unsupported GLOBAL x.y whose module x is blocked".
    """
    match = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.IGNORECASE)
    return match.group(1).rstrip(".") if match else None


#: Tensor data a PyTorch file may declare beyond its own size (headers, alignment).
_SLACK_BYTES = 1 << 20
_ELEMENT_SIZES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                  "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "Untyped": 1}


def check_torch_file(file: Path) -> None:
    """Refuse a file whose tensors would need far more memory than the file holds, before loading it.

    A zip with deflated entries (torch.save stores them uncompressed) can inflate 1 MB to
    1 GB; a legacy pickle can declare storages of any size. Both are caught here from the
    zip directory or the pickle's opcodes, without allocating.
    """
    size = file.stat().st_size
    limit = 4 * size + 64 * _SLACK_BYTES
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as zf:
                declared = sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return  # torch.load reports the damage
        if declared > limit:
            raise ModelLoadError(f"{file}: its zip entries inflate to {declared:,} bytes from a {size:,}-byte file; "
                                 "refusing to load (torch.save stores tensors uncompressed; this looks like a zip bomb)")
        return
    declared = _legacy_storage_bytes(file)
    if declared is not None and declared > size + _SLACK_BYTES:
        raise ModelLoadError(f"{file}: declares {declared:,} bytes of tensor data but the file has only {size:,}; "
                             "refusing to allocate it (truncated or crafted file)")


def _legacy_storage_bytes(file: Path) -> int | None:
    """Bytes of tensor storage a legacy (pre-1.6, non-zip) torch.save file declares, or None if unknown.

    The legacy format is four pickles (magic, protocol, sys info, the object) then raw
    storages; each storage is a persistent id ``('storage', <torch XStorage>, key, location,
    numel)``. Reading the opcodes is enough: nothing is unpickled.
    """
    import pickletools

    total, storage_type, last_int = 0, None, None
    try:
        with open(file, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools decodes STRING args with escapes (DeprecationWarning)
            for _ in range(4):
                for op, arg, _pos in pickletools.genops(fh):
                    if op.name in ("GLOBAL", "STACK_GLOBAL") and isinstance(arg, str) and "Storage" in arg:
                        storage_type = arg
                    elif op.name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG") and isinstance(arg, int):
                        last_int = arg
                    elif op.name in ("BINPERSID", "PERSID") and last_int is not None:
                        kind = (storage_type or "").split()[-1].replace("Storage", "")
                        total += max(0, last_int) * _ELEMENT_SIZES.get(kind, 8)
                        last_int = None
    except Exception:  # not a pickle, or a damaged one: torch.load gives the message
        return None
    return total


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
    keys = ", ".join(_cut(str(k), 40) for k in list(obj)[:8])
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
    _check_tensors(sd, file)
    inferred = zoo.infer_kwargs(arch, sd)
    if kwargs is not None:
        kwargs = dict(kwargs)
        # A file's build kwargs must agree with its own weights: the net is built (allocated)
        # before the weights are checked, so num_classes=10**9 must not reach the factory.
        for key, value in inferred.items():
            if key in kwargs and kwargs[key] != value:
                raise ModelLoadError(f"{file}: checkpoint 'arch_kwargs' has {key}={_clip(kwargs[key])} but the "
                                     f"state_dict's weights imply {key}={value}")
    else:
        kwargs = inferred
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


def _check_tensors(sd: Mapping[str, Any], file: Path) -> None:
    """Refuse tensors that claim more elements than their stored data (expanded, stride-0 views).

    ``torch.zeros(1).expand(10**6, 1000)`` saves as 4 bytes; building an architecture sized by
    such a shape would allocate gigabytes. Real weights always own their elements.
    """
    for key, value in sd.items():
        if not torch.is_tensor(value) or value.numel() == 0:
            continue
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise ModelLoadError(f"{file}: tensor {_cut(str(key))} of shape {_fmt(value.shape)} has more elements "
                                 "than its stored data (an expanded view, not real weights)")


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


def _from_checkpoint(ck: Mapping[str, Any], file: Path, arch_override: str | None, arch_flag: str = "--arch") -> _Found:
    """A robaudit checkpoint: {"arch", "arch_kwargs", "state_dict", "meta"}."""
    name = arch_override or ck["arch"]
    # The file may only name zoo or torchvision architectures: importing a factory named by a
    # file would let the file run code (issue 10 §1). Only --arch may name package.module:factory.
    arch = zoo.resolve(name, allow_import=arch_override is not None and arch_flag == "--arch",
                       flag=arch_flag if arch_override else f"{file}: checkpoint field 'arch'")
    kwargs = ck.get("arch_kwargs") if arch_override is None or arch_override == ck["arch"] else None
    if kwargs is not None:
        _check_arch_kwargs(kwargs, file)
    found = _from_state_dict(ck["state_dict"], file, arch, kwargs=kwargs, fmt="robaudit-checkpoint")
    meta = ck.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise ModelLoadError(f"{file}: checkpoint 'meta' must be a dict, found {type(meta).__name__}")
    if isinstance(meta.get("arch"), str) and _IMPORT_SPEC.match(meta["arch"].strip()):
        raise UsageError(f"{file}: checkpoint field 'meta.arch' names code to import ({_clip(meta['arch'], 80)}); "
                         "a model file cannot do that. If you trust it, pass it on the command line: "
                         f"--arch {_clip(meta['arch'], 80)}")
    _apply_meta(found, meta, file, source="checkpoint meta")
    return found


#: ``package.module:factory``: what a file may never name (it would be imported and called).
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_SCALARS = (int, float, str, bool, type(None))


def _check_arch_kwargs(kwargs: Any, file: Path) -> None:
    """``arch_kwargs`` from a file: a dict of plain values, none naming code to import."""
    if not isinstance(kwargs, Mapping):
        raise ModelLoadError(f"{file}: checkpoint 'arch_kwargs' must be a dict, found {type(kwargs).__name__}")
    for key, value in kwargs.items():
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not isinstance(key, str) or not all(isinstance(v, _SCALARS) for v in items):
            raise ModelLoadError(f"{file}: checkpoint field 'arch_kwargs.{_cut(str(key))}' must be a number, "
                                 f"string or list of them, found {type(value).__name__}")
        for v in items:
            if isinstance(v, str) and _IMPORT_SPEC.match(v.strip()):
                raise UsageError(f"{file}: checkpoint field 'arch_kwargs.{key}' names code to import ({_clip(v, 80)}); "
                                 "a model file cannot do that. Build the model in your own code and pass the factory "
                                 "on the command line: --arch package.module:factory")


def _apply_meta(found: _Found, meta: Mapping[str, Any], file: Path, source: str) -> None:
    """Take mean/std/input_shape/class_names/dataset from a file's meta dict (validated)."""
    def floats(key: str) -> tuple[float, ...] | None:
        value = meta.get(key)
        if value is None:
            return None
        try:
            if isinstance(value, (str, bytes, Mapping)) or any(isinstance(v, bool) for v in value):
                raise TypeError
            out = tuple(float(v) for v in value)
        except (TypeError, ValueError, OverflowError):
            raise ModelLoadError(f"{file}: {source} '{key}' must be a list of numbers, found {_clip(value)}") from None
        if not out or not all(math.isfinite(v) for v in out):
            raise ModelLoadError(f"{file}: {source} '{key}' must be finite numbers, found {_clip(value)}")
        return out

    mean, std = floats("mean"), floats("std")
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):  # type: ignore[arg-type]
        raise ModelLoadError(f"{file}: {source} needs 'mean' and 'std' of equal length, found {_clip(meta.get('mean'))} "
                             f"and {_clip(meta.get('std'))}")
    if std is not None and any(v <= 0 for v in std):
        raise ModelLoadError(f"{file}: {source} 'std' must be positive, found {_clip(meta.get('std'))}")
    if mean is not None:
        found.mean, found.std, found.norm_source = mean, std, source
    shape = meta.get("input_shape")
    if shape is not None:
        try:
            if isinstance(shape, (str, bytes, Mapping)) or any(isinstance(s, (bool, float)) for s in shape):
                raise TypeError
            found.input_shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{file}: {source} 'input_shape' must be a list of ints, found {_clip(shape)}") from None
        if not found.input_shape or any(s <= 0 for s in found.input_shape):
            raise ModelLoadError(f"{file}: {source} 'input_shape' must be positive sizes, found {_clip(shape)}")
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
