"""Issue 19 benchmark: accuracy on truths the defaults were never tuned on.

For each truth of ``truths.py`` ((a) ``lmm_spline``, (b) ``logistic_growth``,
(c) ``biexponential``, (d) ``periodic``, (e) ``mixed_trio``, (f)
``sparse_irregular``, (g) ``many_outcomes``; their math is in that module's
docstring) and each seed it simulates n subjects x 20 visits and compares:

* **pyro_dgmm with default settings**: ``DeepMixedModel`` given only the
  id, time, outcome and covariate columns (plus ``--dgmm-options``, a JSON
  object of extra constructor arguments, and ``--fit-options``, a JSON
  object of ``fit`` arguments), ``fit(data, progress=False)``.  Reported:
  fit seconds, epochs run, the fit's stop reason, any warnings it raised,
  and, where ``model.result_`` has them, ``converged``,
  ``active_directions``, ``latent_dim`` and ``latent_activity``.
* **Baselines** (statsmodels, maximum likelihood; fixed effects always
  include x1 and x2; natural splines are pyro_dgmm's ``NaturalSpline``
  fitted to the observed times):

  - ``MixedLM linear time``: fixed [1, t, x], random intercept + slope in t;
  - ``MixedLM spline(4) time``: fixed [1, ns4(t), x], random intercept + slope
    (these two are the designs of ``common.fit_mixedlm``, here fitted on a
    chosen subset of rows, as (g) needs);
  - ``MixedLM random spline``: fixed [1, ns4(t), x], random [1, ns3(t)]
    (4 correlated random effects);
  - for binary and count outcomes, ``GLMM``: statsmodels'
    ``BinomialBayesMixedGLM`` / ``PoissonBayesMixedGLM`` (variational Bayes),
    fixed [1, ns4(t), x], independent random intercept and random slope in
    (t - 5) / 5; subject means are E[g^-1(eta)] over the approximate
    posterior of eta (probit approximation for the logit, exp(m + v/2) for
    the log); if it fails, a population-level ``GLM spline(4)`` instead
    (noted in the row).  The VB fit uses L-BFGS-B (:data:`GLMM_METHOD`):
    statsmodels' default BFGS gives the same posterior about ten times slower
    with 2 x n random effects.

* **Oracles**: (a) MixedLM with the true design (``truths.lmm_spline_design``:
  the covariate-by-spline fixed effects, random intercept + 3 spline
  coefficients), with its log-likelihood ``llf``; (b), (c), (d), (f) the
  true functional form (``truths.ORACLES``, a ``MixedModel`` variant) fitted
  by ``DeepMixedModel(model_class=<oracle>, latent_dim=<random parameters>)``
  with default fit settings, then refined by
  ``pyro_dgmm.wald.maximize_marginal_likelihood`` on all its curve
  parameters and the residual SD (``--oracle-samples`` importance samples,
  at most ``--oracle-max-steps`` Newton steps).  Its RMSE is the refined
  fit's; a refinement that fails or stops early is recorded in the row.

Metrics.  ``rmse``: root mean squared difference between a method's
subject-specific mean (pyro_dgmm: ``model.fitted_values()``; MixedLM:
X beta + Z b_hat) and the true mean ``<outcome>_mean`` over all planned
cells (observed or not).  ``brier`` (binary outcomes): mean squared
difference between the fitted probability and the simulated binary value
of every planned cell.  For (g), dynamic prediction: 20% of the subjects
are held out; pyro_dgmm is fitted to the other 80% and predicts (``model.predict``)
each held-out subject's cells after the landmark (t > 5, the midpoint of the
time range) from their cells up to the landmark; the baselines are fitted to
the training subjects plus the held-out subjects' histories (so their
predictions use the BLUPs / posterior means from the history).
``rmse_dynamic``: over the held-out later cells of the 20 Gaussian
outcomes (against the true mean, pooled); ``auc_dynamic``: mean over the 10
binary outcomes of the AUC of the predicted probability against the
simulated binary value at every held-out later cell (``auc_dynamic_observed``:
only at the cells that were observed); ``rmse`` for (g) is in-sample, over
the training subjects' cells of the Gaussian outcomes.

Summary (printed and in the JSON): per truth (and outcome for (e)), median
and min-max over the seeds of pyro_dgmm / best baseline and pyro_dgmm /
oracle (RMSE, Brier), for (g) dynamic RMSE / best baseline, AUC minus the
best baseline's and in-sample RMSE / best baseline.

Baseline and oracle results are cached per (truth, seed, n, version of
``truths.py``; oracles also per oracle option and :data:`ORACLE_VERSION`) in ``results/.cache/``, so
that rerunning the pyro_dgmm side is cheap (``--refresh-cache`` recomputes
them; ``--skip-baselines`` / ``--skip-oracle`` fit none but still report
the cached ones; ``--skip-dgmm`` fills the cache only).

Run:  cd benchmarks && OMP_NUM_THREADS=1 ../.venv/bin/python unseen_truths.py
      [--truths lmm_spline ... many_outcomes] [--seeds 0 1 2 3 4] [--n-subjects 800]
      [--dgmm-options '{"latent_dim": 4}'] [--fit-options '{"max_epochs": 300}']
      [--skip-oracle] [--skip-baselines] [--refresh-cache] [--reuse results/earlier.json ...]
      [--output unseen_truths]
Smoke:  ... unseen_truths.py --truths periodic --seeds 0 --n-subjects 60
        --fit-options '{"max_epochs": 3}' --oracle-max-steps 2 --output unseen_truths_smoke
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: the machines are shared (README)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import auc, brier, print_table, rmse, single_thread, write_json  # noqa: E402
import truths  # noqa: E402

ID, TIME = "id", "time"
CACHE = Path(__file__).parent / "results" / ".cache"
#: bump when the baseline or oracle code changes, so that cached numbers are recomputed
BASELINE_VERSION = 2
#: bump when the library changes what an oracle fit gives (it is part of the oracle cache key): 2 after the
#: importance-weighted bound's fix (pyro_dgmm/elbo.py, b = mu + L eps), which 'auto' uses for the sparse truth (f)
ORACLE_VERSION = 2
FIXED_SPLINE_DF, RANDOM_SPLINE_DF = 4, 3
#: scipy.optimize.minimize method of the GLMM fits (BFGS, statsmodels' default, is slow with 2 x n random effects)
GLMM_METHOD = "L-BFGS-B"
LANDMARK_SHARE, HELD_OUT_SHARE = 0.5, 0.2

DGMM_KEYS = ["truth", "seed", "n_subjects", "outcome", "method", "rmse", "brier", "rmse_dynamic", "auc_dynamic",
             "auc_dynamic_observed", "seconds", "epochs", "stop_reason", "converged", "active_directions",
             "latent_dim", "latent_activity", "warnings", "time_functions", "time_functions_race", "fits_run",
             "refinement_seconds"]
BASELINE_KEYS = ["truth", "seed", "n_subjects", "outcome", "method", "rmse", "brier", "rmse_dynamic", "auc_dynamic",
                 "auc_dynamic_observed", "seconds", "converged", "note"]
ORACLE_KEYS = ["truth", "seed", "n_subjects", "outcome", "method", "rmse", "llf", "seconds", "converged", "rmse_svi",
               "fit_seconds", "epochs", "refine_seconds", "refine_steps", "refine_converged", "loglik_before",
               "loglik_after", "error"]
SUMMARY_KEYS = ["truth", "outcome", "quantity", "median", "min", "max", "seeds"]


def keyed(keys: list[str], **values) -> dict:
    """A row with exactly ``keys`` (in that order; None where not given)."""
    unknown = set(values) - set(keys)
    if unknown:
        raise KeyError(f"unexpected row keys {sorted(unknown)}")
    return {key: values.get(key) for key in keys}


def jsonable(value):
    """Numbers, strings, None and lists thereof (numpy / torch values converted)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


