r"""Scores of predicted event probabilities at a landmark: Kaplan-Meier,
time-dependent AUC, Brier and integrated Brier scores with inverse
probability of censoring weights, calibration (ICI, E50, E90), and folds
by subject for cross-validation.  Plain numpy; any model's predictions
(a joint model's, a Cox model's) are scored by the same functions.

Setting.  Subjects :math:`i` at risk at the landmark :math:`t`
(:math:`T_i > t`) have follow-up time :math:`T_i`, status :math:`d_i`
(0 censored, :math:`c \ge 1` the cause) and a predicted probability
:math:`\pi_i(u) = P(T_i \le u, \text{event} \mid T_i > t, \text{history})`
for horizons :math:`u = t + \Delta t`.  The event is any cause (composite)
or one cause :math:`c`; then :math:`Y_i(u) = 1\{T_i \le u, d_i = c\}` and
events of the other causes count as "no event by :math:`u`" and stay in
the scores with a known status (cause-specific cumulative incidence).

Inverse probability of censoring weights.  :math:`\hat G` is the
Kaplan-Meier estimate of the censoring distribution among the subjects at
risk at :math:`t` (censorings are the "events", events are censorings; at a
tied time events come first), so :math:`\hat G(s) \approx P(C > s \mid C > t)`.
Whether :math:`Y_i(u)` is known depends on who comes first, and

.. math::

    W_i(u) = \frac{1\{T_i \le u, d_i \ne 0\}}{\hat G(T_i-)}
           + \frac{1\{T_i > u\}}{\hat G(u)},

zero for subjects censored before :math:`u`, whose status is unknown.
Under independent censoring :math:`E[W_i(u) \mid T_i, d_i] = 1`, so
weighted sums over the known subjects estimate sums over all of them
(Gerds & Schumacher 2006; Blanche, Dartigues & Jacqmin-Gadda 2013).

Example (no censoring: the AUC is the Mann-Whitney AUC, the Brier score the plain one):

>>> import numpy as np
>>> time, status = np.array([2., 3., 6., 7.]), np.array([1, 1, 0, 1])
>>> float(time_dependent_auc(time, status, np.array([.9, .4, .5, .1]), landmark=1, horizon=3))
0.75
>>> round(float(brier_score(time, status, np.array([.9, .4, .5, .1]), landmark=1, horizon=3)), 4)
0.1575
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError


@dataclass(frozen=True)
class KaplanMeier:
    r"""The Kaplan-Meier estimate :math:`\hat S(s) = \prod_{s_j \le s} (1 - d_j / n_j)`
    as a right-continuous step function: ``times`` the distinct event times
    :math:`s_j`, ``survival`` :math:`\hat S(s_j)`, ``at_risk`` :math:`n_j`,
    ``events`` :math:`d_j`."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray

    def __call__(self, s) -> np.ndarray:
        r""":math:`\hat S(s)` (1 before the first event time)."""
        index = np.searchsorted(self.times, np.asarray(s, np.float64), side="right")
        return np.concatenate([[1.0], self.survival])[index]

    def left(self, s) -> np.ndarray:
        r""":math:`\hat S(s-)`, the left limit (the steps at :math:`s` itself not yet taken)."""
        index = np.searchsorted(self.times, np.asarray(s, np.float64), side="left")
        return np.concatenate([[1.0], self.survival])[index]


def kaplan_meier(time, event) -> KaplanMeier:
    """The Kaplan-Meier estimate from follow-up times and event indicators
    (True/1: the event at that time; False/0: censored then).  A subject
    censored at an event time counts as at risk at it.

    :raises DataError: arrays of different lengths, empty, or times not finite.
    """
    time = np.asarray(time, np.float64)
    event = np.asarray(event).astype(bool)
    if time.ndim != 1 or time.shape != event.shape or time.size == 0:
        raise DataError(f"time and event must be 1-d arrays of one nonzero length, got {time.shape} and {event.shape}")
    if not np.isfinite(time).all():
        raise DataError(f"time has a value that is not finite at position {int(np.argmax(~np.isfinite(time)))}")
    times = np.unique(time[event])
    at_risk = (time[None, :] >= times[:, None]).sum(1)
    events = (event[None, :] & (time[None, :] == times[:, None])).sum(1)
    survival = np.cumprod(1.0 - events / at_risk)
    return KaplanMeier(times, survival, at_risk, events)


