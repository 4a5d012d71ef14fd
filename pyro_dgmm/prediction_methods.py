"""Fitted values, dynamic predictions and exports on the analyst facade.

:class:`PredictionMethods` is the part of
:class:`~pyro_dgmm.estimator.DeepMixedModel` that composes
:mod:`pyro_dgmm.posterior`, :mod:`pyro_dgmm.predict`,
:mod:`pyro_dgmm.evaluation` and :mod:`pyro_dgmm.convert`: subject-specific
fitted values with intervals, dynamic predictions, landmark scores and
ArviZ ``InferenceData``.  It holds no mathematics of its own: each method
checks its options, picks the data (the training data by default; every
history encoded as in training, completed by imputation for
``missing='impute'``) and calls one function.

It expects the facade's fitted state: ``model_``, ``guide_``, ``data_``,
``schema_``, ``result_``, ``distributed_input`` and the helpers
``_check_fitted()``, ``_draw_seed()``, ``_encoder_view()``, ``transform()`` and
``standard_errors()``.

Example (fitted means with a 90% interval, briefly fitted):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> sim = simulate_linear(n_subjects=30, n_visits=4, seed=2)
>>> dgmm = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, time_basis="poly(1)")
>>> dgmm = dgmm.fit(sim.data, max_epochs=3, progress=False)
>>> dgmm.fitted_values(num_samples=20, levels=0.9).columns.tolist()
['id', 'time', 'y', 'y_fitted', 'y_lower_90', 'y_upper_90']
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch

from .data import LongitudinalData
from .errors import ConfigError, NotFittedError
from .options import check_bool, check_choice, check_float, check_int
from .parallel import map_subjects
from .posterior import fitted_means, subjects_per_chunk
from .predict import METHODS


def _check_levels(levels) -> list[float]:
    """Interval levels as a list of floats in (0, 1); None: no intervals."""
    if levels is None:
        return []
    levels = [levels] if isinstance(levels, (int, float)) and not isinstance(levels, bool) else levels
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise ConfigError(f"levels must be a level such as 0.9 or a list of them, got {levels!r}")
    return [check_float(f"levels[{j}]", level, low=0, high=1, low_open=True, high_open=True)
            for j, level in enumerate(levels)]


class PredictionMethods:
    """Methods of :class:`~pyro_dgmm.estimator.DeepMixedModel` for fitted
    values, predictions and exports (module docstring)."""

    def fitted_values(self, df: pd.DataFrame | None = None, *, num_samples: int = 500,
                      method: str = "importance", seed: int | None = None, levels=None,
                      predictive: bool = False) -> pd.DataFrame:
        r"""Subject-specific fitted means for every row (visit) of ``df``
        (default: the training data), observed or not.

        Returns a DataFrame sorted by subject and time with the id and time
        columns, each outcome's observed value (NaN if missing) and
        ``<outcome>_fitted``: E[y | y_i^o] on the response scale
        (probabilities for binary outcomes), by importance sampling
        (``method='importance'``) or from the encoder alone (``'encoder'``).
        The draws are seeded per block of subjects by ``seed`` (default: the
        fit's), so the values are reproducible and the same in one process
        or several (:func:`~pyro_dgmm.parallel.map_blocks`).  Under
        ``torch.distributed`` each process computes its share of the
        subjects and every process gets the gathered frame (after a fit
        with ``distributed_input``, by default: every process's own
        training subjects).

        :param levels: interval levels such as ``0.9`` or ``[0.5, 0.95]``:
            adds ``<outcome>_lower_<L>`` and ``<outcome>_upper_<L>`` (``L``
            the level in percent, e.g. ``90``), the equal-tailed credible
            interval of the subject's mean :math:`g^{-1}(\eta_{ijk}(b_i))`
            over ``num_samples`` draws of :math:`b_i \mid y_i^o`
            (:func:`~pyro_dgmm.predict.random_effects_posterior` with
            ``method``: adaptive importance resampling, or the encoder).
            It reflects the uncertainty about :math:`b_i` given the fitted
            networks, not that of the network weights.
        :param predictive: with ``levels``, also
            ``<outcome>_predictive_lower_<L>`` / ``_upper_<L>``: intervals of
            a new observation at the cell (the mean's uncertainty plus the
            observation noise), from one draw of y per draw of b.
        """
        self._check_fitted()
        num_samples = check_int("num_samples", num_samples)
        check_choice("method", method, ("importance", "encoder"))
        seed = self._draw_seed(seed)
        levels = _check_levels(levels)
        predictive = check_bool("predictive", predictive)
        if df is None and self.data_ is None:
            raise NotFittedError("this model was loaded from disk without its data: pass df")
        data = self.data_ if df is None else self.transform(df)

        def compute(part: LongitudinalData) -> pd.DataFrame:
            view = self._encoder_view(part)
            means = fitted_means(self.model_, self.guide_, view, num_samples, method)
            means = part.response_values(means)  # float64, the outcome shift added back
            columns = {f"{name}_fitted": means[..., k] for k, name in enumerate(part.outcomes)}
            if levels:
                columns.update(self._fitted_intervals(view, num_samples, method, levels, predictive))
            fitted = part.to_long(columns)
            return pd.concat([part.observed_long(), fitted.drop(columns=[part.id_col, part.time_col])], axis=1)

        return map_subjects(compute, data, sort_by=[data.id_col, data.time_col], seed=seed,
                            distributed_input=self.distributed_input and df is None)

    def _fitted_intervals(self, data: LongitudinalData, num_samples: int, method: str, levels: list[float],
                          predictive: bool) -> dict[str, np.ndarray]:
        """Interval columns of :meth:`fitted_values` for the subjects of
        ``data``: quantiles over draws of b of the mean (and of y), each (N, T)."""
        from .predict import predictive_draws
        from .posterior import sample_posterior

        probs = torch.tensor([p for level in levels for p in ((1 - level) / 2, (1 + level) / 2)], dtype=torch.float64)
        kinds = {"": "means", "predictive_": "draws"} if predictive else {"": "means"}
        parts = {kind: [] for kind in kinds}
        for chunk in data.chunks(subjects_per_chunk(num_samples, data)):
            # equally weighted draws: the adaptive importance sampler resamples, the encoder's are unweighted
            posterior = sample_posterior(self.model_, self.guide_, chunk,
                                         "adaptive" if method == "importance" else "encoder", num_samples)
            draws = predictive_draws(self.model_, chunk, posterior)
            for kind, attr in kinds.items():
                # nearest draws for y, so that bounds of discrete outcomes are values y can take
                parts[kind].append(torch.quantile(getattr(draws, attr).double(), probs, dim=0,
                                                  interpolation="linear" if kind == "" else "nearest"))
        columns = {}
        for kind, chunks in parts.items():
            bounds = data.response_values(torch.cat(chunks, dim=1))
            for j, level in enumerate(levels):
                label = f"{100 * level:g}"
                for k, name in enumerate(data.outcomes):
                    columns[f"{name}_{kind}lower_{label}"] = bounds[2 * j, ..., k]
                    columns[f"{name}_{kind}upper_{label}"] = bounds[2 * j + 1, ..., k]
        return columns

    def predict(self, history: pd.DataFrame, times, **options):
        """Dynamic predictions for the subjects of ``history`` (new or known;
        any number of rows, possibly none observed) at ``times``; see
        :func:`pyro_dgmm.predict.predict` for ``options`` (``relative``,
        ``levels``, ``num_samples``, ``method``, ``seed``, ...).
        Under ``torch.distributed`` every process passes the same
        ``history``, computes its blocks of subjects and gets the whole
        table, the same as one process computes with the same ``seed``.
        A model fitted with ``missing='impute'`` encodes each history
        completed by imputation, as in training.

        ``parameter_uncertainty=True`` propagates the uncertainty of the
        linear fixed and random effects and of the dispersions (and Student-t
        df) into the intervals: their standard errors are computed on the
        training data (:meth:`standard_errors`) and ``parameter_draws``
        (20) parameter vectors drawn from the Wald approximation; a
        :class:`~pyro_dgmm.results.StandardErrors` may be passed instead.
        Worth it for small training sets (docs/prediction.md).

        :returns: a :class:`~pyro_dgmm.predict.Prediction`: ``table`` (tidy:
            id, time, outcome, mean, interval bounds), ``draws``.
        """
        self._check_fitted()
        from .predict import predict

        if options.get("parameter_uncertainty") is not None:
            options["parameter_uncertainty"] = self._parameter_errors(options["parameter_uncertainty"])
        return predict(self.model_, self.guide_, self.schema_, history, times, encoder_view=self._encoder_view,
                       **options)

    def _parameter_draws(self, parameter_uncertainty, num_imputations: int, seed: int) -> list | None:
        """``impute(parameter_uncertainty=...)``'s models: None (False: plug-in
        parameters) or one copy of the model per imputation, its parameters
        drawn independently from the Wald approximation of :meth:`standard_errors`
        (True) or of the given :class:`~pyro_dgmm.results.StandardErrors`,
        seeded by ``seed`` (the same draws on every process)."""
        from .predict import parameter_models

        errors = self._parameter_errors(parameter_uncertainty)
        if errors is None:
            return None
        return parameter_models(self.model_, errors, num_imputations, seed=seed, antithetic=False)

    def _parameter_errors(self, parameter_uncertainty):
        """The ``parameter_uncertainty`` option of :meth:`predict` and ``impute``
        resolved: None for False (plug-in parameters), :meth:`standard_errors`
        for True, a given :class:`~pyro_dgmm.results.StandardErrors` as it is.

        :raises ConfigError: any other value."""
        from .results import StandardErrors

        if parameter_uncertainty is False:
            return None
        if parameter_uncertainty is True:
            return self.standard_errors()
        if isinstance(parameter_uncertainty, StandardErrors):
            return parameter_uncertainty
        raise ConfigError("parameter_uncertainty must be False, True or a StandardErrors of this model "
                          f"(from standard_errors()), got {parameter_uncertainty!r}")

    def landmark_evaluation(self, df: pd.DataFrame, landmark: float, **options):
        """Score dynamic predictions of the subjects of ``df`` from their
        history up to ``landmark``; see :func:`pyro_dgmm.evaluation.landmark_evaluation`
        (predictions sharded over processes and histories encoded as in
        :meth:`predict`)."""
        self._check_fitted()
        from .evaluation import landmark_evaluation

        return landmark_evaluation(self.model_, self.guide_, self.schema_, df, landmark,
                                   encoder_view=self._encoder_view, **options)

    def to_inference_data(self, df: pd.DataFrame | None = None, *, num_samples: int = 250, chains: int = 4,
                          method: str = "importance", num_proposals: int | None = None, seed: int | None = None,
                          errors=None):
        """ArviZ ``InferenceData`` of the fit on ``df`` (default: the training
        data): ``chains`` independent runs of the posterior sampler of b
        (``method``, :func:`~pyro_dgmm.predict.random_effects_posterior`),
        ``num_samples`` draws each, with posterior predictive, observed data
        and pointwise log-likelihood on the observed cells, per-subject
        sampler diagnostics and the global parameters; see
        :func:`pyro_dgmm.convert.to_inference_data` for the layout.  The
        posterior of b encodes the data as :meth:`fitted_values` does
        (completed by imputation for ``missing='impute'``); the likelihood
        uses the observed cells.  Memory: the draws of every chain at every
        visit slot are held until the export, about ``12 * chains *
        num_samples * N * T * K`` bytes (N subjects, T slots, K outcomes).

        :param num_samples: draws per chain.
        :param num_proposals: importance proposals per subject and round
            (default ``4 * num_samples``): with an importance ESS well above
            ``num_samples`` the resampled draws are nearly all distinct, so
            ArviZ's ESS, which treats them as independent, is not inflated
            by repeats (compare ``sample_stats.importance_ess`` with the draws).
        :param seed: chain c draws with the torch seed ``(seed, c)``
            (default: the fit's seed); the global random state is left as it was.
        :param errors: ``True`` to compute :meth:`parameter_errors`, or a
            :class:`~pyro_dgmm.results.StandardErrors`: Wald draws of its
            parameters go into ``posterior.theta``.
        """
        self._check_fitted()
        from .convert import to_inference_data
        from .predict import posterior_predictive

        num_samples, chains = check_int("num_samples", num_samples), check_int("chains", chains)
        num_proposals = 4 * num_samples if num_proposals is None else check_int("num_proposals", num_proposals)
        check_choice("method", method, METHODS)
        seed = self._draw_seed(seed)
        if errors is True:
            errors = self.parameter_errors(seed=seed)
        if df is None and self.data_ is None:
            raise NotFittedError("this model was loaded from disk without its data: pass df")
        data = self._encoder_view(self.data_ if df is None else self.transform(df))
        runs = []
        for chain in range(chains):
            with torch.random.fork_rng():
                torch.manual_seed(int(np.random.SeedSequence([seed, chain]).generate_state(1)[0]))
                runs.append(posterior_predictive(self.model_, self.guide_, data, num_samples=num_samples,
                                                 method=method, num_proposals=num_proposals))
        attrs = {"model_class": self.model_class.__qualname__, "missing": self.missing,
                 "fit": {k: v for k, v in self.result_.config.items() if k != "device"},
                 "epochs_run": self.result_.epochs_run, "stop_reason": self.result_.stop_reason}
        return to_inference_data(runs, self.schema_, model=self.model_, errors=errors or None, seed=seed,
                                 attrs=attrs)
