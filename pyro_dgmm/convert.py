r"""ArviZ ``InferenceData`` from posterior predictive results.

The only module that imports arviz (lazily, on first use).  It reads a
:class:`~pyro_dgmm.predict.PosteriorPredictive` and never runs inference.

Layout (``S`` draws as one chain; ``N`` subjects; ``T`` visit slots):

=====================  =======================  ================================================
group                  variable                 dims
=====================  =======================  ================================================
posterior              ``b``                    (chain, draw, subject, latent)
posterior_predictive   ``y_<outcome>``          (chain, draw, subject, visit)
observed_data          ``y_<outcome>``          (subject, visit), NaN where not observed
log_likelihood         ``y``                    (chain, draw, subject)
log_likelihood         ``y_<outcome>``          (chain, draw, subject, visit), optional
constant_data          ``time``                 (subject, visit)
constant_data          ``covariates``           (subject, covariate)
=====================  =======================  ================================================

Visits are irregular, so the second data axis is the visit *slot* ``visit``
(0, 1, ... in time order within each subject), and the visit times are data
(``constant_data.time``), not a coordinate.  Slots past a subject's last
visit are padding: NaN in every group.  Coordinates: ``subject`` holds the
user's ids, ``latent`` 0..q-1, ``covariate`` the design columns
(numeric covariates in the user's units, one 0/1 column per category level).
Variable names are the model's sample sites.

Log-likelihood.  ``y`` is each subject's log-likelihood summed over their
observed cells, :math:`\log p(y_i^o \mid b_i^{(s)})`, the only variable by
default, so ``az.loo(idata)`` and ``az.waic(idata)`` leave one *subject*
out: the sound unit for mixed models, whose cells share :math:`b_i`.
Expect high Pareto k: with the network weights point-estimated the
posterior is over b only, and leaving subject i out moves
:math:`b_i` back to its prior, far from :math:`p(b_i \mid y_i)` for an
informative record (the exact leave-subject-out density given the
weights is :math:`p(y_i^o)`, estimated by importance sampling in
``PosteriorDraws.log_marginal``).  ``cell_log_likelihood=True``
adds the per-cell values ``y_<outcome>`` (NaN where unobserved, which
``az.loo`` does not accept: drop those cells first).

Example:

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> idata = est.to_inference_data(num_samples=10)
>>> sorted(idata.groups())
[...'posterior', 'posterior_predictive'...]
>>> dict(idata.posterior.sizes)
{'chain': 1, 'draw': 10, 'subject': 12, 'latent': 4}
"""
from __future__ import annotations

import json
import warnings
from typing import Mapping

import numpy as np
import pyro
import torch

from .data import DataSchema
from .predict import PosteriorPredictive


def _arviz():
    """Import arviz, silencing its once-a-day notice about a future refactor
    (a FutureWarning that would fail runs with warnings as errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="\nArviZ is undergoing", category=FutureWarning)
        import arviz
    return arviz


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _chain(x: np.ndarray) -> np.ndarray:
    """Add the chain dim: (S, ...) -> (1, S, ...)."""
    return x[None]


def _covariates(predictive: PosteriorPredictive, schema: DataSchema) -> np.ndarray:
    """The covariate design (N, P) with numeric columns back in user units."""
    design = _numpy(predictive.data.covariates)
    for j, (mean, sd) in enumerate(schema.covariate_encoder.numeric.values()):
        design[:, j] = design[:, j] * sd + mean
    return design


def _attrs(predictive: PosteriorPredictive, schema: DataSchema, extra: Mapping | None) -> dict:
    """Provenance: library versions, posterior method, schema; JSON for nested values."""
    from . import __version__

    posterior = predictive.posterior
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "pyro_dgmm_version": __version__,
        "posterior_method": posterior.method,
        "num_draws": int(posterior.b.shape[0]),
        "id_col": schema.id_col,
        "time_col": schema.time_col,
        "families": json.dumps({name: f.to_spec() for name, f in schema.families.items()}),
        "time_basis": json.dumps(schema.time_basis.to_spec()),
        "log_likelihood": "y: per-subject sum over observed cells (leave-one-subject-out)",
    }
    if posterior.ess is not None:
        attrs["min_importance_ess"] = float(posterior.ess.min())
    for key, value in (extra or {}).items():
        attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return attrs


def to_inference_data(predictive: PosteriorPredictive, schema: DataSchema, *,
                      cell_log_likelihood: bool = False, attrs: Mapping | None = None):
    """InferenceData (layout in the module docstring) from in-sample
    posterior predictive draws, e.g.
    ``posterior_predictive(model, guide, data)`` of :mod:`pyro_dgmm.predict`.

    :param schema: the fitted schema (names, families, covariate scalers).
    :param cell_log_likelihood: add per-cell log-likelihoods ``y_<outcome>``.
    :param attrs: extra provenance attributes (e.g. fit settings); values
        that are not str/int/float are stored as JSON.  Every group carries
        the provenance attributes.
    :returns: ``arviz.InferenceData``; ``.to_netcdf(path)`` saves it.
    """
    az = _arviz()
    data = predictive.data
    visits = data.visit_mask.cpu().numpy()  # (N, T)
    nan = np.nan
    names = [f"y_{name}" for name in data.outcomes]
    draws = np.where(visits[..., None], data.response_values(predictive.draws), nan)  # (S, N, T, K)
    observed = np.where(data.mask.cpu().numpy(), data.response_values(data.y), nan)
    log_lik = _numpy(predictive.log_likelihood)
    log_likelihood = {"y": _chain(np.nansum(log_lik, axis=(-2, -1)))}
    if cell_log_likelihood:
        log_likelihood.update({name: _chain(log_lik[..., k]) for k, name in enumerate(names)})
    numeric = data.time_values is not None and data.time_values.dtype.kind == "f"
    constant = {"time": np.where(visits, data.time_values if numeric else _numpy(data.times), nan)}
    covariate_names = schema.covariate_encoder.columns
    if covariate_names:
        constant["covariates"] = _covariates(predictive, schema)
    cell = ["subject", "visit"]
    idata = az.from_dict(
        posterior={"b": _chain(_numpy(predictive.posterior.b))},
        posterior_predictive={name: _chain(draws[..., k]) for k, name in enumerate(names)},
        observed_data={name: observed[..., k] for k, name in enumerate(names)},
        log_likelihood=log_likelihood,
        constant_data=constant,
        coords={"subject": data.ids, "visit": np.arange(data.num_visits),
                "latent": np.arange(predictive.posterior.b.shape[-1]), "covariate": covariate_names},
        dims={"b": ["subject", "latent"], "y": ["subject"], "time": cell,
              "covariates": ["subject", "covariate"], **{name: cell for name in names}},
    )
    provenance = _attrs(predictive, schema, attrs)
    for group in idata.groups():
        idata[group].attrs.update(provenance)
    return idata
