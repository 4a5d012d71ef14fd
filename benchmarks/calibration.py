"""Issue 25 benchmark: prediction intervals that hold (heavy tails, changing variance).

Settings compared (``SETTINGS``): today's default (Gaussian, one constant
dispersion per outcome), the Student-t family for the continuous markers,
a dispersion log-linear in the time features and covariates
(``model_options={"dispersion_model": "linear"}``), and both; ``', ML'``:
the observation parameters then moved to the maximum of the marginal
likelihood (``refine_observation_model``).  The follow-up settings
(``OPTIONS``) change the model of the trajectories: ``'poly(1)'`` time
basis, linear nets (the linear special case: lme4's random intercept and
slope per marker, correlated across markers), the Student-t for chosen
markers, and the Brownian serial process of log-bilirubin (and, in one
setting, albumin), its scale then moved to the marginal-likelihood maximum
with the dispersions and df (``brownian``) or alone, the dispersions and df
left at their SVI values (``tau only``: ``refine_observation_model(["serial_scale"])``);
``serial_tau`` is reported.
``refined`` says per row whether the fit ended with the maximum-likelihood
refinement of ``refine='auto'`` (not for PBC: its binary markers leave the
likelihood without a closed form).  Coverage and log density per horizon
bin (``HORIZON_BINS``) are reported in the ``*_by_horizon`` columns.

Part ``sim`` (the acceptance simulations): :func:`simulate_linear_noise`
with random intercept and slope, ``--n-subjects`` (300) x 10 visits, with
(a) Student-t errors with 3 degrees of freedom (``t3``) or (b) Gaussian
errors whose SD grows fourfold over the follow-up (``growth``).  The fit
uses the training subjects; an independent set of as many test subjects
(simulated with seed + 1000) is predicted from their visits up to the
landmark 5 at their later visits.  Reported per setting: coverage of the
95% (and 50%, 80%) prediction intervals of the future observed values,
RMSE of the predicted mean against the true subject-specific mean, the
held-out log predictive density per value, and the fitted degrees of
freedom (truth 3).

Part ``pbc``: the shipped PBC data, ``--splits`` random splits by patient
(30% test patients, seeds 0, 1, ...); each setting is fitted to the
training patients with the default fit settings, and the test patients are
predicted at landmarks 3 and 5 years from their visits up to the landmark
at all their later visits.  Per continuous marker: 95% coverage, RMSE and
held-out log predictive density per value (the choice of family and
dispersion model is made by the last); medians over splits with the range.

Run:  python benchmarks/calibration.py --part sim --seeds 0 1 2
      python benchmarks/calibration.py --part pbc --splits 5
JSON goes to benchmarks/results/calibration_<part>.json (rows per fit and
the summary table).
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from common import print_table, rmse, single_thread, write_json

#: name -> (family of the continuous outcomes, dispersion model)
SETTINGS = {
    "gaussian": ("gaussian", "constant"),
    "student_t": ("student_t", "constant"),
    "gaussian+linear": ("gaussian", "linear"),
    "student_t+linear": ("student_t", "linear"),
    "gaussian+linear+random": ("gaussian", "linear+random"),
    "student_t+linear+random": ("student_t", "linear+random"),
    "student_t, ML": ("student_t", "constant"),  # then refine_observation_model()
    "gaussian, poly(1)": ("gaussian", "constant"),
    "gaussian, poly(1), linear nets": ("gaussian", "constant"),
    "gaussian, poly(1), brownian": ("gaussian", "constant"),
    "gaussian, poly(1), linear nets, brownian": ("gaussian", "constant"),
    "t for albumin+protime, poly(1), linear nets": ("gaussian", "constant"),
    "t for protime, poly(1), linear nets": ("gaussian", "constant"),
    "t for protime, poly(1), linear nets, brownian": ("gaussian", "constant"),
    "t for protime, poly(1), linear nets, brownian, tau only": ("gaussian", "constant"),
    "t for protime, poly(1), linear nets, brownian log_bili+albumin, tau only": ("gaussian", "constant"),
    "t for protime, poly(1), linear nets, brownian log_bili+protime (4 terms), tau only": ("gaussian", "constant"),
    "t for log_bili+protime, poly(1), linear nets, brownian log_bili+protime (4 terms), tau only": ("gaussian",
                                                                                                  "constant"),
    "t for protime, poly(1), linear nets, brownian log_bili+protime (4 terms)": ("gaussian", "constant"),
    "t for log_bili+protime, poly(1), dense fixed net, brownian log_bili+protime (4 terms), tau only": (
        "gaussian", "constant"),
    "t for log_bili+protime, poly(1), dense nets, brownian log_bili+protime (4 terms), tau only": (
        "gaussian", "constant"),
    "t for log_bili+protime, poly(1), linear nets, brownian on all three (4 terms), tau only": (
        "gaussian", "constant"),
}
#: further DeepMixedModel options of a setting (issue 25's follow-up: the time basis of the random
#: effects, the linear special case = per-marker lme4 random intercept and slope, and the serial
#: process of log-bilirubin; its scale moved to the marginal-likelihood maximum after SVI, see
#: pyro_dgmm.serial)
BROWNIAN = {"serial_process": "brownian", "serial_outcomes": ["log_bili"]}
BROWNIAN_2 = {"serial_process": "brownian", "serial_outcomes": ["log_bili", "albumin"]}
#: 4 Karhunen-Loeve terms per outcome (95% of the process variance at the span's end, docs/model.md): with two
#: processes, as many latent coordinates (6 + 2 x 4) as one process of 8 terms, so the refinement costs the same
BROWNIAN_BILI_PROTIME = {"serial_process": "brownian", "serial_outcomes": ["log_bili", "protime"], "serial_terms": 4}
BROWNIAN_ALL_THREE = {"serial_process": "brownian", "serial_outcomes": ["log_bili", "albumin", "protime"],
                      "serial_terms": 4}
LINEAR_NETS = {"fixed_hidden": (), "random_hidden": ()}
#: latent_dim fixed as on the development split (8: the first candidate of 'auto'; 6 for the linear nets)
OPTIONS = {
    "gaussian, poly(1)": {"time_basis": "poly(1)", "latent_dim": 8},
    "gaussian, poly(1), linear nets": {"time_basis": "poly(1)", "latent_dim": 6, "model_options": LINEAR_NETS},
    "gaussian, poly(1), brownian": {"time_basis": "poly(1)", "latent_dim": 8, "model_options": BROWNIAN},
    "gaussian, poly(1), linear nets, brownian": {"time_basis": "poly(1)", "latent_dim": 6,
                                                 "model_options": {**LINEAR_NETS, **BROWNIAN}},
    "t for albumin+protime, poly(1), linear nets": {"time_basis": "poly(1)", "latent_dim": 6,
                                                    "model_options": LINEAR_NETS,
                                                    "families": {"albumin": "student_t", "protime": "student_t"}},
    "t for protime, poly(1), linear nets": {"time_basis": "poly(1)", "latent_dim": 6, "model_options": LINEAR_NETS,
                                            "families": {"protime": "student_t"}},
    "t for protime, poly(1), linear nets, brownian": {"time_basis": "poly(1)", "latent_dim": 6,
                                                      "model_options": {**LINEAR_NETS, **BROWNIAN},
                                                      "families": {"protime": "student_t"}},
    "t for protime, poly(1), linear nets, brownian, tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {**LINEAR_NETS, **BROWNIAN},
        "families": {"protime": "student_t"}},
    "t for protime, poly(1), linear nets, brownian log_bili+albumin, tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {**LINEAR_NETS, **BROWNIAN_2},
        "families": {"protime": "student_t"}},
    "t for protime, poly(1), linear nets, brownian log_bili+protime (4 terms), tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {**LINEAR_NETS, **BROWNIAN_BILI_PROTIME},
        "families": {"protime": "student_t"}},
    "t for log_bili+protime, poly(1), linear nets, brownian log_bili+protime (4 terms), tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {**LINEAR_NETS, **BROWNIAN_BILI_PROTIME},
        "families": {"log_bili": "student_t", "protime": "student_t"}},
    "t for protime, poly(1), linear nets, brownian log_bili+protime (4 terms)": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {**LINEAR_NETS, **BROWNIAN_BILI_PROTIME},
        "families": {"protime": "student_t"}},
    # albumin's RMSE at landmark 5 (issue 25, continued): a nonlinear population trajectory, nonlinear
    # random effects too, or the process on albumin as well; scored on development splits 101-102
    "t for log_bili+protime, poly(1), dense fixed net, brownian log_bili+protime (4 terms), tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {"random_hidden": (), **BROWNIAN_BILI_PROTIME},
        "families": {"log_bili": "student_t", "protime": "student_t"}},
    "t for log_bili+protime, poly(1), dense nets, brownian log_bili+protime (4 terms), tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": BROWNIAN_BILI_PROTIME,
        "families": {"log_bili": "student_t", "protime": "student_t"}},
    "t for log_bili+protime, poly(1), linear nets, brownian on all three (4 terms), tau only": {
        "time_basis": "poly(1)", "latent_dim": 6, "model_options": {**LINEAR_NETS, **BROWNIAN_ALL_THREE},
        "families": {"log_bili": "student_t", "protime": "student_t"}},
}
LEVELS = (0.5, 0.8, 0.95)
SIM_LANDMARK = 5.0
PBC_LANDMARKS = (3.0, 5.0)
PBC_CONTINUOUS = ("log_bili", "albumin", "protime")
#: horizon bins (years after the landmark) of the coverage-by-horizon columns
HORIZON_BINS = (0, 1, 2, 4, 6, 14)


def fit_model(df, outcomes, covariates, setting: str, *, id_col: str, time_col: str, seed: int):
    from pyro_dgmm import DeepMixedModel

    family, dispersion_model = SETTINGS[setting]
    outcomes = {name: (family if spec == "gaussian" else spec) for name, spec in outcomes.items()}
    options = dict(OPTIONS.get(setting, {}))
    outcomes = {**outcomes, **options.pop("families", {})}  # per-marker families of the docs' recommendation
    model_options = {"dispersion_model": dispersion_model, **options.pop("model_options", {})}
    model = DeepMixedModel(id_col=id_col, time_col=time_col, outcomes=outcomes, covariates=covariates,
                           model_options=model_options, **options)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and latent-dimension warnings are recorded in the rows
        model.fit(df, progress=False, seed=seed)
        if setting.endswith(", ML"):
            model.refine_observation_model(num_samples=500, seed=seed)  # as run (the default was then 500)
        # SVI shrinks the process scale (docs/prediction.md): fit moves it alone to its ML value (on the SVI
        # training subjects; results before that change called refine_observation_model(["serial_scale"]) on
        # all training subjects here); the other settings move the dispersions and df with it
        if model.model_.serial_outcomes and not setting.endswith("tau only"):
            model.refine_observation_model(seed=seed)  # 2 x minimum_samples(latent_dim) samples
    return model, time.perf_counter() - start


def degrees_of_freedom(model, name: str) -> float:
    shapes = model.model_.shape_parameters(name)
    return float(shapes["df"].detach()) if "df" in shapes else float("nan")


def landmark_scores(model, df, landmark: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores per outcome of the predictions at ``landmark``: over all horizons, per horizon bin
    (``HORIZON_BINS``), and the predictions."""
    import pyro

    from pyro_dgmm.evaluation import landmark_evaluation

    pyro.set_rng_seed(seed)
    result = landmark_evaluation(model.model_, model.guide_, model.schema_, df, landmark, levels=LEVELS,
                                 horizon_bins=HORIZON_BINS, seed=seed)
    scores = result.scores[result.scores.method == "model"]
    return scores[scores.horizon == "all"], scores[scores.horizon != "all"], result.predictions


