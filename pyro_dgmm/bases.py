r"""Time bases: the functions of time ``T_ij`` fed to the model's networks.

A :class:`TimeBasis` maps times ``t`` (shape ``(...,)``) to features
``T(t)`` (shape ``(..., num_features)``). None of the bases has an intercept
column: the networks have biases. A basis is first fitted to the observed
times (which sets, for example, the centring or the spline knots) and is then
a fixed, vectorised, differentiable map on tensors of any float dtype and
device.

Times outside the fitted range ``[t_min, t_max]`` follow the basis's
``extrapolation`` policy:

* ``'extend'`` (default): the formula is evaluated as is (a polynomial
  continues; a natural spline continues linearly, as natural splines do
  beyond their boundary knots);
* ``'clip'``: times are clamped to ``[t_min, t_max]`` first;
* ``'error'``: :class:`~pyro_dgmm.errors.DataError` naming how many times are
  out of range.

:class:`Fourier` is periodic, needs no fitting and has no policy.

Every basis is serialisable: ``basis.to_spec()`` is a JSON dict including the
fitted state and :func:`basis_from_spec` rebuilds an equal basis with an
identical transform. :func:`parse_basis` also accepts short strings such as
``'spline(4)+fourier(7)'``.

Example:

>>> import numpy as np, torch
>>> basis = parse_basis("poly(2)").fit(np.array([0.0, 1.0, 2.0, 3.0]))
>>> basis.num_features, tuple(basis.transform(torch.tensor([0.5, 1.5])).shape)
(2, (2, 2))
>>> parse_basis(basis.to_spec()) == basis
True
"""

from __future__ import annotations

import abc
import math
import re

import numpy as np
import torch

from pyro_dgmm.errors import ConfigError, DataError, NotFittedError

__all__ = [
    "TimeBasis",
    "Polynomial",
    "NaturalSpline",
    "Fourier",
    "CombinedBasis",
    "parse_basis",
    "basis_from_spec",
]

EXTRAPOLATION_POLICIES = ("extend", "clip", "error")
SCALE_SAMPLE = 2 ** 20  # at most this many fitted times (a fixed-seed draw) set a column's SD


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be a positive integer; got {value!r}")
    return int(value)


def _check_times(times) -> np.ndarray:
    """The times as a 1-d float64 array; non-empty and finite."""
    times = np.asarray(times, dtype=float)
    if times.ndim != 1:
        raise DataError(f"times must be a 1-d array; got shape {times.shape}")
    if times.size == 0:
        raise DataError("cannot fit a time basis to an empty array of times")
    bad = int(np.sum(~np.isfinite(times)))
    if bad:
        raise DataError(f"times must be finite; {bad} of {times.size} are NaN or infinite")
    return times


def _float_tensor(times: torch.Tensor) -> torch.Tensor:
    """``times`` as a tensor; integer tensors become the default float dtype."""
    times = torch.as_tensor(times)
    return times if times.is_floating_point() else times.to(torch.get_default_dtype())


class TimeBasis(abc.ABC):
    """Abstract time basis ``t -> T(t)``: shape ``(...,)`` to ``(..., num_features)``.

    ``a + b`` concatenates two bases into a :class:`CombinedBasis`.
    """

    #: Short name used in specs and in :func:`parse_basis` strings.
    name: str

    @property
    @abc.abstractmethod
    def num_features(self) -> int:
        """Number of columns of :meth:`transform`; known before fitting."""

    @property
    @abc.abstractmethod
    def is_fitted(self) -> bool:
        """Whether :meth:`transform` can be called."""

    @abc.abstractmethod
    def fit(self, times: np.ndarray) -> TimeBasis:
        """Learn the state from observed times (1-d, finite); returns ``self``.

        Fitting again overwrites the state.

        Raises:
            DataError: ``times`` is empty, not 1-d or not finite.
        """

    @abc.abstractmethod
    def transform(self, times: torch.Tensor) -> torch.Tensor:
        """Features of ``times``: shape ``(...,)`` to ``(..., num_features)``.

        The output has the dtype and device of ``times`` (integer input is
        converted to the default float dtype).

        Raises:
            NotFittedError: the basis needs fitting and was not fitted.
            DataError: extrapolation is ``'error'`` and some times are out of range.
        """

    @abc.abstractmethod
    def to_spec(self) -> dict:
        """JSON-serialisable dict, fitted state included, for :func:`basis_from_spec`."""

    def __add__(self, other):
        if not isinstance(other, TimeBasis):
            return NotImplemented
        return CombinedBasis([self, other])

    def __eq__(self, other):
        if not isinstance(other, TimeBasis):
            return NotImplemented
        return self.to_spec() == other.to_spec()

    __hash__ = None  # mutable: fit changes the state

    def __repr__(self) -> str:
        spec = self.to_spec()
        params = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k not in ("name", "state"))
        fitted = "" if self.is_fitted else ", unfitted"
        return f"{type(self).__name__}({params}{fitted})"


