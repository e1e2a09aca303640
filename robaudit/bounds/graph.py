"""Global Lipschitz upper bound by composing per-layer bounds over the computation graph (AutoLip).

Scaman & Virmaux (2018): with L(v) the Lipschitz constant of the map from the
model input to node v, L(input) = 1, and

* a layer f with constant c:            L(f(u)) ≤ c · L(u)   (product along a path)
* an addition u + w (residual):         L ≤ L(u) + L(w)       (sum at additions)
* a concatenation / stack [u; w]:       L ≤ √(L(u)² + L(w)²)
* a constant (parameters, shapes):      L = 0

The graph comes from ``torch.fx``. Modules with a rule are leaves; other
modules are traced through, and a module whose code cannot be traced becomes
a leaf (then it needs a rule). When the whole model cannot be traced, the
bound falls back to the product over an ``nn.Sequential`` chain, which is
valid only for such chains; otherwise it refuses with the reason.

Layer input shapes come from forward hooks on one batch; hooks are removed in
``finally:``. The model is only evaluated, never modified.
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from robaudit.bounds import rules as R
from robaudit.bounds.conv import conv_upper_bounds, ConvGeometry, linear_norm
from robaudit.errors import UnsupportedLayerError


@dataclass
class LayerRecord:
    """One module call in the graph, with its rule's verdict.

    Attributes:
        name: qualified module name (``#k`` appended for the k-th call of a shared module).
        type: class name.
        input_shape, output_shape: one sample's shapes (no batch dimension), from hooks.
        bound: the rule's LayerBound.
        fused: when a following BatchNorm was folded in: {"with": name, "upper": bound of the pair}.
    """

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    bound: R.LayerBound
    fused: dict[str, Any] | None = None


@dataclass
class Unbounded:
    name: str
    type: str
    reason: str


@dataclass
class GraphBound:
    """The AutoLip result.

    Attributes:
        lipschitz_upper: valid global ℓ2 upper bound, or None when some layer is unbounded.
        method: "fx" (graph composition) or "sequential" (product over an nn.Sequential chain).
        layers: module calls in execution order.
        unbounded: every layer/op without a valid bound (empty when lipschitz_upper is set).
        additions, concats: residual additions and concatenations met on the way.
        notes: diagnostics (e.g. modules that could not be traced and became leaves).
    """

    lipschitz_upper: float | None
    method: str
    layers: list[LayerRecord]
    unbounded: list[Unbounded] = field(default_factory=list)
    additions: int = 0
    concats: int = 0
    notes: list[str] = field(default_factory=list)


class _Unsupported(Exception):
    """An op without a valid rule; the message is the reason."""


# ---------------------------------------------------------------------------
# Tracing


class _Tracer(fx.Tracer):
    """Leaves: modules with a rule and torch.nn modules; untraceable modules become leaves too."""

    def __init__(self) -> None:
        super().__init__()
        self.untraceable: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.untraceable:
            return True
        if isinstance(m, nn.Sequential):
            return False
        return R.has_rule(m) or type(m) in MODULE_OPS or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        stack, calls = self.module_stack.copy(), dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # data-dependent control flow etc.: keep the module whole
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls = calls
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.untraceable[name] = f"{type(exc).__name__}: {first[:160]}"
            return super().call_module(m, forward, args, kwargs)


def trace(model: nn.Module) -> tuple[fx.Graph, dict[str, str]]:
    """fx graph of ``model`` and the modules that had to be kept whole (name → why)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    # Drop nodes the output does not use (e.g. half-traced code of modules that became leaves).
    for node in reversed(list(graph.nodes)):
        if node.op not in ("placeholder", "output") and not node.users:
            graph.erase_node(node)
    return graph, tracer.untraceable


# ---------------------------------------------------------------------------
# Running the graph once: values of constant nodes, shapes of the others


def _has_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps, per node: the shape of tensor values, and constant values."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _arg_nodes(arg: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


# ---------------------------------------------------------------------------
# Functional ops


_ACT_FUNCS: dict[Any, Callable[[fx.Node], float]] = {}


def _act(value: float | Callable[[fx.Node], float], *targets: Any) -> None:
    for t in targets:
        _ACT_FUNCS[t] = value if callable(value) else (lambda n, v=value: v)


def _kw(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[pos] if len(node.args) > pos else default


_act(1.0, F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.hardtanh, torch.tanh, F.tanh, F.softplus, F.softsign,
     F.tanhshrink, F.softshrink, F.logsigmoid, torch.abs, torch.clamp, torch.clip, F.celu,
     "relu", "relu_", "tanh", "abs", "clamp", "clip", "clamp_", "clamp_min", "clamp_max")
_act(0.25, torch.sigmoid, F.sigmoid, "sigmoid")
_act(1.0 / 6.0, F.hardsigmoid)
_act(1.5, F.hardswish)
_act(R.SILU, F.silu)
_act(R.MISH, F.mish)
_act(R.SELU, F.selu, torch.selu)
_act(0.5, F.softmax, torch.softmax, F.softmin, "softmax")
_act(lambda n: max(1.0, abs(float(_kw(n, 1, "negative_slope", 0.01)))), F.leaky_relu)
_act(lambda n: max(1.0, abs(float(_kw(n, 1, "alpha", 1.0)))), F.elu)
_act(lambda n: R.GELU_TANH if _kw(n, 1, "approximate", "none") == "tanh" else R.GELU_ERF, F.gelu)

_RESHAPES = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
             torch.clone, torch.movedim, torch.swapaxes, torch.t, torch.detach,
             "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "clone",
             "detach", "float", "double", "half", "to", "type", "type_as", "view_as", "reshape_as", "t", "movedim",
             "unflatten", torch.unflatten}
_EXPANDS = {"expand", "expand_as", "repeat", "tile", torch.tile}
_SPLITS = {torch.split, torch.chunk, torch.unbind, torch.tensor_split, "split", "chunk", "unbind", "tensor_split"}
_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIVS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide"}
_CATS = {torch.cat, torch.concat, torch.stack, torch.concatenate}
_MEANS = {torch.mean: "mean", "mean": "mean", torch.sum: "sum", "sum": "sum"}
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_POOLS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
          F.adaptive_max_pool1d, F.adaptive_max_pool2d}


