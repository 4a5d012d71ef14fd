"""Issue 5 benchmark: marginal likelihood and standard errors against MixedLM.

The linear DGMM (``fixed_hidden=()``, ``random_hidden=()``, ``poly(1)``) is
a linear mixed model, so statsmodels MixedLM (maximum likelihood) is an
oracle on ``simulate_linear`` data.  Three tables:

1. n=300 subjects x 10 visits (the configuration of tests/test_fit.py): total
   marginal log-likelihood, fixed-effect coefficients, residual SD and their
   standard errors from MixedLM, from pyro_dgmm at the SVI estimates and after
   ``maximize_marginal_likelihood``, with ratios to MixedLM.  MixedLM reports
   no SE for the residual SD; its reference is the full observed information
   of the closed-form likelihood at MixedLM's estimates.
2. Monte Carlo SD of the log-likelihood estimate at the SVI estimates for
   M = 100, 1000, 10000 draws per subject, with the encoder as proposal and
   with the adapted proposal: the SD the estimator reports and the SD over
   repeated seeds, and the mean error against the closed-form value.
3. Coverage of 95% Wald intervals for the residual SD and the fixed effects
   over repeated simulations (smaller data), at the SVI estimates and after
   maximisation; MixedLM's intervals for the fixed effects as reference.

Run:  cd benchmarks && ../.venv/bin/python standard_errors.py [--seed 3] [--reps 40] [--quick]
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from common import print_table, single_thread, write_json

TERMS = ["intercept", "time", "age", "group[treated]"]


def fit_dgmm(df: pd.DataFrame, epochs: int, seed: int):
    from pyro_dgmm import DeepMixedModel

    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                           time_basis="poly(1)", model_options=dict(fixed_hidden=(), random_hidden=()),
                           validation_fraction=0.0)
    return model.fit(df, progress=False, seed=seed, max_epochs=epochs, batch_size=32)


def fit_mixedlm(df: pd.DataFrame):
    """MixedLM (ML) with random intercept and slope; design [1, t, age, treated]."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    X, Z, y = design(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MixedLM(y, X, groups=df.id.to_numpy(), exog_re=Z).fit(reml=False)


def design(df: pd.DataFrame):
    X = np.column_stack([np.ones(len(df)), df.time, df.age, (df.group == "treated").astype(float)])
    Z = np.column_stack([np.ones(len(df)), df.time])
    return X, Z, df.y.to_numpy()


def mixedlm_sigma_se(df: pd.DataFrame, ref) -> float:
    """SE of the residual SD at MixedLM's estimates, from the observed information of the
    closed-form likelihood in (beta, chol(D), log sigma) (equal visits per subject)."""
    X, Z, y = (torch.tensor(a, dtype=torch.float64) for a in design(df))
    n = df.id.nunique()
    X, Z, y = X.reshape(n, -1, 4), Z.reshape(n, -1, 2), y.reshape(n, -1)
    chol = np.linalg.cholesky(np.asarray(ref.cov_re))
    theta = torch.tensor(np.r_[ref.fe_params, chol[0, 0], chol[1, 0], chol[1, 1], 0.5 * np.log(ref.scale)])

    def loglik(th):
        L = torch.stack([torch.stack([th[4], th[4] * 0]), torch.stack([th[5], th[6]])])
        cov = Z @ (L @ L.T) @ Z.transpose(-1, -2) + torch.exp(2 * th[7]) * torch.eye(y.shape[1], dtype=y.dtype)
        return torch.distributions.MultivariateNormal(X @ th[:4], cov).log_prob(y).sum()

    information = -torch.autograd.functional.hessian(loglik, theta)
    return float(np.sqrt(ref.scale) * torch.linalg.inv(information)[7, 7].sqrt())


