r"""The training objective: Pyro's mean-field ELBO, computing only what it uses.

.. math::

    \mathrm{ELBO} = \sum_{\text{observed sites}} s \log p(y \mid b)
        - \sum_{\text{latent sites}} s\, \mathrm{KL}\big(q(b) \,\|\, p(b)\big)

with :math:`s` each site's scale (plate subsampling times KL annealing),
the log-likelihood averaged over ``num_particles`` draws of ``b`` and the
KL in closed form, exactly as ``TraceMeanField_ELBO`` defines it.

Two things of Pyro's ``differentiable_loss`` cost a small-batch step time
without changing the loss:

* it reads the loss back to the host (``.item()``) and probes it for NaN
  on every call.  On a GPU each such read waits for every queued kernel,
  so the host cannot prepare the next step while the device works on
  this one;
* it scores every site of both traces (``compute_log_prob``,
  ``compute_score_parts``): the log-density of each draw of ``b`` under
  the prior and under the guide (triangular solves), although the
  closed-form KL replaces both.

:class:`MeanFieldELBO` returns the loss as a tensor, reads nothing back
(the fit loop checks the loss once an epoch) and evaluates only the
observed sites' log-likelihoods and the latent sites' KL.  While Pyro's
validation is on (the fit loop's first step) it takes Pyro's own path, with
every model/guide and shape check.

Two of Pyro's underscored ``ELBO`` methods are used, because Pyro has no
public way to get the traces without scoring them: ``_get_traces`` (the
extension point every Pyro ELBO subclass implements, here called for the
checked path) and ``_vectorized_num_particles`` (the particle plate that
``vectorize_particles=True`` adds, reused so particles are laid out as
Pyro lays them out).  pyproject.toml pins Pyro to 1.9.x, where both are as used here.

Example (the loss of a fitted model and guide on its data):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> elbo = MeanFieldELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
>>> loss = elbo.differentiable_loss(est.model_, est.guide_, est.data_)
>>> loss.shape, bool(loss.isfinite())
(torch.Size([]), True)
"""
from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.distributions import MultivariateNormal
from pyro.poutine.messenger import Messenger
from torch.distributions.multivariate_normal import _batch_mv
from torch.distributions.utils import _standard_normal
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample


class MeanFieldELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose :meth:`differentiable_loss` makes no host
    round trip and scores no site the loss does not use.  Everything else
    (vectorised particles, validation, :meth:`loss`) is Pyro's."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO estimate as a differentiable tensor."""
        loss = 0.0
        for model_trace, guide_trace in self._traces(model, guide, args, kwargs):
            loss = loss - elbo_particle(model_trace, guide_trace) / self.num_particles
        return loss

    def _traces(self, model, guide, args, kwargs):
        """(model trace, guide trace) per particle (one pair when particles are
        vectorised): through Pyro's checked path while validation is on, else
        :meth:`_lean_traces`."""
        if is_validation_enabled():
            return self._get_traces(model, guide, args, kwargs)
        return self._lean_traces(model, guide, args, kwargs)

    def _lean_traces(self, model, guide, args, kwargs):
        """Guide and replayed model traces, as Pyro's ``get_importance_trace``
        makes them but without scoring any site."""
        if self.vectorize_particles:
            model, guide = self._vectorized_num_particles(model), self._vectorized_num_particles(guide)
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            yield model_trace, guide_trace


def elbo_particle(model_trace, guide_trace) -> torch.Tensor:
    """One particle's ELBO: observed log-likelihood minus closed-form KL of
    every latent site (each with its site's scale and mask; the KL with the
    guide site's, as Pyro does)."""
    elbo = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            log_p = site.get("log_prob_sum")
            if log_p is None:
                log_p = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"]).sum()
            elbo = elbo + log_p
            continue
        posterior = guide_trace.nodes[name]
        kl = kl_divergence(posterior["fn"], site["fn"])
        elbo = elbo - scale_and_mask(kl, scale=posterior["scale"], mask=posterior["mask"]).sum()
    return elbo