class RangeBasis(TimeBasis):
    """A basis fitted to the range ``[t_min, t_max]`` of the times, with an extrapolation policy.

    Subclasses implement :meth:`_fit_state`, :meth:`_features`,
    :meth:`_state` / :meth:`_set_state` and :meth:`_params`.
    """

    def __init__(self, extrapolation: str = "extend"):
        if extrapolation not in EXTRAPOLATION_POLICIES:
            raise ConfigError(
                f"extrapolation must be one of {EXTRAPOLATION_POLICIES}; got {extrapolation!r}"
            )
        self.extrapolation = extrapolation
        self.t_min: float | None = None
        self.t_max: float | None = None

    @property
    def is_fitted(self) -> bool:
        return self.t_min is not None

    def fit(self, times):
        times = _check_times(times)
        self._fit_state(times)
        self.t_min, self.t_max = float(times.min()), float(times.max())
        return self

    def transform(self, times):
        if not self.is_fitted:
            raise NotFittedError(f"{self!r} is not fitted: call .fit(times) before .transform()")
        times = _float_tensor(times)
        # the bounds in the dtype of the input, so that a float32 copy of a
        # fitted time is never "out of range" by rounding
        low, high = (torch.tensor(b, dtype=times.dtype, device=times.device)
                     for b in (self.t_min, self.t_max))
        if self.extrapolation == "clip":
            times = times.clamp(low, high)
        elif self.extrapolation == "error":
            outside = int(((times < low) | (times > high)).sum())
            if outside:
                raise DataError(
                    f"{outside} of {times.numel()} times lie outside the fitted range "
                    f"[{self.t_min:g}, {self.t_max:g}] of {self!r}; "
                    "use extrapolation='clip' or 'extend' to allow them"
                )
        return self._features(times)

    def to_spec(self):
        state = None
        if self.is_fitted:
            state = {"t_min": self.t_min, "t_max": self.t_max, **self._state()}
        return {"name": self.name, **self._params(), "extrapolation": self.extrapolation,
                "state": state}

    def _load_state(self, state: dict | None) -> RangeBasis:
        """Restore the fitted state from ``to_spec()['state']``; returns ``self``."""
        if state is not None:
            state = dict(state)
            self.t_min, self.t_max = float(state.pop("t_min")), float(state.pop("t_max"))
            self._set_state(state)
        return self

    @abc.abstractmethod
    def _params(self) -> dict:
        """Constructor arguments other than ``extrapolation``."""

    @abc.abstractmethod
    def _fit_state(self, times: np.ndarray) -> None:
        """Learn the basis-specific state from checked times."""

    @abc.abstractmethod
    def _state(self) -> dict:
        """Basis-specific fitted state (JSON types)."""

    @abc.abstractmethod
    def _set_state(self, state: dict) -> None:
        """Inverse of :meth:`_state`."""

    @abc.abstractmethod
    def _features(self, times: torch.Tensor) -> torch.Tensor:
        """Features of times already subjected to the policy."""


