"""Distances from a sample to the decision boundary, four ways (pure torch).

* :func:`sphere_search`: M points uniform on the ℓ2 sphere of radius r around x, all M in one
  forward; binary search on r for the smallest radius at which any of them changes the class
  (Johansson et al. 2022, Sec. 4.2.3, Fig. 4).
* :func:`line_search`: the smallest step along K random unit directions that changes the
  class, by bracketing on a geometric grid and then bisection (Hoffman et al. 2019, App. F(i)).
* :func:`refine_segment`: pulls a verified adversarial point back along the segment from x to
  the boundary (bisection), so an attack's overshoot (DeepFool's 2 %) does not count as distance.
* :func:`certified_radius`: margin / (√2 · L), a lower bound on the distance for any L that
  bounds the ℓ2 Lipschitz constant of the logits (Tsuzuku et al. 2018).

Points are clipped to the image box [0,1] before they are evaluated (Hoffman et al. App. F crop
the same way). A point at radius r therefore moves by at most r, so both searches return upper
bounds on the distance to the nearest boundary inside the box.

Every random direction is keyed by (seed, dataset index) (:mod:`robaudit.linalg.rng`): a sample
gets the same directions whatever the batch it is in. The directions are the same at every radius
(concentric spheres), so for a convex cell the test "some point flips" is monotone in r and the
binary search is exact up to ``precision``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Model = Callable[[torch.Tensor], torch.Tensor]

# Bisection steps of refine_segment: 2^-24 of the segment, below float32 resolution of a pixel step.
REFINE_ITERS = 24
# Points per forward pass: on CPU a LeNet forward costs ~2× more per point at 1024 points than at
# 128–256 (the activations leave the cache), so spheres are packed into forwards of about this size.
FORWARD_POINTS = 256
# Geometric bracketing grid of the line search: max_radius · 2^-k, k = 0 … LINE_GRID-1.
LINE_GRID = 8


@torch.no_grad()
def predict(model: Model, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """argmax class of ``points`` (N, *input), ``chunk`` points per forward; (N,) long.

    No autograd: a search only needs classes, and recording a graph per forward costs as much as the
    small models' arithmetic.
    """
    with torch.inference_mode():
        out = [model(points[s: s + chunk]).argmax(dim=1) for s in range(0, points.shape[0], max(1, chunk))]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=points.device)


def bisection_steps(width: float, precision: float) -> int:
    """Halvings needed to bring an interval of ``width`` down to ``precision``."""
    if width <= precision:
        return 0
    return int(math.ceil(math.log2(width / precision)))


@dataclass(frozen=True)
class SearchResult:
    """Per-sample result of a search (all (B,) tensors).

    Attributes:
        distance: smallest radius / step found to change the class (float64; NaN: none within max_radius).
        lower: the largest radius / step known not to flip (distance − lower ≤ precision where found).
        forwards: model evaluations (points) spent on the sample.
    """

    distance: torch.Tensor
    lower: torch.Tensor
    forwards: torch.Tensor


def sphere_directions(keys: torch.Tensor, samples: int, dim: int, *, seed: int, dtype: torch.dtype,
                      device: torch.device | str) -> torch.Tensor:
    """``samples`` unit directions per key, uniform on S^{dim-1}; (B, samples, dim)."""
    from robaudit.linalg.rng import keyed_sphere

    return keyed_sphere(keys, (samples, dim), seed=seed, dtype=dtype, device=device)


def _flips_at(model: Model, x: torch.Tensor, label: torch.Tensor, dirs: torch.Tensor, radius: torch.Tensor,
              chunk: int) -> torch.Tensor:
    """Whether clip(x + r·u) changes the class, for every direction; (B, M) bool.

    Shapes: x (B, *input); dirs (B, M, D); radius (B,).
    """
    b, m, d = dirs.shape
    flat = x.reshape(b, 1, d)
    pts = (flat + radius.to(dirs.dtype)[:, None, None] * dirs).clamp_(0, 1)
    pred = predict(model, pts.reshape(b * m, *x.shape[1:]), chunk).reshape(b, m)
    return pred != label[:, None]


def sphere_search(model: Model, x: torch.Tensor, label: torch.Tensor, keys: torch.Tensor, *, seed: int,
                  samples: int, precision: float, max_radius: float, max_points: int = 8192,
                  chunk: int | None = None) -> SearchResult:
    """Smallest sphere radius at which one of ``samples`` uniform points changes the class.

    First the sphere of radius ``max_radius`` is checked; samples with no flip there get NaN
    ("> max"). For the rest, bisection on [0, max_radius] until the bracket is ≤ ``precision``
    (absolute, ℓ2 pixel units); the reported radius is the upper end, a radius where a point
    verifiably flipped (Johansson et al. 2022, Sec. 4.2.3).

    Args:
        label: the class the sample is predicted as (flips are judged against it).
        keys: (B,) dataset indices keying the directions.
        max_points: points held at once; samples are searched in groups of
            max(1, max_points // samples), so one sphere (M points) is always one forward.
        chunk: points per forward [default: as many whole spheres as fit FORWARD_POINTS, at least
            one]. ``chunk=1`` evaluates point by point (the benchmark's baseline).
    Shapes: x (B, *input); label, keys (B,).
    """
    group = max(1, max_points // samples)
    parts = [_sphere_group(model, x[s: s + group], label[s: s + group], keys[s: s + group], seed=seed,
                           samples=samples, precision=precision, max_radius=max_radius, chunk=chunk)
             for s in range(0, x.shape[0], group)]
    if not parts:
        empty = torch.zeros(0, dtype=torch.float64, device=x.device)
        return SearchResult(empty, empty, torch.zeros(0, dtype=torch.long))
    return SearchResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("distance", "lower", "forwards")))


def _sphere_group(model: Model, x: torch.Tensor, label: torch.Tensor, keys: torch.Tensor, *, seed: int,
                  samples: int, precision: float, max_radius: float, chunk: int | None) -> SearchResult:
    b = x.shape[0]
    d = x[0].numel()
    dirs = sphere_directions(keys, samples, d, seed=seed, dtype=x.dtype, device=x.device)
    chunk = chunk or max(1, FORWARD_POINTS // samples) * samples
    hi = torch.full((b,), float(max_radius), dtype=torch.float64, device=x.device)
    lo = torch.zeros(b, dtype=torch.float64, device=x.device)
    found = _flips_at(model, x, label, dirs, hi, chunk).any(dim=1)
    steps = bisection_steps(max_radius, precision)
    act = found.nonzero().flatten()
    for _ in range(steps):
        if act.numel() == 0:
            break
        mid = (lo[act] + hi[act]) / 2
        hit = _flips_at(model, x[act], label[act], dirs[act], mid, chunk).any(dim=1)
        hi[act] = torch.where(hit, mid, hi[act])
        lo[act] = torch.where(hit, lo[act], mid)
    nan = torch.full_like(hi, float("nan"))
    forwards = torch.full((b,), samples, dtype=torch.long) + found.cpu().long() * samples * steps
    return SearchResult(distance=torch.where(found, hi, nan), lower=torch.where(found, lo, hi), forwards=forwards)


def line_search(model: Model, x: torch.Tensor, label: torch.Tensor, keys: torch.Tensor, *, seed: int,
                directions: int, precision: float, max_radius: float, chunk: int = FORWARD_POINTS) -> SearchResult:
    """Smallest step along ``directions`` random unit directions that changes the class.

    Each line is bracketed on the grid max_radius·2^-k (k = LINE_GRID-1 … 0, the first flipping
    step from the small end, as when the noise is "cranked up" in Hoffman et al. 2019, App. F(i)),
    then bisected down to ``precision``. The result is the minimum over the lines (NaN: no line
    flips within ``max_radius``).

    Shapes: x (B, *input); label, keys (B,).
    """
    from robaudit.linalg.rng import keyed_sphere

    b, d, k = x.shape[0], x[0].numel(), directions
    dirs = keyed_sphere(keys, (k, d), seed=seed, dtype=x.dtype, device=x.device).reshape(b * k, d)
    base = x.reshape(b, 1, d).expand(b, k, d).reshape(b * k, d)
    lab = label.repeat_interleave(k)
    grid = torch.tensor([max_radius * 2.0 ** (-j) for j in range(LINE_GRID - 1, -1, -1)], dtype=torch.float64,
                        device=x.device)  # ascending

    def flips(rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pts = (base[rows] + t.to(x.dtype)[:, None] * dirs[rows]).clamp_(0, 1)
        return predict(model, pts.reshape(-1, *x.shape[1:]), chunk) != lab[rows]

    n = b * k
    rows = torch.arange(n, device=x.device)
    g = grid.numel()
    hit = flips(rows.repeat_interleave(g), grid.repeat(n)).reshape(n, g)
    any_hit = hit.any(dim=1)
    first = torch.where(any_hit, hit.long().argmax(dim=1), torch.zeros_like(rows))
    hi = torch.where(any_hit, grid[first], torch.full((n,), math.inf, dtype=torch.float64, device=x.device))
    lo = torch.where(first > 0, grid[(first - 1).clamp_min(0)], torch.zeros_like(hi))
    lo = torch.where(any_hit, lo, torch.full_like(hi, float(max_radius)))
    act = any_hit.nonzero().flatten()
    steps = bisection_steps(float((hi[act] - lo[act]).max()) if act.numel() else 0.0, precision)
    for _ in range(steps):
        act = act[(hi[act] - lo[act]) > precision]
        if act.numel() == 0:
            break
        mid = (lo[act] + hi[act]) / 2
        h = flips(act, mid)
        hi[act] = torch.where(h, mid, hi[act])
        lo[act] = torch.where(h, lo[act], mid)
    best = hi.reshape(b, k).min(dim=1)
    dist = torch.where(torch.isfinite(best.values), best.values, torch.full_like(best.values, float("nan")))
    lower = lo.reshape(b, k).gather(1, best.indices[:, None]).squeeze(1)
    forwards = torch.full((b,), k * (g + steps), dtype=torch.long)  # an upper count (converged lines stop early)
    return SearchResult(distance=dist, lower=lower, forwards=forwards)


# Overshoot factors tried on an attack's output that stopped just short of the boundary.
EXTEND_FACTORS = (1.001, 1.01, 1.05, 1.2)
# Outward steps (each 4x the last, from the bisection's last bracket) for refined points that flip back.
REFINE_BACKOFF = 12


@torch.no_grad()
def extend_segment(model: Model, x: torch.Tensor, x_adv: torch.Tensor, label: torch.Tensor,
                   ok: torch.Tensor, factors: tuple[float, ...] = EXTEND_FACTORS) -> tuple[torch.Tensor, torch.Tensor]:
    """Push outputs that stopped on the boundary just across it: clip(x + s·(x_adv − x)) for the
    first s in ``factors`` that changes the class.

    DeepFool stops once its own batch-of-one forward says the class changed, with a 2 % overshoot
    of the last (tiny) step; re-evaluated in another batch the point can sit on the other side of
    a near-tie. Returns (points, now adversarial); samples with ``ok`` are left as they are.

    Shapes: x, x_adv (B, *input); label, ok (B,).
    """
    out, done = x_adv.clone(), ok.clone()
    moved = (x_adv - x).flatten(1).abs().amax(dim=1) > 0
    for s in factors:
        act = (~done & moved).nonzero().flatten()
        if act.numel() == 0:
            break
        pts = (x[act] + s * (x_adv[act] - x[act])).clamp(0, 1)
        hit = model(pts).argmax(dim=1) != label[act]
        out[act[hit]] = pts[hit]
        done[act[hit]] = True
    return out, done


@torch.no_grad()
def refine_segment(model: Model, x: torch.Tensor, x_adv: torch.Tensor, label: torch.Tensor,
                   ok: torch.Tensor, iters: int = REFINE_ITERS) -> torch.Tensor:
    """The point closest to x on the segment x → x_adv that still changes the class (bisection).

    For samples with ``ok`` (x_adv verified adversarial) returns x + t·(x_adv − x) with the
    smallest flipping t found; others are returned unchanged. Points stay in [0,1] (convex
    combination of two points of the box).

    Shapes: x, x_adv (B, *input); label, ok (B,).
    """
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    lo = torch.zeros(b, dtype=torch.float64, device=x.device)
    hi = torch.ones(b, dtype=torch.float64, device=x.device)
    delta = x_adv - x
    act = ok.nonzero().flatten()
    if act.numel() == 0:
        return x_adv
    for _ in range(iters):
        mid = (lo[act] + hi[act]) / 2
        pts = x[act] + mid.to(x.dtype).view((-1,) + view[1:]) * delta[act]
        h = model(pts).argmax(dim=1) != label[act]
        hi[act] = torch.where(h, mid, hi[act])
        lo[act] = torch.where(h, lo[act], mid)
    out = x_adv.clone()
    out[act] = (x[act] + hi[act].to(x.dtype).view((-1,) + view[1:]) * delta[act]).clamp(0, 1)
    # A point this close to the boundary can flip back when evaluated in another batch (float
    # reductions differ by batch composition). Check it the way the re-check will (the whole batch)
    # and step the failing ones outward, doubling the step, until they hold; t = 1 is x_adv itself.
    step = (hi - lo).clamp_min(1e-6)
    for _ in range(REFINE_BACKOFF):
        held = model(out).argmax(dim=1) != label
        bad = act[~held[act]]
        if bad.numel() == 0:
            break
        hi[bad] = torch.clamp(hi[bad] + step[bad], max=1.0)
        step[bad] = step[bad] * 4
        out[bad] = (x[bad] + hi[bad].to(x.dtype).view((-1,) + view[1:]) * delta[bad]).clamp(0, 1)
    return out


def margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """z_label − max_{j≠label} z_j in float64; (B,)."""
    z = logits.to(torch.float64)
    own = z.gather(1, label[:, None]).squeeze(1)
    other = z.scatter(1, label[:, None], -math.inf).amax(dim=1)
    return own - other


def certified_radius(margins: torch.Tensor, lipschitz: torch.Tensor | float) -> torch.Tensor:
    """margin / (√2 · L): no ℓ2 perturbation smaller than this changes the class (Tsuzuku et al. 2018).

    Each logit difference z_y − z_j is √2·L-Lipschitz when the logits are L-Lipschitz, so it
    cannot reach 0 within margin / (√2 L). ``lipschitz`` is a global scalar or a (B,) local bound.
    """
    lip = torch.as_tensor(lipschitz, dtype=torch.float64, device=margins.device)
    return margins.to(torch.float64) / (math.sqrt(2.0) * lip)


def sphere_hit_probability(distance: float, radius: float, dim: int, samples: int) -> float:
    """P(some of ``samples`` uniform points on the radius-r sphere in R^dim lies beyond a hyperplane
    at ``distance`` from the centre) = 1 − (1 − p)^M, with p the normalised cap area
    p = ½ · I_{1 − (d/r)²}((dim−1)/2, ½) (regularised incomplete beta; 0 when r ≤ d).

    The closed form the sphere search is tested against; needs scipy.
    """
    from scipy.special import betainc

    if radius <= distance:
        return 0.0
    p = 0.5 * float(betainc((dim - 1) / 2.0, 0.5, 1.0 - (distance / radius) ** 2))
    return 1.0 - (1.0 - p) ** samples
