r"""Dynamic predictions: the posterior of :math:`b_i` given a history, then
posterior predictive draws at any times.

For subject *i* with history :math:`\mathcal H_i` (the observed cells
:math:`y_i^o` up to now, plus baseline covariates :math:`X_i`) and a new
time *t*, the predictive distribution of outcome *k* is

.. math::

    p(y_{ik}(t) \mid \mathcal H_i) = \int F_k\big(y;\, g_k^{-1}\{\eta_{ik}(t; b)\},
        \sigma_k\big)\, p(b \mid \mathcal H_i)\, db,
    \qquad p(b \mid \mathcal H_i) \propto p(y_i^o \mid b)\, \mathcal N(b; 0, I).

Monte Carlo: :math:`S` equally weighted draws :math:`b^{(s)} \sim p(b \mid
\mathcal H_i)` (:func:`~pyro_dgmm.posterior.sample_posterior`), then one draw
:math:`y^{(s)} \sim F_k(\cdot \mid b^{(s)})` each (:func:`posterior_predictive`,
through ``pyro.infer.Predictive`` on the model run with ``observe=False``).
Prediction intervals are quantiles of the :math:`y^{(s)}` (they include the
observation noise: they are meant to cover a future *observed* value);
``mean`` is :math:`\frac1S\sum_s g_k^{-1}(\eta^{(s)})`, the predicted value
(a probability for binary outcomes).  Network weights and dispersions are
point estimates unless ``parameter_uncertainty`` is given: then the
parameters it covers (a :class:`~pyro_dgmm.results.StandardErrors`, e.g.
the linear fixed and random effects and the dispersions) are drawn
:math:`M` times from their Wald (Laplace) approximation
:math:`\theta^{(m)} \sim \mathcal N(\hat\theta, \widehat{\operatorname{cov}})`
on the unconstrained scale, and each draw gets :math:`S/M` draws of b and
y, so the predictive distribution is

.. math::

    p(y_{ik}(t) \mid \mathcal H_i) \approx \frac1M \sum_{m=1}^M
        \int F_k(y; \theta^{(m)}, b)\, p(b \mid \mathcal H_i; \theta^{(m)})\, db.

The extra width is of order :math:`\sqrt{p/n}` relative to the
observation noise (p parameters, n subjects): negligible for hundreds of
subjects, noticeable for tens, or for predictions far outside the data
(docs/prediction.md).  The other parameters (the nonlinear network weights)
stay at their estimates.

The posterior of :math:`b_i` (``method``):

``'encoder'``
    :math:`q(b_i \mid \mathcal H_i)` alone.  Fast, but the encoder is trained
    on whole records: on a truncated history it can be far off (measured in
    ``benchmarks/dynamic_prediction.py``).
``'importance'`` (default)
    adaptive importance sampling and resampling (the sampler ``'adaptive'``
    of :func:`~pyro_dgmm.posterior.sample_posterior`): a Gaussian fitted to
    each subject's posterior (Laplace approximation from the encoder's
    mean, then ``adapt_rounds`` (default 0) rounds of importance-weighted moment
    matching), ``num_proposals`` draws from the defensive mixture
    :math:`0.9\, t_5(m_i, \Sigma_i) + 0.1\, \mathcal N(0, I)`, whose
    self-normalised weights

    .. math:: w^{(p)} \propto p(y_i^o \mid b^{(p)})\, \mathcal N(b^{(p)}; 0, I)
              / r(b^{(p)})

    are resampled multinomially into ``num_samples`` equally weighted
    draws (:func:`predict`: P = S / 2 and at least 500 unless
    ``num_proposals`` is given, :func:`default_proposals`).  Per subject, the effective sample size
    :math:`1/\sum_p (w^{(p)})^2` and :math:`\log p(y_i^o) \approx \log
    \frac1P \sum_p \tilde w^{(p)}` are kept.
``'mcmc'``
    the resampled draws moved by ``mcmc_steps`` random-walk Metropolis
    steps (``'resample-move'`` of :func:`~pyro_dgmm.posterior.sample_posterior`:
    proposal :math:`\mathcal N(b, 2.38^2 \hat\Sigma_i / q)` with
    :math:`\hat\Sigma_i` the importance-weighted posterior covariance),
    every draw of every subject accepted or rejected on its own:
    duplicated draws spread out while the posterior stays invariant.

Blocks.  Subjects are independent given the fitted networks, so
:func:`predict` splits them into blocks of consecutive subjects (in id
order) whose boundaries depend on the number of subjects only
(:func:`~pyro_dgmm.parallel.subject_blocks`), draws each block's random
numbers from a generator seeded by ``(seed, block)``, computes the blocks
on the ``torch.distributed`` processes (one process: all of them) and
gathers the table on every process: the same ``seed`` gives the same table
in one process or several.

Shapes: ``S`` draws, ``N`` subjects, ``T`` visit slots, ``K`` outcomes, ``q``
latent dimensions.  Work is done in chunks of ``chunk_size`` subjects, so
memory grows with ``chunk_size * max(S, P) * T * K``.

Example (predictions a year after each subject's last visit):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> p = predict(est.model_, est.guide_, est.schema_, df, [1.0], relative=True, num_samples=50)
>>> p.table[["outcome", "mean", "lower_95", "upper_95"]].shape
(12, 4)
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from pyro.infer import Predictive

from .data import DataSchema, LongitudinalData, visit_order
from .errors import ConfigError, DataError, describe_rows
from .likelihood import cell_log_likelihood
from .options import check_bool, check_choice, check_float, check_int, check_keywords
from .parallel import map_blocks, world
from .parameters import Layout, assign
from .posterior import DRAW_CELLS, sample_posterior, subject_chunks, subjects_per_chunk, uniform_log_weights
from .results import PosteriorDraws, PosteriorPredictive, Prediction

METHODS = ("importance", "mcmc", "encoder")
#: The options of :func:`~pyro_dgmm.posterior.sample_posterior` that :func:`predict` passes on.
POSTERIOR_OPTIONS = ("num_proposals", "adapt_rounds", "mcmc_steps", "chunk_size")
#: :func:`predict`'s own keyword options (named in the suggestion for a misspelled one).
PREDICT_OPTIONS = ("relative", "include_history", "levels", "num_samples", "method", "seed", "parameter_uncertainty",
                   "parameter_draws")


# ------------------------------------------------------------ posterior of b
#: predict's ``method`` -> the sampler of :func:`~pyro_dgmm.posterior.sample_posterior`.
ENGINE_METHODS = {"importance": "adaptive", "mcmc": "resample-move", "encoder": "encoder"}


def default_proposals(num_samples: int) -> int:
    """:func:`predict`'s importance proposals P for S = ``num_samples`` draws
    when not given: half of S, at least 500 (all S below that).

    The proposals' pass over the history is most of predict's time.  With
    the Laplace-fitted defensive proposal every subject's ESS stayed above
    60% of P, so 500 proposals carry 300 or more effective draws, and the
    resampled draws each get their own observation noise: on the nonlinear
    simulator (800 new subjects, ``benchmarks/predict_speed.py``) the
    interval coverage was the same with P = S / 2 as with P = S, at 30%
    less time."""
    return min(num_samples, max(500, num_samples // 2))


# ------------------------------------------------------ posterior predictive
def _predictive_chunk(model, data: LongitudinalData, b: torch.Tensor):
    """(means, draws, log-likelihood), each (S, n, T, K), for the n subjects of ``data``."""
    names = model.outcomes
    sites = Predictive(model, posterior_samples={"b": b.unsqueeze(-2)}, parallel=True,
                       return_sites=[f"y_{name}" for name in names] + ["_RETURN"])(data, observe=False)
    eta = sites["_RETURN"]  # (S, n, T, K)
    families = list(model.families.values())
    means = model.response_mean(eta)
    draws = torch.stack([f.constrain(sites[f"y_{name}"]) for name, f in zip(names, families)], -1)
    log_lik = cell_log_likelihood(model, b, data, eta)
    return means, draws.to(means.dtype), torch.where(data.mask, log_lik, torch.full_like(log_lik, float("nan")))


@torch.no_grad()
def predictive_draws(model, data: LongitudinalData, posterior: PosteriorDraws, *,
                     chunk_size: int | None = None) -> PosteriorPredictive:
    """Draw y at every slot of ``data`` given ``posterior.b`` (S, N, q), via
    ``pyro.infer.Predictive`` over the model run with ``observe=False``, in
    chunks of ``chunk_size`` subjects."""
    chunk_size = chunk_size or subjects_per_chunk(posterior.b.shape[0], data, DRAW_CELLS)
    parts = [_predictive_chunk(model, chunk, posterior.b[:, index])
             for chunk, index in subject_chunks(data, chunk_size)]
    means, draws, log_lik = (torch.cat(tensors, dim=1) for tensors in zip(*parts))
    return PosteriorPredictive(data, posterior, means, draws, log_lik)


def posterior_predictive(model, guide, data: LongitudinalData, *, target: LongitudinalData | None = None,
                         num_samples: int = 1000, method: str = "importance", chunk_size: int | None = None,
                         **posterior_options) -> PosteriorPredictive:
    """Posterior of b from ``data``, predictive draws at the cells of
    ``target`` (default ``data`` itself: in-sample, for model checking).

    ``target`` must hold the same subjects as ``data`` (both are sorted by
    id); ``chunk_size`` bounds memory (subjects at a time); ``posterior_options``
    (``num_proposals``, ``adapt_rounds``, ``mcmc_steps``) go to
    :func:`~pyro_dgmm.posterior.sample_posterior`, whose sampler for
    ``method`` is ``ENGINE_METHODS[method]``.
    """
    if target is not None and not np.array_equal(target.ids, data.ids):
        raise DataError("target must hold the same subjects as data, in the same (sorted) order")
    posterior = sample_posterior(model, guide, data, ENGINE_METHODS[check_choice("method", method, METHODS)],
                                 check_int("num_samples", num_samples), chunk_size=chunk_size,
                                 **_check_posterior_options(posterior_options))
    posterior = replace(posterior, method=method)  # as the caller named it (InferenceData provenance)
    return predictive_draws(model, data if target is None else target, posterior, chunk_size=chunk_size)


# ----------------------------------------------------------------- predict
def _level_label(level: float) -> str:
    return f"{100 * level:g}"


def _check_levels(levels: Sequence[float] | float) -> list[float]:
    """``levels`` (one number or a sequence) as a list of floats in (0, 1)."""
    given = [levels] if isinstance(levels, (int, float, np.number)) else levels
    levels = [] if isinstance(given, str) or not isinstance(given, Iterable) else list(given)
    try:
        if levels:
            return [check_float("levels", v, low=0, high=1, low_open=True, high_open=True) for v in levels]
    except ConfigError:
        pass
    raise ConfigError(f"levels must be numbers in (0, 1), e.g. (0.5, 0.95); got {given!r}")


def _times_frame(schema: DataSchema, history: pd.DataFrame, times, relative: bool = False) -> pd.DataFrame:
    """The requested rows: (id, time) for every history subject (a sequence
    of times of the training time type, or offsets if ``relative``: see
    :meth:`~pyro_dgmm.data.DataSchema.time_grid`) or as given (a DataFrame,
    possibly with outcome columns)."""
    id_col, time_col = schema.id_col, schema.time_col
    if isinstance(times, pd.DataFrame):
        if times.empty:
            raise DataError("the times DataFrame has no rows: there is nothing to predict")
        missing = [c for c in (id_col, time_col) if c not in times.columns]
        if missing:
            raise DataError(f"the times DataFrame needs the columns {missing}; its columns are {list(times.columns)}")
        unknown = ~times[id_col].isin(history[id_col])
        if unknown.any():
            raise DataError(
                f"subjects {sorted(pd.unique(times.loc[unknown, id_col]).tolist())[:5]} in the times DataFrame "
                f"({describe_rows(times.index[unknown])}) have no row in the history; give each subject at "
                "least one history row (baseline covariates, outcomes may be NaN)"
            )
        return times
    grid = schema.time_grid(np.ravel(times) if np.ndim(times) > 1 else times, relative=relative)
    ids = pd.unique(history[id_col])
    return pd.DataFrame({id_col: np.repeat(ids, grid.size),
                         time_col: grid.iloc[np.tile(np.arange(grid.size), ids.size)].reset_index(drop=True)})


def _target_frame(schema: DataSchema, history: pd.DataFrame, times, relative: bool,
                  include_history: bool) -> pd.DataFrame:
    """Rows to predict, sorted by id and time (the order of the padded
    slots), with covariates copied from each subject's history and a
    ``history`` flag; a requested (id, time) already in the history keeps
    the history row."""
    id_col, time_col = schema.id_col, schema.time_col
    rows = _times_frame(schema, history, times, relative).reindex(
        columns=[id_col, time_col, *schema.outcomes])  # outcomes not given: NaN
    last = history.groupby(id_col, sort=False)[time_col].max()
    if relative:  # offsets (model time) from each subject's last visit
        offsets = schema.time_grid(rows[time_col], relative=True).to_numpy()
        rows[time_col] = schema.add_offsets(rows[id_col].map(last), offsets)
    rows["history"] = False
    if include_history:
        past = history[[id_col, time_col, *schema.outcomes]].assign(history=True)
        rows = pd.concat([past, rows], ignore_index=True).drop_duplicates([id_col, time_col], keep="first")
    if schema.covariates:
        rows = rows.join(history.groupby(id_col, sort=False)[schema.covariates].first(), on=id_col)
    schema.check_time_type(rows[time_col])  # a DataError before any arithmetic on mixed types
    rows["horizon"] = schema.elapsed(rows[time_col], rows[id_col].map(last))
    return rows.sort_values([id_col, time_col], kind="stable").reset_index(drop=True)


def _summary_table(rows: pd.DataFrame, predictive: PosteriorPredictive, schema: DataSchema,
                   levels: list[float]) -> tuple[pd.DataFrame, np.ndarray]:
    """The tidy table of :class:`Prediction` and the draws (S, rows) aligned
    with it, from per-slot draws; ``rows`` are the visits in slot order."""
    data, names = predictive.data, schema.outcomes
    subject, slot = np.nonzero(data.visit_mask.cpu().numpy())
    # (S, V, K) over the V visits, float64 with the outcome shift added back
    means = data.response_values(predictive.means.cpu().numpy()[:, subject, slot])
    draws = data.response_values(predictive.draws.cpu().numpy()[:, subject, slot])
    log_lik = predictive.log_likelihood[:, subject, slot]  # NaN where nothing was observed
    log_density = (torch.logsumexp(log_lik, 0) - math.log(log_lik.shape[0])).cpu().numpy()
    stats = {"mean": means.mean(0)}
    for level in levels:
        tail, label = (1 - level) / 2, _level_label(level)
        stats[f"lower_{label}"], stats[f"upper_{label}"] = np.quantile(draws, [tail, 1 - tail], axis=0)
        stats[f"mean_lower_{label}"], stats[f"mean_upper_{label}"] = np.quantile(means, [tail, 1 - tail], axis=0)
    observed = rows[names].apply(pd.to_numeric).to_numpy(float)  # (V, K)
    table = rows.loc[rows.index.repeat(len(names)), [schema.id_col, schema.time_col]].reset_index(drop=True)
    table["outcome"] = np.tile(names, len(rows))
    table["history"] = np.repeat(rows["history"].to_numpy(bool), len(names))
    table["horizon"] = np.repeat(rows["horizon"].to_numpy(float), len(names))
    table["observed"] = observed.ravel()
    for key, value in stats.items():
        table[key] = value.ravel()
    table["log_density"] = log_density.ravel()
    return table, draws.reshape(draws.shape[0], -1)


def predict(model, guide, schema: DataSchema, history: pd.DataFrame, times, *, relative: bool = False,
            include_history: bool = False, levels: Sequence[float] = (0.95,), num_samples: int = 1000,
            method: str = "importance", seed: int = 0,
            encoder_view: Callable[[LongitudinalData], LongitudinalData] | None = None,
            parameter_uncertainty=None, parameter_draws: int = 20, **posterior_options) -> Prediction:
    """Dynamic predictions for the subjects of ``history`` at ``times``.

    :param history: long DataFrame with the training columns (id, time,
        outcomes, covariates); any number of rows per subject, outcomes may
        be NaN, and a subject may have no observed outcome at all (then the
        prediction uses its covariates only: b from the prior).  New and
        training subjects alike.
    :param times: a sequence of times, used for every subject, or a
        DataFrame with the id and time columns (per-subject times; outcome
        columns, if present, fill ``observed``, e.g. held-out values to score).
    :param relative: ``times`` are offsets from each subject's last history
        time (``[0.5, 1]``: half a year and a year after the last visit).
    :param include_history: also predict at the history rows (the fitted
        curve given the history, e.g. for plots).
    :param levels: interval levels, each in (0, 1).
    :param num_samples: S, draws of b and of y per subject.
    :param method: ``'importance'``, ``'mcmc'`` or ``'encoder'`` (module docstring).
    :param seed: seeds the draws, block of subjects by block
        (:func:`~pyro_dgmm.parallel.map_blocks`): the same table in one
        process or several (and the parameter draws).  Under ``torch.distributed`` every process
        passes the same ``history`` and ``times``, computes its blocks and
        gets the whole table.
    :param encoder_view: maps the history's tensors to what the encoder
        reads (:class:`~pyro_dgmm.estimator.DeepMixedModel` passes the
        imputation completion of models fitted with ``missing='impute'``);
        None: the history itself.  The likelihood always uses the observed
        cells.
    :param parameter_uncertainty: None (default: plug-in parameters) or a
        :class:`~pyro_dgmm.results.StandardErrors` of this model: its
        parameters are drawn ``parameter_draws`` times from the Wald
        approximation (module docstring; directions with negative
        curvature estimates get no spread).
    :param posterior_options: ``num_proposals``, ``adapt_rounds``,
        ``mcmc_steps``, ``chunk_size`` of :func:`~pyro_dgmm.posterior.sample_posterior`.

    The encoder sees the history only; times outside the fitted time range
    follow the time basis' extrapolation policy (:mod:`pyro_dgmm.bases`).
    """
    levels = _check_levels(levels)
    check_keywords("predict", posterior_options, (*POSTERIOR_OPTIONS, *PREDICT_OPTIONS))
    options = dict(relative=check_bool("relative", relative), include_history=check_bool("include_history",
                   include_history), levels=levels, num_samples=check_int("num_samples", num_samples),
                   method=check_choice("method", method, METHODS), encoder_view=encoder_view,
                   **_check_posterior_options(posterior_options))
    seed = check_int("seed", seed, minimum=0)
    if parameter_uncertainty is not None:
        parameter_draws = check_int("parameter_draws", parameter_draws)
        if parameter_draws > options["num_samples"]:
            raise ConfigError(f"parameter_draws must be between 1 and num_samples={num_samples}, got {parameter_draws}")
        options["models"] = parameter_models(model, parameter_uncertainty, parameter_draws, seed=seed)
    schema.validate(history, require_observed=False)
    _times_frame(schema, history, times, relative)  # errors are raised alike on every process, before any block runs
    id_col, time_col = schema.id_col, schema.time_col
    ids = pd.factorize(history[id_col], sort=True)[1]

    def compute(positions: np.ndarray):
        mine = history[id_col].isin(ids[positions])
        their_times = times[times[id_col].isin(ids[positions])] if isinstance(times, pd.DataFrame) else times
        if not mine.any() or len(their_times) == 0:
            return None
        prediction = _predict_subjects(model, guide, schema, history[mine], their_times, **options)
        return prediction.table, prediction.draws, prediction.predictive if single else None

    single = world()[1] == 1  # the tensors behind the table are kept in a single process only
    parts = [part for part in map_blocks(compute, len(ids), seed=seed) if part is not None]
    table = pd.concat([t for t, _, _ in parts], ignore_index=True)
    order = visit_order(pd.factorize(table[id_col], sort=True)[0], schema.relative_times(table))
    draws = np.concatenate([d for _, d, _ in parts], axis=1)[:, order]
    predictive = _concat_predictive([p for _, _, p in parts]) if single else None
    return Prediction(table.iloc[order].reset_index(drop=True), draws, predictive)


def _concat_predictive(parts: list[PosteriorPredictive]) -> PosteriorPredictive:
    """The blocks' predictive draws as one, subjects in block (= id) order;
    visit slots padded to the longest block's (NaN draws, no visit)."""
    if len(parts) == 1:
        return parts[0]
    slots = max(p.data.num_visits for p in parts)
    data = [p.data.pad(slots) for p in parts]

    def cat(values, dim=0):
        return None if values[0] is None else torch.cat(values, dim)

    def grow(x: torch.Tensor) -> torch.Tensor:  # (S, n, T, K) -> (S, n, slots, K)
        return torch.nn.functional.pad(x, (0, 0, 0, slots - x.shape[2]), value=float("nan"))

    joined = replace(data[0], **{name: cat([getattr(d, name) for d in data]) for name in
                                 ("y", "mask", "visit_mask", "times", "time_features", "encoder_y", "covariates",
                                  "encoder_mask")},
                     ids=np.concatenate([d.ids for d in data]),
                     time_values=None if data[0].time_values is None else np.concatenate([d.time_values for d in data]))
    joined_posterior = PosteriorDraws.concat([p.posterior for p in parts])
    means, draws, log_lik = (torch.cat([grow(getattr(p, name)) for p in parts], 1)
                             for name in ("means", "draws", "log_likelihood"))
    return PosteriorPredictive(joined, joined_posterior, means, draws, log_lik)


