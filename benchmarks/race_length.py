"""Issue 19: how long the time-function race runs (``FitConfig.race_epochs``),
chosen on the development truths of ``default_selection.py`` only.

The race (:class:`pyro_dgmm.selection.TimeFunctionRace`) trains a DGMM
without and with 4 learned time functions side by side for k epochs and
continues the one whose held-out loss, averaged over epochs k/2 to k-1,
is lower.  A paused and continued fit equals the uninterrupted one
(tests/test_faults.py), so the race's outcome for any k can be read off
full fits of both structures that record their held-out loss at every
evaluation: ``default_selection.py --configs 'default={}' 'tf4={"model_options":
{"time_functions": 4}}'`` run with a library from before the race (the
``default`` rows have no learned time functions).  For each k this prints
which structure the race keeps on each data set, the RMSE of the kept
fit relative to the fit without learned functions, and the epochs run
relative to that fit (the cost of the race: the losing structure's k
epochs, plus any difference in length of the kept fit).

Run:  python benchmarks/race_length.py results/dev_race_traj_nonl.json results/dev_race_traj_quad.json \\
          results/dev_race_traj_check_nonlinear.json --epochs 40 60 80 100
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from common import print_table


def race_loss(row: dict, epochs: int) -> float:
    """The race's statistic (:func:`pyro_dgmm.selection.race_loss`) of a recorded fit."""
    from pyro_dgmm.results import FitResult
    from pyro_dgmm.selection import race_loss as library_race_loss

    return library_race_loss(FitResult(config={}, validation_loss=[tuple(v) for v in row["validation_loss"]]), epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="default_selection.py result files with both configs")
    parser.add_argument("--epochs", type=int, nargs="+", default=[40, 60, 80, 100])
    args = parser.parse_args()
    pairs: dict[tuple, dict] = {}
    for path in args.results:
        for row in json.load(open(path))["rows"]:
            pairs.setdefault((row["truth"], row["seed"]), {})[row["config"]] = row
    per_fit, summary = [], []
    for k in args.epochs:
        ratios, costs = [], []
        for (truth, seed), fits in sorted(pairs.items()):
            plain, learned = fits["default"], fits["tf4"]
            difference = race_loss(learned, k) - race_loss(plain, k)
            kept = learned if difference < 0 else plain
            ratio, cost = kept["rmse"] / plain["rmse"], (kept["epochs"] + k) / plain["epochs"]
            ratios.append(ratio)
            costs.append(cost)
            per_fit.append({"race_epochs": k, "truth": truth, "seed": seed, "loss_difference": difference,
                            "kept": "learned" if difference < 0 else "plain",
                            "learned_rmse_ratio": learned["rmse"] / plain["rmse"], "kept_rmse_ratio": ratio,
                            "epochs_ratio": cost})
        ratios = np.array(ratios)
        summary.append({"race_epochs": k, "data_sets": len(ratios), "learned_kept": sum(
            r["kept"] == "learned" for r in per_fit if r["race_epochs"] == k),
            "rmse_ratio_median": float(np.median(ratios)), "rmse_ratio_mean": float(ratios.mean()),
            "rmse_ratio_max": float(ratios.max()), "worse_than_plain": int((ratios > 1.0005).sum()),
            "epochs_ratio_median": float(np.median(costs))})
    print_table(per_fit, "per data set (loss_difference: learned - plain, nats per held-out subject)")
    print_table(summary, "per race length")


if __name__ == "__main__":
    main()