# -------------------------------------------------------------- designs
def spline(times: np.ndarray, df: int):
    """pyro_dgmm's natural spline with ``df`` columns, fitted to ``times``."""
    from pyro_dgmm.bases import NaturalSpline

    return NaturalSpline(df=df).fit(np.asarray(times, float))


def at(basis, t: np.ndarray) -> np.ndarray:
    import torch

    return basis.transform(torch.as_tensor(np.array(t, dtype=float))).numpy()


def covariates(df: pd.DataFrame, sim) -> np.ndarray:
    return df[sim.covariates].to_numpy(float)


def mixedlm(y: np.ndarray, X: np.ndarray, Z: np.ndarray, groups: np.ndarray, fit_rows: np.ndarray) -> dict:
    """MixedLM (ML) fitted on the rows ``fit_rows`` (bool) of y ~ X with
    random effects Z by ``groups``; subject means X beta + Z b_hat for every
    row (b_hat = 0 for a group without fitted rows), llf, seconds, converged."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = MixedLM(y[fit_rows], X[fit_rows], groups=groups[fit_rows], exog_re=Z[fit_rows]).fit(reml=False)
    seconds = time.perf_counter() - start
    codes, levels = pd.factorize(groups)
    per_group = np.zeros((len(levels), Z.shape[1]))
    position = pd.Index(levels)
    for group, effects in result.random_effects.items():
        per_group[position.get_loc(group)] = np.asarray(effects)
    b = per_group[codes]
    return {"means": X @ np.asarray(result.fe_params) + (Z * b).sum(1), "llf": float(result.llf),
            "seconds": seconds, "converged": bool(getattr(result, "converged", True))}


def mixedlm_variants(df: pd.DataFrame, sim, outcome: str, fit_rows: np.ndarray) -> dict[str, dict]:
    """The three MixedLM baselines of one Gaussian outcome: name -> :func:`mixedlm` output."""
    y = df[outcome].to_numpy(float)
    t = df[TIME].to_numpy(float)
    x = covariates(df, sim)
    ones = np.ones(len(df))
    observed_t = t[fit_rows]
    fixed_spline = at(spline(observed_t, FIXED_SPLINE_DF), t)
    random_spline = at(spline(observed_t, RANDOM_SPLINE_DF), t)
    groups = df[ID].to_numpy()
    designs = {
        "MixedLM linear time": (np.column_stack([ones, t, x]), np.column_stack([ones, t])),
        f"MixedLM spline({FIXED_SPLINE_DF}) time": (np.column_stack([ones, fixed_spline, x]),
                                                    np.column_stack([ones, t])),
        f"MixedLM random spline({RANDOM_SPLINE_DF})": (np.column_stack([ones, fixed_spline, x]),
                                                       np.column_stack([ones, random_spline])),
    }
    out = {}
    for name, (X, Z) in designs.items():
        try:
            out[name] = mixedlm(y, X, Z, groups, fit_rows)
        except Exception as error:  # noqa: BLE001  (recorded in the row)
            out[name] = {"error": f"{type(error).__name__}: {error}"}
    return out


def bayes_glmm(df: pd.DataFrame, sim, outcome: str, family: str, fit_rows: np.ndarray) -> dict:
    """GLMM (statsmodels BayesMixedGLM, variational Bayes) of a binary or
    count outcome: fixed [1, ns4(t), x], independent random intercept and
    slope in (t - 5) / 5 per subject; for every row the posterior mean of
    g^-1(eta), eta ~ N(m, v) from the variational posterior (fixed and
    random parts treated as independent)."""
    from scipy import sparse
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM, PoissonBayesMixedGLM

    t = df[TIME].to_numpy(float)
    X = np.column_stack([np.ones(len(df)), at(spline(t[fit_rows], FIXED_SPLINE_DF), t), covariates(df, sim)])
    codes, _ = pd.factorize(df[ID], sort=True)
    g = codes.max() + 1
    rows = np.arange(len(df))
    slope = (t - 5.0) / 5.0
    Z = sparse.csr_matrix((np.concatenate([np.ones(len(df)), slope]),
                           (np.concatenate([rows, rows]), np.concatenate([codes, g + codes]))), shape=(len(df), 2 * g))
    ident = np.repeat([0, 1], g)
    cls = BinomialBayesMixedGLM if family == "bernoulli" else PoissonBayesMixedGLM
    y = df[outcome].to_numpy(float)
    fit = np.flatnonzero(fit_rows)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = cls(y[fit], X[fit], Z[fit], ident).fit_vb(fit_method=GLMM_METHOD)
    seconds = time.perf_counter() - start
    mean = X @ result.fe_mean + Z @ result.vc_mean
    var = (X ** 2) @ (result.fe_sd ** 2) + Z.multiply(Z) @ (result.vc_sd ** 2)
    if family == "bernoulli":
        means = 1.0 / (1.0 + np.exp(-mean / np.sqrt(1.0 + np.pi * var / 8.0)))
    else:
        means = np.exp(mean + var / 2.0)
    converged = result.optim_retvals.get("success") if isinstance(getattr(result, "optim_retvals", None), dict) \
        else None
    return {"means": means, "seconds": seconds, "converged": converged, "method": "GLMM (BayesMixedGLM, VB)"}


def glm_population(df: pd.DataFrame, sim, outcome: str, family: str, fit_rows: np.ndarray) -> dict:
    """Fallback: a population-level GLM with fixed [1, ns4(t), x] (no subject effects)."""
    import statsmodels.api as sm

    t = df[TIME].to_numpy(float)
    X = np.column_stack([np.ones(len(df)), at(spline(t[fit_rows], FIXED_SPLINE_DF), t), covariates(df, sim)])
    fam = sm.families.Binomial() if family == "bernoulli" else sm.families.Poisson()
    start = time.perf_counter()
    result = sm.GLM(df[outcome].to_numpy(float)[fit_rows], X[fit_rows], family=fam).fit()
    return {"means": result.predict(X), "seconds": time.perf_counter() - start, "converged": bool(result.converged),
            "method": f"GLM spline({FIXED_SPLINE_DF}) (population)"}


def glmm_or_glm(df, sim, outcome, family, fit_rows) -> dict:
    try:
        return bayes_glmm(df, sim, outcome, family, fit_rows)
    except Exception as error:  # noqa: BLE001  (recorded in the row)
        fallback = glm_population(df, sim, outcome, family, fit_rows)
        fallback["note"] = f"GLMM failed ({type(error).__name__}: {error}); population GLM instead"
        return fallback


# --------------------------------------------------------------- caching
def _truths_digest() -> str:
    source = Path(truths.__file__).read_bytes() + f"baselines v{BASELINE_VERSION}".encode()
    return hashlib.sha256(source).hexdigest()[:10]


def cached(kind: str, truth: str, seed: int, n: int, compute, refresh: bool, extra: str = "",
           skip: bool = False) -> list[dict]:
    """Rows from ``results/.cache/`` if computed before for these settings,
    else ``compute()`` (and stored); with ``skip``, the cached rows or none."""
    tag = hashlib.sha256(extra.encode()).hexdigest()[:6] if extra else "default"
    path = CACHE / f"{truth}_seed{seed}_n{n}_{kind}_{tag}_{_truths_digest()}.json"
    if path.exists() and not refresh:
        return json.loads(path.read_text())
    if skip:
        return []
    rows = compute()
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return rows


# ------------------------------------------------------------ baselines
def baseline_rows(name: str, sim, seed: int, n: int) -> list[dict]:
    """Every baseline of truth ``name`` (rows of :data:`BASELINE_KEYS`)."""
    base = {"truth": name, "seed": seed, "n_subjects": n}
    df, truth = sim.data, sim.truth
    if name == "many_outcomes":
        return many_outcome_baselines(sim, seed, base)
    rows = []
    for outcome, family in sim.outcomes.items():
        target = truth[f"{outcome}_mean"].to_numpy()
        observed = df[outcome].notna().to_numpy()
        if family == "gaussian":
            for method, fit in mixedlm_variants(df, sim, outcome, observed).items():
                if "error" in fit:
                    rows.append(keyed(BASELINE_KEYS, **base, outcome=outcome, method=method, note=fit["error"]))
                    continue
                rows.append(keyed(BASELINE_KEYS, **base, outcome=outcome, method=method,
                                  rmse=rmse(fit["means"], target), seconds=fit["seconds"],
                                  converged=fit["converged"]))
        else:
            fit = glmm_or_glm(df, sim, outcome, family, observed)
            complete = truth[f"{outcome}_complete"].to_numpy()
            rows.append(keyed(BASELINE_KEYS, **base, outcome=outcome, method=fit["method"],
                              rmse=rmse(fit["means"], target),
                              brier=brier(fit["means"], complete) if family == "bernoulli" else None,
                              seconds=fit["seconds"], converged=fit["converged"], note=fit.get("note")))
    return rows


def split(sim, seed: int) -> dict:
    """Truth (g)'s evaluation split: held-out subjects (20%, drawn with
    ``seed``), landmark (midpoint of the time range), and row masks."""
    df = sim.data
    ids = np.sort(pd.unique(df[ID]))
    rng = np.random.default_rng([19, seed])
    held_ids = np.sort(rng.choice(ids, size=int(round(HELD_OUT_SHARE * len(ids))), replace=False))
    t = df[TIME].to_numpy(float)
    landmark = float(t.min() + LANDMARK_SHARE * (t.max() - t.min()))
    held = df[ID].isin(held_ids).to_numpy()
    return {"held": held, "landmark": landmark, "history": held & (t <= landmark), "future": held & (t > landmark),
            "train": ~held}


def dynamic_scores(means: dict[str, np.ndarray], sim, parts: dict) -> dict:
    """rmse_dynamic, auc_dynamic(_observed) and in-sample rmse of per-outcome
    mean arrays aligned with ``sim.data`` (NaN where a method gives none)."""
    truth, df = sim.truth, sim.data
    future, train = parts["future"], parts["train"]
    gaussian = [o for o, f in sim.outcomes.items() if f == "gaussian" and o in means]
    binary = [o for o, f in sim.outcomes.items() if f == "bernoulli" and o in means]
    out = {}
    if gaussian:
        err_future = np.concatenate([means[o][future] - truth[f"{o}_mean"].to_numpy()[future] for o in gaussian])
        err_train = np.concatenate([means[o][train] - truth[f"{o}_mean"].to_numpy()[train] for o in gaussian])
        out["rmse_dynamic"] = float(np.sqrt(np.mean(err_future ** 2)))
        out["rmse"] = float(np.sqrt(np.mean(err_train ** 2)))
    if binary:
        out["auc_dynamic"] = float(np.mean([auc(means[o][future], truth[f"{o}_complete"].to_numpy()[future])
                                            for o in binary]))
        seen = [(means[o][future & df[o].notna().to_numpy()], df[o].to_numpy()[future & df[o].notna().to_numpy()])
                for o in binary]
        out["auc_dynamic_observed"] = float(np.mean([auc(p, y) for p, y in seen]))
    return out


def many_outcome_baselines(sim, seed: int, base: dict) -> list[dict]:
    """Per-outcome baselines of truth (g), fitted to the training subjects plus
    the held-out subjects' histories (their later cells hidden)."""
    parts = split(sim, seed)
    df = sim.data.copy()
    hidden = parts["future"]
    names = {"linear": "MixedLM linear time (per outcome)",
             "slope": f"MixedLM spline({FIXED_SPLINE_DF}) time (per outcome)",
             "spline": f"MixedLM random spline({RANDOM_SPLINE_DF}) (per outcome)",
             "glmm": "GLMM (per binary outcome)"}
    means = {key: {} for key in names}
    seconds = {key: 0.0 for key in names}
    notes = {key: [] for key in names}
    converged = {key: True for key in names}
    for outcome, family in sim.outcomes.items():
        fit_rows = df[outcome].notna().to_numpy() & ~hidden
        if family == "gaussian":
            fits = mixedlm_variants(df, sim, outcome, fit_rows)
            for key, method in (("linear", "MixedLM linear time"), ("slope", f"MixedLM spline({FIXED_SPLINE_DF}) time"),
                                ("spline", f"MixedLM random spline({RANDOM_SPLINE_DF})")):
                fit = fits[method]
                if "error" in fit:
                    notes[key].append(f"{outcome}: {fit['error']}")
                    continue
                means[key][outcome] = fit["means"]
                seconds[key] += fit["seconds"]
                converged[key] &= fit["converged"]
        else:
            fit = glmm_or_glm(df, sim, outcome, family, fit_rows)
            means["glmm"][outcome] = fit["means"]
            seconds["glmm"] += fit["seconds"]
            converged["glmm"] &= bool(fit["converged"]) if fit["converged"] is not None else True
            if fit.get("note"):
                notes["glmm"].append(f"{outcome}: {fit['note']}")
    rows = []
    for key, method in names.items():
        rows.append(keyed(BASELINE_KEYS, **base, outcome="all", method=method, **dynamic_scores(means[key], sim, parts),
                          seconds=seconds[key], converged=converged[key], note="; ".join(notes[key]) or None))
    return rows


