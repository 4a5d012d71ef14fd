r"""ArviZ ``InferenceData`` and ELPD objects from pyro_dgmm results.

The only module that imports arviz (lazily, on first use).  It reads
results (:class:`~pyro_dgmm.predict.PosteriorPredictive` draws, a
:class:`~pyro_dgmm.results.StandardErrors`, per-subject held-out
log-likelihoods) and never runs inference.

Layout (``C`` chains of ``S`` draws; ``N`` subjects; for each outcome
``<k>``, ``n_k`` observed cells):

=====================  ====================  =======================================  =========
group                  variable              dims                                     dtype
=====================  ====================  =======================================  =========
posterior              ``b``                 (chain, draw, subject, latent)           float
posterior              ``theta``             (chain, draw, parameter), with errors    float
posterior_predictive   ``y_<k>``             (chain, draw, obs_<k>)                   see below
observed_data          ``y_<k>``             (obs_<k>,)                               see below
log_likelihood         ``y_<k>``             (chain, draw, obs_<k>)                   float
log_likelihood         ``y``                 (chain, draw, subject)                   float
sample_stats           ``importance_ess``    (chain, subject)                         float
sample_stats           ``log_marginal``      (chain, subject)                         float
sample_stats           ``acceptance_rate``   (chain, subject), ``'mcmc'`` only        float
constant_data          ``theta_hat``         (parameter,), with a model               float
constant_data          ``covariates``        (subject, covariate)                     float
=====================  ====================  =======================================  =========

The outcome values are int64 for discrete families (Bernoulli, Poisson:
any family whose distribution has a discrete support), so ArviZ draws
histograms, not densities; float64 otherwise.

**One observation dimension per outcome, aligned with the observed cells.**
``obs_<k>`` runs over the cells where outcome ``k`` was observed, in long
form (subject, then time order), like Bambi's ``__obs__``; its non-index
coordinates ``obs_<k>_subject`` (the user's ids) and ``obs_<k>_time`` (the
user's times; tz-aware datetimes in UTC) say which row of the data each is.  The replicated data, the
observed data and the pointwise log-likelihood of ``y_<k>`` are on the same
cells one to one, so ``az.plot_ppc``, ``az.plot_bpv`` and ``az.loo_pit``
(``y="y_<k>"``) compare like with like.  Unobserved cells are not in the
predictive (they have no observed counterpart); :meth:`DeepMixedModel.fitted_values
<pyro_dgmm.estimator.DeepMixedModel.fitted_values>` and
:meth:`~pyro_dgmm.estimator.DeepMixedModel.impute` cover them.  (One
dimension per outcome rather than one for all: outcomes of different
families cannot share a variable without losing integer draws, and a
density of mixed outcomes means nothing.)

**Chains.**  Each element of ``predictive`` is one chain: an independent
run of the posterior sampler of b with its own random numbers (for the
default importance resampling: its own proposals, weights and
resampling).  Resampled draws repeat, so one chain's ESS from
autocorrelations overstates the information in it; with several
independent chains, ``az.summary``'s :math:`\hat R` and ESS see the
between-chain spread that importance error produces (:math:`\hat R` near 1
and ESS close to the draws only where the chains agree).  The per-subject
importance ESS of each chain's final round (Kish's, out of its proposals)
and, for ``'mcmc'``, the Metropolis acceptance rate are in
``sample_stats``; ``log_marginal`` is each chain's estimate of
:math:`\log p(y_i^o)`.

**Log-likelihood.**  ``y_<k>`` is :math:`\log p(y_{ijk} \mid b_i^{(s)})`
per observed cell, matching the predictive (what ``az.loo_pit`` needs);
``y`` is each subject's sum over their observed cells,
:math:`\log p(y_i^o \mid b_i^{(s)})`, so ``az.loo(idata, var_name="y")``
leaves one *subject* out, the sound unit when cells share :math:`b_i`.
With several variables, ``az.loo`` and ``az.waic`` need ``var_name``.
Expect high Pareto k for leave-one-subject-out: the network weights are
point estimates, so the posterior is over b only, and leaving subject i out
sends :math:`b_i` back to its prior, far from :math:`p(b_i \mid y_i^o)`
for an informative record.  :func:`subject_loo` runs it and warns when
that happens; the exact alternative is K-fold cross-validation by subject
(:meth:`DeepMixedModel.kfold <pyro_dgmm.estimator.DeepMixedModel.kfold>`,
:func:`kfold_elpd`), which ``az.compare`` accepts.

**Global parameters.**  With a ``model``, ``constant_data.theta_hat``
holds the point estimates of the observation-model parameters
(dispersions on their natural scale, their slopes, Student-t df) and of
the linear fixed effects present in the model
(:data:`~pyro_dgmm.parameters.LINEAR_FIXED_EFFECTS`, on the model's internal
scale: standardised covariates; :func:`~pyro_dgmm.linear_tables.linear_coefficients`
gives the data scale).  With ``errors`` (a
:class:`~pyro_dgmm.results.StandardErrors`), ``posterior.theta`` holds
draws of its parameters from the Wald (Laplace) approximation
:math:`\mathcal N(\hat\theta, \widehat{\operatorname{cov}})` on the working
(unconstrained) scale, reported on the natural scale, and ``theta_hat``
follows ``errors``: the same labels (coordinate ``parameter``) as
``errors.summary()``.  These draws are independent of those of b (which
are given :math:`\hat\theta`).

Example:

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> idata = est.to_inference_data(num_samples=10, chains=2)
>>> sorted(idata.groups())
[...'posterior', 'posterior_predictive', 'sample_stats'...]
>>> dict(idata.posterior.sizes)
{'chain': 2, 'draw': 10, 'subject': 12, 'latent': 5}
>>> idata.observed_data["y_y"].dims, idata.observed_data.sizes["obs_y"]
(('obs_y',), 48)
"""
from __future__ import annotations

