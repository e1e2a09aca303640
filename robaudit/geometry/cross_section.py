"""Cross-sections of decision cells: the predicted class over a 2-D plane through a sample
(Hoffman et al. 2019, Fig. 1 and App. A, Fig. S1–S2).

The plane is x + s·u + t·v for (s, t) on a square grid of half-width ``extent``, with u, v
orthonormal: two random directions (keyed by dataset index), or u along an ℓ2 PGD perturbation
of x and v random. Every grid point is evaluated, chunk by chunk. The distance to the nearest
boundary *in the plane* starts from the nearest grid point of another class and is refined by
bisection along the rays to the few nearest such points, so it is within the grid spacing of the
true in-plane distance (exact on a linear model up to the bisection tolerance). Points are not
clipped to [0, 1]: the picture is of the function, as in Hoffman et al.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robaudit.geometry.common import attack_labels, forward_chunks, unit_rows

#: Rays refined by bisection: the nearest grid points of another class (their crossings can
#: be nearer than the nearest grid point's own).
RAYS = 16
#: Bisection steps along a ray (relative precision 2⁻³⁰ of the ray's length).
RAY_STEPS = 30
#: ℓ2 PGD steps for the adversarial direction of the plane.
PGD_STEPS = 20


@dataclass(frozen=True)
class Plane2D:
    """An orthonormal pair (u, v) through x, each (D,), and how it was made."""

    u: torch.Tensor
    v: torch.Tensor
    kind: str
    note: str | None = None
    adversarial_distance: float | None = None  # ‖δ‖ of the PGD example, at (‖δ‖, 0) in the plane


@dataclass(frozen=True)
class Section2D:
    """The grid over one plane.

    Attributes:
        coords: (R,) grid coordinates along u and along v (the same for both axes).
        pred: (R, R) predicted class, ``pred[i, j]`` at s = coords[j], t = coords[i].
        top_prob: (R, R) largest softmax probability.
        centre_pred: the predicted class at x itself.
        boundary_distance: in-plane distance to the nearest point of another class; +inf when
            every grid point has the centre's class.
        boundary_point: (s, t) of that point, or None.
    """

    coords: torch.Tensor
    pred: torch.Tensor
    top_prob: torch.Tensor
    centre_pred: int
    boundary_distance: float
    boundary_point: tuple[float, float] | None

    @property
    def classes_seen(self) -> list[int]:
        return sorted(int(c) for c in torch.unique(self.pred).tolist())


def plane_basis(model: nn.Module, x: torch.Tensor, y: int, key: int, kind: str, *, extent: float,
                seed: int, n_classes: int) -> Plane2D:
    """u, v for the sample x (1, *input): random–random, or PGD direction–random (Hoffman App. A).

    The adversarial direction is ℓ2 PGD at eps = extent (no random start, re-checked); when the
    example fails the re-check or does not move, the plane falls back to two random directions
    and says so in ``note``.
    """
    from robaudit.linalg.rng import keyed_normal

    d = math.prod(x.shape[1:])
    g = keyed_normal([key], (2, d), seed=seed, dtype=torch.float64, device=x.device)[0]
    u = g[0] / g[0].norm()
    v = g[1] - (g[1] @ u) * u
    note, adv = None, None
    if kind == "adversarial":
        from robaudit.attacks.run import attack_batch

        with torch.no_grad():
            pred = model(x).argmax(dim=1)
        label = attack_labels(torch.tensor([y], device=x.device), pred)
        x_adv, chk = attack_batch(model, x, label, "pgdl2", norm="l2", eps=extent, steps=PGD_STEPS,
                                  alpha=2.5 * extent / PGD_STEPS, n_classes=n_classes, seed=seed, random_start=False)
        delta, norm = unit_rows((x_adv - x).to(torch.float64))
        if bool(chk.violation[0]) or not float(norm[0]) > 0:
            kind, note = "random", "the PGD example failed the re-check or did not move; random plane used"
        else:
            u, adv = delta[0], float(norm[0])
            v = g[0] - (g[0] @ u) * u
    return Plane2D(u=u, v=v / v.norm(), kind=kind, note=note, adversarial_distance=adv)


def _points(x: torch.Tensor, plane: Plane2D, st: torch.Tensor) -> torch.Tensor:
    """x + s u + t v for rows (s, t) of st (N, 2) → (N, *input) in x's dtype."""
    offs = st.to(torch.float64) @ torch.stack([plane.u, plane.v])
    return (x.reshape(1, -1).to(torch.float64) + offs).to(x.dtype).reshape(-1, *x.shape[1:])


