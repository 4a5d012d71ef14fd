"""Neural building blocks of the DGMM: plain torch, no ``pyro.sample``.

* :class:`MLP` -- the talk's dense network
  ``dnn(x) = f_L o sigma o ... o sigma o f_1`` with affine layers ``f_l``.
* :class:`FixedEffectsNet` -- mu1(X_i, T_ij): covariates and time features.
* :class:`RandomEffectsNet` -- mu2(b_i, T_ij): random effects and time features.
* :class:`SetEncoder`, :class:`DenseEncoder`, :class:`SequenceEncoder` -- the
  amortised encoder ``(y_i, mask_i, T_i, X_i) -> (mu_b, Sigma_b)`` of the guide.

Example:

>>> import torch
>>> net = MLP(3, hidden=(8,), out_features=2)
>>> net(torch.zeros(5, 4, 3)).shape
torch.Size([5, 4, 2])
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError

#: Shapes of the encoder's Sigma_b: a full Cholesky factor or a diagonal.
COVARIANCES = ("full", "diagonal")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Sequential):
    """Dense network: affine layers of widths ``hidden`` with ``activation``
    between them and a final affine layer to ``out_features``.

    ``hidden=()`` gives a single affine map (the linear mixed model case).
    Accepts any number of leading batch dimensions.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "tanh"):
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation '{activation}' is not one of {sorted(ACTIVATIONS)}")
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], out_features))
        super().__init__(*layers)


