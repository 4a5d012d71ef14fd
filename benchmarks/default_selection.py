"""Issue 19: the truths and seeds on which fit defaults are chosen.

Defaults (stopping rule, latent dimension, refinement) are tuned here and
only here, on truths that are *not* the ones reported in
``unseen_truths.py`` (those are held out until the defaults are fixed):

* ``nonlinear``: the package's :func:`~pyro_dgmm.datasets.simulate_nonlinear`
  (sigmoid with a random level and a random shift of the rise; 2 random
  parameters);
* ``quadratic``: a linear mixed model with 3 correlated random effects on
  ``(1, t, t^2)`` (t in [0, 5]), a continuous covariate ``z`` and a binary
  ``g`` with a ``g x t`` term, sigma 0.8;
* ``emax``: an Emax dose-response-like curve in time with 3 random
  parameters (baseline, log maximum effect, log half-time)::

      y = e0_i + emax_i * t / (ed50_i + t) + 0.4 z_i + eps,  eps ~ N(0, 0.3^2)
      e0_i = 1 + 0.5 b1,  emax_i = 3 exp(0.3 b2),  ed50_i = 1.5 exp(0.5 b3)

* ``emax_sparse``: the same Emax curve seen at 3 to 8 visits per subject
  at uniform random times on [0, 8];
* ``twofactor``: six Gaussian outcomes driven by 2 latent factors with
  loadings that change over time, 20% of cells missing;
* ``lmm4``: a linear mixed model with 4 correlated random effects on a
  truncated-line basis ``(1, t, (t-2)+, (t-3.5)+)`` of t in [0, 6], a binary
  ``g`` shifting the slopes and sigma 1 (written for the fit-seed question:
  does a fit lose one of four needed directions?);
* ``lmm4sin``: a linear mixed model with 4 correlated random effects of
  which the 4th multiplies a full sine period, a shape mostly outside
  span(1, t, t^2) (written for the fit-seed collapse: the default
  ``'poly(2)'`` basis can carry only 3 of the 4 shapes linearly)::

      y = 1 + 0.5 z + 0.4 g + (1 + 0.5 g) s - 0.5 s^2 + 0.3 sin(2 pi s)
          + b0 + b1 s + b2 4 s (1 - s) + b3 sin(2 pi s) + eps,   eps ~ N(0, 0.8^2)
      s = t / 6, t in [0, 6];  (b0..b3) ~ N(0, S R S), S = diag(1, 0.8, 0.6, 1.0),
      R = [[1, .3, -.2, .2], [.3, 1, -.3, .2], [-.2, -.3, 1, -.1], [.2, .2, -.1, 1]]

  (z standard normal, g Bernoulli(1/2); sin(2 pi s) on the 20-visit grid
  has RMS 0.69, of which RMS 0.48 is orthogonal to (1, s, s^2));
* ``lmm4cos``: as ``lmm4sin`` with centred, mutually orthogonal shapes of
  equal size, so that the 4th principal component of the random part is
  large (per-visit RMS 0.44 on the grid, against 0.13 for ``lmm4sin``)::

      y = 1 + 0.5 z + 0.4 g + (1 + 0.5 g) s - 0.5 s^2 + b0 + b1 (2 s - 1)
          + b2 (6 s^2 - 6 s + 1) + b3 cos(3 pi s) + eps,   eps ~ N(0, 0.8^2)
      (b0..b3) ~ N(0, R), R as in ``lmm4sin`` (unit variances)

  (cos(3 pi s) on the grid: RMS 0.72, of which RMS 0.71 is orthogonal to
  (1, s, s^2));
* ``linear``: the package's :func:`~pyro_dgmm.datasets.simulate_linear`
  (random intercept and slope), where nothing should be lost;
* ``oscillation``: a random level and random sine and cosine amplitudes of
  period 4 on t in [0, 10], sigma 0.5 (written after the diagnosis of the
  unseen periodic truth (d), which it resembles, for the collapse of a
  latent direction at small n, e.g. ``--n-subjects 300 --n-visits 12``;
  a default chosen on it would be partly tuned to (d))::

      y = 1 + 0.03 t + b0 + b1 sin(pi t / 2) + b2 cos(pi t / 2) + eps,
      (b0, b1, b2) ~ N(0, diag(1, 0.64, 0.64)),   eps ~ N(0, 0.5^2)

Each configuration (``--configs name=JSON``, fit keyword arguments and
``DeepMixedModel`` options) is fitted on each truth and seed; the table
reports RMSE of fitted subject-specific means against the truth (and, for
one-outcome truths, as a ratio to the better MixedLM fit with random
intercept and slope, linear or spline(4) time), epochs, seconds and the
fit's own diagnostics.

Run:  python benchmarks/default_selection.py --truths nonlinear emax --seeds 0 1 \
          --configs 'default={}' 'q4={"latent_dim": 4}'
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from common import best_mixedlm, print_table, rmse, single_thread, write_json


def _frames(times, covariates: dict, means: dict, sigma: dict, rng, missing: float = 0.0):
    """Long data and truth frames from (n, J) arrays; MCAR cells with probability ``missing``."""
    from pyro_dgmm.datasets.simulate import SimulatedData

    n, j = times.shape
    data = {"id": np.repeat(np.arange(n), j), "time": times.ravel()}
    truth = dict(data)
    for name, mean in means.items():
        y = mean + sigma[name] * rng.standard_normal(mean.shape)
        y[rng.uniform(size=y.shape) < missing] = np.nan
        data[name] = y.ravel()
        truth[f"{name}_mean"] = mean.ravel()
    for name, values in covariates.items():
        data[name] = np.repeat(values, j)
    return SimulatedData(data=pd.DataFrame(data), truth=pd.DataFrame(truth), random_effects=np.zeros((n, 0)),
                         outcomes={name: "gaussian" for name in means}, covariates=list(covariates), params={},
                         population_truth=pd.DataFrame())


def _times(rng, n, j, t_max):
    grid = np.linspace(0, t_max, j)
    jitter = rng.uniform(-0.02 * t_max, 0.02 * t_max, (n, j))
    jitter[:, 0] = 0
    return np.sort(np.clip(grid + jitter, 0, t_max), axis=1)


def simulate_quadratic(n: int = 800, j: int = 20, seed: int = 0):
    rng = np.random.default_rng([19, 1, seed])
    t = _times(rng, n, j, 5.0)
    z, g = rng.standard_normal(n), rng.integers(0, 2, n).astype(float)
    cov = np.array([[1.0, 0.3, -0.05], [0.3, 0.36, -0.03], [-0.05, -0.03, 0.0225]])
    b = rng.multivariate_normal(np.zeros(3), cov, n)
    mean = (2 + 0.5 * z[:, None] + (0.8 + 0.4 * g[:, None]) * t - 0.1 * t ** 2
            + b[:, :1] + b[:, 1:2] * t + b[:, 2:3] * t ** 2)
    return _frames(t, {"z": z, "g": g}, {"y": mean}, {"y": 0.8}, rng)


def simulate_emax(n: int = 800, j: int = 20, seed: int = 0):
    rng = np.random.default_rng([19, 2, seed])
    t = _times(rng, n, j, 8.0)
    z = rng.standard_normal(n)
    b = rng.standard_normal((n, 3))
    e0, emax, ed50 = 1 + 0.5 * b[:, :1], 3 * np.exp(0.3 * b[:, 1:2]), 1.5 * np.exp(0.5 * b[:, 2:3])
    mean = e0 + emax * t / (ed50 + t) + 0.4 * z[:, None]
    return _frames(t, {"z": z}, {"y": mean}, {"y": 0.3}, rng)


def simulate_lmm4(n: int = 800, j: int = 20, seed: int = 0):
    rng = np.random.default_rng([19, 5, seed])
    t = _times(rng, n, j, 6.0)
    g = rng.integers(0, 2, n).astype(float)
    basis = np.stack([np.ones_like(t), t, np.maximum(t - 2, 0), np.maximum(t - 3.5, 0)], axis=-1)
    sd = np.array([1.0, 0.4, 0.5, 0.6])
    corr = np.array([[1, 0.3, -0.2, 0.1], [0.3, 1, -0.5, 0.2], [-0.2, -0.5, 1, -0.3], [0.1, 0.2, -0.3, 1]])
    b = rng.multivariate_normal(np.zeros(4), corr * np.outer(sd, sd), n)
    beta = np.array([1.0, 0.5, -0.8, 0.6]) + g[:, None] * np.array([0.5, 0.3, -0.2, 0.0])
    mean = np.einsum("ntk,nk->nt", basis, beta + b)
    return _frames(t, {"g": g}, {"y": mean}, {"y": 1.0}, rng)


#: correlation of the four random effects of ``lmm4sin`` and ``lmm4cos``
LMM4_CORRELATION = np.array([[1, 0.3, -0.2, 0.2], [0.3, 1, -0.3, 0.2], [-0.2, -0.3, 1, -0.1], [0.2, 0.2, -0.1, 1]])


def _four_random_shapes(key: int, n: int, j: int, seed: int, shapes, sd, fixed_sine: float):
    """y = fixed(z, g, s) + sum_k b_k shape_k(s) + eps (``lmm4sin``, ``lmm4cos``; module docstring):
    s = t / 6, ``shapes(s)`` (..., 4), b ~ N(0, S R S) with S = diag(``sd``), eps ~ N(0, 0.8^2)."""
    rng = np.random.default_rng([19, key, seed])
    t = _times(rng, n, j, 6.0)
    s = t / 6.0
    z, g = rng.standard_normal(n), rng.integers(0, 2, n).astype(float)
    b = rng.multivariate_normal(np.zeros(4), LMM4_CORRELATION * np.outer(sd, sd), n)
    fixed = (1 + 0.5 * z[:, None] + 0.4 * g[:, None] + (1 + 0.5 * g[:, None]) * s - 0.5 * s ** 2
             + fixed_sine * np.sin(2 * np.pi * s))
    mean = fixed + np.einsum("ntk,nk->nt", shapes(s), b)
    return _frames(t, {"z": z, "g": g}, {"y": mean}, {"y": 0.8}, rng)


def simulate_lmm4sin(n: int = 800, j: int = 20, seed: int = 0):
    return _four_random_shapes(
        6, n, j, seed, lambda s: np.stack([np.ones_like(s), s, 4 * s * (1 - s), np.sin(2 * np.pi * s)], axis=-1),
        sd=np.array([1.0, 0.8, 0.6, 1.0]), fixed_sine=0.3)


def simulate_lmm4cos(n: int = 800, j: int = 20, seed: int = 0):
    return _four_random_shapes(
        7, n, j, seed,
        lambda s: np.stack([np.ones_like(s), 2 * s - 1, 6 * s ** 2 - 6 * s + 1, np.cos(3 * np.pi * s)], axis=-1),
        sd=np.ones(4), fixed_sine=0.0)


def simulate_emax_sparse(n: int = 800, j: int = 20, seed: int = 0):
    """The Emax truth seen at 3 to 8 visits per subject at uniform random
    times on [0, 8] (``j`` is not used): the sparse, irregular regime."""
    rng = np.random.default_rng([19, 4, seed])
    lengths = rng.integers(3, 9, n)
    z = rng.standard_normal(n)
    b = rng.standard_normal((n, 3))
    e0, emax, ed50 = 1 + 0.5 * b[:, 0], 3 * np.exp(0.3 * b[:, 1]), 1.5 * np.exp(0.5 * b[:, 2])
    rows = []
    for i in range(n):
        t = np.sort(rng.uniform(0, 8.0, lengths[i]))
        mean = e0[i] + emax[i] * t / (ed50[i] + t) + 0.4 * z[i]
        rows.append(pd.DataFrame({"id": i, "time": t, "y": mean + 0.3 * rng.standard_normal(t.size),
                                  "y_mean": mean, "z": z[i]}))
    from pyro_dgmm.datasets.simulate import SimulatedData

    frame = pd.concat(rows, ignore_index=True)
    return SimulatedData(data=frame[["id", "time", "y", "z"]], truth=frame[["id", "time", "y_mean"]],
                         random_effects=b, outcomes={"y": "gaussian"}, covariates=["z"], params={},
                         population_truth=pd.DataFrame())


def simulate_twofactor(n: int = 800, j: int = 20, seed: int = 0):
    rng = np.random.default_rng([19, 3, seed])
    t = _times(rng, n, j, 4.0)
    f = rng.standard_normal((n, 2))
    means = {}
    for k in range(6):
        a = rng.uniform(-1, 1, 2)
        c = rng.uniform(-0.5, 0.5, 2)
        loading1 = a[0] + c[0] * t
        loading2 = a[1] * np.cos(np.pi * t / 4) + c[1]
        means[f"y{k}"] = 0.3 * k + 0.2 * t + loading1 * f[:, :1] + loading2 * f[:, 1:]
    return _frames(t, {}, means, {name: 0.5 for name in means}, rng, missing=0.2)


def simulate_oscillation(n: int = 800, j: int = 20, seed: int = 0):
    rng = np.random.default_rng([19, 10, seed])
    t = _times(rng, n, j, 10.0)
    b = rng.standard_normal((n, 3)) * np.array([1.0, 0.8, 0.8])
    mean = (1 + 0.03 * t + b[:, :1] + b[:, 1:2] * np.sin(np.pi * t / 2) + b[:, 2:3] * np.cos(np.pi * t / 2))
    return _frames(t, {}, {"y": mean}, {"y": 0.5}, rng)


def simulate_nonlinear(n: int = 800, j: int = 20, seed: int = 0):
    from pyro_dgmm.datasets import simulate_nonlinear as simulate

    return simulate(n_subjects=n, n_visits=j, seed=100 + seed)


def simulate_linear(n: int = 800, j: int = 20, seed: int = 0):
    from pyro_dgmm.datasets import simulate_linear as simulate

    return simulate(n_subjects=n, n_visits=j, seed=100 + seed)


TRUTHS = {"nonlinear": simulate_nonlinear, "quadratic": simulate_quadratic, "emax": simulate_emax,
          "emax_sparse": simulate_emax_sparse, "lmm4": simulate_lmm4, "lmm4sin": simulate_lmm4sin,
          "lmm4cos": simulate_lmm4cos,
          "twofactor": simulate_twofactor, "linear": simulate_linear, "oscillation": simulate_oscillation}


def residual_autocorrelation(fitted: pd.DataFrame, outcomes: list[str], id_col: str = "id") -> float:
    """Lag-1 autocorrelation of the within-subject residuals y - fitted
    (consecutive observed visits, pooled over subjects, averaged over
    outcomes): near 0 (slightly negative) when the subject-specific curves
    are captured, positive when a smooth subject-specific shape is left in
    the residuals, as after a collapsed latent direction."""
    values = []
    for k in outcomes:
        frame = pd.DataFrame({"id": fitted[id_col].to_numpy(), "r": (fitted[k] - fitted[f"{k}_fitted"]).to_numpy()})
        frame = frame.dropna()
        lagged = frame.groupby("id")["r"].shift(1)
        pair = lagged.notna()
        values.append(float((frame.r[pair] * lagged[pair]).sum() / (frame.r ** 2).sum()))
    return float(np.mean(values))


def run(sim, options: dict, seed: int, mll: bool = False) -> dict:
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.selection import selection_loss as _selection_loss

    options = dict(options)
    init = {k: options.pop(k) for k in ("latent_dim", "time_basis", "model_options", "encoder_hidden",
                                        "validation_fraction") if k in options}
    model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates, **init)
    start = time.perf_counter()
    model.fit(sim.data, progress=False, seed=seed, **options)
    seconds = time.perf_counter() - start
    fitted = model.fitted_values()
    extra = {}
    if mll:  # the importance-sampled marginal log-likelihood of all the data, comparable between fits
        start_mll = time.perf_counter()
        extra = {"mll": float(model.marginal_log_likelihood(sim.data, num_samples=500, seed=0).total),
                 "mll_seconds": time.perf_counter() - start_mll}
    errors = [rmse(fitted[f"{k}_fitted"], sim.truth[f"{k}_mean"]) for k in sim.outcomes]
    result = model.result_
    return {"rmse": float(np.mean(errors)), "epochs": result.epochs_run, "seconds": seconds,
            "converged": getattr(result, "converged", None),
            "active": getattr(result, "active_directions", None), "latent_dim": model.latent_dim_,
            "activity": [round(v, 3) for v in result.latent_activity],
            "resid_ac1": residual_autocorrelation(fitted, list(sim.outcomes)),
            "starts": len(result.starts), "fit_ac1": result.residual_autocorrelation,
            "heldout_loss": _selection_loss(result), "best_epoch": result.best_epoch,
            "annealed_at": result.annealed_at, "stop": result.stop_reason[:60],
            "validation_loss": [[int(e), float(v)] for e, v in result.validation_loss], **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truths", nargs="+", default=list(TRUTHS), choices=list(TRUTHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["default={}"], help="name=JSON of options")
    parser.add_argument("--fit-seeds", nargs="+", type=int, default=None,
                        help="fit seeds per data seed (default: the data seed)")
    parser.add_argument("--n-subjects", type=int, default=800)
    parser.add_argument("--n-visits", type=int, default=20, help="visits per subject of the dense truths")
    parser.add_argument("--output", default="default_selection")
    parser.add_argument("--mll", action="store_true",
                        help="also the marginal log-likelihood of all the data (importance sampling, 500 draws)")
    args = parser.parse_args()
    single_thread()
    configs = dict(c.split("=", 1) for c in args.configs)
    rows = []
    for truth in args.truths:
        for seed in args.seeds:
            sim = TRUTHS[truth](args.n_subjects, args.n_visits, seed=seed)
            reference = best_mixedlm(sim)[0] if list(sim.outcomes) == ["y"] else float("nan")
            for fit_seed in args.fit_seeds or [seed]:
                for name, options in configs.items():
                    row = {"truth": truth, "seed": seed, "fit_seed": fit_seed, "config": name,
                           **run(sim, json.loads(options), fit_seed, args.mll)}
                    row["vs_mixedlm"] = row["rmse"] / reference
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    frame = pd.DataFrame(rows)
    keys = ["truth", "seed", "fit_seed"]
    ref = frame[frame.config == next(iter(configs))].set_index(keys)["rmse"]
    frame["vs_first"] = frame.rmse / ref.reindex(pd.MultiIndex.from_frame(frame[keys])).to_numpy()
    print_table(frame.to_dict("records"), "per fit")
    summary = frame.groupby(["truth", "config"], sort=False).agg(
        rmse=("rmse", "median"), vs_first=("vs_first", "median"), vs_first_max=("vs_first", "max"),
        vs_mixedlm=("vs_mixedlm", "median"),
        epochs=("epochs", "median"), seconds=("seconds", "median")).reset_index()
    print_table(summary.to_dict("records"), "medians over seeds")
    write_json(frame.to_dict("records"), args.output)


if __name__ == "__main__":
    main()
