"""Issue 19: seconds of the default fit at n=800 x 20 beside MixedLM's, in one
process (one torch thread), on the package's nonlinear simulator and on
truth (b) of ``truths.py`` (``--truths`` names others); each fit after a one-epoch warm-up that pays
the one-time imports.  ``--preset fast`` times the fast preset instead.

Run:  python benchmarks/default_fit_time.py [--seeds 3 4] [--preset fast] [--fit-options '{"race_epochs": 0}']
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import truths
from common import fit_mixedlm, print_table, rmse, single_thread, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--preset", default="accurate")
    parser.add_argument("--truths", nargs="+", default=["nonlinear", "logistic_growth"],
                        choices=["nonlinear", *truths.SIMULATORS], help="which truths to time")
    parser.add_argument("--output", default=None, help="results file name (default: by preset)")
    parser.add_argument("--fit-options", type=json.loads, default={},
                        help='fit settings over the preset, as JSON (e.g. \'{"race_epochs": 0}\')')
    args = parser.parse_args()
    single_thread()
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_nonlinear

    sims = {"nonlinear": lambda seed: simulate_nonlinear(seed=seed),
            **{name: (lambda seed, f=f: f(seed=seed)) for name, f in truths.SIMULATORS.items()}}
    rows = []
    for name in args.truths:
        simulate = sims[name]
        for seed in args.seeds:
            sim = simulate(seed)
            warm = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                warm.fit(sim.data.head(200), max_epochs=1, progress=False)
            model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
            start = time.perf_counter()
            model.fit(sim.data, progress=False, seed=seed, preset=args.preset, **args.fit_options)
            seconds = time.perf_counter() - start
            dgmm_rmse = rmse(model.fitted_values()["y_fitted"], sim.truth["y_mean"])
            means, mixedlm_seconds = fit_mixedlm(sim.data, "y", sim.covariates, spline_df=4)
            rows.append({"truth": name, "seed": seed, "preset": args.preset, "fit_options": args.fit_options,
                         "dgmm_seconds": seconds,
                         "epochs": model.result_.epochs_run, "latent_dim": model.latent_dim_,
                         "time_functions": model.time_functions_, "race": model.result_.time_functions_race,
                         "fits_run": max(len(model.result_.starts), 1),
                         "refinement_seconds": (model.result_.refinement or {}).get("seconds"),
                         "mixedlm_seconds": mixedlm_seconds, "ratio": seconds / mixedlm_seconds,
                         "dgmm_rmse": dgmm_rmse, "mixedlm_spline4_rmse": rmse(means, sim.truth["y_mean"])})
            print(rows[-1], flush=True)
    print_table(rows, f"Default fit ({args.preset}) vs MixedLM spline(4), n=800 x 20, one thread")
    write_json(rows, args.output or f"default_fit_time_{args.preset}")


if __name__ == "__main__":
    main()
