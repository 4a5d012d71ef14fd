r"""Wald standard errors, maximum-likelihood refinement and delta-method bands.

The talk's variance of :math:`\hat\theta` is the inverse observed
information of the marginal log-likelihood,
:math:`\widehat{\operatorname{var}}(\hat\theta) = \{-\nabla^2
\ell(\hat\theta)\}^{-1}`, with :math:`\ell` the importance-sampled estimate
of :mod:`pyro_dgmm.marginal` (common random numbers make it a smooth
function of :math:`\theta`, so its autograd Hessian, or central
differences as in the talk, are exact for the estimate).

* :func:`standard_errors` inverts the Hessian over named model parameters,
  conditional on the others, and reports dispersions on their natural scale.
* Wald intervals need the maximum of :math:`\ell`, which SVI only
  approaches: :func:`maximize_marginal_likelihood` reaches it from the
  SVI estimates by saddle-free Newton steps; :func:`refine` applies it to
  the linear parts and dispersions (``FitConfig.refine``).
* :func:`population_curve` carries the covariance to the typical
  subject's curve by the delta method.

Data-scale coefficient tables of the linear special case are in
:mod:`pyro_dgmm.linear_tables`; the analyst reaches all of this through
:meth:`~pyro_dgmm.estimator.DeepMixedModel.standard_errors` and
:meth:`~pyro_dgmm.estimator.DeepMixedModel.summary`.

Example (the intervals of an unconstrained parameter are symmetric):

>>> import torch
>>> covariance, null_space = pseudo_inverse(torch.eye(2, dtype=torch.float64) * 4, ["a", "b"])
>>> covariance.diagonal().tolist(), null_space.shape[1]
([0.25, 0.25], 0)
"""
from __future__ import annotations

import math
import time
import warnings
from statistics import NormalDist
from typing import Sequence

import pandas as pd
import torch

from .data import LongitudinalData
from .diagnostics import InferenceWarning
from .errors import ConfigError
from .marginal import MarginalObjective, minimum_samples, warn_unreliable
from .options import check_choice, check_float
from .parameters import (LINEAR_PARAMETERS, NULL_RTOL, Layout, assign, constraint_of, dispersion_labels, element_labels,
                         float64_copy, present, select_parameters)
from .results import Maximization, StandardErrors

#: Newton steps ignore curvatures below this fraction of the largest.
_STEP_RTOL = 1e-3
#: Newton decrement (log-likelihood units) at which the refinement stops:
#: within about 0.0015 SE of the maximum, so that the refined linear mixed
#: model's coefficients agree with MixedLM's to 3 significant digits (at 1e-2
#: they were up to 0.06 SE, 0.7%, off).
REFINE_TOLERANCE = 1e-6
#: A maximisation that cannot climb further counts as converged when its
#: Newton decrement is below this: smaller ones are lost in the Monte Carlo
#: error of the gradient for models whose posterior of b is not Gaussian.
_MONTE_CARLO_TOLERANCE = 1e-2
#: Newton steps taken below that decrement before stopping anyway: where the
#: Monte Carlo error keeps the decrement above ``tolerance`` while steps
#: still climb by noise, the refinement would otherwise run to ``max_steps``
#: (two suffice for a linear mixed model, whose gradient is exact).
_POLISH_STEPS = 2
#: Newton decrement at which a maximisation of the closed-form likelihood
#: stops: there is no Monte Carlo error, and at the maximum itself the
#: curvature along the flat rotations of b vanishes too (about |gradient|
#: away from it), which :func:`pseudo_inverse` needs to see them as flat.
_EXACT_TOLERANCE = 1e-12


