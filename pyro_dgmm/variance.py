r"""Marginal likelihood, standard errors, bands and model comparison.

The fit maximises the ELBO; for the variance of :math:`\hat\theta` the talk
returns to the marginal log-likelihood

.. math::

    \ell(\theta) = \sum_{i=1}^N \log p(y_i^o; \theta), \qquad
    p(y_i^o; \theta) = \int p(y_i^o \mid b; \theta)\, \mathcal N(b; 0, I)\, db,

and takes :math:`\widehat{\operatorname{var}}(\hat\theta) = \{-\nabla^2
\ell(\hat\theta)\}^{-1}`, with :math:`\ell` estimated by Monte Carlo with a
large M and differentiated by central differences.

**Estimator.** Importance sampling with the fitted encoder as proposal
:math:`q_i = \mathcal N(\mu_i, L_i L_i^\top)` (held fixed: it does not move
with :math:`\theta`):

.. math::

    \hat p_i(\theta) = \frac1S \sum_{s=1}^S w_{is}(\theta), \qquad
    w_{is}(\theta) = \frac{p(y_i^o \mid b_{is}; \theta)\, \mathcal N(b_{is}; 0, I)}
                          {q_i(b_{is})}, \qquad b_{is} = \mu_i + L_i \varepsilon_{is},

computed in log space (``logsumexp``), in float64, chunk by chunk of
subjects.  **Common random numbers**: the base noise
:math:`\varepsilon_{is} \sim \mathcal N(0, I_q)` is drawn once from a seeded
generator, so :math:`\theta \mapsto \log \hat p(\theta)` is a smooth,
deterministic function; its Hessian by autograd is exact for the estimate,
and central differences of it are not swamped by Monte Carlo noise.

**Diagnostics** per subject: Kish's effective sample size
:math:`\mathrm{ESS}_i = (\sum_s w_{is})^2 / \sum_s w_{is}^2`; the Monte
Carlo SD of :math:`\log \hat p_i` by the delta method,
:math:`\sqrt{1/\mathrm{ESS}_i - 1/S}`; and the Pareto :math:`\hat k_i` of
the weights' upper tail (Vehtari et al., PSIS): above 0.7 the estimate is
unreliable (the weights' variance is infinite in effect).

**Parameters.** Standard errors are for a chosen set of the model's
parameters (names as in ``model.named_parameters()``; dispersions are
always included unless switched off), *conditional on the others*, which
are held at their fitted values.  Positive dispersions are differentiated
on their unconstrained (log) scale and reported on the natural scale by the
delta method; their confidence intervals are transformed from the log
scale.  Directions along which :math:`\ell` is exactly flat (a one-hot
category next to an intercept, say) are not identified: the covariance is
the pseudo-inverse, and only estimable combinations have standard errors.

Shapes: ``N`` subjects, ``T`` visit slots, ``K`` outcomes, ``q`` latent
dimensions, ``S`` importance samples, ``P`` scalar parameters.
"""
from __future__ import annotations

import copy
import difflib
import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from pyro.distributions import MultivariateNormal
from torch import nn

from .bases import Polynomial
from .data import DataSchema, LongitudinalData
from .errors import ConfigError
from .posterior import observed_log_likelihood, standard_normal_log_density

#: Pareto k-hat above which an importance-sampling estimate is unreliable.
PARETO_K_THRESHOLD = 0.7
#: Parameters of the linear part of :class:`~pyro_dgmm.nn.FixedEffectsNet`.
LINEAR_FIXED_EFFECTS = (
    "fixed_effects.intercept", "fixed_effects.time_skip.weight", "fixed_effects.covariate_effects.weight",
)
#: The matrix A of the linear random effects Z A b (covariance s^2 A A').
LINEAR_RANDOM_EFFECTS = "random_effects.linear_coefficients.weight"
#: Eigenvalues of the information below this fraction of the largest are flat directions.
_NULL_RTOL = 1e-7
#: Cells (S * n * T * K) per chunk when chunk_size is not given.
_CELLS_PER_CHUNK = 2 ** 22


_EXP = {"scale": 1.0, "df": None, "adapt": False}


class InferenceWarning(UserWarning):
    """An estimate is unreliable: heavy-tailed importance weights, or a
    log-likelihood Hessian that is not negative definite."""


# ------------------------------------------------------------ Pareto k-hat


