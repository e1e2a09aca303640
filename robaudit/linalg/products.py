"""Batched Jacobian-vector and vector-Jacobian products of a model at a batch of inputs.

With the model in eval mode the samples of a batch do not interact, so the
Jacobian of the batched map is block diagonal: one backward pass with
``grad_outputs=U`` (B, C) gives every Jᵢᵀuᵢ, and one forward-mode pass with
tangents V (B, *input) gives every Jᵢvᵢ (Johansson et al. 2022, Sec. 3 and
Alg. 1; DESIGN.md §4).

Forward mode (``torch.func.jvp``) is used where the model supports it. Graphs
with ops lacking a forward-mode formula (e.g. some onnx2torch conversions) fall
back to the double-backward trick: g(u) = Jᵀu is linear in u, so the VJP of g
with respect to u is Jv. The failure is detected once per module and remembered.

``create_graph=True`` is the training mode (used by :mod:`robaudit.regularizers`):
the same products keep their autograd graph, so a loss built on Jv or Jᵀu
backpropagates to the model's parameters (double backpropagation, Hoffman et al.
2019 Sec. 2; Johansson et al. 2022 Alg. 1). Measurement mode (the default)
detaches every product, so no graph grows across iterations.
"""

from __future__ import annotations

import contextlib
import enum
import math
import warnings
import weakref
from typing import Callable, Iterator

import torch
from torch import nn

from robaudit.errors import ModelLoadError, UsageError


class Target(str, enum.Enum):
    """Which output's Jacobian is taken: the logits, softmax probabilities or log-probabilities."""

    LOGITS = "logits"
    PROBS = "probs"
    LOGPROBS = "logprobs"

    @classmethod
    def parse(cls, value: "str | Target") -> "Target":
        try:
            return cls(value)
        except ValueError:
            raise UsageError(f"--target: expected one of logits, probs, logprobs, got {value!r}") from None


class JvpMode(str, enum.Enum):
    """How Jv is computed: forward mode, or the double-backward trick."""

    AUTO = "auto"
    FORWARD = "forward"
    DOUBLE_BACKWARD = "double_backward"


# Modules for which forward mode failed once; they use double backward from then on.
_NO_FORWARD_MODE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def pullback(output: torch.Tensor, inputs: torch.Tensor, cotangent: torch.Tensor, **kwargs) -> tuple:
    """``torch.autograd.grad(output, inputs, grad_outputs=cotangent, **kwargs)``.

    For a constant ``cotangent`` (no autograd history) it is taken as the gradient of ⟨output, cotangent⟩:
    the same numbers (the backward of the product hands ``1·cotangent`` on, exactly), but torch 2.x imports
    ``torch.fx.experimental.symbolic_shapes`` and sympy (0.8 s) the first time ``grad_outputs`` is given a
    tensor, which every command taking a vector-Jacobian product paid at start-up. A cotangent with history
    (differentiable solvers) goes to ``grad_outputs``: there ⟨output, u(x)⟩ would differentiate u too.
    """
    if cotangent.requires_grad:
        return torch.autograd.grad(output, inputs, grad_outputs=cotangent, **kwargs)
    return torch.autograd.grad((output * cotangent).sum(), inputs, **kwargs)


