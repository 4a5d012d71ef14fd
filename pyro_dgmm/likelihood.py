r"""The masked log-likelihood of the observed cells given the random effects,
off the Pyro trace: the one implementation every sampler and estimator uses.

For subject *i* with observed cells :math:`m_{ijk} = 1`,

.. math::

    \log p(y_i^o \mid b_i) = \sum_{j,k} m_{ijk}\,
        \log \mathcal F_k\big(y_{ijk};\, g_k^{-1}(\eta_{ijk}(b_i)), \sigma_{ijk}\big),
    \qquad
    \log \pi_i(b_i) = \log p(y_i^o \mid b_i) + \log \mathcal N(b_i; 0, I_q)

(:func:`observed_log_likelihood`, :func:`log_joint`).  It is exactly what
:meth:`~pyro_dgmm.model.MixedModel.forward` puts on the ``y_<outcome>``
sites (same distributions from
:meth:`~pyro_dgmm.model.MixedModel.observation_distributions`, same mask),
evaluated for a leading dimension of draws of ``b`` at once, without
running a trace: importance sampling, MCMC, prediction and the marginal
likelihood call it thousands of times.  ``tests/test_likelihood.py`` checks
it against the model trace's log-probability for several families, the
``'linear'`` dispersion model and missing cells.

Shapes: ``b`` (..., N, q) (the leading dims are draws or particles),
results (..., N) per subject or (..., N, T, K) per cell.

Example (a draw of b per subject, the log-likelihood of their observed cells):

>>> import torch
>>> from pyro_dgmm.data import DataSchema
>>> from pyro_dgmm.datasets import simulate_linear
>>> from pyro_dgmm.model import DGMM
>>> df = simulate_linear(n_subjects=5, n_visits=3, seed=0).data
>>> schema = DataSchema.fit(df, id_col="id", time_col="time", outcomes={"y": "gaussian"})
>>> model = DGMM.from_schema(schema, latent_dim=2)
>>> b = torch.zeros(10, 5, 2)  # 10 draws for each of 5 subjects
>>> observed_log_likelihood(model, b, schema.transform(df)).shape
torch.Size([10, 5])
"""
from __future__ import annotations

import math

import torch

from .data import LongitudinalData


def cell_log_likelihood(model, b: torch.Tensor, data: LongitudinalData,
                        eta: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`m_{ijk} \log p(y_{ijk} \mid b_i)` for every cell, shape (..., N, T, K)
    for ``b`` (..., N, q): 0 at cells that are not observed (whatever their
    filled value).  ``eta``: the linear predictor at ``b``
    (:meth:`~pyro_dgmm.model.MixedModel.eta`), if already computed."""
    distributions = model.observation_distributions(b, data, eta)
    cells = torch.stack([fn.log_prob(data.y[..., k]) for k, fn in enumerate(distributions.values())], -1)
    return torch.where(data.mask, cells, torch.zeros_like(cells))


def observed_log_likelihood(model, b: torch.Tensor, data: LongitudinalData,
                            eta: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\log p(y_i^o \mid b_i)`, the sum over subject i's observed
    cells, shape (..., N) for ``b`` (..., N, q) (``eta`` as in
    :func:`cell_log_likelihood`).  A model with sample sites of its own per
    subject (the event of :class:`~pyro_dgmm.joint.JointModel`) adds their
    log-density through a method ``subject_log_likelihood(b, data) -> (..., N)``."""
    total = cell_log_likelihood(model, b, data, eta).sum((-2, -1))
    extra = getattr(model, "subject_log_likelihood", None)
    return total if extra is None else total + extra(b, data)


def standard_normal_log_density(b: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathcal N(b; 0, I_q)`, the prior of ``b``, shape ``b.shape[:-1]``."""
    return -0.5 * (b.pow(2).sum(-1) + b.shape[-1] * math.log(2 * math.pi))


def log_joint(model, b: torch.Tensor, data: LongitudinalData, eta: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\log p(y_i^o \mid b_i) + \log \mathcal N(b_i; 0, I_q)`, the
    unnormalised log posterior of ``b``, shape (..., N)."""
    return observed_log_likelihood(model, b, data, eta) + standard_normal_log_density(b)
