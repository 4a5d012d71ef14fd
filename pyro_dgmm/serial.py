r"""A serial process in the linear predictor: Brownian motion as random effects.

A random intercept and slope (or any finite time basis with random
coefficients) makes a subject's future a deterministic curve given
:math:`b_i`: the predictive spread at a far horizon is only the spread of
curves the history leaves open.  Laboratory markers also drift: a subject's
values wander away from any smooth curve, so the prediction error grows
with the gap from the last observation (Taylor, Cumberland & Sy 1994; the
Brownian and integrated Ornstein-Uhlenbeck terms of the joint-modelling
literature).  This module adds, per chosen outcome :math:`k`, a scaled
Brownian motion to the linear predictor,

.. math:: \eta_{ijk} \mathrel{+}= s_k\, \tau_k\, W_{ik}(t_{ij}), \qquad
          W_{ik}(t) \approx \sum_{j=1}^{J} z_{ikj}\, \phi_j(t), \qquad
          z_{ikj} \sim \mathcal N(0, 1),

with the Karhunen-Loeve basis of Brownian motion on :math:`[0, S]`

.. math:: \phi_j(t) = \frac{\sqrt{2S}}{(j - \tfrac12)\pi}
          \sin\!\Big(\frac{(j - \tfrac12)\pi\, t}{S}\Big),

so that :math:`\mathrm{Cov}(W(t), W(u)) \to \min(t, u)` as :math:`J \to
\infty` (Var :math:`W(t) = t`; each term :math:`J` adds resolves the
process at the time scale :math:`S / J`).  :math:`\tau_k` (the process
SD per square root of a time unit, on the outcome's unit scale
:math:`s_k`; only :math:`|\tau_k|` matters) is learned.  Given a history up to :math:`t_0`, the predictive
variance of :math:`W(t)` grows like :math:`\tau_k^2 (t - t_0)`: intervals
widen with the horizon as the errors do.  Times are model times (from the
earliest training visit) and are held at :math:`S` past it (the process
stops growing beyond the training follow-up).

Why a low-rank basis of random functions and not a Gaussian-process
marginal: the coefficients :math:`z` are simply more coordinates of the
latent :math:`b_i \sim \mathcal N(0, I)`, so the model keeps its one
masked, per-cell factorised likelihood given :math:`b_i`
(:mod:`pyro_dgmm.likelihood`), every family (not only the Gaussian) can
carry the process, and fitting, the posterior samplers, prediction,
imputation, the marginal likelihood and save/load need nothing new.  The
cost is :math:`J` latent coordinates per outcome.

Example (the basis at the ends of the span; Var W(S) is close to S):

>>> import torch
>>> basis = brownian_basis(torch.tensor([0.0, 4.0]), span=4.0, num_terms=200)
>>> basis.shape
torch.Size([2, 200])
>>> [round(v, 2) for v in basis.pow(2).sum(-1).tolist()]
[0.0, 4.0]
"""
from __future__ import annotations

import math

import torch

from .errors import ConfigError

#: Values of the ``serial_process`` model option.
SERIAL_PROCESSES = ("none", "brownian")


def brownian_basis(times: torch.Tensor, span: float, num_terms: int) -> torch.Tensor:
    """phi_j(t) for j = 1..J at every time (module docstring), shape
    ``times.shape + (J,)``; times are clamped to ``[0, span]``."""
    if not span > 0:
        raise ConfigError(f"serial_span must be positive (the training follow-up in model time), got {span!r}")
    frequencies = (torch.arange(num_terms, dtype=times.dtype, device=times.device) + 0.5) * math.pi
    clamped = times.clamp(0.0, span).unsqueeze(-1) / span
    return math.sqrt(2.0 * span) / frequencies * torch.sin(frequencies * clamped)


def serial_term(z: torch.Tensor, times: torch.Tensor, span: float, scale: torch.Tensor) -> torch.Tensor:
    r""":math:`\tau_k W_{ik}(t_{ij})` for every outcome carrying the process.

    :param z: the process coefficients, shape (..., N, K_s, J).
    :param times: model times, shape (N, T).
    :param span: S, the end of the basis's interval.
    :param scale: :math:`\tau_k`, shape (K_s,).
    :returns: shape (..., N, T, K_s).
    """
    basis = brownian_basis(times.to(z.dtype), span, z.shape[-1])  # (N, T, J)
    return torch.einsum("...nkj,ntj->...ntk", z, basis) * scale.to(z.dtype)
