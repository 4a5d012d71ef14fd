r"""Seven simulated truths written for issue 19 ("accuracy on data the defaults
were never tuned on"), and the oracle models of the nonlinear ones.

Every simulator has the signature ``simulate_<name>(n_subjects=800,
n_visits=20, seed=0)`` and returns a
:class:`pyro_dgmm.datasets.simulate.SimulatedData`:

* ``data``: long frame, one row per planned cell (subject x visit), columns
  ``id``, ``time``, the outcomes (NaN where missing) and the baseline
  covariates ``x1`` (continuous, N(0, 1)) and ``x2`` (binary 0/1,
  Bernoulli(0.5), stored as a float column);
* ``truth``: the same rows in the same order, with ``<outcome>_mean`` (the
  true subject-specific mean E[y | b_i] on the response scale: a
  probability for binary outcomes, a rate for counts) and
  ``<outcome>_complete`` (the simulated value before missingness);
* ``random_effects``: the true subject-level random effects, row ``i`` for
  id ``i``; ``params``: the true constants; ``population_truth``: the
  marginal mean E[y(t)] on a grid of 50 times in [0, 10] (Monte Carlo over
  4,000 subjects drawn with a fixed seed).

The data-generating constants are fixed in this module (never drawn from
``seed``); ``seed`` feeds :func:`numpy.random.default_rng` and only draws
subjects, visit times, noise and missingness.  None of these truths shares
its form or constants with the package's own simulators
(:mod:`pyro_dgmm.datasets.simulate`), on which the defaults were tuned.

Visit times, unless stated otherwise ("jittered"): visit ``j = 0..J-1`` is
planned at ``10 j / (J - 1)`` and moved by ``U(-0.4, 0.4)`` times the
spacing, clipped to [0, 10] and sorted within subject.

Truths (``s(t) = (t - 5) / 5`` in [-1, 1] where used):

(a) ``lmm_spline``: a linear mixed model on a natural cubic spline basis of
    time with 3 df, B(t) = (B1, B2, B3) (knots 0, 10/3, 20/3, 10;
    orthonormalised on [0, 10], see :func:`spline3`)::

        y_ij = 2.0 + 0.5 x1_i + 0.4 x2_i
               + sum_k (gamma_k + delta_k x2_i) B_k(t_ij)      (covariate-by-time)
               + b0_i + sum_k b_k,i B_k(t_ij) + eps_ij,  eps ~ N(0, 1)
        gamma = (1.0, -0.6, 0.3), delta = (0.5, 0.4, -0.3)
        (b0, b1, b2, b3) ~ N(0, D), D = S R S, S = diag(1.0, 0.8, 0.6, 0.4),
        R = [[1, .3, -.2, .1], [.3, 1, .3, -.2], [-.2, .3, 1, .2], [.1, -.2, .2, 1]]

    :func:`lmm_spline_design` gives the true fixed and random design
    matrices for any rows (the oracle MixedLM's design).

(b) ``logistic_growth``: ``y = A_i / (1 + exp(-(t - m_i) / s_i)) + eps``,
    eps ~ N(0, 0.4^2), with::

        A_i     = 5.0 + 0.8 x1 + 1.0 x2 + u_A     (sd 1.0)
        m_i     = 5.0 + 0.5 x1 - 0.8 x2 + u_m     (sd 1.0)
        log s_i = 0.0 + 0.1 x1 + 0.0 x2 + u_s     (sd 0.25)
        corr(u_A, u_m) = 0.3, corr(u_A, u_s) = -0.2, corr(u_m, u_s) = 0.2

(c) ``biexponential``:
    ``y = a1 exp(-k1_i t) + a2 exp(-k2_i t) + c_i + eps``, eps ~ N(0, 0.25^2)::

        a1 = 4.0, a2 = 3.0 (fixed),  c_i = 1.0 + 0.5 x1 + 0.3 x2 (covariate effect)
        log k1_i = log 1.2 + u_1 (sd 0.4),  log k2_i = log 0.2 + 0.3 x2 + u_2 (sd 0.4)
        corr(u_1, u_2) = 0.3

(d) ``periodic``: a random linear trend plus a sinusoid of known period
    P = 4 with random amplitude and phase, eps ~ N(0, 0.4^2)::

        y = l_i + r_i t + exp(a_i) sin(2 pi t / P + p_i) + eps
        l_i = 2.0 + 0.5 x1 + 0.7 x2 + u_l (sd 1.0);  r_i = 0.2 + 0.1 x2 + u_r (sd 0.15)
        a_i = log 1.5 + 0.2 x1 + u_a (sd 0.3);       p_i = 0.3 + u_p (sd 0.5)
        corr(u_l, u_r) = -0.3, other correlations 0

(e) ``mixed_trio``: three outcomes sharing three latent factors
    f_i ~ N(0, I_3), no missing cells::

        gauss (Gaussian, sd 0.6):  2.0 + 0.4 x1 + 1.2 sin(pi t / 10) + 0.9 f1 + 0.6 s(t) f2
        binary (Bernoulli, logit): -0.3 + 0.5 x2 + 0.8 s(t) - 0.6 s(t)^2 + 0.7 f1 + (1.0 + 0.6 s(t)) f3
        count (Poisson, log):      0.8 + 0.3 x1 - 0.4 cos(pi t / 10) + 0.5 f2 + 0.4 (1 + s(t)) f3

(f) ``sparse_irregular``: a Gaussian bump on a random level, observed at
    3 to 8 visits per subject (uniformly many) at times drawn uniformly on
    [0, 10] (``n_visits`` is not used), eps ~ N(0, 0.4^2)::

        y = l_i + exp(h_i) exp(-(t - c_i)^2 / (2 w^2)) + eps,   w = exp(log 1.5)
        l_i = 1.0 + 0.5 x1 + u_l (sd 0.8);  h_i = log 3 + 0.3 x2 + u_h (sd 0.3)
        c_i = 5.0 + 0.5 x1 - 0.5 x2 + u_c (sd 1.2);  corr(u_l, u_h) = 0.2

(g) ``many_outcomes``: 30 outcomes ``g01..g20`` (Gaussian, sd 0.5) and
    ``b01..b10`` (Bernoulli, logit) driven by three factors f_i ~ N(0, I_3)
    with time-varying loadings, ``r(t) = sin(pi (t - 5) / 10)``::

        eta_k = m_k + c_k r(t) + e_k (r(t)^2 - 1/2) + d_k x1 + (a_k + b_k r(t))' f_i

    with the per-outcome constants drawn once from a generator seeded 19019
    (:data:`MANY_SEED`; the same for every data seed; scaled 1.5x for the
    binary outcomes), and 30% of the cells (each cell independently)
    missing completely at random.

Oracles: for the nonlinear single-outcome truths (b), (c), (d), (f) the
classes :class:`LogisticGrowthOracle`, :class:`BiexponentialOracle`,
:class:`PeriodicOracle`, :class:`BumpOracle` are
:class:`~pyro_dgmm.model.MixedModel` variants whose ``linear_predictor`` is
the true functional form (see :class:`NonlinearOracle`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from pyro_dgmm.datasets.simulate import SimulatedData
from pyro_dgmm.model import MixedModel

T_MAX = 10.0
JITTER = 0.4  # of the visit spacing
POPULATION_DRAWS = 4000
POPULATION_SEED = 19
GRID = np.linspace(0.0, T_MAX, 50)
MANY_SEED = 19019
MISSING_SHARE = 0.3


# ------------------------------------------------------------------ helpers
def _xp(x):
    """The array module of ``x``: torch for tensors, numpy otherwise (the
    curves below are written once for both, so the oracle evaluates exactly
    the formula that generated the data)."""
    return torch if isinstance(x, torch.Tensor) else np


def _expit(x):
    xp = _xp(x)
    return 1.0 / (1.0 + xp.exp(-x))


def jittered_times(rng: np.random.Generator, n: int, visits: int) -> np.ndarray:
    """(n, visits) times: the grid 10 j / (J - 1) moved by U(-0.4, 0.4) x spacing, in [0, 10], sorted."""
    nominal = np.linspace(0.0, T_MAX, visits)
    spacing = T_MAX / max(visits - 1, 1)
    moved = nominal + rng.uniform(-JITTER, JITTER, (n, visits)) * spacing
    return np.sort(np.clip(moved, 0.0, T_MAX), axis=1)


def _covariates(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """x1 ~ N(0, 1), x2 ~ Bernoulli(0.5) (as 0.0 / 1.0)."""
    return {"x1": rng.standard_normal(n), "x2": (rng.random(n) < 0.5).astype(float)}


def _covariance(sd, corr) -> np.ndarray:
    sd = np.asarray(sd, float)
    return np.asarray(corr, float) * np.outer(sd, sd)


def _frames(times: np.ndarray, cov: dict, means: dict, complete: dict, observed: dict | None = None,
            lengths: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long ``data`` and ``truth`` frames from (n, J) arrays; ``lengths``
    keeps only the first ``lengths[i]`` slots of subject ``i`` (ragged visits)."""
    n, j = times.shape
    keep = np.ones((n, j), bool) if lengths is None else np.arange(j)[None, :] < lengths[:, None]
    index = {"id": np.repeat(np.arange(n, dtype=np.int64), j)[keep.ravel()], "time": times[keep]}
    data, truth = dict(index), dict(index)
    for name, values in complete.items():
        seen = np.ones_like(keep) if observed is None or name not in observed else observed[name]
        data[name] = np.where(seen, values, np.nan)[keep]
        truth[f"{name}_mean"] = means[name][keep]
        truth[f"{name}_complete"] = values[keep]
    for name, column in cov.items():
        data[name] = np.repeat(np.asarray(column, float), j)[keep.ravel()]
    return pd.DataFrame(data), pd.DataFrame(truth)