def standard_errors(model, guide, data: LongitudinalData, parameters: Sequence[str] = (), *,
                    include_dispersion: bool = True, method: str = "autograd", num_samples: int = 1000,
                    level: float = 0.95, adapt: bool = True, step: float = 1e-4, chunk_size: int | None = None,
                    seed: int = 0, num_shards: int | None = None, distributed_input: bool = False,
                    closed_form: bool = True) -> StandardErrors:
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
        elements get standard errors, e.g. :data:`~pyro_dgmm.parameters.LINEAR_FIXED_EFFECTS`.
    :param include_dispersion: add every outcome's dispersion parameter
        (residual SD, Beta precision).
    :param method: ``'autograd'`` (exact Hessian of the estimate; cheap up
        to a few hundred parameters) or ``'central'`` (central differences
        of the estimate, as in the talk; :math:`2P(P+1)` passes over the data).
    :param num_samples: S, importance samples per subject.
    :param level: confidence level of the intervals.
    :param adapt: adapt the proposal to each subject (:mod:`pyro_dgmm.marginal`).
    :param step: relative step of the central differences.
    :param closed_form: use the exact marginal likelihood where the model
        allows it (:mod:`pyro_dgmm.marginal`: a linear mixed model); the
        Hessian is then the exact observed information.
    :param num_shards: sharding over processes (:mod:`pyro_dgmm.marginal`);
        default one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects.
        The Hessian is each process's
        Hessian of its partial sum, summed over processes.
    :returns: a :class:`StandardErrors`.  Warns (:class:`InferenceWarning`)
        when ``-hessian`` has a negative eigenvalue (not at a maximum, or
        Monte Carlo noise) or some subject's Pareto k-hat exceeds 0.7.
    """
    check_choice("method", method, ("autograd", "central"))
    check_level(level)
    check_float("step", step, low=0, low_open=True)
    names = select_parameters(model, parameters, include_dispersion)
    objective = MarginalObjective(model, guide, data, names, num_samples, chunk_size, seed, adapt, num_shards,
                                  distributed_input, closed_form)
    theta = objective.theta
    hessian = objective.hessian(theta) if method == "autograd" else objective.central_hessian(theta, step)
    labels = element_labels(model, objective.layout)
    covariance, null_space = pseudo_inverse(-hessian, labels)
    reported = _reported_scale(objective, covariance, null_space, level)
    marginal = objective.marginal(theta)
    warn_unreliable(marginal)
    return StandardErrors(names, labels, objective.layout.slices, theta, hessian, covariance, null_space,
                          *reported, level, method, marginal)


def maximize_marginal_likelihood(model, guide, data: LongitudinalData, parameters: Sequence[str] = (), *,
                                 include_dispersion: bool = True, num_samples: int = 1000,
                                 max_steps: int = 30, tolerance: float = 1e-2, adapt: bool = True,
                                 chunk_size: int | None = None, seed: int = 0, num_shards: int | None = None,
                                 distributed_input: bool = False, closed_form: bool = True) -> Maximization:
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
    the maximum, :data:`REFINE_TOLERANCE` within 0.0015 SE).  Where the
    Monte Carlo error of the gradient stops smaller ones from being reached
    (no step increases the estimate, or two steps were taken with a
    decrement below 0.01 without reaching ``tolerance``), the maximisation
    stops there, and counts as converged if the decrement is below 0.01.  The proposal is refitted at every
    iterate (``adapt``), so that the estimate is accurate where its
    derivatives are taken; with a proposal fixed at the start, the optimiser
    drifts to where the Monte Carlo error of the estimate flatters it.  The
    steps use only directions whose absolute curvature exceeds
    :math:`10^{-3}` times the largest: flat ones (a rotation of b, an
    unused latent direction) stay where SVI left them.

    :param parameters: names from ``model.named_parameters()``; for a
        linear DGMM all of them (:data:`~pyro_dgmm.parameters.LINEAR_FIXED_EFFECTS`,
        :data:`~pyro_dgmm.parameters.LINEAR_RANDOM_EFFECTS` and the dispersion).
    :param num_shards: sharding over processes (:mod:`pyro_dgmm.marginal`);
        default one shard per ``torch.distributed`` process.
    :param distributed_input: each process passes only its own subjects.
        Every process takes the same steps.
    :param closed_form: use the exact marginal likelihood where the model
        allows it (:mod:`pyro_dgmm.marginal`: a linear mixed model), so the
        steps land on the maximum itself.
    :returns: a :class:`Maximization`; the model's parameters are updated.
    """
    names = select_parameters(model, parameters, include_dispersion)
    objective = MarginalObjective(model, guide, data, names, num_samples, chunk_size, seed, adapt, num_shards,
                                  distributed_input, closed_form)
    theta, damping, steps, converged = objective.theta, 0.0, 0, False
    polish_steps = _POLISH_STEPS
    if objective.exact:  # no Monte Carlo error: Newton converges to the maximum itself
        tolerance, polish_steps = min(tolerance, _EXACT_TOLERANCE), max_steps
    before = value = objective(theta)
    polish = 0  # steps taken with a decrement already below _MONTE_CARLO_TOLERANCE
    for _ in range(max_steps):
        gradient = objective.gradient(theta)
        step = _ascent_step(gradient, -objective.hessian(theta))
        delta = step(damping)
        decrement = float(gradient @ delta) / 2
        polish += decrement < _MONTE_CARLO_TOLERANCE
        if decrement < tolerance or polish > polish_steps:
            converged = True
            break
        while (candidate := objective(theta + delta)) <= value and damping < 1e6:
            damping = max(10 * damping, 1e-3)
            delta = step(damping)
        if candidate <= value:  # no step climbs: at the maximum up to the Monte Carlo error
            converged = decrement < _MONTE_CARLO_TOLERANCE
            break
        theta, damping, steps = theta + delta, damping / 10, steps + 1
        objective.move_to(theta)
        value = objective(theta)
    assign(model, objective.layout, theta)
    return Maximization(float(before), float(value), steps, converged)


