"""``robaudit info``: a JSON-safe model summary with a layer table from one forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robaudit.models.adapt import LoadedModel, Normalize

_PROBE_BATCH = 2  # leading dims equal to the probe batch are the batch and are dropped from shapes


def summarize(loaded: LoadedModel) -> dict[str, Any]:
    """Describe a loaded model and list its layers.

    Forward hooks on the leaf modules (and on any module owning parameters directly) record
    input/output shapes during ONE forward pass of a random batch; hooks are removed and the
    modules' train/eval flags restored in ``finally:``.

    Args:
        loaded: the model to describe.

    Returns:
        ``{"model": describe() + sha256/class_names/meta, "layers": [{"name", "type",
        "input_shape", "output_shape", "parameters"}]}``; shapes drop the batch dim and are lists
        of shapes for modules with several tensor inputs/outputs; layers in call order.
    """
    module = loaded.module
    model = dict(loaded.describe())
    model["sha256"] = loaded.sha256
    model["class_names"] = list(loaded.class_names) if loaded.class_names is not None else None
    model["buffers"] = sum(b.numel() for b in module.net.buffers())
    model["meta"] = _json_safe(loaded.meta)

    named = _recorded_modules(module)
    # A fixed-batch-1 ONNX graph runs sample by sample: its layers see batch 1, so probe with 1.
    from robaudit.models.onnx import PerSample

    batch = 1 if isinstance(module.net, PerSample) else _PROBE_BATCH
    # Tensors owned by the model (e.g. ONNX initializers passed as layer inputs) have no batch dim.
    constants = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    rows: dict[str, dict[str, Any]] = {}
    modes = {m: m.training for m in module.modules()}
    handles = []

    def hook_for(name: str, sub: nn.Module):
        def hook(_mod: nn.Module, args: tuple, out: Any) -> None:
            if name in rows:  # a module called twice (e.g. a shared ReLU): keep its first call
                rows[name]["calls"] += 1
                return
            rows[name] = {"name": name, "type": type(sub).__name__,
                          "input_shape": _shapes(args, constants, batch), "output_shape": _shapes(out, constants, batch),
                          "parameters": sum(p.numel() for p in sub.parameters(recurse=False)), "calls": 1}
        return hook

    try:
        for name, sub in named:
            if isinstance(sub, torch.jit.ScriptModule):
                continue  # TorchScript runs its submodules in C++: no Python hooks, no shapes
            handles.append(sub.register_forward_hook(hook_for(name, sub)))
        module.eval()
        ref = next(iter(module.parameters()), None)
        if ref is None:
            ref = next(iter(module.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        x = torch.rand(batch, *loaded.input_shape, device=device, dtype=dtype)
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.train(training)
    layers = []
    for name, sub in named:
        row = rows.get(name)
        if row is None:
            if not isinstance(sub, torch.jit.ScriptModule):
                continue  # never called (e.g. onnx2torch's initializer container)
            row = {"name": name, "type": getattr(sub, "original_name", type(sub).__name__), "input_shape": None,
                   "output_shape": None, "parameters": sum(p.numel() for p in sub.parameters(recurse=False))}
        elif row["calls"] == 1:
            del row["calls"]
        layers.append(row)
    if rows:  # call order for hooked layers (named_modules order may differ from execution order)
        order = {name: i for i, name in enumerate(rows)}
        layers.sort(key=lambda r: order.get(r["name"], len(order)))
    return {"model": model, "layers": layers}


def _recorded_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(display name, module) for the leaves of the user's network, plus the Normalize layer."""
    out: list[tuple[str, nn.Module]] = []
    if isinstance(module.normalize, Normalize):
        out.append(("normalize", module.normalize))
    for name, sub in module.net.named_modules():
        if not name:
            continue  # the network itself: its row would duplicate the model line
        leaf = next(iter(sub.children()), None) is None
        owns = next(iter(sub.parameters(recurse=False)), None) is not None
        if leaf or owns:
            out.append((name, sub))
    return out


def _shapes(value: Any, constants: set[int], batch: int) -> Any:
    """Shape (batch dim dropped) of a tensor, or a list of shapes for several tensors, or None."""
    tensors = _tensors(value)
    shapes = [list(t.shape) if id(t) in constants else _drop_batch(t, batch) for t in tensors]
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else shapes


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _drop_batch(t: torch.Tensor, batch: int) -> list[int]:
    shape = list(t.shape)
    return shape[1:] if shape and shape[0] == batch else shape


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