def exact_log_likelihood(model, data) -> float:
    """Closed-form total log p(y) of the linear DGMM at its current parameters (all cells observed)."""
    model = copy.deepcopy(model).double()
    data = data.to(dtype=torch.float64)
    n, q = data.num_subjects, model.latent_dim
    with torch.no_grad():
        eta0 = model.eta(torch.zeros(n, q, dtype=torch.float64), data)[..., 0]
        jac = torch.stack([model.eta(torch.eye(q, dtype=torch.float64)[j].expand(n, q), data)[..., 0] - eta0
                           for j in range(q)], -1)
        cov = jac @ jac.transpose(-1, -2) + model.dispersion("y") ** 2 * torch.eye(data.num_visits, dtype=torch.float64)
        return float(torch.distributions.MultivariateNormal(eta0, cov).log_prob(data.y[..., 0]).sum())


def inference(est, num_samples: int, seed: int = 0):
    """(coefficient table indexed by term, sigma row, total log-likelihood, MC SD, seconds)."""
    from pyro_dgmm import linear_tables, parameters, wald

    start = time.perf_counter()
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS,
                                  num_samples=num_samples, seed=seed)
    table = linear_tables.linear_coefficients(est.model_, est.schema_, errors).loc["y"]
    table = table.rename(index={"Intercept": "intercept", "group[T.treated]": "group[treated]"})  # the truth's names
    seconds = time.perf_counter() - start
    return table, errors.summary().loc["sigma[y]"], errors.marginal.total, errors.marginal.total_mc_sd, seconds


def maximize(est, num_samples: int) -> float:
    from pyro_dgmm import parameters, wald

    start = time.perf_counter()
    wald.maximize_marginal_likelihood(est.model_, est.guide_, est.data_,
                                      [*parameters.LINEAR_FIXED_EFFECTS, parameters.LINEAR_RANDOM_EFFECTS],
                                      num_samples=num_samples)
    return time.perf_counter() - start


def oracle_rows(seed: int, epochs: int, num_samples: int) -> tuple[list[dict], object, object]:
    from pyro_dgmm.datasets import simulate_linear

    sim = simulate_linear(n_subjects=300, n_visits=10, seed=seed)
    start = time.perf_counter()
    ref = fit_mixedlm(sim.data)
    ref_seconds = time.perf_counter() - start
    start = time.perf_counter()
    est = fit_dgmm(sim.data, epochs, seed=0)
    fit_seconds = time.perf_counter() - start
    svi = inference(est, num_samples)
    svi_state = {k: v.clone() for k, v in est.model_.state_dict().items()}
    max_seconds = maximize(est, num_samples)
    ml = inference(est, num_samples)
    rows = [comparison("log-likelihood", ref.llf, svi[2], ml[2])]
    for term, value, se in zip(TERMS, ref.fe_params, ref.bse[:4]):
        rows.append(comparison(term, value, svi[0].estimate[term], ml[0].estimate[term], ratios=False))
        rows.append(comparison(f"  SE {term}", se, svi[0].se[term], ml[0].se[term]))
    rows.append(comparison("sigma", float(np.sqrt(ref.scale)), svi[1].estimate, ml[1].estimate))
    rows.append(comparison("  SE sigma", mixedlm_sigma_se(sim.data, ref), svi[1].se, ml[1].se))
    rows.append(comparison("seconds", ref_seconds, fit_seconds + svi[4], fit_seconds + max_seconds + ml[4],
                           ratios=False))
    est.model_.load_state_dict(svi_state)
    return rows, est, sim


def comparison(quantity: str, reference: float, svi: float, ml: float, ratios: bool = True) -> dict:
    """A row of table 1: MixedLM, pyro_dgmm at the SVI and at the ML estimates, and their ratios."""
    return {"quantity": quantity, "MixedLM": reference, "SVI": svi, "SVI/MixedLM": svi / reference if ratios else np.nan,
            "ML": ml, "ML/MixedLM": ml / reference if ratios else np.nan}


