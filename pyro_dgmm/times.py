"""Time columns: numbers, datetimes and timedeltas, and model time.

Time columns may be numeric, ``datetime64`` (tz-naive or tz-aware) or
``timedelta64``.  Datetimes and timedeltas are converted to numbers in a
``time_unit`` (a key of :data:`TIME_UNITS`; ``'days'`` by default) since
the earliest training visit, by an exact int64 subtraction in nanoseconds
before the division; numeric times are measured from their minimum.  The
same conversion is replayed on new data by
:class:`~pyro_dgmm.data.DataSchema`, and outputs carry the user's own time
values and type (:func:`user_times`).

>>> import pandas as pd
>>> visits = pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-08"])})
>>> time_kind(visits["t"])
'datetime'
>>> model_times(visits, "t", "datetime", "weeks", int(nanoseconds(visits["t"]).min())).tolist()
[0.0, 1.0]
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, describe_rows
from .frames import as_numeric, require_finite, require_float32

#: Units a datetime or timedelta time column is measured in, in nanoseconds
#: (a year is 365.25 days).
TIME_UNITS = {
    "seconds": 10 ** 9,
    "minutes": 60 * 10 ** 9,
    "hours": 3600 * 10 ** 9,
    "days": 86400 * 10 ** 9,
    "weeks": 7 * 86400 * 10 ** 9,
    "years": 36525 * 864 * 10 ** 9,
}


def time_kind(series: pd.Series) -> str:
    """``'datetime'`` (tz-naive or tz-aware), ``'timedelta'`` or ``'numeric'``."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_timedelta64_dtype(series):
        return "timedelta"
    return "numeric"


def nanoseconds(series: pd.Series) -> np.ndarray:
    """A datetime (as UTC) or timedelta series as int64 nanoseconds; NaT: the int64 minimum."""
    if time_kind(series) == "datetime" and getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    kind = "datetime64[ns]" if time_kind(series) == "datetime" else "timedelta64[ns]"
    return series.to_numpy(dtype=kind).view(np.int64)


def model_times(df: pd.DataFrame, column: str, kind: str, unit: str, origin: float | int) -> np.ndarray:
    """Model time, float64: ``t - origin`` (numeric), ``(t - origin) / unit``
    (datetime, timedelta: an exact int64 subtraction in nanoseconds first)."""
    if kind == "numeric":
        with np.errstate(over="ignore"):  # an overflow to inf is refused by require_float32
            return as_numeric(df, column, "time") - origin
    return (nanoseconds(df[column]) - origin).astype(np.float64) / TIME_UNITS[unit]


def time_numbers(df: pd.DataFrame, column: str) -> np.ndarray:
    """The time column as float64 for ordering and checks (datetimes and
    timedeltas in nanoseconds, relative to their minimum), with a DataError
    naming the rows that are missing, infinite or not numbers."""
    series = df[column]
    if time_kind(series) == "numeric":
        try:
            times = as_numeric(df, column, "time")
        except DataError as err:
            raise DataError(
                f"{err}; for dates convert the column first, e.g. df['{column}'] = "
                f"pd.to_datetime(df['{column}']), and choose the model's time_unit ('days' by default)"
            ) from None
        require_finite(times, df, column, "time")
        with np.errstate(over="ignore"):  # an overflow to inf is refused just below
            centred = times - times.min()
        require_float32(centred, df, column, "time")
        return times
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(f"time column '{column}' has missing values (NaT) at {describe_rows(df.index[missing])}")
    ns = nanoseconds(series)
    return (ns - ns.min()).astype(np.float64)


def user_times(series: pd.Series) -> np.ndarray:
    """The user's time values as a numpy array: float64, or datetime64 (UTC
    for tz-aware columns) / timedelta64 in the column's own resolution."""
    kind = time_kind(series)
    if kind == "numeric":
        return pd.to_numeric(series).to_numpy(dtype=np.float64)
    if kind == "datetime" and series.dt.tz is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.to_numpy()


