"""One torchattacks call, checked: seeding, the re-check of what it returns, and errors.

"Trust but verify" (foolbox's rule: we don't really know what the attack
returns): every adversarial example is re-checked here, independently of the
library. It must be finite, lie in [0,1], stay within the budget
(‖x_adv − x‖ ≤ eps + 1e-6 in the threat norm) and its success is re-evaluated
on the model. Examples that fail the check are counted as violations and as
NOT successful.

Randomness is keyed, never a global stream: each call is seeded from
(seed, attack name, the first dataset index of the batch), so a batch gives the
same examples whichever process runs it and whatever ran before (sharding).

The user's model is left as found (:func:`robaudit.models.guard.preserved`):
eval mode, parameters frozen (CW, DeepFool and FAB call ``backward()``, which
would otherwise fill ``param.grad``), modes and ``requires_grad`` restored.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from robaudit.attacks.plan import resolve_params  # noqa: F401  (re-exported: the engine's API)
from robaudit.attacks.registry import EPS, AttackParams, AttackSpec, Kind
from robaudit.attacks.threat import Norm
from robaudit.errors import AttackError, UsageError
from robaudit.models.guard import preserved

# Budget tolerance of the re-check, in pixel units (float32 rounding of clamp(x + δ)).
NORM_ATOL = 1e-6


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside, restore the caller's RNG state after (so seeding here
    does not change what the rest of the program draws)."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Muted:
    """sys.stdout while some thread is inside :func:`quiet`: that thread's writes are dropped, every
    other thread's (the report, a progress bar, a partial report after Ctrl-C) reach the real stream."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        return len(text) if getattr(_MUTED, "depth", 0) else self.real.write(text)

    def flush(self) -> None:
        if not getattr(_MUTED, "depth", 0):
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