# --------------------------------------------------------------- oracles
def oracle_rows(name: str, sim, seed: int, n: int, args) -> list[dict]:
    base = {"truth": name, "seed": seed, "n_subjects": n, "outcome": "y"}
    if name == "lmm_spline":
        X, Z = truths.lmm_spline_design(sim.data)
        y = sim.data["y"].to_numpy(float)
        fit = mixedlm(y, X, Z, sim.data[ID].to_numpy(), ~np.isnan(y))
        return [keyed(ORACLE_KEYS, **base, method="MixedLM true design (oracle)",
                      rmse=rmse(fit["means"], sim.truth["y_mean"]), llf=fit["llf"], seconds=fit["seconds"],
                      fit_seconds=fit["seconds"], converged=fit["converged"])]
    if name not in truths.ORACLES:
        return []
    return [nonlinear_oracle(name, sim, base, args)]


def nonlinear_oracle(name: str, sim, base: dict, args) -> dict:
    """Fit the true functional form with the library, then refine it by
    maximum marginal likelihood (every curve parameter and the residual SD)."""
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.wald import maximize_marginal_likelihood

    oracle = truths.ORACLES[name]
    target = sim.truth["y_mean"].to_numpy()
    row = dict(base, method=f"{oracle.__name__} (true form, ML-refined)")
    start = time.perf_counter()
    model = DeepMixedModel(id_col=ID, time_col=TIME, outcomes=sim.outcomes, covariates=sim.covariates,
                           model_class=oracle, latent_dim=len(oracle.truth.random))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(sim.data, progress=False, **args.oracle_fit_options)
    except Exception as error:  # noqa: BLE001  (recorded in the row)
        return keyed(ORACLE_KEYS, **row, error=f"fit: {type(error).__name__}: {error}")
    row.update(fit_seconds=time.perf_counter() - start, epochs=model.result_.epochs_run)
    row["rmse_svi"] = rmse(aligned(model.fitted_values(), sim, "y"), target)
    row["rmse"] = row["rmse_svi"]
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = maximize_marginal_likelihood(model.model_, model.guide_, model.data_,
                                                  model.model_.parameter_names(), num_samples=args.oracle_samples,
                                                  max_steps=args.oracle_max_steps)
        row.update(refine_steps=result.steps, refine_converged=result.converged, converged=result.converged,
                   loglik_before=result.log_likelihood_before, loglik_after=result.log_likelihood_after,
                   llf=result.log_likelihood_after)
        row["refine_seconds"] = time.perf_counter() - start
        row["rmse"] = rmse(aligned(model.fitted_values(), sim, "y"), target)
        if caught:
            row["error"] = "warnings: " + " | ".join(sorted({str(w.message)[:160] for w in caught}))
    except Exception as error:  # noqa: BLE001  (recorded in the row; rmse stays the SVI fit's)
        row["refine_seconds"] = time.perf_counter() - start
        row["error"] = f"refinement failed ({type(error).__name__}: {error}); rmse is the SVI fit's"
    row["seconds"] = row["fit_seconds"] + row["refine_seconds"]
    return keyed(ORACLE_KEYS, **row)


