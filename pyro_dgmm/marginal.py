r"""The importance-sampled marginal log-likelihood of a fitted model.

The fit maximises the ELBO; likelihood-based inference (standard errors in
:mod:`pyro_dgmm.wald`, AIC/BIC and likelihood-ratio tests in
:mod:`pyro_dgmm.comparison`) returns to the marginal log-likelihood

.. math::

    \ell(\theta) = \sum_{i=1}^N \log p(y_i^o; \theta), \qquad
    p(y_i^o; \theta) = \int p(y_i^o \mid b; \theta)\, \mathcal N(b; 0, I)\, db,

estimated here by Monte Carlo with a large number of draws.

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
  become nearly constant.  The proposal comes from the posterior engine
  (:func:`pyro_dgmm.posterior.gaussian_proposal`), as every sampler of
  b | y does.
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

**Closed form.**  When the log joint :math:`f(b) = \log p(y_i^o \mid b)
+ \log \mathcal N(b; 0, I)` is quadratic in b (Gaussian outcomes whose
linear predictor is linear in b and whose dispersion does not depend on
b: the linear mixed model), the integral is Gaussian and, expanded at any
point :math:`b_0` with gradient :math:`g` and Hessian :math:`-A` of f there,

.. math::

    \log p(y_i^o; \theta) = f(b_0) + \tfrac12 g^\top A^{-1} g
        + \tfrac q2 \log 2\pi - \tfrac12 \log\det A

exactly (:func:`quadratic_log_marginal`).  ``closed_form=True`` (default)
uses it where it holds, checked numerically at the fitted parameters (the
formula must give the same value at two expansion points), and importance
sampling elsewhere.  Its autograd derivatives in :math:`\theta` are the
exact score and observed information, cross terms between the fixed
effects and the random-effects map included (importance sampling with a
proposal held fixed gets those only up to Monte Carlo error, which along
the flat rotations of b shows up as spurious curvature), so standard
errors and the refinement reproduce MixedLM's.

**Diagnostics** per subject: Kish's effective sample size of the weights
:math:`a_{is} w_{is}`; the Monte Carlo SD of :math:`\log\hat p_i` from the
residual variance of the regression of :math:`w_{is}` on the controls (the
plain estimator's :math:`\sqrt{1/\mathrm{ESS}_i - 1/S}` when the controls
explain nothing); and the Pareto :math:`\hat k_i` of the upper tail of the
:math:`w_{is}` (:func:`~pyro_dgmm.diagnostics.pareto_k`): above 0.7 the
estimate is unreliable.

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

Example (the fewest draws the control variates allow for q = 2):

>>> minimum_samples(2)
50
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from pyro.distributions import MultivariateNormal

from .data import LongitudinalData
from .diagnostics import PARETO_K_THRESHOLD, InferenceWarning, pareto_k
from .errors import ConfigError
from .options import check_bool, check_int
from .parallel import Shards, all_reduce_max, all_reduce_sum, gather_objects, is_main_process, shard_seed
from .parameters import Layout, dispersion_labels, float64_copy, select_parameters
from .likelihood import log_joint, observed_log_likelihood, standard_normal_log_density
from .posterior import gaussian_proposal, subjects_per_chunk
from .results import MarginalLikelihood

#: Cells (S * n * T * K) per chunk when chunk_size is not given.
_CELLS_PER_CHUNK = 2 ** 22
#: Moment-matching rounds of the adapted proposal (all of them, for every
#: subject: a per-subject stop made the standard errors noisier).
_ADAPT_ROUNDS = 8


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


@dataclass
class _Expansion:
    """One chunk of n subjects for the closed form: the point b0 (n, q) it is expanded at."""

    chunk: LongitudinalData
    b0: torch.Tensor


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
    """log p-hat, Monte Carlo SD, ESS and Pareto k-hat of one chunk, each (n,).

    Weights within rounding error of the largest count as equal to it: a
    proposal equal to the posterior (the Laplace approximation of a linear
    mixed model) gives weights that differ by rounding only, and a
    generalized Pareto fit to that noise would report a heavy tail (k-hat
    -inf, no tail, instead)."""
    log_aw = log_w + draws.log_calibration
    log_p = torch.logsumexp(log_aw, 0)
    ess = torch.exp(2 * log_p - torch.logsumexp(2 * log_aw, 0))
    largest = log_w.max(0).values
    rounding = 1e3 * torch.finfo(log_w.dtype).eps * (1 + largest.abs())
    return log_p, _regression_sd(log_w, draws), ess, pareto_k(torch.where(largest - log_w < rounding, largest, log_w))


def quadratic_log_marginal(log_joint, b0: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \int e^{f_i(b)}\, db` for each subject from the expansion of
    :math:`f_i` at ``b0`` (n, q) (module docstring): exact when every
    :math:`f_i` is quadratic in b (Laplace's formula at any point), and
    differentiable in whatever ``log_joint`` (b (n, q) -> (n,)) depends on,
    to any order.  (n,); -inf for a subject whose :math:`f_i` is not
    concave at ``b0`` (or not finite: parameters far out of range), so that
    an optimiser rejects such a point."""
    q = b0.shape[-1]
    with torch.enable_grad():
        b = b0.detach().clone().requires_grad_(True)
        value = log_joint(b)
        (grad,) = torch.autograd.grad(value.sum(), b, create_graph=True)
        rows = [torch.autograd.grad(grad[:, k].sum(), b, create_graph=True)[0] for k in range(q)]
        precision = -torch.stack(rows, -2)  # A (n, q, q)
        precision = (precision + precision.transpose(-1, -2)) / 2
        concave = torch.linalg.cholesky_ex(precision.detach())[1] == 0
        concave &= torch.isfinite(value.detach()) & torch.isfinite(grad.detach()).all(-1)
        eye = torch.eye(q, dtype=precision.dtype, device=precision.device)
        cholesky = torch.linalg.cholesky(torch.where(concave[:, None, None], precision, eye))
        safe_grad = torch.where(concave[:, None], grad, torch.zeros_like(grad))
        solved = torch.cholesky_solve(safe_grad.unsqueeze(-1), cholesky).squeeze(-1)
        log_det = 2 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        total = value + 0.5 * (safe_grad * solved).sum(-1) + 0.5 * q * math.log(2 * math.pi) - 0.5 * log_det
        return torch.where(concave, total, torch.full_like(total, -math.inf))


