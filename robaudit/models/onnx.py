"""ONNX models via onnx2torch, with the graph repairs real exports need.

onnx2torch 1.5.15 rejects ``auto_pad = SAME_UPPER/SAME_LOWER`` (e.g. the ONNX Model Zoo
mnist-8, a CNTK export), has no converters for some old opset versions (Gemm-7), and keeps a
batch size that the exporter fixed at 1 (a ``Reshape`` to [1, 256]). This module rewrites a
*copy* of the graph before conversion (the user's file is only read):

* ``auto_pad = SAME_*`` → explicit ``pads`` from the inferred input shape (ONNX operator spec:
  total = max((ceil(in/s) − 1)·s + (k − 1)·d + 1 − in, 0); SAME_UPPER puts the odd pixel at the
  end, SAME_LOWER at the beginning) for Conv, MaxPool and AveragePool;
* opsets onnx2torch lacks converters for → ``onnx.version_converter`` to opset 13;
* a fixed batch of 1 → a symbolic batch, with constant ``Reshape`` targets [1, …] → [0, …]
  ("copy dim 0"); the result is checked against per-sample runs of the unmodified graph, and
  if it differs the model runs sample by sample instead.

All unsupported op types are collected before raising once.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch
from torch import nn

from robaudit.errors import ModelLoadError, UsageError

_UPGRADE_OPSET = 13
_SAME = ("SAME_UPPER", "SAME_LOWER")


class PerSample(nn.Module):
    """Run a fixed-batch-1 network on each sample of a batch and stack the outputs: (N, …) → (N, C)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i:i + 1]) for i in range(x.shape[0])], dim=0)


def load_onnx(path: str, *, input_shape: Sequence[int] | None = None) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    """Convert an ONNX file into a torch module that takes a batch of inputs.

    Args:
        path: the .onnx file (only read).
        input_shape: (C, H, W) from ``--input-shape``; fills symbolic dims of the graph input.

    Returns:
        (module, input_shape without the batch dim, meta) where meta records the rewrites.

    Raises:
        ModelLoadError: unreadable file, unsupported ops (all listed), conversion failure.
        UsageError: ``--input-shape`` contradicts the graph input.
    """
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, OSError
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if _check_external_data(model, path):
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except Exception as exc:  # onnx's own checks (path outside the folder, not a file), OSError
            raise ModelLoadError(f"{path}: cannot read its external data ({type(exc).__name__}: {_first_line(exc)})") from None
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: the ONNX graph has no nodes")
    meta: dict[str, Any] = {"opset": _default_opset(model)}

    model = _upgrade_if_needed(model, meta)
    graph_input = _graph_input(model, path)
    shape, batch = _fix_input_shape(graph_input, input_shape, path)
    meta["input_name"] = graph_input.name

    inferred = _infer_shapes(model, path)
    rewritten = _explicit_pads(model, inferred, path)
    if rewritten:
        meta["auto_pad_rewritten"] = rewritten
    _check_converters(model, path, meta)
    net = _convert(model, path)

    if batch is not None:
        net = _free_batch(model, inferred, net, batch, shape, path, meta)
    return net, shape, meta


# ----------------------------------------------------------------------------------- graph helpers