# ------------------------------------------------------------------ DGMM
def aligned(fitted: pd.DataFrame, sim, outcome: str) -> np.ndarray:
    """``<outcome>_fitted`` of ``fitted`` in the row order of ``sim.data`` (NaN where absent)."""
    merged = sim.data[[ID, TIME]].merge(fitted[[ID, TIME, f"{outcome}_fitted"]], on=[ID, TIME], how="left")
    return np.array(merged[f"{outcome}_fitted"], dtype=float)  # a writable copy


def fit_dgmm(data: pd.DataFrame, sim, args):
    """Fit pyro_dgmm with default settings (+ the command line's options);
    return the model, fit seconds and the warnings it raised."""
    from pyro_dgmm import DeepMixedModel

    model = DeepMixedModel(id_col=ID, time_col=TIME, outcomes=sim.outcomes, covariates=sim.covariates,
                           **args.dgmm_options)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, progress=False, **args.fit_options)
    seconds = time.perf_counter() - start
    messages = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught
                       if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
    return model, seconds, " | ".join(messages) or None


def fit_facts(model) -> dict:
    result = model.result_
    latent = getattr(result, "latent_dim", None)
    return {"epochs": result.epochs_run, "stop_reason": result.stop_reason,
            "converged": jsonable(getattr(result, "converged", None)),
            "active_directions": jsonable(getattr(result, "active_directions", None)),
            "latent_activity": jsonable(getattr(result, "latent_activity", None)),
            "latent_dim": jsonable(latent if latent is not None else getattr(model.model_, "latent_dim", None)),
            "time_functions": getattr(model, "time_functions_", None),
            "time_functions_race": getattr(result, "time_functions_race", None),
            "fits_run": max(len(getattr(result, "starts", [])), 1),
            "refinement_seconds": (getattr(result, "refinement", None) or {}).get("seconds")}


