"""Deviation from local linearity along random and adversarial directions (Roth et al. 2019, Sec. 5.3, Fig. 2).

For a feature map φ (the logits, or a named layer's output), a sample x, a unit direction z and a
radius r:

    deviation(r) = ‖φ(x + r z) − φ(x) − r · J_φ(x) z‖₂,
    relative(r)  = deviation(r) / ‖φ(x + r z) − φ(x)‖₂,

with J_φ(x) z from one Jacobian-vector product (never a dense J): the linear model is exact in r,
so a fixed direction needs one JVP for every radius. σ_max(J_f(x + r z)) of the logits is taken at
the same points (Fig. 2 right). Random directions are uniform on the sphere and keyed by dataset
index; adversarial directions are ℓ2 PGD at radius r (no random start, re-checked), normalised.

The per-sample **linearity radius** is the smallest radius at which the relative deviation exceeds
``tol``: the first grid radius where it does brackets the crossing, then bisection along one ray
refines it (random: the sample's random direction between the previous and that grid radius;
adversarial: the PGD direction found at that radius, between 0 and it). It is +inf when the relative
deviation stays ≤ tol at every grid radius ("> max radius"), and 0 when it exceeds tol at every
radius tried down to the bisection's resolution: φ has a kink exactly at x along z (a ReLU input or a
max-pool tie at exactly x, common on images with constant backgrounds). Bisection stops where float
roundoff would swamp the relative deviation (:func:`noise_floor`).

Points x + r z are not clipped to [0, 1]: linearity is a property of the function around x, and a
random direction of radius r leaves the box anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robaudit.geometry.common import attack_labels, forward_chunks, unit_rows

#: The direction kinds, in the order of the ``kind`` axis of :class:`LinearityResult`.
KINDS = ("random", "adversarial")
#: Rows per chunk when φ is evaluated on all points of a batch at once.
POINT_CHUNK = 2048


@dataclass(frozen=True)
class LinearitySpec:
    """What to measure.

    Attributes:
        radii: increasing positive ℓ2 radii (pixel units).
        tol: relative deviation above which the linear model is said to fail.
        bisection_steps: halvings of the bracketing interval for the linearity radius.
        pgd_steps: ℓ2 PGD steps for the adversarial directions (0: random directions only).
        pgd_alpha: PGD step size as a multiple of the radius (alpha = pgd_alpha · r / steps).
        sigma: whether σ_max(J_f(x + r z)) is computed (C VJPs per point).
        seed: base seed of the random directions (keyed by dataset index).
    """

    radii: tuple[float, ...]
    tol: float = 0.1
    bisection_steps: int = 10
    pgd_steps: int = 10
    pgd_alpha: float = 2.5
    sigma: bool = True
    seed: int = 0

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.pgd_steps > 0 else KINDS[:1]


@dataclass(frozen=True)
class LinearityResult:
    """One batch, as tensors. K = number of direction kinds, R = number of radii.

    Attributes:
        pred: (B,) predicted class at x.
        deviation, relative, sigma_max: (B, K, R); NaN where not measured (untrusted adversarial
            direction, or σ_max switched off).
        trusted: (B, K, R) bool: the direction was usable (random: always; adversarial: the PGD
            example passed the re-check and moved).
        radius: (B, K) linearity radius per kind; +inf when never exceeded, NaN when no usable direction.
        precision: (B, K) width of the final bisection interval (the radius is within it).
    """

    pred: torch.Tensor
    deviation: torch.Tensor
    relative: torch.Tensor
    sigma_max: torch.Tensor
    trusted: torch.Tensor
    radius: torch.Tensor
    precision: torch.Tensor


def deviation_of(phi_pts: torch.Tensor, phi_x: torch.Tensor, jz: torch.Tensor,
                 r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(deviation, relative) of points x + r z from their values φ(x + r z).

    Shapes: phi_pts, phi_x, jz (N, K); r (N,) → two (N,) tensors. relative is 0 where both norms
    are 0, +inf where only the change ‖φ(x + r z) − φ(x)‖ is 0.
    """
    change = phi_pts - phi_x
    dev = (change - r[:, None] * jz).norm(dim=1)
    size = change.norm(dim=1)
    rel = torch.where(size > 0, dev / size.clamp_min(torch.finfo(size.dtype).tiny),
                      torch.where(dev > 0, torch.full_like(dev, math.inf), torch.zeros_like(dev)))
    return dev, rel