def _check_external_data(model: Any, path: str) -> bool:
    """Check every external-data reference before anything is read; True if there are any.

    An ONNX file names its external tensor files itself, so it could point at any file the
    user can read (``../../.ssh/id_rsa``, a symlink out of the folder, ``/dev/zero``) or claim
    a huge length. Each location must be a relative path that resolves, symlinks followed,
    to a regular file inside the model's folder, and offset + length must lie within it.
    """
    from onnx import TensorProto

    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    found = False
    tensors = list(model.graph.initializer)
    tensors += [a.t for node in model.graph.node for a in node.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        found = True
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"{path}: external data of tensor {tensor.name[:80]!r}"
        if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
            raise ModelLoadError(f"{where}: location {location[:120]!r} must be a file name inside the model's folder")
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, target]) != folder:
            raise ModelLoadError(f"{where}: {location[:120]!r} resolves outside the model's folder (a symlink?)")
        if not os.path.isfile(target):
            raise ModelLoadError(f"{where}: {location[:120]!r} is not a regular file in {folder}")
        size = os.path.getsize(target)
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") else size - offset
        except ValueError:
            raise ModelLoadError(f"{where}: offset/length are not integers") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelLoadError(f"{where}: offset {offset} + length {length} lies outside {location[:120]!r} "
                                 f"({size:,} bytes)")
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _default_opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _graph_input(model: Any, path: str) -> Any:
    """The one real graph input (old IR versions also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelLoadError(f"{path}: expected one image input in the ONNX graph, found {len(inputs)} ({names})")
    return inputs[0]


def _fix_input_shape(graph_input: Any, user_shape: Sequence[int] | None, path: str) -> tuple[tuple[int, ...], int | None]:
    """Fill the graph input's non-batch dims from ``--input-shape`` (or check them against it).

    Returns:
        (shape without the batch dim, the static batch size or None if symbolic).
    """
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise ModelLoadError(f"{path}: ONNX input {graph_input.name!r} has rank {len(dims)}; expected (N, C, H, W) or (N, features)")
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if user_shape is not None:
        user_shape = tuple(int(s) for s in user_shape)
        if len(user_shape) != len(dims) - 1:
            raise UsageError(f"--input-shape {_fmt(user_shape)}: the ONNX input {graph_input.name!r} has "
                             f"{len(dims) - 1} non-batch dims ({_fmt_dims(static[1:])})")
        for i, (have, want) in enumerate(zip(static[1:], user_shape), start=1):
            if have is not None and have != want:
                raise UsageError(f"--input-shape {_fmt(user_shape)} contradicts the ONNX input {graph_input.name!r} "
                                 f"of shape {_fmt_dims(static[1:])}")
            dims[i].dim_value = want  # a symbolic dim becomes the user's value (on our copy)
        static[1:] = list(user_shape)
    if any(s is None for s in static[1:]):
        raise ModelLoadError(f"{path}: the ONNX input {graph_input.name!r} has symbolic dims "
                             f"({_fmt_dims(static[1:])}); pass --input-shape C,H,W")
    return tuple(int(s) for s in static[1:]), static[0]


def _fmt(shape: Sequence[int]) -> str:
    return ",".join(str(s) for s in shape)


def _fmt_dims(dims: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def _infer_shapes(model: Any, path: str) -> dict[str, tuple[int | None, ...]]:
    """Static shapes of every value the shape inference can determine."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelLoadError(f"{path}: ONNX shape inference failed ({_first_line(exc)})") from None
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return shapes


def same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int], mode: str) -> list[int]:
    """Explicit ONNX ``pads`` [x1_begin, x2_begin, …, x1_end, x2_end] equivalent to ``auto_pad=mode``.

    ONNX operator spec (Conv/MaxPool/AveragePool): output = ceil(in / stride) and
    total = max((out − 1)·stride + (k − 1)·dilation + 1 − in, 0); SAME_UPPER puts the extra
    pixel of an odd total at the end, SAME_LOWER at the beginning.
    """
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = math.ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        begin, end = (small, large) if mode == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def _explicit_pads(model: Any, shapes: dict[str, tuple[int | None, ...]], path: str) -> list[str]:
    """Rewrite ``auto_pad = SAME_*`` of Conv/MaxPool/AveragePool into explicit ``pads`` (in place on our copy)."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    done = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if "auto_pad" not in attrs:
            continue
        mode = onnx.helper.get_attribute_value(attrs["auto_pad"]).decode()
        if mode not in _SAME or node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        label = f"{node.op_type} node {node.name or node.output[0]!r}"
        x_shape = shapes.get(node.input[0])
        if x_shape is None or any(v is None for v in x_shape[2:]):
            raise ModelLoadError(f"{path}: cannot rewrite auto_pad={mode} of {label}: its input shape is unknown "
                                 "(pass --input-shape C,H,W)")
        spatial = [int(v) for v in x_shape[2:]]
        rank = len(spatial)
        if "kernel_shape" in attrs:
            kernel = list(onnx.helper.get_attribute_value(attrs["kernel_shape"]))
        elif node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            kernel = list(inits[node.input[1]].dims[2:])
        else:
            raise ModelLoadError(f"{path}: cannot rewrite auto_pad={mode} of {label}: no kernel_shape")
        strides = list(onnx.helper.get_attribute_value(attrs["strides"])) if "strides" in attrs else [1] * rank
        dilations = list(onnx.helper.get_attribute_value(attrs["dilations"])) if "dilations" in attrs else [1] * rank
        pads = same_pads(spatial, kernel, strides, dilations, mode)
        for name in ("auto_pad", "pads"):
            if name in attrs:
                node.attribute.remove(attrs[name])
        node.attribute.append(onnx.helper.make_attribute("pads", pads))
        done.append(f"{node.op_type}:{node.name or node.output[0]}:{mode}->pads={pads}")
    return done


def _unsupported(model: Any) -> list[str]:
    """Op types (with opset) that onnx2torch has no converter for, each listed once."""
    from onnx2torch.node_converters import get_converter

    opsets = {imp.domain: int(imp.version) for imp in model.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 1))
    missing: list[str] = []
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in opsets:
            label = f"{domain}.{node.op_type}"
        else:
            try:
                get_converter(operation_type=node.op_type, version=opsets[domain], domain=domain)
                continue
            except NotImplementedError:
                label = f"{node.op_type} (opset {opsets[domain]})" if not domain else f"{domain}.{node.op_type}"
        if label not in missing:
            missing.append(label)
    return missing


def _upgrade_if_needed(model: Any, meta: dict[str, Any]) -> Any:
    """Convert to opset 13 when onnx2torch lacks converters for this opset's versions of some ops."""
    import onnx

    if not _unsupported(model) or _default_opset(model) >= _UPGRADE_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, _UPGRADE_OPSET)
    except Exception:  # the version converter has no adapter for some op: keep the original
        return model
    if len(_unsupported(upgraded)) < len(_unsupported(model)):
        meta["opset_upgraded"] = [_default_opset(model), _UPGRADE_OPSET]
        return upgraded
    return model


