"""Matplotlib figures of a joint model's event predictions: one subject's
dynamic prediction (observed history, the predicted trajectory of an
outcome with its 95% band, and the cumulative incidence of every cause
after the landmark) and the calibration plot of predicted event
probabilities (:func:`plot_calibration`).

They read an :class:`~pyro_dgmm.joint_estimator.EventPrediction` or a
:class:`~pyro_dgmm.event_evaluation.Calibration` (tables only), never a model.

Example:

>>> import pandas as pd
>>> from types import SimpleNamespace
>>> prediction = SimpleNamespace(
...     landmark=1.0, history=pd.DataFrame({"id": [0, 0], "time": [0.0, 1.0], "y": [1.0, 1.2]}),
...     trajectory=pd.DataFrame({"id": 0, "time": [0.0, 1.0, 2.0], "outcome": "y", "mean": [1.0, 1.1, 1.3],
...                              "lower": [0.8, 0.9, 1.0], "upper": [1.2, 1.3, 1.6]}),
...     events=pd.DataFrame({"id": 0, "horizon": [2.0, 3.0], "cause": "event", "probability": [0.1, 0.2],
...                          "lower": [0.05, 0.1], "upper": [0.2, 0.35]}))
>>> figure = plot_event_prediction(prediction, 0, id_col="id", time_col="time")
>>> [ax.get_ylabel() for ax in figure.axes]
['y', 'cumulative incidence']
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .errors import DataError


def plot_event_prediction(prediction, subject, *, id_col: str, time_col: str, outcome: str | None = None):
    """Two panels sharing the time axis: left, the subject's observed values of
    ``outcome`` (dots), the predicted mean trajectory and its 95% band; right,
    the cumulative incidence :math:`P(T \\le u, c \\mid T > t)` of every cause
    at the horizons u (lines through 0 at the landmark t, 95% bands); the
    landmark is dashed on both.

    :param prediction: the result of :meth:`~pyro_dgmm.joint_estimator.JointMixedModel.predict_events`.
    :param outcome: the outcome to draw (default: the first of the trajectory table).
    :raises DataError: ``subject`` is not in the prediction.
    """
    trajectory = prediction.trajectory[prediction.trajectory[id_col] == subject]
    if trajectory.empty:
        raise DataError(f"subject {subject!r} is not in the prediction "
                        f"(ids such as {prediction.trajectory[id_col].unique()[:5].tolist()})")
    outcome = trajectory["outcome"].iloc[0] if outcome is None else outcome
    curve = trajectory[trajectory["outcome"] == outcome].sort_values(time_col)
    history = prediction.history[prediction.history[id_col] == subject]
    events = prediction.events[(prediction.events[id_col] == subject) & (prediction.events["cause"] != "event-free")]
    t = prediction.landmark
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    left.fill_between(curve[time_col], curve["lower"], curve["upper"], alpha=0.25, label="95% band")
    left.plot(curve[time_col], curve["mean"], label="predicted mean")
    if outcome in history:
        left.plot(history[time_col], history[outcome], "o", color="black", label="observed")
    left.set_xlabel(time_col)
    left.set_ylabel(outcome)
    left.legend(loc="best")
    for cause, rows in events.groupby("cause", sort=False):
        rows = rows.sort_values("horizon")
        u = np.concatenate([[t], rows["horizon"].to_numpy()])
        line, = right.plot(u, np.concatenate([[0.0], rows["probability"]]), label=str(cause))
        right.fill_between(u, np.concatenate([[0.0], rows["lower"]]), np.concatenate([[0.0], rows["upper"]]),
                           alpha=0.2, color=line.get_color())
    right.set_xlabel(time_col)
    right.set_ylabel("cumulative incidence")
    right.set_ylim(0, 1)
    right.legend(loc="upper left")
    for ax in (left, right):
        ax.axvline(t, linestyle="--", color="grey")
    figure.suptitle(f"subject {subject}: prediction at {time_col} = {t:g}")
    figure.tight_layout()
    return figure


def plot_calibration(calibration, *, ax=None, label: str | None = None):
    """Calibration plot of event probabilities at one horizon: the smoothed
    observed probability against the predicted one (a line over the sorted
    predictions), the diagonal of perfect calibration, a rug of the
    predictions, and ICI / E50 / E90 in the legend.

    :param calibration: a :class:`~pyro_dgmm.event_evaluation.Calibration`
        (:func:`~pyro_dgmm.event_evaluation.calibration`).
    :param ax: the axes to draw on (default: a new figure's); call again on
        the same axes to compare models.
    :param label: the curve's name in the legend (default: 'smoothed observed').
    :returns: the figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    order = np.argsort(calibration.predicted, kind="stable")
    name = "smoothed observed" if label is None else label
    ax.plot(calibration.predicted[order], calibration.observed[order],
            label=f"{name} (ICI {calibration.ici:.3f}, E50 {calibration.e50:.3f}, E90 {calibration.e90:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot(calibration.predicted, np.zeros_like(calibration.predicted), "|", color="black", alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed probability")
    ax.legend(loc="upper left", fontsize="small")
    return ax.figure