class Polynomial(RangeBasis):
    r"""Polynomial basis without intercept.

    .. math:: T(t) = (z, z^2, \dots, z^d), \qquad z = (t - c)/s,

    with ``c`` and ``s`` the mean and SD (``ddof=0``; 1 if the SD is 0) of the
    fitted times. ``num_features = degree``.
    """

    name = "poly"

    def __init__(self, degree: int = 2, extrapolation: str = "extend"):
        super().__init__(extrapolation)
        self.degree = _positive_int(degree, "polynomial degree")
        self.center: float | None = None
        self.scale: float | None = None

    @property
    def num_features(self):
        return self.degree

    def _params(self):
        return {"degree": self.degree}

    def _fit_state(self, times):
        self.center = float(times.mean())
        sd = float(times.std())
        self.scale = sd if sd > 0 else 1.0

    def _state(self):
        return {"center": self.center, "scale": self.scale}

    def _set_state(self, state):
        self.center, self.scale = float(state["center"]), float(state["scale"])

    def _features(self, times):
        z = (times - self.center) / self.scale
        powers = torch.arange(1, self.degree + 1, dtype=times.dtype, device=times.device)
        return z.unsqueeze(-1) ** powers


class NaturalSpline(RangeBasis):
    r"""Natural cubic regression spline without intercept, ``num_features = df``.

    Knots ``xi_1 < ... < xi_K`` (``K = df + 1``): boundary knots at the
    minimum and maximum of the fitted times and ``df - 1`` interior knots at
    equally spaced quantiles of the fitted times (of the distinct times if
    ties make those quantiles coincide), or the given ``knots``. With time
    standardised by the boundary knots, ``x = (t - xi_1)/(xi_K - xi_1)``, the
    columns are the truncated-power basis of Hastie, Tibshirani & Friedman
    (2009, *The Elements of Statistical Learning*, eqs. 5.4-5.5) without its
    constant ``N_1 = 1``:

    .. math::

        N_2 = x, \qquad N_{k+2} = d_k - d_{K-1}, \quad k = 1, \dots, K-2,

        d_k(x) = \frac{(x - \xi_k)_+^3 - (x - \xi_K)_+^3}{\xi_K - \xi_k},

    each divided by its SD over the fitted times (stored as
    ``column_scales``; 1 if the SD is 0; over a fixed-seed draw of
    ``SCALE_SAMPLE`` of them when there are more). Together with an intercept the
    columns span all natural cubic splines with these knots: cubic between
    knots, linear beyond the boundary knots, so ``'extend'`` continues
    linearly.

    Args:
        df: number of columns; default 4 (when ``knots`` is not given).
        knots: interior knots in time units (strictly increasing); sets
            ``df = len(knots) + 1``. Give ``df`` or ``knots``, not both.
        extrapolation: ``'extend'``, ``'clip'`` or ``'error'``.
    """

    name = "spline"

    def __init__(self, df: int | None = None, knots=None, extrapolation: str = "extend"):
        super().__init__(extrapolation)
        if knots is not None:
            if df is not None:
                raise ConfigError("give NaturalSpline either df or knots, not both")
            knots = [float(k) for k in knots]
            if not all(math.isfinite(k) for k in knots) or np.any(np.diff(knots) <= 0):
                raise ConfigError(
                    f"spline knots must be finite and strictly increasing; got {knots}"
                )
            df = len(knots) + 1
        self.df = _positive_int(4 if df is None else df, "spline df")
        self.knots = knots
        self.all_knots: list[float] | None = None
        self.column_scales: list[float] | None = None

    @property
    def num_features(self):
        return self.df

    def _params(self):
        return {"df": None if self.knots is not None else self.df, "knots": self.knots}

    def _interior_knots(self, times: np.ndarray) -> np.ndarray:
        low, high = times.min(), times.max()
        if self.knots is not None:
            knots = np.array(self.knots)
            if knots.size and (knots[0] <= low or knots[-1] >= high):
                raise DataError(
                    f"spline knots {self.knots} must lie strictly inside the range of the "
                    f"fitted times [{low:g}, {high:g}]"
                )
            return knots
        probs = np.linspace(0, 1, self.df + 1)[1:-1]
        knots = np.quantile(times, probs)
        if np.all(np.diff(np.concatenate([[low], knots, [high]])) > 0):
            return knots
        return np.quantile(np.unique(times), probs)

    def _fit_state(self, times):
        if times.min() == times.max():
            raise DataError(
                f"a natural spline needs at least 2 distinct times; all are {times[0]:g}"
            )
        knots = np.concatenate([[times.min()], self._interior_knots(times), [times.max()]])
        self.all_knots = [float(k) for k in knots]
        if times.size > SCALE_SAMPLE:  # a scale needs no more; not strided: visits may be periodic in rows
            times = times[np.random.default_rng(0).integers(0, times.size, SCALE_SAMPLE)]
        sd = self._unscaled(torch.tensor(times, dtype=torch.float64)).std(0, unbiased=False)
        self.column_scales = [float(s) if s > 0 else 1.0 for s in sd]

    def _state(self):
        return {"all_knots": self.all_knots, "column_scales": self.column_scales}

    def _set_state(self, state):
        self.all_knots = [float(k) for k in state["all_knots"]]
        self.column_scales = [float(s) for s in state["column_scales"]]

    def _unscaled(self, times: torch.Tensor) -> torch.Tensor:
        """Columns ``(N_2, ..., N_K)`` before the division by ``column_scales``."""
        lo, hi = self.all_knots[0], self.all_knots[-1]
        xi = torch.tensor(self.all_knots, dtype=times.dtype, device=times.device)
        xi = (xi - lo) / (hi - lo)  # (K,)
        x = ((times - lo) / (hi - lo)).unsqueeze(-1)  # (..., 1)
        cubes = (x - xi).clamp(min=0) ** 3  # (..., K)
        d = (cubes[..., :-1] - cubes[..., -1:]) / (xi[-1] - xi[:-1])  # d_1..d_{K-1}: (..., K-1)
        return torch.cat([x, d[..., :-1] - d[..., -1:]], dim=-1)  # (..., K-1)

    def _features(self, times):
        scales = torch.tensor(self.column_scales, dtype=times.dtype, device=times.device)
        return self._unscaled(times) / scales


