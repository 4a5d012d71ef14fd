"""Issue 6 benchmark: pyro_dgmm and statsmodels MixedLM side by side as the
number of subjects grows.

For each size (default 800, 8,000 and 80,000 subjects x 20 visits) and
simulator (default the nonlinear one), the same simulated data set is fitted
twice, each fit in a fresh single-thread process:

* **MixedLM**: maximum likelihood, random intercept and slope in time,
  fixed effects a natural cubic spline of time (4 df) plus the covariates:
  the issue's reference for the nonlinear simulator (``--mixedlm-df 0``
  makes the fixed effects linear in time, the reference for the linear
  simulator).  Its wall time is that of ``MixedLM.fit`` alone; a fit that
  runs past ``--mixedlm-timeout`` seconds is killed and reported as such.
* **pyro_dgmm**: the default fit (the stopping rule decides how long), the
  wall time of the whole ``fit`` call (data validation and tensors
  included).

Both report the peak resident memory of their process (``VmHWM``) after the
fit, next to the peak after simulating the data (the part that is not the
fit's), and the RMSE of the subject-specific means against the simulation
truth at every planned cell.  The ratio columns divide pyro_dgmm's figure
by MixedLM's.

Run:  python benchmarks/scale_vs_mixedlm.py [--sizes 800 8000 80000]
      [--simulators nonlinear] [--mixedlm-df 4] [--mixedlm-timeout 3600]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time

from common import fit_mixedlm, peak_resident_mb, print_table, rmse, run_child, single_thread, write_json


def simulate(simulator: str, n_subjects: int):
    from pyro_dgmm.datasets import SIMULATORS

    return SIMULATORS[simulator](n_subjects=n_subjects, n_visits=20, seed=0)


def mixedlm_child(simulator: str, n_subjects: int, spline_df: int) -> None:
    """Fresh process: MixedLM on the simulated data; print a JSON row."""
    sim = simulate(simulator, n_subjects)
    before_mb = peak_resident_mb()
    means, seconds = fit_mixedlm(sim.data, "y", sim.covariates, spline_df=spline_df or None)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_resident_mb(), "peak_rss_data_mb": before_mb,
                      "rmse": rmse(means, sim.truth["y_mean"].to_numpy())}))


def dgmm_child(simulator: str, n_subjects: int) -> None:
    """Fresh process: the default pyro_dgmm fit; print a JSON row."""
    single_thread()
    from pyro_dgmm import DeepMixedModel

    sim = simulate(simulator, n_subjects)
    before_mb = peak_resident_mb()
    est = DeepMixedModel(id_col=sim.id_col, time_col=sim.time_col, outcomes=sim.outcomes,
                         covariates=sim.covariates)
    start = time.perf_counter()
    est.fit(sim.data, progress=False)
    seconds = time.perf_counter() - start
    fit_mb = peak_resident_mb()
    fitted = est.fitted_values(sim.data)["y_fitted"].to_numpy()
    print(json.dumps({"rows": len(sim.data), "seconds": seconds, "peak_rss_mb": fit_mb, "peak_rss_data_mb": before_mb,
                      "epochs": est.result_.epochs_run, "rmse": rmse(fitted, sim.truth["y_mean"].to_numpy())}))


def compare(simulator: str, n_subjects: int, spline_df: int, mixedlm_timeout: float) -> dict:
    size = str(n_subjects)
    dgmm = run_child(__file__, "--child-dgmm", simulator, size)
    row = {"simulator": simulator, "subjects": n_subjects, "rows": dgmm["rows"],
           "dgmm_seconds": dgmm["seconds"], "dgmm_epochs": dgmm["epochs"],
           "dgmm_peak_rss_mb": dgmm["peak_rss_mb"], "dgmm_data_rss_mb": dgmm["peak_rss_data_mb"],
           "dgmm_rmse": dgmm["rmse"]}
    try:
        lmm = run_child(__file__, "--child-mixedlm", simulator, size, str(spline_df), timeout=mixedlm_timeout)
    except subprocess.TimeoutExpired:
        row.update({"mixedlm_seconds": float("nan"), "mixedlm_note": f"killed after {mixedlm_timeout:.0f} s"})
        return row
    row.update({"mixedlm_seconds": lmm["seconds"], "mixedlm_peak_rss_mb": lmm["peak_rss_mb"],
                "mixedlm_data_rss_mb": lmm["peak_rss_data_mb"], "mixedlm_rmse": lmm["rmse"],
                "seconds_ratio": dgmm["seconds"] / lmm["seconds"],
                "peak_rss_ratio": dgmm["peak_rss_mb"] / lmm["peak_rss_mb"],
                "rmse_ratio": dgmm["rmse"] / lmm["rmse"]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 8000, 80000])
    parser.add_argument("--simulators", nargs="+", default=["nonlinear"], choices=["linear", "nonlinear"])
    parser.add_argument("--mixedlm-df", type=int, default=4, help="spline df of MixedLM's time effect; 0: linear")
    parser.add_argument("--mixedlm-timeout", type=float, default=3600.0)
    parser.add_argument("--child-mixedlm", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-dgmm", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mixedlm:
        return mixedlm_child(args.child_mixedlm[0], int(args.child_mixedlm[1]), int(args.child_mixedlm[2]))
    if args.child_dgmm:
        return dgmm_child(args.child_dgmm[0], int(args.child_dgmm[1]))
    rows = []
    for simulator in args.simulators:
        for n in args.sizes:
            rows.append(compare(simulator, n, args.mixedlm_df, args.mixedlm_timeout))
            print_table(rows[-1:], f"{simulator}, {n} subjects x 20 visits")
    print_table(rows, "pyro_dgmm (default fit) vs MixedLM (spline fixed effects) as subjects grow")
    write_json(rows, "scale_vs_mixedlm")


if __name__ == "__main__":
    main()