def _check_posterior_options(options: dict) -> dict:
    """Types and ranges of :func:`~pyro_dgmm.posterior.sample_posterior`'s options."""
    checked = dict(options)
    for name, minimum in (("num_proposals", 1), ("chunk_size", 1), ("adapt_rounds", 0), ("mcmc_steps", 0)):
        if name in checked:
            checked[name] = check_int(name, checked[name], minimum=minimum, none=name in ("num_proposals",
                                                                                          "chunk_size"))
    return checked


def _predict_subjects(model, guide, schema: DataSchema, history: pd.DataFrame, times, *, relative: bool,
                      include_history: bool, levels: list[float], num_samples: int, method: str,
                      encoder_view: Callable[[LongitudinalData], LongitudinalData] | None,
                      models: list | None = None, **posterior_options) -> Prediction:
    """:func:`predict` for all subjects of ``history`` at once (with ``models``:
    pooling ``num_samples / len(models)`` draws under each)."""
    past = schema.transform(history, require_observed=False)  # validates the history
    rows = _target_frame(schema, history, times, relative, include_history)
    past = past.subset(np.flatnonzero(np.isin(past.ids, pd.unique(rows[schema.id_col]))))
    past = past if encoder_view is None else encoder_view(past)
    target = schema.transform(rows, require_observed=False)
    if models is None:
        posterior_options.setdefault("num_proposals", default_proposals(num_samples))
        predictive = posterior_predictive(model, guide, past, target=target, num_samples=num_samples,
                                          method=method, **posterior_options)
    else:
        each = math.ceil(num_samples / len(models))
        # every parameter draw's posterior of b gets the full importance sample, so the pool is as accurate
        posterior_options.setdefault("num_proposals", num_samples)
        parts = [posterior_predictive(m, guide, past, target=target, num_samples=each, method=method,
                                      **posterior_options) for m in models]
        b = torch.cat([p.posterior.b for p in parts])
        posterior = PosteriorDraws(b, uniform_log_weights(b), method)
        predictive = PosteriorPredictive(target, posterior, *(torch.cat([getattr(p, key) for p in parts])
                                                              for key in ("means", "draws", "log_likelihood")))
    return Prediction(*_summary_table(rows, predictive, schema, levels), predictive)


