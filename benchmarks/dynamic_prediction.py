"""Issue 4 benchmark: dynamic predictions with honest uncertainty.

Part 1, simulators (``--simulators``, default nonlinear, linear and dropout;
n=800, 20 visits): 20% of the subjects are held out; pyro_dgmm (defaults)
and statsmodels MixedLM (ML; random intercept and slope; fixed effects the
covariates and time, linear or a natural spline(4)) are fitted to the
other 80%.  Each held-out subject's first 60% of visit slots (12) are the
history; both predict the remaining 8.  Reported: RMSE of the predicted
mean against the true subject-specific mean at every future slot, and
coverage and mean width of 95% prediction intervals for the future
*observed* values (on the dropout simulator, the values recorded before
dropout; its histories hold only the recorded visits).  MixedLM predicts
with the closed-form posterior of b given the recorded history (BLUP and
its covariance, from fe_params, cov_re and scale; the prior for a subject
with none); both ignore the uncertainty of the fitted parameters.
pyro_dgmm is also fitted longer (see FITS), with its residual SD
``sigma_hat`` shown (truth 0.3).

Part 2, shipped PBC data: landmark at 3 years, horizon 3 more years,
5-fold cross-validation over patients (fit on 4/5, predict the held-out
fifth from their visits up to year 3), pooled over folds.  Per outcome and
horizon: RMSE, MAE and 95% coverage for the continuous markers, AUC and
Brier score for the binary ones, beside the baseline that carries each
patient's last observed value forward (the training mean when a patient
has none).

Run:  python benchmarks/dynamic_prediction.py [--seed 0] [--quick]
      [--part all|simulation|pbc] [--simulators nonlinear linear dropout]
      [--n-subjects 800] [--fits ...] [--methods ...] [--name ...]
Issue 25's large population: ``--part simulation --simulators nonlinear
--n-subjects 8000 --fits defaults --methods importance --name
dynamic_prediction_n8000`` (and 2000, to time it first).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from common import mixedlm_design, print_table, rmse, single_thread, write_json

CONTINUOUS = ["rmse", "mae", "coverage_95", "width_95"]
BINARY = ["auc", "brier"]


# ------------------------------------------------------------------ part 1
def split_subjects(df: pd.DataFrame, id_col: str, share: float, seed: int) -> np.ndarray:
    """Sorted ids of a random ``share`` of the subjects (the held-out set)."""
    ids = pd.unique(df[id_col])
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=int(round(share * len(ids))), replace=False))


def mixedlm_dynamic(train, history, future, outcome: str, covariates: list[str], spline_df: int | None = 4):
    """MixedLM fitted to ``train`` (fixed effects: a natural spline of time
    with ``spline_df`` df, or linear in time for None); mean and SD of the
    predictive distribution of ``future`` values given each subject's
    recorded ``history`` (closed form; the prior where there is none)."""
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM

    from pyro_dgmm.bases import NaturalSpline

    basis = NaturalSpline(df=spline_df).fit(train["time"].to_numpy(float)) if spline_df else None

    def design(df):
        return mixedlm_design(df, covariates, basis)

    X, Z = design(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = MixedLM(train[outcome].to_numpy(), X, groups=train["id"].to_numpy(), exog_re=Z).fit(reml=False)
    beta, D, s2 = np.asarray(fit.fe_params), np.asarray(fit.cov_re), float(fit.scale)
    ids = pd.unique(future["id"])
    history = history[history[outcome].notna()]
    Xh, Zh = design(history)
    codes = pd.Index(ids).get_indexer(history["id"])
    residual = history[outcome].to_numpy() - Xh @ beta
    ztz = np.zeros((len(ids), 2, 2))
    np.add.at(ztz, codes, Zh[:, :, None] * Zh[:, None, :])
    ztr = np.zeros((len(ids), 2))
    np.add.at(ztr, codes, Zh * residual[:, None])
    cov = np.linalg.inv(np.linalg.inv(D) + ztz / s2)  # Var(b_i | history)
    mean = np.einsum("nij,nj->ni", cov, ztr) / s2
    Xf, Zf = design(future)
    which = pd.Index(ids).get_indexer(future["id"])
    predicted = Xf @ beta + (Zf * mean[which]).sum(1)
    sd = np.sqrt(np.einsum("ni,nij,nj->n", Zf, cov[which], Zf) + s2)
    return predicted, sd


#: fit settings compared: the defaults (the acceptance row) and a longer fit,
#: chosen because the default fit stops with a residual SD well above the
#: training residuals (a training-side diagnostic; the truth is 0.3)
FITS = {"defaults": ({}, ("importance", "mcmc", "encoder")),
        "max_epochs=200, patience=15": ({"max_epochs": 200, "patience": 15}, ("importance",)),
        "serial_process='brownian'": ({}, ("importance",))}
#: the fit settings and prediction methods of this run (``--fits``, ``--methods``)
SIM_FITS, METHODS = list(FITS)[:2], ["importance", "mcmc", "encoder"]
#: model options of a fit setting (issue 25's serial process); the rest use the defaults
MODEL_OPTIONS = {"serial_process='brownian'": {"serial_process": "brownian"}}


def dgmm_rows(sim, train, history, future, seed: int, fit: str) -> tuple[list[dict], list[pd.DataFrame]]:
    """Fit pyro_dgmm with the settings ``FITS[fit]`` and score its predictions."""
    import pyro

    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.evaluation import score_predictions
    from pyro_dgmm.predict import predict

    options, methods = FITS[fit]
    methods = [method for method in methods if method in METHODS]
    start = time.perf_counter()
    model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates,
                           model_options=MODEL_OPTIONS.get(fit))
    model.fit(train.drop(columns="y_mean"), progress=False, seed=0, **options)
    fit_seconds = time.perf_counter() - start
    truth = future.set_index(["id", "time"])["y_mean"]
    rows, horizons = [], []
    for method in methods:
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        table = predict(model.model_, model.guide_, model.schema_, history.drop(columns="y_mean"),
                        future.drop(columns="y_mean"), method=method).table
        seconds = time.perf_counter() - start
        scores = score_predictions(table, model.schema_.families, horizon_bins=[0, 1, 2, 3, 4, 5])
        overall = scores.set_index("horizon").loc["all"]
        mean_truth = truth.loc[list(zip(table["id"], table["time"]))].to_numpy()
        rows.append({"method": f"pyro_dgmm ({method})", "fit": fit, "rmse_vs_truth": rmse(table["mean"], mean_truth),
                     "rmse_vs_observed": overall["rmse"], "coverage_95": overall["coverage_95"],
                     "width_95": overall["width_95"], "sigma_hat": float(model.model_.dispersion("y").detach()),
                     "predict_seconds": seconds, "fit_seconds": fit_seconds})
        horizons.append(scores.assign(method=method, fit=fit)[["method", "fit", "horizon", "n", "coverage_95", "rmse"]])
    return rows, horizons


def simulation_rows(simulator: str, seed: int, n_subjects: int) -> tuple[list[dict], pd.DataFrame]:
    from pyro_dgmm.datasets import SIMULATORS

    sim = SIMULATORS[simulator](n_subjects=n_subjects, seed=seed)
    df = sim.data.merge(sim.truth[["id", "time", "y_mean"]], on=["id", "time"])
    held = df["id"].isin(split_subjects(df, "id", 0.2, seed))
    train, test = df[~held], df[held]
    visit = test.groupby("id").cumcount()
    n_history = int(0.6 * test.groupby("id").size().max())
    history, future = test[visit < n_history], test[visit >= n_history]
    rows, horizons = [], []
    for fit in SIM_FITS:
        fit_rows, fit_horizons = dgmm_rows(sim, train, history, future, seed, fit)
        rows, horizons = rows + fit_rows, horizons + fit_horizons
    observed = future["y"].to_numpy()
    recorded = ~np.isnan(observed)
    for spline_df, label in ((None, "linear time"), (4, "spline(4)")):
        start = time.perf_counter()
        mean, sd = mixedlm_dynamic(train[train["y"].notna()], history, future, "y", sim.covariates, spline_df)
        seconds = time.perf_counter() - start
        truth_rmse = rmse(mean, future["y_mean"])  # every future slot
        mean, sd, y = mean[recorded], sd[recorded], observed[recorded]  # the recorded values
        rows.append({"method": f"MixedLM {label} (BLUP)", "fit": "ML", "rmse_vs_truth": truth_rmse,
                     "rmse_vs_observed": rmse(mean, y),
                     "coverage_95": float(np.mean(np.abs(y - mean) <= 1.959964 * sd)),
                     "width_95": float(np.mean(2 * 1.959964 * sd)), "fit_seconds": seconds})
    for row in rows:
        row.update(simulator=simulator, seed=seed, held_out=int(test["id"].nunique()), history_visits=n_history)
    return rows, pd.concat(horizons, ignore_index=True)


# ------------------------------------------------------------------ part 2
def pbc_tables(seed: int, folds: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pooled (model, baseline) landmark prediction tables over CV folds."""
    import pyro

    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc
    from pyro_dgmm.evaluation import landmark_evaluation

    df = load_pbc()
    ids = pd.unique(df[PBC_ID])
    fold = pd.Series(np.random.default_rng(seed).permutation(len(ids)) % folds, index=ids)
    models, baselines, info = [], [], {"fit_seconds": 0.0, "predict_seconds": 0.0}
    for k in range(folds):
        held = df[PBC_ID].map(fold).to_numpy() == k
        start = time.perf_counter()
        model = DeepMixedModel(id_col=PBC_ID, time_col=PBC_TIME, outcomes=PBC_OUTCOMES, covariates=PBC_COVARIATES)
        model.fit(df[~held], progress=False, seed=0)
        info["fit_seconds"] += time.perf_counter() - start
        pyro.set_rng_seed(seed + k)
        start = time.perf_counter()
        result = landmark_evaluation(model.model_, model.guide_, model.schema_, df[held], 3.0, horizon=3.0,
                                     fallback=df[~held][list(PBC_OUTCOMES)].mean().to_dict())
        info["predict_seconds"] += time.perf_counter() - start
        models.append(result.predictions)
        baselines.append(result.baseline)
    return pd.concat(models, ignore_index=True), pd.concat(baselines, ignore_index=True), info


