r"""Outcome families of the deep generalized mixed model.

For outcome ``j`` of subject ``i`` at occasion ``k`` the model has a linear
predictor ``eta_ijk`` (any real number) and draws

.. math::

    y_{ijk} \mid \eta_{ijk} \sim F_j\bigl(g_j^{-1}(\eta_{ijk}), \theta_j\bigr),

where ``g_j`` is the link function of the family ``F_j`` and ``theta_j`` an
optional positive dispersion parameter (a Gaussian residual SD, a Beta
precision). A :class:`~pyro_dgmm.family.Family` bundles everything the model needs to know
about one outcome: the link, the likelihood, the support check of the raw
data, the transform of the data fed to the encoder and data-driven starting
values.

Every family is immutable and serialisable: ``family.to_spec()`` is a JSON
dict and ``get_family(spec)`` (alias :func:`family_from_spec`) rebuilds an
equal object.  A family of your own becomes known by name, to
``outcomes={...}``, saving and loading, once registered
(:func:`register_family`); register it before
:meth:`~pyro_dgmm.estimator.DeepMixedModel.load` in the loading process too.

>>> get_family("bounded(1, 7)").to_spec()
{'name': 'bounded', 'low': 1.0, 'high': 7.0, 'squeeze': 0.005}
>>> get_family({"name": "poisson"}).name
'poisson'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import AffineTransform, ComposeTransform, SoftplusTransform

from pyro_dgmm.errors import ConfigError
from pyro_dgmm.options import check_str
# Family is re-exported: ``from pyro_dgmm.families import Family`` is the documented import.
from pyro_dgmm.family import MEAN_CLIP, Family, observed_values, sd_or_one

__all__ = [
    "Family",
    "Gaussian",
    "Bernoulli",
    "Poisson",
    "BoundedContinuous",
    "StudentT",
    "get_family",
    "family_from_spec",
]


class RealLine(Family):
    r"""Base of location-scale families on the whole real line with the
    identity link, :math:`E[y] = \eta`, and a scale ``sigma`` as dispersion
    (:class:`Gaussian`, :class:`StudentT`).

    The encoder sees ``y`` unchanged; the schema may shift ``y`` by its
    training mean (``shift_invariant``). Starting values: offset = mean,
    network scale = SD of the data, ``sigma`` = 0.5 SD.
    """

    has_dispersion = True
    dispersion_name = "sigma"
    shift_invariant = True
    support_description = "values must be finite real numbers"

    def inverse_link(self, eta):
        return eta

    def link(self, mean):
        return mean

    def _in_support(self, values):
        return np.ones(values.shape, dtype=bool)

    def encode(self, values):
        return values

    def initial_scale(self, values):
        """SD of the observed values (``ddof=0``), 1.0 if that SD is 0."""
        return sd_or_one(values)

    def initial_dispersion(self, values):
        """Half the SD of the observed values (0.5 if that SD is 0)."""
        return 0.5 * sd_or_one(values)


class Gaussian(RealLine):
    r"""Normal outcome with identity link and residual SD ``sigma``.

    .. math:: y \sim \mathcal N(\eta, \sigma^2), \qquad E[y] = \eta.

    The encoder sees ``y`` unchanged. Starting values: offset = mean,
    network scale = SD of the data, ``sigma`` = 0.5 SD.
    """

    name = "gaussian"

    def distribution(self, eta, dispersion):
        return dist.Normal(eta, self._dispersion_for(eta, dispersion))


class Bernoulli(Family):
    r"""Binary 0/1 outcome with logit link.

    .. math:: y \sim \mathrm{Bernoulli}(p), \qquad p = E[y] = \sigma(\eta) = 1/(1+e^{-\eta}).

    The distribution is built from ``logits=eta`` for numerical stability.
    The encoder sees ``y`` unchanged.
    """

    name = "bernoulli"
    support_description = "values must be 0 or 1"

    def inverse_link(self, eta):
        return torch.sigmoid(eta)

    def link(self, mean):
        return torch.logit(mean)

    def distribution(self, eta, dispersion):
        self._dispersion_for(eta, dispersion)
        return dist.Bernoulli(logits=eta)

    def _in_support(self, values):
        return (values == 0) | (values == 1)

    def encode(self, values):
        return values

    def _safe_mean(self, mean):
        return min(max(mean, MEAN_CLIP), 1 - MEAN_CLIP)


class Poisson(Family):
    r"""Count outcome with log link.

    .. math:: y \sim \mathrm{Poisson}(\lambda), \qquad \lambda = E[y] = \exp(\eta).

    ``eta`` is clamped to ``[-20, 20]`` before the exponential (in both
    :meth:`inverse_link` and :meth:`distribution`, so they agree): this keeps
    the rate finite and positive in float32 (``e^{20} \approx 4.9 \cdot 10^8``)
    at the price of a zero gradient beyond the clamp. The encoder sees
    ``log(1 + y)``.
    """

    name = "poisson"
    support_description = "values must be non-negative integers"
    #: Bound on ``|eta|`` applied before ``exp``.
    max_abs_eta = 20.0

    def inverse_link(self, eta):
        return torch.exp(eta.clamp(-self.max_abs_eta, self.max_abs_eta))

    def link(self, mean):
        return torch.log(mean)

    def distribution(self, eta, dispersion):
        self._dispersion_for(eta, dispersion)
        return dist.Poisson(self.inverse_link(eta))

    def _in_support(self, values):
        return (values >= 0) & (values == np.floor(values))

    def encode(self, values):
        return torch.log1p(values)

    def _safe_mean(self, mean):
        return max(mean, MEAN_CLIP)


class BoundedContinuous(Family):
    r"""Continuous outcome on a closed interval ``[low, high]`` (e.g. a 1-7 scale).

    The value is rescaled to the unit interval and *squeezed* by ``eps``
    (``squeeze``) so that observations exactly at a bound get a finite density:

    .. math::

        u' = \epsilon + (1 - 2\epsilon)\,\frac{y - \mathrm{low}}{\mathrm{high} - \mathrm{low}}
        \in [\epsilon, 1 - \epsilon],

    a compression of the same kind as Smithson & Verkuilen (2006, "A better
    lemon squeezer? Maximum-likelihood regression with beta-distributed
    dependent variables", Psychological Methods 11(1), 54-71). The model is a
    mean-precision Beta regression with logit link:

    .. math::

        u' \sim \mathrm{Beta}(\mu\phi, (1-\mu)\phi), \qquad \mu = \sigma(\eta),

    with ``mu`` clamped to ``[1e-6, 1 - 1e-6]`` for stability and ``phi`` the
    precision (the dispersion parameter). :meth:`distribution` maps ``u'``
    back to the data scale with the affine map
    ``y = low + (high - low)(u' - eps)/(1 - 2 eps)``, so its ``log_prob(y)``
    includes the constant Jacobian ``log((1 - 2 eps)/(high - low))``, and
    :meth:`inverse_link` is the data-scale mean

    .. math::

        E[y] = \mathrm{low} + (\mathrm{high}-\mathrm{low})\,\frac{\mu - \epsilon}{1 - 2\epsilon}.

    Draws lie in ``(low - c, high + c)`` with ``c = (high-low) eps/(1-2eps)``;
    :meth:`constrain` clamps them to ``[low, high]``. The encoder sees
    ``(y - low)/(high - low) in [0, 1]``.
    """

    name = "bounded"
    has_dispersion = True
    dispersion_name = "precision"
    #: Clamp of the Beta mean ``mu`` away from 0 and 1.
    mu_clip = 1e-6
    #: Bounds of the starting (method-of-moments) precision.
    precision_range = (1.0, 100.0)

    def __init__(self, low: float, high: float, squeeze: float = 0.005):
        low, high, squeeze = float(low), float(high), float(squeeze)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(
                f"bounded family needs finite bounds with low < high; got low={low}, high={high}"
            )
        if not 0 < squeeze < 0.5:
            raise ConfigError(f"bounded family needs 0 < squeeze < 0.5; got squeeze={squeeze}")
        self.low, self.high, self.squeeze = low, high, squeeze

    @property
    def support_description(self) -> str:
        return f"values must lie in [{self.low:g}, {self.high:g}]"

    def _to_unit(self, y):
        """Squeezed unit value ``u' = eps + (1 - 2 eps)(y - low)/(high - low)``."""
        eps = self.squeeze
        return eps + (1 - 2 * eps) * (y - self.low) / (self.high - self.low)

    def _unit_to_data(self) -> AffineTransform:
        """The affine map ``u' -> y = low + (high - low)(u' - eps)/(1 - 2 eps)``."""
        scale = (self.high - self.low) / (1 - 2 * self.squeeze)
        return AffineTransform(loc=self.low - self.squeeze * scale, scale=scale)

    def _mu(self, eta):
        return torch.sigmoid(eta).clamp(self.mu_clip, 1 - self.mu_clip)

    def inverse_link(self, eta):
        return self._unit_to_data()(self._mu(eta))

    def link(self, mean):
        return torch.logit(self._to_unit(mean))

    def distribution(self, eta, dispersion):
        phi = self._dispersion_for(eta, dispersion)
        mu = self._mu(eta)
        beta = dist.Beta(mu * phi, (1 - mu) * phi)
        return dist.TransformedDistribution(beta, [self._unit_to_data()])

    def constrain(self, draws):
        """Clamp draws to ``[low, high]``."""
        return draws.clamp(self.low, self.high)

    def _in_support(self, values):
        return (values >= self.low) & (values <= self.high)

    def encode(self, values):
        return (values - self.low) / (self.high - self.low)

    def _safe_mean(self, mean):
        """Clip so that the squeezed unit mean lies in ``[0.01, 0.99]``."""
        unit = min(max(self._to_unit(mean), MEAN_CLIP), 1 - MEAN_CLIP)
        return float(self._unit_to_data()(torch.tensor(unit, dtype=torch.float64)))

    def initial_dispersion(self, values):
        r"""Method-of-moments Beta precision of the squeezed unit values.

        With ``m`` and ``v`` the mean and variance of ``u'``,
        ``phi = m(1 - m)/v - 1``, clipped to ``[1, 100]`` (100 if ``v = 0``).
        """
        unit = self._to_unit(observed_values(values))
        m, v = float(np.mean(unit)), float(np.var(unit))
        lo, hi = self.precision_range
        phi = m * (1 - m) / v - 1 if v > 0 else hi
        return float(min(max(phi, lo), hi))

    def to_spec(self):
        return {"name": self.name, "low": self.low, "high": self.high, "squeeze": self.squeeze}


class SoftplusGreaterThan(constraints.greater_than):
    r"""The half-line :math:`(\mathrm{lower}, \infty)` reached from the real
    line through :math:`u \mapsto \mathrm{lower} + \log(1 + e^u)` (softplus)
    rather than ``exp``: the value grows linearly, not exponentially, in the
    unconstrained ``u``, so a large value (such as many degrees of freedom,
    where the likelihood is flat) cannot run away."""


@biject_to.register(SoftplusGreaterThan)
@transform_to.register(SoftplusGreaterThan)
def _softplus_greater_than(constraint: SoftplusGreaterThan):
    return ComposeTransform([SoftplusTransform(), AffineTransform(constraint.lower_bound, 1.0)])


class StudentT(RealLine):
    r"""Heavy-tailed continuous outcome: location-scale Student-t with identity link.

    .. math::

        y = \eta + \sigma \varepsilon, \quad \varepsilon \sim t_\nu, \qquad
        p(y \mid \eta) = \frac{\Gamma(\frac{\nu+1}{2})}{\Gamma(\frac\nu2)\sqrt{\nu\pi}\,\sigma}
        \Bigl(1 + \frac{(y-\eta)^2}{\nu\sigma^2}\Bigr)^{-\frac{\nu+1}{2}},

    with :math:`E[y] = \eta` and :math:`\operatorname{var}(y \mid \eta) =
    \sigma^2 \nu / (\nu - 2)`.  The dispersion is the scale :math:`\sigma`
    (``'sigma'``, not the SD).  The degrees of freedom :math:`\nu` are learned
    per outcome (``df=None``, the default) as

    .. math:: \nu = \nu_{\min} + \operatorname{softplus}(u), \qquad \nu_{\min} = 2,

    so that the variance always exists (prediction intervals and RMSE stay
    meaningful) and a near-Gaussian outcome drifts to large :math:`\nu`
    linearly, not exponentially, in the unconstrained :math:`u`
    (:class:`SoftplusGreaterThan`); they start at :attr:`initial_df`.  A number
    ``df`` fixes :math:`\nu` instead (``'student_t(4)'``).

    The encoder sees ``y`` unchanged; starting values as :class:`Gaussian`
    (offset = mean, network scale = SD, :math:`\sigma` = 0.5 SD).
    Written ``'student_t'`` or ``'t'`` (learned df), ``'student_t(4)'`` (fixed).
    """

    name = "student_t"
    #: Lower bound :math:`\nu_{\min}` of learned degrees of freedom (the variance exists above it).
    min_df = 2.0
    #: Starting value of learned degrees of freedom (a common robust choice,
    #: Lange, Little & Taylor 1989, JASA 84(408), 881-896).
    initial_df = 5.0

    def __init__(self, df: float | None = None):
        if df is not None:
            df = float(df)
            if not (math.isfinite(df) and df > 0):
                raise ConfigError(f"student_t family needs df > 0 (or None to learn it); got df={df}")
        self.df = df
        self.shape_names = ("df",) if df is None else ()

    def distribution(self, eta, dispersion, df=None):
        scale = self._dispersion_for(eta, dispersion)
        if (df is None) == (self.df is None):
            raise ValueError("pass df exactly when the family learns it (StudentT(df=None))")
        df = torch.as_tensor(self.df if df is None else df, dtype=eta.dtype, device=eta.device)
        return dist.StudentT(df.expand(eta.shape), eta, scale)

    def initial_shape(self):
        """``{'df': initial_df}`` when df is learned."""
        return {"df": self.initial_df} if self.df is None else {}

    def shape_constraint(self, name):
        if name != "df" or self.df is not None:
            return super().shape_constraint(name)
        return SoftplusGreaterThan(self.min_df)

    def to_spec(self):
        return {"name": self.name} if self.df is None else {"name": self.name, "df": self.df}


_ALIASES = {
    "gaussian": Gaussian,
    "normal": Gaussian,
    "bernoulli": Bernoulli,
    "binary": Bernoulli,
    "poisson": Poisson,
    "student_t": StudentT,
    "t": StudentT,
}
_BUILT_IN = frozenset(_ALIASES) | {"bounded"}
_VALID = (
    "'gaussian' (or 'normal'), 'bernoulli' (or 'binary'), 'poisson', "
    "'student_t' (or 't'; 'student_t(4)' fixes the degrees of freedom), "
    "'bounded(low, high)' such as 'bounded(1, 7)', a Family instance, "
    "or a dict from Family.to_spec()"
)


def _valid() -> str:
    """The valid family specs, for messages (registered families included)."""
    registered = sorted(set(_ALIASES) - _BUILT_IN)
    return _VALID + (f"; registered: {registered}" if registered else "")


def register_family(name: str, factory) -> None:
    """Make a family of your own known by ``name``.

    After registration, ``outcomes={"y": name}`` (any case) builds
    ``factory()``, and a spec dict ``{"name": name, **params}`` (what the
    family's :meth:`~pyro_dgmm.family.Family.to_spec` returns, as saved with a model) builds
    ``factory(**params)``.  A family's ``to_spec()`` must therefore name it
    by ``name`` and hold its constructor's keyword arguments.  Register
    the family in every process that loads a model using it, before
    :meth:`~pyro_dgmm.estimator.DeepMixedModel.load`.

    :param name: lower-case identifier; the built-in names cannot be
        replaced, a registered one can (re-registering updates it).
    :param factory: a :class:`~pyro_dgmm.family.Family` subclass, or any callable that
        returns a :class:`~pyro_dgmm.family.Family` instance.
    :raises ConfigError: for a bad name or a factory that is not callable.

    >>> class Laplace(Gaussian):
    ...     name = "laplace"
    ...     def distribution(self, eta, dispersion):
    ...         return dist.Laplace(eta, self._dispersion_for(eta, dispersion))
    >>> register_family("laplace", Laplace)
    >>> get_family("Laplace").distribution(torch.zeros(2), torch.tensor(1.0))
    Laplace(loc: torch.Size([2]), scale: torch.Size([2]))
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"register_family: name must be a lower-case identifier such as 'laplace', got {name!r}")
    if name in _BUILT_IN:
        raise ConfigError(f"register_family: '{name}' is a built-in family; choose another name")
    if not callable(factory):
        raise ConfigError(f"register_family: factory for '{name}' must be a Family subclass or a callable "
                          f"returning a Family, got {factory!r}")
    _ALIASES[name] = factory
_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_BOUNDED = re.compile(rf"bounded\s*\({_NUMBER},{_NUMBER}\)")
_STUDENT = re.compile(rf"(?:student_t|t)\s*\({_NUMBER}\)")


def _from_string(spec: str) -> Family:
    text = spec.strip().lower()
    if text in _ALIASES:
        return _built(text, {})
    match = _BOUNDED.fullmatch(text)
    if match:
        return BoundedContinuous(float(match.group(1)), float(match.group(2)))
    match = _STUDENT.fullmatch(text)
    if match:
        return StudentT(float(match.group(1)))
    raise ConfigError(f"unknown family {spec!r}; valid families are {_valid()}")


def _built(name: str, params: dict) -> Family:
    """``_ALIASES[name](**params)``, checked to be a :class:`~pyro_dgmm.family.Family`."""
    try:
        family = _ALIASES[name](**params)
    except TypeError as err:
        raise ConfigError(f"invalid family spec {dict(name=name, **params)!r}: {err}") from None
    if not isinstance(family, Family):
        raise ConfigError(f"the factory registered for family '{name}' returned {family!r}, not a Family")
    return family


def _from_dict(spec: dict) -> Family:
    params = dict(spec)
    name = params.pop("name", None)
    if name in (BoundedContinuous.name, StudentT.name):  # the built-ins that take parameters
        cls = BoundedContinuous if name == BoundedContinuous.name else StudentT
        try:
            return cls(**params)
        except TypeError as err:
            raise ConfigError(f"invalid family spec {spec!r}: {err}") from None
    if name in _ALIASES and (name not in _BUILT_IN or not params):  # the other built-ins take no parameters
        return _built(name, params)
    raise ConfigError(f"invalid family spec {spec!r}; valid families are {_valid()}")


def get_family(spec) -> Family:
    """Build a :class:`~pyro_dgmm.family.Family` from a name, a spec dict or an instance.

    Args:
        spec: a :class:`~pyro_dgmm.family.Family` (returned as is); a string ``'gaussian'`` /
            ``'normal'``, ``'bernoulli'`` / ``'binary'``, ``'poisson'``,
            ``'student_t'`` / ``'t'`` (``'student_t(4)'``: fixed df) or
            ``'bounded(low, high)'`` (case-insensitive, spaces allowed); or a
            dict produced by :meth:`~pyro_dgmm.family.Family.to_spec`.

    Raises:
        ConfigError: ``spec`` names no known family (the message lists them).
    """
    if isinstance(spec, Family):
        return spec
    if isinstance(spec, str):
        return _from_string(spec)
    if isinstance(spec, dict):
        return _from_dict(spec)
    raise ConfigError(f"unknown family {spec!r}; valid families are {_valid()}")


#: Rebuild a family from :meth:`~pyro_dgmm.family.Family.to_spec` (same as :func:`get_family`).
family_from_spec = get_family


def check_outcomes(outcomes) -> dict:
    """``outcomes`` as a dict column -> family (a name such as ``'gaussian'``,
    a spec dict or a :class:`~pyro_dgmm.family.Family`), each family
    checked by :func:`get_family`."""
    if not isinstance(outcomes, Mapping) or not outcomes:
        raise ConfigError("outcomes must be a non-empty dict of outcome column -> family, "
                          f"e.g. {{'y': 'gaussian'}}, got {outcomes!r}")
    for name, family in outcomes.items():
        check_str("an outcome column name", name)
        try:
            get_family(family)
        except ConfigError as error:
            raise ConfigError(f"outcome '{name}': {error}") from None
    return {str(name): family for name, family in outcomes.items()}
