"""Issue 19, truth (a): the library's linear special case against the
true-design maximum likelihood fit.

Truth (a) of ``truths.py`` is a linear mixed model on a natural-spline
basis of time with 4 correlated random effects and covariate-by-time fixed
effects.  Its oracle is statsmodels MixedLM (ML) with the true design.  The
library's linear special case is the DGMM with linear networks
(``fixed_hidden=()``, ``random_hidden=()``), the covariate-by-time terms in
its linear fixed effects (``covariate_time=True``), ``time_basis='spline(3)'``
(the library's own natural spline with 3 df, knots at quantiles of the
observed times, where the truth's are equally spaced) and ``latent_dim=4``,
fitted by SVI with the maximum-likelihood refinement (``refine=True``).
Reported per seed: RMSE of the subject-specific means against the truth and
the log-likelihood (the refinement's importance-sampled estimate against
MixedLM's ``llf``), each as a ratio / difference to the oracle's.

Run:  python benchmarks/linear_special_case.py [--seeds 0 1 2 3 4] [--validation-fraction 0.1] [--output NAME]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import truths
from common import print_table, rmse, single_thread, write_json


def oracle(sim) -> tuple[float, float]:
    """(RMSE, llf) of MixedLM (ML) with the true fixed and random designs."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    X, Z = truths.lmm_spline_design(sim.data)
    y = sim.data["y"].to_numpy(float)
    observed = ~np.isnan(y)
    groups = sim.data["id"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = MixedLM(y[observed], X[observed], groups=groups[observed], exog_re=Z[observed]).fit(reml=False)
    b = np.vstack([np.asarray(result.random_effects[g]) for g in groups])
    means = X @ np.asarray(result.fe_params) + (Z * b).sum(1)
    return rmse(means, sim.truth["y_mean"]), float(result.llf)


def linear_dgmm(sim, seed: int, validation_fraction: float):
    from pyro_dgmm import DeepMixedModel

    model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates,
                           time_basis="spline(3)", latent_dim=4, validation_fraction=validation_fraction,
                           model_options=dict(fixed_hidden=(), random_hidden=(), covariate_time=True))
    start = time.perf_counter()
    model.fit(sim.data, progress=False, seed=seed, refine=True)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-subjects", type=int, default=800)
    parser.add_argument("--validation-fraction", type=float, default=0.0,
                        help="subjects held out for the convergence test (the library's default is 0.1; the "
                             "refinement uses every subject either way)")
    parser.add_argument("--output", default="linear_special_case")
    args = parser.parse_args()
    single_thread()
    rows = []
    for seed in args.seeds:
        sim = truths.simulate_lmm_spline(n_subjects=args.n_subjects, seed=seed)
        oracle_rmse, oracle_llf = oracle(sim)
        model, seconds = linear_dgmm(sim, seed, args.validation_fraction)
        refinement = model.result_.refinement
        fitted = model.fitted_values()
        merged = sim.data[["id", "time"]].merge(fitted[["id", "time", "y_fitted"]], on=["id", "time"], how="left")
        dgmm_rmse = rmse(merged["y_fitted"], sim.truth["y_mean"])
        rows.append({"seed": seed, "oracle_rmse": oracle_rmse, "linear_rmse": dgmm_rmse,
                     "rmse_ratio": dgmm_rmse / oracle_rmse, "oracle_llf": oracle_llf,
                     "llf_before_refine": refinement["log_likelihood_before"],
                     "llf_after_refine": refinement["log_likelihood_after"],
                     "llf_relative_gap": (oracle_llf - refinement["log_likelihood_after"]) / abs(oracle_llf),
                     "refine_steps": refinement["steps"], "refine_converged": refinement["converged"],
                     "svi_epochs": model.result_.epochs_run, "seconds": seconds,
                     "refine_seconds": refinement["seconds"]})
        print(rows[-1], flush=True)
    print_table(rows, "Truth (a): linear special case (SVI + refinement) vs MixedLM with the true design")
    write_json(rows, args.output)


if __name__ == "__main__":
    main()
