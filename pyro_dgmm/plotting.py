"""Matplotlib figures from results (DataFrames and fit histories), never from models.

Example:

>>> from pyro_dgmm.results import FitResult
>>> result = FitResult(config={}, train_loss=[3.0, 2.1, 1.7, 1.6], validation_loss=[(1, 2.4), (3, 1.9)])
>>> fig = plot_loss(result)
>>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()][0]
'training objective'
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .errors import DataError
from .families import Bernoulli, BoundedContinuous, get_family
from .results import FitResult


def _interval_label(fitted: pd.DataFrame, name: str, level: float | None) -> str | None:
    """The level label (``'90'``) of the ``<name>_lower_<L>`` columns to draw:
    that of ``level`` (which must be there), else the widest present, else None."""
    if level is not None:
        label = f"{100 * level:g}"
        if f"{name}_lower_{label}" not in fitted.columns:
            raise DataError(f"fitted has no {label}% interval of '{name}' (columns {name}_lower_{label}, "
                            f"{name}_upper_{label}): pass levels={level} to fitted_values")
        return label
    found = [column[len(f"{name}_lower_"):] for column in fitted.columns if column.startswith(f"{name}_lower_")]
    return max(found, key=float) if found else None


def _value_limits(family, observed: pd.Series, fitted: pd.Series) -> tuple[tuple[float, float] | None, bool]:
    """Fixed y-limits of an outcome's panels and whether they show a
    probability: [0, 1] for a Bernoulli family (or, without a family,
    observed values all 0 or 1 and fitted values in [0, 1]), the bounds of a
    bounded family, else None (autoscale)."""
    if family is None:
        values = observed.dropna()
        binary = (not values.empty and bool(values.isin([0, 1]).all())
                  and bool(fitted.between(0, 1).all()))
    else:
        family = get_family(family)
        binary = isinstance(family, Bernoulli)
    if binary:
        low, high = 0.0, 1.0
    elif isinstance(family, BoundedContinuous):
        low, high = family.low, family.high
    else:
        return None, False
    margin = 0.04 * (high - low)
    return (low - margin, high + margin), binary


def plot_subjects(fitted: pd.DataFrame, outcomes: Sequence[str], *, id_col: str, time_col: str,
                  subjects: Sequence | None = None, max_subjects: int = 6, seed: int = 0,
                  families: Mapping | None = None, level: float | None = None):
    """Observed values (dots), fitted subject-specific curves (lines) and,
    where ``fitted`` has them, their interval bands.

    :param fitted: output of :meth:`DeepMixedModel.fitted_values` (columns
        ``id_col``, ``time_col``, each outcome and ``<outcome>_fitted``;
        with ``levels=``, the band ``<outcome>_lower_<L>``/``_upper_<L>`` of
        the mean and, with ``predictive=True``, the lighter band of a new
        observation).
    :param subjects: ids to show; default a random ``max_subjects`` of them.
    :param families: outcome -> family (e.g. ``model.schema_.families``):
        probability outcomes (Bernoulli) are drawn on a fixed [0, 1] axis
        labelled ``P(<outcome>)``, bounded ones on their bounds, so that
        small probabilities do not fill the panel and look like large
        effects.  Without it, an outcome whose observed values are all 0 or
        1 and whose fitted values lie in [0, 1] is taken as binary (a rare
        count with fitted means above 1 is not).
    :param level: the band to draw (default: the widest level in ``fitted``).
    :returns: the matplotlib Figure (one row per outcome, one column per subject).
    """
    if subjects is None:
        ids = pd.unique(fitted[id_col])
        subjects = np.random.default_rng(seed).choice(ids, size=min(max_subjects, len(ids)), replace=False)
    families = dict(families or {})
    panels = [fitted[fitted[id_col] == subject].sort_values(time_col) for subject in subjects]  # once, not per outcome
    fig, axes = plt.subplots(len(outcomes), len(subjects), figsize=(2.6 * len(subjects), 2.2 * len(outcomes)),
                             squeeze=False, sharex=True)
    for row, name in enumerate(outcomes):
        limits, probability = _value_limits(families.get(name), fitted[name], fitted[f"{name}_fitted"])
        label = _interval_label(fitted, name, level)
        for col, (subject, rows) in enumerate(zip(subjects, panels)):
            ax = axes[row, col]
            if label is not None and f"{name}_predictive_lower_{label}" in rows.columns:
                ax.fill_between(rows[time_col], rows[f"{name}_predictive_lower_{label}"],
                                rows[f"{name}_predictive_upper_{label}"], color="C0", alpha=0.12, lw=0,
                                label=f"{label}% predictive interval")
            if label is not None:
                ax.fill_between(rows[time_col], rows[f"{name}_lower_{label}"], rows[f"{name}_upper_{label}"],
                                color="C0", alpha=0.3, lw=0, label=f"{label}% band of the mean")
            ax.plot(rows[time_col], rows[f"{name}_fitted"], color="C0", label="fitted mean")
            ax.scatter(rows[time_col], rows[name], s=10, color="k", label="observed", zorder=3)
            if limits is not None:
                ax.set_ylim(*limits)
            if row == 0:
                ax.set_title(f"{id_col} = {subject}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"P({name})" if probability else name)
            if row == len(outcomes) - 1:
                ax.set_xlabel(time_col)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def log_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values for a log axis from ``low`` to ``high`` (both > 0):
    the coarsest of 1-2-5 times powers of ten, then 1-9 times, then two and
    three significant digits, that puts at least three ticks in the range,
    thinned to at most ``count``.  A plain log axis labels only powers of
    ten, so a loss curve spanning less than a decade got one label or none."""
    if not (0 < low <= high):
        raise ValueError(f"log ticks need 0 < low <= high, got {low}, {high}")
    powers = range(int(np.floor(np.log10(low))) - 1, int(np.ceil(np.log10(high))) + 1)
    for mantissas in ((1, 2, 5), range(1, 10), np.arange(10, 100) / 10, np.arange(100, 1000) / 100):
        ticks = sorted({float(f"{m * 10.0 ** p:.6g}") for p in powers for m in mantissas})
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) >= 3:
            step = int(np.ceil(len(ticks) / count))
            return ticks[::step]
    return sorted({float(f"{low:.4g}"), float(f"{high:.4g}")})