def dgmm_rows(name: str, sim, seed: int, n: int, args) -> list[dict]:
    base = {"truth": name, "seed": seed, "n_subjects": n, "method": "pyro_dgmm"}
    if name == "many_outcomes":
        return [dgmm_many_outcomes(sim, seed, base, args)]
    model, seconds, caught = fit_dgmm(sim.data, sim, args)
    facts = fit_facts(model)
    fitted = model.fitted_values()
    rows = []
    for outcome, family in sim.outcomes.items():
        means = aligned(fitted, sim, outcome)
        rows.append(keyed(DGMM_KEYS, **base, outcome=outcome, rmse=rmse(means, sim.truth[f"{outcome}_mean"]),
                          brier=brier(means, sim.truth[f"{outcome}_complete"]) if family == "bernoulli" else None,
                          seconds=seconds, warnings=caught, **facts))
    return rows


def dgmm_many_outcomes(sim, seed: int, base: dict, args) -> dict:
    """Truth (g): fit on the training subjects, predict the held-out subjects'
    later cells from their histories, score as :func:`dynamic_scores`."""
    parts = split(sim, seed)
    df = sim.data
    model, seconds, caught = fit_dgmm(df[parts["train"]], sim, args)
    facts = fit_facts(model)
    fitted = model.fitted_values()
    history, future = df[parts["history"]], df.loc[parts["future"], [ID, TIME]]
    table = model.predict(history, future).table
    means = {}
    for outcome in sim.outcomes:
        values = aligned(fitted, sim, outcome)  # training subjects; NaN for the held-out ones
        predicted = future.merge(table.loc[table["outcome"] == outcome, [ID, TIME, "mean"]], on=[ID, TIME],
                                 how="left")["mean"].to_numpy(float)
        values[parts["future"]] = predicted
        means[outcome] = values
    return keyed(DGMM_KEYS, **base, outcome="all", **dynamic_scores(means, sim, parts), seconds=seconds,
                 warnings=caught, **facts)


