"""Simulated longitudinal data sets with a known truth.

Every simulator draws subjects ``i = 0, ..., n-1`` with random effects
``b_i``, baseline covariates ``x_i`` and planned visit times ``t_ij``,
simulates a value for every planned cell (subject x visit), and then, for
the simulators with missing data, deletes cells by a known missingness
mechanism. The result is a :class:`SimulatedData`.  The app simulator
(:func:`~pyro_dgmm.datasets.simulate_app`) is in :mod:`pyro_dgmm.datasets.app`.

Conventions shared by all simulators:

* ``id`` runs over ``0, ..., n_subjects - 1``, so ``random_effects[id]`` is
  the subject's ``b_i``; rows are sorted by id, then visit.
* ``seed`` feeds :func:`numpy.random.default_rng`; the same seed gives
  identical output.
* ``population_truth`` is the marginal mean ``E[y(t)]`` over the
  random-effects and covariate distributions, estimated by Monte Carlo over
  :data:`POPULATION_DRAWS` subjects drawn with the fixed seed
  :data:`POPULATION_SEED` (so it does not depend on ``seed``). For the
  simulators with missing data it is the mean of the complete-data process,
  the target that a missing-at-random analysis should recover.

Example (data and the truth behind them):

>>> sim = simulate_linear(n_subjects=4, n_visits=3, seed=0)
>>> sim.data.columns.tolist()
['id', 'time', 'y', 'age', 'group']
>>> sim.params["beta"]["group[treated]"]
0.8
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Callable

import numpy as np
import pandas as pd

from pyro_dgmm.errors import ConfigError

__all__ = [
    "POPULATION_DRAWS",
    "POPULATION_SEED",
    "SimulatedData",
    "simulate_dropout",
    "simulate_linear",
    "simulate_linear_noise",
    "simulate_nonlinear",
]

POPULATION_DRAWS = 20_000
POPULATION_SEED = 20_240_601
T_MAX = 10.0
"""End of the planned follow-up of the irregular-time simulators."""
GRID_POINTS = 50
"""Number of grid points of ``population_truth`` for irregular visit times."""
JITTER = 0.2
"""Half-width of the uniform jitter of the irregular visit times."""

_LINEAR = {
    "beta": {"intercept": 1.0, "time": 0.3, "age": 0.5, "group[treated]": 0.8},
    "D": [[1.0, 0.1], [0.1, 0.09]],
    "sigma": 0.5,
}
_NONLINEAR = {
    "intercept": 1.0,
    "x": 0.5,
    "b0_scale": 0.6,
    "amplitude": 3.0,
    "midpoint": 5.0,
    "shift_scale": 1.5,
    "width": 0.8,
    "sigma": 0.3,
    "D": [[1.0, 0.0], [0.0, 1.0]],
}
# Calibrated once at the defaults (800 subjects, 20 visits): with a1 = 1.0,
# a0 = -5.3 leaves 30.2% of the planned cells missing on average over seeds
# 0-19 (range 28.7-32.0%; 28.9% at seed 0).
_DROPOUT_A0 = -5.3
_DROPOUT_A1 = 1.0
_ALWAYS_OBSERVED_VISITS = 3
_Subjects = tuple[np.ndarray, dict[str, np.ndarray]]
_MeanFunction = Callable[[np.ndarray, dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class SimulatedData:
    """A simulated data set together with the truth that generated it.

    Attributes
    ----------
    data : pandas.DataFrame
        Long format, one row per planned cell (subject x visit): ``id``
        (int), ``time`` (float), one float column per outcome (``NaN`` where
        the value is missing) and the baseline covariates (constant within
        subject).
    truth : pandas.DataFrame
        Same rows in the same order as ``data``: ``id``, ``time`` and, per
        outcome, ``<name>_mean`` (true conditional mean given ``b_i`` on the
        response scale: a probability for binary outcomes, ``E[y]`` for
        bounded ones) and ``<name>_complete`` (the simulated value before
        missingness was applied; never ``NaN``).
    random_effects : numpy.ndarray
        ``(n_subjects, q)`` array of the true ``b_i``, row ``i`` for id ``i``,
        in the simulator's own parametrisation.
    outcomes : dict
        Outcome name -> family spec (``'gaussian'``, ``'bernoulli'``,
        ``'poisson'`` or ``'bounded(1,7)'``).
    covariates : list of str
        Names of the baseline covariate columns.
    params : dict
        The true parameters; see each simulator's docstring.
    population_truth : pandas.DataFrame
        ``time`` and ``<name>_population_mean``: the marginal mean
        ``E[y(t)]`` at each planned time (shared time grid) or on a grid of
        50 points over the follow-up (irregular times).
    id_col, time_col : str
        Names of the id and time columns of ``data``.
    """

    data: pd.DataFrame
    truth: pd.DataFrame
    random_effects: np.ndarray
    outcomes: dict[str, str]
    covariates: list[str]
    params: dict
    population_truth: pd.DataFrame
    id_col: str = "id"
    time_col: str = "time"


# ---------------------------------------------------------------- helpers


def _check_count(name: str, value, minimum: int) -> int:
    """Return ``value`` as an int, or raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_finite(name: str, value) -> float:
    """Return ``value`` as a float, or raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _make_rng(seed) -> np.random.Generator:
    return np.random.default_rng(_check_count("seed", seed, 0))


def _expit(x: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, without overflow."""
    return np.exp(-np.logaddexp(0.0, -x))