class _Composer:
    """AutoLip over a recorded graph."""

    def __init__(self, model: nn.Module, graph: fx.Graph, values: dict[fx.Node, Any], opts: R.RuleOptions,
                 module_shapes: dict[str, list[tuple[tuple, tuple]]], fuse_bn: bool) -> None:
        self.model, self.graph, self.values, self.opts = model, graph, values, opts
        self.module_shapes = module_shapes
        self.fuse_bn = fuse_bn
        self.dyn: dict[fx.Node, bool] = {}
        self.L: dict[fx.Node, float] = {}
        self.layers: list[LayerRecord] = []
        self.layer_of: dict[fx.Node, LayerRecord] = {}
        self.unbounded: list[Unbounded] = []
        self.additions = self.concats = 0
        self._cache: dict[tuple, R.LayerBound] = {}

    # -- helpers ------------------------------------------------------------

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        v = self.values.get(node)
        if not isinstance(v, Tensor):
            raise _Unsupported(f"expected a tensor from {node.name}")
        return tuple(int(s) for s in v.shape[1:])

    def lip(self, arg: Any) -> float:
        """L of an argument structure: nodes, tuples/lists/dicts of them (stacked: root of sum of squares)."""
        nodes = [n for n in _arg_nodes(arg) if self.dyn.get(n)]
        if not nodes:
            return 0.0
        if isinstance(arg, fx.Node):
            return self.L[arg]
        return math.sqrt(sum(self.L[n] ** 2 for n in nodes))

    def dyn_args(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if self.dyn.get(n)]

    def const_value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values[arg]
        return arg

    def single(self, node: fx.Node) -> fx.Node:
        args = self.dyn_args(node)
        if len(args) != 1:
            raise _Unsupported(f"{_op_name(node)} of {len(args)} input-dependent tensors")
        return args[0]

    # -- per node -----------------------------------------------------------

    def run(self) -> float | None:
        needed = self._ancestors_of_output()
        out_L: float | None = None
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.dyn[node] = True
                self.L[node] = 1.0
                continue
            deps = any(self.dyn.get(n) for n in node.all_input_nodes)
            if node.op == "output":
                out_L = self.lip(node.args[0])
                continue
            self.dyn[node] = deps and _has_tensor(self.values.get(node))
            if not self.dyn[node]:
                continue  # parameters, shapes, sizes: constants
            if node not in needed:
                self.L[node] = math.inf
                continue
            try:
                self.L[node] = self.node_lip(node)
            except _Unsupported as exc:
                kind = type(self.model.get_submodule(node.target)).__name__ if node.op == "call_module" \
                    else _op_name(node)
                self.unbounded.append(Unbounded(_display_name(node), kind, str(exc)))
                self.L[node] = math.inf
        return out_L

    def _ancestors_of_output(self) -> set[fx.Node]:
        out = next(n for n in self.graph.nodes if n.op == "output")
        seen: set[fx.Node] = set()
        stack = list(out.all_input_nodes)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(n.all_input_nodes)
        return seen

    def node_lip(self, node: fx.Node) -> float:
        if node.op == "call_module":
            return self.module_lip(node)
        if node.op in ("call_function", "call_method"):
            return self.function_lip(node)
        raise _Unsupported(f"unexpected graph node {node.op}")

    def module_lip(self, node: fx.Node) -> float:
        module = self.model.get_submodule(node.target)
        if type(module) in MODULE_OPS:  # ops packaged as modules (onnx2torch): handled like functions
            return MODULE_OPS[type(module)](self, node, module)
        calls = self.module_shapes.get(node.target) or []
        k = sum(1 for r in self.layers if r.name.split("#")[0] == node.target)
        in_shape, out_shape = calls[k] if k < len(calls) else (self.shape(node.args[0]), self.shape(node))
        name = node.target if k == 0 else f"{node.target}#{k + 1}"
        key = (node.target, in_shape, out_shape)
        if key not in self._cache:
            try:
                self._cache[key] = R.bound_module(module, in_shape, out_shape, self.opts)
            except Exception as exc:  # a rule that fails is no bound; numerical errors propagate
                from robaudit.errors import RobauditError

                if isinstance(exc, RobauditError):
                    raise
                self._cache[key] = R.unbounded(f"rule failed: {type(exc).__name__}: {exc}")
        bound = self._cache[key]
        record = LayerRecord(name, type(module).__name__, in_shape, out_shape, bound)
        self.layers.append(record)
        self.layer_of[node] = record
        if bound.upper is None:
            raise _Unsupported(bound.reason or "no bound")
        if type(module).__name__ == "SelectOutput":
            return self._select_lip(node, module)
        src = self.single(node)
        fused = self._fused_bn(node, module, src)
        if fused is not None:
            return fused
        return bound.upper * self.L[src]

    def _select_lip(self, node: fx.Node, module: nn.Module) -> float:
        arg = node.args[0]
        key = getattr(module, "key", None)
        if isinstance(arg, (tuple, list)) and isinstance(key, int):
            return self.lip(arg[key])
        if isinstance(arg, dict) and key in arg:
            return self.lip(arg[key])
        return self.lip(arg)

    def _fused_bn(self, node: fx.Node, module: nn.Module, src: fx.Node) -> float | None:
        """BatchNorm right after a conv/linear used only by it: bound the pair as one linear map."""
        if not self.fuse_bn or not isinstance(module, nn.modules.batchnorm._BatchNorm) or src.op != "call_module":
            return None
        if len(src.users) != 1 or src not in self.layer_of:
            return None
        prev = self.model.get_submodule(src.target)
        scale = R.batchnorm_scale(module)
        record = self.layer_of[src]
        if scale is None or record.bound.upper is None or type(prev) not in (nn.Conv1d, nn.Conv2d, nn.Linear):
            return None
        w = prev.weight.detach().to(self.opts.dtype)
        s = scale.to(w)
        w = w * s.reshape(-1, *([1] * (w.dim() - 1)))
        with R.threads_for(math.prod(record.input_shape) + math.prod(record.output_shape)):
            if isinstance(prev, nn.Linear):
                pair = linear_norm(w)
            else:
                geom = ConvGeometry.of(prev, record.input_shape)
                ub = conv_upper_bounds(w, geom, gram_iters=self.opts.gram_iters, gram_tol=self.opts.gram_tol)
                pair = _conv_upper(ub)
        separate = record.bound.upper * float(scale.abs().max())
        pair = min(pair, separate)
        record.fused = {"with": self.layer_of[node].name, "upper": pair, "separate": separate}
        inner = self.single(src)
        return pair * self.L[inner]

    def function_lip(self, node: fx.Node) -> float:
        with R.threads_for(_numel(self.shape(node)) if isinstance(self.values.get(node), Tensor) else 0):
            return self._function_lip(node)

    def _function_lip(self, node: fx.Node) -> float:
        t = node.target
        if t in _ACT_FUNCS:
            return _ACT_FUNCS[t](node) * self.L[self.single(node)]
        if t in (F.log_softmax, torch.log_softmax, "log_softmax"):
            src = self.single(node)
            dim = int(_kw(node, 1, "dim", 1))
            shp = self.shape(src)
            return math.sqrt(shp[dim] if dim < 0 else shp[dim - 1]) * self.L[src]
        if t in _RESHAPES:
            return self.L[self.single(node)]
        if t in _EXPANDS:
            src = self.single(node)
            return math.sqrt(_numel(self.shape(node)) / max(_numel(self.shape(src)), 1)) * self.L[src]
        if t in _SPLITS or t is operator.getitem:
            return self._getitem_lip(node)
        if t in _ADDS:
            return self._add_lip(node)
        if t in (operator.neg, torch.neg, "neg", operator.pos):
            return self.L[self.single(node)]
        if t in _MULS:
            return self._scale_lip(node, divide=False)
        if t in _DIVS:
            return self._scale_lip(node, divide=True)
        if t in _CATS:
            self.concats += 1
            return self.lip(node.args[0] if node.args else node.kwargs.get("tensors"))
        if t in _MEANS:
            return self._reduce_lip(node, _MEANS[t])
        if t in _DROPOUTS:
            if bool(_kw(node, 2, "training", True)):
                raise _Unsupported("dropout with training=True is random")
            return self.L[self.single(node)]
        if t is F.pad:
            src = self.single(node)
            pad, mode = _kw(node, 1, "pad", None), _kw(node, 2, "mode", "constant")
            value = R.pad_constant(self.shape(src), lambda x: F.pad(x, pad, mode=mode)).upper
            return value * self.L[src]
        if t is F.linear:
            return self._linear_fn(node)
        if t in (F.conv1d, F.conv2d):
            return self._conv_fn(node)
        if t in (operator.matmul, torch.matmul, torch.mm, "matmul", "mm"):
            return self._matmul_lip(node)
        if t in _POOLS:
            return self._pool_fn(node)
        raise _Unsupported(f"no rule for {_op_name(node)}")

    def _getitem_lip(self, node: fx.Node) -> float:
        src = node.args[0]
        if node.target is operator.getitem and isinstance(self.values.get(src), Tensor):
            index = node.args[1]
            if not _basic_index(index):
                raise _Unsupported("advanced indexing may repeat entries")
        return self.lip(src)  # a slice / one piece of a split is a projection

    def _add_lip(self, node: fx.Node) -> float:
        a = node.args[0] if node.args else node.kwargs.get("input")
        b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        alpha = abs(float(self.const_value(node.kwargs.get("alpha", 1))))
        la, lb = self.lip(a), self.lip(b)
        if la and lb:
            self.additions += 1
        return la + alpha * lb

    def _scale_lip(self, node: fx.Node, divide: bool) -> float:
        a = node.args[0] if node.args else node.kwargs.get("input")
        b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        da, db = _is_dyn(self, a), _is_dyn(self, b)
        if da and db:
            raise _Unsupported("product/quotient of two input-dependent tensors is not globally Lipschitz")
        if divide and db:
            raise _Unsupported("division by an input-dependent tensor is not globally Lipschitz")
        src, const = (a, b) if da else (b, a)
        c = self.const_value(const)
        if isinstance(c, Tensor):
            if _numel(tuple(self.values[node].shape)) != _numel(tuple(self.values[src].shape)):
                raise _Unsupported("broadcasting by a constant that expands the input")
            c = c.detach().abs()
            factor = float(1.0 / c.min()) if divide else float(c.max())
        else:
            factor = 1.0 / abs(float(c)) if divide else abs(float(c))
        if not math.isfinite(factor):
            raise _Unsupported("division by zero")
        return factor * self.L[src]

    def _reduce_lip(self, node: fx.Node, kind: str) -> float:
        src = self.single(node)
        dims = _kw(node, 1, "dim", None)
        full = tuple(self.values[src].shape)
        if dims is None:
            raise _Unsupported(f"{kind} over all dimensions mixes the samples of a batch")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(full) for d in dims]
        if 0 in dims:
            raise _Unsupported(f"{kind} over the batch dimension mixes samples")
        k = _numel(tuple(full[d] for d in dims))
        factor = 1.0 / math.sqrt(k) if kind == "mean" else math.sqrt(k)
        return factor * self.L[src]

    def _linear_fn(self, node: fx.Node) -> float:
        src = self.single(node)
        w = self.const_value(_kw(node, 1, "weight", None))
        if not isinstance(w, Tensor) or src is not node.args[0]:
            raise _Unsupported("F.linear with an input-dependent weight")
        return linear_norm(w.detach().to(self.opts.dtype)) * self.L[src]

    def _conv_fn(self, node: fx.Node) -> float:
        src = self.single(node)
        w = self.const_value(_kw(node, 1, "weight", None))
        if not isinstance(w, Tensor) or src is not node.args[0]:
            raise _Unsupported("convolution with an input-dependent weight")
        d = w.dim() - 2
        cls = nn.Conv1d if d == 1 else nn.Conv2d
        groups = int(_kw(node, 6, "groups", 1))
        layer = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_kw(node, 3, "stride", 1),
                    padding=_kw(node, 4, "padding", 0), dilation=_kw(node, 5, "dilation", 1), groups=groups,
                    bias=False)
        geom = ConvGeometry.of(layer, self.shape(src))
        ub = conv_upper_bounds(w.detach().to(self.opts.dtype), geom, gram_iters=self.opts.gram_iters,
                               gram_tol=self.opts.gram_tol)
        return _conv_upper(ub) * self.L[src]

    def _matmul_lip(self, node: fx.Node) -> float:
        src = self.single(node)
        other = node.args[1] if node.args[0] is src else node.args[0]
        w = self.const_value(other)
        if not isinstance(w, Tensor) or w.dim() != 2:
            raise _Unsupported("matmul needs a constant 2-D matrix operand")
        return linear_norm(w.detach().to(self.opts.dtype)) * self.L[src]

    def _pool_fn(self, node: fx.Node) -> float:
        src = self.single(node)
        t = node.target
        d = 1 if t in (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d) else 2
        ins, outs = self.shape(src)[-d:], self.shape(node)[-d:]
        if t in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
            return R.adaptive_avg_pool_constant(ins, outs) * self.L[src]
        if t in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
            return R.adaptive_max_pool_constant(ins, outs) * self.L[src]
        k = R._tuple(_kw(node, 1, "kernel_size", None), d)
        stride = _kw(node, 2, "stride", None)
        s = R._tuple(stride if stride not in (None, [], ()) else k, d)
        p = R._tuple(_kw(node, 3, "padding", 0), d)
        if t in (F.max_pool1d, F.max_pool2d):
            dl = R._tuple(_kw(node, 4, "dilation", 1), d)
            return R.max_pool_constant(ins, outs, k, s, p, dl) * self.L[src]
        ceil = bool(_kw(node, 4, "ceil_mode", False))
        cip = bool(_kw(node, 5, "count_include_pad", True))
        div = _kw(node, 6, "divisor_override", None) if d == 2 else None
        return R.avg_pool_constant(ins, k, s, p, ceil, cip, div) * self.L[src]


