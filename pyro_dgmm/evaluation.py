r"""Scoring dynamic predictions: landmark splits, accuracy, interval coverage,
discrimination and calibration.

A *landmark* analysis at time :math:`s` with horizon :math:`h` uses what is
known about each subject at :math:`s` (their rows with time :math:`\le s`)
to predict their observed values in :math:`(s, s + h]`.  Subjects without a
row at or before :math:`s` are not at risk at the landmark and are left out.

Scores per outcome (and per horizon bin), on the cells with an observed value:

* continuous families (Gaussian, Student-t, bounded, Poisson): RMSE and MAE of
  ``mean`` against the observed value; coverage of the prediction
  intervals, :math:`\frac1n \sum 1\{l_j \le y_j \le u_j\}`, and their mean width;
* every family, when the table has a ``log_density`` column (the tables of
  :func:`~pyro_dgmm.predict.predict` do): ``log_density``, the mean log
  predictive density of the observed values (the held-out log-likelihood
  per value, a proper score: higher is better);
* binary (Bernoulli): the AUC (Mann-Whitney, ties counted one half), the
  Brier score :math:`\frac1n\sum (p_j - y_j)^2`, and a calibration table
  (observed rate against mean predicted probability in equal-width bins).

Calibration of the predictive distributions (:func:`interval_coverage`,
:func:`pit_values`, :func:`pit_histogram`; figure:
:func:`pyro_dgmm.plotting.plot_calibration`):

* coverage of each central interval level by outcome and horizon bin,
  beside the nominal level with the binomial Monte Carlo SE
  :math:`\sqrt{c(1-c)/n}` (which ignores that values of one subject are
  correlated, so it is optimistic);
* the probability integral transform :math:`u_j = F_j(y_j)` of each observed
  value under its predictive distribution, estimated from the S predictive
  draws; for discrete outcomes the randomised PIT
  :math:`u_j = F_j(y_j^-) + V_j\,\{F_j(y_j) - F_j(y_j^-)\}`,
  :math:`V_j \sim U(0, 1)` (Czado, Gneiting & Held 2009, Biometrics 65,
  1254-1261).  Under a calibrated forecast :math:`u_j \sim U(0, 1)`: a
  U-shaped histogram means intervals too narrow (or tails too light), a hump
  too wide; a slope, a biased mean.

All scoring functions take the tidy tables of :func:`pyro_dgmm.predict.predict`
(columns ``outcome``, ``horizon``, ``observed``, ``mean`` and, optionally,
``lower_<L>``/``upper_<L>``), so other predictors (such as
:func:`last_value_predictions`) are scored the same way.

Example:

>>> import numpy as np
>>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
0.75
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .data import DataSchema
from .errors import DataError
from .families import Bernoulli, Family, get_family
from .options import check_float, check_int
from .predict import predict

ALL_HORIZONS = "all"
#: Families whose predictive draws can equal the observed value (randomised PIT).
_DISCRETE = ("bernoulli", "poisson")


def landmark_split(df: pd.DataFrame, *, id_col: str, time_col: str, outcomes: Sequence[str],
                   landmark: float, horizon: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` at ``landmark`` into (history, future).

    ``history``: the rows with time <= landmark of the subjects that have
    such a row.  ``future``: those subjects' rows with landmark < time <=
    landmark + horizon (no upper bound if ``horizon`` is None) and at least
    one observed outcome.
    """
    for column in (id_col, time_col, *outcomes):
        if column not in df.columns:
            raise DataError(f"column '{column}' not found in the DataFrame; its columns are {list(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df[time_col]):
        raise DataError(f"landmark evaluation needs a numeric time column; '{time_col}' holds {df[time_col].dtype} "
                        f"values: convert it to numbers, e.g. (df['{time_col}'] - start) / pd.Timedelta(days=1)")
    time = pd.to_numeric(df[time_col])
    history = df[time <= landmark]
    end = np.inf if horizon is None else landmark + horizon
    later = df[(time > landmark) & (time <= end) & df[id_col].isin(history[id_col])]
    future = later[later[list(outcomes)].notna().any(axis=1)]
    if history.empty or future.empty:
        raise DataError(
            f"no subject has rows both at or before the landmark {landmark:g} and observed outcomes "
            f"in ({landmark:g}, {end:g}] of column '{time_col}'"
        )
    return history, future


def _families(families: Mapping[str, str | Family]) -> dict[str, Family]:
    return {name: get_family(spec) for name, spec in families.items()}


def _levels_in(table: pd.DataFrame) -> list[str]:
    """Interval labels ``L`` with both ``lower_L`` and ``upper_L`` columns."""
    return [c[len("lower_"):] for c in table.columns
            if c.startswith("lower_") and f"upper_{c[len('lower_'):]}" in table.columns]


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank-sum formula, average ranks for ties);
    NaN unless both classes occur."""
    label = np.asarray(label, dtype=bool)
    positives, negatives = label.sum(), (~label).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(score, dtype=float)).rank().to_numpy()
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _scores(rows: pd.DataFrame, family: Family, labels: list[str]) -> dict:
    """Scores of one outcome on ``rows`` (observed cells only)."""
    y, mean = rows["observed"].to_numpy(float), rows["mean"].to_numpy(float)
    out = {"n": len(rows)}
    if isinstance(family, Bernoulli):
        out.update(auc=auc(mean, y), brier=float(np.mean((mean - y) ** 2)))
        if "log_density" in rows.columns:
            out["log_density"] = float(np.mean(rows["log_density"].to_numpy(float)))
        return out
    error = mean - y
    out.update(rmse=float(np.sqrt(np.mean(error ** 2))), mae=float(np.mean(np.abs(error))))
    for label in labels:
        lower, upper = rows[f"lower_{label}"].to_numpy(float), rows[f"upper_{label}"].to_numpy(float)
        out[f"coverage_{label}"] = float(np.mean((lower <= y) & (y <= upper)))
        out[f"width_{label}"] = float(np.mean(upper - lower))
    if "log_density" in rows.columns:
        out["log_density"] = float(np.mean(rows["log_density"].to_numpy(float)))
    return out


def _horizon_groups(table: pd.DataFrame, horizon_bins: Sequence[float] | None):
    """(label, rows) pairs: every horizon bin, then all rows."""
    groups = []
    if horizon_bins is not None:
        bins = pd.cut(table["horizon"], np.asarray(horizon_bins, dtype=float))
        groups = [(str(interval), table[bins == interval]) for interval in bins.cat.categories]
    return groups + [(ALL_HORIZONS, table)]


def score_predictions(table: pd.DataFrame, families: Mapping[str, str | Family], *,
                      horizon_bins: Sequence[float] | None = None) -> pd.DataFrame:
    """Scores per outcome and horizon bin (module docstring) of a tidy table.

    :param table: columns ``outcome``, ``horizon``, ``observed``, ``mean``
        and any ``lower_<L>``/``upper_<L>`` pairs; rows with NaN ``observed``
        are ignored.
    :param families: outcome name -> family (e.g. ``schema.families``).
    :param horizon_bins: bin edges for ``horizon`` (e.g. ``[0, 1, 2, 3]``:
        ``(0, 1]``, ``(1, 2]``, ``(2, 3]``); the row ``horizon='all'`` pools them.
    :returns: one row per (outcome, horizon) with ``family``, ``n`` and the
        scores; empty bins are left out.
    """
    families = _families(families)
    labels = _levels_in(table)
    scored = table[table["observed"].notna()]
    rows = []
    for name, family in families.items():
        for label, group in _horizon_groups(scored[scored["outcome"] == name], horizon_bins):
            if len(group):
                rows.append({"outcome": name, "family": family.name, "horizon": label,
                             **_scores(group, family, labels)})
    return pd.DataFrame(rows)


def calibration_table(table: pd.DataFrame, families: Mapping[str, str | Family], *,
                      bins: int = 10) -> pd.DataFrame:
    """Observed rate against predicted probability for the binary outcomes.

    Predictions are grouped into ``bins`` equal-width bins ``(lower, upper]``
    of [0, 1] (the first also holds 0); returns ``outcome``, ``bin_lower``,
    ``bin_upper``, ``n``, ``mean_predicted`` and ``observed_rate`` for the
    non-empty bins.
    """
    binary = [name for name, family in _families(families).items() if isinstance(family, Bernoulli)]
    scored = table[table["observed"].notna() & table["outcome"].isin(binary)]
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, scored["mean"].to_numpy(float), side="left") - 1, 0, bins - 1)
    out = scored.assign(bin=index).groupby(["outcome", "bin"], sort=True).agg(
        n=("observed", "size"), mean_predicted=("mean", "mean"), observed_rate=("observed", "mean"))
    out = out.reset_index()
    out.insert(1, "bin_lower", edges[out["bin"]])
    out.insert(2, "bin_upper", edges[out["bin"] + 1])
    return out.drop(columns="bin")


def interval_coverage(table: pd.DataFrame, *, horizon_bins: Sequence[float] | None = None) -> pd.DataFrame:
    """Coverage of every central prediction interval by outcome and horizon bin.

    :param table: a prediction table with ``outcome``, ``horizon``,
        ``observed`` and ``lower_<L>``/``upper_<L>`` pairs (rows with NaN
        ``observed`` are ignored).
    :param horizon_bins: bin edges for ``horizon`` as in :func:`score_predictions`;
        the rows ``horizon='all'`` pool the bins.
    :returns: one row per (outcome, horizon, level): ``n``, ``nominal``
        (the level, a fraction), ``coverage``, ``se`` (binomial,
        :math:`\\sqrt{c(1-c)/n}`), ``below`` and ``above`` (shares under the
        lower and over the upper end: which tail misses).
    """
    labels = _levels_in(table)
    if not labels:
        raise DataError("the table has no lower_<L>/upper_<L> columns: predict with levels=(...)")
    scored = table[table["observed"].notna()]
    rows = []
    for name in pd.unique(scored["outcome"]):
        for horizon, group in _horizon_groups(scored[scored["outcome"] == name], horizon_bins):
            if not len(group):
                continue
            y = group["observed"].to_numpy(float)
            for label in labels:
                below = float(np.mean(y < group[f"lower_{label}"].to_numpy(float)))
                above = float(np.mean(y > group[f"upper_{label}"].to_numpy(float)))
                coverage = 1.0 - below - above
                rows.append({"outcome": name, "horizon": horizon, "n": len(group), "nominal": float(label) / 100,
                             "coverage": coverage, "se": math.sqrt(coverage * (1 - coverage) / len(group)),
                             "below": below, "above": above})
    return pd.DataFrame(rows)


def pit_values(table: pd.DataFrame, draws: np.ndarray, families: Mapping[str, str | Family], *,
               seed: int = 0) -> pd.DataFrame:
    r"""The probability integral transform of each observed value (module docstring).

    :param table: a prediction table (``outcome``, ``observed``).
    :param draws: (S, len(table)) predictive draws, column ``r`` for row
        ``r`` (:attr:`~pyro_dgmm.predict.Prediction.draws`).
    :param families: outcome name -> family; families whose draws can tie
        with the observed value (Bernoulli, Poisson) get the randomised PIT
        (with a generator seeded by ``seed``); for the others ties have
        probability 0 and the PIT is the share of draws below the value.
    :returns: ``table`` with a column ``pit`` in [0, 1] (NaN where ``observed`` is NaN).
    """
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] != len(table):
        raise DataError(f"draws must have shape (S, {len(table)}) (one column per table row), got {draws.shape}")
    families = _families(families)
    y = table["observed"].to_numpy(float)
    below = (draws < y).mean(0)
    tied = (draws == y).mean(0)
    discrete = table["outcome"].map(lambda name: families[name].name in _DISCRETE).to_numpy(bool)
    jitter = np.random.default_rng(seed).uniform(size=len(table))
    pit = below + np.where(discrete, jitter * tied, 0.5 * tied)
    return table.assign(pit=np.where(np.isnan(y), np.nan, pit))


def pit_histogram(table: pd.DataFrame, *, bins: int = 10,
                  horizon_bins: Sequence[float] | None = None) -> pd.DataFrame:
    """Histogram of the ``pit`` column (:func:`pit_values`) per outcome (and horizon bin).

    :returns: one row per (outcome, horizon, bin): ``bin_lower``,
        ``bin_upper``, ``n`` and ``density`` (share of values in the bin
        times ``bins``: 1 everywhere for a calibrated forecast).
    """
    if "pit" not in table.columns:
        raise DataError("the table has no 'pit' column: compute it with pit_values(table, draws, families)")
    scored = table[table["pit"].notna()]
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for name in pd.unique(scored["outcome"]):
        for horizon, group in _horizon_groups(scored[scored["outcome"] == name], horizon_bins):
            counts = np.histogram(np.clip(group["pit"].to_numpy(float), 0, 1), bins=edges)[0]
            for j, count in enumerate(counts):
                rows.append({"outcome": name, "horizon": horizon, "bin_lower": edges[j], "bin_upper": edges[j + 1],
                             "n": int(count), "density": count * bins / max(len(group), 1)})
    return pd.DataFrame(rows)


def last_value_predictions(history: pd.DataFrame, future: pd.DataFrame, *, id_col: str, time_col: str,
                           outcomes: Sequence[str], fallback: Mapping[str, float] | None = None) -> pd.DataFrame:
    """A reference predictor: each subject's last observed value in
    ``history``, carried forward to every row of ``future``.

    Subjects with no observed value of an outcome get ``fallback[outcome]``
    (default: the mean of that outcome over all of ``history``).  Returns a
    tidy table like :func:`~pyro_dgmm.predict.predict`'s (``mean`` is the
    carried value, a 0/1 "probability" for binary outcomes; no intervals),
    with ``horizon`` = time minus the subject's last history time.
    """
    last_time = history.groupby(id_col)[time_col].max()
    frames = []
    for name in outcomes:
        seen = history[history[name].notna()].sort_values([id_col, time_col])
        carried = seen.groupby(id_col)[name].last()
        default = history[name].mean() if fallback is None else fallback[name]
        frames.append(pd.DataFrame({
            id_col: future[id_col].to_numpy(),
            time_col: future[time_col].to_numpy(),
            "outcome": name,
            "horizon": future[time_col].to_numpy(float) - future[id_col].map(last_time).to_numpy(float),
            "observed": pd.to_numeric(future[name]).to_numpy(float),
            "mean": future[id_col].map(carried).fillna(default).to_numpy(float),
        }))
    return pd.concat(frames, ignore_index=True).sort_values([id_col, time_col], kind="stable",
                                                            ignore_index=True)


@dataclass
class LandmarkEvaluation:
    """What :func:`landmark_evaluation` returns: the prediction tables of the
    model (``predictions``) and of :func:`last_value_predictions`
    (``baseline``), both with ``horizon`` = time - landmark; ``scores`` of
    both (a ``method`` column: ``'model'``, ``'last value'``); the model's
    ``calibration`` table (binary outcomes); the ``coverage`` of every
    interval level by outcome and horizon (:func:`interval_coverage`) and
    the ``pit`` histogram by outcome (:func:`pit_histogram`; the model's
    ``predictions`` carry the ``pit`` column).  Tables of several folds can
    be concatenated and scored again with :func:`score_predictions`,
    :func:`interval_coverage` and :func:`pit_histogram`."""

    predictions: pd.DataFrame
    baseline: pd.DataFrame
    scores: pd.DataFrame
    calibration: pd.DataFrame
    coverage: pd.DataFrame
    pit: pd.DataFrame


def landmark_evaluation(model, guide, schema: DataSchema, df: pd.DataFrame, landmark: float, *,
                        horizon: float | None = None, horizon_bins: Sequence[float] | None = None,
                        levels: Sequence[float] = (0.5, 0.8, 0.95), calibration_bins: int = 10,
                        pit_bins: int = 10,
                        fallback: Mapping[str, float] | None = None,
                        **predict_options) -> LandmarkEvaluation:
    """Predict every subject of ``df`` (held-out subjects, normally) from
    their history up to ``landmark`` at their observed times in
    ``(landmark, landmark + horizon]``, and score the predictions per
    outcome and horizon bin beside :func:`last_value_predictions`.

    ``fallback`` goes to :func:`last_value_predictions` (e.g. the training
    means); ``predict_options`` to :func:`~pyro_dgmm.predict.predict`
    (``method``, ``num_samples``, ``seed``, ``encoder_view``, ...).  Horizons are
    measured from the landmark.  Under ``torch.distributed`` every process
    passes the same ``df``; the predictions are computed block by block on
    the processes and gathered, so every process gets the whole evaluation.
    """
    landmark = check_float("landmark", landmark)
    horizon = check_float("horizon", horizon, low=0, low_open=True, none=True)
    calibration_bins = check_int("calibration_bins", calibration_bins)
    id_col, time_col, outcomes = schema.id_col, schema.time_col, schema.outcomes
    history, future = landmark_split(df, id_col=id_col, time_col=time_col, outcomes=outcomes,
                                     landmark=landmark, horizon=horizon)
    prediction = predict(model, guide, schema, history, future, levels=levels, **predict_options)
    table = pit_values(prediction.table, prediction.draws, schema.families, seed=predict_options.get("seed", 0))
    baseline = last_value_predictions(history, future, id_col=id_col, time_col=time_col, outcomes=outcomes,
                                      fallback=fallback)
    table, baseline = (frame.assign(horizon=frame[time_col].to_numpy(float) - landmark)
                       for frame in (table, baseline))
    scores = pd.concat([
        score_predictions(frame, schema.families, horizon_bins=horizon_bins).assign(method=method)
        for method, frame in (("model", table), ("last value", baseline))
    ], ignore_index=True)
    return LandmarkEvaluation(table, baseline, scores,
                              calibration_table(table, schema.families, bins=calibration_bins),
                              interval_coverage(table, horizon_bins=horizon_bins),
                              pit_histogram(table, bins=pit_bins))
