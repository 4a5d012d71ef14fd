"""The summary of a fitted model: tables of likelihood-based inference put together.

:meth:`~pyro_dgmm.estimator.DeepMixedModel.summary` computes the standard
errors (:mod:`pyro_dgmm.wald`) and the information criteria
(:mod:`pyro_dgmm.comparison`); :func:`summarize` puts them, the data-scale
tables of the linear part (:mod:`pyro_dgmm.linear_tables`) and the fit's
convergence facts into one :class:`~pyro_dgmm.results.Summary`.  It
computes nothing expensive itself and says in the summary's notes which
tables a model cannot have and why.

Example (notes for a fit that was not refined and has unreliable weights):

>>> from types import SimpleNamespace
>>> result = SimpleNamespace(refinement=None)
>>> marginal = SimpleNamespace(unreliable=SimpleNamespace(sum=lambda: 2), num_samples=1000)
>>> [note[:40] for note in _notes(result, marginal, {})]
['estimates maximise the ELBO (SVI), not t', '2 subjects have Pareto k-hat above 0.7: ']
"""
from __future__ import annotations

from .data import DataSchema, LongitudinalData
from .diagnostics import PARETO_K_THRESHOLD
from .errors import ConfigError
from .linear_tables import linear_coefficients, linear_random_effects_covariance
from .results import FitResult, InformationCriteria, MarginalLikelihood, StandardErrors, Summary
from .selection import race_window


def summarize(model, schema: DataSchema, data: LongitudinalData, result: FitResult, errors: StandardErrors,
              criteria: InformationCriteria | None, *, criteria_error: str | None = None) -> Summary:
    """A :class:`~pyro_dgmm.results.Summary` of a fitted model.

    :param errors: standard errors over the linear parameters the model has
        and its dispersions (``DeepMixedModel.standard_errors()``), on ``data``.
    :param criteria: information criteria on ``data``, or None when they
        could not be computed (``criteria_error`` says why).
    """
    skipped = {}
    try:
        fixed = linear_coefficients(model, schema, errors)
    except ConfigError as error:
        fixed, skipped["fixed effects"] = None, str(error)
    try:
        random = linear_random_effects_covariance(model, schema)
    except ConfigError as error:
        random, skipped["random-effects covariance"] = None, str(error)
    if criteria is None:
        skipped["AIC and BIC"] = criteria_error or "not computed"
    dispersion_labels = list(model.observation_parameters().values())
    table = errors.summary()
    dispersions = table.loc[[label for label in table.index if label in dispersion_labels]]
    marginal = errors.marginal
    info = {
        "Model": type(model).__name__ + (" (linear)" if fixed is not None and random is not None else ""),
        "Outcomes": ", ".join(f"{name} ({family.name})" for name, family in schema.families.items()),
        "Subjects": data.num_subjects,
        "Visits": int(data.visit_mask.sum()),
        "Observed cells": int(data.mask.sum()),
        "Latent dimensions": f"{model.latent_dim} ({result.active_directions} active)",
        "Converged": f"{'yes' if result.converged else 'no'} ({result.epochs_run} epochs)",
        "Fits run": f"{max(len(result.starts), 1)} (restarts: pyro_dgmm.selection)",
        "Learned time functions": _race_text(result.time_functions_race, model.time_functions),
        "Residual lag-1 autocorrelation": ("n/a" if result.residual_autocorrelation is None
                                           else f"{result.residual_autocorrelation:.3f}"),
        "Estimation": "ML (refined)" if result.refinement else "ELBO (SVI)",
        "Log-likelihood": f"{marginal.total:.3f}",
        "  Monte Carlo SD": f"{marginal.total_mc_sd:.3f}",
        "Parameters": criteria.num_parameters if criteria is not None else "n/a",
        "AIC": f"{criteria.aic:.3f}" if criteria is not None else "n/a",
        "BIC": f"{criteria.bic:.3f}" if criteria is not None else "n/a",
        "Max Pareto k-hat": _pareto_k_text(float(marginal.pareto_k.max())),
    }
    return Summary(info, fixed, random, dispersions, errors.level, _notes(result, marginal, skipped))


def _race_text(race: dict | None, time_functions: int | None) -> str:
    """The learned time functions of the fit, and the held-out losses of the race that chose them."""
    if race is None:
        return "n/a" if time_functions is None else f"{time_functions} (no race)"
    losses = ", ".join(f"{c['heldout_loss']:.3f} with {c['time_functions']}" for c in race["candidates"])
    window = race_window(race["epochs"])
    return f"{race['chosen']} (held-out loss over epochs {window[0]}-{window[-1]}: {losses})"


def _pareto_k_text(k: float) -> str:
    """The largest k-hat, or a word for -inf: every subject's weights equal (no tail)."""
    return f"{k:.2f}" if k > float("-inf") else "none (equal weights)"


def _notes(result: FitResult, marginal: MarginalLikelihood, skipped: dict[str, str]) -> list[str]:
    """Caveats a reader of the summary needs: estimation by the ELBO,
    unreliable importance weights, tables left out and why."""
    notes = []
    if not result.refinement:
        notes.append("estimates maximise the ELBO (SVI), not the likelihood; Wald intervals assume the maximum: "
                     "fit with refine=True to move the linear parts and dispersions to it (docs/inference.md)")
    unreliable = int(marginal.unreliable.sum())
    if unreliable:
        notes.append(f"{unreliable} subjects have Pareto k-hat above {PARETO_K_THRESHOLD}: their likelihood "
                     f"estimates are unreliable at {marginal.num_samples} draws (use more)")
    notes += [f"no {name}: {reason}" for name, reason in skipped.items()]
    return notes
