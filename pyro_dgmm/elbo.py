r"""The training objective: Pyro's mean-field ELBO, kept on the device.

.. math::

    \mathrm{ELBO} = \sum_{\text{observed sites}} s \log p(y \mid b)
        - \sum_{\text{latent sites}} s\, \mathrm{KL}\big(q(b) \,\|\, p(b)\big)

with :math:`s` each site's scale (plate subsampling times KL annealing),
the log-likelihood averaged over ``num_particles`` draws of ``b`` and the
KL in closed form, exactly as ``TraceMeanField_ELBO`` defines it.

Pyro's ``differentiable_loss`` also reads the loss back to the host
(``.item()``) and probes it for NaN on every call.  On a GPU each such read
waits for every queued kernel, so the host cannot prepare the next step
while the device works on this one.  :class:`MeanFieldELBO` returns the
same loss as a tensor and reads nothing back; the fit loop checks the
loss once an epoch instead.
"""
from __future__ import annotations

import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO


class MeanFieldELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose :meth:`differentiable_loss` makes no host
    round trip.  Everything else (traces, vectorised particles, validation,
    :meth:`loss`) is Pyro's."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO estimate as a differentiable tensor."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss - elbo_particle(model_trace, guide_trace) / self.num_particles
        return loss


def elbo_particle(model_trace, guide_trace) -> torch.Tensor:
    """One particle's ELBO: observed log-likelihood minus closed-form KL of
    every latent site (each with the guide site's scale and mask)."""
    elbo = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            elbo = elbo + site["log_prob_sum"]
            continue
        posterior = guide_trace.nodes[name]
        kl = kl_divergence(posterior["fn"], site["fn"])
        elbo = elbo - scale_and_mask(kl, scale=posterior["scale"], mask=posterior["mask"]).sum()
    return elbo
