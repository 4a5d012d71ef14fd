"""Matplotlib figures of dynamic predictions and their calibration.

They take the tables of :mod:`pyro_dgmm.predict` and :mod:`pyro_dgmm.evaluation`
(interval coverage and PIT: :func:`plot_interval_calibration`),
never models.  (The loss curve is :func:`pyro_dgmm.plotting.plot_loss`.)

Example:

>>> import pandas as pd
>>> calibration = pd.DataFrame({"outcome": ["event"] * 2, "bin_lower": [0.0, 0.5], "bin_upper": [0.5, 1.0],
...                             "n": [10, 5], "mean_predicted": [0.2, 0.7], "observed_rate": [0.25, 0.6]})
>>> plot_calibration(calibration).axes[0].get_title()
'event'
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .errors import DataError


def _subject_rows(table: pd.DataFrame, id_col: str, time_col: str, subject) -> pd.DataFrame:
    rows = table[table[id_col] == subject]
    if rows.empty:
        known = pd.unique(table[id_col])[:5].tolist()
        raise DataError(f"subject {subject!r} is not in the prediction table (ids such as {known})")
    return rows.sort_values(time_col)


def plot_dynamic_prediction(table: pd.DataFrame, subject, *, id_col: str, time_col: str,
                            outcomes: Sequence[str] | None = None, level: float = 0.95,
                            binary: Sequence[str] = (), landmark: float | None = None):
    """One subject's observed values, fitted curve and prediction band.

    :param table: :attr:`Prediction.table <pyro_dgmm.predict.Prediction>`,
        best made with ``include_history=True`` and a grid of times (the
        curve is drawn through its rows).
    :param outcomes: outcomes to show (default: all in the table), one panel each.
    :param level: the interval level to shade (a level the table has).
    :param binary: outcomes whose band is the credible band of the
        probability (``mean_lower/upper``) rather than of a new observation.
    :param landmark: where the prediction starts (default: the subject's
        last history time).

    History values are filled dots, later observed values (e.g. held-out)
    open circles; the line is the predicted mean; the shaded band after the
    landmark (dashed) is the prediction interval, the darker band the
    credible band of the mean curve.  For a smooth curve with the held-out
    values, predict once at a times DataFrame holding a grid and the later
    visits, with ``include_history=True``.
    """
    rows = _subject_rows(table, id_col, time_col, subject)
    outcomes = list(outcomes) if outcomes is not None else list(pd.unique(rows["outcome"]))
    label = f"{100 * level:g}"
    if f"lower_{label}" not in rows.columns:
        raise DataError(f"the table has no {label}% intervals (columns lower_{label}, upper_{label})")
    history = rows[rows["history"]]
    if landmark is None and not history.empty:
        landmark = history[time_col].max()
    fig, axes = plt.subplots(len(outcomes), 1, figsize=(6, 2.4 * len(outcomes)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], outcomes):
        part = rows[rows["outcome"] == name]
        time = part[time_col].to_numpy(float)
        after = time >= landmark if landmark is not None else np.ones(time.shape, bool)
        if name not in binary:
            ax.fill_between(time[after], part["lower_" + label][after], part["upper_" + label][after],
                            color="C0", alpha=0.2, lw=0, label=f"{label}% prediction interval")
        ax.fill_between(time, part["mean_lower_" + label], part["mean_upper_" + label], color="C0",
                        alpha=0.35, lw=0, label=f"{label}% band of the mean")
        ax.plot(time, part["mean"], color="C0", label="predicted mean")
        seen = part[part["observed"].notna()]
        past = seen["history"].to_numpy(bool)
        ax.scatter(seen[time_col][past], seen["observed"][past], s=14, color="k", zorder=3, label="history")
        ax.scatter(seen[time_col][~past], seen["observed"][~past], s=18, facecolors="none",
                   edgecolors="k", zorder=3, label="later observations")
        if landmark is not None:
            ax.axvline(landmark, color="grey", ls="--", lw=1)
        ax.set_ylabel(name)
    axes[0, 0].set_title(f"{id_col} = {subject}", fontsize=10)
    axes[0, 0].legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel(time_col)
    fig.tight_layout()
    return fig


def wilson_interval(successes: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    r"""Wilson score interval of binomial proportions: for :math:`\hat p =
    x/n` and :math:`z` the normal quantile,
    :math:`\{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}\}/(1 + z^2/n)`.
    Unlike :math:`\hat p \pm z\,\mathrm{se}` it stays inside [0, 1] and is
    not of zero width at rates 0 and 1, which small calibration bins hit."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    n = np.asarray(n, dtype=float)
    p = np.asarray(successes, dtype=float) / n
    centre = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / (1 + z ** 2 / n)
    return centre - half, centre + half