# ---------------------------------------------------------------------------
# Ops packaged as modules (onnx2torch): they take several inputs, so they are handled with the
# graph node, like functions. Registered only when onnx2torch is installed.

MODULE_OPS: dict[type, Callable[["_Composer", fx.Node, nn.Module], float]] = {}


def _onnx_binary(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    fn = module.math_op_function
    if fn in (torch.add, torch.sub):
        return comp._add_lip(node)
    return comp._scale_lip(node, divide=fn is not torch.mul)


def _onnx_isometry(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    return comp.L[comp.single(node)]  # reshape / transpose / squeeze …: the other inputs are constant shapes


def _onnx_gemm(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    a, b = node.args[0], node.args[1]
    c = node.args[2] if len(node.args) > 2 else None
    if module.trans_a or _is_dyn(comp, b) or not _is_dyn(comp, a):
        raise _Unsupported("Gemm needs an untransposed input A and a constant B")
    w = comp.const_value(b).detach().to(comp.opts.dtype)
    norm = abs(float(module.alpha)) * linear_norm(w)
    record = LayerRecord(str(node.target), "OnnxGemm", comp.shape(a), comp.shape(node),
                         R.LayerBound(upper=norm, exact=norm, kind="linear", method="|α|·‖B‖₂"))
    comp.layers.append(record)
    comp.layer_of[node] = record
    return norm * comp.L[a] + (abs(float(module.beta)) * comp.lip(c) if c is not None else 0.0)


def _onnx_matmul(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    return comp._matmul_lip(node)


def _onnx_concat(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    comp.concats += 1
    return comp.lip(tuple(node.args))


def _onnx_global_avg(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    src = comp.single(node)
    return comp.L[src] / math.sqrt(_numel(comp.shape(src)[1:]))


def _onnx_softmax(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    src = comp.single(node)
    if not module.is_log:
        return 0.5 * comp.L[src]
    return math.sqrt(_numel(comp.shape(src)[module.axis - 1:])) * comp.L[src]


def _onnx_pad(comp: "_Composer", node: fx.Node, module: nn.Module) -> float:
    src = comp.single(node)
    value = R.pad_constant(comp.shape(src), lambda x: F.pad(x, list(module.pads), mode=module.mode)).upper
    return value * comp.L[src]


def _register_onnx_ops() -> None:
    try:
        from onnx2torch.node_converters import (binary_math_operations, clip, concat, flatten, gemm,
                                                global_average_pool, identity, matmul, neg, pad, reshape, squeeze,
                                                transpose, unsqueeze)
        from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
    except Exception:  # onnx2torch missing or a different version: those modules then need rules
        return
    MODULE_OPS[binary_math_operations.OnnxBinaryMathOperation] = _onnx_binary
    for cls in (reshape.OnnxReshape, flatten.OnnxFlatten, transpose.OnnxTranspose, squeeze.OnnxSqueezeStaticAxes,
                squeeze.OnnxSqueezeDynamicAxes, unsqueeze.OnnxUnsqueezeStaticAxes,
                unsqueeze.OnnxUnsqueezeDynamicAxes, identity.OnnxCopyIdentity, neg.OnnxNeg, clip.OnnxClip):
        MODULE_OPS[cls] = _onnx_isometry  # Neg and Clip are 1-Lipschitz too
    MODULE_OPS[gemm.OnnxGemm] = _onnx_gemm
    MODULE_OPS[matmul.OnnxMatMul] = _onnx_matmul
    MODULE_OPS[concat.OnnxConcat] = _onnx_concat
    MODULE_OPS[global_average_pool.OnnxGlobalAveragePool] = _onnx_global_avg
    MODULE_OPS[global_average_pool.OnnxGlobalAveragePoolWithKnownInputShape] = _onnx_global_avg
    MODULE_OPS[OnnxSoftmaxV1V11] = _onnx_softmax
    MODULE_OPS[pad.OnnxPadStatic] = _onnx_pad


_register_onnx_ops()


def _conv_upper(ub: dict[str, Any]) -> float:
    values = [ub["circular_upper"], ub["singla_bound"], ub["gram_bound"]]
    return min(values + ([ub["strided_exact"]] if ub.get("strided_exact") is not None else []))


def _is_dyn(comp: _Composer, arg: Any) -> bool:
    return any(comp.dyn.get(n) for n in _arg_nodes(arg))


def _numel(shape: tuple) -> int:
    return math.prod(int(s) for s in shape)


def _basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


def _op_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_module":
        return str(t)
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", str(t))
    return f"{mod}.{name}" if mod else name


def _display_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


# ---------------------------------------------------------------------------
# Entry point


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's train/eval mode and every parameter's requires_grad on exit."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in grads.items():
            p.requires_grad_(flag)


def lipschitz_bound(model: nn.Module, x: Tensor, *, opts: R.RuleOptions | None = None,
                    allow_unbounded: bool = False, fuse_bn: bool = True) -> GraphBound:
    """AutoLip upper bound of ``model`` (ℓ2 → ℓ2), with the per-layer table.

    Args:
        model: maps a batch (B, *input) to (B, C); evaluated, never modified
            (modes, requires_grad and hooks are restored in ``finally:``).
        x: one batch; only its shape and dtype matter (values pick no branch:
            the bound is global).
        opts: numerical settings for the layer rules.
        allow_unbounded: return ``lipschitz_upper=None`` and the list of
            unbounded layers instead of raising.
        fuse_bn: bound conv→BatchNorm (and linear→BatchNorm1d) pairs as one map.

    Returns:
        GraphBound.

    Raises:
        UnsupportedLayerError: layers/ops without a rule (all listed), unless allow_unbounded.
    """
    opts = opts or R.RuleOptions()
    with preserved(model):
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            graph, untraceable = trace(model)
        except Exception as exc:
            return _sequential(model, x, opts, allow_unbounded, reason=f"{type(exc).__name__}: {exc}")
        return _compose(model, x, graph, untraceable, opts, allow_unbounded, fuse_bn)


def _record_shapes(model: nn.Module, names: Iterable[str], run: Callable[[], Any]) -> dict[str, list[tuple]]:
    """Input/output shapes (no batch dim) of every call of the named modules, via forward hooks."""
    shapes: dict[str, list[tuple]] = {}
    handles = []
    try:
        for name in dict.fromkeys(names):
            def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                ins = tuple(int(s) for s in args[0].shape[1:]) if args and isinstance(args[0], Tensor) else ()
                outs = tuple(int(s) for s in out.shape[1:]) if isinstance(out, Tensor) else ()
                shapes.setdefault(name, []).append((ins, outs))
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return shapes


def _compose(model: nn.Module, x: Tensor, graph: fx.Graph, untraceable: dict[str, str], opts: R.RuleOptions,
             allow_unbounded: bool, fuse_bn: bool) -> GraphBound:
    recorder = _Recorder(model, graph)
    names = [n.target for n in graph.nodes if n.op == "call_module"]
    module_shapes = _record_shapes(model, names, lambda: recorder.run(x))
    comp = _Composer(model, graph, recorder.values, opts, module_shapes, fuse_bn)
    upper = comp.run()
    notes = [f"{name}: could not be traced ({why}); bounded as one layer" for name, why in untraceable.items()]
    result = GraphBound(lipschitz_upper=upper, method="fx", layers=comp.layers, unbounded=comp.unbounded,
                        additions=comp.additions, concats=comp.concats, notes=notes)
    return _finish(result, allow_unbounded)


def _finish(result: GraphBound, allow_unbounded: bool) -> GraphBound:
    if result.unbounded or result.lipschitz_upper is None or not math.isfinite(result.lipschitz_upper):
        if not result.unbounded:
            result.unbounded.append(Unbounded("(output)", "-", "no finite bound reached the output"))
        if not allow_unbounded:
            items = "; ".join(f"{u.name} ({u.type}): {u.reason}" for u in result.unbounded)
            raise UnsupportedLayerError(f"no Lipschitz bound for {len(result.unbounded)} layer(s): {items}; "
                                        "pass --allow-unbounded to report them as unbounded")
        result.lipschitz_upper = None
    return result


def _sequential_chain(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | str:
    """Leaves of ``model`` when it is a pure chain (AuditModel / nn.Sequential), else the reason it is not."""
    from robaudit.models.adapt import AuditModel

    if isinstance(model, AuditModel):
        parts: list[tuple[str, nn.Module]] = []
        for name in ("normalize", "net", "select"):
            sub = _sequential_chain(getattr(model, name), f"{prefix}{name}.")
            if isinstance(sub, str):
                return sub
            parts += sub
        return parts
    if isinstance(model, nn.Sequential):
        parts = []
        for name, child in model.named_children():
            sub = _sequential_chain(child, f"{prefix}{name}.")
            if isinstance(sub, str):
                return sub
            parts += sub
        return parts
    if R.has_rule(model) or not any(True for _ in model.children()):
        return [(prefix.rstrip("."), model)]
    return f"{prefix.rstrip('.') or 'model'} ({type(model).__name__}) is not an nn.Sequential"


def _sequential(model: nn.Module, x: Tensor, opts: R.RuleOptions, allow_unbounded: bool, reason: str) -> GraphBound:
    """Product of per-layer bounds over a chain: valid only when the model is a chain."""
    chain = _sequential_chain(model)
    if isinstance(chain, str):
        raise UnsupportedLayerError(f"the model cannot be traced with torch.fx ({reason}) and a sequential "
                                    f"product would not be a valid bound: {chain}")
    shapes = _record_shapes(model, [n for n, _ in chain], lambda: model(x))
    layers, unb = [], []
    upper = 1.0
    seen: dict[str, int] = {}
    for name, module in chain:
        k = seen.get(name, 0)  # the k-th occurrence of a shared module is its k-th call
        seen[name] = k + 1
        calls = shapes.get(name, [])
        if k >= len(calls):
            continue  # not called (e.g. an Identity normalisation that forward skips)
        ins, outs = calls[k]
        bound = R.bound_module(module, ins, outs, opts)
        layers.append(LayerRecord(name if k == 0 else f"{name}#{k + 1}", type(module).__name__, ins, outs, bound))
        if bound.upper is None:
            unb.append(Unbounded(name, type(module).__name__, bound.reason or "no bound"))
        else:
            upper *= bound.upper
    result = GraphBound(lipschitz_upper=upper, method="sequential", layers=layers, unbounded=unb,
                        notes=[f"torch.fx could not trace the model ({reason}); used the product over its "
                               "nn.Sequential chain"])
    return _finish(result, allow_unbounded)


__all__ = ["LayerRecord", "Unbounded", "GraphBound", "lipschitz_bound", "trace", "preserved"]
