"""From a long-format DataFrame to padded tensors, and back.

A long DataFrame has one row per planned measurement occasion (a *visit*):
a subject id, a time, one column per outcome (``NaN`` = not observed) and
baseline covariates that are constant within a subject.

:class:`DataSchema` learns, once, everything needed to turn such a frame
into tensors: outcome families, covariate scalers and category levels,
encoder-input standardisation and the fitted time basis.  The same schema
is replayed on new data (prediction for new subjects, histories), so a
model never sees differently scaled inputs.

:class:`LongitudinalData` holds the tensors (``N`` subjects, ``T`` visit
slots, ``K`` outcomes, ``F`` time features, ``P`` covariate columns):

=================  ===========  ==============================================
name               shape        meaning
=================  ===========  ==============================================
``y``              (N, T, K)    outcomes minus the schema's ``outcome_shift``
                                (float64 subtraction before the cast);
                                unobserved cells hold a valid filler
``mask``           (N, T, K)    True where the outcome was observed
``visit_mask``     (N, T)       True where the subject has a row (a visit)
``times``          (N, T)       visit times relative to the schema's time origin
                                (float64 subtraction before the cast); padding
                                repeats the last time
``time_features``  (N, T, F)    time basis at ``times`` (the talk's T_i)
``encoder_y``      (N, T, K)    standardised outcomes, 0 where unobserved
``encoder_mask``   (N, T, K)    optional: cells the encoder treats as observed
                                (imputation fills); None means ``mask``
``covariates``     (N, P)       standardised numerics, category contrasts
=================  ===========  ==============================================

Numerics.  Tensors are float32, whose 24-bit mantissa resolves about 1 in
1.7e7: times like 1e9 + (0..10) or outcomes around 1e7 with noise SD 0.5
would lose most of their information in the cast.  So every value is
centred in float64 first: times are measured from the earliest training
time (``time_origin``), Gaussian outcomes have their training mean
(``outcome_shift``) subtracted, and every output on the outcome scale adds
the shift back in float64 (:meth:`LongitudinalData.response_values`).
Values beyond the float32 range (about 3.4e38) are refused with a
:class:`~pyro_dgmm.errors.DataError` naming the column and rows.

Time columns may be numeric, ``datetime64`` (tz-naive or tz-aware) or
``timedelta64``.  Datetimes and timedeltas are converted to numbers in
``time_unit`` (``'days'`` by default) since the earliest training visit;
the same conversion is replayed on new data, and outputs carry the user's
own time values and type.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .bases import DEFAULT_TIME_BASIS, TimeBasis, basis_from_spec, parse_basis
from .errors import ConfigError, DataError, describe_rows
from .families import Family, get_family


def _require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
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


def _as_numeric(df: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """Column as float64, with a DataError naming the rows that are not numbers."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        raise DataError(
            f"{what} column '{column}' must be numeric; non-numeric values at "
            f"{describe_rows(df.index[bad])} (e.g. {df[column][bad].iloc[0]!r})"
        )
    return values.to_numpy(dtype=np.float64, copy=True)


