"""Baseline covariates as a design matrix, learned once and replayed.

Covariates are given either as a list of baseline columns
(:class:`CovariateEncoder`: numerics standardised, categories in treatment
contrasts) or as a Wilkinson formula such as ``"age * sex + C(trt)"``
(:class:`FormulaEncoder`, built by formulaic).  Either encoder learns its
state (means and SDs, category levels, transform state) from the training
baseline (one row per subject) and replays it on new subjects, so a model
never sees differently coded inputs; a level not seen in training is a
:class:`~pyro_dgmm.errors.DataError`.  :class:`~pyro_dgmm.data.DataSchema`
holds the fitted encoder and saves it as plain values.

>>> parse_covariate_formula("age + C(arm)")
('age + C(arm)', ['age', 'arm'])
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .frames import as_numeric


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
            values = as_numeric(baseline, col, "covariate")
            parts.append(((values - mean) / sd)[:, None])
        for col, levels in self.categorical.items():
            values = baseline[col].astype(str)
            refuse_unseen_levels(values, levels, col)
            parts.append((values.to_numpy()[:, None] == np.array(levels[1:])[None, :]).astype(float))
        return np.concatenate(parts, axis=1)


def refuse_unseen_levels(values: pd.Series, levels: list, column: str, context: str = "") -> None:
    """Raise a :class:`~pyro_dgmm.errors.DataError` naming ``column``, the
    levels of ``values`` not among the fitted ``levels`` and the first
    subjects (the index) that have them."""
    unseen = ~values.isin(levels)
    if unseen.any():
        raise DataError(
            f"covariate column '{column}' has levels not seen when the model was fitted: "
            f"{sorted(map(str, values[unseen].unique()))} for subjects {list(values.index[unseen][:5])}; "
            f"known levels are {levels}{context}"
        )


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
            refuse_unseen_levels(baseline[column], levels, column, f" (covariates formula {self.formula!r})")

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