# --------------------------------------------------------------- summary
def summary_rows(dgmm: list[dict], baselines: list[dict], oracles: list[dict]) -> list[dict]:
    """Per truth (and outcome), median and min-max over seeds of pyro_dgmm's
    figures as ratios to (or, for AUC, differences from) the best baseline
    and the oracle, plus its seconds and epochs."""
    quantities: dict[tuple, list[float]] = {}

    def add(truth, outcome, quantity, value):
        if value is not None and np.isfinite(value):
            quantities.setdefault((truth, outcome, quantity), []).append(float(value))

    def best(rows, key, pick=min):
        values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        return pick(values) if values else None

    for row in dgmm:
        same = lambda r: (r["truth"], r["seed"], r["n_subjects"], r["outcome"]) == (  # noqa: E731
            row["truth"], row["seed"], row["n_subjects"], row["outcome"])
        base = [r for r in baselines if same(r)]
        orac = [r for r in oracles if same(r) and r.get("rmse") is not None]
        t, o = row["truth"], row["outcome"]
        if t == "many_outcomes":
            add(t, o, "pyro_dgmm dynamic rmse", row["rmse_dynamic"])
            add(t, o, "best baseline dynamic rmse", best(base, "rmse_dynamic"))
            add(t, o, "pyro_dgmm auc", row["auc_dynamic"])
            add(t, o, "best baseline auc", best(base, "auc_dynamic", max))
            if best(base, "rmse_dynamic"):
                add(t, o, "dynamic rmse / best baseline", row["rmse_dynamic"] / best(base, "rmse_dynamic"))
            if best(base, "rmse"):
                add(t, o, "in-sample rmse / best baseline", row["rmse"] / best(base, "rmse"))
            if best(base, "auc_dynamic", max) is not None and row["auc_dynamic"] is not None:
                add(t, o, "auc - best baseline auc", row["auc_dynamic"] - best(base, "auc_dynamic", max))
        else:
            add(t, o, "pyro_dgmm rmse", row["rmse"])
            add(t, o, "best baseline rmse", best(base, "rmse"))
            if orac:
                add(t, o, "oracle rmse", orac[0]["rmse"])
            if best(base, "rmse"):
                add(t, o, "rmse / best baseline", row["rmse"] / best(base, "rmse"))
            if row["brier"] is not None and best(base, "brier"):
                add(t, o, "brier / best baseline", row["brier"] / best(base, "brier"))
            if orac:
                add(t, o, "rmse / oracle", row["rmse"] / orac[0]["rmse"])
        add(t, o, "pyro_dgmm seconds", row["seconds"])
        add(t, o, "pyro_dgmm epochs", row["epochs"])
        if isinstance(row.get("active_directions"), (int, float)):
            add(t, o, "active directions", row["active_directions"])
    return [keyed(SUMMARY_KEYS, truth=t, outcome=o, quantity=q, median=statistics.median(v), min=min(v), max=max(v),
                  seeds=len(v)) for (t, o, q), v in quantities.items()]