def refined(model) -> bool:
    """Whether the fit ended with the maximum-likelihood refinement (``FitConfig.refine``)."""
    return model.result_.refinement is not None


def serial_tau(model, name: str) -> float:
    """The fitted serial-process SD per root time unit of outcome ``name`` on its own scale (NaN: none)."""
    return model.model_.serial_tau().get(name, float("nan"))


# ------------------------------------------------------------------ sim
SCENARIOS = {"t3": {"df": 3.0}, "growth": {"sd_growth": float(np.log(4.0))}}


def sim_rows(scenario: str, seed: int, n_subjects: int, settings: list[str]) -> list[dict]:
    from pyro_dgmm.datasets import simulate_linear_noise

    train = simulate_linear_noise(n_subjects, 10, seed, **SCENARIOS[scenario])
    test = simulate_linear_noise(n_subjects, 10, seed + 1000, **SCENARIOS[scenario])
    test_df = test.data.assign(id=test.data["id"] + n_subjects)
    truth = test.truth.assign(id=test.truth["id"] + n_subjects).set_index(["id", "time"])["y_mean"]
    rows = []
    for setting in settings:
        model, seconds = fit_model(train.data, {"y": "gaussian"}, train.covariates, setting,
                                   id_col="id", time_col="time", seed=seed)
        scores, _, table = landmark_scores(model, test_df, SIM_LANDMARK, seed)
        score = scores.set_index("outcome").loc["y"]
        seen = table[table.observed.notna()]
        mean_truth = truth.loc[list(zip(seen["id"], seen["time"]))].to_numpy()
        rows.append({"scenario": scenario, "seed": seed, "setting": setting, "n": int(score["n"]),
                     "coverage_95": score["coverage_95"], "coverage_80": score["coverage_80"],
                     "coverage_50": score["coverage_50"], "rmse_vs_truth": rmse(seen["mean"], mean_truth),
                     "log_density": score["log_density"], "df_hat": degrees_of_freedom(model, "y"),
                     "converged": bool(model.result_.converged), "fit_seconds": seconds})
        print_table(rows[-1:], f"{scenario} seed {seed}")
    return rows