def _population(draw: Callable, mean_fn: Callable) -> pd.DataFrame:
    """Monte Carlo E[y(t)] on :data:`GRID` over subjects from ``draw`` (fixed seed)."""
    rng = np.random.default_rng(POPULATION_SEED)
    subjects = draw(rng, POPULATION_DRAWS)
    means = mean_fn(subjects, np.broadcast_to(GRID, (POPULATION_DRAWS, GRID.size)))
    return pd.DataFrame({"time": GRID, **{f"{k}_population_mean": v.mean(0) for k, v in means.items()}})


# ------------------------------------------------------- (a) spline LMM
SPLINE_KNOTS = (0.0, T_MAX / 3, 2 * T_MAX / 3, T_MAX)


def _raw_natural_spline(t: np.ndarray, knots=SPLINE_KNOTS) -> np.ndarray:
    """Truncated-power natural cubic spline basis without its constant
    (Hastie, Tibshirani & Friedman 2009, eqs. 5.4-5.5): len(knots) - 1 columns."""
    xi = np.asarray(knots, float)
    t = np.asarray(t, float)[..., None]
    cubes = np.clip(t - xi, 0.0, None) ** 3
    d = (cubes[..., :-1] - cubes[..., -1:]) / (xi[-1] - xi[:-1])
    return np.concatenate([t, d[..., :-1] - d[..., -1:]], axis=-1)


