"""Matplotlib figures from results (DataFrames and fit histories), never from models.

Example:

>>> from pyro_dgmm.fit import FitResult
>>> result = FitResult(config={}, train_loss=[3.0, 2.1, 1.7, 1.6], validation_loss=[(1, 2.4), (3, 1.9)])
>>> fig = plot_loss(result)
>>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()][0]
'training objective'
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .fit import FitResult


def plot_subjects(fitted: pd.DataFrame, outcomes: Sequence[str], *, id_col: str, time_col: str,
                  subjects: Sequence | None = None, max_subjects: int = 6, seed: int = 0):
    """Observed values (dots) and fitted subject-specific curves (lines).

    :param fitted: output of :meth:`DeepMixedModel.fitted_values` (columns
        ``id_col``, ``time_col``, each outcome and ``<outcome>_fitted``).
    :param subjects: ids to show; default a random ``max_subjects`` of them.
    :returns: the matplotlib Figure (one row per outcome, one column per subject).
    """
    if subjects is None:
        ids = pd.unique(fitted[id_col])
        subjects = np.random.default_rng(seed).choice(ids, size=min(max_subjects, len(ids)), replace=False)
    fig, axes = plt.subplots(len(outcomes), len(subjects), figsize=(2.6 * len(subjects), 2.2 * len(outcomes)),
                             squeeze=False, sharex=True)
    for col, subject in enumerate(subjects):
        rows = fitted[fitted[id_col] == subject].sort_values(time_col)
        for row, name in enumerate(outcomes):
            ax = axes[row, col]
            ax.plot(rows[time_col], rows[f"{name}_fitted"], color="C0", label="fitted mean")
            ax.scatter(rows[time_col], rows[name], s=10, color="k", label="observed")
            if row == 0:
                ax.set_title(f"{id_col} = {subject}", fontsize=9)
            if col == 0:
                ax.set_ylabel(name)
            if row == len(outcomes) - 1:
                ax.set_xlabel(time_col)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_loss(result: FitResult):
    """Training objective per epoch and held-out negative ELBO per subject."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(result.train_loss)), result.train_loss, label="training objective")
    if result.validation_loss:
        epochs, values = zip(*result.validation_loss)
        ax.plot(epochs, values, "o-", ms=3, label="held-out -ELBO / subject")
    if result.best_epoch >= 0:
        ax.axvline(result.best_epoch, color="grey", ls="--", lw=1, label="kept parameters")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per subject")
    ax.set_yscale("symlog")
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
