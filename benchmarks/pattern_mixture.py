"""Issue 24 part 2: pattern-mixture imputation under ACMV against the MAR fit.

On :func:`~pyro_dgmm.datasets.simulate_trial` (a two-arm trial, 300
subjects x 7 visits, about 30% dropout by the last visit), each seed fits
the default DGMM twice, with ``missing='mask'`` (MAR) and with
``missing='pattern_mixture'`` (default :class:`~pyro_dgmm.pattern_mixture.PatternConfig`:
four patterns), and computes the population mean curve of each from
``imputed_mean_curve(num_imputations=20)`` (the completed-data mean at each
visit, pooled by Rubin's rules):

* ``mar``: MAR dropout (``delta=0``: dropout depends on the last observed
  value only).  ACMV holds, so the two curves should agree: the table gives
  the difference at each visit, its Monte Carlo SE from the imputations
  (``sqrt(B_pm / m + B_mar / m)``) and, over seeds, the mean difference with
  its SE (which adds fit-to-fit variation);
* ``mnar`` (after ``mar``, no fits): the pattern-mixture MNAR truth
  (values after dropout 1 below what MAR implies, ``delta=-1``): the bias
  of each fit's last-visit mean against the sample's complete-data mean.
  ``simulate_trial`` moves only the unobserved values, so with the same
  seed the observed data, and hence both fits and their curves, are the
  ``mar`` part's (checked); only the complete-data means differ.  ACMV is
  a MAR-type restriction, so the pattern-mixture fit should be as far off
  as the MAR fit;
* ``control`` (after ``mar``): a
  second MAR fit with another seed (``seed + 100``, also drawing the
  imputations) against the ``mar`` part's MAR fit: how far two fits of the
  same model differ (fit-to-fit variation, which the imputations' Monte
  Carlo SE leaves out).

Run:  python benchmarks/pattern_mixture.py --seeds 0 1 2 3 4   (parts mar, then mnar)
      python benchmarks/pattern_mixture.py --parts control --output pattern_mixture_control
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common import print_table, single_thread, write_json

IMPUTATIONS = 20


def _fit_and_curve(sim, seed, missing):
    from pyro_dgmm import DeepMixedModel

    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(sim.data, progress=False, seed=seed, missing=missing)
    fitted = time.perf_counter() - start
    curve = model.imputed_mean_curve(num_imputations=IMPUTATIONS, seed=seed)
    return curve, fitted, time.perf_counter() - start - fitted, model


def run_seed(seed, part, rows, output):
    from pyro_dgmm.datasets import simulate_trial

    sim = simulate_trial(300, seed=seed, delta=0.0)
    complete = sim.truth.groupby("time")["y_complete"].mean()
    curves, patterns = {}, None
    for missing in ("mask", "pattern_mixture"):
        curves[missing], fit_s, impute_s, model = _fit_and_curve(sim, seed, missing)
        if missing == "pattern_mixture":
            patterns = model.patterns_.table()[["pattern", "subjects"]].to_dict("list")
        print(json.dumps({"part": part, "seed": seed, "missing": missing, "fit_seconds": fit_s,
                          "impute_seconds": impute_s, "epochs": model.result_.epochs_run}), flush=True)
    mar, pm = curves["mask"].set_index("time"), curves["pattern_mixture"].set_index("time")
    for t in mar.index:
        row = {"part": part, "seed": seed, "time": float(t), "mar_mean": float(mar.loc[t, "estimate"]),
               "pm_mean": float(pm.loc[t, "estimate"]), "difference": float(pm.loc[t, "estimate"] - mar.loc[t, "estimate"]),
               "mc_se": float(np.sqrt((pm.loc[t, "between"] + mar.loc[t, "between"]) / IMPUTATIONS)),
               "mar_std_error": float(mar.loc[t, "std_error"]), "pm_std_error": float(pm.loc[t, "std_error"]),
               "complete_mean": float(complete.loc[t]), "patterns": json.dumps(patterns)}
        rows.append(row)
    last = rows[-1]
    print(json.dumps({k: last[k] for k in ("part", "seed", "time", "mar_mean", "pm_mean", "difference", "mc_se",
                                           "complete_mean")}), flush=True)
    write_json(rows, output)  # after every seed: a run cut short keeps what it did


def run_mnar(seed, rows, output):
    """The ``mar`` part's curves against the complete-data means of the
    delta = -1 simulation, whose observed data are the same."""
    from pyro_dgmm.datasets import simulate_trial

    first = _mar_rows(seed)
    mar, mnar = simulate_trial(300, seed=seed, delta=0.0), simulate_trial(300, seed=seed, delta=-1.0)
    pd.testing.assert_frame_equal(mar.data, mnar.data)  # same observed data: the same fits
    complete = mnar.truth.groupby("time")["y_complete"].mean()
    for t, row in first.iterrows():
        rows.append({**row.to_dict(), "part": "mnar", "time": float(t), "complete_mean": float(complete.loc[t])})
    write_json(rows, output)


def _mar_rows(seed):
    first = pd.DataFrame(json.loads((Path(__file__).parent / "results" / "pattern_mixture.json").read_text())["rows"])
    return first[(first.part == "mar") & (first.seed == seed)].set_index("time")


def run_control(seed, rows, output):
    """A second MAR fit (seed + 100) against the ``mar`` part's MAR fit, read
    from results/pattern_mixture.json (fits and draws are reproducible with
    one thread).  The MC SE is sqrt(2 B / m) from the second fit's B."""
    from pyro_dgmm.datasets import simulate_trial

    first = _mar_rows(seed)
    curve, fit_s, impute_s, _ = _fit_and_curve(simulate_trial(300, seed=seed, delta=0.0), seed + 100, "mask")
    print(json.dumps({"part": "control", "seed": seed, "fit_seconds": fit_s, "impute_seconds": impute_s}), flush=True)
    for _, c in curve.iterrows():
        t = float(c["time"])
        rows.append({"part": "control", "seed": seed, "time": t, "mar_mean": float(first.loc[t, "mar_mean"]),
                     "pm_mean": float(c["estimate"]), "difference": float(c["estimate"] - first.loc[t, "mar_mean"]),
                     "mc_se": float(np.sqrt(2 * c["between"] / IMPUTATIONS)),
                     "complete_mean": float(first.loc[t, "complete_mean"])})
    write_json(rows, output)


