r"""The generative model: a base mixed model and the DGMM.

.. math::

    b_i &\sim \mathcal N(0, I_q) \\
    \eta_{ijk} &= \alpha_k + s_k\, \nu_k(b_i, X_i, T_{ij}) \\
    y_{ijk} \mid b_i &\sim \mathcal F_k\big(g_k^{-1}(\eta_{ijk}), \sigma_k\big)
    \quad \text{for observed cells } m_{ijk} = 1

:class:`MixedModel` owns everything but :math:`\nu`: the ``subjects`` and
``time`` plates, the prior on ``b``, KL annealing (``kl_scale``), the
per-outcome offsets :math:`\alpha_k` and scales :math:`s_k` (fixed from the
data so networks work on a unit scale), dispersion parameters and masked
likelihoods.  A model variant overrides one method,
:meth:`MixedModel.linear_predictor`.  :class:`DGMM` is the talk's model,
:math:`\nu = \mu_1(X_i, T_{ij}) + \mu_2(b_i, T_{ij})`.

Sample sites: ``b`` (batch (N, 1), event (q,)) and ``y_<outcome>`` (batch
(N, T)).  Missing cells are handled by ``Distribution.mask`` on a filled
``obs`` (never ``obs_mask``, which would add latent sites the guide has to
cover and that, covered, have no likelihood at observed cells), so the ELBO
is exact for the observed cells.

Example (the sample sites of one run):

>>> from pyro import poutine
>>> from pyro_dgmm.data import DataSchema
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=5, n_visits=3, seed=0).data
>>> schema = DataSchema.fit(df, id_col="id", time_col="time", outcomes={"y": "gaussian"})
>>> model = DGMM.from_schema(schema, latent_dim=2)
>>> trace = poutine.trace(model).get_trace(schema.transform(df))
>>> [(name, tuple(site["value"].shape)) for name, site in trace.nodes.items() if site["type"] == "sample"]
[('subjects', (5,)), ('b', (5, 1, 2)), ('time', (3,)), ('y_y', (5, 3))]
"""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import register_kl
from pyro.nn import PyroModule, PyroParam

from .data import DataSchema, LongitudinalData
from .errors import ConfigError
from .families import Family
from .nn import FixedEffectsNet, RandomEffectsNet
from .options import check_int
from .serial import SERIAL_PROCESSES, serial_term


def unique_name(module: PyroModule) -> str:
    """A process-unique ``PyroModule`` name for ``module`` (``'DGMM_3'``).

    Outside Pyro's ``module_local_params`` mode (the default), a
    ``PyroModule`` registers its parameters in Pyro's global parameter store
    under its name: two models of the same name would share, and overwrite,
    each other's parameters there.  Models and guides therefore get a fresh
    name when built and when copied or unpickled.
    """
    return f"{type(module).__name__}_{next(_INSTANCES)}"


_INSTANCES = itertools.count()


class OwnParameters(PyroModule):
    """Root ``PyroModule`` of a model or guide: a unique name
    (:func:`unique_name`) at construction and on ``copy.deepcopy`` or
    unpickling, so each instance has parameter sites of its own in Pyro's
    global parameter store."""

    def __init__(self):
        super().__init__(name=unique_name(self))

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        old, new = self._pyro_name, unique_name(self)
        for module in self.modules():  # sub-PyroModules carry the root's name as their prefix
            if isinstance(module, PyroModule) and module._pyro_name.startswith(old):
                module._pyro_name = new + module._pyro_name[len(old):]


#: Values of ``dispersion_model``: one dispersion per outcome, a log-linear
#: function of the time features and covariates, or of those and the random
#: effects (:meth:`MixedModel.dispersion`).
DISPERSION_MODELS = ("constant", "linear", "linear+random")


