"""The Python API: the CLI's engine, for notebooks and scripts.

    import robaudit
    model = robaudit.load_model()                  # the embedded LeNet (or a path)
    data = robaudit.load_data(limit=200)           # float tensors in [0,1]: data.x, data.y
    report = robaudit.audit(model, data, analyses=["norms", "attacks"], attacks={"eps": "2/255,8/255"})
    report.metrics["norms.spectral.mean"]; report.show(); report.gate(fail_below={"attacks.worst_case@8/255": 0.2})

Every entry point runs the same engine as ``robaudit audit`` (:mod:`robaudit.engine`):
the same option validation, the same analyses, the same report. A plain ``nn.Module``
(pixels in [0,1] → logits) is accepted wherever a model is, and is handed back in the
state it came in (train/eval flags, ``requires_grad``, hooks).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, NamedTuple, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from robaudit.data.types import AuditData
    from robaudit.models.adapt import LoadedModel


# ------------------------------------------------------------------------------------------ loading

def load_model(path: str | None = None, *, arch: str | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, input_shape: Sequence[int] | None = None,
               select: str | int | None = None, unsafe_load: bool = False, device: str = "cpu") -> "LoadedModel":
    """Load a model file as the CLI does; None loads the embedded sample LeNet.

    Returns:
        a ``LoadedModel``: ``.module`` maps pixels in [0,1], shape (N, *input_shape), to logits (N, C);
        ``.num_classes``, ``.input_shape``, ``.class_names``, ``.describe()``.
    """
    from robaudit.models import load_model as _load

    return _load(path, arch=arch, mean=mean, std=std, input_shape=input_shape, select=select,
                 unsafe_load=unsafe_load, device=device)


@dataclass(frozen=True)
class Data:
    """A dataset as float tensors: ``x`` (N, C, H, W) float32 in [0,1], ``y`` (N,) int64 (-1: unknown).

    Unpacks as ``x, y = data``. ``indices`` are the dataset indices of the rows.
    """

    x: "torch.Tensor"
    y: "torch.Tensor"
    indices: "torch.Tensor"
    name: str = "tensors"
    split: str = "-"
    class_names: list[str] | None = None

    def __iter__(self) -> Iterator["torch.Tensor"]:
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def _audit_data(self) -> "AuditData":
        from robaudit.data.types import AuditData

        return AuditData(name=self.name, split=self.split, x=self.x, y=self.y, indices=self.indices,
                         class_names=self.class_names, source={"from": "python"})


def load_data(spec: str | None = None, *, root: str | None = None, split: str = "test", limit: int | None = None,
              indices: Sequence[int] | None = None, download: bool = False) -> Data:
    """Load a dataset as the CLI's ``--data`` does (None: the embedded Fashion-MNIST sample).

    Unlike the files on disk (often uint8), ``x`` is always float32 in [0,1]: ready for ``model.module(x)``.
    """
    from robaudit.data import load_data as _load

    raw = _load(spec, root=root, split=split, limit=limit, indices=indices, download=download)
    return Data(x=raw.images(slice(None)), y=raw.y.clone(), indices=raw.indices.clone(), name=raw.name,
                split=raw.split, class_names=raw.class_names)


# ------------------------------------------------------------------------------------------ the report

class Report:
    """One audit's report: the same JSON as ``robaudit audit -o``, with helpers.

    Attributes:
        data: the report dict (JSON types only).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = dict(data)

    @property
    def metrics(self) -> dict[str, float | None]:
        """Canonical metric name → value (None: missing or not finite), as ``gate --list-metrics`` lists them."""
        return {name: m.value for name, m in self.declared.items()}

    @property
    def declared(self) -> dict[str, Any]:
        """Canonical metric name → ``Metric`` (value, which way is better, unit)."""
        from robaudit.report.metrics import declared

        return declared(self.data)

    def section(self, name: str) -> dict[str, Any]:
        """The report section of analysis ``name``."""
        return self.data["analyses"][name]

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON text (also written to ``path`` when given, atomically)."""
        from robaudit.report.io import dumps, write_report

        if path is not None:
            write_report(path, self.data)
        return dumps(self.data)

    def to_markdown(self) -> str:
        from robaudit.report.markdown import to_markdown

        return to_markdown(self.data)

    def to_html(self, path: str | None = None) -> str:
        """One self-contained HTML page (also written to ``path`` when given)."""
        from robaudit.report.html import to_html

        text = to_html(self.data)
        if path is not None:
            from robaudit.report.io import write_text_atomic

            write_text_atomic(path, text, "to_html")
        return text

    def _repr_html_(self) -> str:  # Jupyter shows the HTML report inline
        return self.to_html()

    def show(self, *, wide: bool = False) -> None:
        """Print the tables, as the CLI does (Rich; works in a terminal and in Jupyter)."""
        from rich.console import Console

        from robaudit.report.terminal import print_renderables, render_report

        print_renderables(render_report(self.data), Console(emoji=False), wide=wide)

    def gate(self, *, fail_above: Mapping[str, float] | None = None, fail_below: Mapping[str, float] | None = None,
             allow_incomplete: bool = False) -> dict[str, Any]:
        """Evaluate thresholds like ``robaudit gate``; the result (``["passed"]``, ``["checks"]``) is also kept
        in the report, so ``show``/``to_html`` include it.

        Example: ``report.gate(fail_above={"lipschitz_upper": 500}, fail_below={"attacks.worst_case@8/255": 0.2})``.
        """
        from robaudit.gate import ABOVE, BELOW, evaluate, parse_threshold
        from robaudit.report import metrics

        thresholds = [parse_threshold(f"{k}={v}", ABOVE) for k, v in (fail_above or {}).items()]
        thresholds += [parse_threshold(f"{k}={v}", BELOW) for k, v in (fail_below or {}).items()]
        result = evaluate(self.data, thresholds, declared=metrics.declared(self.data),
                          aliases=metrics.aliases(self.data), allow_incomplete=allow_incomplete)
        self.data["gate"] = result
        return result

    def __repr__(self) -> str:
        names = ", ".join(self.data.get("analyses") or {})
        return f"<robaudit.Report {names or 'empty'}: {len(self.declared)} metrics>"


# ------------------------------------------------------------------------------------------ running

def _adapted(model: Any, *, input_shape: Sequence[int] | None, data_shape: Sequence[int] | None,
             device: Any) -> "LoadedModel":
    """A LoadedModel from a LoadedModel, a path, None (embedded) or a plain nn.Module."""
    from torch import nn

    from robaudit.errors import UsageError
    from robaudit.models.adapt import LoadedModel, adapt

    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, str):
        if input_shape is not None:
            return load_model(model, input_shape=input_shape, device=str(device))
        return _path_with_data_shape(model, data_shape, device)
    if isinstance(model, nn.Module):
        shape = input_shape or data_shape
        if shape is None:
            raise UsageError("a plain nn.Module needs input_shape=(C, H, W) or data to take the shape from")
        return adapt(model, input_shape=tuple(int(s) for s in shape), device=device, format="module")
    raise UsageError(f"model: expected an nn.Module, a LoadedModel, a path or None, got {type(model).__name__}")


def _path_with_data_shape(path: str, data_shape: Sequence[int] | None, device: Any) -> "LoadedModel":
    from robaudit.engine import load_model_for
    from robaudit.settings import Settings

    return load_model_for(Settings(model=path), device, data_shape=tuple(data_shape) if data_shape else None)


def _as_audit_data(data: Any) -> "AuditData | None":
    """AuditData from Data, AuditData, an (x, y) pair of tensors, a dataset name/path, or None."""
    import torch

    from robaudit.data.types import AuditData
    from robaudit.errors import UsageError

    if data is None or isinstance(data, AuditData):
        return data
    if isinstance(data, Data):
        return data._audit_data()
    if isinstance(data, str):
        return load_data(data)._audit_data()
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.dtype == torch.uint8:
            raise UsageError("data: x is uint8; pass floats in [0,1] (x.float() / 255)")
        n = int(x.shape[0])
        return AuditData(name="tensors", split="-", x=x.float(), y=y.long(), indices=torch.arange(n),
                         source={"from": "python"})
    if isinstance(data, torch.Tensor):
        n = int(data.shape[0])
        return AuditData(name="tensors", split="-", x=data.float(), y=torch.full((n,), -1, dtype=torch.long),
                         indices=torch.arange(n), source={"from": "python"})
    raise UsageError(f"data: expected robaudit.Data, (x, y) tensors, a dataset name/path or None, "
                     f"got {type(data).__name__}")


def _module_of(model: Any) -> Any:
    from torch import nn

    if isinstance(model, nn.Module):
        return model
    return getattr(model, "module", None)


def audit(model: Any = None, data: Any = None, analyses: Sequence[str] | str | None = None, *,
          profile: str = "standard", seed: int = 0, batch_size: int = 128, device: str = "cpu",
          dtype: str = "float32", input_shape: Sequence[int] | None = None, progress: bool = False,
          warn: Any = None, **options: Mapping[str, Any]) -> Report:
    """Run analyses on ``model`` and ``data``; the same engine and report as ``robaudit audit``.

    Args:
        model: a plain ``nn.Module`` (pixels in [0,1] → logits), a ``LoadedModel``, a file path,
            or None for the embedded sample model.
        data: ``robaudit.Data``, an ``(x, y)`` pair of float tensors, a dataset name or path,
            or None for the embedded Fashion-MNIST sample when the model fits it.
        analyses: names (``["norms", "layers"]`` or ``"norms,layers"``); default: the profile's.
        profile: quick | standard | full: the per-analysis defaults of ``robaudit audit --profile``.
        options: per-analysis options, validated like the YAML ``analyses:`` section,
            e.g. ``attacks={"eps": "2/255,8/255", "attacks": "fgsm,pgd"}``.
        progress: show progress bars on stderr.
        warn: ``warn(message)`` callback (default: :func:`warnings.warn`).

    Returns:
        a :class:`Report`.
    """
    import warnings as _warnings

    import torch

    from robaudit import analyses as registry
    from robaudit.engine import Plan, check_fit, run_plan
    from robaudit.context import AuditContext, null_progress
    from robaudit.data import check_compatible
    from robaudit.errors import UsageError
    from robaudit.models.guard import preserved
    from robaudit.report.build import make_report

    names = _names(analyses, profile)
    unknown = set(options) - set(names)
    if unknown:
        raise UsageError(f"options for {', '.join(sorted(unknown))}, which are not among the analyses run "
                         f"({', '.join(names)})")
    plan = Plan()
    for name in names:
        analysis = registry.get(name)
        values = {**analysis.profiles.get(profile, {}), **{k.replace("-", "_"): v for k, v in (options.get(name) or {}).items()}}
        sources = {k: f"audit({name}={{{k!r}: …}})" for k in values}
        plan.steps.append((analysis, analysis.make_options(values, sources=sources)))
    messages: list[str] = []

    def _warn(message: str) -> None:
        messages.append(message)
        (warn or (lambda m: _warnings.warn(m, stacklevel=3)))(message)

    audit_data = _as_audit_data(data)
    dev = torch.device(device)
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    user_module = model if isinstance(model, torch.nn.Module) else None
    guard = preserved(user_module) if user_module is not None else contextlib.nullcontext()
    with guard:
        loaded = _adapted(model, input_shape=input_shape,
                          data_shape=audit_data.sample_shape if audit_data is not None else None, device=dev)
        if audit_data is None and plan.needs_data:
            from robaudit.data import load_data as _load_raw

            audit_data = _load_raw(None)
        if audit_data is not None:
            check_compatible(audit_data, loaded.input_shape, num_classes=loaded.num_classes)
        cast = tdtype == torch.float64 and user_module is None  # never cast the caller's own module
        if tdtype == torch.float64 and user_module is not None:
            raise UsageError("dtype='float64' with an in-memory module: pass model.double() yourself")
        if cast:
            loaded.module.double()
        factory = _bars if progress else null_progress
        ctx = AuditContext(model=loaded, data=audit_data, device=dev, dtype=tdtype, seed=seed, batch_size=batch_size,
                           progress=factory, warn=_warn)
        if audit_data is not None:
            ctx.cache["clean_accuracy"] = check_fit(loaded, audit_data, warn=_warn, device=dev, dtype=tdtype,
                                                    batch_size=batch_size)
        sections, timings = run_plan(ctx, plan)
    report = make_report(command="api", ctx=ctx, settings=None, sections=sections, timings=timings,
                         warnings=messages)
    return Report(report)


@contextlib.contextmanager
def _bars(description: str, total: int | None = None):
    """A progress bar on stderr (``audit(progress=True)``), with a total and an ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        class _Task:
            def advance(self, n: int = 1) -> None:
                bar.advance(task, n)

        yield _Task()


