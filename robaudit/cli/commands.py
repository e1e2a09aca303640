"""Commands: one per registered analysis (built from its Options), plus
info, audit, gate, show and compare. Commands are thin: they parse, call the
engine (:mod:`robaudit.engine`), and hand the report to the renderers.
"""

from __future__ import annotations

import enum
import inspect
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.markup import escape

from robaudit.analyses.base import Analysis
from robaudit.cli import options as common

_TYPED = ("COMMANDLINE", "ENVIRONMENT")
OPT_PREFIX = "opt__"
CTX_PARAM = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)


def _typed_values(ctx: typer.Context, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` the user actually gave (on the command line or by env var)."""
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in _TYPED

    return {k: v for k, v in kwargs.items() if given(k)}


def _display(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):  # labelled fractions
        return ",".join(label for label, _ in value)
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


_METAVARS = {bool: "", int: "INT", float: "FLOAT", str: "TEXT"}  # a switch takes no value


def analysis_parameters(analysis: Analysis) -> list[inspect.Parameter]:
    """One CLI option per field of the analysis' Options dataclass.

    Numbers, fractions, lists and enums arrive as text and are typed once by
    ``Analysis.make_options``, the same code that validates the YAML config.
    """
    from robaudit.config import field_kind
    from robaudit.kinds import Fraction, Fractions, Ints, LabelledFractions

    params = []
    for f in analysis.option_fields():
        meta = f.metadata
        kind = field_kind(f)
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        # A switch that is on by default also needs a way to turn it off.
        names = [f"{flag}/--no-{flag[2:]}" if kind is bool and f.default is True else flag]
        if meta.get("short"):
            names.append(meta["short"])
        text = meta.get("help", "")
        if meta.get("choices"):
            text += f" [{'|'.join(meta['choices'])}]"
        if kind is not bool and f.default not in (None, ""):
            text += f" [default: {_display(f.default)}]"
        text = escape(text)  # help is rendered as Rich markup: keep [..] literal
        if kind is bool and f.default is True:
            text += " [default: on]"
            text = escape(text)
        if kind is Fraction:
            metavar = "FLOAT"
        elif kind is Fractions or kind is LabelledFractions:
            metavar = "LIST"
        elif kind is Ints:
            metavar = "INTS"
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            metavar = "|".join(m.value for m in kind).upper() if len(kind) <= 4 else "CHOICE"
        else:
            metavar = _METAVARS.get(kind, "TEXT")
        # Typer's own default display would show the parameter's sentinel, not the option's default.
        option = typer.Option(*names, help=text, show_default=False, metavar=metavar,
                              rich_help_panel=f"{analysis.name} options")
        typ = bool if kind is bool else Optional[kind if kind in (int, float) else str]
        if kind is Ints:  # repeatable: --index 3 --index 7 (each may also be a comma list)
            typ = Optional[List[str]]
        params.append(inspect.Parameter(OPT_PREFIX + f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=False if kind is bool else None,
                                        annotation=Annotated[typ, option]))
    return params


def _with_signature(func: Callable, params: list[inspect.Parameter]) -> Callable:
    func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func


def _split(typed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = {k: v for k, v in typed.items() if not k.startswith(OPT_PREFIX)}
    opts = {k[len(OPT_PREFIX):]: v for k, v in typed.items() if k.startswith(OPT_PREFIX)}
    return settings, opts


def make_analysis_command(analysis: Analysis) -> Callable:
    def command(ctx: typer.Context, **kwargs: Any) -> int:
        from robaudit.cli.run import execute

        settings, opts = _split(_typed_values(ctx, kwargs))
        return execute(command=analysis.command_name, names=[analysis.name], cli_settings=settings,
                       cli_options={analysis.name: opts})

    command.__name__ = analysis.command_name
    command.__doc__ = analysis.help
    params = [CTX_PARAM, common.MODEL_ARG] + common.parameters() + analysis_parameters(analysis)
    return _with_signature(command, params)


GATE_FLAGS = [
    inspect.Parameter("fail_above", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[List[str]], typer.Option("--fail-above", metavar="METRIC=VALUE", help="Fail (exit 1) when METRIC > VALUE. Repeatable, e.g. --fail-above lipschitz_upper=500.", rich_help_panel="Gate")]),
    inspect.Parameter("fail_below", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[List[str]], typer.Option("--fail-below", metavar="METRIC=VALUE", help="Fail (exit 1) when METRIC < VALUE. Repeatable, e.g. --fail-below 'attacks.worst_case@8/255=0.2'.", rich_help_panel="Gate")]),
]


def register(app: typer.Typer) -> None:
    from robaudit import analyses
    from robaudit.cli import info as info_cmd
    from robaudit.cli import report_cmds

    from robaudit.cli import init_cmd

    app.command("init", help=init_cmd.HELP)(init_cmd.init)
    app.command("info", help=info_cmd.HELP)(info_cmd.info)
    for name in analyses.available():
        analysis = analyses.get(name)
        app.command(analysis.command_name, help=analysis.help)(make_analysis_command(analysis))

    def audit(ctx: typer.Context, **kwargs: Any) -> int:
        return report_cmds.audit(_typed_values(ctx, kwargs))

    params = [CTX_PARAM, common.MODEL_ARG, *report_cmds.AUDIT_PARAMS, *GATE_FLAGS, *common.parameters()]
    app.command("audit", help=report_cmds.AUDIT_HELP)(_with_signature(audit, params))
    app.command("gate", help=report_cmds.GATE_HELP)(report_cmds.gate)
    app.command("show", help=report_cmds.SHOW_HELP)(report_cmds.show)
    app.command("compare", help=report_cmds.COMPARE_HELP)(report_cmds.compare)
    from robaudit.cli import train_cmd

    app.command("train", help=train_cmd.HELP)(train_cmd.train)