import copy
import json
import warnings
from typing import Mapping, Sequence

import numpy as np
import pyro
import torch

from .data import DataSchema
from .errors import ConfigError
from .parameters import LINEAR_FIXED_EFFECTS, Layout, assign, element_labels, present
from .results import PosteriorPredictive


def _arviz():
    """Import arviz, silencing its once-a-day notice about a future refactor
    (a FutureWarning that would fail runs with warnings as errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="\nArviZ is undergoing", category=FutureWarning)
        import arviz
    return arviz


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def is_discrete(family) -> bool:
    """Whether ``family``'s distribution has a discrete support (its draws
    are integers: Bernoulli, Poisson), read from the distribution itself so
    that registered families are covered too."""
    dispersion = torch.ones(1) if family.dispersion_name else None
    shapes = {name: torch.tensor(value) for name, value in family.initial_shape().items()}
    return bool(family.distribution(torch.zeros(1), dispersion, **shapes).support.is_discrete)


def _covariates(predictive: PosteriorPredictive, schema: DataSchema) -> np.ndarray:
    """The covariate design (N, P) with numeric columns back in user units."""
    design = _numpy(predictive.data.covariates)
    for j, (mean, sd) in enumerate(schema.covariate_encoder.numeric.values()):
        design[:, j] = design[:, j] * sd + mean
    return design


def _user_times(predictive: PosteriorPredictive) -> np.ndarray:
    """(N, T) the user's times (numbers or datetimes); model times if unknown."""
    data = predictive.data
    return _numpy(data.times) + data.time_origin if data.time_values is None else data.time_values


def _reported(model, names: Sequence[str]) -> np.ndarray:
    """The parameters ``names`` of ``model`` flattened, on the reported scale:
    a constrained PyroParam stored as ``<path>_unconstrained`` is read as
    ``<path>`` (e.g. a dispersion, not its log)."""
    params, values = dict(model.named_parameters()), []
    for name in names:
        if name.endswith("_unconstrained"):
            module_path, _, attr = name[: -len("_unconstrained")].rpartition(".")
            value = getattr(model.get_submodule(module_path), attr)
        else:
            value = params[name]
        values.append(_numpy(value).reshape(-1))
    return np.concatenate(values)


