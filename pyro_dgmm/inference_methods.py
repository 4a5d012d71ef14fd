"""Likelihood-based inference on the analyst facade: summary, SEs, AIC, comparison, K-fold.

:class:`LikelihoodMethods` is the part of
:class:`~pyro_dgmm.estimator.DeepMixedModel` that composes
:mod:`pyro_dgmm.marginal`, :mod:`pyro_dgmm.wald`,
:mod:`pyro_dgmm.comparison` and :mod:`pyro_dgmm.summary` on the training
data.  It holds no mathematics of its own: each method picks the data and
the defaults, calls one function and caches its result on the model until
the model is refitted (a new ``model_``) or refined in place
(:meth:`~LikelihoodMethods.refine_observation_model` clears the cache),
so that ``summary()``, ``information_criteria()`` and ``compare()`` after
one another pay for one pass of importance sampling.

It expects the facade's fitted state: ``model_``, ``guide_``, ``data_``,
``schema_``, ``result_``, ``distributed_input`` and ``_check_fitted()``.

Example (a linear mixed model's summary, briefly fitted):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> sim = simulate_linear(n_subjects=40, n_visits=5, seed=1)
>>> lmm = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age"],
...                      time_basis="poly(1)", latent_dim=2, model_options=dict(fixed_hidden=(), random_hidden=()))
>>> lmm = lmm.fit(sim.data, max_epochs=5, progress=False)
>>> table = lmm.summary(num_samples=100).to_frame()
>>> table.loc["fixed"].index.tolist()
[('y', 'Intercept'), ('y', 'time'), ('y', 'age')]
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd

from . import comparison, marginal, wald
from .data import LongitudinalData
from .diagnostics import InferenceWarning
from .errors import ConfigError, DataError, NotFittedError
from .fit import FitConfig
from .options import check_int, check_keywords
from .parameters import (COVARIATE_TIME_EFFECTS, LINEAR_FIXED_EFFECTS, LINEAR_PARAMETERS,
                         observation_parameter_names, present)
from .summary import summarize


class LikelihoodMethods:
    """Methods of :class:`~pyro_dgmm.estimator.DeepMixedModel` for
    likelihood-based inference on its training data (module docstring)."""

    def refine_observation_model(self, parameters: Sequence[str] | None = None, *, num_samples: int | None = None,
                                 seed: int = 0):
        """Move the observation-model parameters (dispersions, their slopes,
        Student-t df, the serial-process scales) to the maximum of the
        importance-sampled marginal likelihood on the training data, the
        networks held fixed (:func:`~pyro_dgmm.wald.maximize_marginal_likelihood`
        over :meth:`~pyro_dgmm.model.MixedModel.observation_parameters`).

        SVI moves Student-t degrees of freedom slowly (the ELBO's gradient
        in them is weak and noisy): it left them near 4.5 for a true 3 in our
        simulations, and this brought them to 2.8-3.2, with unchanged
        prediction intervals.  SVI also shrinks the serial-process scale tau
        towards 0 (docs/model.md, "Serial drift"); ``fit`` moves it to its
        maximum-likelihood value itself unless ``refine=False``
        (``FitResult.serial_refinement``).  On
        PBC, moving the dispersions and df as well made held-out predictions worse
        (the networks fitted to the training subjects leave residuals that
        look lighter-tailed and smaller than new subjects' errors;
        docs/prediction.md): there, the serial scale alone is refined.  A few Newton steps on the marginal
        likelihood, each with its Hessian over these parameters only:
        minutes for hundreds of subjects.

        :param parameters: the observation-model parameters to move, by name
            (``'serial_scale'``, ``'sigma_0'``, ...) or label (``'sigma[y]'``,
            ``'df[protime]'``, ``'serial tau[log_bili]'``), as
            ``model_.observation_parameters()`` lists them; default: all.
        :param num_samples: importance samples per subject; default
            :func:`~pyro_dgmm.wald.observation_samples`.
        :returns: the :class:`~pyro_dgmm.results.Maximization`.
        """
        data = self._training_data("refine_observation_model")
        names = observation_parameter_names(self.model_, parameters)
        self._inference_cache = {}  # the parameters move: earlier likelihoods and SEs no longer hold
        return wald.refine_observation(self.model_, self.guide_, data, names, num_samples=num_samples, seed=seed)

    def standard_errors(self, parameters: Sequence[str] | None = None, *, level: float = 0.95,
                        num_samples: int = 500, method: str = "autograd", seed: int = 0):
        """Wald standard errors from the observed information of the
        importance-sampled marginal likelihood on the training data
        (:func:`~pyro_dgmm.wald.standard_errors`, computed once per setting
        and cached); what ``predict(..., parameter_uncertainty=True)`` draws
        from and :meth:`summary` tabulates.

        :param parameters: model parameter names; default: the linear fixed
            and random effects the model has
            (:data:`~pyro_dgmm.parameters.LINEAR_FIXED_EFFECTS`, the
            covariate-by-time terms,
            :data:`~pyro_dgmm.parameters.LINEAR_RANDOM_EFFECTS`).  The
            observation-model parameters (dispersions, their slopes,
            Student-t df) are always included; all others are held at their
            estimates (SEs conditional on them).
        :returns: a :class:`~pyro_dgmm.results.StandardErrors` (``.summary()``
            for the table of working parameters; :meth:`summary` for data-scale
            coefficients).
        """
        data = self._training_data("standard_errors")
        if parameters is None:
            parameters = present(self.model_, LINEAR_PARAMETERS)
        key = ("standard_errors", tuple(parameters), level, num_samples, method, seed)
        return self._cached(key, lambda: wald.standard_errors(
            self.model_, self.guide_, data, parameters, level=level, num_samples=num_samples, method=method,
            seed=seed, distributed_input=self.distributed_input))

    def marginal_log_likelihood(self, df: pd.DataFrame | None = None, *, num_samples: int = 500, seed: int = 0):
        """The importance-sampled marginal log-likelihood per subject
        (:func:`~pyro_dgmm.marginal.marginal_log_likelihood`): ``.total``,
        ``.total_mc_sd``, ``.to_frame()`` with per-subject ESS and Pareto
        k-hat.  On the training data (cached), or on the subjects of ``df``
        (e.g. held out: the log predictive density of new subjects, a proper
        score for comparing models of any kind; not cached)."""
        if df is not None:
            self._check_fitted()
            return marginal.marginal_log_likelihood(self.model_, self.guide_, self.transform(df), num_samples,
                                                    seed=seed)
        data = self._training_data("marginal_log_likelihood")
        return self._cached(("marginal", num_samples, seed), lambda: marginal.marginal_log_likelihood(
            self.model_, self.guide_, data, num_samples, seed=seed, distributed_input=self.distributed_input))

    def population_curve(self, df: pd.DataFrame, *, parameters: Sequence[str] | None = None, scale: str = "link",
                         level: float = 0.95, num_samples: int = 500, seed: int = 0) -> pd.DataFrame:
        """The typical subject's curve (b = 0) at the covariates and times of
        ``df`` (outcome columns not needed) with pointwise delta-method bands
        (:func:`~pyro_dgmm.wald.population_curve`) from :meth:`standard_errors`
        over ``parameters``: by default every parameter of the fixed-effects
        net :math:`\\mu_1` (``fixed_effects.*``), as an honest band needs.

        :param scale: ``'link'`` or ``'response'``.
        :returns: one row per row of ``df``: id, time and per outcome
            ``<name>``, ``<name>_se``, ``<name>_lower``, ``<name>_upper``.
        """
        self._check_fitted()
        if parameters is None:
            parameters = [name for name, _ in self.model_.named_parameters() if name.startswith("fixed_effects.")]
            if not parameters:
                raise ConfigError(f"{type(self.model_).__name__} has no 'fixed_effects.*' parameters: pass "
                                  "parameters=[...] (names from model.model_.named_parameters())")
        errors = self.standard_errors(parameters, level=level, num_samples=num_samples, seed=seed)
        return wald.population_curve(self.model_, self.transform(df, require_observed=False), errors, scale=scale)

    def information_criteria(self, *, num_samples: int = 500, seed: int = 0, num_parameters: int | None = None):
        """Log-likelihood (:meth:`marginal_log_likelihood`), the number of
        identified parameters (:func:`~pyro_dgmm.comparison.count_parameters`,
        unless ``num_parameters`` is given), AIC and BIC on the training data,
        cached: a :class:`~pyro_dgmm.results.InformationCriteria`.

        :raises ConfigError: the model has too many parameters for a
            meaningful count (networks; see docs/inference.md).
        """
        data = self._training_data("information_criteria")
        key = ("criteria", num_samples, seed, num_parameters)
        return self._cached(key, lambda: comparison.criteria_from(
            self.marginal_log_likelihood(num_samples=num_samples, seed=seed), self.model_, data,
            num_parameters=num_parameters, seed=seed, distributed_input=self.distributed_input))

    def compare(self, other: "LikelihoodMethods", *, names: Sequence[str] = ("self", "other"),
                num_samples: int = 500, seed: int = 0):
        """This model against ``other``, fitted to the same data: both
        models' log-likelihoods, parameters, AIC and BIC, and (when their
        sizes differ) the likelihood-ratio test of the smaller against the
        larger, valid only if it is nested in it
        (:func:`~pyro_dgmm.comparison.compare`).

        :raises DataError: the two models were fitted to different data.
        """
        if not isinstance(other, LikelihoodMethods):
            raise ConfigError(f"compare needs another fitted DeepMixedModel, got {type(other).__name__}")
        mine, theirs = self._training_data("compare"), other._training_data("compare")
        if not (np.array_equal(mine.ids, theirs.ids) and mine.outcomes == theirs.outcomes
                and mine.observed_long().equals(theirs.observed_long())):
            raise DataError("compare: the two models were fitted to different data (subjects, outcomes or "
                            "observed values differ); likelihoods are comparable only on the same data")
        criteria = [model.information_criteria(num_samples=num_samples, seed=seed) for model in (self, other)]
        return comparison.compare(criteria, names)

    def summary(self, *, level: float = 0.95, num_samples: int = 500, seed: int = 0):
        r"""A statsmodels-style summary: ``print(model.summary())`` for text,
        ``.tables`` / ``.to_frame()`` for DataFrames
        (:class:`~pyro_dgmm.results.Summary`).

        It holds the fixed effects of the linear part on the data scale with
        Wald SEs and ``level`` intervals, the data-scale random-effects
        covariance of the linear part, the dispersions, the marginal
        log-likelihood with its Monte Carlo SD, AIC and BIC, the subjects
        and visits, convergence and the latent directions in use, and notes
        on what is missing and why.  Tables need linear parts
        (``model_options=dict(fixed_hidden=(), random_hidden=())`` and a
        ``poly(d)`` basis); SEs are at a maximum of the likelihood only
        after ``fit(..., refine=True)``.  For a linear mixed model (Gaussian
        outcomes, linear parts only) the log-likelihood is exact, and after
        the refinement the SEs invert the full observed information, the
        random-effects map and its cross terms with the fixed effects
        included, as MixedLM's ``bse`` does (:mod:`pyro_dgmm.marginal`,
        "Closed form"; where that information is not positive definite, at
        a maximum on the boundary such as a singular random-effects
        covariance, the conditional SEs below instead).  Otherwise
        the log-likelihood is importance-sampled and the SEs of the fixed
        effects and dispersions are conditional on the random-effects map
        (importance sampling puts spurious curvature along the flat
        rotations of b): at the variance estimates of a linear model they
        equal :math:`(\sum_i X_i^\top V_i^{-1} X_i)^{-1}`, within 0.25% of the
        full inverse (docs/inference.md).  One pass (:meth:`standard_errors`
        over those parameters, whose draws also give the log-likelihood),
        cached.
        """
        data = self._training_data("summary")
        errors, linear = None, present(self.model_, LINEAR_PARAMETERS)
        if self.result_.refinement and marginal.closed_form_applies(self.model_, self.guide_, data, linear):
            with warnings.catch_warnings():  # an indefinite full information falls back to the conditional SEs
                warnings.simplefilter("ignore", InferenceWarning)
                full = self.standard_errors(linear, level=level,
                                            num_samples=num_samples, seed=seed)
            errors = full if wald.at_maximum(full) else None
        if errors is None:
            fixed = present(self.model_, (*LINEAR_FIXED_EFFECTS, COVARIATE_TIME_EFFECTS))
            errors = self.standard_errors(fixed, level=level, num_samples=num_samples, seed=seed)
        self._inference_cache.setdefault(("marginal", num_samples, seed), errors.marginal)  # the same draws
        try:
            criteria, reason = self.information_criteria(num_samples=num_samples, seed=seed), None
        except ConfigError as error:
            criteria, reason = None, str(error)
        return summarize(self.model_, self.schema_, data, self.result_, errors, criteria, criteria_error=reason)

    def _training_data(self, method: str) -> LongitudinalData:
        """The training data, for likelihood-based inference (the likelihood
        reads observed cells only; the adapted proposal starts from the
        encoder and moves to each subject's posterior, whatever ``missing``)."""
        self._check_fitted()
        if self.data_ is None:
            raise NotFittedError(f"{method} needs the training data, which a model loaded from disk does not "
                                 "have: use the functions of pyro_dgmm.marginal / wald / comparison with "
                                 "model.transform(df)")
        return self.data_

    def _cached(self, key: tuple, compute):
        """``compute()``, remembered under ``key`` until the model is refitted or refined."""
        if getattr(self, "_cached_for", None) is not self.model_:
            self._inference_cache, self._cached_for = {}, self.model_
        if key not in self._inference_cache:
            self._inference_cache[key] = compute()
        return self._inference_cache[key]

    def kfold(self, df: pd.DataFrame, k: int = 5, *, num_samples: int = 1000, seed: int | None = None,
              **fit_overrides):
        r"""Exact K-fold cross-validation by subject: the ELPD of held-out
        subjects, where PSIS-LOO fails (docs/prediction.md, "ArviZ").

        The subjects of ``df`` (the training data, as passed to :meth:`fit`)
        are split at random into ``k`` folds; for each fold a copy of this
        model (same options, ``latent_dim`` and ``time_functions`` fixed at
        the fitted ``latent_dim_`` and ``time_functions_``, the same fit settings with ``fit_overrides``
        applied) is fitted to the other folds and each held-out subject
        scored by the importance-sampled marginal log-likelihood
        :math:`\log \hat p(y_i^o; \hat\theta_{-k})`
        (:func:`~pyro_dgmm.marginal.marginal_log_likelihood`), the density
        of a new subject's record.  The sum over subjects estimates the
        expected log predictive density for new subjects, with the
        network weights refitted, not held at their full-data values.

        :param k: number of folds (2 to the number of subjects).
        :param num_samples: importance samples per held-out subject.
        :param seed: seeds the split and the importance draws (default: the fit's).
        :returns: an ``arviz.ELPDData`` (:func:`~pyro_dgmm.convert.kfold_elpd`)
            for ``az.compare({"a": model_a.kfold(df), "b": model_b.kfold(df)})``;
            ``p_loo`` is the in-sample minus the held-out score of this fit.
            Its ``warning`` flag is set when a held-out estimate had Pareto k > 0.7.
        """
        self._check_fitted()
        from .convert import kfold_elpd
        from .marginal import marginal_log_likelihood

        seed = self._draw_seed(seed)
        num_samples = check_int("num_samples", num_samples)
        data = self.transform(df)
        k = check_int("k", k, minimum=2)
        if k > data.num_subjects:
            raise ConfigError(f"k={k} folds need at least {k} subjects; df has {data.num_subjects}")
        folds = np.random.default_rng(seed).permutation(np.arange(data.num_subjects) % k)
        check_keywords("kfold", fit_overrides, FitConfig.fields())
        config = replace(FitConfig(**self.result_.config), progress=False, checkpoint=None, resume=False,
                         **fit_overrides)
        kwargs = {**self._init_kwargs(), "latent_dim": self.latent_dim_}
        if self.time_functions_ is not None:  # the structure the fit chose, fixed like latent_dim
            kwargs["model_options"] = {**kwargs["model_options"], "time_functions": self.time_functions_}
        held_out, unreliable = np.empty(data.num_subjects), np.zeros(data.num_subjects, bool)
        subject = df[self.id_col].map({key: i for i, key in enumerate(data.ids)})
        with warnings.catch_warnings():  # unreliable estimates are flagged in the result
            warnings.simplefilter("ignore", InferenceWarning)
            for fold in range(k):
                rows = folds[subject.to_numpy()] == fold
                copy_ = type(self)(model_class=self.model_class, **kwargs)
                patterns = {} if self.pattern_config_ is None else {"patterns": self.pattern_config_}
                copy_.fit(df[~rows], config, missing=self.missing, **patterns)
                test = copy_.transform(df[rows])
                position = np.searchsorted(data.ids, test.ids)
                marginal = marginal_log_likelihood(copy_.model_, copy_.guide_, copy_._encoder_view(test),
                                                   num_samples, seed=seed)
                held_out[position] = marginal.per_subject.cpu().numpy()
                unreliable[position] = marginal.unreliable.cpu().numpy()
            full = marginal_log_likelihood(self.model_, self.guide_, self._encoder_view(data), num_samples,
                                           seed=seed)
        return kfold_elpd(held_out, data.ids, in_sample=full.per_subject.cpu().numpy(), folds=folds,
                          num_samples=num_samples, unreliable=unreliable)
