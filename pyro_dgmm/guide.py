r"""The amortised guide q(b_i | y_i) = N(mu_b(y_i), Sigma_b(y_i)).

The encoder (a :class:`~pyro_dgmm.nn.SetEncoder`, the talk's
:class:`~pyro_dgmm.nn.DenseEncoder` or the attention-based
:class:`~pyro_dgmm.nn.SequenceEncoder`) maps a subject's record to
``loc`` and a Cholesky factor ``L`` of :math:`\Sigma_b = L L^\top`, full or
diagonal.  Both cases use a ``MultivariateNormal`` so that, against the
model's ``MultivariateNormal`` prior, ``TraceMeanField_ELBO`` takes the
closed-form KL of the talk:

.. math:: \mathrm{KL}(q \,\|\, p) = \tfrac12\big(\operatorname{tr}\Sigma_b - q
          + \mu_b^\top \mu_b - \log\det \Sigma_b\big)

Example:

>>> from pyro_dgmm.data import DataSchema
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=5, n_visits=3, seed=0).data
>>> schema = DataSchema.fit(df, id_col="id", time_col="time", outcomes={"y": "gaussian"})
>>> guide = AmortizedGuide.from_schema(schema, latent_dim=2)
>>> q = guide.posterior(schema.transform(df))
>>> q.batch_shape, q.event_shape
(torch.Size([5]), torch.Size([2]))
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from .data import DataSchema, LongitudinalData
from .errors import ConfigError
from .model import OwnParameters, subjects_plate
from .nn import DenseEncoder, SequenceEncoder, SetEncoder

#: Encoder kinds: ``'set'`` pools over visits, ``'dense'`` reads a flat record (the talk's),
#: ``'sequence'`` attends over the visits in time (mTAN-style).
ENCODERS = ("set", "dense", "sequence")


def build_encoder(kind: str, num_outcomes: int, num_time_features: int, num_covariates: int, latent_dim: int, *,
                  hidden=(64, 64), covariance: str = "full", activation: str = "tanh",
                  num_visits: int | None = None) -> torch.nn.Module:
    """The encoder network of kind ``kind`` (one of :data:`ENCODERS`) for
    records of that many outcomes, time features and covariates; ``num_visits``
    (the padded record length) is needed by ``'dense'`` only."""
    args = (num_outcomes, num_time_features, num_covariates, latent_dim)
    options = dict(hidden=tuple(hidden), covariance=covariance, activation=activation)
    if kind == "set":
        return SetEncoder(*args, **options)
    if kind == "sequence":
        return SequenceEncoder(*args, **options)
    if kind == "dense":
        if num_visits is None:
            raise ConfigError("the dense encoder needs num_visits (the padded record length)")
        return DenseEncoder(*args, num_visits=num_visits, **options)
    raise ConfigError(f"encoder kind must be one of {ENCODERS}, got '{kind}'")


class AmortizedGuide(OwnParameters):
    """Guide with one encoder network shared by all subjects.

    :param encoder: a module ``(encoder_y, mask, visit_mask, time_features,
        covariates) -> (loc (N, q), scale_tril (N, q, q))``.
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    @classmethod
    def from_schema(cls, schema: DataSchema, latent_dim: int, *, kind: str = "set",
                    hidden=(64, 64), covariance: str = "full", activation: str = "tanh",
                    num_visits: int | None = None) -> "AmortizedGuide":
        """Build the encoder for data described by ``schema``.

        :param kind: ``'set'`` (pools over visits; any number of visits),
            ``'dense'`` (the talk's flat encoder; needs ``num_visits``) or
            ``'sequence'`` (attention over the visits in time; any number of
            visits).
        """
        return cls(build_encoder(kind, len(schema.families), schema.time_basis.num_features,
                                 len(schema.covariate_encoder.columns), latent_dim, hidden=hidden,
                                 covariance=covariance, activation=activation, num_visits=num_visits))

    def posterior(self, data: LongitudinalData) -> dist.MultivariateNormal:
        """q(b_i | y_i) for every subject in ``data``: batch (N,), event (q,)."""
        mask = data.mask if data.encoder_mask is None else data.encoder_mask
        loc, scale_tril = self.encoder(data.encoder_y, mask, data.visit_mask, data.time_features, data.covariates)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    def forward(self, data: LongitudinalData, *, num_subjects: int | None = None,
                kl_scale: float = 1.0, observe: bool = True) -> torch.Tensor:
        """Sample ``b`` (batch (N, 1)) with the same plate and scale as the model."""
        q = self.posterior(data)
        with subjects_plate(data, num_subjects), poutine.scale(scale=kl_scale):
            return pyro.sample(
                "b", dist.MultivariateNormal(q.loc.unsqueeze(-2), scale_tril=q.scale_tril.unsqueeze(-3))
            )