def pbc_rows(seed: int, folds: int) -> tuple[list[dict], pd.DataFrame]:
    from pyro_dgmm.datasets import PBC_OUTCOMES
    from pyro_dgmm.evaluation import calibration_table, score_predictions

    model, baseline, info = pbc_tables(seed, folds)
    bins = [0, 1, 2, 3]
    scores = {name: score_predictions(table, PBC_OUTCOMES, horizon_bins=bins)
              for name, table in (("dgmm", model), ("last", baseline))}
    merged = scores["dgmm"].merge(scores["last"], on=["outcome", "family", "horizon", "n"],
                                  suffixes=("", "_last_value"))
    merged = merged.drop(columns=["coverage_95_last_value", "width_95_last_value"], errors="ignore")
    merged = merged.assign(subjects=model["id"].nunique(), seed=seed, folds=folds, **info)
    return merged.to_dict("records"), calibration_table(model, PBC_OUTCOMES)


# -------------------------------------------------------------------- main
def simulation_part(args) -> list[dict]:
    rows = []
    for simulator in args.simulators:
        sim_rows, horizons = simulation_rows(simulator, args.seed, 200 if args.quick else args.n_subjects)
        print_table(sim_rows, f"{simulator.capitalize()} simulator: held-out 20%, first 60% of visit slots given, "
                              "predict the rest")
        print_table(horizons.to_dict("records"), "pyro_dgmm by horizon (time since the last history visit): "
                                                 "95% coverage and RMSE vs observed")
        if simulator == "nonlinear":  # issue 4's acceptance: against MixedLM with spline fixed effects
            dgmm, mixedlm = sim_rows[0], sim_rows[-1]
            print(f"\nacceptance: RMSE vs truth {dgmm['rmse_vs_truth']:.4f} <= MixedLM {mixedlm['rmse_vs_truth']:.4f}: "
                  f"{'PASS' if dgmm['rmse_vs_truth'] <= mixedlm['rmse_vs_truth'] else 'FAIL'}; "
                  f"coverage {dgmm['coverage_95']:.4f} in [0.93, 0.97]: "
                  f"{'PASS' if 0.93 <= dgmm['coverage_95'] <= 0.97 else 'FAIL'}")
        rows += sim_rows
    return rows