def reusable_rows(paths: list[Path], args) -> dict[tuple, tuple[list[dict], list[dict]]]:
    """Baseline and oracle rows of earlier results JSONs, by (truth, seed, n):
    the ``--reuse`` option, for a rerun after a change of the library's
    defaults, which neither the simulators nor the baselines depend on (the
    oracles' curves ignore the time basis).  A file counts only if it was run
    with this run's visits and oracle options; its commit goes into the meta."""
    found: dict[tuple, tuple[list[dict], list[dict]]] = {}
    for path in paths:
        earlier = json.loads(path.read_text())
        options = earlier["meta"]["options"]
        same = (options["n_visits"] == args.n_visits and options["oracle_fit_options"] == args.oracle_fit_options
                and options["oracle_samples"] == args.oracle_samples
                and options["oracle_max_steps"] == args.oracle_max_steps)
        if not same:
            raise SystemExit(f"--reuse {path}: run with other visits or oracle options ({options}); "
                             "pass this run's --oracle-samples / --oracle-max-steps / --n-visits")
        for row in earlier["rows"]:
            if row.get("method") in (None, "pyro_dgmm"):
                continue
            baselines, oracles = found.setdefault((row["truth"], row["seed"], row["n_subjects"]), ([], []))
            (oracles if set(row) == set(ORACLE_KEYS) else baselines).append(row)
    return found


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truths", nargs="+", default=list(truths.SIMULATORS), choices=list(truths.SIMULATORS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-subjects", type=int, default=800)
    parser.add_argument("--n-visits", type=int, default=20)
    parser.add_argument("--dgmm-options", type=json.loads, default={},
                        help="JSON object of extra DeepMixedModel arguments, e.g. '{\"latent_dim\": 4}'")
    parser.add_argument("--fit-options", type=json.loads, default={},
                        help="JSON object of fit arguments, e.g. '{\"max_epochs\": 300}'")
    parser.add_argument("--oracle-fit-options", type=json.loads, default={},
                        help="JSON object of fit arguments for the oracles' SVI fits (default: none)")
    parser.add_argument("--oracle-samples", type=int, default=500,
                        help="importance samples per subject in the oracles' ML refinement")
    parser.add_argument("--oracle-max-steps", type=int, default=30, help="Newton steps of the ML refinement, at most")
    parser.add_argument("--skip-oracle", action="store_true", help="fit no oracle (cached oracle results are used)")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="fit no baseline (cached baseline results are used)")
    parser.add_argument("--skip-dgmm", action="store_true", help="baselines and oracles only (fills the cache)")
    parser.add_argument("--refresh-cache", action="store_true", help="recompute cached baselines and oracles")
    parser.add_argument("--dgmm-rows", type=Path, default=None,
                        help="take pyro_dgmm's rows from this results JSON (an earlier run) instead of fitting: "
                             "summarise them against baselines and oracles cached since")
    parser.add_argument("--reuse", type=Path, nargs="+", default=[],
                        help="earlier results JSONs whose baseline and oracle rows (same truth, seed, n, visits and "
                             "oracle options) stand in for computing them: for a rerun after a change of the "
                             "library's defaults")
    parser.add_argument("--output", default="unseen_truths")
    args = parser.parse_args()
    earlier = json.loads(args.dgmm_rows.read_text())["rows"] if args.dgmm_rows else None
    reused = reusable_rows(args.reuse, args)
    single_thread()
    dgmm, baselines, oracles = [], [], []
    oracle_key = json.dumps([args.oracle_fit_options, args.oracle_samples, args.oracle_max_steps, ORACLE_VERSION],
                            sort_keys=True)
    for name in args.truths:
        for seed in args.seeds:
            sim = truths.SIMULATORS[name](n_subjects=args.n_subjects, n_visits=args.n_visits, seed=seed)
            n = args.n_subjects
            tag = f"visits{args.n_visits}"
            start = time.perf_counter()
            if (name, seed, n) in reused:
                baselines += reused[name, seed, n][0]
                oracles += reused[name, seed, n][1]
                print(f"[{name} seed {seed}] baselines and oracle reused from --reuse", flush=True)
            else:
                baselines += cached("baselines", name, seed, n, lambda: baseline_rows(name, sim, seed, n),
                                    args.refresh_cache, tag, skip=args.skip_baselines)
                print(f"[{name} seed {seed}] baselines {time.perf_counter() - start:.1f} s", flush=True)
                start = time.perf_counter()
                oracles += cached("oracle", name, seed, n, lambda: oracle_rows(name, sim, seed, n, args),
                                  args.refresh_cache, tag + oracle_key, skip=args.skip_oracle)
                print(f"[{name} seed {seed}] oracle {time.perf_counter() - start:.1f} s", flush=True)
            if earlier is not None:
                dgmm += [r for r in earlier if r.get("method") == "pyro_dgmm" and (r["truth"], r["seed"],
                                                                                 r["n_subjects"]) == (name, seed, n)]
            elif not args.skip_dgmm:
                dgmm += dgmm_rows(name, sim, seed, n, args)
                print(f"[{name} seed {seed}] pyro_dgmm {dgmm[-1]['seconds']:.1f} s", flush=True)
    shown = ["truth", "seed", "outcome", "method", "rmse", "brier", "rmse_dynamic", "auc_dynamic", "seconds"]
    if dgmm:
        print_table([{k: r[k] for k in shown + ["epochs", "converged", "active_directions", "latent_dim"]}
                     for r in dgmm], "pyro_dgmm (defaults + options)")
    if baselines:
        print_table([{k: r[k] for k in shown + ["note"]} for r in baselines], "Baselines (statsmodels)")
    if oracles:
        print_table([{k: r[k] for k in ["truth", "seed", "method", "rmse", "rmse_svi", "llf", "seconds",
                                        "refine_steps", "refine_converged", "error"]} for r in oracles], "Oracles")
    summary = summary_rows(dgmm, baselines, oracles)
    if summary:
        print_table(summary, "Summary over seeds: pyro_dgmm vs the best baseline and the oracle")
    path = write_json(dgmm + baselines + oracles + summary, args.output)
    written = json.loads(path.read_text())
    written["meta"]["options"] = {"truths": args.truths, "seeds": args.seeds, "n_subjects": args.n_subjects,
                                  "n_visits": args.n_visits, "dgmm_options": args.dgmm_options,
                                  "fit_options": args.fit_options, "oracle_fit_options": args.oracle_fit_options,
                                  "oracle_samples": args.oracle_samples, "oracle_max_steps": args.oracle_max_steps,
                                  "skip_oracle": args.skip_oracle, "skip_baselines": args.skip_baselines,
                                  "reused": {str(p): json.loads(p.read_text())["meta"]["commit"] for p in args.reuse}}
    path.write_text(json.dumps(written, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
