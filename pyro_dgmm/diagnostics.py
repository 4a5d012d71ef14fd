r"""Pareto :math:`\hat k` diagnostics of importance weights.

Every importance-sampling estimate in pyro_dgmm (the marginal likelihood
of :mod:`pyro_dgmm.marginal`, fitted values and predictions) is only as
good as the tail of its weights.  PSIS (Vehtari, Simpson, Gelman, Yao &
Gabry 2024) reads that tail off a generalized Pareto fit to the largest
weights: the weights have finite variance for :math:`k < 1/2`, and above
:data:`PARETO_K_THRESHOLD` = 0.7 the estimate is unreliable.

The fit here is Zhang & Stephens' (2009) profile-likelihood estimator with
PSIS's prior, as in ``arviz.psislw``, which gives the same :math:`\hat k`.
It is written out rather than called because :mod:`pyro_dgmm.convert` is
the only module that imports arviz (an optional, heavy import that
inference should not need), and because this version runs on torch
tensors of any device, vectorised over subjects.

Example (Pareto k-hat of light-tailed importance weights is small):

>>> import torch
>>> log_w = torch.distributions.Normal(0.0, 0.5).sample((3, 2000))
>>> bool((pareto_k(log_w) < 0.5).all())
True
"""
from __future__ import annotations

import math

import torch

#: Pareto k-hat above which an importance-sampling estimate is unreliable.
PARETO_K_THRESHOLD = 0.7


class InferenceWarning(UserWarning):
    """An estimate is unreliable: heavy-tailed importance weights, or a
    log-likelihood Hessian that is not negative definite."""


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
