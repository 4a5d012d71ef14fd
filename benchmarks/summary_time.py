"""Issue 21: ``DeepMixedModel.summary()`` on the linear special case against
statsmodels MixedLM, in one call, timed on one thread.

The linear DGMM (``fixed_hidden=()``, ``random_hidden=()``, ``poly(1)``,
``latent_dim=2``) is fitted with the maximum-likelihood refinement
(``refine=True``) to ``simulate_linear`` (n subjects x 10 visits, seed 3);
then ``summary()`` is timed, wall and CPU seconds (standard errors of the
fixed effects and the residual SD, the log-likelihood from the same draws,
the parameter count, AIC and BIC, the data-scale tables).  MixedLM (ML) is
timed on the same data.  Reported: one row per number (coefficients, their
SEs, the residual SD, the random-effects covariance, the log-likelihood)
with MixedLM's value, pyro_dgmm's and the relative difference.  The
likelihood of this model is computed in closed form, so the SEs invert
the full observed information, as MixedLM's ``bse`` does; for reference
they are also set beside MixedLM's conditional SEs, the square roots of
the diagonal of :math:`(\sum_i X_i^\top V_i^{-1} X_i)^{-1}` at its variance
estimates (what the importance-sampled path reports for other models).

Run:  python benchmarks/summary_time.py [--subjects 300] [--num-samples 500]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from common import print_table, single_thread, write_json


def mixedlm(df):
    from statsmodels.regression.mixed_linear_model import MixedLM

    X = np.column_stack([np.ones(len(df)), df.time, df.age, (df.group == "treated").astype(float)])
    Z = np.column_stack([np.ones(len(df)), df.time])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MixedLM(df.y.to_numpy(), X, groups=df.id.to_numpy(), exog_re=Z).fit(reml=False)


def conditional_se(df, ref) -> np.ndarray:
    """MixedLM's SEs of the fixed effects given its variance estimates: sqrt diag (sum_i X_i' V_i^-1 X_i)^-1."""
    X = np.column_stack([np.ones(len(df)), df.time, df.age, (df.group == "treated").astype(float)])
    Z = np.column_stack([np.ones(len(df)), df.time])
    information = np.zeros((4, 4))
    for subject in np.unique(df.id):
        rows = (df.id == subject).to_numpy()
        v = Z[rows] @ np.asarray(ref.cov_re) @ Z[rows].T + ref.scale * np.eye(rows.sum())
        information += X[rows].T @ np.linalg.solve(v, X[rows])
    return np.sqrt(np.diag(np.linalg.inv(information)))


def rows_for(n_subjects: int, num_samples: int) -> tuple[dict, list[dict]]:
    """(timings and largest differences, one row per compared number)."""
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_linear

    sim = simulate_linear(n_subjects=n_subjects, n_visits=10, seed=3)
    start = time.perf_counter()
    ref = mixedlm(sim.data)
    mixedlm_seconds = time.perf_counter() - start
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                         time_basis="poly(1)", latent_dim=2, validation_fraction=0.0,
                         model_options=dict(fixed_hidden=(), random_hidden=()))
    start = time.perf_counter()
    est.fit(sim.data, progress=False, seed=0, refine=True)
    fit_seconds = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    summary = est.summary(num_samples=num_samples)
    summary_seconds, summary_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(summary)
    table = summary.fixed_effects.loc["y"]
    names = table.index.tolist()
    fe, bse, cond = np.asarray(ref.fe_params[:4]), np.asarray(ref.bse[:4]), conditional_se(sim.data, ref)
    cov, cov_ref = summary.random_effects.to_numpy(), np.asarray(ref.cov_re)
    compared = ([(f"coef {n}", fe[k], table.estimate.iloc[k]) for k, n in enumerate(names)]
                + [(f"SE {n}", bse[k], table.se.iloc[k]) for k, n in enumerate(names)]
                + [(f"SE {n} (conditional)", cond[k], table.se.iloc[k]) for k, n in enumerate(names)]
                + [("residual SD", np.sqrt(ref.scale), summary.dispersions.loc["sigma[y]", "estimate"])]
                + [(f"cov_re[{i},{j}]", cov_ref[i, j], cov[i, j]) for i in range(2) for j in range(i + 1)]
                + [("log-likelihood", ref.llf, float(summary.info["Log-likelihood"]))])
    detail = [{"subjects": n_subjects, "number": name, "mixedlm": float(a), "pyro_dgmm": float(b),
               "rel_diff": float(b / a - 1)} for name, a, b in compared]
    coef = [r for r in detail if r["number"].startswith("coef")]
    se = [r for r in detail if r["number"].startswith("SE") and "conditional" not in r["number"]]
    se_cond = [r for r in detail if "conditional" in r["number"]]
    row = {
        "subjects": n_subjects, "visits": 10, "num_samples": num_samples, "fit_s": fit_seconds,
        "summary_s": summary_seconds, "summary_cpu_s": summary_cpu, "mixedlm_s": mixedlm_seconds,
        "coef_max_rel": max(abs(r["rel_diff"]) for r in coef),
        "coef_max_in_se": float(np.max(np.abs(table.estimate.to_numpy() - fe) / bse)),
        "se_max_rel": max(abs(r["rel_diff"]) for r in se),
        "se_conditional_max_rel": max(abs(r["rel_diff"]) for r in se_cond),
        "llf": float(summary.info["Log-likelihood"]), "mixedlm_llf": float(ref.llf),
        "llf_abs_diff": abs(float(summary.info["Log-likelihood"]) - ref.llf),
    }
    return row, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[300])
    parser.add_argument("--num-samples", type=int, default=500)
    args = parser.parse_args()
    single_thread()
    results = [rows_for(n, args.num_samples) for n in args.subjects]
    rows, details = [row for row, _ in results], [r for _, detail in results for r in detail]
    print_table(details, "summary() vs MixedLM, number by number")
    print_table(rows, "summary() on the linear special case vs MixedLM (one thread)")
    write_json(rows + details, "summary_time")


if __name__ == "__main__":
    main()