def apply_target(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """Map logits (B, C) to the chosen output."""
    if target is Target.PROBS:
        return torch.softmax(logits, dim=-1)
    if target is Target.LOGPROBS:
        return torch.log_softmax(logits, dim=-1)
    return logits


def check_output(out: object, batch: int) -> torch.Tensor:
    """The model output as (B, C); ModelLoadError naming the shape otherwise."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(f"model output must be logits of shape (N, C) = ({batch}, C); got {shape}")
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (samples must not interact); everything restored after.

    The package's one model-state guard (:func:`robaudit.models.guard.preserved`), under the
    name library users of ``robaudit.linalg`` know.
    """
    from robaudit.models.guard import preserved

    with preserved(model, eval=True):
        yield model


class JacobianOperator:
    """J(xᵢ) for every sample of a batch, as a pair of batched linear maps.

    Args:
        model: maps (B, *input) to logits (B, C); should be in eval mode
            (the analyses and :func:`robaudit.linalg.sigma_max` ensure this).
        x: inputs (B, *input); not modified.
        target: differentiate logits, softmax probabilities or log-probabilities.
        mode: ``auto`` tries forward mode once and falls back to double backward.
        create_graph: keep the autograd graph of every product (for training losses);
            products may then also take vectors that carry a graph (e.g. power-iteration
            iterates). Default False: products are detached (measurement).

    Shapes:
        ``vjp(U)``: U (B, C) → (B, D) with D = prod(input);
        ``jvp(V)``: V (B, D) → (B, C).

    ``n_vjp`` and ``n_jvp`` count the products, for benchmarks and reports.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 target: Target | str = Target.LOGITS, mode: JvpMode | str = JvpMode.AUTO,
                 create_graph: bool = False) -> None:
        self.model = model
        self.create_graph = bool(create_graph)
        self.target = Target.parse(target)
        self.mode = JvpMode(mode)
        self.batch = int(x.shape[0])
        self.input_shape = tuple(x.shape[1:])
        self.dim = math.prod(self.input_shape)
        self.x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            self.output = apply_target(check_output(model(self.x), self.batch), self.target)
        self.num_outputs = int(self.output.shape[1])
        self.n_vjp = 0
        self.n_jvp = 0
        self._dual_u: torch.Tensor | None = None
        self._dual_g: torch.Tensor | None = None
        if self.mode is JvpMode.AUTO and isinstance(model, nn.Module) and model in _NO_FORWARD_MODE:
            self.mode = JvpMode.DOUBLE_BACKWARD

    @property
    def value(self) -> torch.Tensor:
        """The (detached) outputs at x, (B, C)."""
        return self.output.detach()

    @property
    def output_with_graph(self) -> torch.Tensor:
        """The outputs at x with their graph (B, C): lets a training loss share this forward pass."""
        return self.output

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        return apply_target(self.model(x), self.target)

    def _keep(self, keep_graph: bool | None) -> bool:
        return self.create_graph if keep_graph is None else (keep_graph and self.create_graph)

    def vjp(self, u: torch.Tensor, *, keep_graph: bool | None = None) -> torch.Tensor:
        """Jᵢᵀuᵢ for every sample: (B, C) → (B, D), one backward pass over the retained graph.

        ``keep_graph=False`` detaches this product of a ``create_graph`` operator (e.g. the
        search for a singular vector that a loss then treats as a constant).
        """
        self.n_vjp += 1
        keep = self._keep(keep_graph)
        with torch.enable_grad():
            (g,) = pullback(self.output, self.x, u.to(self.output.dtype), retain_graph=True, create_graph=keep,
                            allow_unused=True)
        if g is None:  # output does not depend on the input: J = 0
            return torch.zeros(self.batch, self.dim, dtype=self.x.dtype, device=self.x.device)
        return g.reshape(self.batch, -1)

    def jvp(self, v: torch.Tensor, *, keep_graph: bool | None = None) -> torch.Tensor:
        """Jᵢvᵢ for every sample: (B, D) → (B, C); ``keep_graph`` as in :meth:`vjp`."""
        self.n_jvp += 1
        keep = self._keep(keep_graph)
        tangent = v.reshape(self.batch, *self.input_shape).to(self.x.dtype)
        if not keep:
            tangent = tangent.detach()
        if self.mode in (JvpMode.AUTO, JvpMode.FORWARD):
            try:
                with warnings.catch_warnings():
                    # torch's forward-AD decompositions call the deprecated torch.jit.script on first use
                    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
                    # measurement needs no backward graph; training keeps it (to the parameters and v)
                    with torch.enable_grad() if keep else torch.no_grad():
                        _, out = torch.func.jvp(self._f, (self.x.detach(),), (tangent,))
                if self.mode is JvpMode.AUTO:
                    self.mode = JvpMode.FORWARD  # it worked once: keep using it
                return out if keep else out.detach()
            except Exception:
                # Forward mode unsupported by some op (or by a functional transform of
                # the graph). Remember it for this module and use double backward instead.
                if self.mode is JvpMode.FORWARD:
                    raise
                self.mode = JvpMode.DOUBLE_BACKWARD
                if isinstance(self.model, nn.Module):
                    _NO_FORWARD_MODE.add(self.model)
        return self._jvp_double_backward(tangent, keep)

    def _jvp_double_backward(self, tangent: torch.Tensor, keep: bool) -> torch.Tensor:
        # g(u) = J^T u is linear in u, so d<g(u), v>/du = J v. The graph of g is built once.
        with torch.enable_grad():
            if self._dual_g is None:
                self._dual_u = torch.zeros_like(self.output, requires_grad=True)
                (g,) = pullback(self.output, self.x, self._dual_u, retain_graph=True, create_graph=True,
                                allow_unused=True)
                if g is None or not g.requires_grad:  # J constant in u-space only if J = 0
                    return torch.zeros(self.batch, self.num_outputs, dtype=self.x.dtype, device=self.x.device)
                self._dual_g = g
            (jv,) = pullback(self._dual_g, self._dual_u, tangent, retain_graph=True, create_graph=keep,
                             allow_unused=True)
        if jv is None:
            return torch.zeros(self.batch, self.num_outputs, dtype=self.x.dtype, device=self.x.device)
        return jv if keep else jv.detach()

    def gram(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵢ Jᵢᵀ uᵢ: (B, C) → (B, C), one VJP and one JVP."""
        return self.jvp(self.vjp(u))

    def normal(self, v: torch.Tensor) -> torch.Tensor:
        """Jᵢᵀ Jᵢ vᵢ: (B, D) → (B, D), one JVP and one VJP."""
        return self.vjp(self.jvp(v))

    def release(self) -> None:
        """Drop the retained graphs."""
        self.output = self.output.detach()
        self._dual_g = None
        self._dual_u = None