def plot_loss(result: FitResult):
    """Training objective per epoch and held-out negative ELBO per subject,
    on a log axis with readable ticks (:func:`log_ticks`) when every value is
    positive, else on a symmetric-log axis (the objective of a continuous
    outcome can be negative)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(result.train_loss)), result.train_loss, label="training objective")
    values = list(result.train_loss)
    if result.validation_loss:
        epochs, held_out = zip(*result.validation_loss)
        ax.plot(epochs, held_out, "o-", ms=3, label="held-out -ELBO / subject")
        values += list(held_out)
    if result.best_epoch >= 0:
        ax.axvline(result.best_epoch, color="grey", ls="--", lw=1, label="kept parameters")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per subject")
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(FixedLocator(log_ticks(values.min(), values.max())))
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.set_yscale("symlog", linthresh=max(1.0, float(np.abs(values).min()) if values.size else 1.0))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.legend()
    fig.tight_layout()
    return fig


def plot_tipping_point(result, ax=None):
    """Pooled estimate and interval against delta, from
    :func:`pyro_dgmm.sensitivity.tipping_point`, with the zero line and the
    tipping delta (dashed) where the conclusion changes.

    :returns: the matplotlib Figure.
    """
    table = result.table
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
    else:
        fig = ax.figure
    ax.fill_between(table["delta"], table["lower"], table["upper"], color="C0", alpha=0.25,
                    label=f"{result.level:.0%} interval (Rubin's rules)")
    ax.plot(table["delta"], table["estimate"], "o-", color="C0", label="pooled estimate")
    ax.axhline(0.0, color="black", lw=0.8)
    if result.tipping_delta is not None:
        ax.axvline(result.tipping_delta, color="C3", ls="--", label=f"tipping point, delta = {result.tipping_delta:.2f}")
    ax.set_xlabel("delta (shift after dropout, link scale)")
    ax.set_ylabel(f"estimate of {result.term}")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig
