"""The app simulator: daily ecological-momentary-assessment data with a
known truth, one bounded and two binary items sharing the random effects,
and a missing-at-random response process (about 61% of the cells missing).

It shares the conventions and helpers of :mod:`pyro_dgmm.datasets.simulate`
(ids, seeds, ``population_truth``); :func:`simulate_app` is re-exported by
:mod:`pyro_dgmm.datasets`, the usual import.

>>> sim = simulate_app(n_subjects=3, n_days=7, seed=0)
>>> sim.data.columns.tolist()
['id', 'time', 'affect', 'lonely', 'bored', 'age', 'sex']
>>> sim.outcomes
{'affect': 'bounded(1,7)', 'lonely': 'bernoulli', 'bored': 'bernoulli'}
"""
from __future__ import annotations

import copy
import functools

import numpy as np

from pyro_dgmm.datasets.simulate import (
    SimulatedData,
    _bernoulli,
    _categorical,
    _check_count,
    _expit,
    _long_frames,
    _make_rng,
    _population_truth,
    _Subjects,
)

__all__ = ["simulate_app"]

_APP = {
    "affect": {"intercept": -0.4, "age": 0.2, "b0": 0.6, "sin_week": 0.25, "b1_trend": 0.3},
    "lonely": {"intercept": -1.0, "b0": 0.9, "b2": 0.5, "cos_week": 0.2},
    "bored": {"intercept": -0.5, "b2": 0.7, "b0": -0.4, "sin_week": 0.3, "male": 0.1},
    "phi": 8.0,
    "bounds": (1.0, 7.0),
    "snap": 0.01,
    "D": np.eye(3).tolist(),
}
# Response model of the app simulator. The intercept was calibrated once at
# the defaults (1174 subjects, 105 days): 61.3% missing outcome cells on
# average over seeds 0-9 (range 60.1-62.0%; 61.0% at seed 0).
_APP_MISSINGNESS = {
    "intercept": 0.52,
    "engagement_sd": 1.5,
    "weekend": -0.5,
    "decline": -1.5,
    "affect_lag": 0.3,
    "affect_centre": 4.0,
    "dropout_prob": 0.15,
    "binary_skip_prob": 0.05,
}
_APP_OUTCOMES = {"affect": "bounded(1,7)", "lonely": "bernoulli", "bored": "bernoulli"}



def _draw_app_subjects(rng: np.random.Generator, n: int) -> _Subjects:
    """Draw ``b ~ N(0, I_3)``, ``age ~ N(0, 1)``, ``male ~ Bernoulli(0.5)``."""
    b = rng.standard_normal((n, 3))
    covariates = {"age": rng.standard_normal(n), "male": _bernoulli(rng, np.full(n, 0.5))}
    return b, covariates


def _app_means(
    b: np.ndarray, covariates: dict, t: np.ndarray, n_days: int
) -> dict[str, np.ndarray]:
    """Conditional means (response scale) of the three app items at times ``t``."""
    week = 2.0 * np.pi * t / 7.0
    age, male = covariates["age"][:, None], covariates["male"][:, None]
    b0, b1, b2 = b[:, 0:1], b[:, 1:2], b[:, 2:3]
    a, lo, bo = _APP["affect"], _APP["lonely"], _APP["bored"]
    eta_affect = (
        a["intercept"] + a["age"] * age + a["b0"] * b0
        + a["sin_week"] * np.sin(week) + a["b1_trend"] * b1 * t / n_days
    )
    eta_lonely = lo["intercept"] + lo["b0"] * b0 + lo["b2"] * b2 + lo["cos_week"] * np.cos(week)
    eta_bored = (
        bo["intercept"] + bo["b2"] * b2 + bo["b0"] * b0
        + bo["sin_week"] * np.sin(week) + bo["male"] * male
    )
    low, high = _APP["bounds"]
    return {
        "affect": low + (high - low) * _expit(eta_affect),
        "lonely": _expit(eta_lonely),
        "bored": _expit(eta_bored),
    }


