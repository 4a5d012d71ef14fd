"""Issue 6 benchmark: how the stopping rule's patience trades epochs for robustness.

For the nonlinear and linear simulators (n=800 x 20, the talk's size) and
several seeds it fits pyro_dgmm with default settings except ``patience``
and prints, per fit, the epochs run, the epoch of the first held-out plateau
and the RMSE of the subject-specific means against the simulation truth;
then, per simulator and patience, the worst and median RMSE and the median
epochs.  A fit that stops inside the phase where a latent direction is
quiet (see docs/fitting.md) shows up as an outlying RMSE.

Run:  python benchmarks/stopping_rule.py [--seeds 0 1 2 3 4 5]
      [--patience 5 6] [--sims nonlinear linear]
"""
from __future__ import annotations

import argparse
import statistics

from common import report, rmse, single_thread
from core_accuracy import fit_dgmm


def fit_row(simulator: str, seed: int, patience: int) -> dict:
    from pyro_dgmm.datasets import SIMULATORS

    sim = SIMULATORS[simulator](n_subjects=800, seed=seed)
    fitted, seconds, model = fit_dgmm(sim, patience=patience)
    return {"simulator": simulator, "seed": seed, "patience": patience, "epochs": model.result_.epochs_run,
            "plateau_epoch": model.result_.annealed_at,
            "rmse": rmse(fitted["y_fitted"], sim.truth["y_mean"].to_numpy()), "seconds": seconds}


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["simulator"], r["patience"]) for r in rows}):
        group = [r for r in rows if (r["simulator"], r["patience"]) == key]
        errors = [r["rmse"] for r in group]
        out.append({"simulator": key[0], "patience": key[1], "fits": len(group), "worst_rmse": max(errors),
                    "median_rmse": statistics.median(errors),
                    "median_epochs": statistics.median(r["epochs"] for r in group)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--patience", type=int, nargs="+", default=[5, 6])
    parser.add_argument("--sims", nargs="+", default=["nonlinear", "linear"])
    args = parser.parse_args()
    single_thread()
    rows = [fit_row(sim, seed, patience) for sim in args.sims for seed in args.seeds for patience in args.patience]
    report(rows, "default fit by patience (n=800 x 20, one torch thread)", summary(rows),
           "per simulator and patience", "stopping_rule")


if __name__ == "__main__":
    main()
