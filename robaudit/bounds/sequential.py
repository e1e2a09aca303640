"""Fallback when torch.fx cannot trace a model: the product of per-layer bounds over a chain.

Valid only when the model is a chain: nn.Sequential, or a module type the caller
declares a chain of named children (``chains=``). Otherwise it refuses with the reason.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from robaudit.bounds import rules as R
from robaudit.bounds.compose import GraphBound, LayerRecord, Unbounded
from robaudit.bounds.trace import record_shapes
from robaudit.errors import UnsupportedLayerError


def chain_of(model: nn.Module, rules: Mapping[type, R.Rule], chains: Mapping[type, Sequence[str]],
             prefix: str = "") -> list[tuple[str, nn.Module]] | str:
    """Leaves of ``model`` in call order when it is a pure chain, else the reason it is not."""
    if type(model) in chains or isinstance(model, nn.Sequential):
        names = chains.get(type(model)) or [name for name, _ in model.named_children()]
        parts: list[tuple[str, nn.Module]] = []
        for name in names:
            sub = chain_of(getattr(model, name), rules, chains, f"{prefix}{name}.")
            if isinstance(sub, str):
                return sub
            parts += sub
        return parts
    if R.has_rule(model, rules) or not any(True for _ in model.children()):
        return [(prefix.rstrip("."), model)]
    return f"{prefix.rstrip('.') or 'model'} ({type(model).__name__}) is not an nn.Sequential"


def sequential_bound(model: nn.Module, x: Tensor, opts: R.RuleOptions, *, reason: str,
                     rules: Mapping[type, R.Rule], chains: Mapping[type, Sequence[str]]) -> GraphBound:
    """Product of per-layer bounds over the chain (operator norms left pending, as in the graph pass)."""
    chain = chain_of(model, rules, chains)
    if isinstance(chain, str):
        raise UnsupportedLayerError(f"the model cannot be traced with torch.fx ({reason}) and a sequential "
                                    f"product would not be a valid bound: {chain}")
    shapes = record_shapes(model, [n for n, _ in chain], lambda: model(x))
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
        bound = R.bound_module(module, ins, outs, opts, rules=rules, defer_power=True)
        layers.append(LayerRecord(name if k == 0 else f"{name}#{k + 1}", type(module).__name__, ins, outs, bound))
        if bound.upper is None:
            unb.append(Unbounded(name, type(module).__name__, bound.reason or "no bound"))
        else:
            upper *= bound.upper
    return GraphBound(lipschitz_upper=upper, method="sequential", layers=layers, unbounded=unb,
                      notes=[f"torch.fx could not trace the model ({reason}); used the product over its "
                             "nn.Sequential chain"])


__all__ = ["chain_of", "sequential_bound"]
