r"""The joint model of longitudinal outcomes and time to an event: the DGMM
with an ``event`` sample site per subject that shares the random effects.

Cause-specific hazards (one cause: :math:`C = 1`)

.. math::

    h_{ic}(t) = \exp\big\{\beta_{0c} + \beta_{1c} \log t + m_c(\log t)
                + \gamma_c^\top x_i + \alpha_c\, \eta_{ia}(t)\big\}

(smoothly bounded above by :data:`MAX_LOG_HAZARD`, which only matters for
absurd draws of b) with a Weibull baseline (:math:`\beta_{1c} = \rho_c - 1`), an optional
network :math:`m_c` of log time (``baseline_hidden``; its last layer starts
at zero), the encoded baseline covariates :math:`x_i` of the longitudinal
model (standardised, so :math:`\gamma` is per standard deviation), and the
current value :math:`\eta_{ia}(t)` of the linear predictor of the
associated outcome ``a`` (:meth:`~pyro_dgmm.model.MixedModel.eta` at time
:math:`t`: the subject's true marker value on the link scale, minus the
outcome's centring shift, which the intercept absorbs), so
:math:`\alpha_c` is the log hazard ratio per unit of the marker.  With
several associated outcomes :math:`a \in A` the term is
:math:`\sum_{a \in A} \alpha_{ca}\, \eta_{ia}(t)` (a coefficient per
outcome, per cause, and per functional: value, slope
:math:`d\eta_{ia}(t)/dt`, area :math:`\int_0^t \eta_{ia}(s)\, ds`, the
last by Gauss-Legendre quadrature on [0, t] at every hazard node,
``JointData.area_features``).  With ``association_hidden`` a network
:math:`f_c` of the associated outcomes' current values adds
:math:`f_c(\eta_{iA}(t))` to the exponent (the talk's neural link; its last
layer starts at zero, so training starts from the linear association).  The
``event`` site's log-density (:class:`SurvivalOutcome`) for a subject at
risk from :math:`E_i`, followed to :math:`T_i` with status :math:`d_i`, is

.. math:: \log p(T_i, d_i \mid b_i) = \sum_c \big[ 1\{d_i = c\} \log h_{ic}(T_i)
          - \textstyle\int_{E_i}^{T_i} h_{ic}(s)\, ds \big]

(right censoring, competing risks, left truncation), the integral by
Gauss-Legendre quadrature on nodes stored in
:class:`~pyro_dgmm.events.JointData`.  The same term is the model's
:meth:`JointModel.subject_log_likelihood`, which
:func:`~pyro_dgmm.likelihood.observed_log_likelihood` adds, so the
posterior engine, marginal likelihood and standard errors see it.

The guide's encoder (:class:`JointGuide`) reads the follow-up time and
status beside the covariates; at a landmark the data say "event-free up
to t" (:func:`~pyro_dgmm.events.with_events` with time t, status 0).

Example (the sample sites of one run):

>>> from pyro import poutine
>>> from pyro_dgmm.data import DataSchema
>>> from pyro_dgmm.datasets.joint import simulate_joint
>>> sim = simulate_joint(n_subjects=4, seed=0)
>>> schema = DataSchema.fit(sim.data, id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"])
>>> from pyro_dgmm.events import with_events
>>> ev = sim.events.set_index("id").loc[schema.transform(sim.data).ids]
>>> data = with_events(schema.transform(sim.data), schema.time_basis, 0 * ev["time"], ev["time"], ev["status"])
>>> model = JointModel.from_schema(schema, latent_dim=2)
>>> trace = poutine.trace(model).get_trace(data)
>>> [name for name, site in trace.nodes.items() if site["type"] == "sample"]
['subjects', 'b', 'time', 'y_y', 'event']
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

from .data import DataSchema
from .errors import ConfigError
from .events import JointData
from .families import Family
from .guide import AmortizedGuide, build_encoder
from .model import DGMM
from .nn import MLP, _zero_last_layer


#: Functionals of the associated outcome's linear predictor that can enter the
#: hazards: its current value, its slope in time and its area (integral from 0).
ASSOCIATION_TERMS = ("value", "slope", "area")
#: Step (feature units) of the central difference of :meth:`JointModel._slope`.
SLOPE_STEP = 1e-3
#: Smooth upper bound M of every log hazard: :math:`\log h = M - \operatorname{softplus}(M - \ell)` for the
#: linear predictor :math:`\ell` of the hazard.  A draw of b far in the tails (early in a fit, when KL
#: annealing barely holds b near the prior) can make :math:`\ell` large enough that :math:`\exp` overflows
#: float32 and the loss turns NaN; the bound keeps it finite, with its gradient, and changes
#: :math:`\log h` by :math:`\log(1 + e^{\ell - M}) < 5 \cdot 10^{-5}` wherever :math:`\ell \le 10`
#: (a hazard of 22,000 events per unit of time).
MAX_LOG_HAZARD = 20.0


def check_association(association, outcomes: Sequence[str]) -> tuple[str, ...]:
    """``association`` (None: the first outcome; an outcome; or several) as a tuple of outcomes.

    :raises ConfigError: none, repeated or unknown outcomes.
    """
    names = ((outcomes[0],) if association is None
             else (association,) if isinstance(association, str) else tuple(association))
    if not names or len(set(names)) < len(names) or not set(names) <= set(outcomes):
        raise ConfigError(f"association must name one or more distinct outcomes among {list(outcomes)}, "
                          f"got {association!r}")
    return names


def association_names(association: Sequence[str], terms: Sequence[str]) -> list[str]:
    """Names of the association coefficients in the column order of
    ``alpha``: outcome by outcome, term by term; ``alpha`` (value) and
    ``alpha_slope`` with one associated outcome, ``alpha[<outcome>]`` and
    ``alpha_slope[<outcome>]`` with several."""
    prefix = {"value": "alpha", "slope": "alpha_slope", "area": "alpha_area"}
    return [prefix[term] + (f"[{name}]" if len(association) > 1 else "") for name in association for term in terms]


def check_association_terms(association_terms) -> tuple[str, ...]:
    """``association_terms`` (a name or names of :data:`ASSOCIATION_TERMS`) as a tuple.

    :raises ConfigError: none, repeated or unknown names.
    """
    terms = (association_terms,) if isinstance(association_terms, str) else tuple(association_terms)
    if not terms or len(set(terms)) < len(terms) or not set(terms) <= set(ASSOCIATION_TERMS):
        raise ConfigError(f"association_terms must be distinct names among {ASSOCIATION_TERMS}, got {terms!r}")
    return terms


class SurvivalOutcome(TorchDistribution):
    r"""The event record of a subject given the hazards: value = status
    (0 censored, c = 1..C the cause), density
    :math:`\sum_c 1\{d = c\} \log h_c(T) - \sum_c H_c`.

    :param log_hazard: :math:`\log h_c(T)` at the follow-up time, shape (..., C).
    :param cumulative_hazard: :math:`H_c = \int_E^T h_c`, shape (..., C).
    """

    arg_constraints = {"cumulative_hazard": constraints.nonnegative}

    def __init__(self, log_hazard: torch.Tensor, cumulative_hazard: torch.Tensor, validate_args=None):
        self.log_hazard, self.cumulative_hazard = torch.broadcast_tensors(log_hazard, cumulative_hazard)
        super().__init__(self.log_hazard.shape[:-1], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.log_hazard.shape[-1])

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.log_hazard.shape[-1:]
        return SurvivalOutcome(self.log_hazard.expand(shape), self.cumulative_hazard.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_hazard = torch.cat([torch.zeros_like(self.log_hazard[..., :1]), self.log_hazard], -1)
        index = value.long().expand(self.batch_shape).unsqueeze(-1)
        return torch.gather(log_hazard, -1, index).squeeze(-1) - self.cumulative_hazard.sum(-1)


class JointModel(DGMM):
    r"""The DGMM with an event submodel (module docstring).

    :param num_causes: C, the competing causes (1: a single or composite event).
    :param association: the outcome, or outcomes, whose linear predictors
        enter the hazards (default: the first outcome), each with its own
        coefficients.
    :param association_terms: which functionals of it enter, with a
        coefficient each: ``('value',)`` (default), ``('slope',)`` or
        ``('value', 'slope')``, any of :data:`ASSOCIATION_TERMS` (the slope
        :math:`d\eta_{ia}(t)/dt` adds :math:`\alpha^{slope}_c\, d\eta_{ia}(t)/dt`,
        the area :math:`\alpha^{area}_c \int_0^t \eta_{ia}(s)\, ds`; the
        area needs data built with ``area_nodes`` > 0).
    :param baseline_hidden: hidden widths of the network :math:`m_c` of log
        time added to the Weibull log baseline (``()``: Weibull only).
    :param association_hidden: hidden widths of the network :math:`f_c` of
        the associated outcomes' current values added to the linear
        association (``()``: linear only).
    :param baseline_rate: initial constant hazard (events per unit of time),
        e.g. events / total follow-up; the intercepts start at its log.

    Other arguments go to :class:`~pyro_dgmm.model.DGMM`.
    """

    def __init__(self, families: Mapping[str, Family], latent_dim: int, *, num_causes: int = 1,
                 association: str | Sequence[str] | None = None, association_terms: Sequence[str] = ("value",),
                 baseline_hidden: Sequence[int] = (), association_hidden: Sequence[int] = (),
                 baseline_rate: float = 0.1, **options):
        super().__init__(families, latent_dim, **options)
        if not isinstance(num_causes, int) or num_causes < 1:
            raise ConfigError(f"num_causes must be a positive integer, got {num_causes!r}")
        association = check_association(association, self.outcomes)
        if not baseline_rate > 0:
            raise ConfigError(f"baseline_rate must be positive, got {baseline_rate!r}")
        self.association_terms = terms = check_association_terms(association_terms)
        self.num_causes = num_causes
        self.association = association
        self.association_indices = [self.outcomes.index(name) for name in association]
        self.baseline_intercept = torch.nn.Parameter(torch.full((num_causes,), float(torch.tensor(baseline_rate).log())))
        self.baseline_log_time = torch.nn.Parameter(torch.zeros(num_causes))
        self.event_covariates = torch.nn.Parameter(torch.zeros(num_causes, options["num_covariates"]))
        self.event_association = torch.nn.Parameter(torch.zeros(num_causes, len(association) * len(terms)))
        self.baseline_net = (_zero_last_layer(MLP(1, tuple(baseline_hidden), num_causes, "tanh"))
                             if tuple(baseline_hidden) else None)
        self.association_net = (_zero_last_layer(MLP(len(association), tuple(association_hidden), num_causes, "tanh"))
                                if tuple(association_hidden) else None)

    @classmethod
    def from_schema(cls, schema: DataSchema, latent_dim: int, **kwargs) -> "JointModel":
        if schema.time_kind != "numeric":
            raise ConfigError("joint models need a numeric time column (event times are on its scale); "
                              f"'{schema.time_col}' holds {schema.time_kind}s")
        return super().from_schema(schema, latent_dim, **kwargs)

    def log_hazard(self, b: torch.Tensor, data: JointData) -> torch.Tensor:
        r""":math:`\log h_{ic}(t)` at every node time of ``data`` (quadrature
        nodes, then the follow-up time), shape (..., N, Q + 1, C) for ``b`` (..., N, q)."""
        view = replace(data, time_features=data.node_features, times=data.node_times)
        current = (self.eta(b, view)[..., self.association_indices]
                   if "value" in self.association_terms or self.association_net is not None else None)
        functionals = {"value": lambda: current,
                       "slope": lambda: self._slope(b, view, data.node_slopes), "area": lambda: self._area(b, data)}
        terms = [functionals[term]() for term in self.association_terms]
        terms = torch.stack(torch.broadcast_tensors(*terms), -1).flatten(-2)  # (..., N, Q + 1, outcomes x terms)
        log_time = data.node_times.clamp_min(torch.finfo(data.node_times.dtype).tiny).log().unsqueeze(-1)
        baseline = self.baseline_intercept + self.baseline_log_time * log_time
        if self.baseline_net is not None:
            baseline = baseline + self.baseline_net(log_time)
        linear = (data.covariates @ self.event_covariates.T).unsqueeze(-2)  # (N, 1, C)
        log_hazard = baseline + linear + terms @ self.event_association.T
        if self.association_net is not None:
            log_hazard = log_hazard + self.association_net(current)
        return MAX_LOG_HAZARD - torch.nn.functional.softplus(MAX_LOG_HAZARD - log_hazard)

    def _slope(self, b: torch.Tensor, view: JointData, slopes: torch.Tensor) -> torch.Tensor:
        r""":math:`d\eta_{ia}(t)/dt` at the node times of ``view``, every associated
        outcome on the last axis: the derivative of
        the linear predictor along the time features' derivative ``slopes``,
        by a central difference of step :data:`SLOPE_STEP` in feature units
        (exact for a linear predictor linear in the features)."""
        h = SLOPE_STEP
        up = self.eta(b, replace(view, time_features=view.time_features + h * slopes))
        down = self.eta(b, replace(view, time_features=view.time_features - h * slopes))
        return (up - down)[..., self.association_indices] / (2 * h)

    def _area(self, b: torch.Tensor, data: JointData) -> torch.Tensor:
        r""":math:`\int_0^s \eta_{ia}(u)\, du` at every node time s of ``data``
        for every associated outcome (last axis): the linear predictor at the
        R area nodes of each, weighted and summed, shape (..., N, Q + 1, A).

        :raises ConfigError: ``data`` has no area nodes."""
        n, nodes, r, f = data.area_features.shape
        if r == 0:
            raise ConfigError("an area association needs event data with area nodes "
                              "(pyro_dgmm.events.with_events(..., area_nodes=15))")
        view = replace(data, time_features=data.area_features.reshape(n, nodes * r, f),
                       times=data.area_times.reshape(n, nodes * r))
        eta = self.eta(b, view)[..., self.association_indices]  # (..., N, (Q + 1) R, A)
        eta = eta.reshape(eta.shape[:-2] + (nodes, r, eta.shape[-1]))
        return (eta * data.area_weights.unsqueeze(-1)).sum(-2)

    def event_distribution(self, b: torch.Tensor, data: JointData) -> SurvivalOutcome:
        """The ``event`` site's distribution given ``b`` (..., N, q): batch (..., N)."""
        log_hazard = self.log_hazard(b, data)
        q = data.num_nodes
        cumulative = (log_hazard[..., :q, :].exp() * data.node_weights.unsqueeze(-1)).sum(-2)
        return SurvivalOutcome(log_hazard[..., q, :], cumulative)

    def subject_log_likelihood(self, b: torch.Tensor, data: JointData) -> torch.Tensor:
        r""":math:`\log p(T_i, d_i \mid b_i)`, shape (..., N): the ``event`` site's
        term, added by :func:`~pyro_dgmm.likelihood.observed_log_likelihood`."""
        _require_events(data)
        return self.event_distribution(b, data).log_prob(data.event_status)

    def forward(self, data: JointData, **options) -> torch.Tensor:
        """:meth:`MixedModel.forward <pyro_dgmm.model.MixedModel.forward>` on
        data with event records (its options), plus the ``event`` site of
        :meth:`subject_sites`."""
        _require_events(data)
        return super().forward(data, **options)

    def subject_sites(self, b: torch.Tensor, data: JointData, observe: bool) -> None:
        """The ``event`` site (batch (N, 1) in the subjects plate), conditioned
        on the event records; ``observe=False`` leaves it out (no event times
        are simulated)."""
        if observe:
            event = self.event_distribution(b, data)
            pyro.sample("event", SurvivalOutcome(event.log_hazard.unsqueeze(-2), event.cumulative_hazard.unsqueeze(-2)),
                        obs=data.event_status.unsqueeze(-1).to(data.y.dtype))

    def event_coefficients(self) -> dict[str, torch.Tensor]:
        """The event submodel's parameters by name, each (C, ...): ``alpha``
        (association, (C, outcomes x terms): outcome by outcome, in the order of
        ``association_terms`` within each; :func:`association_names`),
        ``gamma`` (covariates, per SD), ``log_scale``
        (:math:`\\beta_0`) and ``log_time`` (:math:`\\beta_1 = \\rho - 1`)."""
        return {"alpha": self.event_association, "gamma": self.event_covariates,
                "log_scale": self.baseline_intercept, "log_time": self.baseline_log_time}