def summarise(frame: pd.DataFrame) -> None:
    for part, title in (("mar", "MAR data: pattern mixture (ACMV) minus MAR fit, population mean"),
                        ("control", "control, MAR data: MAR fit (seed + 100) minus MAR fit")):
        _summarise_mar(frame[frame.part == part], title)
    mnar = frame[(frame.part == "mnar") & (frame.time == frame.time.max())].copy()
    if len(mnar):
        mnar["mar_bias"] = mnar.mar_mean - mnar.complete_mean
        mnar["pm_bias"] = mnar.pm_mean - mnar.complete_mean
        print_table(mnar[["seed", "mar_bias", "pm_bias", "mc_se"]].to_dict("records"),
                    "MNAR pattern-mixture data (delta = -1): bias of the last-visit mean")
        print(f"mean bias: MAR fit {mnar.mar_bias.mean():+.3f} (SD {mnar.mar_bias.std():.3f}), "
              f"pattern mixture {mnar.pm_bias.mean():+.3f} (SD {mnar.pm_bias.std():.3f})")


def _summarise_mar(mar: pd.DataFrame, title: str) -> None:
    if len(mar):
        table = mar.groupby("time").agg(mean_difference=("difference", "mean"), sd_difference=("difference", "std"),
                                        mean_mc_se=("mc_se", "mean"), mar_mean=("mar_mean", "mean"),
                                        pm_mean=("pm_mean", "mean"), seeds=("seed", "count")).reset_index()
        table["se_of_mean_difference"] = table.sd_difference / np.sqrt(table.seeds)
        print_table(table.to_dict("records"), title)
        print_table(mar[mar.time == mar.time.max()][["seed", "mar_mean", "pm_mean", "difference", "mc_se",
                                                      "complete_mean"]].to_dict("records"), "last visit by seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--parts", nargs="+", default=["mar", "mnar"], choices=["mar", "mnar", "control"])
    parser.add_argument("--output", default="pattern_mixture")
    args = parser.parse_args()
    single_thread()
    previous = Path(__file__).parent / "results" / f"{args.output}.json"  # rows of other parts are kept
    rows = [row for row in (json.loads(previous.read_text())["rows"] if previous.exists() else [])
            if row["part"] not in args.parts]
    for part in args.parts:
        for seed in args.seeds:
            if part == "control":
                run_control(seed, rows, args.output)
            elif part == "mnar":
                run_mnar(seed, rows, args.output)
            else:
                run_seed(seed, part, rows, args.output)
    summarise(pd.DataFrame(rows))


if __name__ == "__main__":
    main()