class Fourier(TimeBasis):
    r"""Periodic basis with ``harmonics`` harmonics of period ``period``.

    .. math::

        T(t) = \bigl(\sin(2\pi t/P), \cos(2\pi t/P), \dots,
                     \sin(2\pi H t/P), \cos(2\pi H t/P)\bigr),

    i.e. columns ordered sin, cos per harmonic ``h = 1..H``;
    ``num_features = 2 H``. The phase is fixed by ``t = 0``. It is defined
    for every time, so it needs no fitting (:meth:`fit` only checks the
    times) and has no extrapolation policy.
    """

    name = "fourier"

    def __init__(self, period: float, harmonics: int = 1):
        period = float(period)
        if not (math.isfinite(period) and period > 0):
            raise ConfigError(f"Fourier period must be a positive number; got {period!r}")
        self.period = period
        self.harmonics = _positive_int(harmonics, "Fourier harmonics")

    @property
    def num_features(self):
        return 2 * self.harmonics

    @property
    def is_fitted(self):
        return True

    def fit(self, times):
        _check_times(times)
        return self

    def transform(self, times):
        times = _float_tensor(times)
        h = torch.arange(1, self.harmonics + 1, dtype=times.dtype, device=times.device)
        angle = (2 * math.pi / self.period) * times.unsqueeze(-1) * h  # (..., H)
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)  # (..., 2H)

    def to_spec(self):
        return {"name": self.name, "period": self.period, "harmonics": self.harmonics}


class CombinedBasis(TimeBasis):
    """Column-wise concatenation of bases, in order; nested combinations are flattened.

    ``num_features`` is the sum of the parts'; :meth:`fit` fits every part.
    """

    name = "combined"

    def __init__(self, bases):
        parts = []
        for basis in bases:
            if not isinstance(basis, TimeBasis):
                raise ConfigError(f"CombinedBasis takes TimeBasis objects; got {basis!r}")
            parts.extend(basis.bases if isinstance(basis, CombinedBasis) else [basis])
        if not parts:
            raise ConfigError("CombinedBasis needs at least one basis")
        self.bases = parts

    @property
    def num_features(self):
        return sum(b.num_features for b in self.bases)

    @property
    def is_fitted(self):
        return all(b.is_fitted for b in self.bases)

    def fit(self, times):
        for basis in self.bases:
            basis.fit(times)
        return self

    def transform(self, times):
        return torch.cat([b.transform(times) for b in self.bases], dim=-1)

    def to_spec(self):
        return {"name": self.name, "bases": [b.to_spec() for b in self.bases]}

    def __repr__(self):
        return " + ".join(repr(b) for b in self.bases)