def _bernoulli(rng: np.random.Generator, prob: np.ndarray) -> np.ndarray:
    return (rng.random(prob.shape) < prob).astype(float)


def _jittered_times(rng: np.random.Generator, n_subjects: int, n_visits: int) -> np.ndarray:
    """Irregular visit times ``(n_subjects, n_visits)`` in ``[0, T_MAX]``.

    ``t_i0 = 0`` and ``t_ij = T_MAX * j / (n_visits - 1) + u_ij`` with
    ``u_ij ~ U(-JITTER, JITTER)``, clipped to ``[0, T_MAX]`` and sorted
    within subject.
    """
    nominal = np.linspace(0.0, T_MAX, n_visits)
    jitter = rng.uniform(-JITTER, JITTER, size=(n_subjects, n_visits - 1))
    jitter = np.hstack([np.zeros((n_subjects, 1)), jitter])
    return np.sort(np.clip(nominal + jitter, 0.0, T_MAX), axis=1)


def _categorical(indicator: np.ndarray, categories: tuple[str, str]) -> pd.Categorical:
    """Two-level categorical: ``categories[1]`` where ``indicator == 1``."""
    return pd.Categorical.from_codes(indicator.astype(np.int8), categories=list(categories))


def _repeat_per_visit(column, n_visits: int):
    """Repeat a per-subject column for each of the subject's visits."""
    if isinstance(column, pd.Categorical):
        return pd.Categorical.from_codes(np.repeat(column.codes, n_visits), column.categories)
    return np.repeat(np.asarray(column, dtype=float), n_visits)


