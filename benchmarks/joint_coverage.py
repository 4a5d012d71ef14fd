"""Issue 20 benchmark: bias and 95% Wald coverage of the joint model's association.

Each replication simulates :func:`~pyro_dgmm.datasets.joint.simulate_joint`
(500 subjects, Weibull baseline with shape 1.4, linear current-value
association alpha = 0.5, a binary covariate in the hazard and the marker,
uniform censoring on [2, 10]), fits :class:`~pyro_dgmm.joint_estimator.JointMixedModel`
with its default settings (default networks, latent dimension, fit preset),
and takes alpha, its Wald standard error and 95% interval from
``event_standard_errors()`` (the association, covariate effect, Weibull
intercept and shape free together, with the residual SD).  Per replication: estimate, SE, 95% interval,
whether it covers the truth, fit and SE seconds.  Summary: mean relative
bias of alpha (with its Monte Carlo SE), coverage with its exact binomial
(Clopper-Pearson) 95% interval, mean SE against the SD of the estimates.
The JSON is rewritten after every replication, so a run stopped early
leaves the replications done so far and their summary.

Acceptance (issue 20): mean alpha within 10% of the truth, coverage in 90-99%
over at least 40 replications.

Run:  cd benchmarks && OMP_NUM_THREADS=1 ../.venv/bin/python joint_coverage.py [--reps 40] [--jobs 1]
      [--n-subjects 500] [--first-seed 0] [--output joint_coverage]
"""
from __future__ import annotations

import argparse
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import stats

from common import print_table, single_thread, write_json

def replication(seed: int, n_subjects: int) -> dict:
    """Simulate, fit with defaults, and return alpha's estimate, SE and interval for one seed."""
    single_thread()
    import pyro

    from pyro_dgmm import diagnostics, errors
    from pyro_dgmm.datasets.joint import simulate_joint
    from pyro_dgmm.joint_estimator import JointMixedModel

    sim = simulate_joint(n_subjects=n_subjects, seed=seed)
    truth = sim.params["alpha"]
    pyro.set_rng_seed(seed)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.LatentDimensionWarning)  # the truth has 2 random effects
        est.fit(sim.data, events=sim.events, event_time="time", event_status="status", progress=False, seed=seed)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", diagnostics.InferenceWarning)
        table = est.event_standard_errors(seed=seed).set_index("term")
    se_seconds = time.perf_counter() - start
    row = table.loc["alpha"]
    alpha = float(row["estimate"])
    return {"seed": seed, "truth": truth, "alpha": alpha, "se": float(row["se"]), "lower": float(row["lower"]),
            "upper": float(row["upper"]), "covered": bool(row["lower"] < truth < row["upper"]),
            "shape_minus_1": float(table.loc["log_time", "estimate"]),
            "events": int(sim.events.status.sum()), "epochs": len(est.result_.train_loss),
            "latent_dim": int(est.model_.latent_dim), "inference_warnings": len(caught),
            "fit_seconds": fit_seconds, "se_seconds": se_seconds}


def summarise(rows: list[dict]) -> dict:
    """Mean relative bias (with MC SE), coverage with its Clopper-Pearson interval, mean SE vs SD."""
    alpha = np.array([r["alpha"] for r in rows])
    truth = rows[0]["truth"]
    covered = sum(r["covered"] for r in rows)
    n = len(rows)
    interval = stats.binomtest(covered, n).proportion_ci(0.95, method="exact")
    return {"reps": n, "truth": truth, "mean_alpha": float(alpha.mean()),
            "relative_bias": float(alpha.mean() / truth - 1),
            "relative_bias_mc_se": float(alpha.std(ddof=1) / np.sqrt(n) / truth) if n > 1 else float("nan"),
            "coverage": covered / n, "coverage_low": float(interval.low), "coverage_high": float(interval.high),
            "mean_se": float(np.mean([r["se"] for r in rows])),
            "sd_alpha": float(alpha.std(ddof=1)) if n > 1 else float("nan"),
            "median_fit_seconds": float(np.median([r["fit_seconds"] for r in rows])),
            "median_se_seconds": float(np.median([r["se_seconds"] for r in rows])),
            "bias_within_10%": bool(abs(alpha.mean() / truth - 1) < 0.10),
            "coverage_in_90_99%": bool(0.90 <= covered / n <= 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=1, help="processes (one torch thread each)")
    parser.add_argument("--n-subjects", type=int, default=500)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--output", default="joint_coverage")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.reps)
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(replication, seeds, [args.n_subjects] * args.reps):
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            write_json(rows + [summarise(rows)], args.output)
    total = summarise(rows)
    print_table(rows, "Per replication")
    print_table([total], "Alpha: bias, coverage of 95% Wald intervals, SE vs SD")
    write_json(rows + [total], args.output)


if __name__ == "__main__":
    main()
