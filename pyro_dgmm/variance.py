r"""Marginal likelihood, standard errors, bands and model comparison.

The fit maximises the ELBO; for the variance of :math:`\hat\theta` the talk
returns to the marginal log-likelihood

.. math::

    \ell(\theta) = \sum_{i=1}^N \log p(y_i^o; \theta), \qquad
    p(y_i^o; \theta) = \int p(y_i^o \mid b; \theta)\, \mathcal N(b; 0, I)\, db,

and takes :math:`\widehat{\operatorname{var}}(\hat\theta) = \{-\nabla^2
\ell(\hat\theta)\}^{-1}`, with :math:`\ell` estimated by Monte Carlo with a
large M and differentiated by central differences.

**Estimator.** Importance sampling, per subject, from a Gaussian proposal
:math:`q_i = \mathcal N(m_i, L_i L_i^\top)` that does not move with
:math:`\theta`:

.. math::

    \log \hat p_i(\theta) = \log \sum_{s=1}^S a_{is}\, w_{is}(\theta), \qquad
    w_{is}(\theta) = \frac{p(y_i^o \mid b_{is}; \theta)\, \mathcal N(b_{is}; 0, I)}{q_i(b_{is})},
    \qquad b_{is} = m_i + L_i \varepsilon_{is},

computed in log space (``logsumexp``), in float64, chunk by chunk of
subjects.

* *Proposal.* The encoder :math:`q(b_i \mid y_i)`, or by default (``adapt``)
  a proposal fitted to each subject's posterior: the Laplace approximation
  (Newton's method from the encoder's mean), then moved to the
  importance-weighted mean and covariance of b from pilot runs with it,
  1.5 times wider, as proposal (repeated until the proposals stop moving).
  This removes the amortisation gap of the encoder (and copes with a poor
  one); for a linear mixed model, whose posterior is Gaussian, the weights
  become nearly constant.
* *Calibration weights* :math:`a_{is} \ge 0`, :math:`\sum_s a_{is} = 1`, make
  the sample moments of the base noise exact,
  :math:`\sum_s a_{is}\varepsilon_{is} = 0` and
  :math:`\sum_s a_{is}\varepsilon_{is}\varepsilon_{is}^\top = I`: the regression
  (control-variate) estimator of Owen & Zhou (2000) with controls
  :math:`\varepsilon` and :math:`\varepsilon\varepsilon^\top - I`, whose
  proposal means are known.  :math:`a_{is} = 1/S` gives the plain estimator.
  It matters for the Hessian: the observed information is the complete-data
  information minus the posterior variance of the complete-data score (Louis
  1982), a difference of two large numbers when the random effects explain
  most of the variation; the controls remove most of the Monte Carlo error
  in the second (measured: standard errors within 2% of the exact ones at
  S = 1000 for a linear mixed model, against 10-15% without).
* *Common random numbers.*  The base noise :math:`\varepsilon_{is}` is drawn
  once from a seeded generator (regenerated chunk by chunk), so
  :math:`\theta \mapsto \log \hat p(\theta)` is a smooth, deterministic
  function: its autograd Hessian is exact for the estimate, and central
  differences of it are not swamped by Monte Carlo noise.

**Diagnostics** per subject: Kish's effective sample size of the weights
:math:`a_{is} w_{is}`; the Monte Carlo SD of :math:`\log\hat p_i` from the
residual variance of the regression of :math:`w_{is}` on the controls (the
plain estimator's :math:`\sqrt{1/\mathrm{ESS}_i - 1/S}` when the controls
explain nothing); and the Pareto :math:`\hat k_i` of the upper tail of the
:math:`w_{is}` (PSIS): above 0.7 the estimate is unreliable.

**Inference.** :func:`standard_errors` inverts the Hessian over named model
parameters, conditional on the others; Wald intervals need the maximum of
:math:`\ell`, which :func:`maximize_marginal_likelihood` reaches from the
SVI estimates.  :func:`linear_coefficients` and :func:`population_curve`
carry the covariance to data-scale coefficients and curves;
:func:`information_criteria` and :func:`likelihood_ratio_test` compare
models (docs/inference.md says when that is meaningful for neural models).

**Sharding.** :math:`\ell` and its derivatives are sums over subjects.
With ``num_shards`` shards (subject *i* in id order -> shard *i mod
num_shards*; default: one per ``torch.distributed`` process, see
:mod:`pyro_dgmm.parallel`) each process fits the proposals and draws the
base noise (seeded per shard) of the subjects of its shards only, and
computes its partial sums of :math:`\log\hat p`, of its gradient and of its
Hessian, which are then summed over processes with ``all_reduce``
(autograd never runs through a collective: each process differentiates its
own partial sum).  The adaptation's stopping rule takes the largest move
over all processes, and per-subject results are gathered on every
process, so every process gets the same numbers, and the same as one
process with the same ``num_shards``.  ``distributed_input=True``: each
process passes only its own subjects (:mod:`pyro_dgmm.partitioned`);
per-subject results are then gathered in rank order.

Shapes: ``N`` subjects, ``T`` visit slots, ``K`` outcomes, ``q`` latent
dimensions, ``S`` importance samples, ``P`` scalar parameters, ``F =
q + q(q+1)/2`` controls.

Example (Pareto k-hat of light-tailed importance weights is small):

>>> import torch
>>> log_w = torch.distributions.Normal(0.0, 0.5).sample((3, 2000))
>>> bool((pareto_k(log_w) < 0.5).all())
True
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
from .options import check_bool, check_choice, check_float, check_int
from .parallel import Shards, all_reduce_max, all_reduce_sum, gather_objects, is_main_process, shard_seed
from .posterior import observed_log_likelihood, standard_normal_log_density, subjects_per_chunk, weighted_moments

#: Pareto k-hat above which an importance-sampling estimate is unreliable.
PARETO_K_THRESHOLD = 0.7
#: Parameters of the linear part of :class:`~pyro_dgmm.nn.FixedEffectsNet`.
LINEAR_FIXED_EFFECTS = (
    "fixed_effects.intercept", "fixed_effects.time_skip.weight", "fixed_effects.covariate_effects.weight",
)
#: The covariate-by-time fixed effects of a DGMM built with ``covariate_time=True``.
COVARIATE_TIME_EFFECTS = "fixed_effects.covariate_time.weight"
#: The matrix A of the linear random effects Z A b (covariance s^2 A A').
LINEAR_RANDOM_EFFECTS = "random_effects.linear_coefficients.weight"
#: Eigenvalues of the information below this fraction of the largest are flat directions.
_NULL_RTOL = 1e-7
#: Newton steps ignore curvatures below this fraction of the largest.
_STEP_RTOL = 1e-3
#: Cells (S * n * T * K) per chunk when chunk_size is not given.
_CELLS_PER_CHUNK = 2 ** 22
#: Pilot runs that adapt the proposal: at most this many, until no subject's
#: proposal moves by more than _ADAPT_KL (KL divergence); their scale factor (to see the tails).
_ADAPT_ROUNDS = 8
_ADAPT_KL = 0.01
_PILOT_INFLATION = 1.5
#: Newton steps (and step halvings per step) for the Laplace approximations.
_LAPLACE_STEPS = 30
_LAPLACE_HALVINGS = 10
#: Pilot effective sample size at which an adapted proposal is half pilot moments, half previous proposal.
_ADAPT_PRIOR = 10.0


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


# ------------------------------------------------------ importance sampling


@dataclass
class _Proposal:
    """Gaussian proposals N(loc_i, L_i L_i^T): loc (N, q), scale_tril (N, q, q), float64."""

    loc: torch.Tensor
    scale_tril: torch.Tensor

    def draw(self, index: slice, num_samples: int, generator: torch.Generator):
        """b (S, n, q), log q(b) (S, n) and the base noise eps (S, n, q) for subjects ``index``."""
        loc, scale_tril = self.loc[index], self.scale_tril[index]
        eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
        b = loc + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        return b, MultivariateNormal(loc, scale_tril=scale_tril).log_prob(b), eps


@dataclass
class _Draws:
    """One chunk of n subjects with its fixed draws: b (S, n, q), log N(b; 0, I) - log q(b)
    (S, n), log calibration weights (S, n) and centred controls (S, n, F) with their Gram
    matrices (n, F, F)."""

    chunk: LongitudinalData
    b: torch.Tensor
    log_correction: torch.Tensor
    log_calibration: torch.Tensor
    controls: torch.Tensor
    gram: torch.Tensor


@torch.no_grad()
def _encoder_proposal(guide, data: LongitudinalData, chunk_size: int) -> _Proposal:
    """The encoder's q(b_i | y_i) for every subject, in float64."""
    parts = [guide.posterior(chunk) for chunk in data.chunks(chunk_size)]
    return _Proposal(torch.cat([q.loc for q in parts]).to(torch.float64),
                     torch.cat([q.scale_tril for q in parts]).to(torch.float64))


