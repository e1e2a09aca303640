"""The graph and its shapes: a torch.fx tracer that keeps ruled modules whole, and a shape recorder.

Modules with a rule are leaves; other modules are traced through, so a layer is
found by what it computes (an ``F.conv2d`` inside a custom module is a
convolution). A module whose code cannot be traced becomes a leaf (then it needs
a rule). Layer input shapes come from one run of the graph with forward hooks,
removed in ``finally:``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx as fx
from torch import Tensor, nn

from robaudit.bounds import rules as R


class ShapedProxy(fx.Proxy):
    """A proxy that also holds the value the traced op takes on the example input.

    ``x.shape``, ``x.size()`` and ``x.dim()`` answer with concrete numbers, so shape arithmetic
    (TF-style 'same' padding computed from the input size, as in timm's Conv2dSame) traces into
    plain constants: the bound is for this input shape anyway.
    """

    def __init__(self, node: fx.Node, tracer: "Tracer", value: Any = None) -> None:
        super().__init__(node, tracer)
        self.value = value

    def __getattr__(self, k: str) -> Any:
        value = self.__dict__.get("value")
        if isinstance(value, Tensor) and k in ("shape", "size", "dim", "ndim"):
            return getattr(value, k)
        return super().__getattr__(k)


class Tracer(fx.Tracer):
    """Leaves: modules with a rule, ops packaged as modules and torch.nn modules; untraceable ones too."""

    def __init__(self, rules: Mapping[type, R.Rule], module_ops: Mapping[type, Any],
                 example: Tensor | None = None) -> None:
        super().__init__()
        self.rules, self.module_ops, self.example = rules, module_ops, example
        self.untraceable: dict[str, str] = {}
        self._evaluating = 0  # > 0 while an op runs eagerly on example values (no graph nodes then)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if isinstance(proxy, ShapedProxy) and self.example is not None:
            proxy.value = self._evaluate(kind, target, args, kwargs)
        return proxy

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapedProxy(node, self)

    def _evaluate(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        """The op's value on the example input (None when it cannot be had)."""
        missing = []

        def concrete(a: Any) -> Any:
            if isinstance(a, fx.Proxy):
                v = a.__dict__.get("value")
                if v is None:
                    missing.append(a)
                return v
            return a

        a = fx.node.map_aggregate(args, concrete)
        kw = fx.node.map_aggregate(kwargs, concrete)
        if missing:
            return None
        self._evaluating += 1
        try:
            with torch.no_grad():
                if kind == "placeholder":
                    return self.example
                if kind == "get_attr":
                    obj: Any = self.root
                    for part in str(target).split("."):
                        obj = getattr(obj, part)
                    return obj
                if kind == "call_function":
                    return target(*a, **kw)
                if kind == "call_method":
                    return getattr(a[0], target)(*a[1:], **kw)
                if kind == "call_module":
                    return self.root.get_submodule(target)(*a, **kw)
        except Exception:  # the value is only a convenience for shape arithmetic
            return None
        finally:
            self._evaluating -= 1
        return None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.untraceable:
            return True
        if isinstance(m, nn.Sequential):
            return False
        return R.has_rule(m, self.rules) or type(m) in self.module_ops \
            or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self._evaluating:
            return forward(*args, **kwargs)
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


def trace(model: nn.Module, rules: Mapping[type, R.Rule] | None = None,
          module_ops: Mapping[type, Any] | None = None, example: Tensor | None = None) -> tuple[fx.Graph, dict[str, str]]:
    """fx graph of ``model`` and the modules that had to be kept whole (name → why).

    With an ``example`` batch, shapes read inside ``forward`` are concrete (see :class:`ShapedProxy`).
    """
    tracer = Tracer(rules if rules is not None else R.RULES, module_ops or {}, example)
    graph = tracer.trace(model)
    # Drop nodes the output does not use (e.g. half-traced code of modules that became leaves).
    for node in reversed(list(graph.nodes)):
        if node.op not in ("placeholder", "output") and not node.users:
            graph.erase_node(node)
    return graph, tracer.untraceable


class Recorder(fx.Interpreter):
    """Runs the graph once and keeps every node's value (shapes of tensors, constants' values)."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def record_shapes(model: nn.Module, names: Iterable[str], run: Callable[[], Any]) -> dict[str, list[tuple]]:
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


def has_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(has_tensor(v) for v in value.values())
    return False


def arg_nodes(arg: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


def enclosing_module(node: fx.Node) -> tuple[str, str] | None:
    """(qualified name, class name) of the innermost module whose forward made ``node``, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return str(path), name.rsplit(".", 1)[-1]


__all__ = ["Tracer", "trace", "Recorder", "record_shapes", "has_tensor", "arg_nodes", "enclosing_module"]
