"""The op registry: graph functions and methods → their ℓ2 Lipschitz rule (AutoLip, Scaman & Virmaux 2018).

Keyed by the callable (``F.relu``, ``F.conv2d``, ``torch.add``, ``operator.getitem``, …) or,
for ``Tensor`` methods, by the method name. A handler gets the composer and the node and
returns L(node) from the L of its inputs; it raises :class:`Unsupported` with the reason
when it has no valid bound, and the composer lists every such op at once.

Ops packaged as modules (onnx2torch) live in :data:`MODULE_OPS`, filled by
:mod:`robaudit.bounds.onnx_ops` only when such a model is bounded.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from robaudit.bounds import rules as R
from robaudit.bounds.conv import linear_norm
from robaudit.bounds.geometry import ConvGeometry, f_pad_to_pads

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.bounds.compose import Composer

Handler = Callable[["Composer", fx.Node], float]
OPS: dict[Any, Handler] = {}
MODULE_OPS: dict[type, Callable[["Composer", fx.Node, nn.Module], float]] = {}


class Unsupported(Exception):
    """An op without a valid rule; the message is the reason."""


def op(*targets: Any) -> Callable[[Handler], Handler]:
    """Register a handler for the given callables / method names."""
    def deco(fn: Handler) -> Handler:
        for t in targets:
            OPS[t] = fn
        return fn
    return deco


def kw(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    """Argument ``name`` of a call, given by keyword or at position ``pos``."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[pos] if len(node.args) > pos else default


def op_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_module":
        return str(t)
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", str(t))
    return f"{mod}.{name}" if mod else name


def numel(shape: tuple) -> int:
    return math.prod(int(s) for s in shape)


# ---------------------------------------------------------------------------
# Activations: a constant times the input's L


def _constant(value: float | Callable[[fx.Node], float], *targets: Any) -> None:
    def handler(comp: "Composer", node: fx.Node) -> float:
        c = value(node) if callable(value) else value
        return c * comp.L[comp.single(node)]
    op(*targets)(handler)


_constant(1.0, F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.hardtanh, torch.tanh, F.tanh, F.softplus,
          F.softsign, F.tanhshrink, F.softshrink, F.logsigmoid, torch.abs, torch.clamp, torch.clip, F.celu,
          "relu", "relu_", "tanh", "abs", "clamp", "clip", "clamp_", "clamp_min", "clamp_max",
          operator.neg, torch.neg, "neg", operator.pos)
_constant(0.25, torch.sigmoid, F.sigmoid, "sigmoid")
_constant(1.0 / 6.0, F.hardsigmoid)
_constant(1.5, F.hardswish)
_constant(R.SILU, F.silu)
_constant(R.MISH, F.mish)
_constant(R.SELU, F.selu, torch.selu)
_constant(0.5, F.softmax, torch.softmax, F.softmin, "softmax")
_constant(lambda n: max(1.0, abs(float(kw(n, 1, "negative_slope", 0.01)))), F.leaky_relu)
_constant(lambda n: max(1.0, abs(float(kw(n, 1, "alpha", 1.0)))), F.elu)
_constant(lambda n: R.GELU_TANH if kw(n, 1, "approximate", "none") == "tanh" else R.GELU_ERF, F.gelu)


