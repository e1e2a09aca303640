"""``robaudit cross-section --index I``: a PNG of the predicted class over a 2-D plane through
sample I (Hoffman et al. 2019, Fig. 1; App. A, Fig. S1–S2), one image per index.

The engine is :mod:`robaudit.geometry.cross_section`. Images go to ``--out`` (default
``cross_section_{index}.png`` in the current directory; ``{index}`` is the dataset index). An existing
file is never overwritten unless ``--force``: the run refuses before any computation. With
``--plots DIR``, ``DIR/cross_section.png`` gets a contact sheet of the images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Fraction, Metric, opt
from robaudit.errors import UsageError
from robaudit.kinds import Better, Ints, Plane
from robaudit.numfmt import fmt
from robaudit.stats import finite

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext

DEFAULT_OUT = "cross_section_{index}.png"


@dataclass(frozen=True)
class Options:
    index: tuple | None = opt(None, "Dataset index of the sample (required). Repeat the flag or give a comma list "
                              "(--index 3,7) for one image each.", kind=Ints, min=0)
    plane: Plane = opt(Plane.RANDOM, "Span the plane by two random directions, or by an ℓ2 PGD direction "
                       "(at eps = --extent) and a random one.")
    extent: float = opt(4.0, "Half-width of the square in ℓ2 pixel units ([0,1] images); points are not "
                        "clipped to [0,1].", kind=Fraction, min=0.0)
    resolution: int = opt(101, "Grid points per side (every point is evaluated).", min=3, max=1001)
    out: str = opt(DEFAULT_OUT, "Where each PNG goes; '{index}' becomes the dataset index (needed with several "
                   "indices). Relative paths are from the current directory.", kind=str)
    force: bool = opt(False, "Overwrite existing image files (refused otherwise).")


def paths(options: Options) -> list[str]:
    """The image path of each requested index (UsageError for a bad template)."""
    indices = options.index or ()
    try:
        out = [options.out.format(index=i) for i in indices]
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise UsageError(f"--out: expected a path where '{{index}}' is the only placeholder, got {options.out!r} "
                         f"({type(exc).__name__}: {exc})") from None
    if len(set(out)) != len(out):
        raise UsageError(f"--out {options.out!r} gives the same file for different indices; put '{{index}}' in it")
    return out


def check(options: Options) -> None:
    """Refuse, before any work: no --index, a bad --out, an existing image without --force."""
    if not options.index:
        raise UsageError("--index: give the dataset index of at least one sample, e.g. --index 0")
    if options.extent <= 0:
        raise UsageError("--extent: expected a positive half-width, got 0")
    for path in paths(options):
        if not path.lower().endswith(".png"):
            raise UsageError(f"--out: expected a .png path, got {path!r}")
        if os.path.isdir(path):
            raise UsageError(f"--out: {path!r} is a directory; expected a file path")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"--out: the directory {parent!r} does not exist")
        if os.path.exists(path) and not options.force:
            raise UsageError(f"--out: {path!r} exists; pass --force to overwrite it or choose another --out")


def _write_png(path: str, force: bool, write) -> None:
    """``write(fh)`` into ``path``: exclusive creation (never a silent overwrite), or an atomic replace
    with ``force``. A half-written file is removed."""
    if not force:
        try:
            fh = open(path, "xb")
        except FileExistsError:
            raise UsageError(f"--out: {path!r} appeared during the run; pass --force to overwrite it") from None
        try:
            with fh:
                write(fh)
        except BaseException:
            os.unlink(path)
            raise
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """One cross-section image per requested index."""
    from robaudit.models.guard import preserved

    data = ctx.require_data("cross-section")
    targets = paths(options)
    where = {int(v): i for i, v in enumerate(data.indices.tolist())}
    missing = [i for i in options.index if i not in where]
    if missing:
        lo, hi = int(data.indices.min()), int(data.indices.max())
        raise UsageError(f"--index: {', '.join(map(str, missing))} not in the data ({len(data)} samples, "
                         f"dataset indices {lo}…{hi})")
    names = ctx.model.class_names or data.class_names
    images = []
    with preserved(ctx.model.module, eval=True), ctx.progress("cross-section", len(targets)) as task:
        for index, path in zip(options.index, targets):
            images.append(_one_image(ctx, options, index, where[index], path, names))
            task.advance(1)
    return {"images": images, "class_names": list(names) if names else None}


def _one_image(ctx: "AuditContext", options: Options, index: int, row: int, path: str, names) -> dict[str, Any]:
    """The plane, the grid of predictions and the PNG for one sample; its report entry."""
    import torch

    from robaudit.geometry.cross_section import cross_section, draw, plane_basis

    model, c, data = ctx.model.module, int(ctx.model.num_classes), ctx.data
    x = data.images(torch.tensor([row]), device=ctx.device, dtype=ctx.dtype)
    label = int(data.y[row])
    plane = plane_basis(model, x, label, index, options.plane.value, extent=options.extent,
                        seed=ctx.seed, n_classes=c)
    if plane.note:
        ctx.warn(f"cross-section: index {index}: {plane.note}")
    sec = cross_section(model, x, plane, extent=options.extent, resolution=options.resolution,
                        chunk=max(1, ctx.batch_size))

    def name(k: int) -> str:
        return f"{k} {names[k]}" if names and 0 <= k < len(names) else str(k)

    dist = sec.boundary_distance
    title = (f"index {index} · label {name(label) if label >= 0 else '?'} · predicted {name(sec.centre_pred)}\n"
             f"{plane.kind} plane · nearest boundary in the plane: "
             f"{fmt(dist) if math.isfinite(dist) else f'> {fmt(options.extent)}'}")
    _write_png(path, options.force, lambda fh: draw(sec, plane, fh, n_classes=c, class_names=names, title=title))
    return {"index": index, "label": label, "pred": sec.centre_pred, "path": path,
            "plane": plane.kind, "plane_requested": options.plane.value,
            "extent": options.extent, "resolution": options.resolution, "classes_seen": sec.classes_seen,
            "boundary_distance": dist if math.isfinite(dist) else None, "beyond_extent": not math.isfinite(dist),
            "adversarial_distance": plane.adversarial_distance}


def render(section: Mapping[str, Any]) -> list:
    """One line per image, from the JSON section only."""
    names = section.get("class_names") or []

    def name(k: int) -> str:
        return f"{k} {names[k]}" if 0 <= k < len(names) else str(k)

    table = Table(title="cross-sections", title_justify="left")
    for col, just in (("index", "right"), ("plane", "left"), ("predicted", "left"), ("boundary distance", "right"),
                      ("classes seen", "left"), ("image", "left")):
        table.add_column(col, justify=just)
    for im in section.get("images") or []:
        dist = fmt(im.get("boundary_distance")) if not im.get("beyond_extent") else f"> {fmt(im.get('extent'))}"
        table.add_row(str(im["index"]), Text(im["plane"]), Text(name(im["pred"])), dist,
                      Text(", ".join(name(k) for k in im.get("classes_seen") or [])), Text(str(im["path"])))
    return [table]


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """cross_section.boundary_distance@INDEX per image and .min (higher is better; missing when no
    boundary lies within the extent)."""
    out: dict[str, Metric] = {}
    values = []
    for im in section.get("images") or []:
        out[f"cross_section.boundary_distance@{im['index']}"] = Metric(im.get("boundary_distance"), Better.HIGHER)
        values.append(im.get("boundary_distance"))
    ok = finite(values)
    out["cross_section.boundary_distance.min"] = Metric(min(ok) if ok and len(ok) == len(values) else None,
                                                        Better.HIGHER)
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """A contact sheet of the images written by the run (for ``--plots DIR``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    images = section.get("images") or []
    n = max(1, len(images))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.2 * rows), squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        for ax, im in zip(axes.flat, images):
            if os.path.exists(im["path"]):
                ax.imshow(mpimg.imread(im["path"]))
            else:
                ax.text(0.5, 0.5, f"{im['path']}\n(missing)", ha="center", va="center")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="cross_section",
    command="cross-section",
    help="PNG of the predicted class over a 2-D plane through a sample (random or adversarial plane), "
         "with the distance to the nearest boundary in the plane.",
    options=Options,
    required=("images",),
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    check=check,
    needs_data=True,
    metric_patterns=(r"cross_section\.boundary_distance(@\d+|\.min)",),
)
