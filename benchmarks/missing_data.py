"""Issue 3 benchmark: missing outcomes under MAR.

1. Dropout simulator (n=800, 20 visits, ~30% MAR dropout): bias of the
   estimated population mean curve against the truth (max over a 50-point
   time grid) and RMSE of subject-specific means over the missing cells, for
   pyro_dgmm with the masked encoder (default), pyro_dgmm with the talk's
   imputation loop, a complete-case pyro_dgmm fit (subjects without
   dropout only), and statsmodels MixedLM (spline time, all observed data).
2. Coverage: 10% of the observed cells of the nonlinear simulator are
   hidden at random, the model is fitted without them, 40 imputations are
   drawn, and the share of hidden values inside the 95% imputation interval
   is reported.
3. App-like simulator (1174 x 105 days, 3 outcomes, ~61% missing): time
   and per-outcome accuracy on the missing cells for both missing-data modes.

Run:  python benchmarks/missing_data.py [--seed 0] [--skip-app]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from common import auc, brier, fit_mixedlm, mixedlm_design, print_table, rmse, single_thread, write_json

APP_BASIS = "spline(4)+fourier(7)"


def dgmm(sim, basis=None):
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.bases import DEFAULT_TIME_BASIS

    return DeepMixedModel(id_col=sim.id_col, time_col=sim.time_col, outcomes=sim.outcomes,
                          covariates=sim.covariates, time_basis=basis or DEFAULT_TIME_BASIS)


def fit_timed(model, df, **options):
    start = time.perf_counter()
    model.fit(df, progress=False, **options)
    return model, time.perf_counter() - start


def mixedlm_population_mean(sim, grid) -> np.ndarray:
    """MixedLM (spline time) population curve: X beta averaged over subjects' covariates."""
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM

    from pyro_dgmm.bases import NaturalSpline

    df = sim.data
    obs = df["y"].notna().to_numpy()
    basis = NaturalSpline(df=4).fit(df["time"].to_numpy()[obs])
    X, Z = mixedlm_design(df, sim.covariates, basis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = MixedLM(df["y"].to_numpy()[obs], X[obs], groups=df["id"].to_numpy()[obs], exog_re=Z[obs]).fit(reml=False)
    baseline = df.groupby("id").first().reset_index()
    means = [mixedlm_design(baseline.assign(time=t), sim.covariates, basis)[0] @ np.asarray(fit.fe_params)
             for t in grid]
    return np.array([m.mean() for m in means])


def dropout_rows(seed: int) -> list[dict]:
    from pyro_dgmm.datasets import simulate_dropout
    from pyro_dgmm.impute import ImputationConfig

    sim = simulate_dropout(seed=seed)
    grid = sim.population_truth["time"].to_numpy()
    truth_curve = sim.population_truth["y_population_mean"].to_numpy()
    truth = sim.truth["y_mean"].to_numpy()
    missing = sim.data["y"].isna().to_numpy()
    rows = []

    def add(method, curve, fitted, seconds, extra=None):
        rows.append({"method": method, "max_abs_bias_population_mean": float(np.max(np.abs(curve - truth_curve))),
                     "rmse_missing_cells": rmse(fitted[missing], truth[missing]) if fitted is not None else np.nan,
                     "rmse_all_cells": rmse(fitted, truth) if fitted is not None else np.nan,
                     "seconds": seconds, **(extra or {})})

    for label, options in [("pyro_dgmm mask (default)", {}),
                           ("pyro_dgmm imputation loop (talk)", {"missing": "impute",
                                                                 "imputation": ImputationConfig()})]:
        model, sec = fit_timed(dgmm(sim), sim.data, seed=seed, **options)
        curve = model.population_mean(grid)["y"].to_numpy()
        fitted = model.fitted_values()["y_fitted"].to_numpy()
        extra = {}
        if model.imputation_trace_ is not None:
            extra["mh_acceptance_last"] = model.imputation_trace_.acceptance_rate[-1]
        add(label, curve, fitted, sec, extra)
    dropped = sim.data.groupby("id")["y"].transform(lambda s: s.isna().any())
    complete_case = sim.data[~dropped.to_numpy()]
    model, sec = fit_timed(dgmm(sim), complete_case, seed=seed)
    add(f"pyro_dgmm complete cases ({complete_case['id'].nunique()} subjects)",
        model.population_mean(grid, sim.data)["y"].to_numpy(), None, sec)
    start = time.perf_counter()
    curve = mixedlm_population_mean(sim, grid)
    pred, _ = fit_mixedlm(sim.data, "y", sim.covariates, spline_df=4)
    add("MixedLM spline(4), all observed", curve, pred, time.perf_counter() - start)
    return rows


def coverage_rows(seed: int, num_imputations: int = 40) -> list[dict]:
    from pyro_dgmm.datasets import simulate_nonlinear
    from pyro_dgmm.impute import imputation_intervals

    sim = simulate_nonlinear(seed=seed)
    rng = np.random.default_rng(seed + 100)
    hide = rng.uniform(size=len(sim.data)) < 0.10
    hidden = sim.data.copy()
    hidden.loc[hide, "y"] = np.nan
    model, sec = fit_timed(dgmm(sim), hidden, seed=seed)
    frames = model.impute(num_imputations=num_imputations)
    intervals = imputation_intervals(frames, "y").merge(
        sim.data.assign(hidden_value=sim.data["y"])[["id", "time", "hidden_value"]], on=["id", "time"])
    assert len(intervals) == hide.sum()
    inside = (intervals["lower"] <= intervals["hidden_value"]) & (intervals["hidden_value"] <= intervals["upper"])
    return [{"simulator": "nonlinear", "hidden_cells": int(hide.sum()), "imputations": num_imputations,
             "coverage_95": float(inside.mean()), "mean_interval_width": float((intervals.upper - intervals.lower).mean()),
             "rmse_imputation_mean": rmse(intervals["mean"], intervals["hidden_value"]), "fit_seconds": sec}]


def app_rows(seed: int) -> list[dict]:
    from pyro_dgmm.datasets import simulate_app
    from pyro_dgmm.impute import ImputationConfig

    sim = simulate_app(seed=seed)
    rows = []
    for label, options in [("mask (default)", {}),
                           ("imputation loop (talk)", {"missing": "impute", "imputation": ImputationConfig()})]:
        model, sec = fit_timed(dgmm(sim, APP_BASIS), sim.data, seed=seed, **options)
        fitted = model.fitted_values()
        for name, family in sim.outcomes.items():
            missing = sim.data[name].isna().to_numpy()
            pred = fitted[f"{name}_fitted"].to_numpy()[missing]
            row = {"mode": label, "outcome": name, "missing_share": missing.mean(),
                   "rmse_mean_missing": rmse(pred, sim.truth[f"{name}_mean"].to_numpy()[missing]), "fit_seconds": sec}
            if family == "bernoulli":
                complete = sim.truth[f"{name}_complete"].to_numpy()[missing]
                oracle = sim.truth[f"{name}_mean"].to_numpy()[missing]
                row.update(auc_missing=auc(pred, complete), brier_missing=brier(pred, complete),
                           auc_oracle=auc(oracle, complete), brier_oracle=brier(oracle, complete))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--only", choices=["dropout", "coverage", "app"])
    args = parser.parse_args()
    single_thread()
    if args.only in (None, "dropout"):
        rows = dropout_rows(args.seed)
        print_table(rows, "Dropout simulator (n=800, 20 visits, ~30% MAR dropout)")
        write_json(rows, "missing_dropout")
    if args.only in (None, "coverage"):
        rows = coverage_rows(args.seed)
        print_table(rows, "Imputation interval coverage (10% of observed cells hidden)")
        write_json(rows, "missing_coverage")
    if args.only in (None, "app") and not args.skip_app:
        rows = app_rows(args.seed)
        print_table(rows, "App-like simulator (1174 x 105 days, 3 outcomes, ~61% missing)")
        write_json(rows, "missing_app")


if __name__ == "__main__":
    main()