def pbc_part(args) -> list[dict]:
    folds = 2 if args.quick else 5
    pbc, calibration = pbc_rows(args.seed, folds)
    frame = pd.DataFrame(pbc)
    keys = ["outcome", "horizon", "n"]
    gaussian = frame[frame.family == "gaussian"]
    print_table(gaussian[keys + CONTINUOUS + ["rmse_last_value", "mae_last_value"]].to_dict("records"),
                f"PBC, landmark 3 y, horizon 3 y ({folds}-fold CV): continuous markers, pyro_dgmm vs last value")
    binary = frame[frame.family == "bernoulli"]
    print_table(binary[keys + BINARY + ["auc_last_value", "brier_last_value"]].to_dict("records"),
                f"PBC, landmark 3 y, horizon 3 y ({folds}-fold CV): binary markers, pyro_dgmm vs last value")
    print_table(calibration.to_dict("records"), "PBC: calibration of pyro_dgmm's predicted probabilities")
    print(f"\nPBC: {frame.subjects.iloc[0]} patients evaluated; fit {frame.fit_seconds.iloc[0]:.0f} s, "
          f"predict {frame.predict_seconds.iloc[0]:.0f} s over all folds")
    return pbc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smaller simulation, 2 PBC folds (smoke run)")
    parser.add_argument("--part", choices=["all", "simulation", "pbc"], default="all")
    parser.add_argument("--simulators", nargs="+", default=["nonlinear", "linear", "dropout"],
                        choices=["nonlinear", "linear", "dropout"])
    parser.add_argument("--n-subjects", type=int, default=800, help="simulated subjects (issue 25: 8000)")
    parser.add_argument("--fits", nargs="+", default=["defaults", "max_epochs=200, patience=15"], choices=list(FITS),
                        help="pyro_dgmm fit settings of the simulation part")
    parser.add_argument("--methods", nargs="+", default=["importance", "mcmc", "encoder"],
                        choices=["importance", "mcmc", "encoder"], help="prediction methods (mcmc is slow at 8000)")
    parser.add_argument("--name", default=None, help="JSON file name (default dynamic_prediction[_<part>])")
    args = parser.parse_args()
    SIM_FITS[:] = args.fits
    METHODS[:] = args.methods
    single_thread()
    rows = []
    if args.part in ("all", "simulation"):
        rows += simulation_part(args)
    if args.part in ("all", "pbc"):
        rows += pbc_part(args)
    path = write_json(rows, args.name or ("dynamic_prediction" if args.part == "all" else f"dynamic_prediction_{args.part}"))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
