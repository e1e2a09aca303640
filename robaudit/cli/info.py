"""``robaudit info``: what robaudit sees in a model file."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from robaudit.cli import options as common

HELP = ("Model summary: format, classes, input shape, normalisation, parameter count, "
        "and a layer table from one forward pass.")

def info(
    ctx: typer.Context,
    model: Annotated[Optional[str], common.MODEL_ARG.annotation.__metadata__[0]] = None,
    arch: Annotated[Optional[str], common.COMMON["arch"][1]] = None,
    mean: Annotated[Optional[str], common.COMMON["mean"][1]] = None,
    std: Annotated[Optional[str], common.COMMON["std"][1]] = None,
    input_shape: Annotated[Optional[str], common.COMMON["input_shape"][1]] = None,
    select: Annotated[Optional[str], common.COMMON["select"][1]] = None,
    unsafe_load: Annotated[bool, common.COMMON["unsafe_load"][1]] = False,
    device: Annotated[Optional[str], common.COMMON["device"][1]] = None,
    config: Annotated[Optional[str], common.COMMON["config"][1]] = None,
    output: Annotated[Optional[str], common.COMMON["output"][1]] = None,
    json: Annotated[bool, common.COMMON["json"][1]] = False,
    quiet: Annotated[bool, common.COMMON["quiet"][1]] = False,
    debug: Annotated[bool, common.COMMON["debug"][1]] = False,
    list_arch: Annotated[bool, typer.Option("--list-arch", help="List the architectures --arch accepts and exit.")] = False,
    list_zoo: Annotated[bool, typer.Option("--list-zoo", help="List the sample-zoo models (pass one as zoo:NAME) and exit.")] = False,
) -> int:
    from robaudit.cli.commands import _typed_values
    from robaudit.cli.console import Diagnostics, stdout_console
    from robaudit.config import load_config
    from robaudit.settings import build_settings

    if list_zoo:
        from rich.table import Table

        from robaudit.models.zoo_registry import ZOO_MODELS, zoo_dir
        from robaudit.report.terminal import print_renderables

        table = Table(box=None, pad_edge=False, caption=f"checkpoints in {zoo_dir()} ($ROBAUDIT_ZOO_DIR); "
                      "the audit of each is in sample_models/README.md", caption_justify="left")
        for col in ("model", "present", "trained with"):
            table.add_column(col, no_wrap=col != "trained with")
        for name, text in ZOO_MODELS.items():
            table.add_row(f"zoo:{name}", "yes" if (zoo_dir() / f"{name}.pt").is_file() else "no", text)
        print_renderables([table], stdout_console())
        return 0
    if list_arch:
        from rich.table import Table

        from robaudit.models.zoo import ZOO
        from robaudit.report.terminal import print_renderables

        table = Table(box=None, pad_edge=False, caption="normalisation: applied inside the adapted model to "
                      "pixels in [0,1], unless the file's meta or --mean/--std say otherwise", caption_justify="left")
        for col in ("arch", "input", "normalisation", "description"):
            table.add_column(col, no_wrap=col in ("arch", "input"))
        for name, entry in ZOO.items():
            norm = (f"mean {', '.join(f'{v:g}' for v in entry.mean)}; std {', '.join(f'{v:g}' for v in entry.std)}"
                    if entry.mean is not None else "none")
            table.add_row(name, "×".join(map(str, entry.input_shape)), norm, entry.help)
        print_renderables([table], stdout_console())
        return 0
    typed = _typed_values(ctx, dict(model=model, arch=arch, mean=mean, std=std, input_shape=input_shape, select=select,
                               unsafe_load=unsafe_load, device=device, config=config, output=output, json=json,
                               quiet=quiet, debug=debug))
    cfg = load_config(typed.get("config"))
    settings = build_settings(typed, cfg.settings, cfg.path)
    diag = Diagnostics(quiet=settings.quiet)
    if settings.unsafe_load:
        diag.warn("--unsafe-load: unpickling a full module runs code from the file; use only files you trust")

    from robaudit.engine import load_model_for
    from robaudit.device import resolve_device
    from robaudit.models.summary import summarize
    from robaudit.report.io import check_output_path, dumps, write_report

    check_output_path(settings.output)  # a bad -o fails before the model is loaded
    loaded = load_model_for(settings, resolve_device(settings.device))
    summary = summarize(loaded)
    if settings.output:
        write_report(settings.output, summary)
        diag.note(f"model summary written to {settings.output}")
    if settings.json:
        stdout_console().file.write(dumps(summary))
    else:
        for renderable in render_info(summary):
            stdout_console().print(renderable)
    return 0


def render_info(summary: dict[str, Any]) -> list:
    """Rich renderables for a model summary; every value is escaped (paths, names and meta come from files)."""
    from rich.table import Table

    from robaudit.cli.console import safe_text as t

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    model = summary["model"]
    grid.add_row("file", t(model.get("path") or "(embedded sample)"))
    grid.add_row("format", t(model.get("format")))
    if model.get("arch"):
        grid.add_row("arch", t(model["arch"]))
    grid.add_row("classes", t(model.get("num_classes")))
    if model.get("class_names"):
        names = ", ".join(str(n) for n in model["class_names"][:12])
        more = f", … +{len(model['class_names']) - 12} more" if len(model["class_names"]) > 12 else ""
        grid.add_row("class names", t(names + more))
    grid.add_row("input", t("×".join(str(s) for s in model.get("input_shape") or [])) + " (pixels in [0,1])")
    norm = "none" if not model.get("mean") else f"mean {model['mean']}, std {model['std']}"
    grid.add_row("normalisation", t(norm))
    params = f"{model.get('parameters'):,}"
    if model.get("buffers"):
        # onnx2torch keeps some weights (e.g. Gemm/MatMul initialisers) as buffers.
        params += f" (+ {model['buffers']:,} values in buffers)"
    grid.add_row("parameters", params)
    if model.get("dataset"):
        grid.add_row("dataset", t(model["dataset"]))
    if model.get("sha256"):
        grid.add_row("sha256", t(model["sha256"]))
    table = Table(title="layers", title_justify="left")
    for col in ("name", "type", "input → output", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for layer in summary.get("layers", []):
        shapes = f"{_shape(layer.get('input_shape'))} → {_shape(layer.get('output_shape'))}"
        table.add_row(t(layer["name"]), t(layer["type"]), t(shapes), f"{layer.get('parameters') or 0:,}")
    return [grid, table]


def _shape(shape: Any) -> str:
    if shape is None:
        return "?"
    if shape and isinstance(shape[0], list):
        return ", ".join(_shape(s) for s in shape)
    return "×".join(str(s) for s in shape)