def _check_converters(model: Any, path: str, meta: dict[str, Any]) -> None:
    missing = _unsupported(model)
    if missing:
        note = f" after upgrading from opset {meta['opset']}" if "opset_upgraded" in meta else ""
        raise ModelLoadError(f"{path}: onnx2torch cannot convert {len(missing)} op type(s){note}: {', '.join(missing)}")


def _convert(model: Any, path: str) -> nn.Module:
    from onnx2torch import convert

    try:
        # Pass the proto, not the path: onnx2torch's path mode writes a temp file beside the model.
        net = convert(model)
    except (NotImplementedError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: onnx2torch could not convert the graph ({type(exc).__name__}: {_first_line(exc)})") from None
    return net.float().eval()


# ---------------------------------------------------------------------------------- batch handling

def _free_batch(model: Any, shapes: dict[str, tuple[int | None, ...]], fixed: nn.Module, batch: int,
                shape: tuple[int, ...], path: str, meta: dict[str, Any]) -> nn.Module:
    """A module that accepts any batch size for a graph whose input batch is fixed at ``batch``."""
    import onnx

    free = onnx.ModelProto()
    free.CopyFrom(model)
    reshapes = _symbolic_batch(free, shapes, batch)
    candidate: nn.Module | None
    try:
        candidate = _convert(free, path)
    except ModelLoadError:
        candidate = None
    x = torch.rand(batch * 3, *shape)
    with torch.no_grad():
        try:
            reference = torch.cat([fixed(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
        except Exception as exc:
            raise ModelLoadError(f"{path}: the converted ONNX graph fails on its own input shape "
                                 f"{_fmt((batch,) + shape)} ({type(exc).__name__}: {_first_line(exc)})") from None
        ok = False
        if candidate is not None and isinstance(reference, torch.Tensor):
            try:
                out = candidate(x)
                scale = float(reference.abs().max()) if reference.numel() else 1.0
                ok = out.shape == reference.shape and bool(torch.allclose(out, reference, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))
            except Exception:  # the rewritten graph still bakes the batch size in somewhere
                ok = False
    if ok:
        meta["batch"] = f"fixed batch {batch} made symbolic" + (f"; Reshape targets rewritten: {reshapes}" if reshapes else "")
        return candidate  # type: ignore[return-value]
    if batch == 1:
        meta["batch"] = "fixed batch 1: runs sample by sample"
        return PerSample(fixed)
    raise ModelLoadError(f"{path}: the ONNX graph has a fixed batch size of {batch} that could not be made symbolic")


def _symbolic_batch(model: Any, shapes: dict[str, tuple[int | None, ...]], batch: int) -> int:
    """Make dim 0 of the graph input/outputs symbolic and turn constant Reshape targets
    [batch, …] of batch-leading tensors into [0, …] (ONNX: 0 copies the input's dim). In place.

    Returns:
        how many Reshape targets were rewritten.
    """
    from onnx import numpy_helper

    inits = {i.name for i in model.graph.initializer}
    for value in [i for i in model.graph.input if i.name not in inits] + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_value == batch:
            dims[0].dim_param = "N"
    del model.graph.value_info[:]  # stale static shapes would contradict the symbolic batch

    by_name = {i.name: i for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in by_name:
            continue
        target = numpy_helper.to_array(by_name[node.input[1]])
        data_shape = shapes.get(node.input[0])
        if target.ndim != 1 or target.size == 0 or int(target[0]) != batch or not data_shape or data_shape[0] != batch:
            continue
        new = target.copy()
        new[0] = 0
        name = f"{node.input[1]}__robaudit_batch"
        if name not in by_name:
            init = numpy_helper.from_array(new, name)
            model.graph.initializer.append(init)
            by_name[name] = init
        node.input[1] = name  # a fresh initializer: other users of the old one keep it
        count += 1
    return count