#: Largest difference (relative to 1 + |value|) between the closed form at two
#: expansion points for which the log joint counts as quadratic in b.
_QUADRATIC_RTOL = 1e-8
#: Relative size of the move of theta at which :meth:`MarginalObjective._quadratic`
#: checks the log joint again (theta + 0.1 (1 + |theta|) u, u standard normal, seed 0).
_NEARBY_SCALE = 0.1


def _exact_summary(log_p: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The columns of :func:`_summarise` for closed-form values: Monte Carlo SD
    0, infinite ESS (an exact integral), no tail (Pareto k-hat -inf)."""
    return log_p, torch.zeros_like(log_p), torch.full_like(log_p, math.inf), torch.full_like(log_p, -math.inf)


class MarginalObjective:
    r"""theta -> :math:`\log \hat p(y; \theta)` with common random numbers.

    A float64 copy of the model is evaluated with the parameters ``names``
    replaced by slices of a flat vector theta (P,) (their unconstrained
    values); all other parameters stay at their fitted values.  The
    proposal is fitted at one theta (:meth:`move_to`; first the fitted
    values) and then held fixed; the base noise is regenerated chunk by
    chunk from ``seed``, identically for every theta.  Only this process's
    shards' subjects are held (``self.data``, shard after shard; chunks
    never straddle two shards); totals are summed over processes.

    With ``closed_form`` and a log joint quadratic in b at the fitted
    parameters (:meth:`_quadratic`), ``exact`` is set and every estimate is
    the closed form of :func:`quadratic_log_marginal` instead (no draws, no
    adaptation): exact values and derivatives.
    """

    def __init__(self, model, guide, data: LongitudinalData, names: Sequence[str], num_samples: int,
                 chunk_size: int | None, seed: int, adapt: bool, num_shards: int | None = None,
                 distributed_input: bool = False, closed_form: bool = True):
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
        self.bound = float64_copy(model, data.device)
        self.data = data.to(dtype=torch.float64)
        self.layout = Layout(self.bound.model, names)
        self.theta = self.layout.values(self.bound.model).to(data.device)
        self.num_samples = int(num_samples)
        self.chunk_size = int(chunk_size or subjects_per_chunk(self.num_samples, data, cells=_CELLS_PER_CHUNK))
        self.seed = seed
        self.adapt = adapt
        self.proposal = _encoder_proposal(guide, data, self.chunk_size)
        self.exact = check_bool("closed_form", closed_form) and self._quadratic()
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
        if self.adapt and not self.exact:
            self.proposal = self._adapted()

    def draws(self, seed: int | None = None, proposal: _Proposal | None = None) -> Iterator[_Draws | _Expansion]:
        """The chunks with their draws; the same on every call (for the same seed and proposal).
        Each shard's noise comes from its own generator (seeded with ``seed`` itself for one shard).
        In closed form: the chunks with their expansion points (the proposal means)."""
        seed = self.seed if seed is None else seed
        proposal = proposal or self.proposal
        generators = {}
        for shard, index in self.chunks():
            if self.exact:
                yield _Expansion(self.data.subset(index), proposal.loc[index])
                continue
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

    def log_marginal(self, theta: torch.Tensor, draws: _Draws | _Expansion) -> torch.Tensor:
        r""":math:`\log \hat p_i(\theta) = \log \sum_s a_s w_s(\theta)`, (n,), of one chunk
        (in closed form: :func:`quadratic_log_marginal`)."""
        if isinstance(draws, _Expansion):
            return self._closed_form(theta, draws.chunk, draws.b0)
        return torch.logsumexp(self.log_weights(theta, draws) + draws.log_calibration, 0)

    def _closed_form(self, theta: torch.Tensor, chunk: LongitudinalData, b0: torch.Tensor) -> torch.Tensor:
        """:func:`quadratic_log_marginal` of ``chunk`` at theta, expanded at b0, (n,)."""
        params = self.layout.unflatten(theta)
        return quadratic_log_marginal(lambda b: torch.func.functional_call(self.bound, params, (log_joint, b, chunk)),
                                      b0)

    @torch.no_grad()
    def _quadratic(self) -> bool:
        """Whether every subject's log joint is quadratic in b at the fitted
        parameters and around them: the closed form gives the same value (to
        :data:`_QUADRATIC_RTOL`) expanded at the encoder's means and half a
        unit away from them, on every process, at theta and at theta moved
        in every direction of ``names`` (:data:`_NEARBY_SCALE`).  (Linear-Gaussian in b
        passes; a link, a b-dependent dispersion, a heavy-tailed family or an
        event term does not.  The move matters: the derivatives in theta are
        exact only if the log joint stays quadratic as theta moves, and a
        parameter at a special value, such as a joint model's association at
        exactly 0, makes it quadratic at that point alone.)"""
        generator = torch.Generator().manual_seed(0)
        direction = torch.randn(self.theta.shape, generator=generator, dtype=self.theta.dtype).to(self.theta.device)
        nearby = self.theta + _NEARBY_SCALE * (1 + self.theta.abs()) * direction
        worst = self.theta.new_zeros(())
        for _, index in self.chunks():
            chunk, loc = self.data.subset(index), self.proposal.loc[index]
            for theta in (self.theta, nearby):
                here, there = (self._closed_form(theta, chunk, b0).detach() for b0 in (loc, loc + 0.5))
                gap = ((here - there).abs() / (1 + here.abs())).max()  # inf or nan where not concave
                worst = torch.maximum(worst, torch.nan_to_num(gap, nan=math.inf))
            if worst >= _QUADRATIC_RTOL:  # decided: no later chunk can make it quadratic
                break
        return bool(all_reduce_max(worst) < _QUADRATIC_RTOL)

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
        parts = [_exact_summary(self.log_marginal(theta, d).detach()) if self.exact
                 else _summarise(self.log_weights(theta, d), d) for d in self.draws()]
        columns = [torch.cat(x) for x in zip(*parts)]
        ids, columns = self._gather_subjects(columns)
        return MarginalLikelihood(*columns, self.num_samples, ids, self.exact)

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

    @torch.no_grad()
    def _adapted(self) -> _Proposal:
        """The proposal fitted to each subject's posterior at theta by the
        posterior engine (:func:`~pyro_dgmm.posterior.gaussian_proposal`:
        Laplace from the current proposal's means, then moment matching from
        wider pilot draws, every round for every subject, seeded per shard),
        with the likelihood evaluated at theta."""
        params = self.layout.unflatten(self.theta.detach())

        def log_likelihood(b: torch.Tensor, chunk: LongitudinalData) -> torch.Tensor:
            return torch.func.functional_call(self.bound, params, (observed_log_likelihood, b, chunk))

        parts = [gaussian_proposal(self.bound.model, self.data.subset(slice(begin, end)),
                                   self.proposal.loc[begin:end], self.proposal.scale_tril[begin:end],
                                   rounds=_ADAPT_ROUNDS, num_proposals=self.num_samples, log_likelihood=log_likelihood,
                                   tolerance=0.0,
                                   seed=self.seed + 1 if self.num_shards == 1 else shard_seed(self.seed + 1, shard))
                 for shard, begin, end in self.parts]
        return _Proposal(torch.cat([loc for loc, _ in parts]), torch.cat([tril for _, tril in parts]))


def warn_unreliable(marginal: MarginalLikelihood) -> None:
    """Warn (:class:`~pyro_dgmm.diagnostics.InferenceWarning`, on the main
    process only) when some subject's Pareto k-hat exceeds
    :data:`~pyro_dgmm.diagnostics.PARETO_K_THRESHOLD`, naming the first few."""
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
                            num_shards: int | None = None, distributed_input: bool = False,
                            closed_form: bool = True) -> MarginalLikelihood:
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
    :param closed_form: integrate exactly where the log joint is quadratic
        in b (module docstring); ``False``: importance sampling always.
    :returns: a :class:`MarginalLikelihood` (``.total``, ``.total_mc_sd``,
        per-subject values and diagnostics), the same on every process.
    """
    objective = MarginalObjective(model, guide, data, (), num_samples, chunk_size, seed, adapt, num_shards,
                                  distributed_input, closed_form)
    marginal = objective.marginal(objective.theta)
    warn_unreliable(marginal)
    return marginal