def first_exceeding(relative: torch.Tensor, tol: float) -> torch.Tensor:
    """Index of the first radius with relative > tol per row, or R when none. Shapes: (B, R) → (B,)."""
    over = relative > tol  # NaN compares False: an unmeasured radius never brackets
    r = relative.shape[1]
    idx = torch.arange(r, device=relative.device).expand_as(over)
    return torch.where(over, idx, torch.full_like(idx, r)).amin(dim=1)


#: Roundoff of a forward pass, in units of eps·(‖φ(x)‖ + 1): below the radius where it reaches tol of
#: the linear change, the relative deviation is noise (measured: float32 LeNet, against float64).
ROUNDOFF = 10.0


def noise_floor(phi_x: torch.Tensor, jz: torch.Tensor, tol: float) -> torch.Tensor:
    """Smallest radius at which a relative deviation of ``tol`` is above float roundoff. (B, K), (B, K) → (B,)."""
    eps = torch.finfo(phi_x.dtype).eps
    return ROUNDOFF * eps * (phi_x.norm(dim=1) + 1) / (tol * jz.norm(dim=1).clamp_min(torch.finfo(jz.dtype).tiny))


@torch.no_grad()
def bisect_radius(phi: nn.Module, x: torch.Tensor, z: torch.Tensor, phi_x: torch.Tensor, jz: torch.Tensor,
                  lo: torch.Tensor, hi: torch.Tensor, tol: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink [lo, hi] (relative(lo) ≤ tol < relative(hi) along x + r z) up to ``steps`` times.

    An interval stops shrinking once narrower than the roundoff floor (:func:`noise_floor`).
    Shapes: x (B, *input); z (B, D) unit; phi_x, jz (B, K); lo, hi (B,) finite.
    Returns: (radius, width): ``hi`` after the last step, or 0 when no radius tried was within
    tol (``lo`` still 0: no linear region at this resolution, e.g. a ReLU or max-pool tie exactly
    at x); and ``hi − lo``, the interval that holds the crossing.
    """
    lo, hi = lo.clone(), hi.clone()
    floor = noise_floor(phi_x, jz, tol)
    for _ in range(steps):
        active = (hi - lo) > floor
        if not bool(active.any()):
            break
        mid = 0.5 * (lo + hi)
        pts = x + (mid[:, None] * z).reshape(x.shape)
        _, rel = deviation_of(phi(pts), phi_x, jz, mid)
        over = rel > tol
        hi = torch.where(active & over, mid, hi)
        lo = torch.where(active & ~over, mid, lo)
    return torch.where(lo > 0, hi, torch.zeros_like(hi)), hi - lo


def adversarial_directions(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, spec: LinearitySpec,
                           *, n_classes: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Unit ℓ2 PGD directions at each radius, through the re-checked attack path.

    Returns: (directions, trusted): per radius a (B, D) unit tensor and a (B,) bool mask (False:
    the example broke the box or the budget, or did not move).
    """
    from robaudit.attacks.run import attack_batch

    dirs, ok = [], []
    for r in spec.radii:
        x_adv, chk = attack_batch(model, x, labels, "pgdl2", norm="l2", eps=r, steps=spec.pgd_steps,
                                  alpha=spec.pgd_alpha * r / spec.pgd_steps, n_classes=n_classes,
                                  seed=spec.seed, random_start=False)  # no random start: batch-independent
        z, norm = unit_rows((x_adv - x).to(x.dtype))
        dirs.append(z)
        ok.append((~chk.violation.to(x.device)) & (norm > 0) & torch.isfinite(norm))
    return dirs, ok


def measure(model: nn.Module, phi: nn.Module, x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor,
            spec: LinearitySpec) -> LinearityResult:
    """Deviations, σ_max and linearity radii for one batch (Roth et al. 2019, Sec. 5.3).

    Args:
        model: the logits model (eval mode), used for PGD and σ_max.
        phi: the feature map whose linearity is measured (``model`` itself for the logits).
        x: (B, *input) inputs in [0, 1]; y: (B,) labels (−1 unknown); keys: (B,) dataset indices.
    """
    from robaudit.linalg import JacobianOperator, sigma_max
    from robaudit.linalg.rng import keyed_sphere

    b, d = x.shape[0], math.prod(x.shape[1:])
    radii = torch.tensor(spec.radii, dtype=x.dtype, device=x.device)
    n_r = len(spec.radii)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(dim=1)
    z_rand = keyed_sphere(keys, (d,), seed=spec.seed, dtype=x.dtype, device=x.device)
    # directions per (kind, radius): random repeats one direction; adversarial has one per radius
    dirs = [[z_rand] * n_r]
    trusted = [[torch.ones(b, dtype=torch.bool, device=x.device)] * n_r]
    if spec.pgd_steps > 0:
        adv, ok = adversarial_directions(model, x, attack_labels(y, pred), spec, n_classes=int(logits.shape[1]))
        dirs.append(adv)
        trusted.append(ok)
    op = JacobianOperator(phi, x)
    phi_x = op.value
    jz_rand = op.jvp(z_rand)
    jzs = [[jz_rand] * n_r] + ([[op.jvp(z) for z in dirs[1]]] if len(dirs) > 1 else [])
    op.release()

    n_k = len(dirs)
    z_all = torch.stack([torch.stack(row, dim=1) for row in dirs], dim=1)        # (B, K, R, D)
    jz_all = torch.stack([torch.stack(row, dim=1) for row in jzs], dim=1)        # (B, K, R, F)
    ok_all = torch.stack([torch.stack(row, dim=1) for row in trusted], dim=1)    # (B, K, R)
    r_all = radii.expand(b, n_k, n_r)
    pts = (x.reshape(b, 1, 1, d) + r_all[..., None] * z_all).reshape(b * n_k * n_r, *x.shape[1:])
    phi_pts = forward_chunks(phi, pts, POINT_CHUNK)
    phi_rep = phi_x[:, None, None, :].expand(b, n_k, n_r, -1).reshape(b * n_k * n_r, -1)
    dev, rel = deviation_of(phi_pts, phi_rep, jz_all.reshape(b * n_k * n_r, -1), r_all.reshape(-1))
    nan = torch.full((b, n_k, n_r), math.nan, dtype=x.dtype, device=x.device)
    dev = torch.where(ok_all, dev.reshape(b, n_k, n_r), nan)
    rel = torch.where(ok_all, rel.reshape(b, n_k, n_r), nan)
    sig = nan.clone()
    if spec.sigma:
        sig = torch.where(ok_all, sigma_max(model, pts).reshape(b, n_k, n_r).to(x.dtype), nan)

    radius = torch.full((b, n_k), math.inf, dtype=x.dtype, device=x.device)
    precision = torch.zeros((b, n_k), dtype=x.dtype, device=x.device)
    rows = torch.arange(b, device=x.device)
    for k in range(n_k):
        first = first_exceeding(rel[:, k], spec.tol)
        hit = first < n_r
        if k > 0:  # no trusted adversarial direction at any radius: nothing to report
            radius[:, k] = torch.where(ok_all[:, k].any(dim=1), radius[:, k], torch.full_like(radius[:, k], math.nan))
        if not bool(hit.any()):
            continue
        sel = rows[hit]
        j = first[hit]
        hi = radii[j]
        if k == 0:  # one ray: the previous grid radius is known to be within tol
            lo = torch.where(j > 0, radii[(j - 1).clamp_min(0)], torch.zeros_like(hi))
        else:  # the direction changes with the radius: bracket from 0 along the PGD direction at r_j
            lo = torch.zeros_like(hi)
        found, width = bisect_radius(phi, x[sel], z_all[sel, k, j], phi_x[sel], jz_all[sel, k, j], lo, hi,
                                     spec.tol, spec.bisection_steps)
        radius[sel, k] = found
        precision[sel, k] = width
    return LinearityResult(pred=pred, deviation=dev, relative=rel, sigma_max=sig, trusted=ok_all,
                           radius=radius, precision=precision)
