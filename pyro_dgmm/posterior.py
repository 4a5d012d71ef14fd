r"""Posterior of the random effects given a fitted model and guide.

The encoder gives q(b_i | y_i).  Because q is fitted for all subjects at
once (amortised), it can be off for an individual subject; self-normalised
importance sampling with q as proposal corrects for it:

.. math::

    w_i^{(s)} \propto \frac{p(y_i^o \mid b_i^{(s)})\, p(b_i^{(s)})}{q(b_i^{(s)} \mid y_i)},
    \qquad b_i^{(s)} \sim q(b_i \mid y_i), \quad s = 1..S

so that :math:`E[h(b_i) \mid y_i^o] \approx \sum_s w_i^{(s)} h(b_i^{(s)})`.
The same log-weights give the marginal likelihood
:math:`\log p(y_i^o) \approx \operatorname{logsumexp}_s \log \tilde w_i^{(s)} - \log S`.

All functions work on chunks of subjects so memory stays bounded by
``chunk_size * num_samples * T * K`` cells (times the networks' widths);
by default :func:`subjects_per_chunk` picks the chunk for a fixed budget of
cells, so a long record or many draws means fewer subjects at a time.

Example (subject-specific fitted means of every cell):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> fitted_means(est.model_, est.guide_, est.data_, num_samples=20).shape
torch.Size([12, 4, 1])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import LongitudinalData


#: Cells (draws x subjects x visit slots x outcomes) per chunk by default.
CELLS_PER_CHUNK = 2 ** 21


def subjects_per_chunk(num_samples: int, data: LongitudinalData, cells: int = CELLS_PER_CHUNK) -> int:
    """How many subjects to process at once so that ``num_samples`` draws for
    each of them span about ``cells`` cells (at least one subject)."""
    return max(1, cells // (num_samples * data.num_visits * len(data.outcomes)))


@dataclass
class PosteriorDraws:
    """Draws of b for N subjects with self-normalised weights.

    ``b``: (S, N, q); ``log_weights``: (S, N), normalised over S (uniform
    when drawn from the encoder alone); ``log_marginal``: (N,) importance
    estimate of log p(y_i^o), or None; ``eta``: (S, N, T, K), the linear
    predictor at the draws where the weights needed it (None otherwise), so
    that means at the draws cost no second pass through the networks.
    """

    b: torch.Tensor
    log_weights: torch.Tensor
    log_marginal: torch.Tensor | None
    eta: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def effective_sample_size(self) -> torch.Tensor:
        """Kish's ESS per subject, 1 / sum_s w_s^2, shape (N,)."""
        return 1.0 / self.weights.pow(2).sum(0)


def weighted_moments(log_w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-normalised mean (N, q), covariance (N, q, q) and Kish ESS (N,) of
    draws ``b`` (S, N, q) with log-weights ``log_w`` (S, N), normalised or not."""
    w = torch.softmax(log_w, 0)
    mean = torch.einsum("sn,snq->nq", w, b)
    centred = b - mean
    return mean, torch.einsum("sn,snq,snr->nqr", w, centred, centred), 1 / w.pow(2).sum(0)


def observed_log_likelihood(model, b: torch.Tensor, data: LongitudinalData,
                            eta: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y_i^o | b_i): sum over observed cells, shape (..., N) for b (..., N, q)
    (``eta``: the linear predictor at ``b``, if already computed)."""
    total = torch.zeros(b.shape[:-1], dtype=b.dtype, device=b.device)
    for k, (name, fn) in enumerate(model.observation_distributions(b, data, eta).items()):
        log_prob = fn.log_prob(data.y[..., k])
        total = total + torch.where(data.mask[..., k], log_prob, torch.zeros_like(log_prob)).sum(-1)
    return total


def standard_normal_log_density(b: torch.Tensor) -> torch.Tensor:
    """log N(b; 0, I), shape b.shape[:-1]."""
    return -0.5 * (b.pow(2).sum(-1) + b.shape[-1] * torch.log(torch.tensor(2 * torch.pi, dtype=b.dtype)))


@torch.no_grad()
def draw_posterior(model, guide, data: LongitudinalData, num_samples: int = 500,
                   method: str = "importance") -> PosteriorDraws:
    """Draws of b_i | y_i^o for every subject of ``data``.

    :param method: ``'importance'`` (encoder proposal, reweighted) or
        ``'encoder'`` (q alone, uniform weights).
    """
    q = guide.posterior(data)
    b = q.sample((num_samples,))  # (S, N, q)
    if method == "encoder":
        uniform = torch.full(b.shape[:2], -torch.log(torch.tensor(float(num_samples))), dtype=b.dtype,
                             device=b.device)
        return PosteriorDraws(b, uniform, None)
    if method != "importance":
        raise ValueError(f"method must be 'importance' or 'encoder', got '{method}'")
    eta = model.eta(b, data)
    log_w = observed_log_likelihood(model, b, data, eta) + standard_normal_log_density(b) - q.log_prob(b)
    log_norm = torch.logsumexp(log_w, dim=0)
    log_marginal = log_norm - torch.log(torch.tensor(float(num_samples), dtype=b.dtype))
    return PosteriorDraws(b, log_w - log_norm, log_marginal, eta)


@torch.no_grad()
def fitted_means(model, guide, data: LongitudinalData, num_samples: int = 500,
                 method: str = "importance", chunk_size: int | None = None) -> torch.Tensor:
    r"""Subject-specific fitted means :math:`E[g^{-1}(\eta_{ijk}) \mid y_i^o]`,
    shape (N, T, K), on the response scale (probabilities for binary outcomes),
    for every slot, observed or not."""
    chunk_size = chunk_size or subjects_per_chunk(num_samples, data)
    out = []
    for chunk in data.chunks(chunk_size):
        draws = draw_posterior(model, guide, chunk, num_samples, method)
        eta = model.eta(draws.b, chunk) if draws.eta is None else draws.eta
        mean = model.response_mean(eta)  # (S, n, T, K)
        out.append((draws.weights[..., None, None] * mean).sum(0))
    return torch.cat(out, dim=0)


@torch.no_grad()
def marginal_means(model, data: LongitudinalData, num_samples: int = 500,
                   chunk_size: int | None = None) -> torch.Tensor:
    r"""Means averaged over the random-effects distribution,
    :math:`E_{b \sim N(0, I)}[g^{-1}(\eta_{ijk}(b))]`, shape (N, T, K): what a
    subject with these covariates is expected to show at these times before
    any of their outcomes is seen.  Averaged over subjects this is the
    population mean curve, the quantity a dropout-biased fit gets wrong."""
    chunk_size = chunk_size or subjects_per_chunk(num_samples, data)
    out = []
    for chunk in data.chunks(chunk_size):
        b = torch.randn(num_samples, chunk.num_subjects, model.latent_dim, dtype=chunk.y.dtype, device=chunk.device)
        out.append(model.mean(b, chunk).mean(0))
    return torch.cat(out, dim=0)