@op(F.log_softmax, torch.log_softmax, "log_softmax")
def _log_softmax(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    dim = int(kw(node, 1, "dim", 1))
    shp = comp.shape(src)
    return math.sqrt(shp[dim] if dim < 0 else shp[dim - 1]) * comp.L[src]


# ---------------------------------------------------------------------------
# Shapes, pieces, sums


@op(torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.clone,
    torch.movedim, torch.swapaxes, torch.t, torch.detach, torch.unflatten,
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "clone", "detach",
    "float", "double", "half", "to", "type", "type_as", "view_as", "reshape_as", "t", "movedim", "unflatten")
def _isometry(comp: "Composer", node: fx.Node) -> float:
    return comp.L[comp.single(node)]


@op("expand", "expand_as", "repeat", "tile", torch.tile)
def _expand(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    return math.sqrt(numel(comp.shape(node)) / max(numel(comp.shape(src)), 1)) * comp.L[src]


def _basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


@op(torch.split, torch.chunk, torch.unbind, torch.tensor_split, "split", "chunk", "unbind", "tensor_split",
    operator.getitem)
def _piece(comp: "Composer", node: fx.Node) -> float:
    src = node.args[0]
    if node.target is operator.getitem and isinstance(comp.values.get(src), Tensor):
        if not _basic_index(node.args[1]):
            raise Unsupported("advanced indexing may repeat entries")
    return comp.lip(src)  # a slice / one piece of a split is a projection


@op(operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, operator.isub, torch.sub, "sub", "sub_")
def add(comp: "Composer", node: fx.Node) -> float:
    a = node.args[0] if node.args else node.kwargs.get("input")
    b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    alpha = abs(float(comp.const_value(node.kwargs.get("alpha", 1))))
    la, lb = comp.lip(a), comp.lip(b)
    if la and lb:
        comp.additions += 1
    return la + alpha * lb


def scale(comp: "Composer", node: fx.Node, divide: bool) -> float:
    a = node.args[0] if node.args else node.kwargs.get("input")
    b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    da, db = comp.is_dyn(a), comp.is_dyn(b)
    if da and db:
        raise Unsupported("product/quotient of two input-dependent tensors is not globally Lipschitz")
    if divide and db:
        raise Unsupported("division by an input-dependent tensor is not globally Lipschitz")
    src, const = (a, b) if da else (b, a)
    c = comp.const_value(const)
    if isinstance(c, Tensor):
        if numel(tuple(comp.values[node].shape)) != numel(tuple(comp.values[src].shape)):
            raise Unsupported("broadcasting by a constant that expands the input")
        c = c.detach().abs()
        factor = float(1.0 / c.min()) if divide else float(c.max())
    else:
        factor = 1.0 / abs(float(c)) if divide else abs(float(c))
    if not math.isfinite(factor):
        raise Unsupported("division by zero")
    return factor * comp.L[src]


op(operator.mul, operator.imul, torch.mul, "mul", "mul_")(lambda comp, node: scale(comp, node, divide=False))
op(operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide")(
    lambda comp, node: scale(comp, node, divide=True))


@op(torch.cat, torch.concat, torch.stack, torch.concatenate)
def _cat(comp: "Composer", node: fx.Node) -> float:
    comp.concats += 1
    return comp.lip(node.args[0] if node.args else node.kwargs.get("tensors"))


def _reduce(kind: str) -> Handler:
    def handler(comp: "Composer", node: fx.Node) -> float:
        src = comp.single(node)
        dims = kw(node, 1, "dim", None)
        full = tuple(comp.values[src].shape)
        if dims is None:
            raise Unsupported(f"{kind} over all dimensions mixes the samples of a batch")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(full) for d in dims]
        if 0 in dims:
            raise Unsupported(f"{kind} over the batch dimension mixes samples")
        k = numel(tuple(full[d] for d in dims))
        return (1.0 / math.sqrt(k) if kind == "mean" else math.sqrt(k)) * comp.L[src]
    return handler


op(torch.mean, "mean")(_reduce("mean"))
op(torch.sum, "sum")(_reduce("sum"))


@op(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
def _dropout(comp: "Composer", node: fx.Node) -> float:
    if bool(kw(node, 2, "training", True)):
        raise Unsupported("dropout with training=True is random")
    return comp.L[comp.single(node)]


@op(F.pad)
def _pad(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    pad, mode = kw(node, 1, "pad", None), kw(node, 2, "mode", "constant")
    value = R.pad_constant(comp.shape(src), lambda x: F.pad(x, pad, mode=mode)).upper
    return value * comp.L[src]


# ---------------------------------------------------------------------------
# Parameterised linear maps: found by what they compute, bounded like their module twins


@op(F.linear)
def _linear(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    w = comp.const_value(kw(node, 1, "weight", None))
    if not isinstance(w, Tensor) or src is not node.args[0]:
        raise Unsupported("F.linear with an input-dependent weight")
    return comp.add_layer(node, R.linear_layer(w, comp.opts), src, "linear")


def _folded_pad(comp: "Composer", src: fx.Node, geom: ConvGeometry) -> tuple[fx.Node, ConvGeometry]:
    """An ``F.pad`` feeding only this conv becomes the conv's own padding (TF-style 'same' convs)."""
    if src.op != "call_function" or src.target is not F.pad or len(src.users) != 1:
        return src, geom
    inner = comp.dyn_args(src)
    mode = kw(src, 2, "mode", "constant")
    value = kw(src, 3, "value", None)
    if len(inner) != 1 or (mode == "constant" and value not in (None, 0, 0.0)):
        return src, geom
    pads = f_pad_to_pads(kw(src, 1, "pad", ()), len(geom.spatial))
    folded = geom.with_input_pad(pads, "zeros" if mode == "constant" else mode) if pads is not None else None
    return (inner[0], folded) if folded is not None else (src, geom)


@op(F.conv1d, F.conv2d)
def _conv(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    w = comp.const_value(kw(node, 1, "weight", None))
    if not isinstance(w, Tensor) or src is not node.args[0]:
        raise Unsupported("convolution with an input-dependent weight")
    geom = ConvGeometry.of_call(tuple(w.shape[2:]), comp.shape(src), stride=kw(node, 3, "stride", 1),
                                padding=kw(node, 4, "padding", 0), dilation=kw(node, 5, "dilation", 1),
                                groups=int(kw(node, 6, "groups", 1)))
    src, geom = _folded_pad(comp, src, geom)
    in_shape = comp.shape(src)
    with R.threads_for(numel(in_shape) + numel(comp.shape(node))):
        bound = R.conv_layer(w, geom, in_shape, comp.opts)
    return comp.add_layer(node, bound, src, "conv", in_shape=in_shape)


@op(operator.matmul, torch.matmul, torch.mm, "matmul", "mm")
def matmul(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    other = node.args[1] if node.args[0] is src else node.args[0]
    w = comp.const_value(other)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise Unsupported("matmul needs a constant 2-D matrix operand")
    return linear_norm(w.detach().to(comp.opts.dtype)) * comp.L[src]


# ---------------------------------------------------------------------------
# Pooling


_POOL_1D = (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d)


@op(F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d)
def _pool(comp: "Composer", node: fx.Node) -> float:
    src = comp.single(node)
    t = node.target
    d = 1 if t in _POOL_1D else 2
    ins, outs = comp.shape(src)[-d:], comp.shape(node)[-d:]
    if t in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
        return R.adaptive_avg_pool_constant(ins, outs) * comp.L[src]
    if t in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
        return R.adaptive_max_pool_constant(ins, outs) * comp.L[src]
    k = R._tuple(kw(node, 1, "kernel_size", None), d)
    stride = kw(node, 2, "stride", None)
    s = R._tuple(stride if stride not in (None, [], ()) else k, d)
    p = R._tuple(kw(node, 3, "padding", 0), d)
    if t in (F.max_pool1d, F.max_pool2d):
        dl = R._tuple(kw(node, 4, "dilation", 1), d)
        return R.max_pool_constant(ins, outs, k, s, p, dl) * comp.L[src]
    ceil = bool(kw(node, 4, "ceil_mode", False))
    cip = bool(kw(node, 5, "count_include_pad", True))
    div = kw(node, 6, "divisor_override", None) if d == 2 else None
    return R.avg_pool_constant(ins, k, s, p, ceil, cip, div) * comp.L[src]


__all__ = ["OPS", "MODULE_OPS", "Unsupported", "op", "kw", "op_name", "numel", "add", "scale", "matmul"]
