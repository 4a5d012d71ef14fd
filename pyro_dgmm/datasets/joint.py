r"""A joint simulator of a longitudinal marker and a time to event, with known truth.

Subject :math:`i` has a binary covariate :math:`x_i`, random intercept and
slope :math:`(b_{i0}, b_{i1}) \sim \mathcal N(0, \operatorname{diag}(\sigma_0^2, \sigma_1^2))`,
a marker

.. math:: \eta_i(t) = \beta_0 + \beta_1 t + \beta_2 x_i + b_{i0} + b_{i1} t, \qquad
          y_{ij} = \eta_i(t_{ij}) + \varepsilon_{ij},\ \varepsilon_{ij} \sim \mathcal N(0, \sigma^2)

at visits :math:`t = 0, \Delta, 2\Delta, \dots` while under follow-up, and a
Weibull proportional hazard with the current value of the marker

.. math:: h_i(t) = \lambda \rho\, t^{\rho - 1} \exp\{\gamma x_i + \alpha\, \eta_i(t)\}.

Event times invert the cumulative hazard (trapezoid rule on a fine grid);
censoring is uniform on [``censor_min``, ``horizon``] (administrative
censoring at ``horizon``).

Example:

>>> sim = simulate_joint(n_subjects=3, seed=0)
>>> list(sim.events.columns), sim.params["alpha"]
(['id', 'time', 'status'], 0.5)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pyro_dgmm.datasets.simulate import SimulatedData

__all__ = ["JointSimulatedData", "simulate_joint"]


@dataclass(frozen=True, eq=False)
class JointSimulatedData(SimulatedData):
    """:class:`~pyro_dgmm.datasets.simulate.SimulatedData` plus ``events``:
    one row per subject, ``id``, ``time`` (event or censoring time) and
    ``status`` (1 event, 0 censored)."""

    events: pd.DataFrame | None = None


def simulate_joint(n_subjects: int = 500, *, alpha: float = 0.5, gamma: float = 0.5, weibull_scale: float = 0.05,
                   weibull_shape: float = 1.4, beta=(1.0, 0.3, -0.5), sd_intercept: float = 1.0,
                   sd_slope: float = 0.3, sd_noise: float = 0.3, visit_every: float = 1.0, horizon: float = 10.0,
                   censor_min: float = 2.0, seed: int | None = None) -> JointSimulatedData:
    """Simulate the joint model of the module docstring.

    :param alpha: association of the marker's current value with the log hazard.
    :param gamma: log hazard ratio of the covariate ``x``.
    :param weibull_scale, weibull_shape: :math:`\\lambda`, :math:`\\rho`.
    :param beta: fixed intercept, slope in time and effect of ``x`` on the marker.
    :returns: long data (``id``, ``time``, ``y``, ``x``), truth, random effects,
        params and ``events``.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, n_subjects).astype(float)
    b = rng.normal(0.0, [sd_intercept, sd_slope], size=(n_subjects, 2))
    grid = np.linspace(0.0, horizon, 2001)
    eta = beta[0] + beta[2] * x[:, None] + b[:, :1] + (beta[1] + b[:, 1:]) * grid  # (N, G)
    safe = np.maximum(grid, 1e-12)
    hazard = weibull_scale * weibull_shape * safe ** (weibull_shape - 1) * np.exp(gamma * x[:, None] + alpha * eta)
    cumulative = np.concatenate([np.zeros((n_subjects, 1)),
                                 np.cumsum((hazard[:, 1:] + hazard[:, :-1]) / 2 * np.diff(grid), axis=1)], axis=1)
    target = -np.log(rng.uniform(size=n_subjects))
    event_time = np.array([np.interp(target[i], cumulative[i], grid) if target[i] < cumulative[i, -1] else np.inf
                           for i in range(n_subjects)])
    censor = rng.uniform(censor_min, horizon, n_subjects)
    time = np.minimum(event_time, censor)
    status = (event_time <= censor).astype(int)
    visits = [np.arange(0.0, t, visit_every) for t in time]
    subject = np.repeat(np.arange(n_subjects), [len(v) for v in visits])  # of each visit
    visits = np.concatenate(visits)
    mean = beta[0] + beta[2] * x[subject] + b[subject, 0] + (beta[1] + b[subject, 1]) * visits
    y = mean + rng.normal(0.0, sd_noise, len(visits))
    params = dict(alpha=alpha, gamma=gamma, weibull_scale=weibull_scale, weibull_shape=weibull_shape,
                  beta=tuple(beta), sd_intercept=sd_intercept, sd_slope=sd_slope, sd_noise=sd_noise)
    return JointSimulatedData(
        events=pd.DataFrame({"id": np.arange(n_subjects), "time": time, "status": status}),
        data=pd.DataFrame({"id": subject, "time": visits, "y": y, "x": x[subject]}),
        truth=pd.DataFrame({"id": subject, "time": visits, "y_mean": mean, "y_complete": y}), random_effects=b,
        outcomes={"y": "gaussian"}, covariates=["x"], params=params,
        population_truth=pd.DataFrame({"time": grid[::100],  # without dropout: E[x] = 1/2
                                       "y_population_mean": beta[0] + beta[1] * grid[::100] + beta[2] / 2}))