def _long_frames(
    times: np.ndarray,
    covariates: dict,
    means: dict[str, np.ndarray],
    complete: dict[str, np.ndarray],
    observed: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the ``data`` and ``truth`` frames from ``(n_subjects, n_visits)`` arrays."""
    n_subjects, n_visits = times.shape
    index = {
        "id": np.repeat(np.arange(n_subjects, dtype=np.int64), n_visits),
        "time": times.astype(float).ravel(),
    }
    data = dict(index)
    truth = dict(index)
    for name, values in complete.items():
        data[name] = np.where(observed[name], values, np.nan).ravel()
        truth[f"{name}_mean"] = means[name].ravel()
        truth[f"{name}_complete"] = values.ravel()
    for name, column in covariates.items():
        data[name] = _repeat_per_visit(column, n_visits)
    return pd.DataFrame(data), pd.DataFrame(truth)


def _population_truth(
    draw_subjects: Callable[[np.random.Generator, int], _Subjects],
    means: _MeanFunction,
    grid: np.ndarray,
) -> pd.DataFrame:
    """Monte Carlo marginal mean ``E[y(t)]`` on ``grid``.

    Averages the conditional means of :data:`POPULATION_DRAWS` subjects
    ``(b, x)`` drawn, with the fixed seed :data:`POPULATION_SEED`, from the
    simulator's own random-effects and covariate distributions.
    """
    b, covariates = draw_subjects(np.random.default_rng(POPULATION_SEED), POPULATION_DRAWS)
    conditional = means(b, covariates, grid[None, :])
    columns = {f"{name}_population_mean": m.mean(axis=0) for name, m in conditional.items()}
    return pd.DataFrame({"time": grid, **columns})


def _irregular_grid() -> np.ndarray:
    return np.linspace(0.0, T_MAX, GRID_POINTS)


def _all_observed(complete: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ones(values.shape, dtype=bool) for name, values in complete.items()}


# ----------------------------------------------------------------- linear


def _draw_linear_subjects(rng: np.random.Generator, n: int) -> _Subjects:
    """Draw ``b ~ N(0, D)``, ``age ~ N(0, 1)``, ``treated ~ Bernoulli(0.5)``."""
    chol = np.linalg.cholesky(np.asarray(_LINEAR["D"]))
    b = rng.standard_normal((n, 2)) @ chol.T
    covariates = {"age": rng.standard_normal(n), "treated": _bernoulli(rng, np.full(n, 0.5))}
    return b, covariates


def _linear_means(b: np.ndarray, covariates: dict, t: np.ndarray) -> dict[str, np.ndarray]:
    """Conditional mean of ``y`` at times ``t`` (broadcast against subjects)."""
    beta = _LINEAR["beta"]
    fixed = (
        beta["intercept"]
        + beta["age"] * covariates["age"][:, None]
        + beta["group[treated]"] * covariates["treated"][:, None]
    )
    return {"y": fixed + b[:, :1] + (beta["time"] + b[:, 1:]) * t}


def simulate_linear(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    r"""Linear mixed model with random intercept and slope, irregular times.

    For subject ``i`` and visit ``j = 0, ..., J-1`` (``J = n_visits``)::

        t_i0 = 0,   t_ij = 10 j / (J - 1) + u_ij,   u_ij ~ U(-0.2, 0.2)
                    (clipped to [0, 10], sorted within subject)
        age_i ~ N(0, 1),   treated_i = [group_i == 'treated'] ~ Bernoulli(0.5)
        (b0_i, b1_i) ~ N(0, D),   D = [[1.0, 0.1], [0.1, 0.09]]
        y_ij = 1.0 + 0.3 t_ij + 0.5 age_i + 0.8 treated_i
               + b0_i + b1_i t_ij + eps_ij,        eps_ij ~ N(0, 0.5^2)

    No missing data. Outcome ``y`` (gaussian); covariates ``age`` (float)
    and ``group`` (categorical, categories ``['control', 'treated']``).
    ``random_effects`` is ``(b0, b1)``; ``params`` holds ``beta`` (keys
    ``intercept``, ``time``, ``age``, ``group[treated]``), ``D`` and
    ``sigma``. The population mean is ``1.4 + 0.3 t``.
    """
    n_subjects = _check_count("n_subjects", n_subjects, 1)
    n_visits = _check_count("n_visits", n_visits, 2)
    return _simulate_linear(n_subjects, n_visits, seed, None, 0.0, copy.deepcopy(_LINEAR))


def simulate_linear_noise(n_subjects: int = 300, n_visits: int = 10, seed: int = 0, *,
                          df: float | None = None, sd_growth: float = 0.0,
                          brownian_sd: float = 0.0) -> SimulatedData:
    r""":func:`simulate_linear` with heavy-tailed and/or time-varying noise.

    Subjects, covariates, times and means are those of
    :func:`simulate_linear`; the error is

    .. math::

        \varepsilon_{ij} = \sigma(t_{ij})\, e_{ij}, \qquad
        \sigma(t) = 0.5\, \exp(\texttt{sd\_growth}\; t / 10),

    with :math:`e_{ij} \sim t_{\texttt{df}}` (scale 1, so the SD is
    :math:`\sigma\sqrt{\nu/(\nu-2)}`) or :math:`\mathcal N(0, 1)` when
    ``df`` is None.  ``sd_growth = log(4)`` makes the noise scale grow
    fourfold, 0.5 to 2, over the follow-up [0, 10].  ``brownian_sd`` > 0
    adds serial drift: a Brownian motion :math:`\tau W_i(t)`, :math:`W_i(0) =
    0`, Var :math:`W_i(t) = t`, independent between subjects, to every
    observed value (the truth's ``y_mean`` stays the smooth mean given
    :math:`b_i`; the process is in ``truth['y_serial']``), the model of
    ``serial_process='brownian'`` (:mod:`pyro_dgmm.serial`).  ``params``
    adds ``df``, ``sd_growth`` and ``brownian_sd`` to those of
    :func:`simulate_linear` (``sigma`` = 0.5 is the scale at time 0).
    """
    n_subjects = _check_count("n_subjects", n_subjects, 1)
    n_visits = _check_count("n_visits", n_visits, 2)
    sd_growth = _check_finite("sd_growth", sd_growth)
    brownian_sd = _check_finite("brownian_sd", brownian_sd)
    if brownian_sd < 0:
        raise ConfigError(f"brownian_sd must be >= 0, got {brownian_sd!r}")
    if df is not None and not (math.isfinite(float(df)) and float(df) > 0):
        raise ConfigError(f"df must be a positive number or None, got {df!r}")
    params = {**copy.deepcopy(_LINEAR), "df": None if df is None else float(df), "sd_growth": sd_growth,
              "brownian_sd": brownian_sd}
    return _simulate_linear(n_subjects, n_visits, seed, df, sd_growth, params, brownian_sd)


def _simulate_linear(n_subjects: int, n_visits: int, seed, df: float | None, sd_growth: float,
                     params: dict, brownian_sd: float = 0.0) -> SimulatedData:
    """The linear population with noise ``0.5 exp(sd_growth t / 10) e``, e
    standard normal (``df`` None) or t with ``df`` degrees of freedom, plus
    ``brownian_sd`` times a Brownian motion per subject."""
    rng = _make_rng(seed)
    b, covariates = _draw_linear_subjects(rng, n_subjects)
    times = _jittered_times(rng, n_subjects, n_visits)
    means = _linear_means(b, covariates, times)
    noise = rng.standard_normal(times.shape) if df is None else rng.standard_t(float(df), size=times.shape)
    scale = _LINEAR["sigma"] * np.exp(sd_growth * times / T_MAX)
    complete = {"y": means["y"] + scale * noise}
    if brownian_sd > 0:  # independent increments between sorted visit times, from W(0) = 0
        gaps = np.diff(times, axis=1, prepend=0.0)
        serial = brownian_sd * np.cumsum(np.sqrt(gaps) * rng.standard_normal(times.shape), axis=1)
        complete["y"] = complete["y"] + serial
    columns = {
        "age": covariates["age"],
        "group": _categorical(covariates["treated"], ("control", "treated")),
    }
    data, truth = _long_frames(times, columns, means, complete, _all_observed(complete))
    if brownian_sd > 0:
        truth["y_serial"] = serial.ravel()
    return SimulatedData(
        data=data,
        truth=truth,
        random_effects=b,
        outcomes={"y": "gaussian" if df is None else "student_t"},
        covariates=list(columns),
        params=params,
        population_truth=_population_truth(
            _draw_linear_subjects, _linear_means, _irregular_grid()
        ),
    )


# -------------------------------------------------------------- nonlinear


def _draw_nonlinear_subjects(rng: np.random.Generator, n: int) -> _Subjects:
    """Draw ``b ~ N(0, I_2)`` and ``x ~ N(0, 1)``."""
    return rng.standard_normal((n, 2)), {"x": rng.standard_normal(n)}


def _nonlinear_means(b: np.ndarray, covariates: dict, t: np.ndarray) -> dict[str, np.ndarray]:
    """Conditional mean of ``y`` at times ``t`` (broadcast against subjects)."""
    p = _NONLINEAR
    step = _expit((t - p["midpoint"] - p["shift_scale"] * b[:, 1:]) / p["width"])
    mean = (
        p["intercept"]
        + p["x"] * covariates["x"][:, None]
        + p["b0_scale"] * b[:, :1]
        + p["amplitude"] * step
    )
    return {"y": mean}


def _simulate_nonlinear_complete(seed, n_subjects: int, n_visits: int):
    """Complete data of the nonlinear model.

    Returns ``(rng, b, covariates, times, means, complete)``; ``rng`` is the
    generator after these draws, for any missingness drawn afterwards.
    """
    rng = _make_rng(seed)
    b, covariates = _draw_nonlinear_subjects(rng, n_subjects)
    times = _jittered_times(rng, n_subjects, n_visits)
    means = _nonlinear_means(b, covariates, times)
    complete = {"y": means["y"] + _NONLINEAR["sigma"] * rng.standard_normal(times.shape)}
    return rng, b, covariates, times, means, complete


def simulate_nonlinear(n_subjects: int = 800, n_visits: int = 20, seed: int = 0) -> SimulatedData:
    r"""Nonlinear subject-specific sigmoid profiles (simulation I), irregular times.

    Visit times as in :func:`simulate_linear` (``t_i0 = 0``, then
    ``10 j / (J - 1)`` plus ``U(-0.2, 0.2)`` jitter, within ``[0, 10]``)::

        x_i ~ N(0, 1),   b_i = (b0_i, b1_i) ~ N(0, I_2)
        mu_i(t) = 1.0 + 0.5 x_i + 0.6 b0_i
                  + 3.0 expit((t - 5.0 - 1.5 b1_i) / 0.8)
        y_ij = mu_i(t_ij) + eps_ij,        eps_ij ~ N(0, 0.3^2)

    ``b0`` shifts the level, ``b1`` shifts the time of the rise (by 1.5
    years per unit). No missing data. Outcome ``y`` (gaussian); covariate
    ``x``. ``params`` holds every constant above under the keys
    ``intercept``, ``x``, ``b0_scale``, ``amplitude``, ``midpoint``,
    ``shift_scale``, ``width``, ``sigma`` and the random-effects covariance
    ``D``.
    """
    n_subjects = _check_count("n_subjects", n_subjects, 1)
    n_visits = _check_count("n_visits", n_visits, 2)
    _, b, covariates, times, means, complete = _simulate_nonlinear_complete(
        seed, n_subjects, n_visits
    )
    data, truth = _long_frames(times, covariates, means, complete, _all_observed(complete))
    return SimulatedData(
        data=data,
        truth=truth,
        random_effects=b,
        outcomes={"y": "gaussian"},
        covariates=list(covariates),
        params=copy.deepcopy(_NONLINEAR),
        population_truth=_population_truth(
            _draw_nonlinear_subjects, _nonlinear_means, _irregular_grid()
        ),
    )


# ---------------------------------------------------------------- dropout


def _monotone_dropout(rng: np.random.Generator, y: np.ndarray, a0: float, a1: float) -> np.ndarray:
    """Observed mask of monotone dropout with hazard ``expit(a0 + a1 y_{j-1})``.

    The hazard at visit ``j`` only matters while the subject is still in
    the study, and then ``y_{j-1}`` was observed, so drawing every hazard
    from the complete data and keeping the visits before the first drop is
    the same as simulating visit by visit.
    """
    hazard = _expit(a0 + a1 * y[:, :-1])
    drops = rng.random(hazard.shape) < hazard
    drops[:, : _ALWAYS_OBSERVED_VISITS - 1] = False
    stayed = np.cumprod(~drops, axis=1).astype(bool)
    return np.hstack([np.ones((y.shape[0], 1), dtype=bool), stayed])


def simulate_dropout(
    n_subjects: int = 800,
    n_visits: int = 20,
    seed: int = 0,
    dropout_strength: float = _DROPOUT_A1,
) -> SimulatedData:
    r"""The nonlinear model of :func:`simulate_nonlinear` with MAR monotone dropout.

    The complete data are exactly those of ``simulate_nonlinear`` with the
    same arguments and seed. Then visits ``j = 0, 1, 2`` are always
    observed, and a subject still in the study at visit ``j >= 3`` drops out
    there (visit ``j`` and all later visits missing) with probability::

        P(drop at j | in study at j) = expit(a0 + a1 y_{i,j-1}),
        a0 = -5.3,   a1 = dropout_strength (default 1.0)

    ``y_{i,j-1}`` is the previous, observed value, so the dropout is missing
    at random (MAR). With ``a1 > 0`` subjects with high values leave early,
    so the complete cases at late visits are biased downward relative to
    ``population_truth`` (the complete-data mean). ``dropout_strength = 0``
    gives dropout completely at random. At the defaults about 30% of the
    planned cells are missing (28.9% at seed 0).

    ``params`` holds the parameters of :func:`simulate_nonlinear` plus
    ``a0``, ``a1`` and ``always_observed_visits``.
    """
    n_subjects = _check_count("n_subjects", n_subjects, 1)
    n_visits = _check_count("n_visits", n_visits, 2)
    a1 = _check_finite("dropout_strength", dropout_strength)
    rng, b, covariates, times, means, complete = _simulate_nonlinear_complete(
        seed, n_subjects, n_visits
    )
    observed = {"y": _monotone_dropout(rng, complete["y"], _DROPOUT_A0, a1)}
    data, truth = _long_frames(times, covariates, means, complete, observed)
    params = copy.deepcopy(_NONLINEAR)
    params.update(a0=_DROPOUT_A0, a1=a1, always_observed_visits=_ALWAYS_OBSERVED_VISITS)
    return SimulatedData(
        data=data,
        truth=truth,
        random_effects=b,
        outcomes={"y": "gaussian"},
        covariates=list(covariates),
        params=params,
        population_truth=_population_truth(
            _draw_nonlinear_subjects, _nonlinear_means, _irregular_grid()
        ),
    )
