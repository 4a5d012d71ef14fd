r"""Cox proportional hazards baselines for dynamic event prediction at a
landmark: the yardsticks a joint model's predictions are compared with,
scored by the same functions (:mod:`pyro_dgmm.event_evaluation`).

Model.  The hazard of subject :math:`i` is
:math:`h_i(s) = h_0(s) \exp(x_i^\top \beta)` with the baseline hazard
:math:`h_0` left unspecified; :math:`\beta` maximises Cox's partial
likelihood (statsmodels ``PHReg``'s, Breslow's handling of tied event
times; Newton's method with step halving) and the cumulative baseline
hazard is Breslow's estimator

.. math::

    \hat H_0(s) = \sum_{s_j \le s} \frac{d_j}{\sum_{k:\, T_k \ge s_j} \exp(x_k^\top \hat\beta)}

over the distinct event times :math:`s_j` with :math:`d_j` events: a right
continuous step function that jumps *at* each event time.  (statsmodels'
``baseline_cumulative_hazard`` reports the left limits
:math:`\hat H_0(s_j-)`, one step behind; :func:`fit_cox` computes the steps
itself from :math:`\hat\beta`.)  The event is composite: status 0
censored, any other code an event.

Two baselines for the subjects at risk at the landmark :math:`t`, each
predicting :math:`\pi_i(u) = P(T_i \le u \mid T_i > t, x_i)` for horizons
:math:`u > t`:

* :func:`cox_baseline_risk`: fitted from time 0 on all training subjects,
  :math:`x_i` the covariates and each marker's first observed value;
  :math:`\pi_i(u) = 1 - \exp\{-(\hat H_0(u) - \hat H_0(t)) e^{x_i^\top\hat\beta}\}`.
  For the subjects predicted, only visits at or before :math:`t` are read.
* :func:`landmark_cox_risk`: fitted on the training subjects at risk at
  :math:`t`, time counted from :math:`t` and censored at the last horizon,
  :math:`x_i` the covariates and each marker's last value observed at or
  before :math:`t`; :math:`\pi_i(u) = 1 - \exp\{-\hat H_0(u - t) e^{x_i^\top\hat\beta}\}`
  (van Houwelingen 2007).

Design.  Numeric covariates enter as they are, the others (strings,
categoricals, booleans) as 0/1 columns ``col[T.level]`` for every training
level but the first (:func:`~pyro_dgmm.covariates.levels_of`); a missing
value is the training median; every column is centred and scaled by its
training mean and SD (the fitted risks do not depend on it; it keeps the
Newton steps well conditioned).  A column constant or never observed among
the training subjects carries no information and is left out.

statsmodels is imported only when a model is fitted (``pip install
statsmodels``; it comes with the ``test``, ``bench`` and ``docs`` extras).

Example: 1000 subjects, a binary marker that doubles the hazard (0.3 a
year without it), follow-up censored at 4; the landmark Cox risk of an
event in (1, 3] against the truth :math:`1 - e^{-0.3 \cdot 2}` and
:math:`1 - e^{-0.6 \cdot 2}`:

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(2)
>>> x = rng.integers(0, 2, 1000)
>>> time = rng.exponential(1 / (0.3 * 2.0 ** x))
>>> events = pd.DataFrame({"id": range(1000), "time": np.minimum(time, 4), "status": (time < 4).astype(int)})
>>> visits = pd.DataFrame({"id": range(1000), "day": 0.0, "marker": x})
>>> columns = dict(id_col="id", time_col="day", event_time="time", event_status="status", markers=["marker"])
>>> risk = landmark_cox_risk(visits, events, visits, events, landmark=1.0, horizons=[2.0, 3.0], **columns)
>>> risk.shape
(1000, 2)
>>> np.unique(risk[:, -1].round(2)).tolist(), np.round(1 - np.exp([-0.6, -1.2]), 2).tolist()
([0.46, 0.7], [0.45, 0.7])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .covariates import levels_of, refuse_unseen_levels
from .errors import ConfigError, DataError, FitError


@dataclass(frozen=True)
class CoxModel:
    r"""A fitted Cox model: ``coefficients`` :math:`\hat\beta` (named by the
    design's columns), the distinct event times :math:`s_j` and Breslow's
    steps :math:`d_j / \sum_{k: T_k \ge s_j} \exp(x_k^\top\hat\beta)` of the
    cumulative baseline hazard at them (module docstring)."""

    coefficients: pd.Series
    event_times: np.ndarray
    hazard_steps: np.ndarray

    def cumulative_hazard(self, s) -> np.ndarray:
        r""":math:`\hat H_0(s)`, the sum of the steps at event times :math:`s_j \le s`."""
        index = np.searchsorted(self.event_times, np.asarray(s, np.float64), side="right")
        return np.concatenate([[0.0], np.cumsum(self.hazard_steps)])[index]


def fit_cox(time, status, design: pd.DataFrame) -> CoxModel:
    """Fit a Cox model (statsmodels ``PHReg``'s partial likelihood, Breslow ties) to follow-up
    ``time`` and ``status`` (0 censored, other codes an event) on the
    columns of ``design`` (one row per subject), and Breslow's cumulative
    baseline hazard (module docstring) at :math:`x = 0`.

    :raises DataError: lengths differ, values not finite, or no event.
    :raises FitError: the partial likelihood has no finite maximum (a
        constant column, or one that separates events from non-events).
    :raises ImportError: statsmodels is not installed.
    """
    try:
        from statsmodels.duration.hazard_regression import PHReg
    except ImportError as error:  # pragma: no cover - statsmodels is in the test extra
        raise ImportError("the Cox baselines need statsmodels: pip install statsmodels") from error
    time = np.asarray(time, np.float64)
    event = np.asarray(status) != 0
    x = design.to_numpy(np.float64)
    if time.ndim != 1 or event.shape != time.shape or x.shape[0] != time.size:
        raise DataError(f"time, status and design need one row per subject, got {time.shape}, {event.shape} and "
                        f"{x.shape}")
    if not (np.isfinite(time).all() and np.isfinite(x).all()):
        raise DataError("time and design must be finite (fill missing values first)")
    if not event.any():
        raise DataError(f"no event among the {time.size} subjects: a Cox model cannot be fitted")
    beta = _maximise(PHReg(time, x, status=event.astype(np.float64), ties="breslow"), list(design.columns))
    relative = np.exp(x @ beta)
    event_times = np.unique(time[event])
    order = np.argsort(time, kind="stable")
    in_risk_set = np.concatenate([np.cumsum(relative[order][::-1])[::-1], [0.0]])  # sum over T_k >= sorted T
    denominator = in_risk_set[np.searchsorted(time[order], event_times, side="left")]
    deaths = np.bincount(np.searchsorted(event_times, time[event]), minlength=event_times.size)
    return CoxModel(pd.Series(beta, index=list(design.columns)), event_times, deaths / denominator)


def _maximise(model, names: list, max_steps: int = 100) -> np.ndarray:
    """Maximise the log partial likelihood of a statsmodels ``PHReg`` by Newton's
    method with step halving (``PHReg.fit``'s plain Newton steps can overshoot
    into overflow from :math:`\\beta = 0`, as on 156 PBC patients with a rare
    binary marker; the likelihood is concave, so the halved steps climb to
    its maximum).

    :raises FitError: no finite maximum: the information matrix vanishes in
        some direction where the climb stops (a constant column, or columns
        that separate the events from the other subjects, so that the
        estimate runs off to infinity), or no convergence in ``max_steps``.
    """
    beta = np.zeros(len(names))
    value, scale = model.loglike(beta), np.linalg.eigvalsh(-model.hessian(beta)).max()
    converged = False
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # trial steps may overflow: halved
        for _ in range(max_steps):
            step = np.linalg.lstsq(-model.hessian(beta), model.score(beta), rcond=None)[0]
            size = 1.0
            while size > 1e-10:
                trial = model.loglike(beta + size * step)
                if np.isfinite(trial) and trial >= value - 1e-12 * abs(value):
                    break
                size /= 2
            else:
                converged = True  # no step uphill: at the maximum to rounding
                break
            beta, gain, value = beta + size * step, trial - value, trial
            if gain < 1e-12 * (1 + abs(value)) and np.abs(size * step).max() < 1e-8:
                converged = True
                break
        information = np.linalg.eigvalsh(-model.hessian(beta)).min() if np.isfinite(beta).all() else 0.0
    if not converged or not information > 1e-8 * max(scale, 1e-300):
        raise FitError(f"the Cox partial likelihood has no finite maximum (coefficients where the climb stopped: "
                       f"{dict(zip(names, np.round(beta, 2).tolist()))}): a column is constant or separates the "
                       f"events from the other subjects; leave it out")
    return beta


def marker_values(visits: pd.DataFrame, markers: Sequence[str], *, id_col: str, time_col: str,
                  upto: float | None = None, last: bool = False) -> pd.DataFrame:
    """Per subject (the index), each marker's first observed value, or its
    last (``last=True``), among the visits at or before ``upto`` (all visits
    if None); NaN if never observed there."""
    rows = visits if upto is None else visits[pd.to_numeric(visits[time_col]) <= upto]
    grouped = rows.sort_values([id_col, time_col], kind="stable").groupby(id_col)[list(markers)]
    return grouped.last() if last else grouped.first()  # both skip missing values


@dataclass(frozen=True)
class _Design:
    """The design's coding learned on the training subjects: levels of the
    categorical covariates, medians, means and SDs of the kept columns."""

    covariates: tuple
    levels: dict
    median: pd.Series
    mean: pd.Series
    sd: pd.Series

    @classmethod
    def fit(cls, events: pd.DataFrame, markers: pd.DataFrame, covariates: Sequence[str], id_col: str) -> "_Design":
        levels = {col: levels_of(events[col].dropna()) for col in covariates if _categorical(events[col])}
        raw = _raw(events, markers, tuple(covariates), levels, id_col)
        filled = raw.fillna(raw.median())
        sd = filled.std()
        keep = sd.notna() & (sd > 0)
        return cls(tuple(covariates), levels, raw.median()[keep], filled.mean()[keep], sd[keep])

    def transform(self, events: pd.DataFrame, markers: pd.DataFrame, id_col: str) -> pd.DataFrame:
        raw = _raw(events, markers, self.covariates, self.levels, id_col)[self.mean.index]
        return (raw.fillna(self.median) - self.mean) / self.sd


def _categorical(series: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series)


def _raw(events, markers, covariates, levels, id_col) -> pd.DataFrame:
    """Covariates (numeric as they are, categorical as 0/1 columns, NaN where
    missing) and the marker values, one row per row of ``events``."""
    frame = pd.DataFrame(index=events[id_col].to_numpy())
    for col in covariates:
        series = events[col]
        if col not in levels:
            frame[col] = pd.to_numeric(series).to_numpy(np.float64)
            continue
        known = series.dropna().astype(str)
        refuse_unseen_levels(known, levels[col], col)
        text = series.astype(str).to_numpy()
        for level in levels[col][1:]:
            frame[f"{col}[T.{level}]"] = np.where(series.isna().to_numpy(), np.nan, (text == level).astype(float))
    return frame.join(markers)


def _check(visits, events, role, *, id_col, time_col, event_time, event_status, covariates, markers):
    """Column and value checks of one (visits, events) pair; ``role`` names it in messages."""
    for frame, name, needed in ((events, f"{role}_events", [id_col, event_time, event_status, *covariates]),
                                (visits, f"{role}_visits", [id_col, time_col, *markers])):
        missing = [col for col in needed if col not in frame.columns]
        if missing:
            raise DataError(f"{name} has no column {missing[0]!r} (columns: {list(frame.columns)})")
    if events[id_col].duplicated().any():
        twice = events[id_col][events[id_col].duplicated()].tolist()[0]
        raise DataError(f"{role}_events must have one row per subject; {id_col!r} {twice!r} appears twice")
    for col in (event_time, event_status):
        values = pd.to_numeric(events[col], errors="coerce")
        if not np.isfinite(values.to_numpy(np.float64)).all():
            bad = events[id_col][~np.isfinite(values.to_numpy(np.float64))].tolist()[0]
            raise DataError(f"{role}_events column {col!r} is missing or not a number for subject {bad!r}")


def _settings(landmark, horizons, covariates, markers):
    horizons = np.asarray(horizons, np.float64)
    if not np.isfinite(landmark):
        raise ConfigError(f"landmark must be a finite time, got {landmark!r}")
    if horizons.ndim != 1 or horizons.size == 0 or not (np.diff(horizons) > 0).all() or not horizons[0] > landmark:
        raise ConfigError(f"horizons must be increasing times after the landmark {landmark:g}, "
                          f"got {horizons.tolist()}")
    if not list(covariates) + list(markers):
        raise ConfigError("a Cox baseline needs at least one covariate or marker")
    return float(landmark), horizons


def cox_baseline_risk(train_visits: pd.DataFrame, train_events: pd.DataFrame, test_visits: pd.DataFrame,
                      test_events: pd.DataFrame, *, landmark: float, horizons, id_col: str, time_col: str,
                      event_time: str, event_status: str, covariates: Sequence[str] = (),
                      markers: Sequence[str] = ()) -> np.ndarray:
    r"""Predicted risk :math:`P(T \le u \mid T > t)` of an event by each of
    ``horizons`` :math:`u` for every row of ``test_events``, from a Cox model
    on the covariates and the markers' first observed values fitted from
    time 0 to the training subjects (module docstring).

    :param train_visits, test_visits: long frames of visits (``id_col``,
        ``time_col``, ``markers``).
    :param train_events, test_events: one row per subject: ``id_col``,
        ``event_time``, ``event_status`` (0 censored, other codes an event)
        and the ``covariates``.
    :param landmark: :math:`t`; the test subjects' markers are read from
        their visits at or before it.
    :param horizons: increasing times :math:`u > t` (the columns of the result).
    :returns: array (len(test_events), len(horizons)); the rows of subjects
        not at risk at :math:`t` are computed too and meaningless (the scores
        of :mod:`~pyro_dgmm.event_evaluation` skip them).
    :raises DataError: a column missing, an event record not a number, or
        no training event.
    :raises ConfigError: bad ``landmark`` / ``horizons``, no covariate or marker.
    """
    columns = dict(id_col=id_col, time_col=time_col, event_time=event_time, event_status=event_status,
                   covariates=list(covariates), markers=list(markers))
    landmark, horizons = _settings(landmark, horizons, covariates, markers)
    _check(train_visits, train_events, "train", **columns)
    _check(test_visits, test_events, "test", **columns)
    where = dict(id_col=id_col, time_col=time_col)
    train_markers = marker_values(train_visits, markers, **where)
    design = _Design.fit(train_events, train_markers, covariates, id_col)
    model = fit_cox(train_events[event_time], train_events[event_status],
                    design.transform(train_events, train_markers, id_col))
    x = design.transform(test_events, marker_values(test_visits, markers, upto=landmark, **where), id_col)
    increments = model.cumulative_hazard(horizons) - model.cumulative_hazard(landmark)
    return 1.0 - np.exp(-np.exp(x.to_numpy() @ model.coefficients.to_numpy())[:, None] * increments[None, :])


def landmark_cox_risk(train_visits: pd.DataFrame, train_events: pd.DataFrame, test_visits: pd.DataFrame,
                      test_events: pd.DataFrame, *, landmark: float, horizons, id_col: str, time_col: str,
                      event_time: str, event_status: str, covariates: Sequence[str] = (),
                      markers: Sequence[str] = ()) -> np.ndarray:
    r"""Predicted risk :math:`P(T \le u \mid T > t)` of an event by each of
    ``horizons`` :math:`u` for every row of ``test_events``, from a landmark
    Cox model: fitted to the training subjects at risk at ``landmark``
    :math:`t` with time counted from :math:`t` and censored at the last
    horizon, on the covariates and each marker's last value observed at or
    before :math:`t` (module docstring).  Arguments and result as for
    :func:`cox_baseline_risk`.

    :raises DataError: also when no training subject is at risk at :math:`t`
        or none of them has an event by the last horizon.
    """
    columns = dict(id_col=id_col, time_col=time_col, event_time=event_time, event_status=event_status,
                   covariates=list(covariates), markers=list(markers))
    landmark, horizons = _settings(landmark, horizons, covariates, markers)
    _check(train_visits, train_events, "train", **columns)
    _check(test_visits, test_events, "test", **columns)
    time = pd.to_numeric(train_events[event_time]).to_numpy(np.float64)
    at_risk = train_events[time > landmark]
    if at_risk.empty:
        raise DataError(f"no training subject is at risk at the landmark {landmark:g} ({event_time!r} > it)")
    where = dict(id_col=id_col, time_col=time_col, upto=landmark, last=True)
    train_markers = marker_values(train_visits[train_visits[id_col].isin(at_risk[id_col])], markers, **where)
    design = _Design.fit(at_risk, train_markers, covariates, id_col)
    end = horizons[-1]
    follow_up = time[time > landmark]
    status = (at_risk[event_status].to_numpy() != 0) & (follow_up <= end)
    model = fit_cox(np.minimum(follow_up, end) - landmark, status, design.transform(at_risk, train_markers, id_col))
    x = design.transform(test_events, marker_values(test_visits, markers, **where), id_col)
    cumulative = model.cumulative_hazard(horizons - landmark)
    return 1.0 - np.exp(-np.exp(x.to_numpy() @ model.coefficients.to_numpy())[:, None] * cumulative[None, :])