def _calibration(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Calibration weights of the regression estimator for base noise eps (S, n, q).

    With controls :math:`\phi_s = (\varepsilon_s, \mathrm{vech}(\varepsilon_s
    \varepsilon_s^\top - I))` (proposal mean 0) and their Gram matrix
    :math:`G = \sum_s (\phi_s - \bar\phi)(\phi_s - \bar\phi)^\top`,
    :math:`a_s = 1/S - (\phi_s - \bar\phi)^\top G^{-1}\bar\phi`, so that
    :math:`\sum_s a_s = 1` and :math:`\sum_s a_s \phi_s = 0`.  The rare
    negative weights (extreme draws) are set to zero and the rest
    renormalised, so that :math:`\sum_s a_s w_s > 0`.

    :returns: log a (S, n), centred controls (S, n, F), G (n, F, F).
    """
    s, _, q = eps.shape
    rows, cols = torch.triu_indices(q, q, device=eps.device)
    phi = torch.cat([eps, eps[..., rows] * eps[..., cols] - (rows == cols).to(eps.dtype)], -1)
    mean = phi.mean(0)
    centred = phi - mean
    gram = torch.einsum("snf,sng->nfg", centred, centred)
    a = 1 / s - torch.einsum("snf,nf->sn", centred, torch.linalg.solve(gram, mean))
    a = a.clamp_min(0)
    return (a / a.sum(0)).log(), centred, gram


def _regression_sd(log_w: torch.Tensor, draws: _Draws) -> torch.Tensor:
    r"""Monte Carlo SD of :math:`\log \hat p_i`, (n,), from the residuals
    :math:`e_s` of the least-squares regression of :math:`w_s` on the
    controls: :math:`\widehat{\operatorname{var}}(\hat p) = \sum_s e_s^2 / \{S (S - F - 1)\}`,
    then the delta method, :math:`\mathrm{sd}(\hat p) / \hat p`."""
    s, _, f = draws.controls.shape
    w = (log_w - log_w.max(0).values).exp()  # (S, n), scaled so the largest is 1
    centred_w = w - w.mean(0)
    beta = torch.linalg.solve(draws.gram, torch.einsum("snf,sn->nf", draws.controls, centred_w))
    residual = centred_w - torch.einsum("snf,nf->sn", draws.controls, beta)
    variance = residual.pow(2).sum(0) / (s * max(s - f - 1, 1))
    return variance.sqrt() / (draws.log_calibration.exp() * w).sum(0)


def _summarise(log_w: torch.Tensor, draws: _Draws) -> tuple[torch.Tensor, ...]:
    """log p-hat, Monte Carlo SD, ESS and Pareto k-hat of one chunk, each (n,)."""
    log_aw = log_w + draws.log_calibration
    log_p = torch.logsumexp(log_aw, 0)
    ess = torch.exp(2 * log_p - torch.logsumexp(2 * log_aw, 0))
    return log_p, _regression_sd(log_w, draws), ess, pareto_k(log_w)


@dataclass
class MarginalLikelihood:
    r"""Importance-sampling estimate of :math:`\log p(y_i^o; \theta)` per subject.

    ``per_subject``, ``mc_sd``, ``ess``, ``pareto_k``: shape (N,), in the
    order of ``ids`` (every process's subjects when sharded).  ``mc_sd`` is the Monte Carlo SD of each estimate (see
    the module docstring); it shrinks like :math:`1/\sqrt S`.
    (:math:`\log \hat p_i` is biased down by about ``mc_sd**2 / 2``.)
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
        """Monte Carlo SD of :attr:`total` (the subjects' draws are independent)."""
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


def _float64_copy(model, device) -> _Bound:
    """A float64 copy of ``model`` on ``device``, without gradients of its own."""
    clone = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    for p in clone.parameters():
        p.requires_grad_(False)
    return _Bound(clone)


class _Layout:
    """Where each named parameter's elements sit in a flat vector theta (P,)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        params = dict(model.named_parameters())
        self.names = list(names)
        self.shapes = [params[name].shape for name in self.names]
        ends = np.cumsum([math.prod(shape) for shape in self.shapes]).tolist()
        self.slices = {name: slice(end - math.prod(shape), end)
                       for name, shape, end in zip(self.names, self.shapes, ends)}

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
    values); all other parameters stay at their fitted values.  The
    proposal is fitted at one theta (:meth:`move_to`; first the fitted
    values) and then held fixed; the base noise is regenerated chunk by
    chunk from ``seed``, identically for every theta.  Only this process's
    shards' subjects are held (``self.data``, shard after shard; chunks
    never straddle two shards); totals are summed over processes.
    """

    def __init__(self, model, guide, data: LongitudinalData, names: Sequence[str], num_samples: int,
                 chunk_size: int | None, seed: int, adapt: bool, num_shards: int | None = None,
                 distributed_input: bool = False):
        num_samples = check_int("num_samples", num_samples)
        if num_samples < minimum_samples(model.latent_dim):
            raise ConfigError(f"num_samples must be at least {minimum_samples(model.latent_dim)} (10 per control variate "
                              f"for latent_dim={model.latent_dim}), got {num_samples}")
        chunk_size, seed = check_int("chunk_size", chunk_size, none=True), check_int("seed", seed, minimum=0)
        adapt, num_shards = check_bool("adapt", adapt), check_int("num_shards", num_shards, none=True)
        shards = Shards.current(num_shards)
        local = shards.local_positions(data.num_subjects, distributed_input=distributed_input)
        self.num_shards, self.distributed_input = shards.num_shards, distributed_input
        self.positions = np.concatenate(list(local.values()))
        ends = np.cumsum([len(index) for index in local.values()]).tolist()
        self.parts = [(s, end - len(index), end) for (s, index), end in zip(local.items(), ends)]
        if shards.num_shards > 1:
            data = data.subset(self.positions)
        self.bound = _float64_copy(model, data.device)
        self.data = data.to(dtype=torch.float64)
        self.layout = _Layout(self.bound.model, names)
        self.theta = self.layout.values(self.bound.model).to(data.device)
        self.num_samples = int(num_samples)
        self.chunk_size = int(chunk_size or subjects_per_chunk(self.num_samples, data, cells=_CELLS_PER_CHUNK))
        self.seed = seed
        self.adapt = adapt
        self.proposal = _encoder_proposal(guide, data, self.chunk_size)
        self.move_to(self.theta)

    def chunks(self) -> Iterator[tuple[int, slice]]:
        """(shard, subjects of ``self.data``) of at most ``chunk_size`` subjects each."""
        for shard, begin, end in self.parts:
            for start in range(begin, end, self.chunk_size):
                yield shard, slice(start, min(start + self.chunk_size, end))

    def move_to(self, theta: torch.Tensor) -> None:
        """Refit the proposal at theta, starting from the current one (with
        ``adapt``; else it stays the encoder); it then stays fixed."""
        self.theta = theta
        if self.adapt:
            self.proposal = self._adapted()

    def draws(self, seed: int | None = None, proposal: _Proposal | None = None) -> Iterator[_Draws]:
        """The chunks with their draws; the same on every call (for the same seed and proposal).
        Each shard's noise comes from its own generator (seeded with ``seed`` itself for one shard)."""
        seed = self.seed if seed is None else seed
        proposal = proposal or self.proposal
        generators = {}
        for shard, index in self.chunks():
            if shard not in generators:
                generators[shard] = torch.Generator(device=self.data.device).manual_seed(
                    seed if self.num_shards == 1 else shard_seed(seed, shard))
            b, log_q, eps = proposal.draw(index, self.num_samples, generators[shard])
            yield _Draws(self.data.subset(index), b, standard_normal_log_density(b) - log_q, *_calibration(eps))

    def log_weights(self, theta: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """log w (S, n) of one chunk at theta."""
        loglik = torch.func.functional_call(self.bound, self.layout.unflatten(theta),
                                            (observed_log_likelihood, draws.b, draws.chunk))
        return loglik + draws.log_correction

    def log_marginal(self, theta: torch.Tensor, draws: _Draws) -> torch.Tensor:
        r""":math:`\log \hat p_i(\theta) = \log \sum_s a_s w_s(\theta)`, (n,), of one chunk."""
        return torch.logsumexp(self.log_weights(theta, draws) + draws.log_calibration, 0)

    def _total(self, terms: Iterator[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Sum of this process's chunk ``terms``, summed over processes."""
        return all_reduce_sum(sum(terms, torch.zeros_like(like)).detach())

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """The total estimate at theta (a scalar)."""
        return self._total((self.log_marginal(theta, d).sum() for d in self.draws()), theta.new_zeros(()))

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """Gradient of the estimate at theta by autograd, summed chunk by chunk and over processes, (P,)."""
        return self._total((torch.autograd.functional.jacobian(lambda t: self.log_marginal(t, d).sum(), theta)
                            for d in self.draws()), theta)

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """Exact Hessian of the estimate at theta by autograd, summed chunk by chunk and over processes, (P, P)."""
        return self._total((torch.autograd.functional.hessian(lambda t: self.log_marginal(t, d).sum(), theta)
                            for d in self.draws()), theta.new_zeros(theta.numel(), theta.numel()))

    @torch.no_grad()
    def central_hessian(self, theta: torch.Tensor, step: float) -> torch.Tensor:
        r"""Hessian by central differences (as in the talk), (P, P).

        With :math:`h_j = \text{step} \cdot \max(1, |\theta_j|)`:
        :math:`H_{jk} \approx [f(\theta + h_j e_j + h_k e_k) - f(\theta + h_j e_j - h_k e_k)
        - f(\theta - h_j e_j + h_k e_k) + f(\theta - h_j e_j - h_k e_k)] / (4 h_j h_k)`
        (:math:`2P(P + 1)` evaluations; on the diagonal it is the second
        difference with step :math:`2h_j`).
        """
        p = theta.numel()
        shifts = torch.diag(step * theta.abs().clamp_min(1.0))
        hessian = theta.new_zeros(p, p)
        for j in range(p):
            for k in range(j + 1):
                plus, minus = shifts[j] + shifts[k], shifts[j] - shifts[k]
                value = self(theta + plus) - self(theta + minus) - self(theta - minus) + self(theta - plus)
                hessian[j, k] = hessian[k, j] = value / (4 * shifts[j, j] * shifts[k, k])
        return hessian

    @torch.no_grad()
    def marginal(self, theta: torch.Tensor) -> MarginalLikelihood:
        """Per-subject estimates and diagnostics at theta."""
        parts = [_summarise(self.log_weights(theta, d), d) for d in self.draws()]
        columns = [torch.cat(x) for x in zip(*parts)]
        ids, columns = self._gather_subjects(columns)
        return MarginalLikelihood(*columns, self.num_samples, ids)

    def _gather_subjects(self, columns: list[torch.Tensor]) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Per-subject ``columns`` of every process, in id order (partitioned
        input: rank after rank), and their ids."""
        parts = gather_objects((self.positions, self.data.ids, [c.cpu() for c in columns]))
        rank = np.concatenate([np.full(len(p[0]), r if self.distributed_input else 0) for r, p in enumerate(parts)])
        order = np.lexsort((np.concatenate([p[0] for p in parts]), rank))
        ids = np.concatenate([p[1] for p in parts])[order]
        gathered = [torch.cat([p[2][k] for p in parts])[torch.as_tensor(order)].to(columns[k].device)
                    for k in range(len(columns))]
        return ids, gathered

    @torch.enable_grad()
    def _laplace(self) -> _Proposal:
        r"""Laplace approximations :math:`\mathcal N(\hat b_i, H_i^{-1})` of the posteriors at theta.

        :math:`\hat b_i` maximises :math:`f_i(b) = \log p(y_i^o \mid b) + \log \mathcal N(b; 0, I)`
        by Newton's method from the current proposal's mean, for all subjects
        at once (:math:`f_i` depends on :math:`b_i` only, so the gradient of
        :math:`\sum_i f_i` holds every subject's gradient, and q more
        backward passes every subject's q x q Hessian); steps are halved
        where they do not increase :math:`f_i`.  :math:`H_i` is
        :math:`-\nabla^2 f_i` with its eigenvalues made positive.
        """
        params = self.layout.unflatten(self.theta.detach())

        def log_joint(b: torch.Tensor, chunk: LongitudinalData) -> torch.Tensor:
            loglik = torch.func.functional_call(self.bound, params, (observed_log_likelihood, b, chunk))
            return loglik + standard_normal_log_density(b)

        locs, trils = [], []
        for _, index in self.chunks():
            chunk = self.data.subset(index)
            b = self.proposal.loc[index]
            for _ in range(_LAPLACE_STEPS):
                value, gradient, precision = _newton_terms(log_joint, b, chunk)
                step = torch.linalg.solve(precision, gradient)
                for _ in range(_LAPLACE_HALVINGS):
                    worse = log_joint(b + step, chunk).detach() < value
                    if not worse.any():
                        break
                    step = torch.where(worse.unsqueeze(-1), step / 2, step)
                b = b + step
                if step.abs().max() < 1e-8:
                    break
            locs.append(b)
            trils.append(torch.linalg.cholesky(torch.linalg.inv(_newton_terms(log_joint, b, chunk)[2])))
        return _Proposal(torch.cat(locs), torch.cat(trils))

    @torch.no_grad()
    def _adapted(self) -> _Proposal:
        r"""The proposal moved to the importance-weighted posterior moments of b at theta.

        Starting from the Laplace approximations (:meth:`_laplace`, from the
        current proposal's means: a poor encoder is no obstacle), each pilot
        run (seeds ``seed + 1``, ``seed + 2``, ...) from
        :math:`\mathcal N(m, 1.5^2 LL^\top)`, with :math:`\mathcal N(m, LL^\top)`
        the proposal so far, gives per subject the weighted mean
        :math:`\tilde m` and covariance :math:`\tilde\Sigma` of b and the ESS
        (the wider pilot sees the posterior's far side); the next proposal is
        :math:`\mathcal N(\alpha\tilde m + (1-\alpha) m, \alpha\tilde\Sigma + (1-\alpha) L L^\top)`
        with :math:`\alpha = \mathrm{ESS}/(\mathrm{ESS} + 10)`; until no subject's
        proposal moves by more than 0.01 in KL divergence (at most 8 runs).
        """
        proposal = self._laplace()
        for round_ in range(_ADAPT_ROUNDS):
            pilot = _Proposal(proposal.loc, _PILOT_INFLATION * proposal.scale_tril)
            moments = [weighted_moments(self.log_weights(self.theta, d) + d.log_calibration, d.b)
                       for d in self.draws(seed=self.seed + 1 + round_, proposal=pilot)]
            mean, covariance, ess = (torch.cat(x) for x in zip(*moments))
            alpha = (ess / (ess + _ADAPT_PRIOR)).unsqueeze(-1)
            previous = proposal.scale_tril @ proposal.scale_tril.transpose(-1, -2)
            covariance = alpha.unsqueeze(-1) * covariance + (1 - alpha.unsqueeze(-1)) * previous
            moved = _Proposal(alpha * mean + (1 - alpha) * proposal.loc, torch.linalg.cholesky(covariance))
            proposal, shift = moved, all_reduce_max(_kl(moved, proposal).max().clone())
            if shift < _ADAPT_KL:
                break
        return proposal


def _newton_terms(log_joint, b: torch.Tensor, chunk: LongitudinalData) -> tuple[torch.Tensor, ...]:
    """f_i(b_i) (n,), its gradient (n, q) and positive-definite negative Hessian (n, q, q)."""
    b = b.detach().requires_grad_(True)
    value = log_joint(b, chunk)
    gradient = torch.autograd.grad(value.sum(), b, create_graph=True)[0]
    rows = [torch.autograd.grad(gradient[:, j].sum(), b, retain_graph=True)[0] for j in range(b.shape[-1])]
    eigenvalues, vectors = torch.linalg.eigh(-torch.stack(rows, -2))
    precision = (vectors * eigenvalues.abs().clamp_min(1e-6).unsqueeze(-2)) @ vectors.transpose(-1, -2)
    return value.detach(), gradient.detach(), precision.detach()


def _kl(p: _Proposal, q: _Proposal) -> torch.Tensor:
    """KL(p || q) per subject, (N,)."""
    return torch.distributions.kl_divergence(MultivariateNormal(p.loc, scale_tril=p.scale_tril),
                                             MultivariateNormal(q.loc, scale_tril=q.scale_tril))


def _warn_unreliable(marginal: MarginalLikelihood) -> None:
    bad = marginal.unreliable
    if bad.any() and is_main_process():
        ids = marginal.ids[bad.cpu().numpy()]
        warnings.warn(
            f"{int(bad.sum())} of {bad.numel()} subjects have Pareto k-hat > {PARETO_K_THRESHOLD} "
            f"(ids {ids[:5].tolist()}{' ...' if ids.size > 5 else ''}): their importance weights are "
            "heavy-tailed and the marginal likelihood estimate is unreliable; use more samples or fit "
            "the encoder longer",
            InferenceWarning, stacklevel=3,
        )


def marginal_log_likelihood(model, guide, data: LongitudinalData, num_samples: int = 1000, *,
                            adapt: bool = True, chunk_size: int | None = None, seed: int = 0,
                            num_shards: int | None = None, distributed_input: bool = False) -> MarginalLikelihood:
    r"""Importance-sampling estimate of :math:`\log p(y_i^o; \hat\theta)` per subject.

    See the module docstring: encoder proposal (moved to the pilot's
    weighted moments if ``adapt``), calibration weights, float64, chunks of
    ``chunk_size`` subjects (default: about 4M cells
    :math:`S \cdot n \cdot T \cdot K` per chunk).  Reproducible for a given
    ``seed`` and ``chunk_size``.  Warns (:class:`InferenceWarning`) when
    some subject's Pareto k-hat exceeds 0.7.

    :param num_samples: S, importance samples per subject (at least
        10 per control variate: 50 for q = 2).
    :param num_shards: sharding over processes (module docstring); default
        one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects
        (module docstring).
    :returns: a :class:`MarginalLikelihood` (``.total``, ``.total_mc_sd``,
        per-subject values and diagnostics), the same on every process.
    """
    objective = _MarginalObjective(model, guide, data, (), num_samples, chunk_size, seed, adapt, num_shards,
                                   distributed_input)
    marginal = objective.marginal(objective.theta)
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
                    level: float = 0.95, adapt: bool = True, step: float = 1e-4, chunk_size: int | None = None,
                    seed: int = 0, num_shards: int | None = None, distributed_input: bool = False) -> StandardErrors:
    r"""Standard errors from the Hessian of the estimated marginal log-likelihood.

    :math:`\widehat{\operatorname{cov}}(\hat\theta) = \{-\nabla^2_\theta
    \log \hat p(y; \hat\theta)\}^{+}` over the chosen parameters, the
    others held at their fitted values: standard errors conditional on
    them.  (For a linear mixed model the fixed effects and the residual SD
    are nearly orthogonal to the random-effects covariance: conditioning on
    it changed their standard errors by under 1% in our checks.)  Wald
    theory needs :math:`\hat\theta` at the maximum of the likelihood, which
    SVI only approaches: see :func:`maximize_marginal_likelihood`.

    :param parameters: names from ``model.named_parameters()`` whose
        elements get standard errors, e.g. :data:`LINEAR_FIXED_EFFECTS`.
    :param include_dispersion: add every outcome's dispersion parameter
        (residual SD, Beta precision).
    :param method: ``'autograd'`` (exact Hessian of the estimate; cheap up
        to a few hundred parameters) or ``'central'`` (central differences
        of the estimate, as in the talk; :math:`2P(P+1)` passes over the data).
    :param num_samples: S, importance samples per subject.
    :param level: confidence level of the intervals.
    :param adapt: adapt the proposal to each subject (module docstring).
    :param step: relative step of the central differences.
    :param num_shards: sharding over processes (module docstring); default
        one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects
        (module docstring). The Hessian is
        each process's Hessian of its partial sum, summed over processes.
    :returns: a :class:`StandardErrors`.  Warns (:class:`InferenceWarning`)
        when ``-hessian`` has a negative eigenvalue (not at a maximum, or
        Monte Carlo noise) or some subject's Pareto k-hat exceeds 0.7.
    """
    check_choice("method", method, ("autograd", "central"))
    _check_level(level)
    check_float("step", step, low=0, low_open=True)
    names = _select_parameters(model, parameters, include_dispersion)
    objective = _MarginalObjective(model, guide, data, names, num_samples, chunk_size, seed, adapt, num_shards,
                                   distributed_input)
    theta = objective.theta
    hessian = objective.hessian(theta) if method == "autograd" else objective.central_hessian(theta, step)
    labels = _element_labels(model, objective.layout)
    covariance, null_space = _pseudo_inverse(-hessian, labels)
    reported = _reported_scale(objective, covariance, null_space, level)
    marginal = objective.marginal(theta)
    _warn_unreliable(marginal)
    return StandardErrors(names, labels, objective.layout.slices, theta, hessian, covariance, null_space,
                          *reported, level, method, marginal)


@dataclass
class Maximization:
    """What :func:`maximize_marginal_likelihood` did: the estimated total
    log-likelihood at the start and at the end (each with the proposal
    fitted there), the steps taken and whether the Newton decrement fell
    below the tolerance."""

    log_likelihood_before: float
    log_likelihood_after: float
    steps: int
    converged: bool


def maximize_marginal_likelihood(model, guide, data: LongitudinalData, parameters: Sequence[str] = (), *,
                                 include_dispersion: bool = True, num_samples: int = 1000,
                                 max_steps: int = 30, tolerance: float = 1e-2, adapt: bool = True,
                                 chunk_size: int | None = None, seed: int = 0, num_shards: int | None = None,
                                 distributed_input: bool = False) -> Maximization:
    r"""Move the chosen parameters of ``model`` (in place) to the maximum of
    the estimated marginal log-likelihood, the others held fixed.

    SVI maximises the ELBO, whose maximiser differs from the maximum
    likelihood estimate by the encoder's amortisation gap (for a linear
    mixed model: fixed effects up to about 1 SE off and a residual SD about
    2% high on 300 subjects), which biases Wald intervals.  Starting from
    the SVI values, damped saddle-free Newton steps

    .. math:: \theta \leftarrow \theta + (|I| + \mu \lambda_{\max} \mathrm{Id})^{-1} g,
              \qquad g = \nabla \log\hat p, \quad I = -\nabla^2 \log\hat p

    (:math:`|I|`: the eigenvalues of I made positive, so that the steps also
    climb where the likelihood curves upwards, as it does far from the
    maximum) on the common-random-number estimate
    :math:`\log \hat p(y; \theta)`: a step is kept only if it increases
    it, otherwise the damping :math:`\mu` grows tenfold; until the Newton
    decrement :math:`g^\top \Delta / 2` is below ``tolerance``
    (log-likelihood units; 0.01 puts the estimate within about 0.15 SE of
    the maximum, and the Monte Carlo error of the gradient stops much
    smaller ones from being reached).  The proposal is refitted at every
    iterate (``adapt``), so that the estimate is accurate where its
    derivatives are taken; with a proposal fixed at the start, the optimiser
    drifts to where the Monte Carlo error of the estimate flatters it.  The
    steps use only directions whose absolute curvature exceeds
    :math:`10^{-3}` times the largest: flat ones (a rotation of b, an
    unused latent direction) stay where SVI left them.

    :param parameters: names from ``model.named_parameters()``; for a
        linear DGMM all of them (:data:`LINEAR_FIXED_EFFECTS`,
        :data:`LINEAR_RANDOM_EFFECTS` and the dispersion).
    :param num_shards: sharding over processes (module docstring); default
        one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects
        (module docstring). Every process
        takes the same steps.
    :returns: a :class:`Maximization`; the model's parameters are updated.
    """
    names = _select_parameters(model, parameters, include_dispersion)
    objective = _MarginalObjective(model, guide, data, names, num_samples, chunk_size, seed, adapt, num_shards,
                                   distributed_input)
    theta, damping, steps, converged = objective.theta, 0.0, 0, False
    before = value = objective(theta)
    for _ in range(max_steps):
        gradient = objective.gradient(theta)
        step = _ascent_step(gradient, -objective.hessian(theta))
        delta = step(damping)
        if float(gradient @ delta) / 2 < tolerance:
            converged = True
            break
        while (candidate := objective(theta + delta)) <= value and damping < 1e6:
            damping = max(10 * damping, 1e-3)
            delta = step(damping)
        if candidate <= value:
            break
        theta, damping, steps = theta + delta, damping / 10, steps + 1
        objective.move_to(theta)
        value = objective(theta)
    _assign(model, objective.layout, theta)
    return Maximization(float(before), float(value), steps, converged)


def minimum_samples(latent_dim: int) -> int:
    """The fewest importance samples per subject the estimator accepts: 10 per
    control variate, of which there are q + q(q + 1)/2."""
    return 10 * (latent_dim + latent_dim * (latent_dim + 1) // 2)


def refine(model, guide, data: LongitudinalData, *, num_samples: int | None = None, seed: int = 0,
           num_shards: int | None = None, distributed_input: bool = False) -> dict:
    r"""Maximum-likelihood refinement after SVI (``FitConfig.refine``): the
    linear fixed effects (with the covariate-by-time terms, if the model
    has them), the linear random-effects map and the dispersions
    that ``model`` has are moved to the maximum of the estimated marginal
    log-likelihood (:func:`maximize_marginal_likelihood`), the networks'
    other weights held at their SVI values.

    For a linear DGMM (``fixed_hidden=()``, ``random_hidden=()``) with a
    Gaussian family these are all its parameters, and the result is the
    maximum likelihood estimate of the linear mixed model, whatever the
    number of random effects; for a deep model it removes the part of the
    amortisation gap that the linear parts and dispersions carry.

    :param num_samples: importance samples per subject (default: 500, or
        :func:`minimum_samples` if more).
    :returns: :class:`Maximization`'s fields as a dict, with the parameters
        refined and the seconds taken.  (The encoder, amortised for the SVI
        parameters, then needs fitting again; ``DeepMixedModel.fit`` does so.)
    """
    import time

    start = time.perf_counter()
    known = dict(model.named_parameters())
    linear = (*LINEAR_FIXED_EFFECTS, COVARIATE_TIME_EFFECTS, LINEAR_RANDOM_EFFECTS)
    names = [name for name in linear if name in known]
    if not names and not _dispersion_labels(model):
        raise ConfigError(f"refine: {type(model).__name__} has none of the parameters the refinement moves "
                          f"({', '.join(linear)}) and no dispersion; "
                          "call maximize_marginal_likelihood with the names of its own parameters")
    num_samples = num_samples or max(500, minimum_samples(model.latent_dim))
    result = maximize_marginal_likelihood(model, guide, data, names, num_samples=num_samples, seed=seed,
                                          num_shards=num_shards, distributed_input=distributed_input)
    return {**vars(result), "parameters": names + list(_dispersion_labels(model).values()),
            "seconds": time.perf_counter() - start}


def _ascent_step(gradient: torch.Tensor, information: torch.Tensor):
    r"""damping :math:`\mu` -> the step :math:`\sum_k v_k v_k^\top g / (|\lambda_k| + \mu\lambda_{\max})`
    over the eigenpairs of the information with :math:`|\lambda_k| > 10^{-3} \lambda_{\max}`,
    :math:`\lambda_{\max} = \max_k |\lambda_k|`.

    Taking :math:`|\lambda_k|` (saddle-free Newton, Dauphin et al. 2014)
    climbs along directions of negative curvature too, as far from the
    maximum there are; near-flat directions (a rotation of b, an
    unused latent direction) are left alone, where a Newton step
    could be huge.
    """
    eigenvalues, vectors = torch.linalg.eigh((information + information.T) / 2)
    curvature = eigenvalues.abs()
    largest = curvature.max().clamp_min(torch.finfo(curvature.dtype).tiny)
    keep = curvature > _STEP_RTOL * largest
    vectors, curvature = vectors[:, keep], curvature[keep]
    projected = vectors.T @ gradient

    def step(damping: float) -> torch.Tensor:
        return vectors @ (projected / (curvature + damping * largest))

    return step


def _assign(model, layout: _Layout, theta: torch.Tensor) -> None:
    """Copy theta (P,) into the model's parameters ``layout.names``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in layout.unflatten(theta).items():
            target = params[key.removeprefix("model.")]
            target.copy_(value.to(target))


def _check_level(level: float) -> None:
    check_float("level", level, low=0, high=1, low_open=True, high_open=True)


def _dispersion_labels(model) -> dict[str, str]:
    """Parameter name of each observation-model parameter (dispersions, their
    slopes, shape parameters such as the Student-t df) -> label such as
    ``'sigma[y]'`` (:meth:`~pyro_dgmm.model.MixedModel.observation_parameters`)."""
    return model.observation_parameters()


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
    identified = _estimable(torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device), null_space)
    se = torch.where(identified & (variance > 0), variance.clamp_min(0).sqrt(), torch.full_like(theta, math.nan))
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
                     chunk_size: int = 64) -> pd.DataFrame:
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
    for chunk in data64.chunks(chunk_size):
        jacobian = torch.func.jacrev(curve, chunk_size=256)(errors.theta.to(data.device), chunk)  # (n, T, K, P)
        variance = torch.einsum("...p,pr,...r->...", jacobian, covariance, jacobian)
        parts.append((curve(errors.theta.to(data.device), chunk), variance.clamp_min(0).sqrt()))
    eta, se = (torch.cat(x) for x in zip(*parts))
    z = NormalDist().inv_cdf(0.5 + errors.level / 2)
    lower, upper = eta - z * se, eta + z * se
    if scale == "response":
        eta, se, lower, upper = _to_response(model, eta, se, lower, upper)
    # the outcome shift (non-zero for Gaussian outcomes only, identity link) back in float64
    eta, lower, upper = (data.response_values(x) for x in (eta, lower, upper))
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
    eta_ = eta.detach().requires_grad_(True)
    mean = model.response_mean(eta_)
    slope = torch.autograd.grad(mean.sum(), eta_)[0]
    return mean.detach(), slope.abs() * se, model.response_mean(lower), model.response_mean(upper)


# -------------------------------------- linear models: data-scale coefficients


def linear_coefficients(model, schema: DataSchema, errors: StandardErrors) -> pd.DataFrame:
    r"""The fixed effects of a linear DGMM as regression coefficients on the data scale.

    With ``fixed_hidden=()`` and a ``poly(d)`` basis, outcome k has

    .. math::

        \eta_k = \alpha_k + s_k\Big[c_k + \sum_{f=1}^d \gamma_{kf} z^f
                 + \sum_p \beta_{kp} x_p\Big], \qquad z = (t - m_t)/s_t,

    with numeric covariates standardised, :math:`x_p = (v_p - m_p)/s_p`, and
    categorical ones in treatment contrasts (0/1 per level but the first).  Rewritten as :math:`\eta_k = a_{k0} +
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
    if fixed.covariate_time is not None:
        raise ConfigError("linear_coefficients does not tabulate covariate-by-time terms "
                          "(covariate_time=True); use standard_errors(...).summary() for them")
    index, matrix, offset = _linear_map(model, schema, errors)
    matrix = matrix.to(errors.theta)
    estimate = offset.to(errors.theta) + matrix @ errors.theta
    variance = torch.einsum("rp,pq,rq->r", matrix, errors.covariance, matrix)
    se = torch.where(_estimable(matrix, errors.null_space) & (variance > 0), variance.clamp_min(0).sqrt(),
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
        for j, label in enumerate(encoder.columns[len(numeric):], start=len(numeric)):  # treatment contrasts
            row = torch.zeros(p_total, dtype=torch.float64)
            row[pos["covariates"][j]] = s_k
            extra.append((label, row))
        time_terms = [schema.time_col if m == 1 else f"{schema.time_col}^{m}" for m in range(1, raw.shape[0])]
        terms += [(outcome, t) for t in ["Intercept", *time_terms, *(label for label, _ in extra)]]
        rows += [block, *(row[None] for _, row in extra)]
        offsets += [float(model.outcome_offset[k]) + float(schema.shift[k])] + [0.0] * (raw.shape[0] - 1 + len(extra))
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
    # the basis is fitted to times measured from the schema's origin: t below is the user's numeric time
    # (datetimes: time_unit since the earliest training visit)
    origin = schema.time_origin if schema.time_kind == "numeric" else 0.0
    d, center, spread = basis.degree, basis.center + origin, basis.scale
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
    terms = ["Intercept"] + [schema.time_col if m == 1 else f"{schema.time_col}^{m}" for m in range(1, raw.shape[0])]
    index = pd.MultiIndex.from_tuples([(o, t) for o in schema.outcomes for t in terms], names=["outcome", "term"])
    return pd.DataFrame((u @ u.T).numpy(), index=index, columns=index)


# ---------------------------------------------------------- model comparison


def count_parameters(model, data: LongitudinalData, *, max_parameters: int = 2000, seed: int = 0) -> int:
    r"""The number of locally identified parameters of ``model`` (its
    encoder's are variational, not model, parameters).

    The observation model depends on :math:`\theta` only through
    :math:`\eta(b, X, T)` and the dispersions; the count is the rank of the
    Jacobian of :math:`\theta \mapsto (\eta(b_s, X_i, T_{ij}), \sigma)` at the
    fitted values, over draws :math:`b_s \sim \mathcal N(0, I)` and up to 64
    subjects of ``data`` (at least twice as many outputs as parameters),
    minus :math:`q(q-1)/2` for rotations of b, which leave the marginal
    likelihood unchanged because the prior is :math:`\mathcal N(0, I)` and
    the DGMM reads b through linear layers.  Exact redundancies such as
    inactive units do not count.  For the linear DGMM with random intercept and slope this is
    MixedLM's count: fixed effects, the 3 parameters of D and sigma.

    :param max_parameters: above this many parameters a ConfigError is
        raised (the rank is then expensive, and AIC and BIC are not
        meaningful anyway; see docs/inference.md).
    """
    names = [name for name, _ in model.named_parameters()]
    bound = _float64_copy(model, data.device)
    layout = _Layout(bound.model, names)
    theta = layout.values(bound.model).to(data.device)
    if theta.numel() > max_parameters:
        raise ConfigError(f"the model has {theta.numel()} parameters, more than max_parameters="
                          f"{max_parameters}: AIC and BIC are not meaningful for such networks; pass "
                          "num_parameters explicitly if you want them anyway")
    chunk = data.subset(slice(0, 64)).to(dtype=torch.float64)
    cells = chunk.num_subjects * chunk.num_visits * len(chunk.outcomes)
    num_draws = max(4, math.ceil(2 * theta.numel() / cells))
    generator = torch.Generator(device=data.device).manual_seed(seed)
    b = torch.randn((num_draws, chunk.num_subjects, model.latent_dim), generator=generator, dtype=torch.float64,
                    device=data.device)

    def outputs(t: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(bound, layout.unflatten(t), (_distribution_parameters, b, chunk))

    jacobian = torch.func.jacrev(outputs, chunk_size=256)(theta)
    rank = int(torch.linalg.matrix_rank(jacobian, rtol=_NULL_RTOL))
    return rank - model.latent_dim * (model.latent_dim - 1) // 2


def _distribution_parameters(model, b: torch.Tensor, data: LongitudinalData) -> torch.Tensor:
    """eta(b, data) flattened, followed by the dispersions: all the observation model depends on."""
    extra = [value.reshape(-1) for name in model.outcomes
             for value in (model.dispersion(name, data, b), *model.shape_parameters(name).values()) if value is not None]
    return torch.cat([model.eta(b, data).reshape(-1), *extra])


@dataclass
class InformationCriteria:
    r"""Log-likelihood and information criteria of a fitted model on some data.

    ``aic`` :math:`= -2\hat\ell + 2p`; ``bic`` :math:`= -2\hat\ell + p \log n`
    with n the number of observed cells (statsmodels' convention for
    MixedLM; with n = subjects BIC penalises less).  ``mc_sd`` is the Monte
    Carlo SD of :math:`\hat\ell` (and so half that of AIC and BIC).
    """

    log_likelihood: float
    mc_sd: float
    num_parameters: int
    num_observations: int

    @property
    def aic(self) -> float:
        return -2 * self.log_likelihood + 2 * self.num_parameters

    @property
    def bic(self) -> float:
        return -2 * self.log_likelihood + math.log(self.num_observations) * self.num_parameters


def information_criteria(model, guide, data: LongitudinalData, *, num_parameters: int | None = None,
                         num_samples: int = 1000, adapt: bool = True, chunk_size: int | None = None,
                         seed: int = 0, num_shards: int | None = None,
                         distributed_input: bool = False) -> InformationCriteria:
    """Marginal log-likelihood (:func:`marginal_log_likelihood`), AIC and BIC.

    :param num_parameters: p; default :func:`count_parameters` (on rank
        0's data with ``distributed_input``).
    :param num_shards: sharding over processes (module docstring); default
        one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects
        (module docstring).
    """
    marginal = marginal_log_likelihood(model, guide, data, num_samples, adapt=adapt, chunk_size=chunk_size,
                                       seed=seed, num_shards=num_shards, distributed_input=distributed_input)
    if num_parameters is None:
        num_parameters = gather_objects(count_parameters(model, data, seed=seed))[0]
    observed = torch.tensor(int(data.mask.sum()), dtype=torch.int64)
    if distributed_input:
        all_reduce_sum(observed)
    return InformationCriteria(marginal.total, marginal.total_mc_sd, int(num_parameters), int(observed))


@dataclass
class LikelihoodRatioTest:
    r""":math:`2(\hat\ell_1 - \hat\ell_0)` on ``df`` degrees of freedom, its
    chi-square p-value and the statistic's Monte Carlo SD."""

    statistic: float
    df: int
    p_value: float
    mc_sd: float


def likelihood_ratio_test(null: InformationCriteria, alternative: InformationCriteria) -> LikelihoodRatioTest:
    r"""Likelihood-ratio test of a model nested in another, fitted to the same data.

    The statistic :math:`2(\hat\ell_1 - \hat\ell_0)` is referred to
    :math:`\chi^2_{p_1 - p_0}` (a negative statistic, possible through Monte
    Carlo or optimisation error, gives p = 1).  Valid for nested models fitted
    by maximum likelihood (see :func:`maximize_marginal_likelihood`) with
    the null inside the parameter space; conservative when the null puts a
    variance on its boundary (testing a random effect); not valid when
    parameters of the larger model vanish under the null (a network unit
    with zero output weight): see docs/inference.md.
    """
    df = alternative.num_parameters - null.num_parameters
    if df <= 0:
        raise ConfigError(f"the alternative must have more parameters than the null: got {alternative.num_parameters} "
                          f"and {null.num_parameters}")
    if null.num_observations != alternative.num_observations:
        raise ConfigError(f"the models were evaluated on different data ({null.num_observations} and "
                          f"{alternative.num_observations} observed cells)")
    statistic = 2 * (alternative.log_likelihood - null.log_likelihood)
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(max(statistic, 0.0) / 2, dtype=torch.float64)))
    return LikelihoodRatioTest(statistic, df, p_value, 2 * math.hypot(null.mc_sd, alternative.mc_sd))
