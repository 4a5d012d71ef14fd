r"""Choosing among candidate fits of one data set: restarts from other
seeds, and ``latent_dim='auto'``.

A DGMM fit is a non-convex optimisation.  From some seeds the decoder never
comes to use a latent direction the data need: the encoder's means along
it stay at the prior's 0, the KL term keeps them there, and the fit
converges with one shape of the subjects' curves missing (on a development
truth with three random effects, 300 subjects x 12 visits, a third of the
default fits ended with two directions and 2-3 times the error).  Such a
fit leaves the lost shape in its residuals, and consecutive residuals of a
subject become positively correlated, where a fit that captures each
subject's curve leaves them slightly negatively correlated (the subject's
own effects absorb part of every residual).

:func:`fit_with_restarts` reads that mark, the lag-1 autocorrelation
:math:`\rho` of the fitted model's residuals (:func:`residual_autocorrelation`,
at the posterior means), and refits from another seed (the same training and held-out subjects) while every fit
so far is converged, has :math:`\rho >` :data:`RESTART_THRESHOLD` and
leaves a direction unused (a fit using every direction needs more
directions, not another seed), up to
:attr:`FitConfig.restarts <pyro_dgmm.fit_config.FitConfig>` times; it keeps
the fit with the lowest held-out loss (:func:`selection_loss`), which
separated collapsed from complete fits by 0.6-4.7 nats per subject on that
truth.  Data with serial correlation the model does not carry keep
:math:`\rho > 0` in every fit: where directions are to spare they pay for
the restarts and keep the best, and the estimator warns (:class:`~pyro_dgmm.errors.ResidualStructureWarning`,
:func:`structure_warning`).

:func:`choose_latent_dim` is ``latent_dim='auto'``: from
:func:`default_latent_dim`, refit with twice as many directions while a
converged fit uses every one, and keep the best held-out loss.

Both take ``fit_once(latent_dim, config) -> Candidate``, the estimator's
fit of freshly built modules on fixed training and held-out subjects.

:class:`TimeFunctionRace` wraps ``fit_once`` for a
:class:`~pyro_dgmm.model.DGMM` whose learned time functions are left to the
fit (``time_functions='auto'``): a path for random coefficients of learned
functions of time carries shapes a fixed basis cannot (a random amplitude
and phase), but on other data it leads the fit to a worse optimum, a
difference that shows in the held-out loss once the first tens of epochs
are past.  The first fit trains both structures side by side
(:class:`~pyro_dgmm.fit.Pause`) for ``race_epochs`` epochs and continues the
one with the lower held-out loss over the last half of them; every later
fit (restarts, more directions) uses that structure.

Example (a converged fit with positively correlated residuals is refitted):

>>> from pyro_dgmm.results import FitResult
>>> leaves_structure(FitResult(config={}, converged=True, residual_autocorrelation=0.07))
True
>>> leaves_structure(FitResult(config={}, converged=True, residual_autocorrelation=-0.11))
False
>>> default_latent_dim(num_outcomes=6, num_time_features=3)
8
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .errors import LatentDimensionWarning, ResidualStructureWarning
from .fit import Pause
from .fit_config import FitConfig
from .forked import ForkedCall, fork_helps
from .interrupt import deferred_interrupt
from .parallel import all_reduce_sum, is_main_process
from .posterior import fitted_means
from .results import FitResult

log = logging.getLogger(__name__)

#: The most latent directions ``latent_dim='auto'`` grows to.
MAX_LATENT_DIM = 16
#: Lag-1 residual autocorrelation within subjects above which a converged
#: fit is refitted from another seed: on ten development truths the 164
#: complete fits had -0.29 to -0.02, the 8 collapsed ones +0.02 to +0.33.
RESTART_THRESHOLD = 0.0
#: The k-th restart's seed is ``seed + RESTART_SEED_STEP * k``.
RESTART_SEED_STEP = 7919
#: Importance draws per subject for the fitted means of :func:`residual_autocorrelation`.
RESIDUAL_DRAWS = 100
#: The learned time functions :class:`TimeFunctionRace` tries (M of
#: :class:`~pyro_dgmm.nn.RandomEffectsNet`) against none.
LEARNED_TIME_FUNCTIONS = 4


@dataclass
class Candidate:
    """One fit: its latent dimension, modules, result, imputation trace
    (fits with the imputation loop) and the warnings it raised, held back
    until the estimator keeps one candidate."""

    latent_dim: int
    model: object
    guide: object
    result: FitResult
    imputation_trace: object | None
    warnings: list

    @property
    def loss(self) -> float:
        return selection_loss(self.result)


def selection_loss(result: FitResult) -> float:
    """What candidates are compared by: the held-out negative ELBO per
    subject at the kept epoch (the same held-out subjects for every
    candidate), or the final training loss when nobody is held out."""
    return dict(result.validation_loss).get(result.best_epoch, result.train_loss[-1])


def default_latent_dim(num_outcomes: int, num_time_features: int) -> int:
    """Where ``latent_dim='auto'`` starts: ``K + F + 1`` for K outcomes and F
    time functions, clamped to [4, 8].

    A linear mixed model with a random intercept and random coefficients on
    the F time functions has F + 1 random effects per outcome; shared
    factors make K outcomes need fewer than K (F + 1).  Four leaves room
    for a nonlinear profile with three random parameters plus one spare;
    eight covers most multi-outcome data without letting directions the
    data do not use (they stay at the prior) grow the network inputs.
    """
    return int(min(8, max(4, num_outcomes + num_time_features + 1)))


@torch.no_grad()
def residual_autocorrelation(model, guide, data, *, num_draws: int = RESIDUAL_DRAWS, seed: int = 0,
                             distributed_input: bool = False) -> float:
    r"""Lag-1 autocorrelation of a fit's residuals within subjects
    (:func:`lag1_autocorrelation`) at the fitted means
    :math:`\hat\mu_{ijk} = E[g_k^{-1}(\eta_{ijk}) \mid y_i^o]`: importance
    sampling with the encoder as proposal, ``num_draws`` draws
    (:func:`~pyro_dgmm.posterior.fitted_means`, drawn with ``seed``, leaving
    torch's generator as it was).

    For a linear mixed model the residuals at the posterior mean have
    covariance :math:`\sigma^4 V_i^{-1}` within a subject, whose
    off-diagonal entries are negative: a fit that captures each subject's
    curve leaves the autocorrelation slightly negative (about -0.1 to -0.3
    with 5-20 visits and 2-4 random effects).  A shape of the subjects'
    curves that the fit lost (a collapsed latent direction), subjects'
    effects the fit shrinks too far, or serial correlation the model does
    not carry make it positive.  The encoder's mean in place of the
    posterior mean would not do: fitted by the importance-weighted bound,
    the encoder is a proposal, and on sparse data its mean left complete
    fits' residuals positively correlated.  ``data`` is what the encoder
    reads (for fits with the imputation loop, the data completed by
    imputation: the residuals are still those of the observed cells,
    ``data.mask``); with ``distributed_input`` the sums are taken over
    every process's subjects.
    """
    residual = data.y - fitted_means(model, guide, data, num_draws, seed=seed)
    return lag1_autocorrelation(residual, data.mask, distributed=distributed_input)


def lag1_autocorrelation(residual: torch.Tensor, mask: torch.Tensor, *, distributed: bool = False) -> float:
    r"""Lag-1 autocorrelation within subjects of residuals (N, T, K) at the
    cells where ``mask`` is True, averaged over outcomes:

    .. math::

        \rho_k = \frac{P_k^{-1} \sum_{i,j} r_{ijk}\, r_{i,j+1,k}}{C_k^{-1} \sum_{i,j} r_{ijk}^2},

    the numerator over the :math:`P_k` pairs of consecutive visits where
    outcome k is observed at both, the denominator over its :math:`C_k`
    observed cells (so missing cells do not pull it towards 0); the mean of
    :math:`\rho_k` over the outcomes with such pairs (NaN if none has).
    ``distributed``: the sums are taken over every process's subjects.
    """
    mask = mask.cpu()
    residual = torch.where(mask, residual.cpu().double(), 0.0)
    pairs = mask[:, 1:] & mask[:, :-1]
    sums = torch.stack([(residual[:, 1:] * residual[:, :-1]).sum((0, 1)), residual.square().sum((0, 1)),
                        pairs.sum((0, 1)).double(), mask.sum((0, 1)).double()])  # products, squares, pairs, cells
    if distributed:
        sums = all_reduce_sum(sums)
    used = (sums[2] > 0) & (sums[1] > 0)
    if not bool(used.any()):
        return math.nan
    products, squares, pairs, cells = sums[:, used]
    return float(((products / pairs) / (squares / cells)).mean())


def leaves_structure(result: FitResult) -> bool:
    """A converged fit whose residuals keep a shape of the subjects' curves
    (:data:`RESTART_THRESHOLD`)."""
    rho = result.residual_autocorrelation
    return bool(result.converged and rho is not None and not math.isnan(rho) and rho > RESTART_THRESHOLD)


def has_spare_directions(candidate: Candidate) -> bool:
    """Whether the fit leaves some of its ``latent_dim`` directions unused:
    only then can a lost shape be a collapsed direction, which another seed
    may recover; a fit using every direction needs more of them instead
    (``latent_dim='auto'`` grows them, :class:`~pyro_dgmm.errors.LatentDimensionWarning`)."""
    active = candidate.result.active_directions
    return active is None or active < candidate.latent_dim


def fit_with_restarts(fit_once: Callable[[int, FitConfig], Candidate], latent_dim: int,
                      config: FitConfig) -> Candidate:
    """Fit with ``config``; while every fit so far leaves structure in its
    residuals with directions to spare, refit from seed ``config.seed +
    RESTART_SEED_STEP * k``, at most ``config.restarts`` times (none with a
    checkpoint, which holds one fit); keep the lowest held-out loss, or the
    fit Ctrl-C stopped.  The kept result's ``starts`` lists every fit."""
    tried = [fit_once(latent_dim, config)]  # each fit is tried only after every earlier one was flagged
    while (config.checkpoint is None and len(tried) <= config.restarts
           and leaves_structure(tried[-1].result) and has_spare_directions(tried[-1])):
        seed = config.seed + RESTART_SEED_STEP * len(tried)
        log.info("the fit from seed %d leaves structure in its residuals (lag-1 autocorrelation %.3f > %g) with "
                 "%s of %d directions in use: refitting from seed %d (restart %d of at most %d)",
                 tried[-1].result.config["seed"], tried[-1].result.residual_autocorrelation, RESTART_THRESHOLD,
                 tried[-1].result.active_directions, latent_dim, seed, len(tried), config.restarts)
        tried.append(fit_once(latent_dim, replace(config, seed=seed)))
    kept = tried[-1] if tried[-1].result.interrupted else min(tried, key=lambda c: c.loss)
    kept.result.starts = [{"seed": c.result.config["seed"], "heldout_loss": c.loss,
                           "residual_autocorrelation": c.result.residual_autocorrelation, "kept": c is kept}
                          for c in tried]
    return kept


def race_window(epochs: int) -> range:
    """The epochs whose held-out losses a race of ``epochs`` epochs compares:
    the last half, ``ceil(epochs / 2)`` to ``epochs - 1``."""
    return range(math.ceil(epochs / 2), epochs)


def race_loss(result: FitResult, epochs: int) -> float:
    """What a race compares: the mean held-out loss (the training loss when
    nobody is held out) over the evaluations in the last half of the first
    ``epochs`` epochs, common to both fits; one evaluation is noisy, and a
    fit still falling fast differs most from its neighbour early on."""
    losses = result.validation_loss or list(enumerate(result.train_loss))
    window = [loss for epoch, loss in losses if epoch in race_window(epochs)]
    return float(sum(window) / len(window)) if window else math.inf


class TimeFunctionRace:
    """``fit_once`` for a DGMM with ``time_functions='auto'``: the first call
    trains the model without learned time functions and with
    :data:`LEARNED_TIME_FUNCTIONS` side by side for ``config.race_epochs``
    epochs, continues the one with the lower :func:`race_loss` (or keeps it
    as it is, if it ended before the pause) and records the race in its
    result (``time_functions_race``); later calls fit the chosen structure
    and carry the same record.  A first fit that ends before the pause is
    returned as it is, without learned time functions and without a race
    (a fit shorter than the race); a fit Ctrl-C stopped is returned at
    once, no other fit started.

    Where a second core is free (``config.parallel_race`` and
    :func:`~pyro_dgmm.forked.fork_helps`) the learned structure's race fit
    runs in a forked child (:class:`~pyro_dgmm.forked.ForkedCall`) while
    this process fits the other; the child sends its fit back, held, and
    it continues here as it would have: the same result, in the time of
    the slower race fit.  A child that fails is fitted here instead.

    ``fit_once(latent_dim, config, time_functions=M, pause=None)`` is the
    estimator's fit of a model with M learned time functions, held at
    ``pause`` (:class:`~pyro_dgmm.fit.Pause`) or continued from it.
    """

    def __init__(self, fit_once: Callable[..., Candidate]):
        self.fit_once = fit_once
        self.chosen: int | None = None
        self.record: dict | None = None  # the race, for every later fit's result too

    def __call__(self, latent_dim: int, config: FitConfig) -> Candidate:
        if self.chosen is not None:
            candidate = self.fit_once(latent_dim, config, time_functions=self.chosen)
            candidate.result.time_functions_race = self.record
            return candidate
        epochs, runs = config.race_epochs, {}
        side = None  # the learned structure's race fit in a forked process, when a core is free
        if config.parallel_race and fork_helps(config.resolved_device()):
            side = ForkedCall(self._fit_to_pause, latent_dim, replace(config, progress=False), LEARNED_TIME_FUNCTIONS)
        try:
            for m in (0, LEARNED_TIME_FUNCTIONS):
                run = self._forked_result(side) if side is not None and m == LEARNED_TIME_FUNCTIONS else None
                pause, candidate = run or self._fit_to_pause(latent_dim, config, m)
                candidate.result.config["progress"] = config.progress  # the child fitted without a progress bar
                runs[m] = pause, candidate
                if candidate.result.interrupted or (m == 0 and not pause.held):  # Ctrl-C, or nothing to race
                    self.chosen = m
                    return candidate
        finally:
            if side is not None:
                side.cancel()
        losses = {m: race_loss(candidate.result, epochs) for m, (_, candidate) in runs.items()}
        self.chosen = min(losses, key=losses.get)
        window = race_window(epochs)
        log.info("time_functions='auto': held-out loss over epochs %d-%d %s; continuing with %d learned time "
                 "functions", window[0], window[-1],
                 ", ".join(f"{v:.4g} with {m}" for m, v in losses.items()), self.chosen)
        pause, kept = runs[self.chosen]
        if pause.held:
            kept = self.fit_once(latent_dim, config, time_functions=self.chosen, pause=pause)
        self.record = {"epochs": epochs, "chosen": self.chosen,
                       "candidates": [{"time_functions": m, "heldout_loss": loss} for m, loss in losses.items()]}
        kept.result.time_functions_race = self.record
        return kept

    @staticmethod
    def _forked_result(side: ForkedCall) -> tuple[Pause, Candidate] | None:
        """The child's race fit (None: it failed).  Ctrl-C in a terminal
        reaches the child too, which stops its fit after the current step and
        sends it back, interrupted, as a fit here would be; a SIGINT sent to
        this process alone does not reach the child's fit, and is raised here
        once the child is done."""
        with deferred_interrupt() as stop:
            run = side.result()
        if stop.requested and not (run is not None and run[1].result.interrupted):
            raise KeyboardInterrupt
        return run

    def _fit_to_pause(self, latent_dim: int, config: FitConfig, time_functions: int) -> tuple[Pause, Candidate]:
        """The race fit of ``time_functions`` learned functions, held after
        ``config.race_epochs`` epochs (or ended before), with its pause."""
        pause = Pause(config.race_epochs)
        return pause, self.fit_once(latent_dim, config, time_functions=time_functions, pause=pause)


def choose_latent_dim(fit_once: Callable[[int, FitConfig], Candidate], start: int, config: FitConfig) -> Candidate:
    """``latent_dim='auto'``: fit (with restarts) from ``start`` directions,
    doubling while a converged fit uses every direction, up to
    :data:`MAX_LATENT_DIM`; keep the lowest held-out loss, or the fit
    Ctrl-C stopped (no more are tried)."""
    latent_dim, best, fits = start, None, []
    while True:
        fit = fit_with_restarts(fit_once, latent_dim, config)
        fits.append(fit)
        best = fit if best is None or fit.loss < best.loss or fit.result.interrupted else best
        if fit.result.interrupted:
            break
        if has_spare_directions(fit) or not fit.result.converged or latent_dim >= MAX_LATENT_DIM:
            break
        log.info("latent_dim='auto': all %d directions in use, refitting with %d", latent_dim,
                 min(2 * latent_dim, MAX_LATENT_DIM))
        latent_dim = min(2 * latent_dim, MAX_LATENT_DIM)
    best.result.latent_dim_search = [{"latent_dim": f.latent_dim, "heldout_loss": f.loss,
                                      "active_directions": f.result.active_directions,
                                      "fits": max(len(f.result.starts), 1), "kept": f is best} for f in fits]
    return best


def rejected_larger(candidate: Candidate) -> dict | None:
    """The fit with more directions than ``candidate`` that ``latent_dim='auto'``
    tried and did not keep (its ``latent_dim_search`` entry), if any.  There
    is one only if ``candidate`` uses every direction: 'auto' grows past
    no other fit."""
    larger = [s for s in candidate.result.latent_dim_search or () if s["latent_dim"] > candidate.latent_dim]
    return min(larger, key=lambda s: s["heldout_loss"]) if larger else None


def replay_warnings(candidate: Candidate) -> None:
    """Raise the warnings the kept ``candidate``'s fit held back.  Where it
    uses every direction and ``latent_dim='auto'`` tried more and kept it
    anyway, the fit's own :class:`~pyro_dgmm.errors.LatentDimensionWarning`
    (which suggests more directions) is replaced by one that names the
    larger fit and why it lost."""
    larger = rejected_larger(candidate)
    for record in candidate.warnings:
        if larger is None or not issubclass(record.category, LatentDimensionWarning):
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    if larger is not None and is_main_process():
        warnings.warn(
            f"all {candidate.latent_dim} latent directions are in use; latent_dim='auto' also fitted "
            f"{larger['latent_dim']} ({larger['active_directions']} directions in use, held-out loss "
            f"{larger['heldout_loss']:.2f} against {candidate.loss:.2f} nats per subject, best of "
            f"{larger['fits']} fit(s)) and kept {candidate.latent_dim}: the held-out subjects do not support "
            f"more directions (latent_dim={larger['latent_dim']} fits the larger model; result_.latent_dim_search)",
            LatentDimensionWarning, stacklevel=4)


def structure_warning(candidate: Candidate) -> None:
    """Warn (:class:`~pyro_dgmm.errors.ResidualStructureWarning`) when the
    kept fit still leaves structure in its residuals, naming what was tried."""
    result = candidate.result
    if not leaves_structure(result):
        return
    if len(result.starts) > 1:
        tried = f"it is the best by held-out loss of {len(result.starts)} fits from seeds {[s['seed'] for s in result.starts]}"
    elif (larger := rejected_larger(candidate)) is not None:
        tried = (f"all {candidate.latent_dim} latent directions are in use, so no restart was run, and the fit "
                 f"with {larger['latent_dim']} directions had a worse held-out loss")
    elif not has_spare_directions(candidate):
        tried = (f"all {candidate.latent_dim} latent directions are in use, so no restart was run (a larger "
                 "latent_dim, not another seed, may recover the shape)")
    else:
        tried = "no restart was run (restarts=0 or a checkpoint)"
    warnings.warn(
        f"consecutive residuals of a subject are positively correlated (lag-1 autocorrelation "
        f"{result.residual_autocorrelation:.3f}; a fit that captures each subject's curve leaves them slightly "
        f"negative) and {tried}: a shape of the subjects' curves is left in the residuals. A latent direction may "
        "have collapsed (try more restarts, another seed or model_options={'time_functions': 4}), or the data "
        "carry serial correlation (model_options={'serial_process': 'brownian'}, for more of the outcomes if the "
        "model has one already); compare fits by held-out loss "
        "(docs/fitting.md, 'Restarts')", ResidualStructureWarning, stacklevel=3)