# ------------------------------------------------------------------ pbc
def pbc_rows(split: int, settings: list[str]) -> list[dict]:
    from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc

    pbc = load_pbc()
    ids = pd.unique(pbc[PBC_ID])
    rng = np.random.default_rng(split)
    test_ids = rng.choice(ids, size=int(round(0.3 * len(ids))), replace=False)
    test = pbc[PBC_ID].isin(test_ids)
    columns = [PBC_ID, PBC_TIME, *PBC_OUTCOMES, *PBC_COVARIATES]
    train_df, test_df = pbc.loc[~test, columns], pbc.loc[test, columns]
    rows = []
    for setting in settings:
        model, seconds = fit_model(train_df, PBC_OUTCOMES, PBC_COVARIATES, setting, id_col=PBC_ID,
                                   time_col=PBC_TIME, seed=split)
        for landmark in PBC_LANDMARKS:
            scores, by_horizon, _ = landmark_scores(model, test_df, landmark, split)
            for _, score in scores[scores.outcome.isin(PBC_CONTINUOUS)].iterrows():
                bins = by_horizon[by_horizon.outcome == score["outcome"]]
                rows.append({"split": split, "setting": setting, "landmark": landmark, "outcome": score["outcome"],
                             "n": int(score["n"]), "coverage_95": score["coverage_95"],
                             "coverage_80": score["coverage_80"], "coverage_50": score["coverage_50"],
                             "rmse": score["rmse"], "log_density": score["log_density"],
                             "df_hat": degrees_of_freedom(model, score["outcome"]),
                             "serial_tau": serial_tau(model, score["outcome"]),
                             "converged": bool(model.result_.converged), "fit_seconds": seconds,
                             "refined": refined(model),
                             **{f"{metric}_by_horizon": dict(zip(bins.horizon, bins[metric].astype(float)))
                                for metric in ("n", "coverage_95", "log_density")}})
        print_table([{k: v for k, v in row.items() if not k.endswith("_by_horizon")}
                     for row in rows[-len(PBC_LANDMARKS) * len(PBC_CONTINUOUS):]], f"pbc split {split}, {setting}")
    return rows