def _require_events(data) -> None:
    if not isinstance(data, JointData):
        raise ConfigError("a joint model needs data with event records (pyro_dgmm.events.with_events, "
                          f"or the JointMixedModel facade), got {type(data).__name__}")


class JointGuide(AmortizedGuide):
    """The amortised guide whose encoder also reads each subject's follow-up
    time (divided by ``time_scale``) and status (one-hot over the C causes;
    all zero when censored), appended to the covariates it sees."""

    def __init__(self, encoder: torch.nn.Module, num_causes: int, time_scale: float):
        super().__init__(encoder)
        self.num_causes = num_causes
        self.register_buffer("time_scale", torch.tensor(float(time_scale)))

    @classmethod
    def from_schema(cls, schema: DataSchema, latent_dim: int, *, num_causes: int = 1, time_scale: float = 1.0,
                    kind: str = "set", hidden=(64, 64), covariance: str = "full", activation: str = "tanh",
                    num_visits: int | None = None) -> "JointGuide":
        encoder = build_encoder(kind, len(schema.families), schema.time_basis.num_features,
                                len(schema.covariate_encoder.columns) + 1 + num_causes, latent_dim, hidden=hidden,
                                covariance=covariance, activation=activation, num_visits=num_visits)
        return cls(encoder, num_causes, time_scale)

    def posterior(self, data: JointData) -> dist.MultivariateNormal:
        _require_events(data)
        status = torch.nn.functional.one_hot(data.event_status, self.num_causes + 1)[..., 1:]
        follow_up = (data.event_time / self.time_scale).unsqueeze(-1)
        covariates = torch.cat([data.covariates, follow_up.to(data.covariates.dtype),
                                status.to(data.covariates.dtype)], -1)
        return super().posterior(replace(data, covariates=covariates))