def _check(time, status, landmark, horizon, predicted=None, columns=None):
    """Arrays as float64/int64 with their lengths and values checked."""
    time = np.asarray(time, np.float64)
    status = np.asarray(status)
    if time.ndim != 1 or status.shape != time.shape:
        raise DataError(f"time and status must be 1-d arrays of one length, got shapes {time.shape} and {status.shape}")
    if not np.isfinite(time).all():
        raise DataError(f"time is not finite at position {int(np.argmax(~np.isfinite(time)))}")
    if not np.issubdtype(status.dtype, np.number) or (status < 0).any() or (status != np.round(status)).any():
        raise DataError("status must hold integers: 0 censored, c >= 1 the cause of the event")
    if not (np.isfinite(landmark) and np.isfinite(horizon) and horizon > 0):
        raise ConfigError(f"landmark must be a finite time and horizon a positive length, "
                          f"got {landmark!r}, {horizon!r}")
    if predicted is not None:
        predicted = np.asarray(predicted, np.float64)
        shape = time.shape if columns is None else (time.size, columns)
        if predicted.shape != shape:
            raise DataError(f"predicted probabilities must have shape {shape} (one per subject"
                            f"{'' if columns is None else ' and horizon'}), got {predicted.shape}")
        bad = ~np.isfinite(predicted) | (predicted < 0) | (predicted > 1)
        if bad.any():
            raise DataError(f"predicted probabilities must lie in [0, 1]; position "
                            f"{np.unravel_index(int(np.argmax(bad)), bad.shape)} holds {predicted[bad][0]!r}")
    return time, status.astype(np.int64), predicted


def ipcw(time, status, landmark: float, horizon: float, cause: int | None = None):
    r"""Who is scored at ``landmark`` t for the horizon t + ``horizon``, their
    outcome and inverse probability of censoring weight (module docstring).

    :param time: follow-up times :math:`T_i` of all subjects, shape (N,).
    :param status: 0 censored, c >= 1 the cause of the event at :math:`T_i`, shape (N,).
    :param cause: the cause scored, or None for any event (composite).
    :returns: ``at_risk`` (N,) bool: :math:`T_i > t`; then, for the subjects
        at risk, ``case`` :math:`Y_i` (bool), ``control`` (known to have had
        no event of ``cause`` by t + horizon: bool) and ``weight``
        :math:`W_i` (0 for those censored before t + horizon).
    :raises DataError: no subject at risk at t.
    """
    time, status, _ = _check(time, status, landmark, horizon)
    end = landmark + horizon
    at_risk = time > landmark
    if not at_risk.any():
        raise DataError(f"no subject is at risk at the landmark {landmark:g} (all follow-up times are <= it)")
    t, d = time[at_risk], status[at_risk]
    censoring = kaplan_meier(t, d == 0)
    event_by_end = (t <= end) & (d > 0)
    weight = np.zeros(t.size)
    weight[event_by_end] = 1.0 / censoring.left(t[event_by_end])
    weight[t > end] = 1.0 / censoring(end)
    case = event_by_end & ((d == cause) if cause is not None else True)
    control = (t > end) | (event_by_end & ~case)
    return at_risk, case, control, weight


def time_dependent_auc(time, status, predicted, *, landmark: float, horizon: float, cause: int | None = None) -> float:
    r"""Cumulative/dynamic AUC at ``landmark`` t for the window (t, t + ``horizon``]
    (Blanche, Dartigues & Jacqmin-Gadda 2013): the probability that a subject
    with the event in the window has a higher predicted risk than one without,
    among the subjects at risk at t, estimated with the weights of :func:`ipcw`,

    .. math:: \widehat{AUC} = \frac{\sum_{i,j} W_i W_j\, Y_i (1 - Y_j)\, \{1(\pi_i > \pi_j)
              + \tfrac12 1(\pi_i = \pi_j)\}}{\sum_{i,j} W_i W_j\, Y_i (1 - Y_j)}

    over cases i and controls j (``ipcw``'s ``control``: no event of the
    cause by t + horizon, including other causes' events).

    :param predicted: :math:`\pi_i`, shape (N,) over all subjects (those not at risk are ignored).
    :raises DataError: no case or no control with positive weight.
    """
    time, status, predicted = _check(time, status, landmark, horizon, predicted)
    at_risk, case, control, weight = ipcw(time, status, landmark, horizon, cause)
    score = predicted[at_risk]
    cases, controls = case & (weight > 0), control & (weight > 0)
    if not cases.any() or not controls.any():
        raise DataError(f"the AUC at landmark {landmark:g}, horizon {horizon:g} needs cases and controls; "
                        f"{int(cases.sum())} subjects had the event in the window and {int(controls.sum())} did not")
    order = np.argsort(score[controls], kind="stable")
    control_score, control_weight = score[controls][order], weight[controls][order]
    cumulative = np.concatenate([[0.0], np.cumsum(control_weight)])
    below = cumulative[np.searchsorted(control_score, score[cases], side="left")]
    not_above = cumulative[np.searchsorted(control_score, score[cases], side="right")]
    concordant = (weight[cases] * (below + 0.5 * (not_above - below))).sum()
    return float(concordant / (weight[cases].sum() * control_weight.sum()))