def _spline3_map() -> tuple[np.ndarray, np.ndarray]:
    """(mean, R^-1) such that (raw(t) - mean) @ R^-1 has orthonormal columns
    (unit SD, uncorrelated) over a uniform grid of 2001 times on [0, 10]."""
    grid = np.linspace(0.0, T_MAX, 2001)
    raw = _raw_natural_spline(grid)
    centre = raw.mean(0)
    _, r = np.linalg.qr((raw - centre) / math.sqrt(grid.size))
    r = r * np.sign(np.diag(r))[:, None]  # positive diagonal: B1 increases with t
    return centre, np.linalg.inv(r)


_SPLINE_CENTRE, _SPLINE_ROTATION = _spline3_map()


def spline3(t) -> np.ndarray:
    """The truth's time basis B(t), shape (..., 3): the natural cubic spline
    with knots 0, 10/3, 20/3, 10, centred and orthonormalised (Gram-Schmidt)
    over a uniform grid on [0, 10], so B1 is linear in t, B2 quadratic-like
    and B3 cubic-like, each with mean 0 and SD 1 over [0, 10].  A fixed map:
    it never depends on the data."""
    return (_raw_natural_spline(t) - _SPLINE_CENTRE) @ _SPLINE_ROTATION


LMM = {
    "beta": {"intercept": 2.0, "x1": 0.5, "x2": 0.4},
    "gamma": [1.0, -0.6, 0.3],
    "delta": [0.5, 0.4, -0.3],
    "sd": [1.0, 0.8, 0.6, 0.4],
    "corr": [[1.0, 0.3, -0.2, 0.1], [0.3, 1.0, 0.3, -0.2], [-0.2, 0.3, 1.0, 0.2], [0.1, -0.2, 0.2, 1.0]],
    "sigma": 1.0,
}
LMM_FIXED_NAMES = ["intercept", "x1", "x2", "B1", "B2", "B3", "x2:B1", "x2:B2", "x2:B3"]
LMM_RANDOM_NAMES = ["intercept", "B1", "B2", "B3"]


