"""Result containers: what fitting and likelihood-based inference return.

Plain dataclasses with their own presentation (tables, text), apart from
the code that computes them, so that plotting, conversion and saving read
results without importing any inference module (docs/developer.md states
the rule).  This module imports only the data layer and the diagnostics'
threshold.

* :class:`FitResult`: losses, convergence, latent activity of a fit
  (:func:`~pyro_dgmm.fit.fit_svi`).
* :class:`MarginalLikelihood`: per-subject importance-sampled
  :math:`\\log p(y_i^o)` (:mod:`pyro_dgmm.marginal`).
* :class:`StandardErrors`, :class:`Maximization`: Wald inference and the
  maximum-likelihood refinement (:mod:`pyro_dgmm.wald`).
* :class:`InformationCriteria`, :class:`LikelihoodRatioTest`,
  :class:`Comparison`: model comparison (:mod:`pyro_dgmm.comparison`).
* :class:`Summary`: the statsmodels-style summary of
  :meth:`~pyro_dgmm.estimator.DeepMixedModel.summary`.
* :class:`PosteriorDraws`: draws of b | y from
  :func:`~pyro_dgmm.posterior.sample_posterior`.
* :class:`PosteriorPredictive`, :class:`Prediction`: predictive draws and
  the dynamic predictions of :func:`~pyro_dgmm.predict.predict`.

Example:

>>> criteria = InformationCriteria(log_likelihood=-100.0, mc_sd=0.1, num_parameters=4, num_observations=50)
>>> criteria.aic, round(criteria.bic, 2)
(208.0, 215.65)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .data import LongitudinalData
from .diagnostics import PARETO_K_THRESHOLD


def wald_table(index: pd.Index, estimate, se, lower, upper) -> pd.DataFrame:
    """estimate, se, z = estimate / se, two-sided normal p_value, lower, upper (tensors or arrays)."""
    estimate, se, lower, upper = (np.asarray(torch.as_tensor(x).detach().cpu(), dtype=float)
                                  for x in (estimate, se, lower, upper))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = estimate / se
    p_value = np.array([math.erfc(abs(v) / math.sqrt(2)) for v in z])
    return pd.DataFrame({"estimate": estimate, "se": se, "z": z, "p_value": p_value, "lower": lower,
                         "upper": upper}, index=index)


@dataclass
class FitResult:
    """What a fit produced besides the fitted modules.

    ``train_loss[e]`` is the objective of epoch ``e`` (its steps' mean negative ELBO term
    plus the ridge penalty at its end);
    ``validation_loss`` holds ``(epoch, held-out negative ELBO per subject)``.
    ``converged`` says whether the convergence test was met (module
    docstring) and ``stop_reason`` why the fit stopped.
    ``latent_activity`` holds the eigenvalues (descending) of the covariance
    across training subjects of the encoder's means :math:`E_q[b_i]`: a
    direction of b that the data inform has a value near its share of the
    prior variance 1, an unused one a value near 0; ``active_directions``
    counts those above :data:`~pyro_dgmm.fit.ACTIVE_THRESHOLD` (the "active units" of
    Burda et al. 2016, made rotation-invariant).  ``refinement`` records
    the maximum-likelihood refinement of the linear parts and dispersions
    (with the serial-process scales), if one ran; ``serial_refinement`` that
    of the serial-process scales alone, which ``refine='auto'`` runs where
    the first does not, with ``serial_tau``: tau per outcome in the
    outcome's units per square root of a time unit.  ``interrupted`` says
    the fit was stopped by Ctrl-C (:func:`~pyro_dgmm.fit.fit_svi`): it did not converge,
    and ``stop_reason`` says where it stopped.
    ``residual_autocorrelation`` is the lag-1 autocorrelation of the
    residuals within subjects (:func:`~pyro_dgmm.selection.residual_autocorrelation`);
    ``starts`` lists the fits :class:`~pyro_dgmm.estimator.DeepMixedModel`
    ran for it (the first and any restarts, :mod:`pyro_dgmm.selection`),
    each as ``{"seed", "heldout_loss", "residual_autocorrelation", "kept"}``.
    ``time_functions_race`` records how ``time_functions`` was chosen
    (:class:`~pyro_dgmm.selection.TimeFunctionRace`): ``{"epochs", "chosen",
    "candidates": [{"time_functions", "heldout_loss"}, ...]}``; None when
    it was not raced.  ``latent_dim_search`` lists the latent dimensions
    ``latent_dim='auto'`` fitted (:func:`~pyro_dgmm.selection.choose_latent_dim`),
    each as ``{"latent_dim", "heldout_loss", "active_directions", "fits",
    "kept"}`` (``fits``: the first and any restarts); None for a given latent_dim.
    """

    config: dict
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[tuple[int, float]] = field(default_factory=list)
    kl_scale: list[float] = field(default_factory=list)
    best_epoch: int = -1
    annealed_at: int | None = None
    epochs_run: int = 0
    stop_reason: str = ""
    converged: bool = False
    seconds: float = 0.0
    latent_activity: list[float] = field(default_factory=list)
    active_directions: int | None = None
    refinement: dict | None = None
    serial_refinement: dict | None = None
    interrupted: bool = False
    residual_autocorrelation: float | None = None
    starts: list[dict] = field(default_factory=list)
    time_functions_race: dict | None = None
    latent_dim_search: list[dict] | None = None


@dataclass
class MarginalLikelihood:
    r"""Importance-sampling estimate of :math:`\log p(y_i^o; \theta)` per subject.

    ``per_subject``, ``mc_sd``, ``ess``, ``pareto_k``: shape (N,), in the
    order of ``ids`` (every process's subjects when sharded).  ``mc_sd`` is the Monte Carlo SD of each estimate (see
    the module docstring); it shrinks like :math:`1/\sqrt S`.
    (:math:`\log \hat p_i` is biased down by about ``mc_sd**2 / 2``.)
    ``exact``: computed in closed form (a linear mixed model): ``mc_sd`` 0,
    ``ess`` infinite, ``pareto_k`` -inf.
    """

    per_subject: torch.Tensor
    mc_sd: torch.Tensor
    ess: torch.Tensor
    pareto_k: torch.Tensor
    num_samples: int
    ids: np.ndarray
    exact: bool = False

    @property
    def total(self) -> float:
        """The estimate of the total marginal log-likelihood sum_i log p(y_i^o)."""
        return float(self.per_subject.sum())

    @property
    def total_mc_sd(self) -> float:
        """Monte Carlo SD of :attr:`total` (the subjects' draws are independent)."""
        return float(self.mc_sd.pow(2).sum().sqrt())

    @property
    def unreliable(self) -> torch.Tensor:
        """Subjects whose Pareto k-hat exceeds :data:`~pyro_dgmm.diagnostics.PARETO_K_THRESHOLD`, shape (N,)."""
        return self.pareto_k > PARETO_K_THRESHOLD

    def to_frame(self) -> pd.DataFrame:
        """One row per subject: id, log_likelihood, mc_sd, ess, pareto_k."""
        return pd.DataFrame({
            "id": self.ids, "log_likelihood": self.per_subject.cpu().numpy(), "mc_sd": self.mc_sd.cpu().numpy(),
            "ess": self.ess.cpu().numpy(), "pareto_k": self.pareto_k.cpu().numpy(),
        })


@dataclass
class StandardErrors:
    r"""Wald inference for a set of model parameters from the observed information.

    ``parameter_names`` are model parameters, flattened in that order into
    the P scalars named ``labels`` (``slices`` maps a name to its positions).
    ``theta`` (P,) holds their values on the working (unconstrained) scale,
    ``hessian`` (P, P) the Hessian of the estimated :math:`\ell` there,
    ``covariance`` (P, P) the pseudo-inverse of ``-hessian`` over its
    non-flat directions and ``null_space`` (P, r) an orthonormal basis of
    the flat ones.  ``estimate``, ``se``, ``lower``, ``upper`` (P,) are on
    the reported scale (dispersions on their natural scale, with intervals
    transformed from the log scale); ``se`` is NaN for parameters that move
    along a flat direction (not identified).  ``marginal`` is the
    log-likelihood estimate at ``theta`` with the same draws.
    """

    parameter_names: list[str]
    labels: list[str]
    slices: dict[str, slice]
    theta: torch.Tensor
    hessian: torch.Tensor
    covariance: torch.Tensor
    null_space: torch.Tensor
    estimate: torch.Tensor
    se: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    level: float
    method: str
    marginal: MarginalLikelihood

    def summary(self) -> pd.DataFrame:
        """Table indexed by label: estimate, se, z, p_value, lower, upper."""
        return wald_table(pd.Index(self.labels, name="parameter"), self.estimate, self.se, self.lower,
                          self.upper)


@dataclass
class Maximization:
    """What :func:`~pyro_dgmm.wald.maximize_marginal_likelihood` did: the estimated total
    log-likelihood at the start and at the end (each with the proposal
    fitted there), the steps taken and whether the Newton decrement fell
    below the tolerance."""

    log_likelihood_before: float
    log_likelihood_after: float
    steps: int
    converged: bool


@dataclass
class InformationCriteria:
    r"""Log-likelihood and information criteria of a fitted model on some data.

    ``aic`` :math:`= -2\hat\ell + 2p`; ``bic`` :math:`= -2\hat\ell + p \log n`
    with n the number of observed cells (statsmodels' convention for
    MixedLM; with n = subjects BIC penalises less).  ``mc_sd`` is the Monte
    Carlo SD of :math:`\hat\ell` (and so half that of AIC and BIC).
    """

    log_likelihood: float
    mc_sd: float
    num_parameters: int
    num_observations: int

    @property
    def aic(self) -> float:
        return -2 * self.log_likelihood + 2 * self.num_parameters

    @property
    def bic(self) -> float:
        return -2 * self.log_likelihood + math.log(self.num_observations) * self.num_parameters


@dataclass
class LikelihoodRatioTest:
    r""":math:`2(\hat\ell_1 - \hat\ell_0)` on ``df`` degrees of freedom, its
    chi-square p-value and the statistic's Monte Carlo SD."""

    statistic: float
    df: int
    p_value: float
    mc_sd: float


@dataclass
class Comparison:
    """Fitted models side by side (:func:`~pyro_dgmm.comparison.compare`).

    ``table``: one row per model: log_likelihood, mc_sd, num_parameters,
    aic, bic, delta_aic (from the smallest AIC).  ``likelihood_ratio``: the
    test of the smaller model against the larger when there are two of
    different size (valid only if nested), else None.
    """

    table: pd.DataFrame
    likelihood_ratio: LikelihoodRatioTest | None = None

    def __str__(self) -> str:
        text = self.table.to_string(float_format=lambda v: f"{v:.3f}")
        test = self.likelihood_ratio
        if test is not None:
            text += (f"\nLikelihood-ratio test (if nested): chi2 = {test.statistic:.3f} on {test.df} df, "
                     f"p = {test.p_value:.4g} (Monte Carlo SD of chi2 {test.mc_sd:.3f})")
        return text


#: Column headings of the text summary's coefficient tables (statsmodels' style).
_HEADINGS = {"estimate": "Coef.", "se": "Std.Err.", "z": "z", "p_value": "P>|z|"}


@dataclass
class Summary:
    """What :meth:`~pyro_dgmm.estimator.DeepMixedModel.summary` reports,
    as text (``str(summary)``, like statsmodels' ``summary()``) and as
    DataFrames (:attr:`tables`, :meth:`to_frame`).

    ``info``: the header (model, data, fit and likelihood facts; label ->
    value).  ``fixed_effects``: the linear part's coefficients on the data
    scale, indexed by (outcome, term): estimate, se, z, p_value, lower,
    upper (None for a model without a linear fixed-effects net).
    ``random_effects``: the data-scale covariance of the linear random
    effects, indexed by (outcome, term) on both axes (None without a
    linear random-effects net).  ``dispersions``: the observation-model
    parameters (residual SD, Student-t df, ...) on their natural scale, as
    ``fixed_effects``.  ``level``: the intervals' confidence level;
    ``notes``: caveats (estimation by ELBO, unreliable weights, tables left
    out and why).
    """

    info: dict
    fixed_effects: pd.DataFrame | None
    random_effects: pd.DataFrame | None
    dispersions: pd.DataFrame
    level: float = 0.95
    notes: list[str] = field(default_factory=list)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """``'info'`` (one column, ``value``) and each table present."""
        tables = {"info": pd.DataFrame({"value": pd.Series(self.info, dtype=object)})}
        for name in ("fixed_effects", "random_effects", "dispersions"):
            if getattr(self, name) is not None:
                tables[name] = getattr(self, name)
        return tables

    def to_frame(self) -> pd.DataFrame:
        """All estimates in one long table indexed by (section, outcome, term):
        ``'fixed'`` coefficients, ``'random'`` variances ``Var(term)`` and
        covariances ``Cov(term, term)`` (estimates only), ``'dispersion'``
        parameters (outcome taken from labels such as ``sigma[y]``);
        columns as in :attr:`fixed_effects`."""
        parts = []
        if self.fixed_effects is not None:
            parts.append(self.fixed_effects.set_axis(
                pd.MultiIndex.from_tuples([("fixed", *key) for key in self.fixed_effects.index])))
        if self.random_effects is not None:
            keys, values = [], []
            labels = list(self.random_effects.index)
            for i, row in enumerate(labels):
                for column in labels[:i + 1]:
                    same = row[0] == column[0]
                    outcome = row[0] if same else f"{column[0]}:{row[0]}"
                    term = f"Var({row[1]})" if row == column else (
                        f"Cov({column[1]}, {row[1]})" if same else f"Cov({column[0]}.{column[1]}, {row[0]}.{row[1]})")
                    keys.append(("random", outcome, term))
                    values.append(self.random_effects.loc[row, column])
            parts.append(pd.DataFrame({"estimate": values}, index=pd.MultiIndex.from_tuples(keys)))
        keys = [("dispersion", *_outcome_of(label)) for label in self.dispersions.index]
        parts.append(self.dispersions.set_axis(pd.MultiIndex.from_tuples(keys)))
        frame = pd.concat(parts)
        frame.index.names = ["section", "outcome", "term"]
        return frame[["estimate", "se", "z", "p_value", "lower", "upper"]]

    def __str__(self) -> str:
        width = 78
        low, high = (1 - self.level) / 2, (1 + self.level) / 2
        headings = {**_HEADINGS, "lower": f"[{low:.3g}", "upper": f"{high:.3g}]"}
        items = [f"{key + ':':<20}{value}" for key, value in self.info.items()]
        half = (len(items) + 1) // 2
        lines = ["DeepMixedModel summary".center(width), "=" * width]
        lines += [f"{a:<40}{b}".rstrip() for a, b in zip(items[:half], items[half:] + [""])]
        tables = [("Fixed effects (data scale)", self.fixed_effects),
                  ("Observation-model parameters", self.dispersions)]
        for title, table in tables:
            if table is not None and len(table):
                lines += ["-" * width, title, _coefficient_text(table, headings)]
        if self.random_effects is not None:
            covariance = self.random_effects.copy()
            names = [f"{o}: {t}" if covariance.index.get_level_values(0).nunique() > 1 else t
                     for o, t in covariance.index]
            covariance.index, covariance.columns = names, names
            lines += ["-" * width, "Random-effects covariance (data scale)",
                      covariance.to_string(float_format=lambda v: f"{v:.4f}")]
        lines.append("=" * width)
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _coefficient_text(table: pd.DataFrame, headings: dict) -> str:
    """A coefficient table as fixed-width text, one row per parameter."""
    shown = table[list(headings)].rename(columns=headings)
    if isinstance(shown.index, pd.MultiIndex) and shown.index.get_level_values(0).nunique() == 1:
        shown.index = shown.index.get_level_values(-1)
    elif isinstance(shown.index, pd.MultiIndex):
        shown.index = [f"{o}: {t}" for o, t in shown.index]
    shown.index.name = None
    return shown.to_string(float_format=lambda v: f"{v:.4f}")


def _outcome_of(label: str) -> tuple[str, str]:
    """('y', 'sigma') from 'sigma[y]'; ('', label) for labels without an outcome."""
    if label.endswith("]") and "[" in label:
        name, _, outcome = label[:-1].partition("[")
        return outcome, name
    return "", label


@dataclass
class PosteriorDraws:
    r"""Draws of :math:`b_i \mid y_i^o` for N subjects (:func:`sample_posterior`).

    ``b``: (S, N, q).  ``log_weights``: (S, N), normalised over S (uniform,
    :math:`-\log S`, for equally weighted draws).  ``method``: the sampler.
    ``log_marginal``: (N,) importance estimate of :math:`\log p(y_i^o)`
    (importance methods; None otherwise).  ``ess``: (N,) Kish's effective
    sample size :math:`1/\sum_s w_s^2` of the importance weights (of the
    round before resampling for ``'adaptive'``; None for unweighted
    methods).  ``acceptance``: (N,) Metropolis acceptance rate (MCMC
    methods).  ``eta``: (S, N, T, K) the linear predictor at the draws where
    the weights needed it, so means at the draws cost no second pass.
    """

    b: torch.Tensor
    log_weights: torch.Tensor
    method: str
    log_marginal: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    acceptance: torch.Tensor | None = None
    eta: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights, (S, N)."""
        return self.log_weights.exp()

    @classmethod
    def concat(cls, parts: list["PosteriorDraws"]) -> "PosteriorDraws":
        """The draws of several groups of subjects (the same method and S) as one."""
        if len(parts) == 1:
            return parts[0]

        def cat(name: str, dim: int):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values, dim)

        return cls(cat("b", 1), cat("log_weights", 1), parts[0].method, cat("log_marginal", 0), cat("ess", 0),
                   cat("acceptance", 0), cat("eta", 1))


@dataclass
class PosteriorPredictive:
    """Posterior predictive draws for the cells of ``data``.

    ``posterior``: the draws of b (S, N, q) they were made from (aligned
    with ``data``'s subjects).  ``means``: (S, N, T, K)
    :math:`g_k^{-1}(\\eta^{(s)})`.  ``draws``: (S, N, T, K) draws of y,
    inside each family's support.  ``log_likelihood``: (S, N, T, K)
    :math:`\\log p(y_{ijk} \\mid b_i^{(s)})` at the observed cells of
    ``data``, NaN elsewhere (in-sample: the pointwise log-likelihood; at
    held-out cells: the log predictive density per draw).
    """

    data: LongitudinalData
    posterior: PosteriorDraws
    means: torch.Tensor
    draws: torch.Tensor
    log_likelihood: torch.Tensor


@dataclass
class Prediction:
    """What :func:`predict` returns.

    ``table``: tidy DataFrame, one row per (subject, time, outcome), sorted
    by subject, time and outcome order, with columns

    * ``id_col``, ``time_col`` (the user's ids and times), ``outcome``;
    * ``history``: the row is one of the history's rows (``include_history``);
    * ``horizon``: time minus the subject's last history time;
    * ``observed``: the observed value if the history or the ``times`` frame
      has one, else NaN;
    * ``mean``: the predicted value :math:`E[y \\mid \\mathcal H_i]` (a
      probability for binary outcomes);
    * ``lower_<L>``, ``upper_<L>``: central prediction interval of a new
      observation at level ``L`` percent (observation noise included);
    * ``mean_lower_<L>``, ``mean_upper_<L>``: credible interval of the
      subject's mean curve :math:`g^{-1}(\\eta)` (for binary outcomes, of
      the probability);
    * ``log_density``: the log predictive density (mass, for discrete
      outcomes) of the observed value, :math:`\\log \\frac1S \\sum_s
      p(y \\mid b^{(s)})`, NaN where ``observed`` is; summed over held-out
      values it is the held-out log-likelihood (a proper score).

    ``draws``: (S, len(table)) posterior predictive draws of y, column ``r``
    for table row ``r``.  ``predictive``: everything behind it
    (:class:`PosteriorPredictive`; its ``data`` are the prediction cells,
    subjects sorted by id); None when computed by several processes (its
    tensors stay where they were computed).
    """

    table: pd.DataFrame
    draws: np.ndarray
    predictive: PosteriorPredictive | None