class MixedModel(OwnParameters):
    """Base class of mixed models with latent ``b_i ~ N(0, I_q)``.

    Subclasses implement :meth:`linear_predictor`.  Everything else (plates,
    prior, annealing, families, masking, minibatch scaling) is shared, so a
    variant gets fitting, imputation, prediction and ArviZ export for free.

    :param families: outcome name -> :class:`~pyro_dgmm.family.Family`, in
        the order of the data's last axis.
    :param latent_dim: q, the dimension of ``b_i``.
    :param offsets: per-outcome :math:`\\alpha_k` (shape (K,)).
    :param scales: per-outcome :math:`s_k` (shape (K,)).
    :param dispersions: per-outcome initial dispersion (None for families
        without one).
    :param dispersion_model: ``'constant'`` (default: one dispersion
        :math:`\\sigma_k` per outcome), ``'linear'``: :math:`\\log\\sigma_k`
        linear in the time features and covariates, or ``'linear+random'``:
        and in the random effects (:meth:`dispersion`), for every outcome
        whose family has a dispersion; the slopes start at 0.
    :param num_covariates: P, the covariate design columns (needed by ``'linear'``).
    :param num_time_features: F, the time features (needed by ``'linear'``).
    :param serial_process: ``'none'`` (default) or ``'brownian'``: a Brownian
        motion per outcome in ``serial_outcomes`` added to the linear
        predictor, its ``serial_terms`` basis coefficients per outcome
        appended to ``b`` (:mod:`pyro_dgmm.serial`), so the predictive
        variance grows with the gap from the last observation.  Then
        ``latent_dim`` (the model's attribute) counts those coordinates too,
        and ``random_effects_dim`` is the q given here.
    :param serial_outcomes: the outcomes that carry the process (default:
        every outcome whose family has a dispersion, i.e. the continuous ones).
    :param serial_terms: J, basis functions per outcome (resolution S / J).
    :param serial_span: S, the interval [0, S] of model time the process is
        defined on (:meth:`from_schema` takes the training follow-up).
    """

    def __init__(self, families: Mapping[str, Family], latent_dim: int,
                 offsets: Sequence[float], scales: Sequence[float],
                 dispersions: Sequence[float | None], *, dispersion_model: str = "constant",
                 num_covariates: int = 0, num_time_features: int = 0, serial_process: str = "none",
                 serial_outcomes: Sequence[str] | None = None, serial_terms: int = 8,
                 serial_span: float | None = None):
        super().__init__()
        if dispersion_model not in DISPERSION_MODELS:
            raise ConfigError(f"dispersion_model must be one of {DISPERSION_MODELS}, got {dispersion_model!r}")
        self.families = dict(families)
        self._init_serial(serial_process, serial_outcomes, serial_terms, serial_span)
        self.random_effects_dim = latent_dim
        self.latent_dim = latent_dim + len(self.serial_outcomes) * self.serial_terms
        self.dispersion_model = dispersion_model
        self.num_dispersion_features = num_time_features + num_covariates
        self.register_buffer("outcome_offset", torch.as_tensor(offsets, dtype=torch.float32))
        self.register_buffer("outcome_scale", torch.as_tensor(scales, dtype=torch.float32))
        self._dispersion_attr: dict[str, str] = {}
        self._slopes_attr: dict[str, str] = {}
        self._shape_attr: dict[str, dict[str, str]] = {}
        for k, (name, family) in enumerate(self.families.items()):
            if family.has_dispersion:
                attr = f"dispersion_{k}"
                setattr(self, attr, PyroParam(torch.tensor(float(dispersions[k])),
                                              constraint=dist.constraints.positive))
                self._dispersion_attr[name] = attr
                if dispersion_model != "constant":  # starts constant: zero slopes
                    size = num_time_features + num_covariates + (latent_dim if self.dispersion_uses_b else 0)
                    setattr(self, f"dispersion_slopes_{k}", torch.nn.Parameter(torch.zeros(size)))
                    self._slopes_attr[name] = f"dispersion_slopes_{k}"
            self._shape_attr[name] = {}
            for shape, value in family.initial_shape().items():
                attr = f"{shape}_{k}"
                setattr(self, attr, PyroParam(torch.tensor(float(value)), constraint=family.shape_constraint(shape)))
                self._shape_attr[name][shape] = attr

    def _init_serial(self, process: str, outcomes: Sequence[str] | None, terms: int, span: float | None) -> None:
        """Check and store the serial-process options (:class:`MixedModel`) and
        the parameter ``serial_scale``: tau_k per outcome, starting where the
        process adds half an outcome's unit variance at the span's end.  It is
        a real number, not a positive one: the model depends on tau_k only
        through tau_k^2 (z ~ N(0, I) is symmetric), so the sign is free and
        the likelihood is smooth through 0, where its curvature in tau is
        finite.  On a log scale it would vanish like tau^2 there, so a
        Newton step (``refine_observation_model``) could not move a tau that
        SVI has shrunk, nor SVI's gradient revive it."""
        if process not in SERIAL_PROCESSES:
            raise ConfigError(f"serial_process must be one of {SERIAL_PROCESSES}, got {process!r}")
        if process == "none":
            self.serial_outcomes, self.serial_terms, self.serial_span = [], 0, None
            return
        if outcomes is None:
            outcomes = [name for name, family in self.families.items() if family.has_dispersion]
        unknown = [name for name in outcomes if name not in self.families]
        if unknown or not outcomes:
            raise ConfigError(f"serial_outcomes must name outcomes of the model ({list(self.families)}), "
                              f"got {list(outcomes)!r}")
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
            raise ConfigError(f"serial_terms must be a positive integer, got {terms!r}")
        if span is None or not float(span) > 0:
            raise ConfigError(f"serial_span must be a positive time span (model time), got {span!r}")
        self.serial_outcomes = [name for name in self.families if name in outcomes]
        self.serial_terms, self.serial_span = terms, float(span)
        self.register_buffer("serial_index", torch.tensor([self.outcomes.index(name) for name in self.serial_outcomes]))
        self.serial_scale = torch.nn.Parameter(torch.full((len(self.serial_outcomes),),
                                                          (0.5 / self.serial_span) ** 0.5))

    def serial_tau(self) -> dict[str, float]:
        """tau_k per outcome carrying the serial process, in the outcome's
        units per square root of a model time unit (``|serial_scale|``
        times the outcome's scale); empty without a process."""
        return {name: abs(float(self.serial_scale[k].detach() * self.outcome_scale[self.outcomes.index(name)]))
                for k, name in enumerate(self.serial_outcomes)}

    @classmethod
    def from_schema(cls, schema: DataSchema, latent_dim: int, **kwargs) -> "MixedModel":
        """Build with offsets, scales and dispersions learned by ``schema``;
        ``kwargs`` go to the subclass (network sizes etc.).  A serial process
        without ``serial_span`` spans the training follow-up (the time basis's
        fitted range)."""
        if kwargs.get("serial_process", "none") != "none" and kwargs.get("serial_span") is None:
            kwargs["serial_span"] = training_span(schema)
        return cls(
            schema.families,
            latent_dim,
            offsets=schema.initial_offset.tolist(),
            scales=schema.initial_scale.tolist(),
            dispersions=schema.initial_dispersion,
            num_covariates=len(schema.covariate_encoder.columns),
            num_time_features=schema.time_basis.num_features,
            **kwargs,
        )

    @property
    def outcomes(self) -> list[str]:
        return list(self.families)

    @property
    def time_functions(self) -> int | None:
        """M, the learned time functions of the random-effects path (None: the model has no such path)."""
        return None

    def dispersion(self, name: str, data: LongitudinalData | None = None,
                   b: torch.Tensor | None = None) -> torch.Tensor | None:
        r"""The dispersion of outcome ``name`` (None if its family has none).

        With ``dispersion_model='constant'`` a scalar :math:`\sigma_k`
        (``data`` and ``b`` are ignored).  With ``'linear'`` the value at every
        cell of ``data``, shape (N, T):

        .. math:: \log \sigma_{k}(T_{ij}, x_i) = a_k + c_k^\top T_{ij} + d_k^\top x_i,

        with the time features :math:`T_{ij}` and the encoded (standardised)
        covariates :math:`x_i` of :meth:`dispersion_features`;
        :math:`e^{a_k}` is the parameter ``dispersion_<k>`` (the value where
        all features are 0) and :math:`(c_k, d_k)` the vector
        ``dispersion_slopes_<k>`` (:meth:`dispersion_coefficients`).  With
        ``'linear+random'`` the random effects enter too,
        :math:`+\, e_k^\top b_i` (the last q slopes), so subjects differ in
        their noise level as in their trajectories (a scale mixture over
        subjects; its posterior given a subject's history sets the width of
        their prediction intervals); then ``b`` (..., N, q) is needed and the
        result has shape (..., N, T).

        :raises ConfigError: a linear dispersion model and no ``data`` (or no ``b``).
        """
        attr = self._dispersion_attr.get(name)
        if attr is None:
            return None
        base = getattr(self, attr)
        if name not in self._slopes_attr:
            return base
        if data is None or (self.dispersion_uses_b and b is None):
            needed = "data and random effects b" if self.dispersion_uses_b else "data"
            raise ConfigError(f"the dispersion of outcome '{name}' is not constant "
                              f"(dispersion_model={self.dispersion_model!r}): pass the {needed} to evaluate it "
                              "at, or read dispersion_coefficients()")
        slopes = getattr(self, self._slopes_attr[name]).to(data.y.dtype)
        features = self.num_dispersion_features
        log_scale = self.dispersion_features(data) @ slopes[:features]
        if self.dispersion_uses_b:
            log_scale = log_scale + (b[..., :self.random_effects_dim] @ slopes[features:]).unsqueeze(-1)
        return base * torch.exp(log_scale)

    @property
    def dispersion_uses_b(self) -> bool:
        """Whether the dispersions depend on the random effects (``'linear+random'``)."""
        return self.dispersion_model == "linear+random"

    @staticmethod
    def dispersion_features(data: LongitudinalData) -> torch.Tensor:
        """(N, T, F + P): the time features then the encoded covariates of every cell."""
        times = data.time_features
        covariates = data.covariates.unsqueeze(-2).expand(*times.shape[:-1], data.covariates.shape[-1])
        return torch.cat([times, covariates.to(times.dtype)], dim=-1)

    def dispersion_coefficients(self, name: str) -> torch.Tensor | None:
        """Outcome ``name``'s log-dispersion coefficients :math:`(a_k, c_k, d_k[, e_k])`,
        shape (1 + F + P [+ q],) (just :math:`a_k` for a constant dispersion);
        None if its family has no dispersion."""
        attr = self._dispersion_attr.get(name)
        if attr is None:
            return None
        log_base = getattr(self, attr).log().reshape(1)
        if name not in self._slopes_attr:
            return log_base
        return torch.cat([log_base, getattr(self, self._slopes_attr[name])])

    def shape_parameters(self, name: str) -> dict[str, torch.Tensor]:
        """The further parameters of outcome ``name``'s family (such as the
        Student-t ``df``), by name; empty for most families."""
        return {shape: getattr(self, attr) for shape, attr in self._shape_attr.get(name, {}).items()}

    def observation_parameters(self) -> dict[str, str]:
        """Every parameter of the observation model (dispersions, their slopes,
        shape parameters, the serial-process scales), as ``named_parameters()``
        name -> label such as ``'sigma[y]'``, ``'log sigma[y] slopes'``,
        ``'df[y]'`` or ``'serial tau[y]'`` (one vector over ``serial_outcomes``,
        on the unit scale)."""
        names = {id(p): name for name, p in self.named_parameters()}
        labels = {}
        for k, (outcome, family) in enumerate(self.families.items()):
            if outcome in self._dispersion_attr:
                value = getattr(self, self._dispersion_attr[outcome])
                labels[names[id(value.unconstrained())]] = f"{family.dispersion_name}[{outcome}]"
            if outcome in self._slopes_attr:
                labels[self._slopes_attr[outcome]] = f"log {family.dispersion_name}[{outcome}] slopes"
            for shape, attr in self._shape_attr[outcome].items():
                labels[names[id(getattr(self, attr).unconstrained())]] = f"{shape}[{outcome}]"
        if self.serial_outcomes:
            labels["serial_scale"] = f"serial tau[{', '.join(self.serial_outcomes)}]"
        return labels

    def linear_predictor(self, b: torch.Tensor, data: LongitudinalData) -> torch.Tensor:
        """nu(b, data): the part of the linear predictor to model, on the unit scale.

        :param b: random effects, shape (..., N, q) (leading dims are
            particles or posterior draws).
        :param data: the subjects' tensors.
        :returns: shape (..., N, T, K).
        """
        raise NotImplementedError

    def residual_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters held at their starting values for
        ``FitConfig.linear_warmup_epochs``: nonlinear paths that start at zero
        output (subclasses), and the serial-process scales tau, so that the
        encoder learns to infer the process while it still matters (released
        at once, the ELBO shrinks tau before the encoder uses those
        coordinates: posterior collapse)."""
        return [self.serial_scale] if self.serial_outcomes else []

    def eta(self, b: torch.Tensor, data: LongitudinalData) -> torch.Tensor:
        """Linear predictor eta = alpha + s * nu(b, data), shape (..., N, T, K);
        with a serial process, nu gets the random effects (the first
        ``random_effects_dim`` coordinates of ``b``) and the process
        (:mod:`pyro_dgmm.serial`, the rest) is added."""
        if not self.serial_outcomes:
            return self.outcome_offset + self.outcome_scale * self.linear_predictor(b, data)
        q = self.random_effects_dim
        nu = self.linear_predictor(b[..., :q], data)
        z = b[..., q:].unflatten(-1, (len(self.serial_outcomes), self.serial_terms))
        process = serial_term(z, data.times, self.serial_span, self.serial_scale)
        nu = nu.index_add(-1, self.serial_index, process)
        return self.outcome_offset + self.outcome_scale * nu

    def mean(self, b: torch.Tensor, data: LongitudinalData) -> torch.Tensor:
        """Conditional means E[y | b] on the response scale, shape (..., N, T, K)."""
        return self.response_mean(self.eta(b, data))

    def response_mean(self, eta: torch.Tensor) -> torch.Tensor:
        """g_k^{-1}(eta_k) for every outcome k: E[y | b] from the linear predictor
        ``eta`` (..., N, T, K), when it is already at hand."""
        return torch.stack(
            [family.inverse_link(eta[..., k]) for k, family in enumerate(self.families.values())], -1
        )

    def observation_distributions(self, b: torch.Tensor, data: LongitudinalData,
                                  eta: torch.Tensor | None = None) -> dict[str, dist.Distribution]:
        """Outcome name -> distribution of y_<name> given b, batch shape (..., N, T)
        (``eta``: the linear predictor at ``b``, if already computed)."""
        eta = self.eta(b, data) if eta is None else eta
        return {
            name: family.distribution(eta[..., k], self.dispersion(name, data, b), **self.shape_parameters(name))
            for k, (name, family) in enumerate(self.families.items())
        }

    def forward(self, data: LongitudinalData, *, num_subjects: int | None = None,
                kl_scale: float = 1.0, observe: bool = True, eta_shift: torch.Tensor | None = None) -> torch.Tensor:
        """Run the model on ``data`` (a minibatch of ``num_subjects``).

        :param num_subjects: the size of the full data set the batch was
            drawn from; the likelihood and KL are scaled by
            ``num_subjects / N`` (Pyro plate subsampling).
        :param kl_scale: KL-annealing weight beta in (0, 1] on the ``b`` site.
        :param observe: condition on ``data.y`` (masked by ``data.mask``);
            False draws every cell, for prediction and imputation.
        :param eta_shift: added to the linear predictor of every cell before
            the outcomes are drawn, shape broadcastable to (N, T, K); the
            delta adjustment of :mod:`pyro_dgmm.sensitivity` (None: no shift).
        :returns: eta, shape (..., N, T, K).
        """
        n, t = data.num_subjects, data.num_visits
        q = self.latent_dim
        with subjects_plate(data, num_subjects):
            prior = StandardNormal(q, dtype=data.y.dtype, device=data.device).expand([n, 1])
            with poutine.scale(scale=kl_scale):
                b = pyro.sample("b", prior)
            eta = self.eta(b.squeeze(-2), data)
            if eta_shift is not None:
                eta = eta + eta_shift
            with pyro.plate("time", t, dim=-1):
                for k, (name, fn) in enumerate(self.observation_distributions(b.squeeze(-2), data, eta).items()):
                    if observe:
                        pyro.sample(f"y_{name}", fn.mask(data.mask[..., k]), obs=data.y[..., k])
                    else:
                        pyro.sample(f"y_{name}", fn)
            self.subject_sites(b.squeeze(-2), data, observe)
        return eta

    def subject_sites(self, b: torch.Tensor, data: LongitudinalData, observe: bool) -> None:
        """Sample sites with one value per subject beside the outcomes, inside
        the subjects plate (``b``: (..., N, q)); none here.  A joint model
        adds its event-time site (:class:`~pyro_dgmm.joint.JointModel`)."""


def training_span(schema: DataSchema) -> float:
    """The training follow-up in model time (the fitted time basis's range),
    the default ``serial_span``."""
    basis = schema.time_basis
    if not hasattr(basis, "t_max"):
        raise ConfigError(f"serial_span: the time basis {basis!r} records no time range; pass "
                          "model_options={'serial_span': ...} (the training follow-up in model time)")
    return float(basis.t_max) - min(float(basis.t_min), 0.0)


class StandardNormal(dist.MultivariateNormal):
    r"""The prior of b: :math:`\mathcal N(0, I_q)`, a ``MultivariateNormal`` in
    every respect, with the KL divergence of any ``MultivariateNormal``
    :math:`q = \mathcal N(\mu, L L^\top)` from it in closed form:

    .. math:: \mathrm{KL}(q \,\|\, \mathcal N(0, I)) = \tfrac12\big(\lVert L \rVert_F^2
              + \lVert \mu \rVert^2 - q\big) - \textstyle\sum_d \log L_{dd}

    (registered with ``register_kl``; the general Gaussian KL that it
    replaces solves triangular systems against the prior's factor).
    """

    def __init__(self, latent_dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, validate_args: bool | None = None):
        super().__init__(torch.zeros(latent_dim, dtype=dtype, device=device),
                         scale_tril=torch.eye(latent_dim, dtype=dtype, device=device),
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)


@register_kl(dist.MultivariateNormal, StandardNormal)
def _kl_from_standard_normal(q: dist.MultivariateNormal, p: StandardNormal) -> torch.Tensor:
    scale_tril = q.scale_tril
    log_det_scale = torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)  # log det L = log det Sigma / 2
    kl = 0.5 * (scale_tril.pow(2).sum((-2, -1)) + q.loc.pow(2).sum(-1) - q.event_shape[0]) - log_det_scale
    return kl.expand(torch.broadcast_shapes(q.batch_shape, p.batch_shape))


def subjects_plate(data: LongitudinalData, num_subjects: int | None = None):
    """The ``subjects`` plate (dim -2) over a batch of ``data.num_subjects``
    drawn from ``num_subjects`` (default: the batch is everything)."""
    n = data.num_subjects
    total = n if num_subjects is None else num_subjects
    return pyro.plate("subjects", total, subsample=torch.arange(n, device=data.device), dim=-2)


class DGMM(MixedModel):
    r"""Deep Generalized Mixed Model (Rizopoulos, van Gerwen & Willemsen).

    .. math:: \nu(b_i, X_i, T_{ij}) = \mu_1(X_i, T_{ij}) + \mu_2(b_i, T_{ij})

    with :class:`~pyro_dgmm.nn.FixedEffectsNet` as ``fixed_effects`` (mu1)
    and :class:`~pyro_dgmm.nn.RandomEffectsNet` as ``random_effects`` (mu2).
    ``fixed_hidden=()`` and ``random_hidden=()`` make both linear: with a
    Gaussian family this is exactly a linear mixed model, with
    covariate-by-time fixed effects if ``covariate_time=True``.
    ``time_functions`` M > 0 adds random coefficients of M learned
    functions of time to mu2 (needs the dense ``random_hidden`` net);
    :class:`~pyro_dgmm.estimator.DeepMixedModel` chooses M itself unless
    ``model_options`` give it (:class:`~pyro_dgmm.selection.TimeFunctionRace`).
    ``dispersion_model`` and the ``serial_*`` options go to :class:`MixedModel`.
    """

    def __init__(self, families: Mapping[str, Family], latent_dim: int, *,
                 offsets: Sequence[float], scales: Sequence[float],
                 dispersions: Sequence[float | None], num_covariates: int,
                 num_time_features: int, fixed_hidden: Sequence[int] = (32, 32),
                 random_hidden: Sequence[int] = (32, 32), activation: str = "tanh",
                 covariate_time: bool = False, dispersion_model: str = "constant", time_functions: int = 0,
                 **serial_options):
        super().__init__(families, latent_dim, offsets, scales, dispersions, dispersion_model=dispersion_model,
                         num_covariates=num_covariates, num_time_features=num_time_features, **serial_options)
        k = len(self.families)
        self.fixed_effects = FixedEffectsNet(num_covariates, num_time_features, k, fixed_hidden, activation,
                                             covariate_time)
        time_functions = check_int("time_functions", time_functions, minimum=0)
        if time_functions and not random_hidden:
            raise ConfigError("time_functions needs the dense random-effects net: with random_hidden=() the model "
                              "is the linear mixed model (its closed-form likelihood and tables assume it)")
        self.random_effects = RandomEffectsNet(latent_dim, num_time_features, k, random_hidden, activation,
                                               time_functions)

    @property
    def time_functions(self) -> int:
        return self.random_effects.time_functions

    def linear_predictor(self, b: torch.Tensor, data: LongitudinalData) -> torch.Tensor:
        return self.fixed_effects(data.covariates, data.time_features) + self.random_effects(b, data.time_features)

    def residual_parameters(self) -> list[torch.nn.Parameter]:
        paths = [self.fixed_effects.net, self.random_effects.coefficients, self.random_effects.joint,
                 self.random_effects.learned_basis, self.random_effects.learned_coefficients]
        return [p for path in paths if path is not None for p in path.parameters()] + super().residual_parameters()
