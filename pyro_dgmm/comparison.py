r"""Model comparison by the marginal likelihood: parameter count, AIC, BIC, LRT.

:func:`information_criteria` pairs the importance-sampled
:math:`\hat\ell` (:mod:`pyro_dgmm.marginal`) with the number of locally
identified parameters (:func:`count_parameters`);
:func:`likelihood_ratio_test` and :func:`compare` set two fitted models
side by side.  docs/inference.md says when these are meaningful for
neural models (for the linear special case they are MixedLM's).

Example (a likelihood-ratio test of 2 extra parameters):

>>> from pyro_dgmm.results import InformationCriteria
>>> null = InformationCriteria(-120.0, 0.1, 4, 200)
>>> alternative = InformationCriteria(-110.0, 0.1, 6, 200)
>>> test = likelihood_ratio_test(null, alternative)
>>> test.statistic, test.df, round(test.p_value, 6)
(20.0, 2, 4.5e-05)
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from .data import LongitudinalData
from .errors import ConfigError
from .marginal import marginal_log_likelihood
from .parallel import all_reduce_sum, gather_objects
from .parameters import NULL_RTOL, Layout, float64_copy
from .results import Comparison, InformationCriteria, LikelihoodRatioTest, MarginalLikelihood


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
    bound = float64_copy(model, data.device)
    layout = Layout(bound.model, names)
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

    jacobian = _jacobian(outputs, theta, generator)
    rank = int(torch.linalg.matrix_rank(jacobian, rtol=NULL_RTOL))
    return rank - model.latent_dim * (model.latent_dim - 1) // 2


#: Up to this many parameters the rank is taken from a random sketch of the Jacobian.
_SKETCH_PARAMETERS = 64


def _jacobian(fn, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""A matrix with the rank of :math:`J = \partial\,\mathrm{fn} / \partial\theta` (outputs x P).

    For few parameters (the linear special case) the sketch :math:`RJ`
    with a Gaussian :math:`R` of :math:`2P + 10` rows: it has the rank of
    :math:`J` with probability one, and its nonzero singular values are
    those of :math:`J` within a small factor (:math:`R` restricted to the
    column space of :math:`J` is well conditioned), so the relative rank
    tolerance still separates exact zeros; it costs :math:`2P + 10`
    backward passes of one forward pass.  Otherwise the full Jacobian
    (``torch.func.jacrev``, whose first call in a process imports
    ``torch._dynamo``, 3-5 s here: longer than the sketch of a small model).
    """
    if theta.numel() > _SKETCH_PARAMETERS:
        return torch.func.jacrev(fn, chunk_size=256)(theta)
    theta = theta.detach().requires_grad_(True)
    out = fn(theta)
    sketch = torch.randn((2 * theta.numel() + 10, out.numel()), generator=generator, dtype=out.dtype,
                         device=out.device)
    return torch.stack([torch.autograd.grad(out @ row, theta, retain_graph=True)[0] for row in sketch])


def _distribution_parameters(model, b: torch.Tensor, data: LongitudinalData) -> torch.Tensor:
    """eta(b, data) flattened, followed by the dispersions: all the observation model depends on."""
    extra = [value.reshape(-1) for name in model.outcomes
             for value in (model.dispersion(name, data, b), *model.shape_parameters(name).values()) if value is not None]
    return torch.cat([model.eta(b, data).reshape(-1), *extra])


def information_criteria(model, guide, data: LongitudinalData, *, num_parameters: int | None = None,
                         num_samples: int = 1000, adapt: bool = True, chunk_size: int | None = None,
                         seed: int = 0, num_shards: int | None = None,
                         distributed_input: bool = False) -> InformationCriteria:
    """Marginal log-likelihood (:func:`~pyro_dgmm.marginal.marginal_log_likelihood`), AIC and BIC.

    :param num_parameters: p; default :func:`count_parameters` (on rank
        0's data with ``distributed_input``).
    :param num_shards: sharding over processes (:mod:`pyro_dgmm.marginal`);
        default one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects.
    """
    marginal = marginal_log_likelihood(model, guide, data, num_samples, adapt=adapt, chunk_size=chunk_size,
                                       seed=seed, num_shards=num_shards, distributed_input=distributed_input)
    return criteria_from(marginal, model, data, num_parameters=num_parameters, seed=seed,
                         distributed_input=distributed_input)


def criteria_from(marginal: MarginalLikelihood, model, data: LongitudinalData, *, num_parameters: int | None = None,
                  seed: int = 0, distributed_input: bool = False) -> InformationCriteria:
    """AIC and BIC from a marginal log-likelihood already estimated on ``data``
    (e.g. the one :func:`~pyro_dgmm.wald.standard_errors` returns with its
    draws), so that it is not estimated twice; arguments as
    :func:`information_criteria`."""
    if num_parameters is None:
        num_parameters = gather_objects(count_parameters(model, data, seed=seed))[0]
    observed = torch.tensor(int(data.mask.sum()), dtype=torch.int64)
    if distributed_input:
        all_reduce_sum(observed)
    return InformationCriteria(marginal.total, marginal.total_mc_sd, int(num_parameters), int(observed))


def likelihood_ratio_test(null: InformationCriteria, alternative: InformationCriteria) -> LikelihoodRatioTest:
    r"""Likelihood-ratio test of a model nested in another, fitted to the same data.

    The statistic :math:`2(\hat\ell_1 - \hat\ell_0)` is referred to
    :math:`\chi^2_{p_1 - p_0}` (a negative statistic, possible through Monte
    Carlo or optimisation error, gives p = 1).  Valid for nested models fitted
    by maximum likelihood (see :func:`~pyro_dgmm.wald.maximize_marginal_likelihood`) with
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


def compare(criteria: Sequence[InformationCriteria], names: Sequence[str]) -> Comparison:
    r"""Models fitted to the same data side by side: log-likelihood, its
    Monte Carlo SD, parameters, AIC, BIC and the differences from the
    best AIC; with two models of different size, the likelihood-ratio test
    of the smaller against the larger (:func:`likelihood_ratio_test`:
    valid only if the smaller is nested in the larger, which is not
    checked; see docs/inference.md).

    :param criteria: each model's :class:`~pyro_dgmm.results.InformationCriteria`
        on the same data.
    :param names: one label per model, the rows of the table.
    """
    if len(criteria) != len(names) or len(criteria) < 2:
        raise ConfigError(f"compare needs two or more models with one name each, got {len(criteria)} models "
                          f"and names {list(names)}")
    cells = {c.num_observations for c in criteria}
    if len(cells) > 1:
        raise ConfigError(f"the models were evaluated on different data (observed cells {sorted(cells)}); "
                          "compare models fitted to the same data")
    table = pd.DataFrame({
        "log_likelihood": [c.log_likelihood for c in criteria], "mc_sd": [c.mc_sd for c in criteria],
        "num_parameters": [c.num_parameters for c in criteria], "aic": [c.aic for c in criteria],
        "bic": [c.bic for c in criteria]}, index=pd.Index(list(names), name="model"))
    table["delta_aic"] = table.aic - table.aic.min()
    test = None
    if len(criteria) == 2 and criteria[0].num_parameters != criteria[1].num_parameters:
        null, alternative = sorted(criteria, key=lambda c: c.num_parameters)
        test = likelihood_ratio_test(null, alternative)
    return Comparison(table, test)
