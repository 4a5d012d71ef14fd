r"""Missing not at random: delta-adjusted imputation, Rubin's rules, tipping points.

The fit and :meth:`~pyro_dgmm.estimator.DeepMixedModel.impute` assume the
missing values are missing at random (MAR): after a subject drops out,
their outcomes follow the same model as those of subjects who stayed,
given the history.  Whether that holds cannot be checked from the data, so
regulators (ICH E9(R1)) ask how far a conclusion survives departures from
it.  The standard answer is a pattern-mixture sensitivity analysis.

**Delta adjustment.**  Imputed values *after dropout* are drawn from the MAR
model with the linear predictor moved by delta:

.. math:: y_{ijk} \mid b_i \sim F_k\big(g_k^{-1}\{\eta_{ijk}(b_i) + \delta_{ijk}\},
          \sigma_k\big) \quad \text{for } t_{ij} > d_{ik},

where :math:`d_{ik}` is the time of subject i's last observed value of
outcome k (:func:`dropout_cells`).  For a Gaussian outcome delta is a shift
in the outcome's units; for binary and count outcomes it is on the link
scale (a log odds ratio, a log rate ratio).  Intermittent missing values
(before :math:`d_{ik}`) stay under MAR.  Delta may be one number, one per
outcome, or any function of the post-dropout cells and the subject's
covariates (per arm, per dropout time): :func:`delta_shift`.

**Rubin's rules** (:func:`pool`, :func:`analyze`).  With m imputed data
sets giving estimates :math:`\hat Q_l` with variances :math:`U_l`:

.. math:: \bar Q = \tfrac1m \textstyle\sum_l \hat Q_l, \quad
          \bar U = \tfrac1m \textstyle\sum_l U_l, \quad
          B = \tfrac1{m-1} \textstyle\sum_l (\hat Q_l - \bar Q)^2, \quad
          T = \bar U + (1 + \tfrac1m) B,

with :math:`r = (1 + 1/m) B / \bar U` and Rubin's degrees of freedom
:math:`\nu_m = (m - 1)(1 + 1/r)^2`; given the complete-data degrees of
freedom :math:`\nu_{com}`, Barnard and Rubin's (1999) small-sample version
:math:`\nu = (1/\nu_m + 1/\hat\nu_{obs})^{-1}`,
:math:`\hat\nu_{obs} = \frac{\nu_{com} + 1}{\nu_{com} + 3}\,\nu_{com}\,(1 - \lambda)`,
:math:`\lambda = (1 + 1/m) B / T`.  Intervals use :math:`t_\nu` quantiles.

**Tipping point** (:func:`tipping_point`): repeat the imputation and the
pooled analysis over a grid of deltas (with the same random numbers at
every delta, so the curve is smooth in delta) and report the delta at
which the conclusion (significance at ``1 - level``) changes.

Example (pooling three estimates by hand-checkable numbers):

>>> table = pool([1.0, 1.2, 1.1], [0.04, 0.05, 0.06])
>>> round(float(table["estimate"].iloc[0]), 6), round(float(table["total"].iloc[0]), 6)
(1.1, 0.063333)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .data import LongitudinalData
from .errors import ConfigError
from .options import check_float, check_int

#: What ``delta`` may be: one shift, one per outcome, or a function of the
#: post-dropout cells (a DataFrame) returning one shift per row.
Delta = float | Mapping[str, float] | Callable[[pd.DataFrame], Sequence[float]]


def _last_observed_slot(data: LongitudinalData) -> torch.Tensor:
    """(N, K): the slot of each subject's last observed value of each outcome, -1 if never observed."""
    slots = torch.arange(data.num_visits, device=data.device).view(1, -1, 1)
    return torch.where(data.mask, slots, torch.full_like(slots, -1)).amax(dim=1)


def dropout_cells(data: LongitudinalData) -> torch.Tensor:
    """Cells after dropout, (N, T, K) bool: visits later than the subject's
    last observed value of that outcome (every visit if it was never
    observed).  Visits are the slots of ``data.visit_mask``, in time order."""
    slots = torch.arange(data.num_visits, device=data.device).view(1, -1, 1)
    return (slots > _last_observed_slot(data).unsqueeze(1)) & data.visit_mask.unsqueeze(-1)


def _cells_frame(data: LongitudinalData, after: torch.Tensor, baseline: pd.DataFrame | None) -> pd.DataFrame:
    """The post-dropout cells as rows: id, time, outcome, dropout_time (time
    of the last observed value; NaN if never observed) and the covariates."""
    times = data.time_values if data.time_values is not None else data.times.cpu().numpy()
    subject, slot, k = np.nonzero(after.cpu().numpy())
    last = _last_observed_slot(data).cpu().numpy()[subject, k]
    cells = pd.DataFrame({data.id_col: data.ids[subject], data.time_col: times[subject, slot],
                          "outcome": np.asarray(data.outcomes, dtype=object)[k],
                          "dropout_time": pd.Series(times[subject, np.maximum(last, 0)]).where(last >= 0).to_numpy(),
                          "_subject": subject, "_slot": slot, "_k": k})
    if baseline is not None:
        cells = cells.merge(baseline, on=data.id_col, how="left", validate="many_to_one")
    return cells