def global_parameter_names(model) -> list[str]:
    """The global parameters exported without ``errors``: the observation
    model's, then the linear fixed effects the model has."""
    return [*model.observation_parameters(), *present(model, LINEAR_FIXED_EFFECTS)]


@torch.no_grad()
def wald_draws(model, errors, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    r"""Draws of ``errors.parameter_names`` from
    :math:`\mathcal N(\hat\theta, \widehat{\operatorname{cov}})` on the
    working scale (negative eigenvalues of the covariance, from Monte Carlo
    noise, set to 0; flat directions do not move), reported on the natural
    scale: shape (``*shape``, P) in the order of ``errors.labels``."""
    theta, covariance = errors.theta.detach().cpu().double(), errors.covariance.detach().cpu().double()
    values, vectors = torch.linalg.eigh((covariance + covariance.T) / 2)
    root = vectors * values.clamp_min(0).sqrt()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((int(np.prod(shape)), theta.numel()), generator=generator, dtype=theta.dtype)
    draws = theta + noise @ root.T
    working = copy.deepcopy(model).cpu()
    layout = Layout(working, errors.parameter_names)  # errors.slices: the same flat order
    out = []
    for draw in draws:
        assign(working, layout, draw)
        out.append(_reported(working, errors.parameter_names))
    return np.stack(out).reshape(*shape, -1)


def _attrs(chains: Sequence[PosteriorPredictive], schema: DataSchema, extra: Mapping | None) -> dict:
    """Provenance: library versions, posterior method, schema; JSON for nested values."""
    from . import __version__

    posterior = chains[0].posterior
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "pyro_dgmm_version": __version__,
        "posterior_method": posterior.method,
        "num_chains": len(chains),
        "num_draws": int(posterior.b.shape[0]),
        "id_col": schema.id_col,
        "time_col": schema.time_col,
        "families": json.dumps({name: f.to_spec() for name, f in schema.families.items()}),
        "time_basis": json.dumps(schema.time_basis.to_spec()),
        "log_likelihood": "y_<outcome>: per observed cell (obs_<outcome>); "
                          "y: per-subject sum over observed cells (leave-one-subject-out)",
    }
    if posterior.ess is not None:
        attrs["min_importance_ess"] = float(min(float(c.posterior.ess.min()) for c in chains))
    for key, value in (extra or {}).items():
        attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return attrs


def _check_chains(predictive) -> list[PosteriorPredictive]:
    chains = [predictive] if isinstance(predictive, PosteriorPredictive) else list(predictive)
    if not chains or not all(isinstance(c, PosteriorPredictive) for c in chains):
        raise ConfigError("predictive must be a PosteriorPredictive or a non-empty list of them (one per chain)")
    first = chains[0]
    for c, chain in enumerate(chains[1:], start=1):
        if chain.draws.shape != first.draws.shape or not np.array_equal(chain.data.ids, first.data.ids):
            raise ConfigError(f"chain {c} does not match chain 0: every chain must hold the same subjects, "
                              f"cells and number of draws (shapes {tuple(chain.draws.shape)} and "
                              f"{tuple(first.draws.shape)})")
    return chains


def _sample_stats(chains: Sequence[PosteriorPredictive], ids: np.ndarray):
    """Per-chain, per-subject diagnostics of the sampler of b (module docstring)."""
    import xarray as xr

    posteriors = [c.posterior for c in chains]
    stats = {}
    for name, field in (("importance_ess", "ess"), ("log_marginal", "log_marginal"),
                        ("acceptance_rate", "acceptance")):
        if getattr(posteriors[0], field) is not None:
            stats[name] = (("chain", "subject"), np.stack([_numpy(getattr(p, field)) for p in posteriors]))
    if not stats:
        return None
    return xr.Dataset(stats, coords={"chain": np.arange(len(chains)), "subject": ids})


