"""Issue 6 benchmark: cost of fitting, and how it grows with the number of subjects.

1. Pyro overhead: seconds per optimisation step of the DGMM objective
   through Pyro (``TraceMeanField_ELBO.differentiable_loss`` on the model and
   guide) against the same objective written in plain torch on the same
   modules (reparameterised draw of b, masked log-likelihood, closed-form KL),
   in the same run, for several batch sizes.  Medians of repeats.
2. Scaling: seconds per epoch and peak resident memory of a fit of the
   nonlinear simulator (20 visits) with 800, 8,000 and 80,000 subjects, each
   in a fresh process; time per subject should stay flat (linear growth).
3. n=800 x 20 fit time and accuracy with default settings (the talk's size).

Every figure is CPU, one torch thread; GPU figures need a machine with CUDA
(``--device cuda``).

Run:  python benchmarks/speed_scale.py [--sizes 800 8000 80000] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import print_table, single_thread, write_json

ROOT = Path(__file__).resolve().parent.parent


def plain_torch_loss(model, guide, batch, num_subjects: int):
    """The meanfield negative ELBO of the model, written without Pyro."""
    import torch

    from pyro_dgmm.posterior import observed_log_likelihood

    q = guide.posterior(batch)
    b = q.rsample()
    loglik = observed_log_likelihood(model, b, batch)
    kl = 0.5 * (q.scale_tril.pow(2).sum((-1, -2)) + q.loc.pow(2).sum(-1) - q.loc.shape[-1]
                - 2 * torch.log(torch.diagonal(q.scale_tril, dim1=-2, dim2=-1)).sum(-1))
    return -(num_subjects / batch.num_subjects) * (loglik - kl).sum()


def overhead_rows(device: str, repeats: int = 5, steps: int = 20) -> list[dict]:
    import torch
    from pyro.infer import TraceMeanField_ELBO

    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_nonlinear

    sim = simulate_nonlinear(n_subjects=4096, seed=0)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
    est.fit(sim.data, max_epochs=1, progress=False)
    model, guide = est.model_.to(device), est.guide_.to(device)
    data = est.data_.to(device)
    elbo = TraceMeanField_ELBO(max_plate_nesting=2, vectorize_particles=True)
    params = list(model.parameters()) + list(guide.parameters())
    rows = []
    for batch_size in (64, 512, 4096):
        batch = data.subset(slice(0, batch_size))
        losses = {"pyro": lambda: elbo.differentiable_loss(model, guide, batch, num_subjects=data.num_subjects),
                  "plain torch": lambda: plain_torch_loss(model, guide, batch, data.num_subjects)}
        timings = {name: [] for name in losses}
        for _ in range(repeats):
            for name, loss_fn in losses.items():  # interleaved, so load affects both alike
                start = time.perf_counter()
                for _ in range(steps):
                    loss = loss_fn()
                    torch.autograd.grad(loss, params, allow_unused=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                timings[name].append((time.perf_counter() - start) / steps)
        pyro_s, torch_s = statistics.median(timings["pyro"]), statistics.median(timings["plain torch"])
        rows.append({"batch_subjects": batch_size, "pyro_ms_per_step": 1e3 * pyro_s,
                     "plain_torch_ms_per_step": 1e3 * torch_s, "ratio_pyro_to_torch": pyro_s / torch_s,
                     "device": device})
    return rows


def scaling_child(n_subjects: int, epochs: int, device: str) -> None:
    """Run in a fresh process: fit for ``epochs`` epochs, print JSON."""
    import resource

    single_thread()
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_nonlinear

    start = time.perf_counter()
    sim = simulate_nonlinear(n_subjects=n_subjects, seed=0)
    simulate_s = time.perf_counter() - start
    est = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
    est.fit(sim.data, max_epochs=epochs, progress=False, device=device, kl_warmup_epochs=1,
            linear_warmup_epochs=0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"subjects": n_subjects, "rows": len(sim.data), "epochs": est.result_.epochs_run,
                      "seconds_per_epoch": est.result_.seconds / est.result_.epochs_run,
                      "simulate_seconds": simulate_s, "peak_rss_mb": peak_mb, "device": device}))


def scaling_rows(sizes: list[int], epochs: int, device: str) -> list[dict]:
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--epochs", str(epochs),
                              "--device", device], capture_output=True, text=True, check=True,
                             env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": ""})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["microseconds_per_subject_epoch"] = 1e6 * row["seconds_per_epoch"] / n
        rows.append(row)
    return rows


def default_fit_rows(device: str) -> list[dict]:
    import numpy as np

    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_nonlinear

    sim = simulate_nonlinear(seed=0)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
    start = time.perf_counter()
    est.fit(sim.data, progress=False, device=device)
    seconds = time.perf_counter() - start
    fitted = est.fitted_values()["y_fitted"].to_numpy()
    rmse = float(np.sqrt(np.mean((fitted - sim.truth["y_mean"].to_numpy()) ** 2)))
    return [{"subjects": 800, "visits": 20, "fit_seconds": seconds, "epochs": est.result_.epochs_run,
             "rmse_vs_truth": rmse, "device": device}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 8000, 80000])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        scaling_child(args.child, args.epochs, args.device)
        return
    single_thread()
    rows = default_fit_rows(args.device)
    print_table(rows, "Default fit, nonlinear simulator n=800 x 20")
    write_json(rows, "speed_default_fit")
    rows = overhead_rows(args.device)
    print_table(rows, "Seconds per step: Pyro ELBO vs the same loss in plain torch")
    write_json(rows, "speed_pyro_overhead")
    rows = scaling_rows(args.sizes, args.epochs, args.device)
    print_table(rows, f"Scaling in subjects ({args.epochs} epochs each, fresh process)")
    write_json(rows, "speed_scaling")


if __name__ == "__main__":
    main()