def plot_calibration(calibration: pd.DataFrame, *, level: float = 0.95):
    """Observed rate against mean predicted probability, one panel per
    binary outcome, points sized by the number of predictions in the bin,
    with a legend for the sizes and each bin's ``level`` Wilson interval of
    the observed rate (:func:`wilson_interval`): a point whose interval
    misses the diagonal is miscalibrated beyond binomial noise (pointwise).

    :param calibration: :func:`pyro_dgmm.evaluation.calibration_table` output.
    """
    outcomes = list(pd.unique(calibration["outcome"]))
    if not outcomes:
        raise DataError("the calibration table is empty: no binary outcome with observed values")
    fig, axes = plt.subplots(1, len(outcomes), figsize=(3.4 * len(outcomes), 3.4), squeeze=False)
    largest = float(calibration["n"].max())

    def size(n):
        return 200 * np.sqrt(np.asarray(n, dtype=float) / largest)

    for ax, name in zip(axes[0], outcomes):
        part = calibration[calibration["outcome"] == name]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        lower, upper = wilson_interval(part["observed_rate"] * part["n"], part["n"], level)
        rate = part["observed_rate"].to_numpy(float)
        ax.errorbar(part["mean_predicted"], rate, yerr=[rate - lower, upper - rate], fmt="none", ecolor="C0",
                    elinewidth=1, capsize=2, alpha=0.8)
        ax.scatter(part["mean_predicted"], rate, s=size(part["n"]), color="C0", alpha=0.8)
        ax.plot(part["mean_predicted"], rate, color="C0", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=name, xlabel="mean predicted probability")
    # legend for the marker sizes: round numbers of predictions spanning the table's bins
    counts = sorted({int(float(f"{n:.1g}")) for n in np.geomspace(max(1.0, calibration["n"].min()), largest, 3)})
    handles = [axes[0, -1].scatter([], [], s=size(n), color="C0", alpha=0.8) for n in counts]
    axes[0, -1].legend(handles, [f"n = {n}" for n in counts], title=f"bin size, {100 * level:g}% interval",
                       fontsize=7, title_fontsize=7, loc="upper left", labelspacing=1.2, borderpad=0.8)
    axes[0, 0].set_ylabel("observed rate")
    fig.tight_layout()
    return fig


def plot_interval_calibration(coverage: pd.DataFrame, pit: pd.DataFrame | None = None):
    """Calibration of the predictive distributions, one column per outcome.

    Top row: coverage of each interval level against its nominal level,
    by horizon bin (from :func:`pyro_dgmm.evaluation.interval_coverage`;
    error bars: 2 binomial SEs; the diagonal is perfect calibration).
    Bottom row (if ``pit`` is given): the PIT histogram
    (:func:`pyro_dgmm.evaluation.pit_histogram`, pooled horizons) against
    the uniform density 1.

    :returns: the matplotlib Figure.
    """
    outcomes = list(pd.unique(coverage["outcome"]))
    if not outcomes:
        raise DataError("the coverage table is empty: no observed value with prediction intervals")
    rows = 1 if pit is None else 2
    fig, axes = plt.subplots(rows, len(outcomes), figsize=(3.2 * len(outcomes), 3.0 * rows), squeeze=False)
    for col, name in enumerate(outcomes):
        ax = axes[0, col]
        part = coverage[coverage["outcome"] == name]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        for j, (horizon, group) in enumerate(part.groupby("horizon", sort=False)):
            style = dict(color="k", lw=2) if horizon == "all" else dict(color=f"C{j}", lw=1)
            ax.errorbar(group["nominal"], group["coverage"], yerr=2 * group["se"], marker="o", ms=3,
                        label=f"horizon {horizon}", capsize=2, **style)
        low = min(0.4, float(part["coverage"].min()) - 0.05, float(part["nominal"].min()) - 0.05)
        ax.set(xlim=(low, 1), ylim=(low, 1), title=name, xlabel="nominal level")
        if col == 0:
            ax.set_ylabel("coverage")
            ax.legend(fontsize=6)
        if pit is not None:
            ax = axes[1, col]
            bars = pit[(pit["outcome"] == name) & (pit["horizon"] == "all")]
            ax.bar(bars["bin_lower"], bars["density"], width=bars["bin_upper"] - bars["bin_lower"], align="edge",
                   color="C0", alpha=0.7, edgecolor="white")
            ax.axhline(1.0, color="grey", ls="--", lw=1)
            ax.set(xlim=(0, 1), xlabel="PIT")
            if col == 0:
                ax.set_ylabel("density")
    fig.tight_layout()
    return fig
