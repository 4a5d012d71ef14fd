"""Checks on the columns of a long DataFrame, and the order of its visits.

The data layer's validation helpers: every failure is a
:class:`~pyro_dgmm.errors.DataError` naming the column and the rows, so the
analyst can find the bad cells.  Tensors are float32, so values beyond its
range (about 3.4e38) are refused here rather than silently becoming inf.
Visits are ordered by subject, then time, with one sort that also serves
the duplicate-visit and constant-covariate checks.

>>> import numpy as np
>>> subject, times = np.array([1, 0, 0, 1]), np.array([0.0, 2.0, 1.0, 1.0])
>>> visit_order(subject, times).tolist()
[2, 1, 0, 3]
>>> duplicated_visits(subject, times, visit_order(subject, times)).tolist()
[False, False, False, False]
"""
from __future__ import annotations

import difflib
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataError, describe_rows


def require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """DataError naming the ``columns`` absent from ``df`` (with the closest
    present name as a hint) and listing the columns it has."""
    missing = [c for c in columns if c not in df.columns]
    if not missing:
        return
    hints = []
    for name in missing:
        close = difflib.get_close_matches(str(name), [str(c) for c in df.columns], n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise DataError(
        f"column {', '.join(hints)} not found in the DataFrame; "
        f"its columns are {list(df.columns)}"
    )


def as_numeric(df: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """Column as float64, with a DataError naming the rows that are not numbers."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        raise DataError(
            f"{what} column '{column}' must be numeric; non-numeric values at "
            f"{describe_rows(df.index[bad])} (e.g. {df[column][bad].iloc[0]!r})"
        )
    return values.to_numpy(dtype=np.float64, copy=True)


def require_finite(values: np.ndarray, df: pd.DataFrame, column: str, what: str) -> None:
    """DataError naming the rows of ``df`` whose ``values`` (its ``column``,
    a ``what`` such as 'time' or 'covariate') are missing or infinite."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(
            f"{what} column '{column}' has missing or infinite values at "
            f"{describe_rows(df.index[bad])}; {what} values must be finite"
        )


#: Largest magnitude a float32 tensor holds (about 3.4e38).
FLOAT32_MAX = float(np.finfo(np.float32).max)

def require_float32(values: np.ndarray, df: pd.DataFrame, column: str, what: str) -> None:
    """DataError naming the rows whose (centred) values overflow float32."""
    with np.errstate(invalid="ignore"):
        bad = np.abs(values) > FLOAT32_MAX
    if bad.any():
        raise DataError(
            f"{what} column '{column}' has values beyond the float32 range (+-{FLOAT32_MAX:.3g}) at "
            f"{describe_rows(df.index[bad])} (e.g. {float(values[bad][0]):g}); the model computes in float32: "
            "rescale the column (e.g. divide it by a power of ten)"
        )


def visit_order(subject: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Positions that sort rows by ``subject`` (integer codes), then by time.

    Equivalent to ``np.lexsort((times, subject))``.  Frames usually arrive
    with each subject's visits in time order; then a stable integer sort of
    the codes alone is the answer, about a hundred times cheaper than the
    full lexsort of float times (seconds at a million subjects)."""
    order = np.argsort(subject, kind="stable")
    s, t = subject[order], times[order]
    if np.all((s[1:] != s[:-1]) | (t[1:] >= t[:-1])):
        return order
    return np.lexsort((times, subject))


def duplicated_visits(subject: np.ndarray, times: np.ndarray, order: np.ndarray) -> np.ndarray:
    """True at every row whose (subject, time) pair occurs more than once;
    ``order`` is :func:`visit_order` of the same rows."""
    s, t = subject[order], times[order]
    same = (s[1:] == s[:-1]) & (t[1:] == t[:-1])
    flags = np.zeros(len(order), dtype=bool)
    flags[order[1:][same]] = True
    flags[order[:-1][same]] = True
    return flags


def varying_within(subject: np.ndarray, values: pd.Series, order: np.ndarray) -> np.ndarray:
    """True at every row of a subject whose ``values`` are not all equal
    (``values`` without missing entries); ``order`` groups the rows by subject
    (:func:`visit_order` does).  A min/max per subject: linear, where a pandas
    ``groupby.nunique`` hashes."""
    numeric = pd.api.types.is_numeric_dtype(values)  # bool too
    codes = values.to_numpy(dtype=np.float64) if numeric else pd.factorize(values)[0]  # no hashing of numbers
    s, c = subject[order], codes[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    varies = np.minimum.reduceat(c, starts) != np.maximum.reduceat(c, starts)
    flags = np.zeros(subject.max() + 1, dtype=bool)
    flags[s[starts]] = varies
    return flags[subject]