def brier_score(time, status, predicted, *, landmark: float, horizon: float, cause: int | None = None) -> float:
    r"""The IPCW Brier score at t + ``horizon`` for the subjects at risk at
    ``landmark`` t (Graf et al. 1999; Gerds & Schumacher 2006):

    .. math:: \widehat{BS}(t, \Delta t) = \frac{1}{n_t} \sum_{i: T_i > t} W_i(t + \Delta t)
              \big(Y_i(t + \Delta t) - \pi_i\big)^2,

    :math:`n_t` the number at risk at t, :math:`W_i` the weights of :func:`ipcw`.

    :param predicted: :math:`\pi_i = P(\text{event by } t + \Delta t \mid T_i > t)`, shape (N,).
    """
    time, status, predicted = _check(time, status, landmark, horizon, predicted)
    at_risk, case, _, weight = ipcw(time, status, landmark, horizon, cause)
    return float((weight * (case - predicted[at_risk]) ** 2).mean())


def integrated_brier_score(time, status, predicted, horizons, *, landmark: float, cause: int | None = None) -> float:
    r"""The Brier score integrated over the window [t, t + :math:`\Delta t`) and
    divided by its length :math:`\Delta t`: the trapezoid rule over
    :math:`t = u_0 < u_1 < \dots < u_G = t + \Delta t`, where
    :math:`BS(u_0) = 0` (every subject at risk at t is event-free at t and
    predicted so),

    .. math:: IBS = \frac{1}{\Delta t} \sum_{g=1}^{G} \frac{u_g - u_{g-1}}{2}
              \big(BS(u_{g-1}) + BS(u_g)\big).

    :param predicted: :math:`\pi_i(u_g)`, shape (N, G): columns in the order of ``horizons``.
    :param horizons: the times :math:`u_1 < \dots < u_G` after t (absolute times, not lengths).
    """
    horizons = np.asarray(horizons, np.float64)
    if horizons.ndim != 1 or horizons.size == 0 or not (np.diff(horizons) > 0).all() or not horizons[0] > landmark:
        raise ConfigError(f"horizons must be increasing times after the landmark {landmark:g}, got {horizons.tolist()}")
    time, status, predicted = _check(time, status, landmark, horizons[-1] - landmark, predicted, horizons.size)
    scores = np.array([0.0] + [brier_score(time, status, predicted[:, g], landmark=landmark, horizon=u - landmark,
                                           cause=cause) for g, u in enumerate(horizons)])
    grid = np.concatenate([[landmark], horizons])
    return float((np.diff(grid) * (scores[1:] + scores[:-1]) / 2).sum() / (grid[-1] - landmark))


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibration`: per subject at risk, ``predicted``
    :math:`\\pi_i` and ``observed`` (the smoothed event probability at
    :math:`\\pi_i`); ``ici``, ``e50``, ``e90``: mean, median and 90th
    percentile of ``|observed - predicted|``; ``span`` of the smoother."""

    predicted: np.ndarray
    observed: np.ndarray
    ici: float
    e50: float
    e90: float
    span: float


def weighted_loess(x: np.ndarray, y: np.ndarray, weight: np.ndarray, at: np.ndarray, span: float = 0.75) -> np.ndarray:
    r"""Local linear regression of ``y`` on ``x`` evaluated at ``at``: at each
    point :math:`x_0`, weighted least squares with weights
    ``weight`` :math:`\times` the tricube kernel :math:`(1 - (|x - x_0| / h)^3)^3`,
    :math:`h` the distance to the nearest ``span`` fraction of the points
    (Cleveland's loess, degree 1, no robustness iterations)."""
    known = weight > 0
    x, y, weight = x[known], y[known], weight[known]
    k = max(2, int(np.ceil(span * x.size)))
    distance = np.abs(x[None, :] - at[:, None])  # (A, n)
    h = np.partition(distance, k - 1, axis=1)[:, k - 1]
    h = np.maximum(h, 1e-12) * (1 + 1e-9)
    w = weight * np.clip(1 - (distance / h[:, None]) ** 3, 0, None) ** 3
    sw, swx, swy = w.sum(1), (w * x).sum(1), (w * y).sum(1)
    mean_x, mean_y = swx / sw, swy / sw
    sxx = (w * (x - mean_x[:, None]) ** 2).sum(1)
    sxy = (w * (x - mean_x[:, None]) * (y - mean_y[:, None])).sum(1)
    slope = np.divide(sxy, sxx, out=np.zeros_like(sxy), where=sxx > 1e-12 * sw)
    return mean_y + slope * (at - mean_x)


def calibration(time, status, predicted, *, landmark: float, horizon: float, cause: int | None = None,
                span: float = 0.75) -> Calibration:
    r"""Calibration of :math:`\pi_i = P(\text{event by } t + \Delta t \mid T_i > t)`
    among the subjects at risk at ``landmark`` t: the integrated calibration
    index ICI and E50, E90 (Austin, Harrell & van Klaveren 2020), the mean,
    median and 90th percentile over subjects of
    :math:`|\hat P(\pi_i) - \pi_i|`, where :math:`\hat P(p)` estimates
    :math:`P(Y = 1 \mid \pi = p)`.

    The smoother :math:`\hat P` is an IPCW-weighted loess (:func:`weighted_loess`,
    degree 1, ``span`` 0.75 as in Austin et al.) of the outcome
    :math:`Y_i(t + \Delta t)` on :math:`\pi_i` over the subjects whose status at
    t + :math:`\Delta t` is known, with the weights :math:`W_i` of :func:`ipcw`:
    the weighted local mean of :math:`Y` estimates the local event
    probability as if no one were censored, so (unlike a loess of the
    complete cases alone) it is not biased towards 1 by the censoring of
    event-free subjects.  Austin et al. smooth with hazard regression
    instead; at one horizon the IPCW loess estimates the same curve with
    the same weights as the Brier score and needs no survival model of its
    own.  The smoothed values are clipped to [0, 1].

    :returns: a :class:`Calibration` (plot it with
        :func:`~pyro_dgmm.plotting_joint.plot_calibration`).
    """
    time, status, predicted = _check(time, status, landmark, horizon, predicted)
    if not 0 < span <= 1:
        raise ConfigError(f"span must be in (0, 1], got {span!r}")
    at_risk, case, _, weight = ipcw(time, status, landmark, horizon, cause)
    p = predicted[at_risk]
    observed = np.clip(weighted_loess(p, case.astype(np.float64), weight, p, span), 0.0, 1.0)
    error = np.abs(observed - p)
    return Calibration(p, observed, float(error.mean()), float(np.median(error)), float(np.quantile(error, 0.9)),
                       span)


def landmark_scores(time, status, predicted, horizons, *, landmark: float, cause: int | None = None) -> dict:
    """AUC, Brier score and calibration at the last of ``horizons`` (t + Δt)
    and the integrated Brier score over [t, t + Δt), from predictions at
    every horizon (shape (N, G); the last column is the one scored at t + Δt).

    :returns: ``{'auc', 'brier', 'ibs', 'ici', 'e50', 'e90', 'at_risk', 'events'}``
        (``at_risk``: subjects at risk at t; ``events``: events of ``cause``
        (any if None) in the window).
    """
    horizons = np.asarray(horizons, np.float64)
    predicted = np.asarray(predicted, np.float64)
    if predicted.ndim != 2 or predicted.shape[1] != horizons.size:
        raise DataError(f"predicted must have one column per horizon ({horizons.size}), got shape {predicted.shape}")
    window = dict(landmark=landmark, horizon=float(horizons[-1] - landmark), cause=cause)
    final = predicted[:, -1]
    at_risk, case, _, _ = ipcw(time, status, **window)
    fit = calibration(time, status, final, **window)
    return {"auc": time_dependent_auc(time, status, final, **window),
            "brier": brier_score(time, status, final, **window),
            "ibs": integrated_brier_score(time, status, predicted, horizons, landmark=landmark, cause=cause),
            "ici": fit.ici, "e50": fit.e50, "e90": fit.e90,
            "at_risk": int(at_risk.sum()), "events": int(case.sum())}


def subject_folds(ids, k: int = 5, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1) of every entry of ``ids`` (subject ids, one per row
    of a frame, repeats allowed): the distinct subjects in a random order
    (``seed``) are dealt into k folds of near-equal size, so all the rows of
    a subject fall in one fold.

    :raises ConfigError: k < 2 or more folds than subjects.
    """
    ids = np.asarray(ids)
    subjects = np.unique(ids)
    if not isinstance(k, (int, np.integer)) or not 2 <= k <= subjects.size:
        raise ConfigError(f"k must be an integer between 2 and the number of subjects ({subjects.size}), got {k!r}")
    order = np.random.default_rng(seed).permutation(subjects.size)
    fold_of = np.empty(subjects.size, np.int64)
    fold_of[order] = np.arange(subjects.size) % k
    return fold_of[np.searchsorted(subjects, ids)]