@torch.no_grad()
def cross_section(model: nn.Module, x: torch.Tensor, plane: Plane2D, *, extent: float, resolution: int,
                  chunk: int) -> Section2D:
    """Predicted class and top probability over the grid, and the nearest in-plane boundary.

    Shapes: x (1, *input). ``chunk`` grid points go through the model at a time.
    """
    coords = torch.linspace(-extent, extent, resolution, dtype=torch.float64, device=x.device)
    tt, ss = torch.meshgrid(coords, coords, indexing="ij")
    st = torch.stack([ss.reshape(-1), tt.reshape(-1)], dim=1)
    pred, prob = [], []
    for start in range(0, st.shape[0], chunk):
        logits = model(_points(x, plane, st[start: start + chunk]))
        p = torch.softmax(logits.to(torch.float64), dim=1).max(dim=1)
        pred.append(p.indices)
        prob.append(p.values)
    pred_t = torch.cat(pred).reshape(resolution, resolution)
    prob_t = torch.cat(prob).reshape(resolution, resolution)
    centre = int(model(x).argmax(dim=1)[0])
    dist, point = nearest_boundary(model, x, plane, st, pred_t.reshape(-1), centre, chunk=chunk)
    return Section2D(coords=coords, pred=pred_t, top_prob=prob_t, centre_pred=centre, boundary_distance=dist,
                     boundary_point=point)


@torch.no_grad()
def nearest_boundary(model: nn.Module, x: torch.Tensor, plane: Plane2D, st: torch.Tensor, pred: torch.Tensor,
                     centre: int, *, chunk: int) -> tuple[float, tuple[float, float] | None]:
    """Distance from x to the nearest class change in the plane, refined along the nearest rays.

    Along the ray to each of the ``RAYS`` nearest grid points of another class, bisection finds a
    class change; the smallest is returned with its (s, t). (+inf, None) when there is none.
    """
    other = pred != centre
    if not bool(other.any()):
        return math.inf, None
    cand = st[other]
    radius = cand.norm(dim=1)
    order = radius.argsort()[:RAYS]
    ends = cand[order]
    lo = torch.zeros(ends.shape[0], dtype=torch.float64, device=x.device)
    hi = torch.ones_like(lo)
    for _ in range(RAY_STEPS):
        mid = 0.5 * (lo + hi)
        cls = forward_chunks(model, _points(x, plane, mid[:, None] * ends), chunk).argmax(dim=1)
        changed = cls != centre
        hi = torch.where(changed, mid, hi)
        lo = torch.where(changed, lo, mid)
    dist = hi * ends.norm(dim=1)
    best = int(dist.argmin())
    s, t = (hi[best] * ends[best]).tolist()
    return float(dist[best]), (s, t)


def class_colours(n_classes: int) -> list[tuple[float, float, float]]:
    """One distinct RGB colour per class (tab10 / tab20, then evenly spaced hues)."""
    import matplotlib

    if n_classes <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i)[:3] for i in range(n_classes)]
    if n_classes <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i)[:3] for i in range(n_classes)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(i / n_classes)[:3] for i in range(n_classes)]


def draw(section: Section2D, plane: Plane2D, fh, *, n_classes: int, class_names: list[str] | None,
         title: str) -> None:
    """Write the cross-section as a PNG to the open binary file ``fh``.

    Colour = predicted class; lightness = top softmax probability (white at 1/C, full colour at 1);
    thin contours at top probability 0.5 and 0.9; black dot = x; circle = nearest in-plane boundary;
    cross = the PGD example (adversarial planes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Circle, Patch

    colours = np.array(class_colours(n_classes))
    pred = section.pred.cpu().numpy()
    prob = section.top_prob.cpu().numpy()
    strength = np.clip((prob - 1.0 / n_classes) / (1.0 - 1.0 / n_classes), 0.0, 1.0)
    alpha = (0.2 + 0.8 * strength)[..., None]
    rgb = 1.0 - alpha * (1.0 - colours[pred])
    e = float(section.coords[-1])
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    try:
        ax.imshow(rgb, origin="lower", extent=(-e, e, -e, e), interpolation="nearest")
        c = section.coords.cpu().numpy()
        if prob.min() < 0.9:
            ax.contour(c, c, prob, levels=[lv for lv in (0.5, 0.9) if prob.min() < lv < prob.max()] or None,
                       colors="k", linewidths=0.4, alpha=0.5)
        ax.plot([0], [0], "o", color="black", ms=5)
        if math.isfinite(section.boundary_distance):
            ax.add_patch(Circle((0, 0), section.boundary_distance, fill=False, color="black", lw=1.2, ls="--"))
        if plane.adversarial_distance is not None:
            ax.plot([plane.adversarial_distance], [0], "x", color="black", ms=7, mew=2)
        ax.set_xlim(-e, e)
        ax.set_ylim(-e, e)
        u_name = "PGD direction" if plane.kind == "adversarial" else "random direction 1"
        ax.set_xlabel(f"{u_name} (ℓ2, pixel units)")
        v_name = "random direction 2" if plane.kind == "random" else "random direction"
        ax.set_ylabel(f"{v_name} (ℓ2, pixel units)")
        names = class_names if class_names and len(class_names) >= n_classes else [str(i) for i in range(n_classes)]
        handles = [Patch(color=colours[k], label=f"{k}: {names[k]}") for k in section.classes_seen]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                  title="predicted class")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)