def to_inference_data(predictive: PosteriorPredictive | Sequence[PosteriorPredictive], schema: DataSchema, *,
                      model=None, errors=None, seed: int = 0, attrs: Mapping | None = None):
    """InferenceData (layout in the module docstring) from in-sample
    posterior predictive draws, one :class:`~pyro_dgmm.predict.PosteriorPredictive`
    per chain, e.g. ``posterior_predictive(model, guide, data)`` run with
    different random numbers (:meth:`DeepMixedModel.to_inference_data
    <pyro_dgmm.estimator.DeepMixedModel.to_inference_data>` does this).

    :param schema: the fitted schema (names, families, covariate scalers).
    :param model: the fitted model, for the point estimates of the global
        parameters (``constant_data.theta_hat``); optional.
    :param errors: a :class:`~pyro_dgmm.results.StandardErrors` of that
        model: adds Wald draws of its parameters (``posterior.theta``) and
        makes ``theta_hat`` its estimates; needs ``model``.
    :param seed: seeds the Wald draws.
    :param attrs: extra provenance attributes (e.g. fit settings); values
        that are not str/int/float are stored as JSON.  Every group carries
        the provenance attributes.
    :returns: ``arviz.InferenceData``; ``.to_netcdf(path)`` saves it.
    """
    az = _arviz()
    chains = _check_chains(predictive)
    if errors is not None and model is None:
        raise ConfigError("errors needs the model they were computed for: pass model=")
    data = chains[0].data
    ids, times, mask = data.ids, _user_times(chains[0]), data.mask.cpu().numpy()
    observed = data.response_values(data.y)  # (N, T, K)
    shift = np.zeros(len(data.outcomes)) if data.outcome_shift is None else data.outcome_shift

    def at_cells(field: str, subject: np.ndarray, slot: np.ndarray, k: int) -> np.ndarray:
        """(C, S, n) float64 values of ``field`` at the cells (subject, slot) of outcome k,
        taken before conversion so that no (C, S, N, T, K) float64 copy is made."""
        index = torch.as_tensor(subject), torch.as_tensor(slot)
        return np.stack([_numpy(getattr(c, field)[:, index[0], index[1], k]) for c in chains])

    groups = {name: {} for name in ("posterior_predictive", "observed_data", "log_likelihood")}
    coords, dims, cells = {}, {}, {}
    for k, (outcome, family) in enumerate(schema.families.items()):
        name, dim = f"y_{outcome}", f"obs_{outcome}"
        subject, slot = np.nonzero(mask[..., k])  # long form: subject, then time order
        cast = (lambda x: np.rint(x).astype(np.int64)) if is_discrete(family) else (lambda x: x)
        groups["posterior_predictive"][name] = cast(at_cells("draws", subject, slot, k) + shift[k])
        groups["observed_data"][name] = cast(observed[subject, slot, k])
        groups["log_likelihood"][name] = at_cells("log_likelihood", subject, slot, k)
        cells[dim] = {f"{dim}_subject": (dim, ids[subject]), f"{dim}_time": (dim, times[subject, slot])}
        dims[name] = [dim]
    groups["log_likelihood"]["y"] = np.stack([_numpy(c.log_likelihood.nansum((-2, -1))) for c in chains])
    dims["y"] = ["subject"]
    posterior = {"b": np.stack([_numpy(c.posterior.b) for c in chains])}
    num_draws = posterior["b"].shape[:2]
    dims["b"] = ["subject", "latent"]
    constant = {}
    if model is not None:
        names = errors.parameter_names if errors is not None else global_parameter_names(model)
        labels = list(errors.labels) if errors is not None else element_labels(model, Layout(model, names))
        if labels:
            constant["theta_hat"] = _numpy(errors.estimate) if errors is not None else _reported(model, names)
            coords["parameter"] = labels
            dims["theta_hat"] = dims["theta"] = ["parameter"]
        if errors is not None:
            posterior["theta"] = wald_draws(model, errors, num_draws, seed=seed)
    covariate_names = schema.covariate_encoder.columns
    if covariate_names:
        constant["covariates"] = _covariates(chains[0], schema)
        dims["covariates"] = ["subject", "covariate"]
    idata = az.from_dict(
        posterior=posterior, constant_data=constant or None, **groups,
        coords={"subject": ids, "latent": np.arange(posterior["b"].shape[-1]), "covariate": covariate_names,
                **coords},
        dims=dims,
    )
    for group in groups:  # which data row each observed cell is: non-index coordinates of obs_<k>
        for cell_coords in cells.values():
            idata[group].coords.update(cell_coords)  # in place: setting idata[group] would list it twice
    stats = _sample_stats(chains, ids)
    if stats is not None:
        idata.add_groups({"sample_stats": stats})
    provenance = _attrs(chains, schema, attrs)
    for group in idata.groups():
        idata[group].attrs.update(provenance)
    return idata


