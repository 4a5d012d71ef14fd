r"""MixedLM-style tables of the linear special case, on the data scale.

With linear networks (``model_options=dict(fixed_hidden=(), random_hidden=())``),
a polynomial time basis and a Gaussian family the DGMM *is* a linear mixed
model.  Its working parameters live on a standardised scale (outcomes,
time and numeric covariates centred and scaled, b rotated freely); these
tables map them back to the coefficients and random-effects covariance
that statsmodels' ``MixedLM`` reports for the design
``[1, t, ..., t^d, v, dummies]`` with random intercept and time powers:

* :func:`linear_coefficients`: fixed effects with Wald SEs and intervals
  (a linear map of the parameters, so its covariance is exact from theirs);
* :func:`linear_random_effects_covariance`: :math:`\operatorname{cov}(u)`
  of the random intercept and time coefficients (rotation invariant).

:meth:`~pyro_dgmm.estimator.DeepMixedModel.summary` shows both.

Example (the map from standardised-time to raw-time polynomial
coefficients: :math:`c_0 + c_1 (t - 2)/4 = (c_0 - c_1/2) + (c_1/4) t`):

>>> import types
>>> from pyro_dgmm.bases import Polynomial
>>> basis = Polynomial(1)
>>> basis.center, basis.scale = 2.0, 4.0
>>> schema = types.SimpleNamespace(time_basis=basis, time_kind="numeric", time_origin=0.0)
>>> raw_polynomial(schema).tolist()
[[1.0, -0.5], [0.0, 0.25]]
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from .bases import Polynomial
from .data import DataSchema
from .errors import ConfigError
from .parameters import LINEAR_FIXED_EFFECTS, present
from .results import StandardErrors, wald_table
from .wald import estimable


def linear_coefficients(model, schema: DataSchema, errors: StandardErrors) -> pd.DataFrame:
    r"""The fixed effects of a linear DGMM as regression coefficients on the data scale.

    With ``fixed_hidden=()`` and a ``poly(d)`` basis, outcome k has

    .. math::

        \eta_k = \alpha_k + s_k\Big[c_k + \sum_{f=1}^d \gamma_{kf} z^f
                 + \sum_p \beta_{kp} x_p\Big], \qquad z = (t - m_t)/s_t,

    with numeric covariates standardised, :math:`x_p = (v_p - m_p)/s_p`, and
    categorical ones in treatment contrasts (0/1 per level but the first).  Rewritten as :math:`\eta_k = a_{k0} +
    \sum_{m \ge 1} a_{km} t^m + \sum_p a_{kp} v_p + \sum_{\ell \ge 1}
    a_{k\ell}\,[\text{level} = \ell]`: per-time-unit polynomial
    coefficients, per-covariate-unit effects and contrasts of each level
    with the first, a linear map :math:`a = a_0 + M\theta`, so
    :math:`\widehat{\operatorname{cov}}(a) = M \widehat{\operatorname{cov}}(\theta) M^\top`.
    These are the coefficients statsmodels ``MixedLM`` reports for the
    design ``[1, t, ..., t^d, v, dummies]``.

    :param errors: from :func:`standard_errors` with ``parameters``
        including :data:`LINEAR_FIXED_EFFECTS` (those the model has).
    :returns: table indexed by (outcome, term): estimate, se, z, p_value,
        lower, upper.
    """
    fixed = getattr(model, "fixed_effects", None)
    if fixed is None or fixed.net is not None:
        raise ConfigError("linear_coefficients needs a DGMM with a linear fixed-effects net "
                          "(model_options=dict(fixed_hidden=()))")
    if fixed.covariate_time is not None:
        raise ConfigError("linear_coefficients does not tabulate covariate-by-time terms "
                          "(covariate_time=True); use standard_errors(...).summary() for them")
    index, matrix, offset = _linear_map(model, schema, errors)
    matrix = matrix.to(errors.theta)
    estimate = offset.to(errors.theta) + matrix @ errors.theta
    variance = torch.einsum("rp,pq,rq->r", matrix, errors.covariance, matrix)
    se = torch.where(estimable(matrix, errors.null_space) & (variance > 0), variance.clamp_min(0).sqrt(),
                     torch.full_like(estimate, math.nan))
    z = NormalDist().inv_cdf(0.5 + errors.level / 2)
    return wald_table(index, estimate, se, estimate - z * se, estimate + z * se)


def _linear_map(model, schema: DataSchema, errors: StandardErrors) -> tuple[pd.MultiIndex, torch.Tensor, torch.Tensor]:
    """Index (outcome, term), matrix M (R, P) and offset a_0 (R,) of :func:`linear_coefficients`."""
    names = present(model, LINEAR_FIXED_EFFECTS)
    missing = [n for n in names if n not in errors.slices]
    if missing:
        raise ConfigError(f"errors lacks {missing}: compute them with standard_errors(..., "
                          f"parameters={names})")
    raw = raw_polynomial(schema)  # (d + 1, d + 1): z-power coefficients -> t-power coefficients
    encoder = schema.covariate_encoder
    numeric = list(encoder.numeric.items())
    p_total = errors.theta.numel()
    rows, offsets, terms = [], [], []
    for k, outcome in enumerate(schema.outcomes):
        s_k = float(model.outcome_scale[k])
        pos = _positions(model, errors, k)
        block = torch.zeros(raw.shape[0], p_total, dtype=torch.float64)
        block[:, pos["intercept"]] = s_k * raw[:, 0]
        for f, column in enumerate(pos["time"], start=1):
            block[:, column] = s_k * raw[:, f]
        extra = []
        for p, (col, (mean, sd)) in enumerate(numeric):
            row = torch.zeros(p_total, dtype=torch.float64)
            row[pos["covariates"][p]] = s_k / sd
            block[0, pos["covariates"][p]] -= s_k * mean / sd
            extra.append((col, row))
        for j, label in enumerate(encoder.columns[len(numeric):], start=len(numeric)):  # treatment contrasts
            row = torch.zeros(p_total, dtype=torch.float64)
            row[pos["covariates"][j]] = s_k
            extra.append((label, row))
        time_terms = [schema.time_col if m == 1 else f"{schema.time_col}^{m}" for m in range(1, raw.shape[0])]
        terms += [(outcome, t) for t in ["Intercept", *time_terms, *(label for label, _ in extra)]]
        rows += [block, *(row[None] for _, row in extra)]
        offsets += [float(model.outcome_offset[k]) + float(schema.shift[k])] + [0.0] * (raw.shape[0] - 1 + len(extra))
    index = pd.MultiIndex.from_tuples(terms, names=["outcome", "term"])
    return index, torch.cat(rows), torch.tensor(offsets, dtype=torch.float64)


def _positions(model, errors: StandardErrors, k: int) -> dict:
    """Positions in theta of outcome k's intercept, time coefficients and covariate coefficients."""
    params = dict(model.named_parameters())

    def flat(name: str, *index: int) -> int:
        return errors.slices[name].start + int(np.ravel_multi_index(index, tuple(params[name].shape)))

    num_time = params[LINEAR_FIXED_EFFECTS[1]].shape[1]
    num_cov = params[LINEAR_FIXED_EFFECTS[2]].shape[1] if LINEAR_FIXED_EFFECTS[2] in params else 0
    return {
        "intercept": flat(LINEAR_FIXED_EFFECTS[0], k),
        "time": [flat(LINEAR_FIXED_EFFECTS[1], k, f) for f in range(num_time)],
        "covariates": [flat(LINEAR_FIXED_EFFECTS[2], k, p) for p in range(num_cov)],
    }


