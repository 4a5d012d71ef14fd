r"""A two-arm trial with dropout that is missing not at random (MNAR).

:func:`simulate_trial` draws complete data from a linear mixed model,

.. math:: y_{ij} = 10 + b_{i0} + (\beta_1 + \beta_2\, \mathrm{arm}_i + b_{i1})\, t_j
          + \varepsilon_{ij}, \quad t_j = j = 0, \dots, J - 1,

with :math:`b_i \sim N(0, \mathrm{diag}(2^2, 0.4^2))`, :math:`\varepsilon \sim N(0, 1)`,
:math:`\beta_1 = -0.5` and treatment effect :math:`\beta_2` per visit, then
one of two dropout mechanisms (visits 0 and 1 are always observed; a
subject still in the study at visit :math:`j \ge 2` leaves there, that
visit and all later ones missing):

* ``mechanism='pattern_mixture'`` (default): dropout at j with probability
  :math:`\mathrm{expit}(a_0 + a_1 (y_{i,j-1} - 10))`, which depends on the
  last observed value only (MAR), and then every value after dropout is
  moved by ``delta``.  The unobserved values are therefore exactly
  delta away from what the MAR model implies for them: the setting in
  which a delta-adjusted imputation with the true delta is right.
* ``mechanism='value'``: dropout at j with probability
  :math:`\mathrm{expit}(a_0 + a_1 (y_{ij} - 10))`, which depends on the
  value at j itself, which is then missing (MNAR with no single true delta).

The estimand is the treatment difference in the mean at the last visit,
over the population the trial samples: ``params['effect_last_visit']``,
computed from a simulated population of 200,000 subjects with the same
mechanism (its Monte Carlo SD is about 0.01), beside the sample's own
complete-data difference in ``params['sample_effect_last_visit']``.

Example:

>>> sim = simulate_trial(n_subjects=40, seed=0)
>>> sim.data.columns.tolist()
['id', 'time', 'y', 'arm']
>>> bool(sim.data["y"].isna().any())
True
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pyro_dgmm.datasets.simulate import SimulatedData, _check_count, _check_finite, _expit
from pyro_dgmm.errors import ConfigError

_TRIAL = {"intercept": 10.0, "slope": -0.5, "b_sd": (2.0, 0.4), "sigma": 1.0, "a0": -2.6, "a1": 0.5,
          "always_observed_visits": 2}
_MECHANISMS = ("pattern_mixture", "value")
_POPULATION = 200_000


def _draw(rng: np.random.Generator, n: int, n_visits: int, effect: float, delta: float, mechanism: str):
    """Arm, times, complete values (after the delta shift), means, observed mask and b."""
    p = _TRIAL
    arm = rng.integers(0, 2, n)
    b = rng.standard_normal((n, 2)) * np.asarray(p["b_sd"])
    t = np.arange(n_visits, dtype=float)
    mean = p["intercept"] + b[:, :1] + (p["slope"] + effect * arm[:, None] + b[:, 1:]) * t
    y = mean + p["sigma"] * rng.standard_normal((n, n_visits))
    driver = y[:, :-1] if mechanism == "pattern_mixture" else y[:, 1:]
    drops = rng.random((n, n_visits - 1)) < _expit(p["a0"] + p["a1"] * (driver - p["intercept"]))
    drops[:, : p["always_observed_visits"] - 1] = False
    observed = np.hstack([np.ones((n, 1), bool), np.cumprod(~drops, axis=1).astype(bool)])
    if mechanism == "pattern_mixture":
        y = np.where(observed, y, y + delta)
        mean = np.where(observed, mean, mean + delta)
    return arm, t, y, mean, observed, b


def _last_visit_effect(arm: np.ndarray, y: np.ndarray) -> float:
    return float(y[arm == 1, -1].mean() - y[arm == 0, -1].mean())


def simulate_trial(n_subjects: int = 300, n_visits: int = 7, seed: int = 0, *, effect: float = 0.3,
                   delta: float = -1.0, mechanism: str = "pattern_mixture") -> SimulatedData:
    """A two-arm trial with monotone dropout; see the module docstring.

    :param effect: beta_2, the treatment's change of slope per visit.
    :param delta: the shift of every value after dropout
        (``mechanism='pattern_mixture'``; ignored otherwise).
    :returns: :class:`SimulatedData` with ``data`` (id, time, y with NaN after
        dropout, arm 0/1), ``truth`` (``y_mean``, ``y_complete``) and
        ``params`` (the parameters above, ``effect_last_visit``,
        ``sample_effect_last_visit``, ``dropout_fraction``).
    """
    n_subjects = _check_count("n_subjects", n_subjects, 2)
    n_visits = _check_count("n_visits", n_visits, 3)
    effect, delta = _check_finite("effect", effect), _check_finite("delta", delta)
    if mechanism not in _MECHANISMS:
        raise ConfigError(f"mechanism must be one of {_MECHANISMS}, got {mechanism!r}")
    rng = np.random.default_rng([24, seed])
    arm, t, y, mean, observed, b = _draw(rng, n_subjects, n_visits, effect, delta, mechanism)
    population = _draw(np.random.default_rng([24, 10**6, n_visits]), _POPULATION, n_visits, effect, delta,
                       mechanism)
    index = {"id": np.repeat(np.arange(n_subjects), n_visits), "time": np.tile(t, n_subjects)}
    data = pd.DataFrame({**index, "y": np.where(observed, y, np.nan).ravel(), "arm": np.repeat(arm, n_visits)})
    truth = pd.DataFrame({**index, "y_mean": mean.ravel(), "y_complete": y.ravel()})
    params = dict(_TRIAL, effect=effect, delta=delta, mechanism=mechanism,
                  effect_last_visit=_last_visit_effect(population[0], population[2]),
                  sample_effect_last_visit=_last_visit_effect(arm, y),
                  dropout_fraction=float(1 - observed[:, -1].mean()))
    population_truth = pd.DataFrame({"time": t, **{f"y_population_mean_arm{a}": population[2][population[0] == a]
                                                   .mean(0) for a in (0, 1)}})
    return SimulatedData(data=data, truth=truth, random_effects=b,
                         outcomes={"y": "gaussian"}, covariates=["arm"], params=params,
                         population_truth=population_truth)