def _names(analyses: Sequence[str] | str | None, profile: str) -> list[str]:
    from robaudit import analyses as registry
    from robaudit.errors import UsageError

    if profile not in ("quick", "standard", "full"):
        raise UsageError(f"profile: expected quick, standard or full, got {profile!r}")
    if analyses is None:
        names = [n for n in registry.available() if profile in registry.get(n).profiles]
    elif isinstance(analyses, str):
        names = [n.strip() for n in analyses.split(",") if n.strip()]
    else:
        names = list(analyses)
    for n in names:
        registry.get(n)  # unknown names: ConfigError naming the nearest
    order = list(registry.REGISTRY)
    return sorted(dict.fromkeys(names), key=order.index)


# ------------------------------------------------------------------------------------------ direct numbers

class NormsResult(NamedTuple):
    """Per-sample Jacobian norms (float64, shape (N,)); ``top_k`` is (N, k)."""

    spectral: "torch.Tensor"
    frobenius: "torch.Tensor"
    top_k: "torch.Tensor"
    converged: "torch.Tensor"


def jacobian_norms(model: Any, x: "torch.Tensor", *, method: str = "exact", frobenius: str = "exact", k: int = 1,
                   target: str = "logits", iters: int = 100, tol: float | None = None, n_proj: int = 16,
                   seed: int = 0) -> NormsResult:
    """σ_max(J(x)) and ‖J(x)‖_F of every sample of ``x`` (Johansson et al. 2022; Roth et al. 2019, eq. 7).

    Args:
        model: an ``nn.Module`` or ``LoadedModel`` (pixels → logits); its state is left as found.
        x: (N, C, H, W) float inputs.
        method: exact | power | lanczos. frobenius: exact | hutchinson.
        target: logits | softmax | log_softmax.
    """
    from robaudit.linalg import JacobianOperator
    from robaudit.linalg.norms import jacobian_norms as _norms
    from robaudit.models.guard import preserved

    module = _module_of(model)
    with preserved(module, eval=True):
        op = JacobianOperator(module, x, target=target)
        res = _norms(op, method=method, frobenius=frobenius, k=k, iters=iters, tol=tol, n_proj=n_proj, seed=seed)
        op.release()
    return NormsResult(spectral=res.spectral, frobenius=res.frobenius, top_k=res.top_k, converged=res.converged)


def layer_bounds(model: Any, input_shape: Sequence[int] | None = None, **options: Any) -> dict[str, Any]:
    """Per-layer operator norms and upper bounds, and the AutoLip bound ``lipschitz_upper`` (no data needed).

    Returns:
        the ``layers`` report section: ``["layers"]`` (one dict per layer), ``["lipschitz_upper"]``.
    """
    return audit(model, None, ["layers"], input_shape=input_shape, layers=options).section("layers")


class Bracket(NamedTuple):
    """lower ≤ L ≤ upper: the largest σ_max(J(x)) over the data, and the AutoLip product bound."""

    lower: float | None
    upper: float | None


def lipschitz_bracket(model: Any, data: Any = None) -> Bracket:
    """The global Lipschitz constant of the logits (ℓ2), bracketed: empirical lower bound ≤ L ≤ AutoLip upper bound."""
    section = audit(model, data, ["norms", "layers"]).section("layers")
    return Bracket(lower=section.get("lipschitz_lower"), upper=section.get("lipschitz_upper"))


__all__ = ["Data", "Report", "Bracket", "NormsResult", "load_model", "load_data", "audit", "jacobian_norms",
           "layer_bounds", "lipschitz_bracket"]