class ImportanceWeightedELBO(MeanFieldELBO):
    r"""The importance-weighted bound (IWAE; Burda, Grosse & Salakhutdinov, 2016):

    .. math::

        \mathcal L_M = \sum_i \mathbb E \log \frac1M \sum_{m=1}^M
            \frac{p(y_i^o \mid b_i^{(m)})\, p(b_i^{(m)})^\beta}{q(b_i^{(m)} \mid y_i)^\beta},
        \qquad b_i^{(m)} \sim q(b_i \mid y_i)

    with :math:`M` = ``num_particles`` and :math:`\beta` the KL-annealing
    weight.  :math:`\mathcal L_1` is the ELBO (with a Monte Carlo KL);
    :math:`\mathcal L_M` rises with :math:`M` to :math:`\log p(y^o)`, so the
    decoder is fitted to a tighter bound on the marginal likelihood: the
    Gaussian encoder's misfit of a skewed or multimodal posterior (few
    visits, curves shifted in time) no longer pulls the decoder towards
    curves whose posterior is Gaussian.  Each subject's weights are summed
    over its observed cells and normalised over its own particles, so the
    minibatch scale multiplies the per-subject bounds, as in the ELBO.
    Particles must be vectorised (``vectorize_particles=True``).

    Each latent draw is made here from the guide's Gaussian,
    :math:`b = \mu + L\varepsilon`, and :math:`\log q(b) = -\tfrac12
    \lVert\varepsilon\rVert^2 - \sum_k \log L_{kk} - \tfrac q2 \log 2\pi` is
    computed from the noise :math:`\varepsilon` itself: recovering it from
    :math:`b` by a triangular solve (what ``log_prob(b)`` does) amplifies
    the float32 rounding of :math:`b` by :math:`\lVert L^{-1}\rVert`, which
    for an encoder with many latent directions can be astronomically large
    (PBC with 16 directions: a bound of :math:`+10^{7}` after one epoch,
    then NaN).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative bound as a differentiable tensor."""
        if not self.vectorize_particles:
            raise ValueError("ImportanceWeightedELBO needs vectorize_particles=True")
        if is_validation_enabled():  # Pyro's model/guide checks, on its own traces (random numbers restored)
            with torch.random.fork_rng():
                next(iter(self._get_traces(model, guide, args, kwargs)))
        model, guide = self._vectorized_num_particles(model), self._vectorized_num_particles(guide)
        draws = _GaussianDraws()
        guide_trace = poutine.trace(draws(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        log_likelihood, log_ratio, scale, latent_scale = 0.0, 0.0, 1.0, 1.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:  # (M, N, T): summed over the subject's cells
                log_p = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
                log_likelihood = log_likelihood + log_p.sum(-1)
                scale = site["scale"]
                continue
            posterior = guide_trace.nodes[name]  # (M, N, 1): one draw of b per particle and subject
            log_q = draws.log_q.get(name)
            if log_q is None:
                log_q = posterior["fn"].log_prob(posterior["value"])
            log_ratio = log_ratio + (site["fn"].log_prob(site["value"]) - log_q).sum(-1)
            latent_scale = posterior["scale"]
        beta = latent_scale / scale  # the latent site carries plate scale times the annealing weight
        log_w = log_likelihood + beta * log_ratio
        log_w = log_w.reshape(self.num_particles, -1)  # (M, N)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative bound as a float (no gradients)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


class _GaussianDraws(Messenger):
    r"""Draws each latent multivariate-normal site as its ``rsample`` does,
    :math:`\mu + L\varepsilon` with the same random numbers, and keeps
    :math:`\log q` of the draw computed from :math:`\varepsilon` (no solve):
    ``log_q[name]``, shape of the site's batch."""

    def __init__(self):
        super().__init__()
        self.log_q = {}

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if msg["is_observed"] or msg["value"] is not None or not isinstance(fn, MultivariateNormal):
            return
        noise = _standard_normal(fn.batch_shape + fn.event_shape, dtype=fn.loc.dtype, device=fn.loc.device)
        scale_tril = fn._unbroadcasted_scale_tril
        msg["value"] = fn.loc + _batch_mv(scale_tril, noise)
        log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        self.log_q[msg["name"]] = (-0.5 * noise.pow(2).sum(-1) - log_det
                                   - 0.5 * noise.shape[-1] * math.log(2 * math.pi))
