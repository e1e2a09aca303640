"""Cost of `robaudit linearity` against its floor (issue 12): about one JVP and two forward passes
per (sample, radius, direction), plus the ℓ2 PGD attack that finds the adversarial directions.

Measured in the same run, interleaved, medians of --repeats: the engine (with and without σ_max,
which costs C backward passes per point), the floor (the JVPs and forwards alone, and the attacks
alone), on the sample LeNet and the first --n embedded samples.

    python benchmarks/bench_linearity.py [--n 128] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: shared cores

import argparse
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from robaudit.attacks.run import attack_batch
    from robaudit.data.load import load_data
    from robaudit.geometry.linearity import LinearitySpec, measure
    from robaudit.linalg import JacobianOperator
    from robaudit.linalg.rng import keyed_sphere
    from robaudit.models.load import load_model

    model = load_model(None).module.eval()
    data = load_data(None)
    x, y, idx = data.images(slice(0, args.n)), data.y[: args.n], data.indices[: args.n]
    radii = (0.1, 0.25, 0.5, 1.0, 2.0)
    steps = 10
    spec = LinearitySpec(radii=radii, pgd_steps=steps, sigma=True)
    spec_nosig = LinearitySpec(radii=radii, pgd_steps=steps, sigma=False)
    d = x[0].numel()

    def floor_products() -> None:
        # one JVP and two forwards per (sample, radius, direction kind)
        op = JacobianOperator(model, x)
        z = keyed_sphere(idx, (d,), dtype=x.dtype)
        for _ in range(2 * len(radii)):
            op.jvp(z)
        op.release()
        with torch.no_grad():
            for r in radii:
                for _ in range(2):
                    model(x)
                    model(x + r * z.reshape(x.shape))

    def floor_attack() -> None:
        for r in radii:
            attack_batch(model, x, y, "pgdl2", norm="l2", eps=r, steps=steps, alpha=2.5 * r / steps,
                         n_classes=10, random_start=False)

    jobs = {"engine (σ_max on)": lambda: measure(model, model, x, y, idx, spec),
            "engine (σ_max off)": lambda: measure(model, model, x, y, idx, spec_nosig),
            "floor: JVPs + forwards": floor_products,
            "floor: PGD attacks": floor_attack}
    for job in jobs.values():  # warm-up (forward-mode AD compiles on first use)
        job()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med["floor: JVPs + forwards"] + med["floor: PGD attacks"]
    print(f"machine: {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    print(f"sample LeNet, n = {args.n}, radii {radii}, 2 direction kinds, PGD {steps} steps; "
          f"medians of {args.repeats}")
    for name, value in med.items():
        print(f"  {name:24s} {value:7.3f} s")
    print(f"floor (JVPs + forwards + attacks): {floor:.3f} s")
    print(f"engine / floor: {med['engine (σ_max on)'] / floor:.2f} with σ_max, "
          f"{med['engine (σ_max off)'] / floor:.2f} without")


if __name__ == "__main__":
    main()
