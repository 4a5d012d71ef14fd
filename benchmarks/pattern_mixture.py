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
  Carlo SE leaves out);
* ``one_step``: where each fit's imputations go wrong, free of what earlier
  visits pass on: refits the ``mar`` part's two models (the same seeds, so
  the same fits with one thread), draws ``impute(num_imputations=20)`` and,
  for every visit t and subject that dropped out before it, compares the
  imputed y_t with the true E[y_t | y_<t] of the simulator's linear mixed
  model given that imputation's past (MAR: the law among everybody).  For
  the pattern mixture also per donor pattern k: the share of draws from k
  against the true probability of k, P(D in k, D >= t | y_<t, D >= t), and
  the draws from k against the true mean of that component, E[y_t | y_<t,
  D in k, D >= t] (D the last observed visit; both by Monte Carlo over the
  true future given the past: 2,000 draws);
* ``oracle`` (no fits, seconds): the ACMV donor rules with the simulator's
  exact conditionals, on a population of 400,000 (the four patterns above:
  last observed visit 1, 2-3, 4-5, completers).  Each dropout's values are
  drawn visit by visit from the law of y_t given the past among the donors:
  everybody observed at t, D >= t (ACMV, which is MAR here: the true
  Gaussian conditional), or, the rule before the fix, only the patterns
  whose *earliest* dropout is at or after t (D >= 4 at visit 3, D >= 6 at
  visit 5: the Gaussian conditional tilted by the probability of staying
  after visit t, by rejection); the rows give each rule's bias of the
  population mean against the complete data.  And at visit 5 alone, the
  mean of the fixed rule's mixture of P3 (with the constant share
  rho_3(5) of its subjects observed at 5) and the completers, with the
  exact components, against the exact conditional mean (by quadrature).

Run:  python benchmarks/pattern_mixture.py --seeds 0 1 2 3 4   (parts mar, then mnar)
      python benchmarks/pattern_mixture.py --parts control --output pattern_mixture_control
      python benchmarks/pattern_mixture.py --parts one_step --seeds 0 1 --output pattern_mixture_one_step
      python benchmarks/pattern_mixture.py --parts oracle --seeds 1 --output pattern_mixture_oracle
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


def run_one_step(seed, rows, output):
    """The ``one_step`` part (module docstring) for one seed."""
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_trial

    sim = simulate_trial(300, seed=seed, delta=0.0)
    for missing in ("mask", "pattern_mixture"):
        model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(sim.data, progress=False, seed=seed, missing=missing)
        frames = [f.sort_values(["id", "time"]) for f in model.impute(num_imputations=IMPUTATIONS, seed=seed)]
        donors = None if model.patterns_ is None else dict(zip(model.patterns_.labels, model.patterns_.dropouts))
        rows.extend(_one_step_rows(sim, frames, donors, seed, missing))
        print(json.dumps(rows[-1]), flush=True)
        write_json(rows, output)