def _draw_bounded(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Scaled beta draw with the given mean, snapped to the bounds when within ``snap``."""
    low, high = _APP["bounds"]
    mu = (mean - low) / (high - low)
    value = low + (high - low) * rng.beta(mu * _APP["phi"], (1.0 - mu) * _APP["phi"])
    value[value < low + _APP["snap"]] = low
    value[value > high - _APP["snap"]] = high
    return value


def _app_observed_days(rng: np.random.Generator, affect: np.ndarray) -> np.ndarray:
    """Days (``(n_subjects, n_days)`` mask) on which the subject responded.

    Day 0 is always observed; see :func:`simulate_app` for the model.
    """
    m = _APP_MISSINGNESS
    n_subjects, n_days = affect.shape
    day = np.arange(n_days)
    engagement = m["engagement_sd"] * rng.standard_normal((n_subjects, 1))
    weekend = (day % 7 >= 5).astype(float)
    base = m["intercept"] + engagement + m["weekend"] * weekend + m["decline"] * day / n_days
    uniforms = rng.random((n_subjects, n_days))
    observed = np.zeros((n_subjects, n_days), dtype=bool)
    observed[:, 0] = True
    for j in range(1, n_days):  # sequential: today depends on yesterday's observed affect
        lag = np.where(observed[:, j - 1], affect[:, j - 1] - m["affect_centre"], 0.0)
        observed[:, j] = uniforms[:, j] < _expit(base[:, j] + m["affect_lag"] * lag)
    quits = rng.random(n_subjects) < m["dropout_prob"]
    quit_day = rng.integers(1, n_days, size=n_subjects)
    return observed & ~(quits[:, None] & (day >= quit_day[:, None]))


def simulate_app(n_subjects: int = 1174, n_days: int = 105, seed: int = 0) -> SimulatedData:
    r"""App-like daily data: one bounded and two binary items sharing ``b_i``.

    Days ``t = 0, ..., T-1`` (``T = n_days``, a shared grid; day 0 is a
    Monday, so days with ``t mod 7 in {5, 6}`` are weekend days). With
    ``w(t) = 2 pi t / 7``::

        age_i ~ N(0, 1),   male_i = [sex_i == 'male'] ~ Bernoulli(0.5)
        b_i = (b0_i, b1_i, b2_i) ~ N(0, I_3)

        affect:  eta = -0.4 + 0.2 age_i + 0.6 b0_i + 0.25 sin w(t) + 0.3 b1_i t / T
                 mu = expit(eta),   affect = 1 + 6 B,   B ~ Beta(mu phi, (1 - mu) phi),
                 phi = 8; draws within 0.01 of 1 or 7 are set to the bound (the
                 slider endpoints).  E[affect | b] = 1 + 6 mu.  (At these
                 values mu is mostly 0.2-0.6, so the draws that reach an
                 endpoint are nearly all at 1.)
        lonely ~ Bernoulli(expit(-1.0 + 0.9 b0_i + 0.5 b2_i + 0.2 cos w(t)))
        bored  ~ Bernoulli(expit(-0.5 + 0.7 b2_i - 0.4 b0_i + 0.3 sin w(t) + 0.1 male_i))

    Missingness (about 61% of the outcome cells; 61.0% at the defaults,
    seed 0). A day is either answered (all three items) or not. Day 0 is
    always answered; on day ``t >= 1``::

        logit P(answer_it | past) = 0.52 + e_i - 0.5 weekend(t) - 1.5 t / T
                                    + 0.3 (affect_{i,t-1} - 4) [answered_{i,t-1}]
        e_i ~ N(0, 1.5^2)  (engagement)

    so a low affect observed yesterday makes a missing day more likely
    (missing at random). In addition 15% of subjects quit for good from a
    day drawn uniformly from ``1, ..., T-1``, and on 5% of the answered
    days the two binary items are missing (affect observed).

    Covariates ``age`` (float) and ``sex`` (categorical, categories
    ``['female', 'male']``). ``params`` holds the coefficients per outcome
    (``affect``, ``lonely``, ``bored``), ``phi``, ``bounds``, ``snap``,
    ``D`` and the missingness constants under ``missingness``.
    """
    n_subjects = _check_count("n_subjects", n_subjects, 1)
    n_days = _check_count("n_days", n_days, 2)
    rng = _make_rng(seed)
    b, covariates = _draw_app_subjects(rng, n_subjects)
    times = np.broadcast_to(np.arange(n_days, dtype=float), (n_subjects, n_days))
    means = _app_means(b, covariates, times, n_days)
    complete = {
        "affect": _draw_bounded(rng, means["affect"]),
        "lonely": _bernoulli(rng, means["lonely"]),
        "bored": _bernoulli(rng, means["bored"]),
    }
    answered = _app_observed_days(rng, complete["affect"])
    binary_skip = rng.random(answered.shape) < _APP_MISSINGNESS["binary_skip_prob"]
    binary_observed = answered & ~binary_skip
    observed = {"affect": answered, "lonely": binary_observed, "bored": binary_observed}
    columns = {
        "age": covariates["age"],
        "sex": _categorical(covariates["male"], ("female", "male")),
    }
    data, truth = _long_frames(times, columns, means, complete, observed)
    params = copy.deepcopy(_APP)
    params["missingness"] = dict(_APP_MISSINGNESS)
    means_fn = functools.partial(_app_means, n_days=n_days)
    return SimulatedData(
        data=data,
        truth=truth,
        random_effects=b,
        outcomes=dict(_APP_OUTCOMES),
        covariates=list(columns),
        params=params,
        population_truth=_population_truth(
            _draw_app_subjects, means_fn, np.arange(n_days, dtype=float)
        ),
    )