def closed_form_applies(model, guide, data: LongitudinalData, parameters: Sequence[str] = (), *,
                        include_dispersion: bool = True, distributed_input: bool = False) -> bool:
    """Whether :func:`marginal_log_likelihood` and the Wald functions
    integrate this model exactly (``closed_form=True``; module docstring):
    its log joint is quadratic in b at its current parameters and as the
    named ``parameters`` (and, with ``include_dispersion``, the
    dispersions) move (:meth:`MarginalObjective._quadratic`; the same answer
    on every process).  Ask with the parameters and data that the
    maximisation or the standard errors will use (their defaults include
    the dispersions): the answer depends on what moves, so a check of fewer
    parameters can pass where theirs fails, and they would then fall back
    to importance sampling."""
    moved = parameters or (include_dispersion and dispersion_labels(model))
    names = select_parameters(model, parameters, include_dispersion) if moved else []
    return MarginalObjective(model, guide, data, names, minimum_samples(model.latent_dim), None, 0, False,
                             distributed_input=distributed_input).exact


def minimum_samples(latent_dim: int) -> int:
    """The fewest importance samples per subject the estimator accepts: 10 per
    control variate, of which there are q + q(q + 1)/2."""
    return 10 * (latent_dim + latent_dim * (latent_dim + 1) // 2)