_MUTED = threading.local()
_QUIET_LOCK = threading.Lock()
_quiet_users = 0
_quiet_real: Any = None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torchattacks prints to stdout (e.g. when it cannot find the device);
    stdout carries the report, so swallow what is printed inside, on this thread only.

    Safe across threads (batches attacked side by side): stdout is wrapped by the first thread in
    and unwrapped by the last one out; other threads' output is never lost.
    """
    global _quiet_users, _quiet_real
    with _QUIET_LOCK:
        if _quiet_users == 0:
            _quiet_real, sys.stdout = sys.stdout, _Muted(sys.stdout)
        _quiet_users += 1
    _MUTED.depth = getattr(_MUTED, "depth", 0) + 1
    try:
        yield
    finally:
        _MUTED.depth -= 1
        with _QUIET_LOCK:
            _quiet_users -= 1
            if _quiet_users == 0:
                sys.stdout, _quiet_real = _quiet_real, None


def seed_for(base: int, name: str, first_index: int | None = None) -> int:
    """A seed for attack ``name``: stable across runs and processes (crc32, not hash()).

    With ``first_index`` (the first dataset index of a batch) every batch has its own
    seed, so a batch draws the same random starts whichever rank runs it, in whatever
    order. The same attack uses the same seed at every eps of a grid.
    """
    key = name if first_index is None else f"{name}#{int(first_index)}"
    return (int(base) * 1_000_003 + zlib.crc32(key.encode())) % (2**31 - 1)


def keyed_unit(seed: int, name: str, index: torch.Tensor) -> torch.Tensor:
    """One uniform number in [0, 1) per dataset index: (B,) float64 keyed by (seed, name, index)."""
    return torch.tensor([zlib.crc32(f"{int(seed)}:{name}:{int(i)}".encode()) / 2**32 for i in index.tolist()],
                        dtype=torch.float64)


def keyed_targets(index: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int) -> torch.Tensor:
    """A random target ≠ label per sample, keyed by (seed, dataset index): independent of batching.

    Shapes: index, y (B,) → (B,) on y's device.
    """
    offset = 1 + (keyed_unit(seed, "target", index) * (n_classes - 1)).long()
    return ((y.cpu() + offset) % n_classes).to(y.device)


class KeyedDraws(TorchFunctionMode):
    """Per-sample random draws inside a library attack, keyed by dataset index (issue 16).

    torchattacks draws a random start for a whole call (``empty_like(x).uniform_``,
    ``torch.rand(x.shape)``, ``randn_like``), so a sample's start would depend on which
    other samples share the call. Inside this mode every such draw whose leading
    dimension is the call's batch is made row by row from a generator seeded by
    (seed, salt, dataset index, draw number): a sample gets the same start whether it
    is attacked alone, in a pruned sub-batch or in the whole batch, on any rank.

    Every other CPU draw comes from ``stream`` (a generator, or a seed for one; the batch's seed):
    the same numbers the global generator seeded so would give, but the global generator
    is never touched, so batches attacked on several threads at once draw exactly what they
    draw one at a time (a mode is local to its thread). CUDA draws pass through.
    """

    _UNIFORM = {torch.Tensor.uniform_, torch.rand, torch.rand_like}
    _NORMAL = {torch.Tensor.normal_, torch.randn, torch.randn_like}
    #: other random functions that take ``generator=``: routed to the mode's stream on the CPU
    _STREAM = {torch.randint, torch.randint_like, torch.randperm, torch.bernoulli, torch.multinomial, torch.normal,
               torch.poisson, torch.Tensor.random_, torch.Tensor.bernoulli_, torch.Tensor.exponential_,
               torch.Tensor.cauchy_, torch.Tensor.log_normal_, torch.Tensor.geometric_}

    def __init__(self, keys: list[int], seed: int, salt: int | str = 0,
                 stream: int | torch.Generator | None = None) -> None:
        super().__init__()
        self.keys, self.seed, self.salt, self.draws = [int(k) for k in keys], int(seed), salt, 0
        self.stream = torch.Generator().manual_seed(int(stream)) if isinstance(stream, int) else stream

    def _rows(self, shape: tuple[int, ...], normal: bool) -> torch.Tensor:
        self.draws += 1
        gen = torch.Generator()
        rows = []
        for key in self.keys:
            gen.manual_seed(zlib.crc32(f"{self.seed}:{self.salt}:{key}:{self.draws}".encode()))
            draw = torch.randn if normal else torch.rand
            rows.append(draw(shape[1:], generator=gen, dtype=torch.float64))
        return torch.stack(rows)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._UNIFORM or func in self._NORMAL:
            normal = func in self._NORMAL
            if func in (torch.Tensor.uniform_, torch.Tensor.normal_):
                target = args[0]
                shape, dtype, device = tuple(target.shape), target.dtype, target.device
            elif func in (torch.rand_like, torch.randn_like):
                target = None
                shape = tuple(args[0].shape)
                dtype, device = kwargs.get("dtype") or args[0].dtype, kwargs.get("device") or args[0].device
            else:
                target = None
                size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
                shape = tuple(int(v) for v in size)
                dtype, device = kwargs.get("dtype") or torch.get_default_dtype(), kwargs.get("device") or "cpu"
            if shape and shape[0] == len(self.keys) and kwargs.get("generator") is None and dtype.is_floating_point:
                z = self._rows(shape, normal)
                if target is not None:  # in place, with the method's parameters
                    a, b = (list(args[1:]) + [None, None])[:2]
                    if normal:
                        z = z * (kwargs.get("std", 1.0) if b is None else b) + (kwargs.get("mean", 0.0) if a is None else a)
                    else:
                        lo = kwargs.get("from", 0.0) if a is None else a
                        z = lo + ((kwargs.get("to", 1.0) if b is None else b) - lo) * z
                    with torch.no_grad():
                        return target.copy_(z)
                return z.to(dtype=dtype, device=device)
            return self._streamed(func, args, kwargs, device)
        if func in self._STREAM:
            return self._streamed(func, args, kwargs, _device_of(args, kwargs))
        return func(*args, **kwargs)

    def _streamed(self, func, args, kwargs, device):
        if self.stream is not None and kwargs.get("generator") is None and torch.device(device).type == "cpu":
            kwargs = {**kwargs, "generator": self.stream}
        return func(*args, **kwargs)


def _device_of(args, kwargs) -> Any:
    """Where a random function's result lives: its tensor argument's device, or its ``device=`` (CPU default)."""
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device
    return kwargs.get("device") or "cpu"


@dataclass(frozen=True)
class Budget:
    """What the re-check enforces: ‖x_adv − x‖_norm ≤ eps + NORM_ATOL (None: no budget)."""

    norm: Norm | None
    eps: float | None


@dataclass
class Check:
    """Re-check of one batch of returned examples (all (B,) tensors).

    Attributes:
        pred: model prediction on the returned example.
        misclassified: valid and pred ≠ label.
        success: valid and the attack's criterion holds (misclassified, or
            pred = target when targeted).
        violation: not finite, outside [0,1], or over budget.
        dist_linf, dist_l2: float64 size of x_adv − x (NaN if not finite).
    """

    pred: torch.Tensor
    misclassified: torch.Tensor
    success: torch.Tensor
    violation: torch.Tensor
    dist_linf: torch.Tensor
    dist_l2: torch.Tensor


def verify(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, budget: Budget,
           target: torch.Tensor | None = None) -> Check:
    """Re-check returned examples independently of the attack.

    Shapes: x, x_adv (B, C, H, W); y, target (B,).
    Raises:
        RuntimeError: x_adv does not have the shape of x (the attack is broken).
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise RuntimeError(f"attack returned {shape}, expected a tensor of shape {tuple(x.shape)}")
    x_adv = x_adv.detach().to(device=x.device)
    delta = (x_adv.to(torch.float64) - x.to(torch.float64)).flatten(1)
    finite = torch.isfinite(delta).all(dim=1)
    flat = x_adv.flatten(1)
    in_box = (flat >= 0).all(dim=1) & (flat <= 1).all(dim=1)
    dist_linf = delta.abs().amax(dim=1)
    dist_l2 = delta.norm(dim=1)
    violation = ~(finite & in_box)
    if budget.norm is not None and budget.eps is not None:
        dist = dist_linf if budget.norm is Norm.LINF else dist_l2
        violation |= ~(dist <= budget.eps + NORM_ATOL)
    with torch.no_grad():
        x_eval = torch.where(finite.view(-1, *[1] * (x.dim() - 1)), x_adv.to(x.dtype), x)
        pred = model(x_eval).argmax(dim=1)
    misclassified = (pred != y) & ~violation
    success = misclassified if target is None else (pred == target) & ~violation
    nan = torch.full_like(dist_linf, float("nan"))
    return Check(pred=pred, misclassified=misclassified, success=success, violation=violation,
                 dist_linf=torch.where(finite, dist_linf, nan), dist_l2=torch.where(finite, dist_l2, nan))


