"""Rules for the ops onnx2torch packages as modules (Add, Reshape, Gemm, Concat, …).

Registered by :func:`register` only when a model holds onnx2torch modules, so bounding a
PyTorch model never imports onnx2torch (with onnx and torch._dynamo, about 2 s).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from robaudit.bounds import ops
from robaudit.bounds import rules as R
from robaudit.bounds.conv import linear_norm

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.bounds.compose import Composer


def _binary(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    fn = module.math_op_function
    if fn in (torch.add, torch.sub):
        return ops.add(comp, node)
    return ops.scale(comp, node, divide=fn is not torch.mul)


def _isometry(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    return comp.L[comp.single(node)]  # reshape / transpose / squeeze …: the other inputs are constant shapes


def _gemm(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    a, b = node.args[0], node.args[1]
    c = node.args[2] if len(node.args) > 2 else None
    if module.trans_a or comp.is_dyn(b) or not comp.is_dyn(a):
        raise ops.Unsupported("Gemm needs an untransposed input A and a constant B")
    w = comp.const_value(b).detach().to(comp.opts.dtype)
    norm = abs(float(module.alpha)) * linear_norm(w)
    comp.record(node, "OnnxGemm", comp.shape(a),
                R.LayerBound(upper=norm, exact=norm, kind="linear", method="|α|·‖B‖₂"))
    return norm * comp.L[a] + (abs(float(module.beta)) * comp.lip(c) if c is not None else 0.0)


def _matmul(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    return ops.matmul(comp, node)


def _concat(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    comp.concats += 1
    return comp.lip(tuple(node.args))


def _global_avg(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    src = comp.single(node)
    return comp.L[src] / math.sqrt(ops.numel(comp.shape(src)[1:]))


def _softmax(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    src = comp.single(node)
    if not module.is_log:
        return 0.5 * comp.L[src]
    return math.sqrt(ops.numel(comp.shape(src)[module.axis - 1:])) * comp.L[src]


def _pad(comp: "Composer", node: fx.Node, module: nn.Module) -> float:
    src = comp.single(node)
    value = R.pad_constant(comp.shape(src), lambda x: F.pad(x, list(module.pads), mode=module.mode)).upper
    return value * comp.L[src]


def register() -> bool:
    """Fill :data:`ops.MODULE_OPS` with the onnx2torch handlers (once); False if onnx2torch is missing."""
    if ops.MODULE_OPS:
        return True
    try:
        from onnx2torch.node_converters import (binary_math_operations, clip, concat, flatten, gemm,
                                                global_average_pool, identity, matmul, neg, pad, reshape, squeeze,
                                                transpose, unsqueeze)
        from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
    except Exception:  # onnx2torch missing or a different version: those modules then need rules
        return False
    table = ops.MODULE_OPS
    table[binary_math_operations.OnnxBinaryMathOperation] = _binary
    for cls in (reshape.OnnxReshape, flatten.OnnxFlatten, transpose.OnnxTranspose, squeeze.OnnxSqueezeStaticAxes,
                squeeze.OnnxSqueezeDynamicAxes, unsqueeze.OnnxUnsqueezeStaticAxes,
                unsqueeze.OnnxUnsqueezeDynamicAxes, identity.OnnxCopyIdentity, neg.OnnxNeg, clip.OnnxClip):
        table[cls] = _isometry  # Neg and Clip are 1-Lipschitz too
    table[gemm.OnnxGemm] = _gemm
    table[matmul.OnnxMatMul] = _matmul
    table[concat.OnnxConcat] = _concat
    table[global_average_pool.OnnxGlobalAveragePool] = _global_avg
    table[global_average_pool.OnnxGlobalAveragePoolWithKnownInputShape] = _global_avg
    table[OnnxSoftmaxV1V11] = _softmax
    table[pad.OnnxPadStatic] = _pad
    return True


def needed(model: nn.Module) -> bool:
    """Whether ``model`` holds onnx2torch modules (then onnx2torch is imported already)."""
    return any(type(m).__module__.startswith("onnx2torch") for m in model.modules())


__all__ = ["register", "needed"]