_FORMS = (
    "'poly' or 'poly(degree)', 'spline' or 'spline(df)', 'fourier(period)' or "
    "'fourier(period, harmonics)', several joined by '+' such as 'spline(4)+fourier(7)', "
    "a TimeBasis, or a dict from TimeBasis.to_spec()"
)
_TERM = re.compile(r"([a-z]+)(?:\((.*)\))?")


def _parse_term(term: str, text: str) -> TimeBasis:
    match = _TERM.fullmatch(term)
    if match is None:
        raise ConfigError(f"cannot parse time basis {text!r}; accepted forms are {_FORMS}")
    name, args = match.group(1), match.group(2)
    args = [] if args is None else args.split(",")
    try:
        if name == "poly" and len(args) <= 1:
            return Polynomial(*(int(a) for a in args))
        if name == "spline" and len(args) <= 1:
            return NaturalSpline(*(int(a) for a in args))
        if name == "fourier" and len(args) in (1, 2):
            return Fourier(float(args[0]), *(int(a) for a in args[1:]))
    except ValueError:  # int()/float() of a malformed number
        pass
    raise ConfigError(f"cannot parse time basis {text!r}; accepted forms are {_FORMS}")


def basis_from_spec(spec: dict) -> TimeBasis:
    """Rebuild a basis, fitted state included, from :meth:`TimeBasis.to_spec`.

    Raises:
        ConfigError: ``spec`` is not a valid basis spec.
    """
    params = dict(spec)
    name = params.pop("name", None)
    try:
        if name == CombinedBasis.name:
            return CombinedBasis([basis_from_spec(s) for s in params["bases"]])
        if name == Fourier.name:
            return Fourier(**params)
        cls = {Polynomial.name: Polynomial, NaturalSpline.name: NaturalSpline}[name]
        state = params.pop("state", None)
        return cls(**params)._load_state(state)
    except (KeyError, TypeError) as err:
        raise ConfigError(
            f"invalid time basis spec {spec!r} ({err!r}); accepted forms are {_FORMS}"
        ) from None


DEFAULT_TIME_BASIS = "poly(3)"
"""The default time functions: a cubic in time.  The linear parts of the
DGMM are then a linear mixed model with random intercept, slope,
curvature and cubic term, and the networks, which also take time, add what
is nonlinear.  It was ``'poly(2)'`` until a latent direction was found to
collapse silently on some fit seeds when a profile needs a 4th random shape
that only the networks could carry (their last layer starts at zero, and a
direction they do not pick up early stays at the prior): on the
development truths ``lmm4sin`` and ``lmm4cos`` (``benchmarks/default_selection.py``,
4 random effects, n=800 x 20) ``'poly(2)'`` lost a needed direction in 5
of 16 fits (RMSE 0.775 against 0.340 in one), ``'poly(3)'`` in none of 16,
at equal or better RMSE and less fit time; on the six other development
truths the two were within 0.95-1.02 of each other (docs/model.md).
``'poly(2)'`` had beaten linear time on a 3-random-effect quadratic LMM,
an Emax curve and six factor-driven outcomes; ``'spline(3)'`` and
``'spline(4)'`` were less accurate than either."""


def parse_basis(spec) -> TimeBasis:
    """Build a :class:`TimeBasis` from a string, a spec dict or an instance.

    Args:
        spec: a :class:`TimeBasis` (returned as is); a string such as
            ``'poly(2)'``, ``'spline(4)'``, ``'fourier(7)'``,
            ``'fourier(7, 2)'`` or a sum like ``'spline(4) + fourier(7)'``
            (case-insensitive, spaces ignored; ``'poly'``/``'spline'`` alone
            use the default degree 2 / df 4); or a dict from
            :meth:`TimeBasis.to_spec`.

    Raises:
        ConfigError: ``spec`` cannot be parsed (the message lists the accepted forms).
    """
    if isinstance(spec, TimeBasis):
        return spec
    if isinstance(spec, dict):
        return basis_from_spec(spec)
    if not isinstance(spec, str):
        raise ConfigError(f"cannot parse time basis {spec!r}; accepted forms are {_FORMS}")
    terms = [_parse_term(t, spec) for t in re.sub(r"\s+", "", spec.lower()).split("+")]
    return terms[0] if len(terms) == 1 else CombinedBasis(terms)