def lmm_spline_design(df: pd.DataFrame, time_col: str = "time") -> tuple[np.ndarray, np.ndarray]:
    """The true design of truth (a) for the rows of ``df``: fixed effects
    X = [1, x1, x2, B1..B3, x2 B1..x2 B3] (:data:`LMM_FIXED_NAMES`) and random
    effects Z = [1, B1, B2, B3] (:data:`LMM_RANDOM_NAMES`), B = :func:`spline3`.
    The true coefficients are ``lmm_spline_coefficients()``."""
    basis = spline3(df[time_col].to_numpy(float))
    x1, x2 = df["x1"].to_numpy(float), df["x2"].to_numpy(float)
    ones = np.ones(len(df))
    X = np.column_stack([ones, x1, x2, basis, x2[:, None] * basis])
    Z = np.column_stack([ones, basis])
    return X, Z


def lmm_spline_coefficients() -> np.ndarray:
    """The true fixed-effects vector in the column order of :func:`lmm_spline_design`."""
    b = LMM["beta"]
    return np.array([b["intercept"], b["x1"], b["x2"], *LMM["gamma"], *LMM["delta"]])


def _draw_lmm(rng, n):
    cov = _covariates(rng, n)
    chol = np.linalg.cholesky(_covariance(LMM["sd"], LMM["corr"]))
    return {"b": rng.standard_normal((n, 4)) @ chol.T, **cov}


def _lmm_means(s, t):
    basis = spline3(t)  # (n, J, 3)
    b = LMM["beta"]
    x1, x2 = s["x1"][:, None], s["x2"][:, None]
    fixed = b["intercept"] + b["x1"] * x1 + b["x2"] * x2 + basis @ np.asarray(LMM["gamma"])
    fixed = fixed + x2 * (basis @ np.asarray(LMM["delta"]))
    random = s["b"][:, None, 0] + np.einsum("njk,nk->nj", basis, s["b"][:, 1:])
    return {"y": fixed + random}


