"""Issue 21: ``DeepMixedModel.summary()`` on the linear special case against
statsmodels MixedLM, in one call, timed on one thread.

The linear DGMM (``fixed_hidden=()``, ``random_hidden=()``, ``poly(1)``,
``latent_dim=2``) is fitted with the maximum-likelihood refinement
(``refine=True``) to ``simulate_linear`` (n subjects x 10 visits, seed 3);
then ``summary()`` is timed (standard errors of the fixed effects and the
residual SD, the log-likelihood from the same draws, the parameter count,
AIC and BIC, the data-scale tables).  MixedLM (ML) is timed on the same
data.  Reported per row: seconds of each, and the largest relative
differences of the coefficients, their SEs and the log-likelihood
(coefficients also in units of MixedLM's SE).

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


def row(n_subjects: int, num_samples: int) -> dict:
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
    start = time.perf_counter()
    summary = est.summary(num_samples=num_samples)
    summary_seconds = time.perf_counter() - start
    print(summary)
    table = summary.fixed_effects.loc["y"]
    fe, bse = np.asarray(ref.fe_params[:4]), np.asarray(ref.bse[:4])
    return {
        "subjects": n_subjects, "visits": 10, "num_samples": num_samples, "fit_s": fit_seconds,
        "summary_s": summary_seconds, "mixedlm_s": mixedlm_seconds,
        "coef_max_rel": float(np.max(np.abs(table.estimate.to_numpy() / fe - 1))),
        "coef_max_in_se": float(np.max(np.abs(table.estimate.to_numpy() - fe) / bse)),
        "se_max_rel": float(np.max(np.abs(table.se.to_numpy() / bse - 1))),
        "llf_rel": abs(float(summary.info["Log-likelihood"]) / ref.llf - 1),
        "llf": float(summary.info["Log-likelihood"]), "mixedlm_llf": float(ref.llf),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[300])
    parser.add_argument("--num-samples", type=int, default=500)
    args = parser.parse_args()
    single_thread()
    rows = [row(n, args.num_samples) for n in args.subjects]
    print_table(rows, "summary() on the linear special case vs MixedLM (one thread)")
    write_json(rows, "summary_time")


if __name__ == "__main__":
    main()
