"""The analyst's entry point: a DGMM fitted from a long DataFrame.

Composition only: the schema (:mod:`pyro_dgmm.data`), the model
(:mod:`pyro_dgmm.model`), the guide (:mod:`pyro_dgmm.guide`), the fit loop
(:mod:`pyro_dgmm.fit`) and the posterior (:mod:`pyro_dgmm.posterior`).
Its likelihood methods are in :mod:`pyro_dgmm.inference_methods`, its
fitted values, predictions and exports in :mod:`pyro_dgmm.prediction_methods`
and its save/load in :mod:`pyro_dgmm.persistence`, mixed into
:class:`DeepMixedModel`.

Example::

    >>> from pyro_dgmm import DeepMixedModel
    >>> from pyro_dgmm.datasets import simulate_linear
    >>> sim = simulate_linear(n_subjects=60, n_visits=6, seed=1)
    >>> dgmm = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"},
    ...                       covariates=["age", "group"], time_basis="poly(1)")
    >>> dgmm = dgmm.fit(sim.data, max_epochs=5, progress=False)
    >>> dgmm.fitted_values(num_samples=50).columns.tolist()
    ['id', 'time', 'y', 'y_fitted']
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyro

from .bases import DEFAULT_TIME_BASIS
from .checkpoint import open_checkpoint
from .data import TIME_UNITS, DataSchema, LongitudinalData, parse_covariate_formula
from .errors import ConfigError, ConvergenceWarning, NotFittedError
from .families import Family, check_outcomes, get_family
from .fit import FitConfig, Pause, fit_svi
from .results import FitResult
from .guide import AmortizedGuide
from .model import DGMM, MixedModel
from .parallel import hold_out, is_main_process, local_hold_out, map_subjects
from .partitioned import prepare_partitioned
from .impute import (KERNELS, ImputationConfig, ImputationTrace, fit_with_imputation, impute_completed,
                     multiple_imputations, with_fill)
from .guide import ENCODERS
from .nn import ACTIVATIONS, COVARIANCES
from .options import check_bool, check_choice, check_float, check_int, check_keywords, check_names, check_str
from .parameters import LINEAR_PARAMETERS, present
from .pattern_mixture import (PATTERN_COLUMN, DropoutPatterns, PatternConfig, dropout_times, mean_curve,
                              pattern_designs, pattern_mixture_imputations)
from .posterior import marginal_means
from . import marginal, wald
from .inference_methods import LikelihoodMethods
from .persistence import SaveLoadMethods
from .prediction_methods import PredictionMethods
from .selection import (Candidate, TimeFunctionRace, choose_latent_dim, default_latent_dim, fit_with_restarts,
                        replay_warnings, residual_autocorrelation, structure_warning)
from .sensitivity import delta_shift


@dataclass
class ModelOptions:
    """Architecture of model and guide (see :class:`~pyro_dgmm.model.DGMM`
    and :class:`~pyro_dgmm.guide.AmortizedGuide`).

    ``model_options`` are passed to ``model_class``; the defaults suit
    :class:`DGMM` (``fixed_hidden``, ``random_hidden``, ``activation``).
    """

    latent_dim: int | str = "auto"
    model_options: dict = field(default_factory=dict)
    encoder: str = "set"
    encoder_hidden: tuple = (64, 64)
    covariance: str = "full"
    activation: str = "tanh"


class DeepMixedModel(LikelihoodMethods, PredictionMethods, SaveLoadMethods):
    """A Deep Generalized Mixed Model for a long DataFrame.

    :param id_col: subject id column.
    :param time_col: time column.
    :param outcomes: outcome column -> family (``'gaussian'``,
        ``'student_t'``, ``'bernoulli'``, ``'poisson'``, ``'bounded(1,7)'`` or a
        :class:`~pyro_dgmm.family.Family`).  Outcomes share one latent b_i.
    :param covariates: baseline covariate columns (numeric or categorical),
        or a formula of them such as ``"age * sex + C(trt)"`` (interactions,
        contrasts and transforms, expanded by formulaic and replayed on new
        data: :class:`~pyro_dgmm.covariates.FormulaEncoder`; docs/data.md).
    :param time_basis: time functions T_ij: ``'poly(3)'`` (default,
        :data:`~pyro_dgmm.bases.DEFAULT_TIME_BASIS`), ``'poly(1)'``,
        ``'spline(4)'``, ``'spline(4)+fourier(7)'``...
    :param latent_dim: q, the dimension of b_i, or ``'auto'`` (default):
        start from :func:`~pyro_dgmm.selection.default_latent_dim` (more outcomes and time
        functions, more directions) and, while a converged fit uses every
        direction (:attr:`~pyro_dgmm.results.FitResult.active_directions`),
        refit with twice as many, up to :data:`~pyro_dgmm.selection.MAX_LATENT_DIM`; the fit
        with the best held-out ELBO is kept.  Unused directions stay at
        the prior and cost little, so starting generous is safe.  The
        fitted dimension is ``latent_dim_``.
    :param model_class: :class:`DGMM` or a user subclass of
        :class:`~pyro_dgmm.model.MixedModel`.
    :param model_options: keyword arguments for ``model_class``, e.g.
        ``{"dispersion_model": "linear"}`` for dispersions log-linear in time
        and covariates (:meth:`~pyro_dgmm.model.MixedModel.dispersion`).
        A DGMM's ``time_functions`` left out (or ``'auto'``) is chosen by
        the fit, 0 or 4, by a race on the held-out loss
        (:class:`~pyro_dgmm.selection.TimeFunctionRace`; ``race_epochs``);
        the fitted value is ``time_functions_``.
    :param encoder: ``'set'`` (pools over visits), ``'dense'`` (talk) or
        ``'sequence'`` (attention over the visits in time; docs/model.md).
    :param covariance: ``'full'`` (Cholesky) or ``'diagonal'`` Sigma_b.
    :param validation_fraction: share of subjects held out for early stopping.
    :param time_unit: unit of model time when the time column holds
        datetimes or timedeltas: ``'days'`` (default), ``'seconds'``,
        ``'minutes'``, ``'hours'``, ``'weeks'`` or ``'years'`` (365.25 days),
        counted from the earliest training visit; the conversion is stored
        and replayed on new data, and outputs keep the user's time type
        (:doc:`/data`).  Numeric times keep their own units.
    """

    def __init__(self, *, id_col: str, time_col: str, outcomes: Mapping[str, str | Family],
                 covariates: Sequence[str] | str = (), time_basis=DEFAULT_TIME_BASIS, latent_dim: int | str = "auto",
                 model_class: type[MixedModel] = DGMM, model_options: dict | None = None,
                 encoder: str = "set", encoder_hidden: Sequence[int] = (64, 64),
                 covariance: str = "full", activation: str = "tanh",
                 validation_fraction: float = 0.1, time_unit: str = "days"):
        if not (isinstance(model_class, type) and issubclass(model_class, MixedModel)):
            raise ConfigError(f"model_class must be a subclass of MixedModel, got {model_class!r}")
        validation_fraction = check_float("validation_fraction", validation_fraction, low=0, high=1, high_open=True)
        if not (isinstance(latent_dim, str) and latent_dim == "auto"):
            try:
                latent_dim = check_int("latent_dim", latent_dim)
            except ConfigError:
                raise ConfigError(f"latent_dim must be a positive integer or 'auto', got {latent_dim!r} "
                                  f"({type(latent_dim).__name__})") from None
        self.id_col, self.time_col = check_str("id_col", id_col), check_str("time_col", time_col)
        self.outcomes = check_outcomes(outcomes)
        self.covariates = (parse_covariate_formula(covariates)[0] if isinstance(covariates, str)
                           else check_names("covariates", covariates))
        self.time_basis = time_basis
        self.model_class = model_class
        if model_options is not None and not isinstance(model_options, Mapping):
            raise ConfigError(f"model_options must be a dict of keyword arguments, got {model_options!r}")
        if isinstance(encoder_hidden, (str, bytes)) or not isinstance(encoder_hidden, Iterable):
            raise ConfigError(f"encoder_hidden must be a sequence of layer widths, e.g. (64, 64), "
                              f"got {encoder_hidden!r}")
        encoder_hidden = tuple(check_int(f"encoder_hidden[{k}]", width) for k, width in enumerate(encoder_hidden))
        self.options = ModelOptions(latent_dim, dict(model_options or {}), check_choice("encoder", encoder, ENCODERS),
                                    encoder_hidden, check_choice("covariance", covariance, COVARIANCES),
                                    check_choice("activation", activation, ACTIVATIONS))
        self.validation_fraction = validation_fraction
        if not isinstance(time_unit, str) or time_unit not in TIME_UNITS:
            raise ConfigError(f"time_unit must be one of {list(TIME_UNITS)}; got {time_unit!r}")
        self.time_unit = time_unit
        self.schema_: DataSchema | None = None
        self.model_: MixedModel | None = None
        self.guide_: AmortizedGuide | None = None
        self.result_: FitResult | None = None
        self.latent_dim_: int | None = None
        self.time_functions_: int | None = None  # the fitted model's learned time functions (None: no such path)
        self.data_: LongitudinalData | None = None
        self.num_visits_: int | None = None  # the padded record length (the dense encoder's input size)
        self.training_baseline_: pd.DataFrame | None = None
        self.imputation_trace_: ImputationTrace | None = None
        self.patterns_: DropoutPatterns | None = None  # missing='pattern_mixture': the fitted dropout patterns
        self.pattern_config_: PatternConfig | None = None
        self.missing = "mask"
        self.distributed_input = False
        self._interrupt_warned = False  # a fit stopped by Ctrl-C warns once, when its results are first used

    # ------------------------------------------------------------------ fit
    def fit(self, df: pd.DataFrame, config: FitConfig | None = None, *, preset: str | None = None,
            missing: str = "mask",
            imputation: ImputationConfig | None = None, patterns: PatternConfig | None = None,
            distributed_input: bool = False, **config_overrides) -> "DeepMixedModel":
        """Fit to ``df`` (one row per visit).

        Fit settings come from ``config`` (a :class:`~pyro_dgmm.fit_config.FitConfig`)
        or ``preset`` (``'accurate'``, the default: fit until converged;
        ``'fast'``: a quick look, see :data:`~pyro_dgmm.fit_config.PRESETS`), and
        keyword overrides such as ``max_epochs=200, progress=False``.  A fit
        that stops before it converged warns
        (:class:`~pyro_dgmm.errors.ConvergenceWarning`), and so does one
        that uses every latent direction it was given
        (:class:`~pyro_dgmm.errors.LatentDimensionWarning`).  A converged
        fit whose residuals keep a shape of the subjects' curves (the mark
        of a collapsed latent direction) is refitted from other seeds, up to
        ``restarts`` times, keeping the lowest held-out loss; if every fit
        keeps it, the estimator warns
        (:class:`~pyro_dgmm.errors.ResidualStructureWarning`;
        :mod:`pyro_dgmm.selection`, ``result_.starts``).

        :param missing: how the encoder meets unobserved cells.  ``'mask'``
            (default): it reads the observation mask and a neutral fill, with
            no imputation step.  ``'impute'``: the talk's stochastic-
            approximation EM loop (:func:`~pyro_dgmm.impute.fit_with_imputation`)
            with settings ``imputation``.  Either way the likelihood uses the
            observed cells only, so estimates are valid under MAR.
            ``'pattern_mixture'``: as ``'mask'``, with each subject's dropout
            pattern (settings ``patterns``, a
            :class:`~pyro_dgmm.pattern_mixture.PatternConfig`; fitted
            patterns in ``patterns_``) entering the fixed effects, and
            :meth:`impute` drawing values after dropout under ACMV
            (:mod:`pyro_dgmm.pattern_mixture`).
        :param distributed_input: ``df`` holds only this process's subjects
            (partitioned input, e.g. from
            :func:`~pyro_dgmm.partitioned.read_subjects`; every process of
            the ``torch.distributed`` job calls ``fit`` with its own).  The
            schema is fitted identically everywhere on a sample gathered from
            all processes (:func:`~pyro_dgmm.partitioned.fit_schema`), each
            process's subjects form its shards, and each holds out
            ``validation_fraction`` of its own subjects.  Default: every
            process passes the same ``df``.

        Long fits: ``checkpoint=PATH, checkpoint_every=N`` write the fit's
        full state every N epochs, ``resume=True`` continues from it (same
        data and settings: the result equals the uninterrupted fit's), and
        Ctrl-C stops the fit after the current step, keeps the best
        parameters and marks ``result_.interrupted`` (using the results
        then warns once).  With ``latent_dim='auto'`` each candidate fit
        writes the checkpoint (it records which one); resuming one needs
        that fixed ``latent_dim``.  The imputation loop has no checkpoints.
        See docs/fitting.md, "Long fits: checkpoints and resume".
        """
        check_choice("missing", missing, ("mask", "impute", "pattern_mixture"))
        check_keywords("fit", config_overrides, FitConfig.fields())
        if config is not None and not isinstance(config, FitConfig):
            raise ConfigError(f"config must be a FitConfig or None, got {config!r}")
        if imputation is not None and not isinstance(imputation, ImputationConfig):
            raise ConfigError(f"imputation must be an ImputationConfig or None, got {imputation!r}")
        if patterns is not None and not isinstance(patterns, PatternConfig):
            raise ConfigError(f"patterns must be a PatternConfig or None, got {patterns!r}")
        distributed_input = check_bool("distributed_input", distributed_input)
        if distributed_input and isinstance(self.covariates, str):
            raise ConfigError("covariates given as a formula cannot be fitted with distributed_input=True yet: "
                              "give the covariates as a list of columns")
        if config is not None and preset is not None:
            raise ConfigError("pass either config or preset, not both")
        config = replace(config or FitConfig.from_preset(preset or "accurate"), **config_overrides)
        self._check_resumable(config, missing)
        self.missing, self.distributed_input = missing, distributed_input
        self._interrupt_warned = False
        schema_options = dict(id_col=self.id_col, time_col=self.time_col, outcomes=self.outcomes,
                              covariates=self.covariates, time_basis=self.time_basis, time_unit=self.time_unit)
        self.patterns_ = self.pattern_config_ = None
        if missing == "pattern_mixture":
            if distributed_input:
                raise ConfigError("missing='pattern_mixture' cannot be fitted with distributed_input=True yet")
            df, schema_options["covariates"] = self._with_patterns(df, patterns or PatternConfig(), schema_options)
        if distributed_input:
            self.schema_, self.data_, self.training_baseline_ = prepare_partitioned(df, schema_options, config.seed)
            train, validation = local_hold_out(self.data_, self.validation_fraction, config.seed, config.num_shards)
        else:
            self.schema_, self.data_ = DataSchema.fit_transform(df, **schema_options)
            self.training_baseline_ = self._baseline_frame(df)
            train, validation = hold_out(self.data_, self.validation_fraction, config.seed)
        self.num_visits_ = self.data_.num_visits
        if self.patterns_ is not None:  # pi_j(x): the design under the reference pattern holds the covariates
            designs, own = pattern_designs(self.schema_, self.training_baseline_, self.patterns_, self.data_.ids)
            self.patterns_ = self.patterns_.fit_probabilities(designs[-1], own.numpy())
        fit_once = partial(self._fit_candidate, train=train, validation=validation, imputation=imputation)
        self.time_functions_ = None
        if self._races_time_functions(config):
            fit_once = TimeFunctionRace(fit_once)
        elif self.options.model_options.get("time_functions") == "auto":
            self.time_functions_ = 0
        if self.options.latent_dim == "auto":
            start = default_latent_dim(len(self.outcomes), self.schema_.time_basis.num_features)
            self._keep(choose_latent_dim(fit_once, start, config))
        else:
            self._keep(fit_with_restarts(fit_once, self.options.latent_dim, config))
        return self

    def _with_patterns(self, df: pd.DataFrame, config: PatternConfig, schema_options: dict):
        """``df`` with each subject's dropout pattern (fitted here, into
        ``patterns_``) in :data:`~pyro_dgmm.pattern_mixture.PATTERN_COLUMN`,
        and the covariates that carry it into the model (none with one pattern)."""
        times = DataSchema.fit(df, **{**schema_options, "covariates": ()}).relative_times(df)
        observed = df[list(self.outcomes)].notna().any(axis=1).to_numpy()
        self.patterns_ = DropoutPatterns.fit(dropout_times(df[self.id_col].to_numpy(), times, observed),
                                             float(times.max()), config)
        self.pattern_config_ = config
        df = self.patterns_.label(df, self.id_col, times, list(self.outcomes))
        covariates = self.covariates
        if self.patterns_.num_patterns > 1:
            covariates = (f"{covariates} + {PATTERN_COLUMN}" if isinstance(covariates, str)
                          else [*covariates, PATTERN_COLUMN])
        return df, covariates

    def _check_resumable(self, config: FitConfig, missing: str) -> None:
        """Refuse checkpoints where they cannot be resumed: a checkpoint holds
        one SVI fit, while the imputation loop carries chains of imputed
        values from round to round, and ``latent_dim='auto'`` compares
        candidate fits that a checkpoint does not hold."""
        if config.checkpoint is None:
            return
        if missing == "impute":
            raise ConfigError(
                f"checkpoint={config.checkpoint!r}: checkpoints and resume are not supported with missing='impute' "
                "(the imputation loop's chains are not in a checkpoint); fit without checkpoint or with "
                "missing='mask'")
        if config.resume_path is not None and self.options.latent_dim == "auto":
            stage = open_checkpoint(config.resume_path)["stage"]
            raise ConfigError(
                f"resume={config.resume!r} cannot continue latent_dim='auto' (it compares several candidate fits); "
                f"checkpoint {config.resume_path} holds the fit {stage!r}: resume it with that latent_dim, "
                "or fit afresh without resume")

    def _races_time_functions(self, config: FitConfig) -> bool:
        """Whether the fit chooses ``time_functions`` by a race
        (:class:`~pyro_dgmm.selection.TimeFunctionRace`): a DGMM with the
        dense random-effects net whose ``time_functions`` is not given (or
        ``'auto'``), ``race_epochs > 0``, no checkpoint (it holds one fit)
        and no imputation loop (its rounds cannot be paused)."""
        options = self.options.model_options
        return (issubclass(self.model_class, DGMM) and options.get("time_functions", "auto") == "auto"
                and bool(options.get("random_hidden", True)) and config.race_epochs > 0
                and config.checkpoint is None and self.missing != "impute")

    def _fit_candidate(self, latent_dim: int, config: FitConfig, *, train: LongitudinalData,
                       validation: LongitudinalData | None, imputation: ImputationConfig | None,
                       time_functions: int | None = None, pause: Pause | None = None) -> Candidate:
        """One fit with ``latent_dim`` and ``config`` (:meth:`_fit_latent`),
        its warnings held back and its residuals' lag-1 autocorrelation
        recorded, for :mod:`pyro_dgmm.selection` to choose from.
        ``time_functions``: M of the DGMM's learned time functions (None:
        as ``model_options`` say); ``pause``: hold the fit there, or continue
        the fit held there (a held fit is returned as it stands)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._fit_latent(latent_dim, train, validation, config, imputation, time_functions, pause)
        if pause is None or not pause.held:
            self.result_.residual_autocorrelation = residual_autocorrelation(
                self.model_, self.guide_, self._encoder_view(train), seed=config.seed,
                distributed_input=self.distributed_input)
        return Candidate(latent_dim, self.model_, self.guide_, self.result_, self.imputation_trace_, caught)

    def _keep(self, candidate: Candidate) -> None:
        """Make ``candidate`` the fitted model and raise its warnings (and,
        if its residuals keep structure, :func:`~pyro_dgmm.selection.structure_warning`)."""
        self.latent_dim_, self.model_, self.guide_ = candidate.latent_dim, candidate.model, candidate.guide
        self.time_functions_ = candidate.model.time_functions
        self.result_, self.imputation_trace_ = candidate.result, candidate.imputation_trace
        replay_warnings(candidate)
        if is_main_process():
            structure_warning(candidate)

    def _fit_latent(self, latent_dim: int, train: LongitudinalData, validation: LongitudinalData | None,
                    config: FitConfig, imputation: ImputationConfig | None, time_functions: int | None = None,
                    pause: Pause | None = None) -> None:
        """Build model and guide with ``latent_dim`` directions (and
        ``time_functions``, if given) and fit them (SVI or the imputation
        loop, then the refinement if asked for; not after Ctrl-C or while
        held at ``pause``).  A fit that fails leaves the estimator unfitted."""
        pyro.set_rng_seed(config.seed)
        self.latent_dim_ = latent_dim
        if time_functions is not None:
            self.time_functions_ = time_functions
        self.model_, self.guide_ = self._build(self.schema_, self.data_.num_visits, latent_dim)
        stage = f"latent_dim={latent_dim}" + (" (a candidate of latent_dim='auto')"
                                              if self.options.latent_dim == "auto" else "")
        try:
            self._fit_modules(train, validation, config, imputation, stage, pause)
        except BaseException:  # no half-trained model behind a result of another fit
            self.model_ = self.guide_ = self.result_ = None
            raise

    def _fit_modules(self, train: LongitudinalData, validation: LongitudinalData | None, config: FitConfig,
                     imputation: ImputationConfig | None, stage: str, pause: Pause | None = None) -> None:
        """The fit of :meth:`_fit_latent` on the model and guide just built."""
        if self.missing != "impute":
            self.result_ = fit_svi(self.model_, self.guide_, train, validation, config,
                                   distributed_input=self.distributed_input, stage=stage, pause=pause)
        else:
            self.result_, self.imputation_trace_, _ = fit_with_imputation(
                self.model_, self.guide_, self.schema_, train, validation, config, imputation or ImputationConfig(),
                distributed_input=self.distributed_input)
        self.model_.cpu(), self.guide_.cpu()
        if self.result_.interrupted or (pause is not None and pause.held):
            return
        # the maximum likelihood moves use every subject, the held-out ones too (the convergence test is done)
        if self._refines(config.refine):
            refinement = wald.refine(self.model_, self.guide_, self._encoder_view(self.data_),
                                     self._refined_parameters(), seed=config.seed,
                                     num_shards=config.num_shards, distributed_input=self.distributed_input)
            # the encoder was amortised for the SVI parameters: fit it again for the refined ones
            encoder_fit = fit_svi(self.model_, self.guide_, train, validation,
                                  replace(config, kl_start=1.0, kl_warmup_epochs=0, linear_warmup_epochs=0,
                                          progress=False, checkpoint=None, resume=False),
                                  distributed_input=self.distributed_input, warn=False, guide_only=True)
            self.model_.cpu(), self.guide_.cpu()
            self.result_.refinement = {**refinement, "encoder_epochs": encoder_fit.epochs_run,
                                       "encoder_converged": encoder_fit.converged}
            # the directions in use are the re-fitted encoder's
            self.result_.latent_activity = encoder_fit.latent_activity
            self.result_.active_directions = encoder_fit.active_directions
            if not refinement["converged"] and is_main_process():
                warnings.warn(f"the maximum-likelihood refinement stopped after {refinement['steps']} Newton steps "
                              f"short of the maximum (log-likelihood {refinement['log_likelihood_before']:.2f} -> "
                              f"{refinement['log_likelihood_after']:.2f}): the estimates lie between the SVI fit and "
                              "the maximum likelihood estimate (result_.refinement); a fit from another seed may "
                              "start closer", ConvergenceWarning, stacklevel=4)
        elif self.model_.serial_outcomes and config.refine == "auto":  # (the refinement above moves tau too)
            self.result_.serial_refinement = wald.refine_serial_scale(
                self.model_, self.guide_, self._encoder_view(self.data_), seed=config.seed,
                num_shards=config.num_shards, distributed_input=self.distributed_input)

    def _refined_parameters(self) -> list[str]:
        """What the refinement moves besides the dispersions: the linear parts the model has."""
        return present(self.model_, LINEAR_PARAMETERS)

    def _refines(self, refine: bool | str) -> bool:
        """Whether the fit refines: ``refine=True``, or ``'auto'`` and a
        closed-form likelihood (:attr:`FitConfig.refine <pyro_dgmm.fit_config.FitConfig>`)
        for what the refinement moves (the dispersions too) on the data it
        uses: a check of less can pass where the refinement's own fails, and
        the refinement would then importance-sample (minutes, not seconds)."""
        if refine != "auto":
            return refine
        return marginal.closed_form_applies(self.model_, self.guide_, self._encoder_view(self.data_),
                                            self._refined_parameters(),
                                            distributed_input=self.distributed_input)

    def _encoder_view(self, data: LongitudinalData) -> LongitudinalData:
        """What the encoder reads: ``data`` itself, or (models fitted with the
        imputation loop) ``data`` completed by imputation from the fitted model."""
        if self.missing != "impute":
            return data
        return with_fill(data, self.schema_, impute_completed(self.model_, self.guide_, self.schema_, data))

    def _build(self, schema: DataSchema, num_visits: int, latent_dim: int):
        o = self.options
        model_options = {"activation": o.activation, **o.model_options}
        if self.time_functions_ is not None:  # the fitted (or, during a fit, the raced) structure
            model_options["time_functions"] = self.time_functions_
        model = self.model_class.from_schema(schema, latent_dim, **model_options)
        guide = AmortizedGuide.from_schema(schema, model.latent_dim, kind=o.encoder, hidden=o.encoder_hidden,
                                           covariance=o.covariance, activation=o.activation,
                                           num_visits=num_visits)
        return model, guide

    # ------------------------------------------------------------- results
    def _check_fitted(self) -> None:
        if self.model_ is None:
            raise NotFittedError("this DeepMixedModel is not fitted yet: call fit(df) first")
        if self.result_ is not None and self.result_.interrupted and not self._interrupt_warned:
            self._interrupt_warned = True
            warnings.warn(f"this model's fit was interrupted and did not converge ({self.result_.stop_reason}); "
                          "its estimates may be far from the optimum", ConvergenceWarning, stacklevel=3)

    def _draw_seed(self, seed: int | None) -> int:
        """The seed of post-fit draws: ``seed``, or the fit's when None."""
        return self.result_.config["seed"] if seed is None else check_int("seed", seed, minimum=0)

    def transform(self, df: pd.DataFrame, *, require_observed: bool = True) -> LongitudinalData:
        """Tensors for ``df`` with the fitted schema (scalers, levels, basis)."""
        self._check_fitted()
        return self.schema_.transform(self._labelled(df), require_observed=require_observed)

    def _labelled(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with its subjects' dropout patterns (pattern-mixture fits; unless it has them)."""
        if self.patterns_ is None or PATTERN_COLUMN in df.columns:
            return df
        return self.patterns_.label(df, self.id_col, self.schema_.relative_times(df), list(self.outcomes))

    def impute(self, df: pd.DataFrame | None = None, num_imputations: int = 5, *, mcmc_steps: int = 10,
               warmup_steps: int = 50, kernel: str = "mh", seed: int | None = None,
               delta=None, parameter_uncertainty=False) -> list[pd.DataFrame]:
        """``num_imputations`` completed copies of ``df`` (default: the training
        data) drawn from the fitted model, for analyses in other tools.

        Each is a long DataFrame (one row per visit, the user's ids and times)
        with every outcome completed, ``<outcome>_imputed`` flags, an
        ``imputation`` number and the subject's covariates; see :func:`~pyro_dgmm.impute.multiple_imputations`.
        Draws are seeded per block of subjects by ``seed`` (default: the
        fit's), as in :meth:`fitted_values`; under ``torch.distributed``
        the blocks are imputed on their processes and gathered.

        ``delta`` (default None: MAR) draws the values after each subject's
        dropout with the linear predictor moved by delta, for sensitivity
        to data missing not at random: a number, a dict outcome -> number,
        or a function of the post-dropout cells (see
        :func:`pyro_dgmm.sensitivity.delta_shift`); the frames then carry
        ``<outcome>_delta``, the shift applied to each cell.  Pool analyses
        of the frames with :func:`pyro_dgmm.sensitivity.analyze`.

        ``parameter_uncertainty=True`` makes the imputation *proper* in
        Rubin's sense, so that pooled intervals include the uncertainty of
        the parameters: data set m is imputed under its own parameters
        drawn from the Wald approximation of :meth:`standard_errors` (its
        default set: the linear fixed and random effects, the dispersions
        and Student-t df; computed on the training data and cached), with
        b drawn from its posterior under them and the missing cells from
        y | b under them (:func:`~pyro_dgmm.impute.multiple_imputations`).
        The networks' other weights stay at their estimates.  A
        :class:`~pyro_dgmm.results.StandardErrors` of this model may be
        passed instead (its parameters vary).  Costs the standard errors
        once plus about ``num_imputations`` times the MCMC work of the
        default (docs/missing.md).
        """
        self._check_fitted()
        num_imputations, mcmc_steps = check_int("num_imputations", num_imputations), check_int("mcmc_steps", mcmc_steps)
        warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        check_choice("kernel", kernel, KERNELS)
        seed = self._draw_seed(seed)
        if df is None and self.data_ is None:
            raise NotFittedError("this model was loaded from disk without its data: pass df")
        data = self.data_ if df is None else self.transform(df)
        models = self._parameter_draws(parameter_uncertainty, num_imputations, seed)

        baseline = self._baseline_frame(df) if callable(delta) else None

        def compute(part: LongitudinalData) -> pd.DataFrame:
            shift = None if delta is None else delta_shift(part, delta, baseline)
            if self.patterns_ is not None:
                def pattern_sets(model, count: int) -> list[pd.DataFrame]:
                    return pattern_mixture_imputations(
                        model, self.guide_, self.schema_, part, self._baseline_frame(df), self.patterns_, count,
                        num_particles=self.pattern_config_.num_particles, mcmc_steps=mcmc_steps,
                        warmup_steps=warmup_steps, kernel=kernel, shift=shift)

                frames = pd.concat(pattern_sets(self.model_, num_imputations) if models is None else
                                   [pattern_sets(m, 1)[0].assign(imputation=k + 1) for k, m in enumerate(models)])
            else:
                frames = pd.concat(multiple_imputations(self.model_, self.guide_, self._encoder_view(part),
                                                        num_imputations, mcmc_steps=mcmc_steps,
                                                        warmup_steps=warmup_steps, kernel=kernel, shift=shift,
                                                        models=models))
            if shift is not None:  # each imputed frame lists the visits in to_long's order
                per_visit = part.to_long({f"{name}_delta": shift[..., k] for k, name in enumerate(part.outcomes)})
                for name in part.outcomes:
                    frames[f"{name}_delta"] = np.tile(per_visit[f"{name}_delta"].to_numpy(), num_imputations)
            return frames

        stacked = map_subjects(compute, data, sort_by=["imputation", data.id_col, data.time_col], seed=seed,
                               distributed_input=self.distributed_input and df is None)
        if self.covariates:  # the subjects' covariates, for analyses of the completed data
            stacked = stacked.merge(self._baseline_frame(df), on=self.id_col, how="left", validate="many_to_one")
        return [frame.reset_index(drop=True) for _, frame in stacked.groupby("imputation", sort=True)]

    def population_mean(self, times, df: pd.DataFrame | None = None, *, num_samples: int = 500) -> pd.DataFrame:
        """Population mean curve: E[y(t)] averaged over b ~ N(0, I) and over the
        covariates of the subjects in ``df`` (default: the training data).

        :param times: a sequence of times of the training time column's type
            (numbers, or datetimes / timedeltas).
        :returns: DataFrame with the time column and one column per outcome.
        """
        self._check_fitted()
        if self.patterns_ is not None:
            raise ConfigError("population_mean averages each pattern's curve beyond its dropout, which a "
                              "pattern-mixture fit does not identify: use imputed_mean_curve() (ACMV imputations)")
        num_samples = check_int("num_samples", num_samples)
        base = self._baseline_frame(df)
        times = self.schema_.time_grid(times)  # a Series of the training time type
        grid = base.loc[base.index.repeat(len(times))].reset_index(drop=True)
        grid[self.time_col] = times.iloc[np.tile(np.arange(len(times)), len(base))].reset_index(drop=True)
        data = self.transform(grid, require_observed=False)
        means = data.response_values(marginal_means(self.model_, data, num_samples))  # (N, T, K), sorted
        order = np.argsort(self.schema_.relative_times(times.to_frame(self.time_col)), kind="stable")
        out = pd.DataFrame({self.time_col: times.iloc[order].reset_index(drop=True)})
        for k, name in enumerate(data.outcomes):
            out[name] = means[..., k].mean(0)
        return out

    def imputed_mean_curve(self, df: pd.DataFrame | None = None, num_imputations: int = 20, *,
                           seed: int | None = None, delta=None, **impute_options) -> pd.DataFrame:
        """The population mean at each visit time from :meth:`impute`'s data
        sets (under ACMV for a pattern-mixture fit: the mean over patterns),
        pooled by Rubin's rules: :func:`~pyro_dgmm.pattern_mixture.mean_curve`."""
        frames = self.impute(df, num_imputations, seed=seed, delta=delta, **impute_options)
        return mean_curve(frames, self.time_col, list(self.outcomes))

    def _baseline_frame(self, df: pd.DataFrame | None) -> pd.DataFrame:
        """One row per subject: id and covariates (training subjects by default)."""
        if df is None:
            if self.training_baseline_ is None:
                raise NotFittedError("this model was loaded from disk without its data: pass df")
            return self.training_baseline_
        columns = list(self.schema_.covariates)
        if self.patterns_ is not None and PATTERN_COLUMN not in columns:  # one pattern: not a covariate
            columns.append(PATTERN_COLUMN)
        return self._labelled(df).groupby(self.id_col, sort=True)[columns].first().reset_index()

    def __repr__(self) -> str:
        families = ", ".join(f"{name}: {family if isinstance(family, str) else get_family(family).name}"
                             for name, family in self.outcomes.items())
        head = f"DeepMixedModel(outcomes={{{families}}}, time_basis={self.time_basis!r}"
        if self.model_ is None:
            return f"{head}, latent_dim={self.options.latent_dim!r}, not fitted)"
        result = self.result_
        status = "converged" if result.converged else "not converged (see result_.stop_reason)"
        subjects = f"{self.data_.num_subjects} subjects, " if self.data_ is not None else ""
        return (f"{head}, latent_dim={self.latent_dim_} ({result.active_directions} active), fitted: "
                f"{subjects}{result.epochs_run} epochs, {status})")