def simulate_lmm_spline(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (a): linear mixed model, 4 correlated random effects on a natural
    spline(3) basis, covariate-by-time fixed effects, sigma 1 (module docstring)."""
    rng = np.random.default_rng(seed)
    s = _draw_lmm(rng, n_subjects)
    times = jittered_times(rng, n_subjects, n_visits)
    means = _lmm_means(s, times)
    complete = {"y": means["y"] + LMM["sigma"] * rng.standard_normal(times.shape)}
    data, truth = _frames(times, {"x1": s["x1"], "x2": s["x2"]}, means, complete)
    return SimulatedData(data=data, truth=truth, random_effects=s["b"], outcomes={"y": "gaussian"},
                         covariates=["x1", "x2"], params={**LMM, "knots": list(SPLINE_KNOTS),
                                                           "fixed_names": LMM_FIXED_NAMES,
                                                           "random_names": LMM_RANDOM_NAMES},
                         population_truth=_population(_draw_lmm, _lmm_means))


# ------------------------------------------ nonlinear single-outcome truths
@dataclass(frozen=True)
class NonlinearTruth:
    """A nonlinear mixed model with one Gaussian outcome.

    Subject-level parameters ``theta_ip = intercept_p + x1_coef_p x1_i +
    x2_coef_p x2_i + u_ip`` (``u_ip = 0`` for parameters not in ``random``;
    ``u_i ~ N(0, D)``, ``D`` from ``sd`` and ``corr`` in the order of
    ``random``); ``y_ij = curve(theta_i, t_ij) + N(0, sigma^2)``.
    """

    name: str
    parameters: tuple[str, ...]
    random: tuple[str, ...]
    intercept: dict[str, float]
    x1: dict[str, float]
    x2: dict[str, float]
    sd: dict[str, float]
    corr: list[list[float]]
    sigma: float
    curve: Callable
    constants: dict = field(default_factory=dict)

    @property
    def covariance(self) -> np.ndarray:
        return _covariance([self.sd[p] for p in self.random], self.corr)

    def params(self) -> dict:
        return {"parameters": list(self.parameters), "random": list(self.random), "intercept": dict(self.intercept),
                "x1": dict(self.x1), "x2": dict(self.x2), "sd": dict(self.sd), "corr": self.corr,
                "sigma": self.sigma, **self.constants}

    def draw(self, rng, n) -> dict:
        cov = _covariates(rng, n)
        chol = np.linalg.cholesky(self.covariance)
        u = rng.standard_normal((n, len(self.random))) @ chol.T
        theta = {}
        for p in self.parameters:
            theta[p] = self.intercept[p] + self.x1.get(p, 0.0) * cov["x1"] + self.x2.get(p, 0.0) * cov["x2"]
            if p in self.random:
                theta[p] = theta[p] + u[:, self.random.index(p)]
        return {"u": u, "theta": theta, **cov}

    def means(self, s, t) -> dict:
        return {"y": self.curve({p: v[:, None] for p, v in s["theta"].items()}, t)}

    def start(self) -> dict[str, float]:
        """Each parameter at average covariates (x1 = 0, x2 = 1/2): the oracle's starting values."""
        return {p: self.intercept[p] + 0.5 * self.x2.get(p, 0.0) for p in self.parameters}


def _logistic_curve(th, t):
    xp = _xp(t)
    return th["A"] / (1.0 + xp.exp(-(t - th["m"]) / xp.exp(th["log_s"])))


def _biexp_curve(th, t):
    xp = _xp(t)
    return (th["a1"] * xp.exp(-xp.exp(th["log_k1"]) * t) + th["a2"] * xp.exp(-xp.exp(th["log_k2"]) * t)
            + th["c"])


PERIOD = 4.0


def _periodic_curve(th, t):
    xp = _xp(t)
    return th["level"] + th["slope"] * t + xp.exp(th["log_amp"]) * xp.sin(2 * math.pi * t / PERIOD + th["phase"])


def _bump_curve(th, t):
    xp = _xp(t)
    return th["level"] + xp.exp(th["log_h"]) * xp.exp(-0.5 * ((t - th["centre"]) / xp.exp(th["log_w"])) ** 2)


LOGISTIC_GROWTH = NonlinearTruth(
    "logistic_growth", ("A", "m", "log_s"), ("A", "m", "log_s"),
    intercept={"A": 5.0, "m": 5.0, "log_s": 0.0}, x1={"A": 0.8, "m": 0.5, "log_s": 0.1},
    x2={"A": 1.0, "m": -0.8}, sd={"A": 1.0, "m": 1.0, "log_s": 0.25},
    corr=[[1.0, 0.3, -0.2], [0.3, 1.0, 0.2], [-0.2, 0.2, 1.0]], sigma=0.4, curve=_logistic_curve)

BIEXPONENTIAL = NonlinearTruth(
    "biexponential", ("a1", "a2", "c", "log_k1", "log_k2"), ("log_k1", "log_k2"),
    intercept={"a1": 4.0, "a2": 3.0, "c": 1.0, "log_k1": math.log(1.2), "log_k2": math.log(0.2)},
    x1={"c": 0.5}, x2={"c": 0.3, "log_k2": 0.3}, sd={"log_k1": 0.4, "log_k2": 0.4},
    corr=[[1.0, 0.3], [0.3, 1.0]], sigma=0.25, curve=_biexp_curve)

PERIODIC = NonlinearTruth(
    "periodic", ("level", "slope", "log_amp", "phase"), ("level", "slope", "log_amp", "phase"),
    intercept={"level": 2.0, "slope": 0.2, "log_amp": math.log(1.5), "phase": 0.3},
    x1={"level": 0.5, "log_amp": 0.2}, x2={"level": 0.7, "slope": 0.1},
    sd={"level": 1.0, "slope": 0.15, "log_amp": 0.3, "phase": 0.5},
    corr=[[1.0, -0.3, 0.0, 0.0], [-0.3, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
    sigma=0.4, curve=_periodic_curve, constants={"period": PERIOD})

BUMP = NonlinearTruth(
    "sparse_irregular", ("level", "log_h", "centre", "log_w"), ("level", "log_h", "centre"),
    intercept={"level": 1.0, "log_h": math.log(3.0), "centre": 5.0, "log_w": math.log(1.5)},
    x1={"level": 0.5, "centre": 0.5}, x2={"log_h": 0.3, "centre": -0.5},
    sd={"level": 0.8, "log_h": 0.3, "centre": 1.2},
    corr=[[1.0, 0.2, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]], sigma=0.4, curve=_bump_curve,
    constants={"visits": [3, 8]})


def _simulate_nonlinear(truth: NonlinearTruth, n_subjects: int, n_visits: int, seed: int,
                        sparse: bool = False) -> SimulatedData:
    rng = np.random.default_rng(seed)
    s = truth.draw(rng, n_subjects)
    lengths = None
    if sparse:
        low, high = truth.constants["visits"]
        lengths = rng.integers(low, high + 1, n_subjects)  # visits per subject, uniform on {3..8}
        draws = rng.uniform(0.0, T_MAX, (n_subjects, high))
        kept = np.arange(high)[None, :] < lengths[:, None]  # subject i keeps its first lengths[i] draws
        times = np.sort(np.where(kept, draws, np.inf), axis=1)  # those, sorted; then the unused slots
        times = np.where(np.isinf(times), T_MAX, times)  # unused slots (dropped by _frames)
    else:
        times = jittered_times(rng, n_subjects, n_visits)
    means = truth.means(s, times)
    complete = {"y": means["y"] + truth.sigma * rng.standard_normal(times.shape)}
    data, frame = _frames(times, {"x1": s["x1"], "x2": s["x2"]}, means, complete, lengths=lengths)
    return SimulatedData(data=data, truth=frame, random_effects=s["u"], outcomes={"y": "gaussian"},
                         covariates=["x1", "x2"], params=truth.params(),
                         population_truth=_population(truth.draw, truth.means))


def simulate_logistic_growth(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (b): logistic growth with random asymptote, midpoint and log-scale."""
    return _simulate_nonlinear(LOGISTIC_GROWTH, n_subjects, n_visits, seed)


def simulate_biexponential(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (c): bi-exponential decay with two random log-rates and a covariate shift."""
    return _simulate_nonlinear(BIEXPONENTIAL, n_subjects, n_visits, seed)


def simulate_periodic(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (d): random linear trend plus a period-4 sinusoid with random amplitude and phase."""
    return _simulate_nonlinear(PERIODIC, n_subjects, n_visits, seed)


def simulate_sparse_irregular(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (f): a Gaussian bump with random level, height and centre, 3-8
    visits per subject at uniform random times (``n_visits`` is not used)."""
    return _simulate_nonlinear(BUMP, n_subjects, n_visits, seed, sparse=True)


# ------------------------------------------------------- (e) mixed trio
TRIO = {"outcomes": {"gauss": "gaussian", "binary": "bernoulli", "count": "poisson"}, "sigma_gauss": 0.6}


def _trio_eta(s, t) -> dict[str, np.ndarray]:
    f = s["f"]
    f1, f2, f3 = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    x1, x2 = s["x1"][:, None], s["x2"][:, None]
    st = (t - 5.0) / 5.0
    return {
        "gauss": 2.0 + 0.4 * x1 + 1.2 * np.sin(np.pi * t / 10) + 0.9 * f1 + 0.6 * st * f2,
        "binary": -0.3 + 0.5 * x2 + 0.8 * st - 0.6 * st ** 2 + 0.7 * f1 + (1.0 + 0.6 * st) * f3,
        "count": 0.8 + 0.3 * x1 - 0.4 * np.cos(np.pi * t / 10) + 0.5 * f2 + 0.4 * (1.0 + st) * f3,
    }


def _trio_means(s, t):
    eta = _trio_eta(s, t)
    return {"gauss": eta["gauss"], "binary": _expit(eta["binary"]), "count": np.exp(eta["count"])}


def _draw_factors(rng, n):
    cov = _covariates(rng, n)
    return {"f": rng.standard_normal((n, 3)), **cov}


def simulate_mixed_trio(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (e): Gaussian, Bernoulli and Poisson outcomes driven by three shared factors."""
    rng = np.random.default_rng(seed)
    s = _draw_factors(rng, n_subjects)
    times = jittered_times(rng, n_subjects, n_visits)
    means = _trio_means(s, times)
    complete = {"gauss": means["gauss"] + TRIO["sigma_gauss"] * rng.standard_normal(times.shape),
                "binary": (rng.random(times.shape) < means["binary"]).astype(float),
                "count": rng.poisson(means["count"]).astype(float)}
    data, truth = _frames(times, {"x1": s["x1"], "x2": s["x2"]}, means, complete)
    return SimulatedData(data=data, truth=truth, random_effects=s["f"], outcomes=dict(TRIO["outcomes"]),
                         covariates=["x1", "x2"], params=dict(TRIO),
                         population_truth=_population(_draw_factors, _trio_means))


# ---------------------------------------------------- (g) many outcomes
def many_outcome_constants() -> dict:
    """Per-outcome constants of truth (g), drawn once from ``default_rng(MANY_SEED)``."""
    rng = np.random.default_rng(MANY_SEED)
    names = [f"g{k:02d}" for k in range(1, 21)] + [f"b{k:02d}" for k in range(1, 11)]
    families = {name: "gaussian" if name.startswith("g") else "bernoulli" for name in names}
    k = len(names)
    scale = np.where(np.array([families[n] == "bernoulli" for n in names]), 1.5, 1.0)
    return {
        "names": names, "families": families,
        "m": rng.normal(0.0, 1.0, k) * scale,
        "c": rng.normal(0.0, 0.6, k) * scale,
        "e": rng.normal(0.0, 0.4, k) * scale,
        "d": rng.normal(0.0, 0.3, k) * scale,
        "a": rng.normal(0.0, 0.7, (k, 3)) * scale[:, None],
        "b": rng.normal(0.0, 0.5, (k, 3)) * scale[:, None],
        "sigma": 0.5,
    }


def _many_means(s, t, constants=None):
    c = constants or many_outcome_constants()
    r = np.sin(np.pi * (t - 5.0) / 10.0)  # (n, J)
    f, x1 = s["f"], s["x1"][:, None]
    out = {}
    for k, name in enumerate(c["names"]):
        load0, load1 = f @ c["a"][k], f @ c["b"][k]  # (n,)
        eta = (c["m"][k] + c["c"][k] * r + c["e"][k] * (r ** 2 - 0.5) + c["d"][k] * x1
               + load0[:, None] + load1[:, None] * r)
        out[name] = eta if c["families"][name] == "gaussian" else _expit(eta)
    return out


def simulate_many_outcomes(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    """Truth (g): 20 Gaussian and 10 binary outcomes, three factors with
    time-varying loadings, 30% of cells missing completely at random."""
    c = many_outcome_constants()
    rng = np.random.default_rng(seed)
    s = _draw_factors(rng, n_subjects)
    times = jittered_times(rng, n_subjects, n_visits)
    means = _many_means(s, times, c)
    complete, observed = {}, {}
    for name in c["names"]:
        if c["families"][name] == "gaussian":
            complete[name] = means[name] + c["sigma"] * rng.standard_normal(times.shape)
        else:
            complete[name] = (rng.random(times.shape) < means[name]).astype(float)
        observed[name] = rng.random(times.shape) >= MISSING_SHARE
    data, truth = _frames(times, {"x1": s["x1"], "x2": s["x2"]}, means, complete, observed)
    params = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in c.items()}
    params["missing_share"] = MISSING_SHARE
    return SimulatedData(data=data, truth=truth, random_effects=s["f"], outcomes=dict(c["families"]),
                         covariates=["x1", "x2"], params=params,
                         population_truth=_population(_draw_factors, lambda s_, t_: _many_means(s_, t_, c)))


SIMULATORS = {
    "lmm_spline": simulate_lmm_spline,
    "logistic_growth": simulate_logistic_growth,
    "biexponential": simulate_biexponential,
    "periodic": simulate_periodic,
    "mixed_trio": simulate_mixed_trio,
    "sparse_irregular": simulate_sparse_irregular,
    "many_outcomes": simulate_many_outcomes,
}
"""Truth name -> simulator, in the order (a)-(g) of issue 19."""


# ------------------------------------------------------------------ oracles
class _OracleParameters(nn.Module):
    r"""Learnable parameters of a :class:`NonlinearOracle` (a plain module).

    ``intercept`` (P,) and ``covariate_effects`` (P, C): the fixed part
    ``a_p + w_p' x_i`` of each subject-level parameter (x_i the model's
    standardised covariate columns); ``random_tril`` (r(r+1)/2,): the
    lower-triangular r x q map L (q = r) with ``u_i = L b_i``, so
    Cov(u_i) = L L'.
    """

    def __init__(self, start: np.ndarray, num_covariates: int, random_sd: np.ndarray):
        super().__init__()
        r = len(random_sd)
        self.intercept = nn.Parameter(torch.as_tensor(start, dtype=torch.float32).clone())
        self.covariate_effects = nn.Parameter(torch.zeros(len(start), num_covariates))
        rows, cols = torch.tril_indices(r, r)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        tril = torch.zeros(rows.numel())
        tril[rows == cols] = torch.as_tensor(random_sd, dtype=torch.float32)
        self.random_tril = nn.Parameter(tril)

    def random_map(self, r: int) -> torch.Tensor:
        L = self.random_tril.new_zeros(r, r)
        return L.index_put((self.rows, self.cols), self.random_tril)


class NonlinearOracle(MixedModel):
    r"""A mixed model told the true functional form of a :class:`NonlinearTruth`.

    .. math::

        \theta_{ip} = a_p + w_p^\top x_i + [p \text{ random}]\,(L b_i)_p, \qquad
        E[y_{ij} \mid b_i] = \text{curve}(\theta_i, t_{ij}), \qquad b_i \sim N(0, I_r)

    with learnable ``a`` (P,), ``w`` (P, C) and lower-triangular ``L``
    (r x r), ``r = latent_dim`` = the number of random parameters; x_i are
    the schema's standardised covariate columns (an affine reparametrisation
    of the truth's x1, x2, so the truth is inside the model).  The package's
    ``eta = offset + scale * linear_predictor`` is undone: the method returns
    ``(curve - offset) / scale``, so ``eta`` is the curve itself (identity
    link, Gaussian outcome).

    Starting values: ``a_p`` at the truth's parameters for average
    covariates, ``w = 0``, ``L = diag(random_start * true SDs)``, as a user
    of a nonlinear mixed-model routine supplies sensible starting values.

    Built by ``DeepMixedModel(model_class=<subclass>, latent_dim=r)``: the
    keyword arguments of ``MixedModel.from_schema`` (``num_covariates``,
    ``num_time_features``) and the estimator's ``activation`` are accepted;
    time features and ``activation`` are ignored (the curve uses the raw
    times ``data.times + data.time_origin``, and ``eta`` is the curve less
    the schema's outcome shift, as the data's outcomes are).
    """

    truth: NonlinearTruth = None

    def __init__(self, families, latent_dim, *, offsets, scales, dispersions, num_covariates: int = 0,
                 num_time_features: int = 0, random_start: float = 0.5, activation=None, **ignored):
        super().__init__(families, latent_dim, offsets, scales, dispersions)
        truth = self.truth
        if len(self.families) != 1:
            raise ValueError(f"{type(self).__name__} models one outcome, got {list(self.families)}")
        if latent_dim != len(truth.random):
            raise ValueError(f"{type(self).__name__} needs latent_dim={len(truth.random)} (one per random "
                             f"parameter {truth.random}), got {latent_dim}")
        start = truth.start()
        self.parameters_ = _OracleParameters(np.array([start[p] for p in truth.parameters]), num_covariates,
                                             random_start * np.array([truth.sd[p] for p in truth.random]))

    def subject_parameters(self, b: torch.Tensor, covariates: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta (..., N) per parameter name, from b (..., N, r) and covariates (N, C)."""
        core = self.parameters_
        fixed = core.intercept + covariates @ core.covariate_effects.T  # (N, P)
        random = b @ core.random_map(self.latent_dim).T  # (..., N, r)
        theta = {}
        for p, name in enumerate(self.truth.parameters):
            value = fixed[:, p]
            if name in self.truth.random:
                value = value + random[..., self.truth.random.index(name)]
            theta[name] = value
        return theta

    def linear_predictor(self, b: torch.Tensor, data) -> torch.Tensor:
        theta = self.subject_parameters(b, data.covariates)
        times = data.times + data.time_origin
        curve = self.truth.curve({k: v.unsqueeze(-1) for k, v in theta.items()}, times)  # (..., N, T)
        shift = 0.0 if data.outcome_shift is None else float(data.outcome_shift[0])
        return ((curve - shift - self.outcome_offset[0]) / self.outcome_scale[0]).unsqueeze(-1)

    def parameter_names(self) -> list[str]:
        """The names (``model.named_parameters()``) of the curve's parameters,
        for :func:`pyro_dgmm.wald.maximize_marginal_likelihood`."""
        return [f"parameters_.{name}" for name, _ in self.parameters_.named_parameters()]


class LogisticGrowthOracle(NonlinearOracle):
    """Oracle of truth (b): A / (1 + exp(-(t - m) / exp(log_s))), 3 random parameters."""

    truth = LOGISTIC_GROWTH


class BiexponentialOracle(NonlinearOracle):
    """Oracle of truth (c): a1 exp(-exp(log_k1) t) + a2 exp(-exp(log_k2) t) + c, 2 random log-rates."""

    truth = BIEXPONENTIAL


class PeriodicOracle(NonlinearOracle):
    """Oracle of truth (d): level + slope t + exp(log_amp) sin(2 pi t / 4 + phase), 4 random parameters."""

    truth = PERIODIC


class BumpOracle(NonlinearOracle):
    """Oracle of truth (f): level + exp(log_h) exp(-(t - centre)^2 / (2 exp(log_w)^2)), 3 random parameters."""

    truth = BUMP


ORACLES: dict[str, type[NonlinearOracle]] = {
    "logistic_growth": LogisticGrowthOracle,
    "biexponential": BiexponentialOracle,
    "periodic": PeriodicOracle,
    "sparse_irregular": BumpOracle,
}
"""Truth name -> oracle model class (the nonlinear single-outcome truths)."""