def _one_step_rows(sim, frames, donors, seed, missing, draws=2000):
    """Rows of the ``one_step`` part for one fit's imputed ``frames``;
    ``donors``: pattern -> its dropout times (None for the MAR fit)."""
    p = sim.params
    t = np.sort(sim.data["time"].unique())
    n, visits = sim.data["id"].nunique(), len(t)
    arm = sim.data.groupby("id")["arm"].first().to_numpy()
    mean = p["intercept"] + (p["slope"] + p["effect"] * arm[:, None]) * t
    z = np.column_stack([np.ones(visits), t])
    cov = z @ np.diag(np.square(p["b_sd"])) @ z.T + p["sigma"] ** 2 * np.eye(visits)
    last = (~np.isnan(sim.data["y"].to_numpy().reshape(n, visits))).sum(1) - 1
    leave = lambda v: 1 / (1 + np.exp(-(p["a0"] + p["a1"] * (v - p["intercept"]))))  # after a visit, given it
    rng = np.random.default_rng([24, seed])
    out = []
    for s in range(1, visits):
        who = last < s
        if not who.any():
            continue
        past, future = np.arange(s), np.arange(s, visits)
        gain = np.linalg.solve(cov[np.ix_(past, past)], cov[np.ix_(past, future)])
        root = np.linalg.cholesky(cov[np.ix_(future, future)] - cov[np.ix_(future, past)] @ gain)
        errors, by_donor = [], []
        for f in frames:
            y = f["y"].to_numpy().reshape(n, visits)[who]
            centre = mean[who][:, future] + (y[:, :s] - mean[who][:, :s]) @ gain
            errors.append(y[:, s] - centre[:, 0])
            if donors is None:
                continue
            ahead = centre[:, None, :] + rng.standard_normal((len(y), draws, len(future))) @ root.T
            stay = np.cumprod(1 - leave(ahead), -1)  # P(still in after visit s + j | D >= s, future)
            # P(D = s + j | D >= s, future): leave after s + j, having stayed before; the last visit keeps the rest
            prob = np.concatenate([np.ones_like(stay[..., :1]), stay[..., :-1]], -1) * leave(ahead)
            prob[..., -1] = stay[..., -2] if len(future) > 1 else 1.0
            drawn = f["donor_pattern"].to_numpy().reshape(n, visits)[who, s]
            for label, times in donors.items():
                ahead_d = [d for d in times if d >= t[s] - 1e-9]
                if not ahead_d:
                    continue
                w = prob[..., np.searchsorted(t[s:], ahead_d)].sum(-1)
                component = (w * ahead[..., 0]).sum(1) / np.maximum(w.sum(1), 1e-300)
                mine = drawn == label
                by_donor.append({"donor": label, "draws": int(mine.sum()), "true_probability": float(w.mean(1).sum()),
                                 "minus_component": float((y[mine, s] - component[mine]).sum())})
        error = np.mean(errors, 0)
        row = {"part": "one_step", "seed": seed, "missing": missing, "time": float(t[s]), "dropouts": int(who.sum()),
               "one_step_bias": float(error.mean()), "se": float(error.std(ddof=1) / np.sqrt(len(error)))
               if len(error) > 1 else float("nan"), "population_effect": float(error.sum() / n)}
        if by_donor:
            table = pd.DataFrame(by_donor).groupby("donor", sort=False).sum()
            row["donors"] = {k: {"draw_share": v.draws / table.draws.sum(),
                                 "true_share": v.true_probability / (len(frames) * who.sum()),
                                 "draws_minus_true_component": v.minus_component / max(v.draws, 1)}
                             for k, v in table.iterrows()}
        out.append(row)
    return out


