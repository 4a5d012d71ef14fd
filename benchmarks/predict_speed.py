"""Prediction speed and interval coverage (issue 21).

One default fit of the nonlinear simulator (n=800 x 20, seed 0; cached in
``results/.cache/`` so repeated runs time the same model), then on one thread:

* ``predict`` for the 800 training subjects (their 20 visits as history) at
  two future offsets, 1,000 draws, beside ``fitted_values`` with 1,000
  draws on the same data (the cost of one pass of the networks over every
  draw and cell);
* coverage of the 50%, 90% and 95% prediction intervals of ``predict`` for
  800 new subjects (seed 1) from their first 14 visits to their last 6,
  against the simulated observed values, and the RMSE of the predicted
  mean against the true mean.

Wall and CPU seconds are both reported (the CPU seconds are the fairer
figure on a shared machine), and each task's CPU seconds over those of
``fitted_values`` in the same run.  Writes ``results/predict_speed.json`` (or
``--output NAME``).
Options: ``--method importance|mcmc|encoder`` (predict's posterior of b).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import print_table, rmse, single_thread, write_json

CACHE = Path(__file__).parent / "results" / ".cache" / "predict_speed_nonlinear_800.pt"
LEVELS = (0.5, 0.9, 0.95)
HISTORY_VISITS = 14


def fitted_model():
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_nonlinear

    if CACHE.exists():
        return DeepMixedModel.load(CACHE)
    sim = simulate_nonlinear(800, 20, seed=0)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
    est = est.fit(sim.data, progress=False)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    est.save(CACHE)
    return DeepMixedModel.load(CACHE)


def timed(fn):
    """``fn()``, its wall seconds and this process's CPU seconds (on a busy
    machine the CPU seconds are the fairer figure; on one thread they are
    the wall time of an idle one)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="importance")
    parser.add_argument("--output", default="predict_speed")
    args = parser.parse_args()
    single_thread()
    from pyro_dgmm.datasets import simulate_nonlinear

    est = fitted_model()
    train = simulate_nonlinear(800, 20, seed=0).data
    _, *fitted_seconds = timed(lambda: est.fitted_values(train, num_samples=1000))
    _, *predict_seconds = timed(lambda: est.predict(train, [0.5, 1.0], relative=True, num_samples=1000,
                                                    method=args.method))
    rows = [{"task": "fitted_values, 800 x 20, 1000 draws", "seconds": fitted_seconds[0],
             "cpu_seconds": fitted_seconds[1], "cpu_ratio_to_fitted_values": 1.0},
            {"task": f"predict ({args.method}), 800 x 20 history, 2 times, 1000 draws", "seconds": predict_seconds[0],
             "cpu_seconds": predict_seconds[1], "cpu_ratio_to_fitted_values": predict_seconds[1] / fitted_seconds[1]}]

    new = simulate_nonlinear(800, 20, seed=1)
    visit = new.data.groupby("id").cumcount()
    history, future = new.data[visit < HISTORY_VISITS], new.data[visit >= HISTORY_VISITS]
    prediction, *seconds = timed(lambda: est.predict(history, future, num_samples=1000, levels=LEVELS,
                                                     method=args.method))
    table = prediction.table.merge(new.truth[["id", "time", "y_mean"]], on=["id", "time"])
    rows.append({"task": f"predict ({args.method}), 800 new x 14 history -> 6 visits, 1000 draws",
                 "seconds": seconds[0], "cpu_seconds": seconds[1],
                 "cpu_ratio_to_fitted_values": seconds[1] / fitted_seconds[1]})
    coverage = {"method": args.method, "rmse_mean_vs_truth": rmse(table["mean"], table["y_mean"])}
    for level in LEVELS:
        label = f"{100 * level:g}"
        inside = (table["observed"] >= table[f"lower_{label}"]) & (table["observed"] <= table[f"upper_{label}"])
        coverage[f"coverage_{label}"] = float(np.mean(inside))
    print_table(rows, "seconds (one thread)")
    print_table([coverage], "held-out visits 15-20 of 800 new subjects")
    write_json(rows + [coverage], args.output)


if __name__ == "__main__":
    main()