def summary(rows: list[dict], keys: list[str]) -> list[dict]:
    """Median over seeds/splits with the range, per ``keys``."""
    frame = pd.DataFrame(rows)
    metrics = [m for m in ("coverage_95", "coverage_80", "coverage_50", "rmse", "rmse_vs_truth", "log_density",
                           "df_hat") if m in frame.columns]
    out = []
    for key, group in frame.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["runs"] = len(group)
        for metric in metrics:
            values = group[metric].to_numpy(float)
            row[metric] = float(np.median(values))
            row[f"{metric}_range"] = f"{np.min(values):.3f}-{np.max(values):.3f}"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("sim", "pbc"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sim: simulation seeds")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--n-subjects", type=int, default=300)
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="pbc: split seeds")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--name", default=None, help="JSON file name (default calibration_<part>)")
    args = parser.parse_args()
    single_thread()
    rows = []
    name = args.name or f"calibration_{args.part}"
    if args.part == "sim":
        for scenario in args.scenarios:
            for seed in args.seeds:
                rows += sim_rows(scenario, seed, args.n_subjects, args.settings)
                write_json(rows, name)  # so far: a long run stopped early keeps its finished seeds
        table = summary(rows, ["scenario", "setting"])
    else:
        for split in args.splits:
            rows += pbc_rows(split, args.settings)
            write_json(rows, name)
        table = summary(rows, ["landmark", "outcome", "setting"])
    print_table(table, "median over runs (range)")
    write_json(rows + [{"summary": table}], name)


if __name__ == "__main__":
    main()