def run_oracle(seed, rows, output, n=400_000):
    """The ``oracle`` part (module docstring)."""
    from pyro_dgmm.datasets.trial import _TRIAL, _draw

    p, visits = _TRIAL, 7
    rng = np.random.default_rng([24, 7, seed])
    arm, t, y, _, observed, _ = _draw(rng, n, visits, 0.3, 0.0, "pattern_mixture")
    last = observed.sum(1) - 1
    z = np.column_stack([np.ones(visits), t])
    cov = z @ np.diag(np.square(p["b_sd"])) @ z.T + p["sigma"] ** 2 * np.eye(visits)
    mean = p["intercept"] + (p["slope"] + 0.3 * arm[:, None]) * t
    leave = lambda v: 1 / (1 + np.exp(-(p["a0"] + p["a1"] * (v - p["intercept"]))))
    first = (1, 2, 4, 6)  # earliest dropout of the patterns {1}, {2, 3}, {4, 5}, completers
    rules = {"acmv": {s: s for s in range(visits)}, "earliest_dropout": {s: min(f for f in first if f >= s)
                                                                        for s in range(visits)}}
    for rule, donors_from in rules.items():
        completed = np.where(observed, y, np.nan)
        for s in range(2, visits):
            who = last < s
            gain = np.linalg.solve(cov[:s, :s], cov[:s, s])
            centre = mean[who, s] + (completed[who, :s] - mean[who, :s]) @ gain
            sd = np.sqrt(cov[s, s] - cov[:s, s] @ gain)
            draw = centre + sd * rng.standard_normal(centre.shape)
            assert donors_from[s] <= s + 1  # the tilt below covers leaving after visit s only
            redo = np.zeros(len(draw), bool) if donors_from[s] == s else rng.random(len(draw)) < leave(draw)
            while redo.any():  # rejection: accept with the probability of staying after visit s
                draw[redo] = centre[redo] + sd * rng.standard_normal(redo.sum())
                redo[redo] = rng.random(redo.sum()) < leave(draw[redo])
            completed[who, s] = draw
        for s in range(visits):
            rows.append({"part": "oracle", "seed": seed, "rule": rule, "time": float(t[s]),
                         "bias": float(completed[:, s].mean() - y[:, s].mean())})
    s, who = 5, last < 5  # visit 5, the fixed rule's mixture with the exact components
    gain = np.linalg.solve(cov[:s, :s], cov[:s, s])
    centre = mean[who, s] + (y[who, :s] - mean[who, :s]) @ gain
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    values = centre[:, None] + np.sqrt(cov[s, s] - cov[:s, s] @ gain) * nodes
    weights = weights / weights.sum()
    leaves = (leave(values) * weights).sum(1)  # P(D = 5 | past, D >= 5)
    mean_leaving = (leave(values) * values * weights).sum(1) / leaves
    mean_staying = (centre - leaves * mean_leaving) / (1 - leaves)
    share = (last == 5).sum() / ((last == 4) | (last == 5)).sum()  # rho_3(5)
    h4 = leave(y[who, 4])
    # pi_3 rho_3 p_3(y_<5) against pi_C p_C(y_<5), without their common factor: P3 holds D = 4 (left after
    # visit 4) and D = 5 (stayed, then left after 5), the completers stayed after 4 and 5
    weight_p3 = share * (h4 + (1 - h4) * leaves)
    weight_completers = (1 - h4) * (1 - leaves)
    mixture = (weight_p3 * mean_leaving + weight_completers * mean_staying) / (weight_p3 + weight_completers)
    rows.append({"part": "oracle", "seed": seed, "rule": "acmv_constant_share_visit5", "time": 5.0,
                 "bias": float((mixture - centre).sum() / n)})
    write_json(rows, output)


def summarise(frame: pd.DataFrame) -> None:
    for part, title in (("mar", "MAR data: pattern mixture (ACMV) minus MAR fit, population mean"),
                        ("control", "control, MAR data: MAR fit (seed + 100) minus MAR fit")):
        _summarise_mar(frame[frame.part == part], title)
    oracle = frame[frame.part == "oracle"]
    if len(oracle):
        print_table(oracle[["rule", "time", "bias"]].to_dict("records"),
                    "exact conditionals: bias of the population mean against the complete data")
    one = frame[frame.part == "one_step"] if "part" in frame else frame.iloc[:0]
    if len(one):
        print_table(one.groupby(["missing", "time"]).agg(one_step_bias=("one_step_bias", "mean"),
                                                         population_effect=("population_effect", "mean"),
                                                         seeds=("seed", "count")).reset_index().to_dict("records"),
                    "one-step bias of the imputations against the true E[y_t | y_<t]")
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
    parser.add_argument("--parts", nargs="+", default=["mar", "mnar"], choices=["mar", "mnar", "control", "one_step", "oracle"])
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
            elif part == "one_step":
                run_one_step(seed, rows, args.output)
            elif part == "oracle":
                run_oracle(seed, rows, args.output)
            else:
                run_seed(seed, part, rows, args.output)
    summarise(pd.DataFrame(rows))


if __name__ == "__main__":
    main()
