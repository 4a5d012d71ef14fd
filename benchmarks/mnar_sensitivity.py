"""Issue 24: delta-adjusted multiple imputation, Rubin's rules and the tipping point.

On :func:`~pyro_dgmm.datasets.simulate_trial` (a two-arm trial, 300
subjects x 7 visits, about 30% dropout by the last visit), with the default
DGMM fit and ``impute(num_imputations=20)``, the estimand is the mean at
the last visit (overall, and the treatment difference by least squares in
each imputed data set, pooled by Rubin's rules):

* ``bias``: pattern-mixture truth (values after dropout delta = -1 away
  from what MAR implies), seeds as given: the MAR analysis and the
  delta-adjusted one with the true delta, against the sample's own
  complete-data last-visit mean (so sampling noise cancels);
* ``value``: dropout driven by the current, unobserved value: how far the
  MAR and delta-adjusted (delta = +0.5, +1) analyses are from the
  complete-data mean;
* ``coverage``: ``--replications`` trials with the true delta: how often the
  95% interval of the treatment difference covers the population value
  (``--parameter-uncertainty``: also proper imputation on the same fit, each
  data set under its own parameters drawn from the Wald approximation; ``--first-replication``
  starts later in the same seed sequence, to split the run over processes);
* ``tipping``: seed 0, delta on the treated arm only, scanned until the
  treatment difference is no longer significant.

Run:  python benchmarks/mnar_sensitivity.py --parts bias value tipping --seeds 0 1 2 3 4
      python benchmarks/mnar_sensitivity.py --parts coverage --replications 40
      python benchmarks/mnar_sensitivity.py --parts coverage --replications 40 --parameter-uncertainty \
          --output mnar_coverage_proper
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import pandas as pd

from common import print_table, single_thread, write_json

IMPUTATIONS = 20


def _fit(sim, seed):
    from pyro_dgmm import DeepMixedModel

    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(sim.data, progress=False, seed=seed)


def _last_visit_difference(frame):
    import statsmodels.formula.api as smf

    last = frame[frame["time"] == frame["time"].max()]
    return smf.ols("y ~ arm", last).fit()


def _last_visit_mean(frame):
    last = frame.loc[frame["time"] == frame["time"].max(), "y"]
    return last.mean(), last.var(ddof=1) / len(last)


def _complete_last(sim):
    last = sim.truth["time"] == sim.truth["time"].max()
    return float(sim.truth.loc[last, "y_complete"].mean())


def _analyses(model, sim, delta, seed, parameter_uncertainty=False):
    from pyro_dgmm.sensitivity import analyze

    frames = model.impute(sim.data, IMPUTATIONS, delta=delta, seed=seed, parameter_uncertainty=parameter_uncertainty)
    mean = analyze(frames, _last_visit_mean).iloc[0]
    difference = analyze(frames, _last_visit_difference).loc["arm"]
    return mean, difference


def part_bias(seeds, mechanism, deltas):
    from pyro_dgmm.datasets import simulate_trial

    rows = []
    for seed in seeds:
        sim = simulate_trial(300, seed=seed, mechanism=mechanism)
        start = time.perf_counter()
        model = _fit(sim, seed)
        truth = _complete_last(sim)
        for delta in deltas:
            mean, difference = _analyses(model, sim, delta, seed)
            row = {"part": mechanism, "seed": seed, "delta": delta, "complete_last_mean": truth,
                   "last_mean": float(mean["estimate"]), "bias": float(mean["estimate"]) - truth,
                   "difference": float(difference["estimate"]),
                   "sample_difference": sim.params["sample_effect_last_visit"],
                   "seconds": time.perf_counter() - start}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def part_coverage(replications, first=0, parameter_uncertainty=False):
    """Coverage rows; with ``parameter_uncertainty``, two per replication
    from the same fit: plug-in (improper) and proper imputation."""
    from pyro_dgmm.datasets import simulate_trial

    rows = []
    for rep in range(first, first + replications):
        sim = simulate_trial(300, seed=1000 + rep)
        start = time.perf_counter()
        model = _fit(sim, rep)
        fit_seconds = time.perf_counter() - start
        for proper in ([False, True] if parameter_uncertainty else [False]):
            start = time.perf_counter()
            if proper:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.standard_errors()  # cached: what impute(parameter_uncertainty=True) draws from
            se_seconds = time.perf_counter() - start
            _, difference = _analyses(model, sim, sim.params["delta"], rep, proper)
            truth = sim.params["effect_last_visit"]
            row = {"part": "coverage", "seed": 1000 + rep, "parameter_uncertainty": proper, "truth": truth,
                   "estimate": float(difference["estimate"]), "std_error": float(difference["std_error"]),
                   "between": float(difference["between"]), "within": float(difference["within"]),
                   "df": float(difference["df"]), "lower": float(difference["lower"]),
                   "upper": float(difference["upper"]),
                   "covered": bool(difference["lower"] <= truth <= difference["upper"]),
                   "fit_seconds": fit_seconds, "se_seconds": se_seconds,
                   "impute_seconds": time.perf_counter() - start - se_seconds}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def part_tipping():
    from pyro_dgmm.datasets import simulate_trial
    from pyro_dgmm.plotting import plot_tipping_point
    from pyro_dgmm.sensitivity import tipping_point

    sim = simulate_trial(300, seed=0)
    model = _fit(sim, 0)
    result = tipping_point(model, sim.data, _last_visit_difference, np.arange(0.0, -6.01, -1.0),
                           delta=lambda d: (lambda cells: np.where(cells["arm"] == 1, d, 0.0)), term="arm",
                           num_imputations=IMPUTATIONS, seed=0)
    print(result.table.to_string(), "\ntipping delta:", result.tipping_delta, flush=True)
    fig = plot_tipping_point(result)
    fig.savefig("results/mnar_tipping_point.png", dpi=110)
    return [{"part": "tipping", **row} for row in result.table.to_dict("records")] + [
        {"part": "tipping", "tipping_delta": result.tipping_delta}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["bias", "value", "tipping"],
                        choices=["bias", "value", "coverage", "tipping"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--replications", type=int, default=40)
    parser.add_argument("--first-replication", type=int, default=0)
    parser.add_argument("--parameter-uncertainty", action="store_true",
                        help="coverage: impute with parameters drawn from their Wald approximation")
    parser.add_argument("--output", default="mnar_sensitivity")
    args = parser.parse_args()
    single_thread()
    rows = []
    if "bias" in args.parts:
        rows += part_bias(args.seeds, "pattern_mixture", [0.0, -1.0])
    if "value" in args.parts:
        rows += part_bias(args.seeds, "value", [0.0, 0.5, 1.0])
    if "coverage" in args.parts:
        rows += part_coverage(args.replications, args.first_replication, args.parameter_uncertainty)
    if "tipping" in args.parts:
        rows += part_tipping()
    frame = pd.DataFrame(rows)
    if {"bias", "value"} & set(args.parts):
        summary = frame[frame.part.isin(["pattern_mixture", "value"])].groupby(["part", "delta"]).agg(
            mean_bias=("bias", "mean"), sd_bias=("bias", "std"), seeds=("seed", "count")).reset_index()
        print_table(summary.to_dict("records"), "bias of the pooled last-visit mean (mean over seeds)")
    if "coverage" in args.parts:
        for proper, cover in frame[frame.part == "coverage"].groupby("parameter_uncertainty"):
            print(f"parameter_uncertainty={proper}: coverage of the 95% interval {cover.covered.mean():.3f} over "
                  f"{len(cover)} replications; mean estimate {cover.estimate.mean():.3f} against "
                  f"{cover.truth.iloc[0]:.3f}, SD {cover.estimate.std():.3f}, mean Rubin SE "
                  f"{cover.std_error.mean():.3f}")
    write_json(frame.to_dict("records"), args.output)


if __name__ == "__main__":
    main()