def raw_polynomial(schema: DataSchema) -> torch.Tensor:
    r"""R (d + 1, d + 1) with :math:`\sum_f c_f z^f = \sum_m (Rc)_m t^m`, :math:`z = (t - m_t)/s_t`:
    :math:`R_{mf} = \binom{f}{m} (-m_t)^{f-m} / s_t^f` for :math:`m \le f`."""
    basis = schema.time_basis
    if not isinstance(basis, Polynomial):
        raise ConfigError(f"data-scale coefficients need a polynomial time basis (time_basis='poly(d)'), "
                          f"got {basis.name}; use population_curve for other bases")
    # the basis is fitted to times measured from the schema's origin: t below is the user's numeric time
    # (datetimes: time_unit since the earliest training visit)
    origin = schema.time_origin if schema.time_kind == "numeric" else 0.0
    d, center, spread = basis.degree, basis.center + origin, basis.scale
    return torch.tensor([[math.comb(f, m) * (-center) ** (f - m) / spread ** f if m <= f else 0.0
                          for f in range(d + 1)] for m in range(d + 1)], dtype=torch.float64)


def linear_random_effects_covariance(model, schema: DataSchema) -> pd.DataFrame:
    r"""Random-effects covariance of a linear DGMM on the data scale.

    With ``random_hidden=()`` the random part of :math:`\eta_k` is
    :math:`s_k \sum_f (A b)_{kf} z^f = \sum_m u_{km} t^m` with
    :math:`u_k = s_k R A_k b` (R from the time basis, as in
    :func:`linear_coefficients`), so :math:`\operatorname{cov}(u) =
    \tilde R A A^\top \tilde R^\top` (block-diagonal :math:`\tilde R` with
    blocks :math:`s_k R`): the ``cov_re`` of MixedLM with random
    intercept and time powers.  Invariant to rotations of b.

    :returns: square table indexed by (outcome, term) on both axes.
    """
    effects = getattr(model, "random_effects", None)
    if effects is None or effects.coefficients is not None or effects.joint is not None:
        raise ConfigError("linear_random_effects_covariance needs a DGMM with a linear random-effects net "
                          "(model_options=dict(random_hidden=()))")
    raw = raw_polynomial(schema)
    blocks = [float(model.outcome_scale[k]) * raw for k in range(len(schema.outcomes))]
    weight = effects.linear_coefficients.weight.detach().to(torch.float64).cpu()  # (K (d + 1), q)
    u = torch.block_diag(*blocks) @ weight
    terms = ["Intercept"] + [schema.time_col if m == 1 else f"{schema.time_col}^{m}" for m in range(1, raw.shape[0])]
    index = pd.MultiIndex.from_tuples([(o, t) for o in schema.outcomes for t in terms], names=["outcome", "term"])
    return pd.DataFrame((u @ u.T).numpy(), index=index, columns=index)