def parameter_models(model, errors, num_draws: int, *, seed: int = 0, antithetic: bool = True) -> list:
    r"""``num_draws`` copies of ``model`` whose parameters ``errors.parameter_names``
    are drawn from :math:`\mathcal N(\hat\theta, \widehat{\operatorname{cov}})`
    on their working (unconstrained) scale (``errors``: a
    :class:`~pyro_dgmm.results.StandardErrors`; negative eigenvalues of the
    covariance, from Monte Carlo noise or a point that is not a maximum,
    are set to 0), by default in antithetic pairs :math:`\hat\theta \pm R z` (with few
    draws, their mean would otherwise be off :math:`\hat\theta` by
    :math:`1/\sqrt M` standard errors, shifting every interval).
    ``antithetic=False`` draws them independently, as multiple imputation
    needs: Rubin's rules treat the M imputations as independent draws (with
    pairs, the between-imputation variance would have M/2 degrees of
    freedom, not the M - 1 its t reference assumes).  The generator is
    seeded with ``seed``."""
    theta, covariance = errors.theta.detach().cpu(), errors.covariance.detach().cpu()
    values, vectors = torch.linalg.eigh((covariance + covariance.T) / 2)
    root = vectors * values.clamp_min(0).sqrt()
    generator = torch.Generator().manual_seed(seed)
    if antithetic:
        half = torch.randn(((num_draws + 1) // 2, theta.numel()), generator=generator, dtype=theta.dtype)
        noise = torch.cat([half, -half])[:num_draws]  # antithetic pairs: the draws' mean is theta itself
    else:
        noise = torch.randn((num_draws, theta.numel()), generator=generator, dtype=theta.dtype)
    draws = theta + noise @ root.T
    layout = Layout(model, errors.parameter_names)
    models = []
    for draw in draws:
        copy_ = copy.deepcopy(model)
        assign(copy_, layout, draw)
        models.append(copy_)
    return models