def _require_finite(values: np.ndarray, df: pd.DataFrame, column: str, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(
            f"{what} column '{column}' has missing or infinite values at "
            f"{describe_rows(df.index[bad])}; {what} values must be finite"
        )


#: Largest magnitude a float32 tensor holds (about 3.4e38).
FLOAT32_MAX = float(np.finfo(np.float32).max)

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


def _require_float32(values: np.ndarray, df: pd.DataFrame, column: str, what: str) -> None:
    """DataError naming the rows whose (centred) values overflow float32."""
    with np.errstate(invalid="ignore"):
        bad = np.abs(values) > FLOAT32_MAX
    if bad.any():
        raise DataError(
            f"{what} column '{column}' has values beyond the float32 range (+-{FLOAT32_MAX:.3g}) at "
            f"{describe_rows(df.index[bad])} (e.g. {float(values[bad][0]):g}); the model computes in float32: "
            "rescale the column (e.g. divide it by a power of ten)"
        )


def time_kind(series: pd.Series) -> str:
    """``'datetime'`` (tz-naive or tz-aware), ``'timedelta'`` or ``'numeric'``."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_timedelta64_dtype(series):
        return "timedelta"
    return "numeric"


def _nanoseconds(series: pd.Series) -> np.ndarray:
    """A datetime (as UTC) or timedelta series as int64 nanoseconds; NaT: the int64 minimum."""
    if time_kind(series) == "datetime" and getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    kind = "datetime64[ns]" if time_kind(series) == "datetime" else "timedelta64[ns]"
    return series.to_numpy(dtype=kind).view(np.int64)


def _model_times(df: pd.DataFrame, column: str, kind: str, unit: str, origin: float | int) -> np.ndarray:
    """Model time, float64: ``t - origin`` (numeric), ``(t - origin) / unit``
    (datetime, timedelta: an exact int64 subtraction in nanoseconds first)."""
    if kind == "numeric":
        with np.errstate(over="ignore"):  # an overflow to inf is refused by _require_float32
            return _as_numeric(df, column, "time") - origin
    return (_nanoseconds(df[column]) - origin).astype(np.float64) / TIME_UNITS[unit]


def _time_numbers(df: pd.DataFrame, column: str) -> np.ndarray:
    """The time column as float64 for ordering and checks (datetimes and
    timedeltas in nanoseconds, relative to their minimum), with a DataError
    naming the rows that are missing, infinite or not numbers."""
    series = df[column]
    if time_kind(series) == "numeric":
        try:
            times = _as_numeric(df, column, "time")
        except DataError as err:
            raise DataError(
                f"{err}; for dates convert the column first, e.g. df['{column}'] = "
                f"pd.to_datetime(df['{column}']), and choose the model's time_unit ('days' by default)"
            ) from None
        _require_finite(times, df, column, "time")
        with np.errstate(over="ignore"):  # an overflow to inf is refused just below
            centred = times - times.min()
        _require_float32(centred, df, column, "time")
        return times
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(f"time column '{column}' has missing values (NaT) at {describe_rows(df.index[missing])}")
    ns = _nanoseconds(series)
    return (ns - ns.min()).astype(np.float64)


@dataclass
class CovariateEncoder:
    r"""Fitted covariate design: numeric columns standardised, categories in
    treatment contrasts.

    A categorical covariate (non-numeric or boolean column) with levels
    :math:`\ell_0, \ell_1, \dots, \ell_L` gets one 0/1 column per level
    after the first, named as patsy and statsmodels name them
    (``group[T.treated]``); the first level is the reference, absorbed by
    the intercept, so the linear model's coefficients are identified (each
    is the difference from the reference).  The levels are the training
    values in sorted order (of their strings), or, for a pandas
    ``Categorical``, the categories that occur, in the categorical's order:
    make the reference first with ``pd.Categorical(values,
    categories=[reference, ...])``.  ``categorical`` holds every level,
    the reference first.

    >>> import pandas as pd
    >>> baseline = pd.DataFrame({"age": [40.0, 60.0, 50.0], "arm": ["placebo", "drug", "placebo"]})
    >>> encoder = CovariateEncoder.fit(baseline, ["age", "arm"])
    >>> encoder.columns
    ['age', 'arm[T.placebo]']
    >>> encoder.transform(baseline)[:, 1].tolist()
    [1.0, 0.0, 1.0]
    >>> baseline["arm"] = pd.Categorical(baseline["arm"], categories=["placebo", "drug"])
    >>> CovariateEncoder.fit(baseline, ["arm"]).columns
    ['arm[T.drug]']
    """

    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, baseline: pd.DataFrame, columns: Sequence[str]) -> "CovariateEncoder":
        """Learn means and SDs of the numeric ``columns`` and the levels of the
        categorical ones from ``baseline`` (one row per subject)."""
        numeric, categorical = {}, {}
        for col in columns:
            series = baseline[col]
            if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
                categorical[col] = levels_of(series)
            else:
                values = series.to_numpy(dtype=np.float64)
                sd = float(values.std())
                numeric[col] = (float(values.mean()), sd if sd > 0 else 1.0)
        return cls(numeric, categorical)

    @property
    def columns(self) -> list[str]:
        """Design column names: numeric covariates, then ``col[T.level]`` for
        every level but the reference of each categorical one."""
        names = list(self.numeric)
        for col, levels in self.categorical.items():
            names += [f"{col}[T.{level}]" for level in levels[1:]]
        return names

    def transform(self, baseline: pd.DataFrame) -> np.ndarray:
        """The design matrix (subjects, len(columns)) of ``baseline``; a level
        not seen in training is a :class:`~pyro_dgmm.errors.DataError`."""
        parts = [np.zeros((len(baseline), 0))]
        for col, (mean, sd) in self.numeric.items():
            values = _as_numeric(baseline, col, "covariate")
            parts.append(((values - mean) / sd)[:, None])
        for col, levels in self.categorical.items():
            values = baseline[col].astype(str)
            unseen = ~values.isin(levels)
            if unseen.any():
                raise DataError(
                    f"covariate column '{col}' has levels not seen when the model "
                    f"was fitted: {sorted(values[unseen].unique().tolist())} for subjects "
                    f"{list(baseline.index[unseen][:5])}; known levels are {levels}"
                )
            parts.append((values.to_numpy()[:, None] == np.array(levels[1:])[None, :]).astype(float))
        return np.concatenate(parts, axis=1)


def levels_of(series: pd.Series) -> list[str]:
    """The levels of a categorical covariate, reference first (as strings):
    a ``Categorical``'s categories that occur, in its order; otherwise the
    sorted distinct values."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(series.dropna().astype(str))
        return [str(c) for c in series.cat.categories if str(c) in present]
    return sorted(series.astype(str).unique().tolist())