def budget_of(spec: AttackSpec, params: AttackParams) -> Budget:
    """The budget the re-check enforces (FAB's eps caps the accepted distance, so it counts as one)."""
    if EPS in spec.takes and params.eps is not None:
        return Budget(params.norm, params.eps)
    return Budget(None, None)


def _unchanged(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.clone()


def build_attack(model: torch.nn.Module, spec: AttackSpec, params: AttackParams, device: torch.device,
                 targets: list) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The torchattacks object for ``params``; x itself for a budget attack at eps 0.

    ``targets`` is a one-item holder that torchattacks' targeted mode reads at call time.
    """
    # The eps = 0 ball holds x alone: check x itself (AutoAttack or Square would otherwise
    # spend their whole budget finding nothing).
    if spec.kind is Kind.BUDGET and params.eps == 0:
        return _unchanged
    with quiet():
        atk = spec.build(model, params)
        atk.set_device(torch.device(device))
    if params.targeted and spec.targeted == "mode":
        # By function (not by label): FAB/Square still need the true labels to pick what to attack.
        atk.set_mode_targeted_by_function(lambda inputs, labels: targets[0], quiet=True)
    return atk


# Failures of the machine are not an attack's failure: they propagate unchanged.
_NOT_ATTACK_FAILURES: tuple[type[BaseException], ...] = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))


def call_attack(atk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                what: str) -> torch.Tensor:
    """``atk(x, y)``; an exception raised inside the library becomes :class:`AttackError` (exit 3).

    Only this call is guarded: robaudit's own code around it, out-of-memory and
    Ctrl-C propagate unchanged (issue 10: a crash never reads as a result).
    """
    try:
        with quiet():
            return atk(x, y)
    except _NOT_ATTACK_FAILURES:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AttackError(f"attack {what} failed: {type(exc).__name__}: {first}"[:300]) from exc


def attack_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, *, norm: Norm | str = Norm.LINF,
                 eps: float | None = None, steps: int | None = None, alpha: float | None = None,
                 queries: int | None = None, n_classes: int | None = None, seed: int = 0,
                 random_start: bool = True, first_index: int | None = None,
                 keys: torch.Tensor | None = None) -> tuple[torch.Tensor, Check]:
    """Adversarial examples for one batch, re-checked (for other analyses:
    adversarial directions for spectrum/linearity, distances for cells).

    Args:
        name: a registry name (``pgd``, ``pgdl2``, ``cw``, ``deepfool``, ``fab``, ...).
        eps: the budget (BUDGET attacks) or FAB's cap; ignored by CW/DeepFool.
        seed: base seed. Pass ``first_index`` (the batch's first dataset index) so the
            library's draws are seeded per batch, and ``keys`` (the (B,) dataset indices) so
            random starts are keyed per sample: then sharded runs reproduce a single-process run.
    Returns:
        (x_adv, check): x_adv (B, *shape) as returned by torchattacks, and its
        :class:`Check` (use ``check.success`` and ``check.dist_l2``).
    Shapes: x (B, *shape) in [0,1]; y (B,).
    Raises:
        UsageError: unknown attack or norm, a budget attack without eps, FAB in float64.
        AttackError: the library raised (exit 3).
    """
    from robaudit.attacks import registry

    spec = registry.get(name)
    try:
        norm = Norm(norm)
    except ValueError:
        raise UsageError(f"{name}: expected norm linf or l2, got {norm!r}") from None
    if spec.kind is Kind.BUDGET and eps is None:
        raise UsageError(f"{name}: needs eps")
    if spec.float32_only and x.dtype == torch.float64:
        raise UsageError(f"{name}: {spec.title} in torchattacks computes in float32 only; use --dtype float32")
    with preserved(model, eval=True, freeze=True):
        if n_classes is None:
            with torch.no_grad():
                n_classes = int(model(x[:1]).shape[1])
        params = resolve_params(spec, norm=norm, eps=eps, alpha=alpha, steps=steps, queries=queries,
                                n_classes=n_classes, seed=seed_for(seed, name, first_index),
                                random_start=random_start)
        with seeded(params.seed, x.device):
            atk = build_attack(model, spec, params, x.device, [None])
            with KeyedDraws(keys.tolist() if keys is not None else [], seed_for(seed, name), stream=params.seed):
                x_adv = call_attack(atk, x, y, name).detach()
        check = verify(model, x, y, x_adv, budget_of(spec, params))
    return x_adv, check