def monte_carlo_rows(est, sizes: list[int], seeds: int) -> list[dict]:
    from pyro_dgmm import diagnostics, marginal

    exact = exact_log_likelihood(est.model_, est.data_)
    rows = []
    for adapt in (False, True):
        for size in sizes:
            runs = []
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", diagnostics.InferenceWarning)
                for seed in range(seeds):
                    result = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, size, adapt=adapt, seed=seed)
                    runs.append((result.total, result.total_mc_sd, int(result.unreliable.sum())))
            totals, sds, bad = (np.array(x) for x in zip(*runs))
            rows.append({"proposal": "adapted" if adapt else "encoder", "M": size, "reported_sd": np.median(sds),
                         "sd_over_seeds": totals.std(ddof=1), "mean_error": totals.mean() - exact,
                         "k_hat>0.7": bad.mean(), "seconds": (time.perf_counter() - start) / seeds})
    return rows


def coverage_rows(reps: int, n_subjects: int, n_visits: int, epochs: int, num_samples: int) -> list[dict]:
    from pyro_dgmm import diagnostics
    from pyro_dgmm.datasets import simulate_linear

    z = NormalDist().inv_cdf(0.975)
    hits = {key: [] for key in ("SVI", "ML", "MixedLM")}
    for rep in range(reps):
        sim = simulate_linear(n_subjects=n_subjects, n_visits=n_visits, seed=1000 + rep)
        truth = pd.Series({**sim.params["beta"], "sigma": sim.params["sigma"]})
        ref = fit_mixedlm(sim.data)
        covered = np.abs(np.asarray(ref.fe_params) - truth[TERMS].to_numpy()) < z * np.asarray(ref.bse[:4])
        hits["MixedLM"].append(dict(zip(TERMS, covered)))
        est = fit_dgmm(sim.data, epochs, seed=rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", diagnostics.InferenceWarning)
            for key in ("SVI", "ML"):
                if key == "ML":
                    maximize(est, num_samples)
                table, sigma, *_ = inference(est, num_samples, seed=rep)
                covered = (table.lower < truth[TERMS]) & (truth[TERMS] < table.upper)
                hits[key].append({**covered.to_dict(), "sigma": sigma.lower < truth.sigma < sigma.upper})
    rows = []
    for key, records in hits.items():
        frame = pd.DataFrame(records)
        rows.append({"intervals": key, "reps": reps, **frame.mean().to_dict()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3, help="simulation seed of tables 1-2 (3: as tests/test_fit)")
    parser.add_argument("--reps", type=int, default=40, help="coverage replications (0: skip table 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short fits, few samples and reps")
    args = parser.parse_args()
    single_thread()
    epochs, samples = (10, 100) if args.quick else (150, 1000)
    rows, est, sim = oracle_rows(args.seed, epochs, samples)
    print_table(rows, f"1. linear DGMM vs MixedLM (ML), simulate_linear(300 subjects, 10 visits, seed={args.seed}), "
                      f"M={samples}")
    sizes, seeds = ([100, 400], 2) if args.quick else ([100, 1000, 10000], 5)
    mc = monte_carlo_rows(est, sizes, seeds)
    print_table(mc, f"2. Monte Carlo SD of the total log-likelihood estimate at the SVI estimates ({seeds} seeds)")
    results = [{"table": "oracle", **r} for r in rows] + [{"table": "monte_carlo", **r} for r in mc]
    if args.reps:
        reps = 3 if args.quick else args.reps
        cov = coverage_rows(reps, n_subjects=150, n_visits=8, epochs=10 if args.quick else 60,
                            num_samples=100 if args.quick else 500)
        print_table(cov, "3. coverage of 95% intervals, simulate_linear(150 subjects, 8 visits), SVI 60 epochs")
        results += [{"table": "coverage", **r} for r in cov]
    write_json(results, "standard_errors")


if __name__ == "__main__":
    main()
