"""Type and range checks of user options, with messages that name the option.

Every public entry point (:class:`~pyro_dgmm.estimator.DeepMixedModel`,
:class:`~pyro_dgmm.fit_config.FitConfig`, :class:`~pyro_dgmm.impute.ImputationConfig`,
:func:`~pyro_dgmm.predict.predict`, ...) checks its options here before any
work starts, so ``latent_dim=2.5``, ``max_epochs="10"`` or
``fitted_values(num_samples=0)`` fail at once with a
:class:`~pyro_dgmm.errors.ConfigError` that says which option was wrong and
what it expects, rather than deep inside torch.

The checks return the value normalised to a plain Python type: numpy
scalars (``np.int64(3)``, ``np.float32(0.1)``) are accepted where an int or
a float is meant and come back as ``int``/``float``, so nothing downstream
(saved files included) holds a numpy type.  Booleans are not integers here
(``True`` is refused where a count is meant), and integral floats are not
integers (``2.0`` is refused where an integer is meant: it is usually the
result of a computation that was meant to be rounded).

Example::

    >>> from pyro_dgmm.options import check_int, check_keywords
    >>> import numpy as np
    >>> check_int("max_epochs", np.int64(5))
    5
    >>> check_int("max_epochs", 2.5)
    Traceback (most recent call last):
    ...
    pyro_dgmm.errors.ConfigError: max_epochs must be a positive integer, got 2.5 (float)
    >>> check_keywords("fit", {"max_epoch": 5}, ["max_epochs", "seed"])
    Traceback (most recent call last):
    ...
    pyro_dgmm.errors.ConfigError: fit got an unknown option 'max_epoch'; did you mean 'max_epochs'?
"""
from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np

from .errors import ConfigError


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value, *, minimum: int | None = 1, none: bool = False) -> int | None:
    """``value`` as a Python ``int`` >= ``minimum`` (None: no bound); None
    passes through if ``none``.  Python and numpy integers are accepted;
    booleans, floats and strings are not."""
    if value is None and none:
        return None
    kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")
    expected = kind + (" or None" if none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be {expected}, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be {expected}, got {value}")
    return value


def check_float(name: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, none: bool = False) -> float | None:
    """``value`` as a finite Python ``float`` in the interval given by
    ``low``/``high`` (open at either end if ``low_open``/``high_open``); None
    passes through if ``none``.  Python and numpy ints and floats are
    accepted; booleans and strings are not."""
    if value is None and none:
        return None
    interval = ""
    if low is not None and high is not None:
        interval = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        interval = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        interval = f" {'<' if high_open else '<='} {high:g}"
    expected = f"a number{interval}" + (" or None" if none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be {expected}, got {_describe(value)}")
    value = float(value)
    outside = (not math.isfinite(value)
               or (low is not None and (value <= low if low_open else value < low))
               or (high is not None and (value >= high if high_open else value > high)))
    if outside:
        raise ConfigError(f"{name} must be {expected}, got {value:g}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` as a Python ``bool``; ``True``/``False`` and numpy booleans
    only (not 0/1 or strings such as ``'false'``, which is truthy)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {_describe(value)}")


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise the error lists them
    and suggests the closest one."""
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    hint = suggestion(value, choices)
    raise ConfigError(f"{name} must be one of {choices}, got {_describe(value)}{hint}")


def check_str(name: str, value) -> str:
    """``value`` as a plain ``str`` if it is a non-empty string (a column
    name, for example; numpy strings are converted)."""
    if isinstance(value, str) and value:
        return str(value)
    raise ConfigError(f"{name} must be a non-empty string, got {_describe(value)}")


def check_names(option: str, names) -> list[str]:
    """``names`` (column names) as a list; a bare string is refused, as it
    would otherwise be read as a list of one-letter columns (``covariates``
    takes a string as a formula before this check)."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ConfigError(f"{option} must be a list of column names, e.g. ['age'] (or, for covariates, a "
                          f"formula such as 'age * sex'), got {names!r}")
    return [check_str(f"{option}[{k}]", name) for k, name in enumerate(names)]


def check_keywords(where: str, given: Mapping[str, object], valid: Iterable[str]) -> None:
    """Refuse keyword options of ``where`` that are not in ``valid``, naming
    each and suggesting the closest valid name (a misspelled option would
    otherwise be a TypeError far from the call, or silently ignored)."""
    valid = sorted(valid)
    unknown = [key for key in given if key not in valid]
    if not unknown:
        return
    key = unknown[0]
    hint = suggestion(key, valid)
    more = f" (and {unknown[1:]})" if len(unknown) > 1 else ""
    raise ConfigError(f"{where} got an unknown option '{key}'{more}{hint or f'; valid options: {valid}'}")


def suggestion(value, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``value``
    (:func:`difflib.get_close_matches`), or ``""`` when none is close."""
    if not isinstance(value, str):
        return ""
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in reversed(choices)}  # case-insensitive; the first spelling wins
    match = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean '{lowered[match[0]]}'?" if match else ""