def _zero_last_layer(mlp: MLP) -> MLP:
    """Start a residual path at exactly zero output, so training begins from
    the linear part of the model and adds nonlinearity as the data ask for it."""
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class FixedEffectsNet(nn.Module):
    r"""mu1(X_i, T_ij): the population part of the linear predictor.

    .. math:: \mu_{1,ijk} = \beta_k^\top x_i + \gamma_k^\top T_{ij}
              + [\,x_i^\top \Delta_k T_{ij}\,] + \mathrm{dnn}_k(x_i, T_{ij})

    A linear part (the fixed effects of a linear mixed model, with the
    covariate-by-time terms :math:`x_i^\top \Delta_k T_{ij}` when
    ``covariate_time``, starting at zero) plus a dense
    net on covariates and time features together, whose last layer starts
    at zero: training begins from the linear model and adds nonlinearity
    and interactions where the data support them.  (Started at random, the
    dense net tends to drive the fit into a solution that uses a single
    latent direction.)

    Shapes: covariates (N, P), time_features (N, T, F) -> (N, T, K).
    """

    def __init__(self, num_covariates: int, num_time_features: int, num_outcomes: int,
                 hidden: Sequence[int] = (64, 64), activation: str = "tanh", covariate_time: bool = False):
        super().__init__()
        self.intercept = nn.Parameter(torch.zeros(num_outcomes))
        self.covariate_effects = nn.Linear(num_covariates, num_outcomes, bias=False) if num_covariates else None
        self.covariate_time = None
        if covariate_time and num_covariates:
            self.covariate_time = nn.Linear(num_covariates * num_time_features, num_outcomes, bias=False)
            nn.init.zeros_(self.covariate_time.weight)
        self.net = _zero_last_layer(MLP(num_covariates + num_time_features, hidden, num_outcomes,
                                        activation)) if hidden else None
        self.time_skip = nn.Linear(num_time_features, num_outcomes, bias=False)

    def forward(self, covariates: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        linear = self.intercept + self.time_skip(time_features)
        if self.covariate_effects is not None:
            linear = linear + self.covariate_effects(covariates).unsqueeze(-2)
        if self.covariate_time is not None:  # x_i (x) T_ij: (N, T, P * F)
            products = covariates.unsqueeze(-2).unsqueeze(-1) * time_features.unsqueeze(-2)
            linear = linear + self.covariate_time(products.flatten(-2))
        if self.net is None:
            return linear
        x = covariates.unsqueeze(-2).expand(*time_features.shape[:-1], covariates.shape[-1])
        return linear + self.net(torch.cat([x, time_features], dim=-1))


class RandomEffectsNet(nn.Module):
    r"""mu2(b_i, T_ij): the subject-specific part of the linear predictor.

    Two paths, added:

    .. math:: \mu_{2,ijk} = \sum_{f=0}^{F} C_{kf}(b_i)\, T_{ijf}
              + \mathrm{dnn}_k(b_i, T_{ij}), \qquad T_{ij0} = 1

    The first is a varying-coefficient term: ``C(b) = A b + dnn_C(b)`` gives
    one coefficient per outcome and time function; its linear part is
    ``Z_ij A b_i`` with ``Z = [1, T]``, the linear mixed model with
    random-effects covariance ``A A^T``.  The second is the
    talk's dense net on the concatenation ``(b_i, T_ij)``, which captures
    effects such as a subject-specific shift of a nonlinear curve
    (``expit(t - c(b_i))``) that no finite basis represents.  Both dense nets
    start at zero output, so training starts from the linear mixed model
    (started at random they tend to drive the fit into a solution that
    uses a single latent direction).  With ``hidden=()`` only the linear
    part is kept.

    ``time_functions`` M > 0 adds a third path, random coefficients of M
    learned functions of time:

    .. math:: \mu_{2,ijk} \mathrel{+}= \sum_{m=1}^{M} (W b_i)_{km}\, h_m(T_{ij}),

    ``h`` a one-hidden-layer net (32 units, ``activation``) of the time
    features, ``W`` starting at zero.  It carries shapes a fixed basis cannot, such as a
    random amplitude and phase of an oscillation (``a_i sin(wt) +
    c_i cos(wt)``); on data without them it can also lead the fit to a
    worse optimum (docs/model.md, "Learned time functions"), so the module
    default is 0 and :class:`~pyro_dgmm.estimator.DeepMixedModel` chooses
    between 0 and 4 by a race on the held-out loss
    (:class:`~pyro_dgmm.selection.TimeFunctionRace`).

    Shapes: b (..., N, q), time_features (N, T, F) -> (..., N, T, K).
    """

    def __init__(self, latent_dim: int, num_time_features: int, num_outcomes: int,
                 hidden: Sequence[int] = (64, 64), activation: str = "tanh", time_functions: int = 0):
        super().__init__()
        self.num_outcomes = num_outcomes
        self.num_terms = num_time_features + 1
        self.linear_coefficients = nn.Linear(latent_dim, num_outcomes * self.num_terms, bias=False)
        self.coefficients = _zero_last_layer(
            MLP(latent_dim, hidden, num_outcomes * self.num_terms, activation)) if hidden else None
        self.joint = _zero_last_layer(
            MLP(latent_dim + num_time_features, hidden, num_outcomes, activation)) if hidden else None
        self.time_functions = time_functions
        self.learned_basis = self.learned_coefficients = None
        if time_functions:
            self.learned_basis = MLP(num_time_features, (32,), time_functions, activation)
            self.learned_coefficients = nn.Linear(latent_dim, num_outcomes * time_functions, bias=False)
            nn.init.zeros_(self.learned_coefficients.weight)

    def forward(self, b: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        coef = self.linear_coefficients(b)
        if self.coefficients is not None:
            coef = coef + self.coefficients(b)
        coef = coef.unflatten(-1, (self.num_outcomes, self.num_terms))
        ones = torch.ones_like(time_features[..., :1])
        z = torch.cat([ones, time_features], dim=-1)  # (N, T, F + 1)
        mu2 = torch.einsum("...nkf,ntf->...ntk", coef, z)
        if self.joint is not None:
            mu2 = mu2 + self._joint(b, time_features)
        if self.learned_basis is not None:
            mu2 = mu2 + self._learned(b, time_features)
        return mu2

    def _learned(self, b: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        """sum_m (W b)_km h_m(T_ij) for every draw and visit, (..., N, T, K)."""
        coef = self.learned_coefficients(b).unflatten(-1, (self.num_outcomes, self.time_functions))
        return torch.einsum("...nkm,ntm->...ntk", coef, self.learned_basis(time_features))

    def _joint(self, b: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        """dnn(b_i, T_ij) for every draw and visit, (..., N, T, K).  The first
        layer's affine map of the concatenation (b, T) is applied as
        ``W_b b + (W_T T + c)``, each part computed once (per draw, per visit)
        and broadcast, rather than on S x N x T concatenated copies: the same
        function, 20% less time for the samplers' many-draw passes."""
        first, *rest = self.joint
        w_b, w_t = first.weight.split([b.shape[-1], time_features.shape[-1]], dim=1)
        hidden = (b @ w_b.T).unsqueeze(-2) + nn.functional.linear(time_features, w_t, first.bias)
        for layer in rest:
            hidden = layer(hidden)
        return hidden


class _GaussianHead(nn.Module):
    """Maps a feature vector to ``loc`` (q,) and a lower-triangular ``scale_tril``
    (q, q): full Cholesky factor, or a diagonal one when ``covariance='diagonal'``.
    The diagonal is ``softplus(.) + 1e-4`` so Sigma_b stays positive definite.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], latent_dim: int,
                 covariance: str, activation: str):
        super().__init__()
        if covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {COVARIANCES}, got '{covariance}'")
        self.latent_dim = latent_dim
        self.covariance = covariance
        n_offdiag = latent_dim * (latent_dim - 1) // 2 if covariance == "full" else 0
        self.net = MLP(in_features, hidden, 2 * latent_dim + n_offdiag, activation)
        self.register_buffer("_tril_index", torch.tril_indices(latent_dim, latent_dim, offset=-1))

    def forward(self, features: torch.Tensor, linear: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.latent_dim
        out = self.net(features)
        if linear is not None:
            out = out + linear
        loc, raw_scale, offdiag = out[..., :q], out[..., q:2 * q], out[..., 2 * q:]
        scale_tril = torch.diag_embed(nn.functional.softplus(raw_scale - 1.0) + 1e-4)
        if self.covariance == "full":
            rows, cols = self._tril_index
            scale_tril = _fill_lower(scale_tril, rows, cols, offdiag)
        return loc, scale_tril


def _visit_features(encoder_y: torch.Tensor, m: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
    r"""Per-visit features :math:`f_{ij} = (\tilde y_{ij}, m_{ij}, T_{ij},
    \tilde y_{ij} \otimes T_{ij}, m_{ij} \otimes T_{ij})`, (N, T, 2K(F + 1) + F):
    their means over visits are the sufficient statistics of a linear mixed
    model's posterior of b."""
    interactions = torch.cat([encoder_y, m], dim=-1).unsqueeze(-1) * time_features.unsqueeze(-2)
    return torch.cat([encoder_y, m, time_features, interactions.flatten(-2)], dim=-1)


def _fill_lower(scale_tril: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    lower = torch.zeros_like(scale_tril)
    lower[..., rows, cols] = values
    return scale_tril + lower


class SetEncoder(nn.Module):
    r"""Amortised encoder that pools over visits (default).

    .. math:: h_i = \frac{1}{J_i}\sum_{j} v_{ij}\, \phi(f_{ij}), \quad
              \bar f_i = \frac{1}{J_i}\sum_{j} v_{ij} f_{ij}, \qquad
              (\mu_b, L_b) = \rho(h_i, c_i, x_i) + W [\bar f_i, c_i, x_i]

    with per-visit features :math:`f_{ij} = (\tilde y_{ij}, m_{ij}, T_{ij},
    \tilde y_{ij} \otimes T_{ij}, m_{ij} \otimes T_{ij})`, a per-visit
    embedding :math:`\phi` (dense layers of widths ``hidden[:-1]``, each
    followed by the activation; averaged as it is, since the head's first
    layer is affine and a last affine layer in :math:`\phi` would add
    nothing but cost per visit), counts
    :math:`c_i = \log(1 + n_{i\cdot})` and a linear map ``W`` (``linear``)
    beside the dense head :math:`\rho` (the raw outputs before the softplus
    and the Cholesky assembly).

    where ``v`` marks the subject's :math:`J_i` visits, ``m`` the observed
    outcomes, :math:`n_{i\cdot}` their counts per outcome and :math:`\tilde y`
    the standardised outcomes (0 where unobserved).  Pooling over visits
    matches the structure of the exact posterior,
    :math:`\log p(b \mid y_i) = \log p(b) + \sum_j \log p(y_{ij} \mid b) + c`
    (the mean keeps activations bounded; the counts restore the sum).  Each
    visit's input holds :math:`\tilde y_{ij}`, :math:`m_{ij}`, :math:`T_{ij}` and
    the products :math:`\tilde y_{ij} \otimes T_{ij}`, :math:`m_{ij} \otimes T_{ij}`:
    for a linear mixed model the pooled products are the sufficient
    statistics of the posterior of b, so an encoder that starts near-linear
    already sees subject-specific slopes (without them training tends to
    settle on a single latent direction: posterior collapse), and the
    linear path ``W`` gives the posterior mean of a linear mixed model
    (nearly linear in those statistics) from the first steps, as the
    decoder's linear parts do.  It handles any number of visits, irregular
    times and histories truncated at a landmark (prediction) without
    retraining.

    Shapes: encoder_y, mask (N, T, K); visit_mask (N, T); time_features
    (N, T, F); covariates (N, P) -> loc (N, q), scale_tril (N, q, q).
    """

    def __init__(self, num_outcomes: int, num_time_features: int, num_covariates: int,
                 latent_dim: int, hidden: Sequence[int] = (128, 128), covariance: str = "full",
                 activation: str = "tanh"):
        super().__init__()
        per_visit = 2 * num_outcomes * (num_time_features + 1) + num_time_features
        visit_widths = hidden[:-1] or hidden[:1] or (64,)
        self.phi = nn.Sequential(MLP(per_visit, visit_widths[:-1], visit_widths[-1], activation),
                                 ACTIVATIONS[activation]())
        self.head = _GaussianHead(visit_widths[-1] + num_outcomes + num_covariates, hidden, latent_dim,
                                  covariance, activation)
        self.linear = nn.Linear(per_visit + num_outcomes + num_covariates,
                                self.head.net[-1].out_features, bias=False)

    def forward(self, encoder_y, mask, visit_mask, time_features, covariates):
        m = mask.to(encoder_y.dtype)
        features = _visit_features(encoder_y, m, time_features)
        visits = visit_mask.to(features.dtype)
        weights = (visits / visits.sum(-1, keepdim=True).clamp(min=1.0)).unsqueeze(-1)  # (N, T, 1)
        pooled = (weights * self.phi(features)).sum(-2)
        statistics = (weights * features).sum(-2)
        counts = torch.log1p(m.sum(-2))
        return self.head(torch.cat([pooled, counts, covariates], dim=-1),
                         self.linear(torch.cat([statistics, counts, covariates], dim=-1)))


class DenseEncoder(nn.Module):
    r"""The talk's encoder: a dense net on the whole padded record.

    .. math:: (\mu_b, L_b) = \mathrm{dnn}(\tilde y_i, m_i, T_i, x_i)

    The input has a fixed length, so every subject must have the same
    number of visit slots ``T`` as at fitting time (a shared time grid,
    e.g. daily app data).
    """

    def __init__(self, num_outcomes: int, num_time_features: int, num_covariates: int,
                 latent_dim: int, num_visits: int, hidden: Sequence[int] = (128, 128),
                 covariance: str = "full", activation: str = "tanh"):
        super().__init__()
        self.num_visits = num_visits
        in_features = num_visits * (2 * num_outcomes + num_time_features) + num_covariates
        self.head = _GaussianHead(in_features, hidden, latent_dim, covariance, activation)

    def forward(self, encoder_y, mask, visit_mask, time_features, covariates):
        if encoder_y.shape[-2] != self.num_visits:
            raise ConfigError(
                f"the dense encoder was built for {self.num_visits} visit slots but the data "
                f"has {encoder_y.shape[-2]}; use encoder='set' for irregular or truncated data"
            )
        m = mask.to(encoder_y.dtype)
        t = time_features * visit_mask.unsqueeze(-1).to(time_features.dtype)
        record = torch.cat([encoder_y, m, t], dim=-1).flatten(-2)
        return self.head(torch.cat([record, covariates], dim=-1))


class SequenceEncoder(nn.Module):
    r"""Amortised encoder that attends over a subject's visits in time
    (mTAN-style: Shukla & Marlin 2021).

    Each visit's time features pass through a learned time embedding
    (a linear term and ``embed_dim - 1`` learned sinusoids, as in mTAN),

    .. math:: \phi(T_{ij}) = \big(w_0^\top T_{ij} + a_0,\;
              \sin(W T_{ij} + a)\big) \in \mathbb R^{d},

    and ``num_references`` learned queries :math:`u_r` (reference points in
    the embedding space) read every outcome through attention restricted to
    the visits where that outcome was observed:

    .. math:: s_{rj} = u_r^\top \phi(T_{ij}) / \sqrt d, \qquad
              \hat y_{irk} = \frac{\sum_j m_{ijk} e^{s_{rj}} \tilde y_{ijk}}
                                  {\sum_j m_{ijk} e^{s_{rj}}}, \qquad
              \rho_{irk} = \log\Big(1 + \sum_j m_{ijk} e^{s_{rj}}\Big)

    (:math:`\hat y` a time-localised average of outcome k near reference r,
    0 when k was never observed; :math:`\rho` a soft count of the
    observations behind it, which tells the head how much to trust it).
    The head sees these beside the set encoder's linear-mixed-model
    statistics :math:`\bar f_i` (means of the per-visit features
    :math:`(\tilde y, m, T, \tilde y \otimes T, m \otimes T)`), the counts
    :math:`\log(1 + n_{ik})` and the covariates, through a dense net plus a
    linear path, as :class:`SetEncoder`:
    :math:`(\mu_b, L_b) = \rho(z_i) + W z_i`.

    Why attention and not GRU-D (Che et al. 2018), the other encoder for
    irregular series with missing values:

    * *irregular times*: attention is a function of the visit times
      themselves, with no grid and no notion of a step; GRU-D needs a decay
      per time gap and still steps visit by visit;
    * *missing outcomes within a visit*: each outcome is read only where it
      was observed (its own masked softmax), rather than GRU-D's decayed
      imputations of the missing inputs;
    * *speed on CPU*: one batched product over all visits, where a recurrent
      net runs 105 sequential cell updates (forward and backward) for the
      app data, each too small to use the CPU well;
    * *padding*: padded slots (``visit_mask`` False) and unobserved cells
      are replaced by zeros before any arithmetic and get zero attention
      weight, so a subject's posterior does not depend on how many slots
      the batch pads to, nor on what the padded slots hold.

    Time is read through the fitted time features :math:`T_{ij}` (the
    schema's basis: ``poly(1)``, the default, is time centred and scaled by
    its training SD) rather than raw model time, which has no fitted scale
    (days, years or seconds); the basis is replayed on new data, so the
    embedding sees the same scale at fitting and prediction time.  For a
    joint model the :class:`~pyro_dgmm.joint.JointGuide` appends the
    follow-up time and status to the covariates, which this encoder reads
    as any covariate.

    Measured against the set encoder in docs/model.md ("The encoder"): on
    the app-like simulator the same accuracy and a mean amortisation gap
    within noise of the set encoder's; on PBC (few visits) fit it with
    ``elbo='meanfield'``, as under the importance-weighted bound it drove
    the fit into a degenerate, ill-conditioned posterior scale.

    Shapes: encoder_y, mask (N, T, K); visit_mask (N, T); time_features
    (N, T, F); covariates (N, P) -> loc (N, q), scale_tril (N, q, q).
    """

    def __init__(self, num_outcomes: int, num_time_features: int, num_covariates: int,
                 latent_dim: int, hidden: Sequence[int] = (128, 128), covariance: str = "full",
                 activation: str = "tanh", num_references: int = 16, embed_dim: int = 16):
        super().__init__()
        self.time_linear = nn.Linear(num_time_features, 1)
        self.time_periodic = nn.Linear(num_time_features, embed_dim - 1)
        self.queries = nn.Parameter(torch.randn(num_references, embed_dim))
        statistics = 2 * num_outcomes * (num_time_features + 1) + num_time_features
        in_features = 2 * num_references * num_outcomes + statistics + num_outcomes + num_covariates
        self.head = _GaussianHead(in_features, hidden, latent_dim, covariance, activation)
        self.linear = nn.Linear(in_features, self.head.net[-1].out_features, bias=False)

    def embed(self, time_features: torch.Tensor) -> torch.Tensor:
        """phi(T): (..., F) -> (..., d)."""
        return torch.cat([self.time_linear(time_features), torch.sin(self.time_periodic(time_features))], -1)

    def forward(self, encoder_y, mask, visit_mask, time_features, covariates):
        visits = visit_mask.unsqueeze(-1)  # (N, T, 1)
        observed = mask & visits
        y = torch.where(observed, encoder_y, torch.zeros((), dtype=encoder_y.dtype))
        t = torch.where(visits, time_features, torch.zeros((), dtype=time_features.dtype))
        m = observed.to(y.dtype)
        v = visit_mask.to(y.dtype)
        weights = (v / v.sum(-1, keepdim=True).clamp(min=1.0)).unsqueeze(-1)  # (N, T, 1)
        statistics = (weights * _visit_features(y, m, t)).sum(-2)
        counts = torch.log1p(m.sum(-2))
        scores = self.embed(t) @ self.queries.T / self.queries.shape[-1] ** 0.5  # (N, T, R)
        scores = torch.where(visits, scores, torch.zeros((), dtype=scores.dtype))
        # exp(s - shift) <= 1 with shift >= 0, so exp(-shift) <= 1 too: no overflow either way
        shift = scores.amax(-2, keepdim=True).clamp(min=0.0).detach()  # (N, 1, R)
        kernel = torch.exp(scores - shift).unsqueeze(-1) * m.unsqueeze(-2)  # (N, T, R, K)
        mass = kernel.sum(-3)  # (N, R, K)
        values = (kernel * y.unsqueeze(-2)).sum(-3) / mass.clamp(min=torch.finfo(mass.dtype).tiny)
        shift = shift.squeeze(-2).unsqueeze(-1)  # (N, R, 1)
        density = shift + torch.log(torch.exp(-shift) + mass)  # log(1 + sum_j m exp(s))
        summary = torch.cat([values.flatten(-2), density.flatten(-2), statistics, counts, covariates], -1)
        return self.head(summary, self.linear(summary))