def pareto_k(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Pareto :math:`\hat k` of the upper tail of importance weights, per column.

    As in PSIS (Vehtari, Simpson, Gelman, Yao & Gabry 2024): a generalized
    Pareto distribution is fitted to the exceedances of the
    :math:`M = \lceil \min(0.2 S, 3\sqrt S) \rceil` largest weights over the
    next largest, by the estimator of Zhang & Stephens (2009).  The weights
    have finite variance for :math:`k < 1/2`; above 0.7 the estimate is
    unreliable.

    :param log_weights: shape (S, N), unnormalised log weights.
    :returns: shape (N,); ``-inf`` where the tail weights are all equal.
    """
    s = log_weights.shape[0]
    m = int(math.ceil(min(0.2 * s, 3 * math.sqrt(s))))
    top = torch.topk(log_weights, m + 1, dim=0).values  # (m + 1, N), descending
    top = top - top[:1]  # largest weight is 1
    exceedances = (top[:m].exp() - top[m:].exp()).flip(0).T  # (N, m), ascending
    return _generalized_pareto_shape(exceedances)


def _generalized_pareto_shape(x: torch.Tensor) -> torch.Tensor:
    r"""Zhang & Stephens (2009) estimate of the GPD shape k, vectorised over rows.

    Profile likelihood over a grid of :math:`\theta_j = 1/x_{(n)} +
    (1 - \sqrt{J/(j - 1/2)}) / (3 x_{(\lfloor n/4 + 1/2 \rfloor)})`,
    :math:`J = 30 + \lfloor\sqrt n\rfloor`, with
    :math:`k(\theta) = \overline{\log(1 - \theta x)}`; posterior-mean
    :math:`\hat\theta`, then :math:`\hat k` shrunk towards 1/2 with
    PSIS's weakly informative prior (weight 10 observations).

    :param x: shape (N, n), positive exceedances sorted ascending per row.
    :returns: shape (N,).
    """
    n = x.shape[-1]
    grid = 30 + int(math.sqrt(n))
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device)
    tiny = torch.finfo(x.dtype).tiny
    largest = x[..., -1:].clamp_min(tiny)
    quartile = x[..., int(n / 4 + 0.5) - 1, None].clamp_min(tiny)
    theta = 1 / largest + (1 - torch.sqrt(grid / (j - 0.5))) / (3 * quartile)  # (N, grid), theta < 1 / x_max
    k = torch.log1p(-theta.unsqueeze(-1) * x.unsqueeze(-2)).mean(-1)  # (N, grid)
    profile = n * (torch.log(-theta / k) - k - 1)
    theta_hat = (torch.softmax(profile, -1) * theta).sum(-1, keepdim=True)
    k_hat = torch.log1p(-theta_hat * x).mean(-1)
    k_hat = (n * k_hat + 10 * 0.5) / (n + 10)
    return torch.where(x[..., -1] > 0, k_hat, torch.full_like(k_hat, -math.inf))


# ---------------------------------------------- the Monte Carlo likelihood


@dataclass
class MarginalLikelihood:
    r"""Importance-sampling estimate of :math:`\log p(y_i^o; \theta)` per subject.

    ``per_subject``, ``mc_sd``, ``ess``, ``pareto_k``: shape (N,), in the
    order of ``ids``.  ``mc_sd`` is the delta-method Monte Carlo SD
    :math:`\sqrt{1/\mathrm{ESS}_i - 1/S}` of each estimate; it shrinks like
    :math:`1/\sqrt S`.  (:math:`\log \hat p_i` is biased down by about
    ``mc_sd**2 / 2``, Jensen's inequality.)
    """

    per_subject: torch.Tensor
    mc_sd: torch.Tensor
    ess: torch.Tensor
    pareto_k: torch.Tensor
    num_samples: int
    ids: np.ndarray

    @property
    def total(self) -> float:
        """The estimate of the total marginal log-likelihood sum_i log p(y_i^o)."""
        return float(self.per_subject.sum())

    @property
    def total_mc_sd(self) -> float:
        """Monte Carlo SD of :attr:`total` (subjects' draws are independent)."""
        return float(self.mc_sd.pow(2).sum().sqrt())

    @property
    def unreliable(self) -> torch.Tensor:
        """Subjects whose Pareto k-hat exceeds :data:`PARETO_K_THRESHOLD`, shape (N,)."""
        return self.pareto_k > PARETO_K_THRESHOLD

    def to_frame(self) -> pd.DataFrame:
        """One row per subject: id, log_likelihood, mc_sd, ess, pareto_k."""
        return pd.DataFrame({
            "id": self.ids, "log_likelihood": self.per_subject.cpu().numpy(), "mc_sd": self.mc_sd.cpu().numpy(),
            "ess": self.ess.cpu().numpy(), "pareto_k": self.pareto_k.cpu().numpy(),
        })


class _Bound(nn.Module):
    """Holds a model so that ``torch.func.functional_call`` can evaluate any
    function of it at substituted parameters (keys ``'model.<name>'``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


class _Layout:
    """Where each named parameter's elements sit in a flat vector theta (P,)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        params = dict(model.named_parameters())
        self.names = list(names)
        self.shapes = [params[name].shape for name in self.names]
        sizes = [math.prod(shape) for shape in self.shapes]
        self.slices = dict(zip(self.names, (slice(a - n, a) for a, n in zip(np.cumsum(sizes).tolist(), sizes))))

    def values(self, model: nn.Module) -> torch.Tensor:
        """The parameters' current values, flattened, (P,)."""
        params = dict(model.named_parameters())
        flat = [params[name].detach().reshape(-1) for name in self.names]
        return torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta (P,) -> {'model.<name>': tensor of the parameter's shape}, for functional_call."""
        return {f"model.{name}": theta[self.slices[name]].reshape(shape)
                for name, shape in zip(self.names, self.shapes)}


class _MarginalObjective:
    r"""theta -> :math:`\log \hat p(y; \theta)` with common random numbers.

    A float64 copy of the model is evaluated with the parameters ``names``
    replaced by slices of a flat vector theta (P,) (their unconstrained
    values); all other parameters stay at their fitted values.  The encoder
    proposal (loc (N, q), scale_tril (N, q, q)) is computed once; the base
    noise is regenerated chunk by chunk from ``seed``, identically for every
    theta.
    """

    def __init__(self, model, guide, data: LongitudinalData, names: Sequence[str], num_samples: int,
                 chunk_size: int | None, seed: int):
        if int(num_samples) < 2:
            raise ConfigError(f"num_samples must be at least 2, got {num_samples}")
        self.bound = _float64_copy(model, data.device)
        self.data = data.to(dtype=torch.float64)
        self.layout = _Layout(self.bound.model, names)
        self.theta = self.layout.values(self.bound.model)
        self.num_samples = int(num_samples)
        cells = self.num_samples * data.num_visits * len(data.outcomes)
        self.chunk_size = int(chunk_size or max(1, _CELLS_PER_CHUNK // cells))
        self.seed = seed
        self.proposal = _encoder_proposal(guide, data, self.chunk_size)
        if _EXP["adapt"]:
            self.proposal = self.adapted()
        self.proposal = _Proposal(self.proposal.loc, self.proposal.scale_tril * _EXP["scale"], _EXP["df"])

    @torch.no_grad()
    def adapted(self):
        locs, trils = [], []
        for chunk, b, corr in self.chunks(seed=self.seed + 1):
            log_w = self.log_weights(self.theta, chunk, b, corr)
            w = torch.softmax(log_w, 0)
            ess = 1 / w.pow(2).sum(0)
            mean = torch.einsum("sn,snq->nq", w, b)
            centred = b - mean
            cov = torch.einsum("sn,snq,snr->nqr", w, centred, centred)
            index = slice(len(locs) * 0, None)
            locs.append(mean); trils.append((cov, ess))
        mean = torch.cat(locs); cov = torch.cat([c for c, _ in trils]); ess = torch.cat([e for _, e in trils])
        alpha = (ess / (ess + 10))[:, None]
        q_loc, q_tril = self.proposal.loc, self.proposal.scale_tril
        loc = alpha * mean + (1 - alpha) * q_loc
        q_cov = q_tril @ q_tril.transpose(-1, -2)
        cov = alpha[..., None] * cov + (1 - alpha[..., None]) * q_cov
        return _Proposal(loc, torch.linalg.cholesky(cov), None)

    def chunks(self, proposal=None, seed=None) -> Iterator[tuple[LongitudinalData, torch.Tensor, torch.Tensor]]:
        r"""(chunk, b (S, n, q), :math:`\log N(b; 0, I) - \log q(b)` (S, n)), the same on every call."""
        proposal = proposal or self.proposal
        generator = torch.Generator(device=self.data.device).manual_seed(self.seed if seed is None else seed)
        for start in range(0, self.data.num_subjects, self.chunk_size):
            index = slice(start, start + self.chunk_size)
            b, log_q = proposal.draw(index, self.num_samples, generator)
            yield self.data.subset(index), b, standard_normal_log_density(b) - log_q

    def log_weights(self, theta, chunk, b, log_correction) -> torch.Tensor:
        """log w (S, n) of one chunk at theta."""
        loglik = torch.func.functional_call(self.bound, self.layout.unflatten(theta), (observed_log_likelihood, b, chunk))
        return loglik + log_correction

    def log_marginal(self, theta, chunk, b, log_correction) -> torch.Tensor:
        r""":math:`\log \hat p_i(\theta)` (n,) of one chunk."""
        log_w = self.log_weights(theta, chunk, b, log_correction)
        return torch.logsumexp(log_w, 0) - math.log(self.num_samples)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """The total estimate at theta (a scalar)."""
        return sum(self.log_marginal(theta, *c).sum() for c in self.chunks())

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """Exact Hessian of the estimate at theta by autograd, summed chunk by chunk, (P, P)."""
        return sum(torch.autograd.functional.hessian(lambda t: self.log_marginal(t, *c).sum(), theta)
                   for c in self.chunks())

    @torch.no_grad()
    def central_hessian(self, theta: torch.Tensor, step: float) -> torch.Tensor:
        r"""Hessian by central differences (as in the talk), (P, P).

        With :math:`h_j = \text{step} \cdot \max(1, |\theta_j|)`:
        :math:`H_{jk} \approx [f(\theta + h_j e_j + h_k e_k) - f(\theta + h_j e_j - h_k e_k)
        - f(\theta - h_j e_j + h_k e_k) + f(\theta - h_j e_j - h_k e_k)] / (4 h_j h_k)`
        (:math:`2P^2` evaluations; on the diagonal it is the second
        difference with step :math:`2h_j`).
        """
        p = theta.numel()
        shifts = torch.diag(step * theta.abs().clamp_min(1.0))
        hessian = theta.new_zeros(p, p)
        for j in range(p):
            for k in range(j + 1):
                plus, minus = shifts[j] + shifts[k], shifts[j] - shifts[k]
                value = (self(theta + plus) - self(theta + minus) - self(theta - minus) + self(theta - plus))
                hessian[j, k] = hessian[k, j] = value / (4 * shifts[j, j] * shifts[k, k])
        return hessian

    @torch.no_grad()
    def marginal(self, theta: torch.Tensor, ids: np.ndarray) -> MarginalLikelihood:
        """Per-subject estimates and diagnostics at theta."""
        parts = [_summarise(self.log_weights(theta, *c)) for c in self.chunks()]
        per_subject, mc_sd, ess, k_hat = (torch.cat(x) for x in zip(*parts))
        return MarginalLikelihood(per_subject, mc_sd, ess, k_hat, self.num_samples, ids)


def _float64_copy(model, device) -> _Bound:
    """A float64 copy of ``model`` on ``device``, without gradients of its own."""
    clone = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    for p in clone.parameters():
        p.requires_grad_(False)
    return _Bound(clone)


@dataclass
class _Proposal:
    loc: torch.Tensor
    scale_tril: torch.Tensor
    df: int | None

    def draw(self, index, num_samples, generator):
        loc, scale_tril = self.loc[index], self.scale_tril[index]
        eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
        if self.df:
            u = torch.randn((self.df, num_samples, loc.shape[0]), generator=generator, dtype=loc.dtype).pow(2).sum(0)
            eps = eps * (self.df / u).sqrt().unsqueeze(-1)
        b = loc + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        if self.df:
            from pyro.distributions import MultivariateStudentT
            log_q = MultivariateStudentT(torch.tensor(float(self.df), dtype=loc.dtype), loc, scale_tril).log_prob(b)
        else:
            log_q = MultivariateNormal(loc, scale_tril=scale_tril).log_prob(b)
        return b, log_q


@torch.no_grad()
def _encoder_proposal(guide, data: LongitudinalData, chunk_size: int):
    """The encoder's q(b_i | y_i): loc (N, q) and scale_tril (N, q, q) in float64."""
    parts = [guide.posterior(data.subset(slice(s, s + chunk_size))) for s in range(0, data.num_subjects, chunk_size)]
    loc = torch.cat([q.loc for q in parts]).to(torch.float64)
    scale_tril = torch.cat([q.scale_tril for q in parts]).to(torch.float64)
    return _Proposal(loc, scale_tril, None)


def _summarise(log_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log w (S, n) -> log p-hat, Monte Carlo SD, ESS, Pareto k-hat, each (n,)."""
    s = log_w.shape[0]
    log_sum = torch.logsumexp(log_w, 0)
    ess = torch.exp(2 * log_sum - torch.logsumexp(2 * log_w, 0))
    mc_sd = (1 / ess - 1 / s).clamp_min(0).sqrt()
    return log_sum - math.log(s), mc_sd, ess, pareto_k(log_w)


def _warn_unreliable(marginal: MarginalLikelihood) -> None:
    bad = marginal.unreliable
    if bad.any():
        ids = marginal.ids[bad.cpu().numpy()]
        warnings.warn(
            f"{int(bad.sum())} of {bad.numel()} subjects have Pareto k-hat > {PARETO_K_THRESHOLD} "
            f"(ids {ids[:5].tolist()}{' ...' if ids.size > 5 else ''}): their importance weights are "
            "heavy-tailed and the marginal likelihood estimate is unreliable; fit the encoder longer "
            "or use more samples",
            InferenceWarning, stacklevel=3,
        )


def marginal_log_likelihood(model, guide, data: LongitudinalData, num_samples: int = 1000, *,
                            chunk_size: int | None = None, seed: int = 0) -> MarginalLikelihood:
    r"""Importance-sampling estimate of :math:`\log p(y_i^o; \hat\theta)` per subject.

    The encoder :math:`q(b_i \mid y_i)` is the proposal (see the module
    docstring); computed in float64, batched over subjects and samples in
    chunks of ``chunk_size`` subjects (default: about 4M cells
    :math:`S \cdot n \cdot T \cdot K` per chunk).  Reproducible for a given
    ``seed`` and ``chunk_size``.  Warns (:class:`InferenceWarning`) when
    some subject's Pareto k-hat exceeds 0.7.

    :param num_samples: S, importance samples per subject.
    :returns: a :class:`MarginalLikelihood` (``.total``, ``.total_mc_sd``,
        per-subject values and diagnostics).
    """
    objective = _MarginalObjective(model, guide, data, (), num_samples, chunk_size, seed)
    marginal = objective.marginal(objective.theta, data.ids)
    _warn_unreliable(marginal)
    return marginal


# ------------------------------------------------------- standard errors


@dataclass
class StandardErrors:
    r"""Wald inference for a set of model parameters from the observed information.

    ``parameter_names`` are model parameters, flattened in that order into
    the P scalars named ``labels`` (``slices`` maps a name to its positions).
    ``theta`` (P,) holds their values on the working (unconstrained) scale,
    ``hessian`` (P, P) the Hessian of the estimated :math:`\ell` there,
    ``covariance`` (P, P) the pseudo-inverse of ``-hessian`` over its
    non-flat directions and ``null_space`` (P, r) an orthonormal basis of
    the flat ones.  ``estimate``, ``se``, ``lower``, ``upper`` (P,) are on
    the reported scale (dispersions on their natural scale, with intervals
    transformed from the log scale); ``se`` is NaN for parameters that move
    along a flat direction (not identified).  ``marginal`` is the
    log-likelihood estimate at ``theta`` with the same draws.
    """

    parameter_names: list[str]
    labels: list[str]
    slices: dict[str, slice]
    theta: torch.Tensor
    hessian: torch.Tensor
    covariance: torch.Tensor
    null_space: torch.Tensor
    estimate: torch.Tensor
    se: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    level: float
    method: str
    marginal: MarginalLikelihood

    def summary(self) -> pd.DataFrame:
        """Table indexed by label: estimate, se, z, p_value, lower, upper."""
        return _wald_table(pd.Index(self.labels, name="parameter"), self.estimate, self.se, self.lower,
                           self.upper)


def standard_errors(model, guide, data: LongitudinalData, parameters: Sequence[str] = (), *,
                    include_dispersion: bool = True, method: str = "autograd", num_samples: int = 1000,
                    level: float = 0.95, step: float = 1e-4, chunk_size: int | None = None,
                    seed: int = 0) -> StandardErrors:
    r"""Standard errors from the Hessian of the estimated marginal log-likelihood.

    :math:`\widehat{\operatorname{cov}}(\hat\theta) = \{-\nabla^2_\theta
    \log \hat p(y; \hat\theta)\}^{+}` over the chosen parameters, the
    others held at their fitted values: standard errors conditional on
    them.  (For a linear mixed model the fixed effects and the residual SD
    are nearly orthogonal to the random-effects covariance, so conditioning
    on it changes their standard errors by well under 1%.)

    :param parameters: names from ``model.named_parameters()`` whose
        elements get standard errors, e.g. :data:`LINEAR_FIXED_EFFECTS`.
    :param include_dispersion: add every outcome's dispersion parameter
        (residual SD, Beta precision).
    :param method: ``'autograd'`` (exact Hessian of the estimate; cheap up
        to a few hundred parameters) or ``'central'`` (central differences
        of the estimate, as in the talk; :math:`2P^2` passes over the data).
    :param num_samples: S, importance samples per subject.
    :param level: confidence level of the intervals.
    :param step: relative step of the central differences.
    :returns: a :class:`StandardErrors`.  Warns (:class:`InferenceWarning`)
        when ``-hessian`` has a negative eigenvalue (not at a maximum, or
        Monte Carlo noise) or some subject's Pareto k-hat exceeds 0.7.
    """
    if method not in ("autograd", "central"):
        raise ConfigError(f"method must be 'autograd' or 'central', got '{method}'")
    _check_level(level)
    names = _select_parameters(model, parameters, include_dispersion)
    objective = _MarginalObjective(model, guide, data, names, num_samples, chunk_size, seed)
    theta = objective.theta
    hessian = objective.hessian(theta) if method == "autograd" else objective.central_hessian(theta, step)
    labels = _element_labels(model, objective.layout)
    covariance, null_space = _pseudo_inverse(-hessian, labels)
    reported = _reported_scale(objective, covariance, null_space, level)
    marginal = objective.marginal(theta, data.ids)
    _warn_unreliable(marginal)
    return StandardErrors(names, labels, objective.layout.slices, theta, hessian, covariance, null_space,
                          *reported, level, method, marginal)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")


def _dispersion_labels(model) -> dict[str, str]:
    """Parameter name of each dispersion -> label such as ``'sigma[y]'``."""
    names = {id(p): name for name, p in model.named_parameters()}
    labels = {}
    for outcome, family in model.families.items():
        value = model.dispersion(outcome)
        if value is not None:
            labels[names[id(value.unconstrained())]] = f"{family.dispersion_name}[{outcome}]"
    return labels


def _select_parameters(model, parameters: Sequence[str], include_dispersion: bool) -> list[str]:
    """Dispersions (optionally) then ``parameters``, checked against the model's names."""
    if isinstance(parameters, str):
        parameters = [parameters]
    known = [name for name, _ in model.named_parameters()]
    for name in parameters:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"the model has no parameter '{name}'{hint}; its parameters are {known}")
    chosen = list(_dispersion_labels(model)) if include_dispersion else []
    chosen += [name for name in parameters if name not in chosen]
    if not chosen:
        raise ConfigError("no parameters chosen: pass parameters=[...] (names from model.named_parameters())")
    return chosen


def _element_labels(model, layout: _Layout) -> list[str]:
    """One label per scalar: ``'sigma[y]'`` or ``'name[i,j]'`` (``'name'`` for one-element tensors)."""
    dispersions = _dispersion_labels(model)
    labels = []
    for name, shape in zip(layout.names, layout.shapes):
        base = dispersions.get(name, name)
        if math.prod(shape) == 1:
            labels.append(base)
        else:
            labels += [f"{base}[{','.join(map(str, index))}]" for index in np.ndindex(*shape)]
    return labels


def _pseudo_inverse(information: torch.Tensor, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Covariance :math:`I^{+}` and the flat directions of the information I (P, P).

    Eigenvalues with :math:`|\lambda| \le 10^{-7} \max|\lambda|` are flat
    (not identified) and left out of the inverse; negative ones remain (their
    variances may come out negative, giving NaN standard errors) and raise
    an :class:`InferenceWarning` naming the parameters involved.

    :returns: covariance (P, P) and null-space basis (P, r).
    """
    information = (information + information.T) / 2
    eigenvalues, vectors = torch.linalg.eigh(information)
    tolerance = _NULL_RTOL * eigenvalues.abs().max().clamp_min(torch.finfo(information.dtype).tiny)
    flat = eigenvalues.abs() <= tolerance
    negative = eigenvalues < -tolerance
    if negative.any():
        loading = vectors[:, negative].pow(2).sum(1)
        worst = [labels[i] for i in loading.argsort(descending=True)[:3].tolist()]
        warnings.warn(
            f"the negative Hessian of the log-likelihood is not positive definite ({int(negative.sum())} "
            f"negative eigenvalue(s), mostly along {worst}): the estimates are not at a maximum of the "
            "marginal likelihood, or the Monte Carlo error is too large; standard errors are unreliable",
            InferenceWarning, stacklevel=3,
        )
    inverse = torch.where(flat, torch.zeros_like(eigenvalues), 1 / eigenvalues)
    return (vectors * inverse) @ vectors.T, vectors[:, flat]


def _estimable(matrix: torch.Tensor, null_space: torch.Tensor) -> torch.Tensor:
    """Rows of ``matrix`` (R, P) orthogonal to the flat directions, shape (R,)."""
    along = (matrix @ null_space).norm(dim=-1)
    return along <= 1e-6 * matrix.norm(dim=-1).clamp_min(1e-300)


def _reported_scale(objective: _MarginalObjective, covariance: torch.Tensor, null_space: torch.Tensor,
                    level: float) -> tuple[torch.Tensor, ...]:
    r"""Estimates, SEs and Wald intervals on the reported scale, each (P,).

    Unconstrained parameters are reported as they are.  A PyroParam
    ``<attr>_unconstrained`` is reported as ``<attr>`` = c(u) (for a
    positive dispersion, exp(u)): SE :math:`|c'(u)|\,\mathrm{se}(u)`,
    interval :math:`c(u \pm z\, \mathrm{se}(u))` (c acts elementwise).
    """
    theta = objective.theta
    z = NormalDist().inv_cdf(0.5 + level / 2)
    variance = covariance.diagonal()
    se = torch.where(_estimable(torch.eye(theta.numel(), dtype=theta.dtype), null_space) & (variance > 0),
                     variance.clamp_min(0).sqrt(), torch.full_like(theta, math.nan))
    estimate, scale = theta.clone(), torch.ones_like(theta)
    lower, upper = theta - z * se, theta + z * se
    for name, where in objective.layout.slices.items():
        if name.endswith("_unconstrained"):
            constrain = _constraint_of(objective.bound, name)
            u = theta[where].clone().requires_grad_(True)
            value = constrain(u)
            scale[where] = torch.autograd.grad(value.sum(), u)[0].abs()
            estimate[where] = value.detach()
            ends = torch.stack([constrain(lower[where]), constrain(upper[where])])
            lower[where], upper[where] = ends.min(0).values, ends.max(0).values
    return estimate, scale * se, lower, upper


def _constraint_of(bound: _Bound, name: str):
    """u -> the constrained value of the PyroParam stored as ``name`` = '<path>_unconstrained'."""
    path = name[: -len("_unconstrained")]
    module_path, _, attr = path.rpartition(".")

    def constrain(u: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            bound, {f"model.{name}": u}, (lambda m: getattr(m.get_submodule(module_path), attr),))

    return constrain


def _wald_table(index: pd.Index, estimate, se, lower, upper) -> pd.DataFrame:
    """estimate, se, z = estimate / se, two-sided normal p_value, lower, upper."""
    estimate, se = np.asarray(estimate.detach().cpu()), np.asarray(se.detach().cpu())
    z = estimate / se
    p_value = np.array([math.erfc(abs(v) / math.sqrt(2)) for v in z])
    return pd.DataFrame({"estimate": estimate, "se": se, "z": z, "p_value": p_value,
                         "lower": np.asarray(lower.detach().cpu()), "upper": np.asarray(upper.detach().cpu())},
                        index=index)


# ------------------------------------------------ population curve bands


def population_curve(model, data: LongitudinalData, errors: StandardErrors, *, scale: str = "link",
                     chunk_size: int = 256) -> pd.DataFrame:
    r"""The typical subject's curve with pointwise delta-method bands.

    .. math::

        \eta^0_{ijk}(\theta) = \alpha_k + s_k\, \nu_k(b = 0, X_i, T_{ij}),
        \qquad \mathrm{se}_{ijk} = \sqrt{J_{ijk}\, \widehat{\operatorname{cov}}(\hat\theta)\, J_{ijk}^\top},
        \quad J_{ijk} = \partial \eta^0_{ijk} / \partial \theta

    over the parameters in ``errors`` (the others fixed, as there).  For the
    DGMM :math:`\nu(0, X, T) = \mu_1(X, T) + \mu_2(0, T)`, and
    :math:`\mu_2(0, T) = 0` when the random-effects net is linear: then
    :math:`\eta^0` is the population mean curve :math:`\alpha + s\mu_1`
    of the linear predictor.  Include every parameter of :math:`\mu_1` in
    ``errors`` for an honest band.

    :param data: covariates and times at which to draw the curve, e.g.
        ``schema.transform(grid, require_observed=False)``.
    :param scale: ``'link'`` (:math:`\eta^0`) or ``'response'``
        (:math:`g^{-1}(\eta^0)`, SE by the delta method, interval endpoints
        mapped by the increasing :math:`g^{-1}`; for a non-identity link
        this is the curve of a subject with b = 0, not the population mean
        of :math:`g^{-1}(\eta)`).
    :returns: one row per visit of ``data``: id, time and per outcome
        ``<name>``, ``<name>_se``, ``<name>_lower``, ``<name>_upper``.
    """
    if scale not in ("link", "response"):
        raise ConfigError(f"scale must be 'link' or 'response', got '{scale}'")
    bound = _float64_copy(model, data.device)
    layout = _Layout(bound.model, errors.parameter_names)
    covariance = errors.covariance.to(data.device)
    data64 = data.to(dtype=torch.float64)

    def curve(theta: torch.Tensor, chunk: LongitudinalData) -> torch.Tensor:
        return torch.func.functional_call(bound, layout.unflatten(theta), (_typical_eta, chunk))

    parts = []
    for start in range(0, data.num_subjects, chunk_size):
        chunk = data64.subset(slice(start, start + chunk_size))
        jacobian = torch.func.jacfwd(curve)(errors.theta.to(data.device), chunk)  # (n, T, K, P)
        variance = torch.einsum("...p,pr,...r->...", jacobian, covariance, jacobian)
        parts.append((curve(errors.theta.to(data.device), chunk), variance.clamp_min(0).sqrt()))
    eta, se = (torch.cat(x) for x in zip(*parts))
    z = NormalDist().inv_cdf(0.5 + errors.level / 2)
    lower, upper = eta - z * se, eta + z * se
    if scale == "response":
        eta, se, lower, upper = _to_response(model, eta, se, lower, upper)
    columns = {}
    for k, name in enumerate(data.outcomes):
        columns.update({name: eta[..., k], f"{name}_se": se[..., k], f"{name}_lower": lower[..., k],
                        f"{name}_upper": upper[..., k]})
    return data.to_long(columns)


def _typical_eta(model, data: LongitudinalData) -> torch.Tensor:
    """eta at b = 0, shape (N, T, K)."""
    return model.eta(data.y.new_zeros(data.num_subjects, model.latent_dim), data)


def _to_response(model, eta, se, lower, upper) -> tuple[torch.Tensor, ...]:
    """Map the link-scale curve (N, T, K) to the response scale outcome by outcome."""
    families = list(model.families.values())

    def inverse(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([f.inverse_link(x[..., k]) for k, f in enumerate(families)], -1)

    eta_ = eta.detach().requires_grad_(True)
    mean = inverse(eta_)
    slope = torch.autograd.grad(mean.sum(), eta_)[0]
    return mean.detach(), slope.abs() * se, inverse(lower), inverse(upper)


# -------------------------------------- linear models: data-scale coefficients


def linear_coefficients(model, schema: DataSchema, errors: StandardErrors) -> pd.DataFrame:
    r"""The fixed effects of a linear DGMM as regression coefficients on the data scale.

    With ``fixed_hidden=()`` and a ``poly(d)`` basis, outcome k has

    .. math::

        \eta_k = \alpha_k + s_k\Big[c_k + \sum_{f=1}^d \gamma_{kf} z^f
                 + \sum_p \beta_{kp} x_p\Big], \qquad z = (t - m_t)/s_t,

    with numeric covariates standardised, :math:`x_p = (v_p - m_p)/s_p`, and
    categorical ones one-hot.  Rewritten as :math:`\eta_k = a_{k0} +
    \sum_{m \ge 1} a_{km} t^m + \sum_p a_{kp} v_p + \sum_{\ell \ge 1}
    a_{k\ell}\,[\text{level} = \ell]`: per-time-unit polynomial
    coefficients, per-covariate-unit effects and contrasts of each level
    with the first, a linear map :math:`a = a_0 + M\theta`, so
    :math:`\widehat{\operatorname{cov}}(a) = M \widehat{\operatorname{cov}}(\theta) M^\top`.
    These are the coefficients statsmodels ``MixedLM`` reports for the
    design ``[1, t, ..., t^d, v, dummies]``.

    :param errors: from :func:`standard_errors` with ``parameters``
        including :data:`LINEAR_FIXED_EFFECTS` (those the model has).
    :returns: table indexed by (outcome, term): estimate, se, z, p_value,
        lower, upper.
    """
    fixed = getattr(model, "fixed_effects", None)
    if fixed is None or fixed.net is not None:
        raise ConfigError("linear_coefficients needs a DGMM with a linear fixed-effects net "
                          "(model_options=dict(fixed_hidden=()))")
    index, matrix, offset = _linear_map(model, schema, errors)
    matrix = matrix.to(errors.theta)
    estimate = offset.to(errors.theta) + matrix @ errors.theta
    variance = torch.einsum("rp,pq,rq->r", matrix, errors.covariance, matrix)
    se = torch.where(_estimable(matrix, errors.null_space), variance.clamp_min(0).sqrt(),
                     torch.full_like(estimate, math.nan))
    z = NormalDist().inv_cdf(0.5 + errors.level / 2)
    return _wald_table(index, estimate, se, estimate - z * se, estimate + z * se)


def _linear_map(model, schema: DataSchema, errors: StandardErrors) -> tuple[pd.MultiIndex, torch.Tensor, torch.Tensor]:
    """Index (outcome, term), matrix M (R, P) and offset a_0 (R,) of :func:`linear_coefficients`."""
    names = [n for n in LINEAR_FIXED_EFFECTS if n in dict(model.named_parameters())]
    missing = [n for n in names if n not in errors.slices]
    if missing:
        raise ConfigError(f"errors lacks {missing}: compute them with standard_errors(..., "
                          f"parameters={names})")
    raw = _raw_polynomial(schema)  # (d + 1, d + 1): z-power coefficients -> t-power coefficients
    encoder = schema.covariate_encoder
    numeric = list(encoder.numeric.items())
    p_total = errors.theta.numel()
    rows, offsets, terms = [], [], []
    for k, outcome in enumerate(schema.outcomes):
        s_k = float(model.outcome_scale[k])
        pos = _positions(model, errors, k)
        block = torch.zeros(raw.shape[0], p_total, dtype=torch.float64)
        block[:, pos["intercept"]] = s_k * raw[:, 0]
        for f, column in enumerate(pos["time"], start=1):
            block[:, column] = s_k * raw[:, f]
        extra = []
        for p, (col, (mean, sd)) in enumerate(numeric):
            row = torch.zeros(p_total, dtype=torch.float64)
            row[pos["covariates"][p]] = s_k / sd
            block[0, pos["covariates"][p]] -= s_k * mean / sd
            extra.append((col, row))
        start = len(numeric)
        for col, levels in encoder.categorical.items():
            first = pos["covariates"][start]
            block[0, first] += s_k
            for j, level in enumerate(levels[1:], start=start + 1):
                row = torch.zeros(p_total, dtype=torch.float64)
                row[pos["covariates"][j]], row[first] = s_k, -s_k
                extra.append((f"{col}[{level}]", row))
            start += len(levels)
        time_terms = [schema.time_col if m == 1 else f"{schema.time_col}^{m}" for m in range(1, raw.shape[0])]
        terms += [(outcome, t) for t in ["intercept", *time_terms, *(label for label, _ in extra)]]
        rows += [block, *(row[None] for _, row in extra)]
        offsets += [float(model.outcome_offset[k])] + [0.0] * (raw.shape[0] - 1 + len(extra))
    index = pd.MultiIndex.from_tuples(terms, names=["outcome", "term"])
    return index, torch.cat(rows), torch.tensor(offsets, dtype=torch.float64)


def _positions(model, errors: StandardErrors, k: int) -> dict:
    """Positions in theta of outcome k's intercept, time coefficients and covariate coefficients."""
    params = dict(model.named_parameters())

    def flat(name: str, *index: int) -> int:
        return errors.slices[name].start + int(np.ravel_multi_index(index, tuple(params[name].shape)))

    num_time = params[LINEAR_FIXED_EFFECTS[1]].shape[1]
    num_cov = params[LINEAR_FIXED_EFFECTS[2]].shape[1] if LINEAR_FIXED_EFFECTS[2] in params else 0
    return {
        "intercept": flat(LINEAR_FIXED_EFFECTS[0], k),
        "time": [flat(LINEAR_FIXED_EFFECTS[1], k, f) for f in range(num_time)],
        "covariates": [flat(LINEAR_FIXED_EFFECTS[2], k, p) for p in range(num_cov)],
    }


def _raw_polynomial(schema: DataSchema) -> torch.Tensor:
    r"""R (d + 1, d + 1) with :math:`\sum_f c_f z^f = \sum_m (Rc)_m t^m`, :math:`z = (t - m_t)/s_t`:
    :math:`R_{mf} = \binom{f}{m} (-m_t)^{f-m} / s_t^f` for :math:`m \le f`."""
    basis = schema.time_basis
    if not isinstance(basis, Polynomial):
        raise ConfigError(f"data-scale coefficients need a polynomial time basis (time_basis='poly(d)'), "
                          f"got {basis.name}; use population_curve for other bases")
    d, center, spread = basis.degree, basis.center, basis.scale
    return torch.tensor([[math.comb(f, m) * (-center) ** (f - m) / spread ** f if m <= f else 0.0
                          for f in range(d + 1)] for m in range(d + 1)], dtype=torch.float64)


def linear_random_effects_covariance(model, schema: DataSchema) -> pd.DataFrame:
    r"""Random-effects covariance of a linear DGMM on the data scale.

    With ``random_hidden=()`` the random part of :math:`\eta_k` is
    :math:`s_k \sum_f (A b)_{kf} z^f = \sum_m u_{km} t^m` with
    :math:`u_k = s_k R A_k b` (R from the time basis, as in
    :func:`linear_coefficients`), so :math:`\operatorname{cov}(u) =
    \tilde R A A^\top \tilde R^\top` (block-diagonal :math:`\tilde R` with
    blocks :math:`s_k R`): the ``cov_re`` of MixedLM with random
    intercept and time powers.  Invariant to rotations of b.

    :returns: square table indexed by (outcome, term) on both axes.
    """
    effects = getattr(model, "random_effects", None)
    if effects is None or effects.coefficients is not None or effects.joint is not None:
        raise ConfigError("linear_random_effects_covariance needs a DGMM with a linear random-effects net "
                          "(model_options=dict(random_hidden=()))")
    raw = _raw_polynomial(schema)
    blocks = [float(model.outcome_scale[k]) * raw for k in range(len(schema.outcomes))]
    weight = effects.linear_coefficients.weight.detach().to(torch.float64).cpu()  # (K (d + 1), q)
    u = torch.block_diag(*blocks) @ weight
    terms = ["intercept"] + [schema.time_col if m == 1 else f"{schema.time_col}^{m}" for m in range(1, raw.shape[0])]
    index = pd.MultiIndex.from_tuples([(o, t) for o in schema.outcomes for t in terms], names=["outcome", "term"])
    return pd.DataFrame((u @ u.T).numpy(), index=index, columns=index)