def delta_shift(data: LongitudinalData, delta: Delta, baseline: pd.DataFrame | None = None) -> torch.Tensor:
    """The shift of the linear predictor, (N, T, K): ``delta`` at the cells
    after dropout (:func:`dropout_cells`), 0 elsewhere.

    :param delta: a number (every outcome); a dict outcome -> number
        (outcomes not named get 0); or a function called with a DataFrame of
        the post-dropout cells (columns: id, time, ``outcome``,
        ``dropout_time`` and the covariates of ``baseline``) that returns one
        number per row, e.g. ``lambda cells: np.where(cells["arm"] == 1, -0.5, 0.0)``.
    :param baseline: one row per subject, the id column and covariates, for
        a function ``delta``.
    """
    after = dropout_cells(data)
    shift = torch.zeros(after.shape, dtype=data.y.dtype, device=data.device)
    if callable(delta):
        cells = _cells_frame(data, after, baseline)
        values = np.array(delta(cells.drop(columns=["_subject", "_slot", "_k"])), dtype=float)
        if values.shape != (len(cells),):
            raise ConfigError(f"delta: the function returned shape {values.shape}, expected one number per "
                              f"post-dropout cell ({len(cells)},)")
        if not np.isfinite(values).all():
            raise ConfigError(f"delta: the function returned non-finite values at rows "
                              f"{np.flatnonzero(~np.isfinite(values))[:5].tolist()} of the post-dropout cells")
        index = tuple(torch.as_tensor(cells[c].to_numpy(copy=True), device=shift.device)
                      for c in ("_subject", "_slot", "_k"))
        shift[index] = torch.as_tensor(values, dtype=shift.dtype, device=shift.device)
        return shift
    if isinstance(delta, Mapping):
        unknown = sorted(set(delta) - set(data.outcomes))
        if unknown:
            raise ConfigError(f"delta names outcomes {unknown} that the model does not have "
                              f"(outcomes: {list(data.outcomes)})")
        per_outcome = [check_float(f"delta['{name}']", delta.get(name, 0.0)) for name in data.outcomes]
    else:
        per_outcome = [check_float("delta", delta)] * len(data.outcomes)
    values = torch.as_tensor(per_outcome, dtype=shift.dtype, device=shift.device)
    return torch.where(after, values, shift)


