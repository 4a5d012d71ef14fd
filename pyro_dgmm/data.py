"""From a long-format DataFrame to padded tensors, and back.

A long DataFrame has one row per planned measurement occasion (a *visit*):
a subject id, a time, one column per outcome (``NaN`` = not observed) and
baseline covariates that are constant within a subject.

:class:`DataSchema` learns, once, everything needed to turn such a frame
into tensors: outcome families, covariate scalers and category levels,
encoder-input standardisation and the fitted time basis.  The same schema
is replayed on new data (prediction for new subjects, histories), so a
model never sees differently scaled inputs.

:class:`~pyro_dgmm.longitudinal.LongitudinalData` holds the padded tensors
(its module lists their shapes); it is re-exported here, the usual import.
The pieces a schema is made of have modules of their own: covariate
encoders (:mod:`pyro_dgmm.covariates`), time conversion
(:mod:`pyro_dgmm.times`) and column checks (:mod:`pyro_dgmm.frames`).

Numerics.  Tensors are float32, whose 24-bit mantissa resolves about 1 in
1.7e7: times like 1e9 + (0..10) or outcomes around 1e7 with noise SD 0.5
would lose most of their information in the cast.  So every value is
centred in float64 first: times are measured from the earliest training
time (``time_origin``), Gaussian outcomes have their training mean
(``outcome_shift``) subtracted, and every output on the outcome scale adds
the shift back in float64 (:meth:`~pyro_dgmm.longitudinal.LongitudinalData.response_values`).
Values beyond the float32 range (about 3.4e38) are refused with a
:class:`~pyro_dgmm.errors.DataError` naming the column and rows.

Time columns may be numeric, ``datetime64`` (tz-naive or tz-aware) or
``timedelta64`` (:mod:`pyro_dgmm.times` converts them to model time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .bases import DEFAULT_TIME_BASIS, TimeBasis, basis_from_spec, parse_basis
# Re-exported (this module is the documented entry point of the data layer): LongitudinalData,
# the covariate encoders, levels_of, TIME_UNITS, time_kind and the visit-order helpers.
from .covariates import CovariateEncoder, FormulaEncoder, levels_of, parse_covariate_formula  # noqa: F401
from .errors import ConfigError, DataError, describe_rows
from .families import Family, get_family
from .frames import (as_numeric, duplicated_visits, require_columns, require_finite, require_float32,
                     varying_within, visit_order)
from .longitudinal import LongitudinalData
from .times import TIME_UNITS, model_times, nanoseconds, time_kind, time_numbers, user_times


@dataclass
class DataSchema:
    """Everything learned from the training frame and replayed on new data.

    Build it with :meth:`fit`; turn any frame with the same columns into
    :class:`~pyro_dgmm.longitudinal.LongitudinalData` with :meth:`transform`.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"id": [1, 1, 2], "time": [0.0, 2.0, 1.0], "y": [1.0, 3.0, 2.0]})
    >>> schema = DataSchema.fit(df, id_col="id", time_col="time", outcomes={"y": "gaussian"})
    >>> schema.outcomes, schema.shift.tolist(), schema.time_origin
    (['y'], [2.0], 0.0)
    >>> schema.transform(df).times.tolist()
    [[0.0, 2.0], [1.0, 1.0]]
    """

    id_col: str
    time_col: str
    families: dict[str, Family]
    covariates: list[str]  # the covariate columns read (of the formula, if given as one)
    covariate_encoder: CovariateEncoder | FormulaEncoder
    time_basis: TimeBasis
    encoder_center: np.ndarray  # (K,) mean of family.encode(y) over observed cells
    encoder_scale: np.ndarray  # (K,) its SD
    filler: np.ndarray  # (K,) a valid observed value put into unobserved cells
    initial_offset: np.ndarray  # (K,) family.initial_offset of the observed values
    initial_scale: np.ndarray  # (K,)
    initial_dispersion: list  # (K,) float or None
    time_kind: str = "numeric"  # of the training time column: 'numeric', 'datetime' or 'timedelta'
    time_unit: str = "days"  # what one unit of model time is, for datetime/timedelta times (TIME_UNITS)
    time_origin: float | int = 0.0  # earliest training time: a number, or int nanoseconds (datetimes in UTC)
    time_zone: str | None = None  # of tz-aware datetime training times
    outcome_shift: np.ndarray | None = None  # (K,) float64 subtracted from the outcomes; None: zeros

    @property
    def outcomes(self) -> list[str]:
        return list(self.families)

    @property
    def shift(self) -> np.ndarray:
        """(K,) float64 ``outcome_shift``: the training mean of outcomes whose
        family is ``shift_invariant`` (Gaussian), 0 for the others (whose
        support a shift would break)."""
        return np.zeros(len(self.families)) if self.outcome_shift is None else self.outcome_shift

    def relative_times(self, df: pd.DataFrame) -> np.ndarray:
        """The time column of ``df`` in model time, float64: ``t - time_origin``
        for numeric times, ``(t - time_origin) / time_unit`` for datetimes and
        timedeltas (an exact int64 subtraction in nanoseconds first).

        Raises:
            DataError: the column's type (numeric, datetime, timedelta,
                tz-aware or not) is not the training column's.
        """
        self.check_time_type(df[self.time_col])
        return model_times(df, self.time_col, self.time_kind, self.time_unit, self.time_origin)

    def add_offsets(self, times: pd.Series, offsets: np.ndarray) -> pd.Series:
        """``times`` (the user's time type) plus ``offsets`` in model time
        (float64; ``time_unit`` for datetimes and timedeltas, rounded to the
        nanosecond)."""
        if self.time_kind == "numeric":
            return pd.to_numeric(times).astype(np.float64) + offsets
        ns = np.round(np.asarray(offsets, dtype=np.float64) * TIME_UNITS[self.time_unit]).astype(np.int64)
        return times + pd.to_timedelta(ns, unit="ns")

    def elapsed(self, later: pd.Series, earlier: pd.Series) -> np.ndarray:
        """``later - earlier`` (the user's time type) in model time, float64."""
        if self.time_kind == "numeric":
            return pd.to_numeric(later).to_numpy(np.float64) - pd.to_numeric(earlier).to_numpy(np.float64)
        return ((later - earlier) / pd.Timedelta(TIME_UNITS[self.time_unit], unit="ns")).to_numpy(np.float64)

    def time_grid(self, times, *, relative: bool = False) -> pd.Series:
        """A sequence of times given by the user (prediction times, a curve's
        grid) checked and returned as a Series of the training time type;
        with ``relative``, offsets as float64 model time instead: numbers
        (in model time: ``time_unit`` for datetime columns) or timedeltas.

        Raises:
            DataError: empty, missing or non-finite values, or values of
                another type than the training time column (named).
        """
        values = pd.Series(list(times) if np.ndim(times) else [times])
        if values.empty:
            raise DataError(f"no times given for the time column '{self.time_col}'")
        frame = values.to_frame(self.time_col)
        if relative and self.time_kind != "numeric" and time_kind(values) == "timedelta":
            return pd.Series(model_times(frame, self.time_col, "timedelta", self.time_unit, 0))
        if relative or self.time_kind == "numeric":
            if time_kind(values) != "numeric":
                raise DataError(f"times for the time column '{self.time_col}' must be numbers"
                                f"{' (offsets in ' + self.time_unit + ') or timedeltas' if relative else ''}; "
                                f"got {values.dtype} values such as {values.iloc[0]!r}")
            numbers = as_numeric(frame, self.time_col, "time")
            require_finite(numbers, frame, self.time_col, "time")
            return pd.Series(numbers)
        self.check_time_type(values)
        time_numbers(frame, self.time_col)  # NaT
        return values

    def check_time_type(self, series: pd.Series) -> None:
        """DataError unless ``series`` has the training time column's type
        (numeric, datetime or timedelta; tz-aware or not)."""
        kind = time_kind(series)
        zone = getattr(series.dt, "tz", None) if kind == "datetime" else None
        wanted = {"numeric": "numbers", "datetime": "datetimes (datetime64)", "timedelta": "timedeltas"}
        if kind != self.time_kind:
            hint = {"datetime": f"pd.to_datetime(df['{self.time_col}'])",
                    "timedelta": f"pd.to_timedelta(df['{self.time_col}'])",
                    "numeric": f"numbers in the training units (not {wanted[kind]})"}[self.time_kind]
            raise DataError(
                f"time column '{self.time_col}' holds {wanted[kind]} but the model was fitted with "
                f"{wanted[self.time_kind]}; give it the training type, e.g. {hint}"
            )
        if kind == "datetime" and (zone is None) != (self.time_zone is None):
            raise DataError(
                f"time column '{self.time_col}' is {'tz-aware' if zone is not None else 'tz-naive'} but the "
                f"model was fitted with {'tz-aware' if self.time_zone else 'tz-naive'} datetimes; use "
                f"df['{self.time_col}'].dt.tz_localize(...) or .dt.tz_convert(None) to match"
            )

    @classmethod
    def fit(
        cls,
        df: pd.DataFrame,
        *,
        id_col: str,
        time_col: str,
        outcomes: Mapping[str, str | Family],
        covariates: Sequence[str] | str = (),
        time_basis: str | TimeBasis = DEFAULT_TIME_BASIS,
        time_unit: str = "days",
    ) -> "DataSchema":
        """Learn the schema from a training frame (validating it on the way).

        ``covariates`` is a list of baseline columns (:class:`~pyro_dgmm.covariates.CovariateEncoder`)
        or a formula such as ``"age * sex + C(trt)"`` (:class:`~pyro_dgmm.covariates.FormulaEncoder`).

        ``time_unit`` (a key of :data:`~pyro_dgmm.times.TIME_UNITS`) is the unit of model time
        for a datetime or timedelta time column, measured from the earliest
        training visit; numeric times keep their units and are measured from
        their minimum.  Outcomes of ``shift_invariant`` families (Gaussian)
        are shifted by their training mean (module docstring)."""
        if not outcomes:
            raise ConfigError("at least one outcome is needed: outcomes={'column': 'family'}")
        if not isinstance(time_unit, str) or time_unit not in TIME_UNITS:
            raise ConfigError(f"time_unit must be one of {list(TIME_UNITS)}; got {time_unit!r}")
        families = {str(name): get_family(spec) for name, spec in outcomes.items()}
        formula = None
        if isinstance(covariates, str):
            formula, covariates = parse_covariate_formula(covariates)
        _validate_frame(df, id_col, time_col, families, list(covariates), require_observed=True)
        kind = time_kind(df[time_col])
        origin = (float(as_numeric(df, time_col, "time").min()) if kind == "numeric"
                  else int(nanoseconds(df[time_col]).min()))
        zone = getattr(df[time_col].dt, "tz", None) if kind == "datetime" else None
        timing = dict(time_kind=kind, time_unit=time_unit, time_origin=origin,
                      time_zone=None if zone is None else str(zone))
        basis = parse_basis(time_basis)
        basis.fit(model_times(df, time_col, kind, time_unit, origin))
        baseline = _baseline(df, id_col, list(covariates))
        centers, scales, fillers, offsets, out_scales, dispersions, shifts = [], [], [], [], [], [], []
        for name, family in families.items():
            observed = as_numeric(df, name, "outcome")
            observed = observed[~np.isnan(observed)]
            if observed.size == 0:
                raise DataError(
                    f"outcome column '{name}' has no observed value (every row is NaN); drop it from "
                    "outcomes or give it data"
                )
            shifts.append(float(observed.mean()) if family.shift_invariant else 0.0)
            observed = observed - shifts[-1]  # float64, before any float32 cast
            encoded = family.encode(torch.as_tensor(observed)).numpy()
            sd = float(encoded.std())
            centers.append(float(encoded.mean()))
            scales.append(sd if sd > 0 else 1.0)
            fillers.append(float(np.quantile(observed, 0.5, method="lower")))
            offsets.append(family.initial_offset(observed))
            out_scales.append(family.initial_scale(observed))
            dispersions.append(family.initial_dispersion(observed))
        return cls(
            id_col=id_col,
            time_col=time_col,
            families=families,
            covariates=list(covariates),
            covariate_encoder=(FormulaEncoder.fit(baseline, formula) if formula is not None
                               else CovariateEncoder.fit(baseline, list(covariates))),
            time_basis=basis,
            encoder_center=np.array(centers),
            encoder_scale=np.array(scales),
            filler=np.array(fillers),
            initial_offset=np.array(offsets),
            initial_scale=np.array(out_scales),
            initial_dispersion=dispersions,
            **timing,
            outcome_shift=np.array(shifts),
        )

    @classmethod
    def fit_transform(cls, df: pd.DataFrame, **options) -> tuple["DataSchema", "LongitudinalData"]:
        """:meth:`fit` (``options`` as there), then :meth:`transform` of the same
        frame, validating it once rather than twice (seconds at a million subjects)."""
        schema = cls.fit(df, **options)
        return schema, _build(schema, df, torch.float32)

    def transform(
        self, df: pd.DataFrame, *, require_observed: bool = True, dtype=torch.float32
    ) -> "LongitudinalData":
        """Validate ``df`` against this schema and build padded tensors.

        ``require_observed=False`` accepts subjects with no observed outcome
        (e.g. new subjects known only by baseline covariates, for prediction);
        outcome columns may then be absent altogether.
        """
        return _build(self, self.validate(df, require_observed=require_observed), dtype)

    def validate(self, df: pd.DataFrame, *, require_observed: bool = True) -> pd.DataFrame:
        """Check ``df`` as :meth:`transform` does (raising a DataError that
        names the column and rows) without building tensors; returns a copy,
        with absent outcome columns added as NaN if ``require_observed=False``."""
        df = df.copy()
        for name in self.families:
            if name not in df.columns and not require_observed:
                df[name] = np.nan
        _validate_frame(
            df, self.id_col, self.time_col, self.families, self.covariates, require_observed
        )
        self.check_time_type(df[self.time_col])
        return df

    def to_spec(self) -> dict:
        """A plain, picklable description (for saving a fitted model)."""
        return {
            "id_col": self.id_col,
            "time_col": self.time_col,
            "families": {k: f.to_spec() for k, f in self.families.items()},
            "covariates": self.covariates,
            "covariate_encoder": self.covariate_encoder.to_spec() if isinstance(
                self.covariate_encoder, FormulaEncoder) else {
                "numeric": self.covariate_encoder.numeric,
                "categorical": self.covariate_encoder.categorical,
                "contrasts": "treatment",
            },
            "time_basis": self.time_basis.to_spec(),
            "encoder_center": self.encoder_center.tolist(),
            "encoder_scale": self.encoder_scale.tolist(),
            "filler": self.filler.tolist(),
            "initial_offset": self.initial_offset.tolist(),
            "initial_scale": self.initial_scale.tolist(),
            "initial_dispersion": list(self.initial_dispersion),
            "time_kind": self.time_kind,
            "time_unit": self.time_unit,
            "time_origin": self.time_origin,
            "time_zone": self.time_zone,
            "outcome_shift": self.shift.tolist(),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "DataSchema":
        """The schema described by :meth:`to_spec`'s output."""
        covariates = spec["covariate_encoder"]
        if "formula" in covariates:
            encoder = FormulaEncoder.from_spec(covariates)
        elif covariates["categorical"] and covariates.get("contrasts") != "treatment":
            raise DataError(f"this model was saved with one-hot categorical covariates "
                            f"{sorted(covariates['categorical'])} (before treatment contrasts); refit it")
        else:
            encoder = CovariateEncoder({k: tuple(v) for k, v in covariates["numeric"].items()},
                                       {k: list(v) for k, v in covariates["categorical"].items()})
        return cls(
            id_col=spec["id_col"],
            time_col=spec["time_col"],
            families={k: get_family(f) for k, f in spec["families"].items()},
            covariates=list(spec["covariates"]),
            covariate_encoder=encoder,
            time_basis=basis_from_spec(spec["time_basis"]),
            encoder_center=np.array(spec["encoder_center"]),
            encoder_scale=np.array(spec["encoder_scale"]),
            filler=np.array(spec["filler"]),
            initial_offset=np.array(spec["initial_offset"]),
            initial_scale=np.array(spec["initial_scale"]),
            initial_dispersion=list(spec["initial_dispersion"]),
            # files saved before these fields: numeric times and outcomes, no shift
            time_kind=spec.get("time_kind", "numeric"),
            time_unit=spec.get("time_unit", "days"),
            time_origin=spec.get("time_origin", 0.0),
            time_zone=spec.get("time_zone"),
            outcome_shift=np.array(spec.get("outcome_shift", [0.0] * len(spec["families"])), dtype=np.float64),
        )


def _validate_frame(
    df: pd.DataFrame,
    id_col: str,
    time_col: str,
    families: Mapping[str, Family],
    covariates: list[str],
    require_observed: bool,
) -> None:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if isinstance(df.columns, pd.MultiIndex):
        raise DataError(
            f"the DataFrame has MultiIndex columns ({list(df.columns[:3])} ...); flatten them first, e.g. "
            "df.columns = ['_'.join(map(str, c)) for c in df.columns]"
        )
    if len(df) == 0:
        raise DataError("the DataFrame is empty: there are no rows to fit")
    require_columns(df, [id_col, time_col, *families, *covariates])
    if df[id_col].isna().any():
        raise DataError(
            f"id column '{id_col}' has missing values at {describe_rows(df.index[df[id_col].isna()])}"
        )
    times = time_numbers(df, time_col)
    subject = pd.factorize(df[id_col])[0]
    order = visit_order(subject, times)  # one sort serves the duplicate and the covariate checks
    duplicated = duplicated_visits(subject, times, order)
    if duplicated.any():
        raise DataError(
            f"duplicated ({id_col}, {time_col}) pairs at {describe_rows(df.index[duplicated])}: "
            "each subject may have one row per time"
        )
    for name, family in families.items():
        values = as_numeric(df, name, "outcome")
        inf = np.isinf(values)
        if inf.any():
            raise DataError(
                f"outcome column '{name}' has infinite values at {describe_rows(df.index[inf])}"
            )
        require_float32(values, df, name, "outcome")
        invalid = family.invalid(values)
        if invalid.any():
            raise DataError(
                f"outcome column '{name}' ({family.name}): {family.support_description}; "
                f"offending values at {describe_rows(df.index[invalid])} "
                f"(e.g. {values[invalid][0]!r})"
            )
    for col in covariates:
        series = df[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            require_finite(series.to_numpy(dtype=np.float64), df, col, "covariate")
            require_float32(series.to_numpy(dtype=np.float64), df, col, "covariate")
        elif series.isna().any():
            raise DataError(
                f"covariate column '{col}' has missing values at "
                f"{describe_rows(df.index[series.isna()])}"
            )
        varying = varying_within(subject, series, order)
        if varying.any():
            raise DataError(
                f"covariate column '{col}' changes within subjects "
                f"{sorted(df.loc[varying, id_col].unique().tolist())[:5]} "
                f"({describe_rows(df.index[varying])}); covariates must be baseline "
                "values, constant within a subject"
            )
    if require_observed and families:
        observed = df[list(families)].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
        seen = observed.groupby(df[id_col], sort=False).any()
        if not seen.all():
            empty = seen.index[~seen].tolist()
            raise DataError(
                f"subjects with no observed outcome value in {list(families)}: ids "
                f"{empty[:5]}{' ...' if len(empty) > 5 else ''}; drop them or predict "
                "them as new subjects"
            )


def _baseline(df: pd.DataFrame, id_col: str, covariates: list[str]) -> pd.DataFrame:
    """One row per subject (in order of first appearance) with its covariates."""
    return df.groupby(id_col, sort=False)[covariates].first() if covariates else (
        pd.DataFrame(index=pd.unique(df[id_col]))
    )


def _build(schema: DataSchema, df: pd.DataFrame, dtype) -> "LongitudinalData":
    times = schema.relative_times(df)  # float64, centred before the cast below
    order = visit_order(pd.factorize(df[schema.id_col], sort=True)[0], times)
    df = df.iloc[order]
    times = times[order]
    require_float32(times, df, schema.time_col, "time")
    own_times = user_times(df[schema.time_col])
    subject, ids = pd.factorize(df[schema.id_col], sort=True)
    n = len(ids)
    counts = np.bincount(subject, minlength=n)
    slot = np.arange(len(df)) - np.repeat(np.cumsum(counts) - counts, counts)
    t_max = int(counts.max())

    names = schema.outcomes
    raw = np.column_stack([as_numeric(df, name, "outcome") for name in names]) - schema.shift  # float64
    for k, name in enumerate(names):
        require_float32(raw[:, k], df, name, "outcome")
    observed = ~np.isnan(raw)
    y = np.broadcast_to(schema.filler, (n, t_max, len(names))).copy()
    mask = np.zeros((n, t_max, len(names)), dtype=bool)
    y[subject, slot] = np.where(observed, raw, schema.filler)
    mask[subject, slot] = observed
    visit_mask = np.zeros((n, t_max), dtype=bool)
    visit_mask[subject, slot] = True
    last = np.cumsum(counts) - 1
    grid = np.repeat(times[last][:, None], t_max, axis=1)  # pad: last time
    grid[subject, slot] = times
    time_values = np.repeat(own_times[last][:, None], t_max, axis=1)
    time_values[subject, slot] = own_times

    y_t = torch.as_tensor(y, dtype=dtype)
    mask_t = torch.as_tensor(mask)
    encoded = torch.stack(
        [schema.families[name].encode(y_t[..., k]) for k, name in enumerate(names)], dim=-1
    )
    center = torch.as_tensor(schema.encoder_center, dtype=dtype)
    scale = torch.as_tensor(schema.encoder_scale, dtype=dtype)
    encoder_y = torch.where(mask_t, (encoded - center) / scale, torch.zeros((), dtype=dtype))
    times_t = torch.as_tensor(grid, dtype=dtype)
    baseline = _baseline(df, schema.id_col, schema.covariates).loc[ids]
    return LongitudinalData(
        y=y_t,
        mask=mask_t,
        visit_mask=torch.as_tensor(visit_mask),
        times=times_t,
        time_features=schema.time_basis.transform(times_t),
        encoder_y=encoder_y,
        covariates=torch.as_tensor(schema.covariate_encoder.transform(baseline), dtype=dtype),
        ids=np.asarray(ids),
        outcomes=names,
        id_col=schema.id_col,
        time_col=schema.time_col,
        time_values=time_values,
        time_zone=schema.time_zone,
        outcome_shift=schema.shift,
        time_origin=float(schema.time_origin) if schema.time_kind == "numeric" else 0.0,
    )