def _plain(value):
    """``value`` with numpy scalars and arrays, tuples and enums turned into
    Python numbers, lists and strings (what a save file may hold)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _formula_error(formula: str, error: Exception) -> str:
    """formulaic's message, first line only (its syntax errors add a
    coloured copy of the formula)."""
    return f"covariates formula {formula!r}: {str(error).strip().splitlines()[0]}"


def parse_covariate_formula(formula: str) -> tuple[str, list[str]]:
    """Check a covariates formula (right-hand side only, intercept kept) and
    return it with the data columns it reads, in order of appearance.

    Columns are the names a term looks up (``sex``, ```my col```) or uses
    inside a transform (``age`` in ``np.log(age)``, ``C(trt)``,
    ``bs(age, df=3)``); functions and modules (``np``, ``C``, ``contr``)
    are not columns.

    >>> parse_covariate_formula("age * sex + C(trt) + np.log(bmi)")[1]
    ['age', 'sex', 'trt', 'bmi']
    """
    import ast

    from formulaic import Formula
    from formulaic.errors import FormulaicError
    from formulaic.formula import SimpleFormula

    try:
        parsed = Formula(formula)
    except (FormulaicError, SyntaxError, ValueError) as error:
        raise ConfigError(_formula_error(formula, error)) from None
    if not isinstance(parsed, SimpleFormula):  # 'y ~ x' or several parts
        raise ConfigError(f"covariates formula {formula!r} must be a right-hand side only (e.g. 'age * sex + C(trt)'): "
                          "the outcomes are given by outcomes=")
    terms = list(parsed)
    if not any(not term.factors or str(term) == "1" for term in terms):
        raise ConfigError(f"covariates formula {formula!r} removes the intercept ('0 +' or '- 1'): the model has its "
                          "own intercept, so keep it in the formula (categorical terms are then coded as contrasts "
                          "against their reference level)")
    names: list[str] = []
    for term in terms:
        for factor in term.factors:
            kind = getattr(factor.eval_method, "value", factor.eval_method)
            if kind == "lookup":
                names.append(str(factor.expr))
            elif kind == "python":
                tree = ast.parse(str(factor.expr), mode="eval")
                called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
                bases = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
                names += [node.id for node in ast.walk(tree)
                          if isinstance(node, ast.Name) and id(node) not in called | bases]
    return formula, list(dict.fromkeys(names))


@dataclass
class FormulaEncoder:
    r"""Fitted covariate design from a Wilkinson formula such as
    ``"age * sex + C(trt)"`` (built by `formulaic
    <https://matthewwardrop.github.io/formulaic/>`_), replayed on new data.

    formulaic expands the formula on the training baseline (one row per
    subject): categorical factors into contrasts (treatment by default,
    ``C(trt, contr.sum)`` for others; levels sorted, or a pandas
    ``Categorical``'s order), interactions into products, transforms
    (``np.log(age)``, ``center(age)``, ``bs(age, df=3)``) into columns.
    Its intercept column is dropped: the model has its own.  What it
    learned (levels, transform state such as spline knots) is kept as plain
    values and replayed by :meth:`transform`, so new subjects get the same
    columns with the same codes.  A level not seen in training is a
    :class:`~pyro_dgmm.errors.DataError` naming the column and the level.

    As with the list form (:class:`CovariateEncoder`), design columns built
    from numeric values are standardised with their training mean and SD
    (``numeric``: column -> (mean, sd), these columns first), and contrast
    columns (terms of categorical factors only) are kept as 0/1 codes after
    them; so ``"age + sex"`` gives the same design as ``["age", "sex"]``.
    Unlike the list form, a boolean column enters a formula as a number
    (0/1, standardised); write ``C(flag)`` for a contrast.

    >>> import pandas as pd
    >>> baseline = pd.DataFrame({"age": [40.0, 60.0, 50.0], "arm": ["placebo", "drug", "placebo"]})
    >>> encoder = FormulaEncoder.fit(baseline, "age * arm")
    >>> encoder.columns
    ['age', 'age:arm[T.placebo]', 'arm[T.placebo]']
    >>> encoder.transform(baseline)[:, 2].tolist()
    [1.0, 0.0, 1.0]
    """

    formula: str
    numeric: dict[str, tuple[float, float]]  # standardised design columns -> (training mean, SD)
    contrasts: list[str]  # contrast columns, unscaled
    encoder_state: dict  # formulaic factor -> [kind, state] (levels of categorical factors)
    transform_state: dict  # formulaic stateful transforms' state (e.g. spline knots)

    @property
    def categorical(self) -> dict[str, list]:
        """Levels of each categorical factor of the formula, by its expression."""
        return {expr: list(state.get("categories", [])) for expr, (kind, state) in self.encoder_state.items()
                if kind == "categorical"}

    @property
    def columns(self) -> list[str]:
        """Design column names: the standardised ones, then the contrasts."""
        return [*self.numeric, *self.contrasts]

    @classmethod
    def fit(cls, baseline: pd.DataFrame, formula: str) -> "FormulaEncoder":
        """Expand ``formula`` on ``baseline`` (one row per subject) and learn
        the levels, transform state, means and SDs."""
        import formulaic

        formula, _ = parse_covariate_formula(formula)
        matrix = _formula_matrix(formula, baseline, lambda data: formulaic.model_matrix(
            formula, data, na_action="raise", ensure_full_rank=True))
        spec = matrix.model_spec
        kinds = {expr: kind.value for expr, (kind, _) in spec.encoder_state.items()}
        numeric, contrasts = {}, []
        for term in spec.structure:
            factors = term.term.factors
            if not factors or str(term.term) == "1":
                continue  # the intercept
            if all(kinds.get(str(f.expr)) == "categorical" for f in factors):
                contrasts += list(term.columns)
                continue
            for column in term.columns:
                values = matrix[column].to_numpy(dtype=np.float64)
                sd = float(values.std())
                numeric[column] = (float(values.mean()), sd if sd > 0 else 1.0)
        encoder_state = {expr: [kind.value, _plain({k: v for k, v in state.items() if k != "contrasts"})]
                         for expr, (kind, state) in spec.encoder_state.items()}
        return cls(formula, numeric, contrasts, encoder_state, _plain(spec.transform_state))

    def _spec(self):
        """The formulaic ``ModelSpec`` rebuilt from the stored plain state."""
        import copy

        from formulaic import ModelSpec
        from formulaic.parser.types import Factor

        return ModelSpec(formula=self.formula, ensure_full_rank=True, na_action="raise",
                         encoder_state={k: (Factor.Kind(kind), copy.deepcopy(state))
                                        for k, (kind, state) in self.encoder_state.items()},
                         transform_state=copy.deepcopy(self.transform_state))

    def _check_levels(self, baseline: pd.DataFrame) -> None:
        """Unseen levels of a categorical column (``sex`` or ``C(sex, ...)``)
        as a DataError naming the column, the levels and the subjects."""
        for expr, levels in self.categorical.items():
            match = re.fullmatch(r"C\(\s*(\w+)\s*(?:,.*)?\)", expr, flags=re.S)
            column = expr if expr in baseline.columns else match.group(1) if match else None
            if column is None or column not in baseline.columns:
                continue  # other expressions: formulaic's own warning, made an error in transform
            values = baseline[column]
            unseen = ~values.isin(levels)
            if unseen.any():
                raise DataError(
                    f"covariate column '{column}' has levels not seen when the model was fitted: "
                    f"{sorted(map(str, values[unseen].unique()))} for subjects {list(baseline.index[unseen][:5])}; "
                    f"known levels are {levels} (covariates formula {self.formula!r})"
                )

    def transform(self, baseline: pd.DataFrame) -> np.ndarray:
        """The design matrix (subjects, len(columns)) of ``baseline``."""
        self._check_levels(baseline)
        matrix = _formula_matrix(self.formula, baseline, self._spec().get_model_matrix)
        missing = [c for c in self.columns if c not in matrix.columns]
        if missing:
            raise DataError(f"covariates formula {self.formula!r} gave no columns {missing} on this data "
                            f"(it gave {list(matrix.columns)})")
        design = matrix[self.columns].to_numpy(dtype=np.float64)
        for j, (mean, sd) in enumerate(self.numeric.values()):
            design[:, j] = (design[:, j] - mean) / sd
        return design

    def to_spec(self) -> dict:
        """Plain types only (a save file is read with ``weights_only=True``)."""
        return {"formula": self.formula, "numeric": {k: list(v) for k, v in self.numeric.items()},
                "contrasts": list(self.contrasts), "encoder_state": self.encoder_state,
                "transform_state": self.transform_state}

    @classmethod
    def from_spec(cls, spec: dict) -> "FormulaEncoder":
        """The encoder :meth:`to_spec` described."""
        return cls(spec["formula"], {k: tuple(v) for k, v in spec["numeric"].items()}, list(spec["contrasts"]),
                   {k: [kind, dict(state)] for k, (kind, state) in spec["encoder_state"].items()},
                   dict(spec["transform_state"]))


def _formula_matrix(formula: str, baseline: pd.DataFrame, build):
    """``build(baseline)`` (a formulaic model matrix) with its failures as
    DataErrors: a missing column, a value a transform cannot take (NaN or
    infinite results, e.g. ``np.log`` of 0), an unseen level of a
    categorical expression."""
    import warnings

    from formulaic.errors import DataMismatchWarning, FormulaicError

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            matrix = build(baseline)
        except DataMismatchWarning as warning:
            raise DataError(f"covariates formula {formula!r}: levels not seen when the model was fitted "
                            f"({str(warning).split(':', 1)[-1].split('. They')[0].strip()})") from None
        except (FormulaicError, NameError, KeyError, ValueError, TypeError) as error:
            raise DataError(_formula_error(formula, error)) from None
    values = matrix.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        column = matrix.columns[bad.any(axis=0)][0]
        rows = baseline.index[bad.any(axis=1)]
        raise DataError(f"covariates formula {formula!r}: design column '{column}' is NaN or infinite for "
                        f"subjects {list(rows[:5])} (a transform of values outside its domain?)")
    return matrix


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


@dataclass
class DataSchema:
    """Everything learned from the training frame and replayed on new data.

    Build it with :meth:`fit`; turn any frame with the same columns into
    :class:`LongitudinalData` with :meth:`transform`.
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
        return _model_times(df, self.time_col, self.time_kind, self.time_unit, self.time_origin)

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
            return pd.Series(_model_times(frame, self.time_col, "timedelta", self.time_unit, 0))
        if relative or self.time_kind == "numeric":
            if time_kind(values) != "numeric":
                raise DataError(f"times for the time column '{self.time_col}' must be numbers"
                                f"{' (offsets in ' + self.time_unit + ') or timedeltas' if relative else ''}; "
                                f"got {values.dtype} values such as {values.iloc[0]!r}")
            numbers = _as_numeric(frame, self.time_col, "time")
            _require_finite(numbers, frame, self.time_col, "time")
            return pd.Series(numbers)
        self.check_time_type(values)
        _time_numbers(frame, self.time_col)  # NaT
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

        ``covariates`` is a list of baseline columns (:class:`CovariateEncoder`)
        or a formula such as ``"age * sex + C(trt)"`` (:class:`FormulaEncoder`).

        ``time_unit`` (a key of :data:`TIME_UNITS`) is the unit of model time
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
        origin = (float(_as_numeric(df, time_col, "time").min()) if kind == "numeric"
                  else int(_nanoseconds(df[time_col]).min()))
        zone = getattr(df[time_col].dt, "tz", None) if kind == "datetime" else None
        timing = dict(time_kind=kind, time_unit=time_unit, time_origin=origin,
                      time_zone=None if zone is None else str(zone))
        basis = parse_basis(time_basis)
        basis.fit(_model_times(df, time_col, kind, time_unit, origin))
        baseline = _baseline(df, id_col, list(covariates))
        centers, scales, fillers, offsets, out_scales, dispersions, shifts = [], [], [], [], [], [], []
        for name, family in families.items():
            observed = _as_numeric(df, name, "outcome")
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
    _require_columns(df, [id_col, time_col, *families, *covariates])
    if df[id_col].isna().any():
        raise DataError(
            f"id column '{id_col}' has missing values at {describe_rows(df.index[df[id_col].isna()])}"
        )
    times = _time_numbers(df, time_col)
    subject = pd.factorize(df[id_col])[0]
    order = visit_order(subject, times)  # one sort serves the duplicate and the covariate checks
    duplicated = duplicated_visits(subject, times, order)
    if duplicated.any():
        raise DataError(
            f"duplicated ({id_col}, {time_col}) pairs at {describe_rows(df.index[duplicated])}: "
            "each subject may have one row per time"
        )
    for name, family in families.items():
        values = _as_numeric(df, name, "outcome")
        inf = np.isinf(values)
        if inf.any():
            raise DataError(
                f"outcome column '{name}' has infinite values at {describe_rows(df.index[inf])}"
            )
        _require_float32(values, df, name, "outcome")
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
            _require_finite(series.to_numpy(dtype=np.float64), df, col, "covariate")
            _require_float32(series.to_numpy(dtype=np.float64), df, col, "covariate")
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
    _require_float32(times, df, schema.time_col, "time")
    user_times = _user_times(df[schema.time_col])
    subject, ids = pd.factorize(df[schema.id_col], sort=True)
    n = len(ids)
    counts = np.bincount(subject, minlength=n)
    slot = np.arange(len(df)) - np.repeat(np.cumsum(counts) - counts, counts)
    t_max = int(counts.max())

    names = schema.outcomes
    raw = np.column_stack([_as_numeric(df, name, "outcome") for name in names]) - schema.shift  # float64
    for k, name in enumerate(names):
        _require_float32(raw[:, k], df, name, "outcome")
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
    time_values = np.repeat(user_times[last][:, None], t_max, axis=1)
    time_values[subject, slot] = user_times

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


def _user_times(series: pd.Series) -> np.ndarray:
    """The user's time values as a numpy array: float64, or datetime64 (UTC
    for tz-aware columns) / timedelta64 in the column's own resolution."""
    kind = time_kind(series)
    if kind == "numeric":
        return pd.to_numeric(series).to_numpy(dtype=np.float64)
    if kind == "datetime" and series.dt.tz is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.to_numpy()


@dataclass(frozen=True)
class LongitudinalData:
    """Padded tensors for ``N`` subjects (see the module docstring for shapes).

    Subjects are sorted by id, visits by time.  Build it with
    :meth:`DataSchema.transform` (or the estimator); index it
    with :meth:`subset`; go back to long format with :meth:`to_long`.
    """

    y: torch.Tensor
    mask: torch.Tensor
    visit_mask: torch.Tensor
    times: torch.Tensor
    time_features: torch.Tensor
    encoder_y: torch.Tensor
    covariates: torch.Tensor
    ids: np.ndarray
    outcomes: list[str]
    id_col: str = "id"
    time_col: str = "time"
    encoder_mask: torch.Tensor | None = None  # what the encoder treats as observed; None: ``mask``
    # (N, T) the user's times (float64, datetime64 in UTC or timedelta64), for ``to_long``
    time_values: np.ndarray | None = None
    time_zone: str | None = None  # of tz-aware datetime times, restored by ``to_long``
    outcome_shift: np.ndarray | None = None  # (K,) float64 added back by ``response_values``; None: zeros
    time_origin: float = 0.0  # numeric times: ``times + time_origin`` are the user's (model time otherwise)

    @property
    def num_subjects(self) -> int:
        return self.y.shape[0]

    def response_values(self, values: torch.Tensor | np.ndarray) -> np.ndarray:
        """Values on the outcome scale of ``y`` (last axis: the K outcomes,
        e.g. fitted means or draws) back on the user's scale: float64, with
        ``outcome_shift`` added in float64 (module docstring)."""
        values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        values = values.astype(np.float64)
        return values if self.outcome_shift is None else values + self.outcome_shift

    @property
    def num_visits(self) -> int:
        return self.y.shape[1]

    @property
    def device(self) -> torch.device:
        return self.y.device

    def subset(self, index) -> "LongitudinalData":
        """The subjects at positions ``index`` (a slice, integer array or tensor)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        pos = np.arange(self.num_subjects)[index]
        return replace(self.minibatch(torch.as_tensor(pos, device=self.device)), ids=self.ids[pos],
                       time_values=None if self.time_values is None else self.time_values[pos])

    def chunks(self, size: int) -> Iterator["LongitudinalData"]:
        """Consecutive subsets of at most ``size`` subjects, in order."""
        for start in range(0, self.num_subjects, size):
            yield self.subset(slice(start, start + size))

    def minibatch(self, index: torch.Tensor) -> "LongitudinalData":
        """The subjects at ``index``, a tensor of positions on :attr:`device`,
        for a training step: the tensors are indexed where they live, with
        no round trip through host memory (on a GPU such a round trip waits
        for every queued kernel, each step).  The batch carries no ``ids``
        or ``time_values`` (empty and None): a step does not read them."""
        return replace(
            self,
            **{name: getattr(self, name)[index] for name in _TENSOR_FIELDS},
            ids=self.ids[:0],
            time_values=None,
            encoder_mask=None if self.encoder_mask is None else self.encoder_mask[index],
        )

    def pad(self, num_visits: int) -> "LongitudinalData":
        """The same subjects with ``num_visits`` (>= :attr:`num_visits`) visit
        slots; the new slots are padding (no visit, nothing observed, the
        last slot's time), e.g. to give every process of a partitioned fit
        the same record length."""
        extra = num_visits - self.num_visits
        if extra < 0:
            raise ValueError(f"cannot pad {self.num_visits} visit slots down to {num_visits}")
        if extra == 0:
            return self

        def grow(x, blank: bool):
            last = x[:, -1:].expand(-1, extra, *x.shape[2:])
            return torch.cat([x, torch.zeros_like(last) if blank else last], dim=1)

        return replace(
            self, y=grow(self.y, False), mask=grow(self.mask, True), visit_mask=grow(self.visit_mask, True),
            times=grow(self.times, False), time_features=grow(self.time_features, False),
            encoder_y=grow(self.encoder_y, True),
            encoder_mask=None if self.encoder_mask is None else grow(self.encoder_mask, True),
            time_values=None if self.time_values is None else np.concatenate(
                [self.time_values, np.repeat(self.time_values[:, -1:], extra, axis=1)], axis=1),
        )

    def to(self, device=None, dtype=None) -> "LongitudinalData":
        """Move tensors to ``device``; floating tensors also to ``dtype`` if given."""

        def move(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device) if device is not None else x
            return x.to(dtype) if dtype is not None and x.is_floating_point() else x

        return replace(self, **{name: move(getattr(self, name)) for name in _TENSOR_FIELDS},
                       encoder_mask=None if self.encoder_mask is None else move(self.encoder_mask))

    def to_long(self, values: Mapping[str, torch.Tensor | np.ndarray], *, all_slots: bool = False) -> pd.DataFrame:
        """Long DataFrame of per-cell ``values`` with the user's ids and times.

        ``values`` maps column names to arrays of shape (N, T); one row per
        visit (padding slots dropped unless ``all_slots``), sorted by subject
        and time, with columns ``id_col``, ``time_col`` and the given names.
        """
        keep = np.ones(self.visit_mask.shape, bool) if all_slots else self.visit_mask.cpu().numpy()
        subject, slot = np.nonzero(keep)
        times = (self.times.cpu().numpy() if self.time_values is None else self.time_values)[subject, slot]
        if self.time_zone is not None:
            times = pd.DatetimeIndex(times).tz_localize("UTC").tz_convert(self.time_zone)
        out = {self.id_col: self.ids[subject], self.time_col: times}
        for name, array in values.items():
            array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
            if array.shape != keep.shape:
                raise ValueError(f"values['{name}'] has shape {array.shape}, expected {keep.shape}")
            out[name] = array[subject, slot]
        return pd.DataFrame(out)

    def observed_long(self) -> pd.DataFrame:
        """The outcomes back in long format (NaN where unobserved)."""
        y = np.where(self.mask.cpu().numpy(), self.response_values(self.y), np.nan)
        return self.to_long({name: y[..., k] for k, name in enumerate(self.outcomes)})


_TENSOR_FIELDS = ("y", "mask", "visit_mask", "times", "time_features", "encoder_y", "covariates")