def subject_loo(idata, *, pointwise: bool = True):
    """``az.loo`` leaving one subject out (``log_likelihood.y``), with a
    warning when it cannot be trusted.

    PSIS-LOO is unreliable where a subject's Pareto k exceeds ArviZ's
    threshold (``good_k``, 0.7 for large numbers of draws); for mixed models
    with point-estimated weights that is most subjects (module docstring).
    Then this warns (:class:`~pyro_dgmm.diagnostics.InferenceWarning`, naming
    how many subjects) and the returned ELPDData's ``warning`` flag is True:
    compare models by :meth:`DeepMixedModel.kfold
    <pyro_dgmm.estimator.DeepMixedModel.kfold>` instead.  ArviZ's own
    warning about the same thing is silenced in favour of this one.
    """
    from .diagnostics import InferenceWarning

    az = _arviz()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        loo = az.loo(idata, var_name="y", pointwise=True)
    high = int((loo.pareto_k.values > loo.good_k).sum())
    if high:
        warnings.warn(f"PSIS-LOO is unreliable: {high} of {loo.pareto_k.size} subjects have Pareto k > "
                      f"{loo.good_k:.2f}; compare models by exact K-fold cross-validation by subject "
                      "(DeepMixedModel.kfold) instead", InferenceWarning, stacklevel=2)
        loo["warning"] = True
    if not pointwise:
        for key in ("loo_i", "pareto_k"):
            loo = loo.drop(key)
    return loo


def kfold_elpd(held_out: np.ndarray, ids: np.ndarray, *, in_sample: np.ndarray | None = None, folds: np.ndarray,
               num_samples: int, unreliable: np.ndarray | None = None):
    r"""ELPD from exact K-fold cross-validation by subject, as an
    ``arviz.ELPDData`` that ``az.compare`` accepts.

    :math:`\widehat{\mathrm{elpd}} = \sum_i \log \hat p(y_i^o \mid
    \hat\theta_{-k(i)})`, each subject scored by the model fitted without
    its fold.  ArviZ 0.23 compares only ``'loo'`` and ``'waic'`` objects, so
    the entries are ArviZ's LOO names (``elpd_loo``, ``se``, ``p_loo``,
    ``loo_i``; K-fold is exact cross-validation, the quantity PSIS-LOO
    approximates), plus ``kfold`` (True) and ``folds`` (each subject's fold).

    :param held_out: (N,) each subject's held-out log-likelihood.
    :param ids: (N,) the subjects' ids (coordinate ``subject`` of ``loo_i``).
    :param in_sample: (N,) each subject's log-likelihood under the fit to
        all subjects: ``p_loo`` is then :math:`\sum_i (\text{in-sample} -
        \text{held-out})`, the optimism of the in-sample score (NaN if None).
    :param folds: (N,) each subject's fold number.
    :param num_samples: importance samples per subject.
    :param unreliable: (N,) subjects whose held-out estimate had Pareto
        k > 0.7; any sets the ``warning`` flag.
    """
    import xarray as xr

    az = _arviz()
    held_out = np.asarray(held_out, dtype=np.float64)
    n = held_out.size
    elpd = float(held_out.sum())
    se = float(np.sqrt(n * np.var(held_out)))
    p = float(np.sum(np.asarray(in_sample) - held_out)) if in_sample is not None else float("nan")
    warning = bool(np.any(unreliable)) if unreliable is not None else False
    pointwise = xr.DataArray(held_out, dims=["subject"], coords={"subject": np.asarray(ids)})
    return az.ELPDData(
        data=[elpd, se, p, num_samples, n, warning, pointwise, "log", True, np.asarray(folds)],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "scale", "kfold",
               "folds"],
    )