def refine(model, guide, data: LongitudinalData, parameters: Sequence[str] | None = None, *,
           num_samples: int | None = None, seed: int = 0, num_shards: int | None = None,
           distributed_input: bool = False) -> dict:
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

    :param parameters: the names to move besides the dispersions (default:
        the linear parts ``model`` has; :class:`~pyro_dgmm.joint_estimator.JointMixedModel`
        adds its event coefficients).
    :param num_samples: importance samples per subject (default: 500, or
        :func:`minimum_samples` if more).
    :returns: :class:`Maximization`'s fields as a dict, with the parameters
        refined and the seconds taken.  (The encoder, amortised for the SVI
        parameters, then needs fitting again; ``DeepMixedModel.fit`` does so.)
    """
    start = time.perf_counter()
    names = present(model, LINEAR_PARAMETERS) if parameters is None else list(parameters)
    if not names and not dispersion_labels(model):
        raise ConfigError(f"refine: {type(model).__name__} has none of the parameters the refinement moves "
                          f"({', '.join(LINEAR_PARAMETERS)}) and no dispersion; "
                          "call maximize_marginal_likelihood with the names of its own parameters")
    num_samples = num_samples or max(500, minimum_samples(model.latent_dim))
    result = maximize_marginal_likelihood(model, guide, data, names, num_samples=num_samples, seed=seed,
                                          tolerance=REFINE_TOLERANCE, num_shards=num_shards,
                                          distributed_input=distributed_input)
    return {**vars(result), "parameters": names + list(dispersion_labels(model).values()),
            "seconds": time.perf_counter() - start}


def observation_samples(latent_dim: int) -> int:
    """Importance samples per subject of :func:`refine_observation`: 500, or
    twice :func:`~pyro_dgmm.marginal.minimum_samples` where that is more (a
    serial process adds ``serial_terms`` coordinates per outcome to b:
    2,380 for PBC's 6 + 8)."""
    return max(500, 2 * minimum_samples(latent_dim))


def refine_observation(model, guide, data: LongitudinalData, parameters: Sequence[str], *,
                       num_samples: int | None = None, seed: int = 0, num_shards: int | None = None,
                       distributed_input: bool = False) -> Maximization:
    """Move the named observation-model parameters of ``model`` (dispersions,
    their slopes, Student-t df, the serial-process scales:
    :meth:`~pyro_dgmm.model.MixedModel.observation_parameters`) to the
    maximum of the importance-sampled marginal likelihood, everything else
    held (:func:`maximize_marginal_likelihood`); ``num_samples`` defaults to
    :func:`observation_samples`.  What
    :meth:`~pyro_dgmm.estimator.DeepMixedModel.refine_observation_model`
    runs, and ``fit`` for the serial scale (SVI shrinks it towards 0,
    :mod:`pyro_dgmm.serial`)."""
    num_samples = num_samples or observation_samples(model.latent_dim)
    return maximize_marginal_likelihood(model, guide, data, parameters, include_dispersion=False,
                                        num_samples=num_samples, seed=seed, num_shards=num_shards,
                                        distributed_input=distributed_input)


def refine_serial_scale(model, guide, data: LongitudinalData, *, seed: int = 0, num_shards: int | None = None,
                        distributed_input: bool = False) -> dict:
    """``fit``'s refinement of the serial-process scales tau alone
    (``FitConfig.refine='auto'`` without a closed form): SVI shrinks them
    towards 0, and with them the predictive spread at far horizons
    (:mod:`pyro_dgmm.serial`).  The encoder is not refitted: predictions
    correct its proposal by importance sampling.

    :returns: :class:`Maximization`'s fields as a dict, with the seconds
        taken and ``serial_tau`` (:meth:`~pyro_dgmm.model.MixedModel.serial_tau`)."""
    start = time.perf_counter()
    result = refine_observation(model, guide, data, ["serial_scale"], seed=seed, num_shards=num_shards,
                                distributed_input=distributed_input)
    return {**vars(result), "seconds": time.perf_counter() - start, "serial_tau": model.serial_tau()}


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


def check_level(level: float) -> None:
    """Refuse a confidence level outside (0, 1), naming the option."""
    check_float("level", level, low=0, high=1, low_open=True, high_open=True)


def pseudo_inverse(information: torch.Tensor, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Covariance :math:`I^{+}` and the flat directions of the information I (P, P).

    Eigenvalues with :math:`|\lambda| \le 10^{-7} \max|\lambda|` are flat
    (not identified) and left out of the inverse; negative ones remain (their
    variances may come out negative, giving NaN standard errors) and raise
    an :class:`InferenceWarning` naming the parameters involved.

    :returns: covariance (P, P) and null-space basis (P, r).
    """
    eigenvalues, vectors, flat, negative = _curvatures(information)
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


def _curvatures(information: torch.Tensor) -> tuple[torch.Tensor, ...]:
    r"""Eigenvalues and vectors of the symmetrised information, and which are flat
    (:math:`|\lambda| \le 10^{-7} \max|\lambda|`) and which negative beyond that."""
    information = (information + information.T) / 2
    eigenvalues, vectors = torch.linalg.eigh(information)
    tolerance = NULL_RTOL * eigenvalues.abs().max().clamp_min(torch.finfo(information.dtype).tiny)
    return eigenvalues, vectors, eigenvalues.abs() <= tolerance, eigenvalues < -tolerance


def at_maximum(errors: StandardErrors) -> bool:
    """Whether ``-errors.hessian`` is positive semi-definite (up to the flat
    tolerance of :func:`pseudo_inverse`): no direction in which the
    likelihood still curves upwards, so the Wald covariance is valid."""
    return not bool(_curvatures(-errors.hessian)[3].any())


def estimable(matrix: torch.Tensor, null_space: torch.Tensor) -> torch.Tensor:
    """Rows of ``matrix`` (R, P) orthogonal to the flat directions, shape (R,)."""
    along = (matrix @ null_space).norm(dim=-1)
    return along <= 1e-6 * matrix.norm(dim=-1).clamp_min(1e-300)


def _reported_scale(objective: MarginalObjective, covariance: torch.Tensor, null_space: torch.Tensor,
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
    identified = estimable(torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device), null_space)
    se = torch.where(identified & (variance > 0), variance.clamp_min(0).sqrt(), torch.full_like(theta, math.nan))
    estimate, scale = theta.clone(), torch.ones_like(theta)
    lower, upper = theta - z * se, theta + z * se
    for name, where in objective.layout.slices.items():
        if name.endswith("_unconstrained"):
            constrain = constraint_of(objective.bound, name)
            u = theta[where].clone().requires_grad_(True)
            value = constrain(u)
            scale[where] = torch.autograd.grad(value.sum(), u)[0].abs()
            estimate[where] = value.detach()
            ends = torch.stack([constrain(lower[where]), constrain(upper[where])])
            lower[where], upper[where] = ends.min(0).values, ends.max(0).values
    return estimate, scale * se, lower, upper


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
    scale = check_choice("scale", scale, ("link", "response"))
    bound = float64_copy(model, data.device)
    layout = Layout(bound.model, errors.parameter_names)
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
