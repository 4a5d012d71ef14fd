"""Issue 6 benchmark: subject-specific accuracy against MixedLM over many seeds and two time bases.

The accuracy targets of issue 6 compare pyro_dgmm with statsmodels MixedLM
(random intercept and slope in time; fixed effects linear in time or a
natural spline of time, whichever is closer to the truth).  One seed says
little about a 2% margin, so this script fits each simulator (n=800 x 20,
the talk's size) for several seeds, with the time bases ``spline(4)`` (the
default until this comparison) and ``poly(1)`` (linear time, the design of
MixedLM's random effects; the default since), and prints per fit and per (simulator, basis) the RMSE of
the subject-specific means against the truth as a ratio to MixedLM's.

Run:  python benchmarks/mixedlm_seeds.py [--seeds 0 1 2 3 4 5 6 7]
      [--sims linear nonlinear] [--bases spline(4) poly(1)]
"""
from __future__ import annotations

import argparse
import statistics

from common import best_mixedlm, report, rmse, single_thread
from core_accuracy import fit_dgmm


def seed_rows(simulator: str, seed: int, bases: list[str]) -> list[dict]:
    from pyro_dgmm.datasets import SIMULATORS

    sim = SIMULATORS[simulator](n_subjects=800, n_visits=20, seed=seed)
    truth = sim.truth["y_mean"].to_numpy()
    mixedlm, _ = best_mixedlm(sim)
    rows = []
    for basis in bases:
        fitted, seconds, model = fit_dgmm(sim, basis)
        error = rmse(fitted["y_fitted"], truth)
        rows.append({"simulator": simulator, "seed": seed, "time_basis": basis, "rmse": error,
                     "mixedlm_best_rmse": mixedlm, "ratio_to_mixedlm": error / mixedlm,
                     "epochs": model.result_.epochs_run, "seconds": seconds})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["simulator"], r["time_basis"]) for r in rows}):
        ratios = [r["ratio_to_mixedlm"] for r in rows if (r["simulator"], r["time_basis"]) == key]
        out.append({"simulator": key[0], "time_basis": key[1], "fits": len(ratios),
                    "worst_ratio": max(ratios), "median_ratio": statistics.median(ratios),
                    "within_2_percent": sum(r <= 1.02 for r in ratios),
                    "at_least_30_percent_lower": sum(r <= 0.70 for r in ratios)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--sims", nargs="+", default=["linear", "nonlinear"])
    parser.add_argument("--bases", nargs="+", default=["spline(4)", "poly(1)"])
    args = parser.parse_args()
    single_thread()
    rows = [row for simulator in args.sims for seed in args.seeds for row in seed_rows(simulator, seed, args.bases)]
    report(rows, "RMSE of subject-specific means vs truth, as a ratio to the best MixedLM (n=800 x 20)",
           summary(rows), "Per simulator and time basis", "mixedlm_seeds")


if __name__ == "__main__":
    main()