def pool(estimates, variances, *, df_complete: float | None = None, level: float = 0.95) -> pd.DataFrame:
    """Rubin's rules: one row per parameter with ``estimate`` (Q bar),
    ``within`` (U bar), ``between`` (B), ``total`` (T), ``std_error``,
    ``df``, ``riv`` (r), ``fmi`` (fraction of missing information),
    ``lower``/``upper`` (``level`` interval from t_df), ``statistic`` and
    two-sided ``p_value`` for the hypothesis that the parameter is 0.

    :param estimates: m estimates: a sequence of numbers, of arrays (one
        entry per parameter) or of pandas Series (their index names the
        parameters).
    :param variances: their variances (squared standard errors), same shape.
    :param df_complete: degrees of freedom of the complete-data analysis
        (e.g. ``n - p`` for least squares), for Barnard and Rubin's
        small-sample degrees of freedom; None: Rubin's large-sample ones.
    """
    names = estimates[0].index if isinstance(estimates[0], pd.Series) else None
    q = np.asarray([np.atleast_1d(np.asarray(e, dtype=float)) for e in estimates])
    u = np.asarray([np.atleast_1d(np.asarray(v, dtype=float)) for v in variances])
    m = q.shape[0]
    if m < 2:
        raise ConfigError(f"pooling needs at least 2 imputed data sets, got {m}")
    if u.shape != q.shape:
        raise ConfigError(f"variances have shape {u.shape}, estimates {q.shape}: one variance per estimate")
    if not (np.isfinite(q).all() and np.isfinite(u).all()) or (u < 0).any():
        raise ConfigError("estimates and variances must be finite and variances non-negative")
    level = check_float("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    q_bar, u_bar, b = q.mean(0), u.mean(0), q.var(0, ddof=1)
    t = u_bar + (1 + 1 / m) * b
    with np.errstate(divide="ignore", invalid="ignore"):
        riv = (1 + 1 / m) * b / u_bar
        df = np.where(b > 0, (m - 1) * (1 + 1 / riv) ** 2, np.inf)
        if df_complete is not None:
            nu = check_float("df_complete", df_complete, low=0.0)
            lam = (1 + 1 / m) * b / t
            observed = (nu + 1) / (nu + 3) * nu * (1 - lam)
            df = 1 / (1 / df + 1 / observed)
        fmi = (riv + 2 / (df + 3)) / (riv + 1)
        se = np.sqrt(t)
        statistic = q_bar / se
    quantile = stats.t.ppf(0.5 + level / 2, df)
    table = pd.DataFrame({
        "estimate": q_bar, "within": u_bar, "between": b, "total": t, "std_error": se, "df": df, "riv": riv,
        "fmi": fmi, "lower": q_bar - quantile * se, "upper": q_bar + quantile * se, "statistic": statistic,
        "p_value": 2 * stats.t.sf(np.abs(statistic), df), "num_imputations": m,
    }, index=names)
    return table


def analyze(imputations: Sequence[pd.DataFrame], analysis: Callable, *, df_complete: float | None = None,
            level: float = 0.95) -> pd.DataFrame:
    """Run ``analysis`` on every imputed data set and pool by :func:`pool`.

    :param analysis: called with one completed DataFrame; returns either
        ``(estimate, variance)`` (numbers, arrays or Series) or a fitted
        statsmodels results object (its ``params`` and ``bse``; its
        ``df_resid`` is the complete-data df unless ``df_complete`` is given).
    """
    estimates, variances, dfs = [], [], []
    for number, frame in enumerate(imputations, start=1):
        out = analysis(frame)
        if hasattr(out, "params") and hasattr(out, "bse"):
            estimates.append(out.params)
            variances.append(out.bse ** 2)
            dfs.append(getattr(out, "df_resid", None))
        elif isinstance(out, tuple) and len(out) == 2:
            estimates.append(out[0])
            variances.append(out[1])
        else:
            raise ConfigError(f"analysis returned {type(out).__name__} for imputed data set {number}: expected "
                              "(estimate, variance) or a statsmodels results object")
    if df_complete is None and dfs and all(d is not None for d in dfs):
        df_complete = float(np.median(dfs))
    return pool(estimates, variances, df_complete=df_complete, level=level)


@dataclass
class TippingPoint:
    """Result of :func:`tipping_point`.

    ``table``: one row per delta (``delta``, ``estimate``, ``lower``,
    ``upper``, ``p_value``, ``significant``).  ``tipping_delta``: where the
    conclusion at the first delta of the scan changes, by linear
    interpolation of the interval bound that crosses 0 between the two grid
    points that bracket the change (None if it never changes on the grid).
    """

    table: pd.DataFrame
    tipping_delta: float | None
    term: str | int
    level: float


def tipping_point(estimator, df: pd.DataFrame, analysis: Callable, deltas: Sequence[float], *,
                  delta: Callable[[float], Delta] | None = None, term: str | int = 0, num_imputations: int = 20,
                  level: float = 0.95, seed: int | None = None, **impute_options) -> TippingPoint:
    """Delta-adjusted analyses over a grid of deltas, and the delta at which
    the conclusion changes.

    :param estimator: a fitted :class:`~pyro_dgmm.estimator.DeepMixedModel`.
    :param df: the data to impute (with rows for the planned visits after
        dropout, outcomes NaN).
    :param analysis: as in :func:`analyze`.
    :param deltas: the grid, starting from the reference (usually 0, MAR).
    :param delta: maps a grid value to the ``delta`` passed to
        :meth:`~pyro_dgmm.estimator.DeepMixedModel.impute` (e.g. only the
        treated arm: ``lambda d: lambda cells: d * (cells["arm"] == 1)``);
        None: the value itself, for every outcome.
    :param term: the row of the pooled table to follow (name or position).
    :param seed: the same at every delta, so the draws differ only by the shift.
    """
    deltas = [check_float("deltas", d) for d in deltas]
    if len(deltas) < 2:
        raise ConfigError(f"deltas needs at least 2 values, got {deltas}")
    num_imputations = check_int("num_imputations", num_imputations, minimum=2)
    rows = []
    for value in deltas:
        frames = estimator.impute(df, num_imputations, delta=value if delta is None else delta(value), seed=seed,
                                  **impute_options)
        pooled = analyze(frames, analysis, level=level)
        row = pooled.loc[term] if not isinstance(term, int) or term in pooled.index else pooled.iloc[term]
        rows.append({"delta": value, **{k: float(row[k]) for k in ("estimate", "lower", "upper", "p_value")}})
    table = pd.DataFrame(rows)
    table["significant"] = table["p_value"] < 1 - level
    return TippingPoint(table, _crossing(table), term, level)


def _crossing(table: pd.DataFrame) -> float | None:
    """The delta where an interval bound crosses 0, between the first two
    grid points whose significance differs from the first point's."""
    flips = np.flatnonzero(table["significant"].to_numpy() != table["significant"].iloc[0])
    if flips.size == 0:
        return None
    before, after = table.iloc[int(flips[0]) - 1], table.iloc[int(flips[0])]
    for bound in ("lower", "upper"):
        a, b = float(before[bound]), float(after[bound])
        if np.sign(a) != np.sign(b):
            return float(before["delta"] + a / (a - b) * (after["delta"] - before["delta"]))
    return float((before["delta"] + after["delta"]) / 2)  # significance changed by the df alone
