"""Issue 6 benchmark: how the stopping rule trades epochs for accuracy and robustness.

For the nonlinear and linear simulators (n=800 x 20, the talk's size) and
several seeds it fits pyro_dgmm with default settings except the rule's
``patience`` and ``anneal_fraction`` (``--rules``, each ``patience:fraction``)
and prints, per fit, the epochs run, the epoch of the first held-out
plateau, the RMSE of the subject-specific means against the simulation
truth and its ratio to the default long fit's (200 epochs, no held-out
subjects, the reference of the issue's n=800 target); then, per simulator
and rule, the worst and median RMSE and ratio, how many fits are within 2%
of the long fit, and the median epochs.  A fit that stops inside the phase
where a latent direction is quiet (see docs/fitting.md) shows up as an
outlying RMSE.

Run:  python benchmarks/stopping_rule.py [--seeds 0 1 2 3 4 5]
      [--rules 5:0.5 6:0.5 6:1.0] [--sims nonlinear linear] [--output stopping_rule]
"""
from __future__ import annotations

import argparse
import statistics

from common import report, rmse, single_thread
from core_accuracy import fit_dgmm, long_fit_rmse


def fit_row(simulator: str, seed: int, sim, patience: int, anneal_fraction: float, reference: float) -> dict:
    fitted, seconds, model = fit_dgmm(sim, patience=patience, anneal_fraction=anneal_fraction)
    error = rmse(fitted["y_fitted"], sim.truth["y_mean"].to_numpy())
    return {"simulator": simulator, "seed": seed, "patience": patience, "anneal_fraction": anneal_fraction,
            "epochs": model.result_.epochs_run, "plateau_epoch": model.result_.annealed_at, "rmse": error,
            "long_rmse": reference, "ratio_to_long": error / reference, "seconds": seconds}


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["simulator"], r["patience"], r["anneal_fraction"]) for r in rows}):
        group = [r for r in rows if (r["simulator"], r["patience"], r["anneal_fraction"]) == key]
        ratios = [r["ratio_to_long"] for r in group]
        out.append({"simulator": key[0], "patience": key[1], "anneal_fraction": key[2], "fits": len(group),
                    "worst_rmse": max(r["rmse"] for r in group),
                    "median_rmse": statistics.median(r["rmse"] for r in group),
                    "worst_ratio_to_long": max(ratios), "median_ratio_to_long": statistics.median(ratios),
                    "within_2pct_of_long": sum(x <= 1.02 for x in ratios),
                    "median_epochs": statistics.median(r["epochs"] for r in group)})
    return out


def parse_rule(text: str) -> tuple[int, float]:
    patience, fraction = text.split(":")
    return int(patience), float(fraction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--rules", type=parse_rule, nargs="+", default=[(5, 0.5), (6, 0.5), (6, 1.0)],
                        help="patience:anneal_fraction pairs (the default rule is 6:0.5)")
    parser.add_argument("--sims", nargs="+", default=["nonlinear", "linear"])
    parser.add_argument("--output", default="stopping_rule",
                        help="results/<output>.json (another name keeps the default run's file)")
    args = parser.parse_args()
    single_thread()
    from pyro_dgmm.datasets import SIMULATORS

    rows = []
    for name in args.sims:
        for seed in args.seeds:
            sim = SIMULATORS[name](n_subjects=800, seed=seed)
            reference = long_fit_rmse(sim)
            rows += [fit_row(name, seed, sim, patience, fraction, reference) for patience, fraction in args.rules]
    report(rows, "default fit by stopping rule (n=800 x 20, one torch thread)", summary(rows),
           "per simulator and rule", args.output)


if __name__ == "__main__":
    main()
