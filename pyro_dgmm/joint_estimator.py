r"""The analyst's facade of joint models: :class:`JointMixedModel`, a
:class:`~pyro_dgmm.estimator.DeepMixedModel` fitted to a long frame of
visits and an events frame (one row per subject), with dynamic predictions
of event probabilities (:meth:`JointMixedModel.predict_events`).

Dynamic prediction at a landmark :math:`t` for a subject with visits up to
:math:`t` and no event before :math:`t`: draws :math:`b^{(s)}` from
:math:`p(b \mid y_i^o(\le t), T_i > t)` (the posterior engine,
:func:`~pyro_dgmm.posterior.sample_posterior`, with the event-free term
:math:`-\sum_c H_{ic}(0, t)` in the likelihood), then per draw

.. math::

    S(u \mid t) = \exp\Big\{-\sum_c \int_t^u h_c(s)\, ds\Big\}, \qquad
    F_c(u \mid t) = \int_t^u h_c(s)\, S(s \mid t)\, ds,

the cumulative incidence of cause :math:`c` by :math:`u` (competing risks;
:math:`1 - S` for one cause), accumulated interval by interval between the
sorted horizons with Gauss-Legendre quadrature, so it is non-decreasing in
:math:`u` draw by draw.  The estimate is the mean over draws, the 95%
interval their 2.5% and 97.5% quantiles.  :math:`\sum_c F_c + S = 1` up to
quadrature error.

Example (a tiny fit; real ones run until they converge):

>>> from pyro_dgmm.datasets.joint import simulate_joint
>>> sim = simulate_joint(n_subjects=30, seed=0)
>>> est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2)
>>> est = est.fit(sim.data, events=sim.events, event_time="time", event_status="status", max_epochs=2, progress=False)
>>> history = sim.data[(sim.data.id == 0) & (sim.data.time <= 1.0)]
>>> pred = est.predict_events(history, landmark=1.0, horizons=[2.0, 3.0], num_samples=50, seed=0)
>>> list(pred.events.columns)
['id', 'horizon', 'cause', 'probability', 'lower', 'upper']
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import pyro
import torch

from .data import DataSchema
from .errors import ConfigError, DataError
from .estimator import DeepMixedModel
from .selection import default_latent_dim, fit_with_restarts
from .event_evaluation import Calibration, calibration, landmark_scores, subject_folds
from .events import QUADRATURE_NODES, EventSpec, JointData, event_arrays, gauss_legendre, with_events
from .fit import FitConfig
from .joint import JointGuide, JointModel, association_names, check_association, check_association_terms
from .options import check_int, check_keywords
from .parallel import hold_out
from .posterior import sample_posterior


#: The event submodel's linear coefficients (parameter names of :class:`~pyro_dgmm.joint.JointModel`)
#: that :meth:`JointMixedModel.event_standard_errors` gives Wald inference for.
EVENT_PARAMETERS = ("event_association", "event_covariates", "baseline_intercept", "baseline_log_time")

#: Draws x subjects x quadrature cells of the incidence per chunk of subjects
#: (about 100 MB of hazards at 15 nodes and one outcome).
PREDICTION_CELLS = 2 ** 23


@dataclass
class EventPrediction:
    """The result of :meth:`JointMixedModel.predict_events`.

    ``events``: one row per subject, horizon and cause (and ``'event-free'``):
    ``probability`` :math:`P(T \\le u, \\text{cause} \\mid T > t, \\text{history})`
    (for ``'event-free'``: :math:`P(T > u \\mid T > t, \\text{history})`) and its
    95% interval ``lower``, ``upper``.  ``trajectory``: the mean of every
    outcome at ``times`` given the same draws (with 95% interval).
    ``history``: the observed visits used; ``landmark``: t.
    """

    events: pd.DataFrame
    trajectory: pd.DataFrame
    history: pd.DataFrame
    landmark: float


@dataclass
class EventEvaluation:
    """The result of :meth:`JointMixedModel.evaluate_events`.

    ``scores``: :func:`~pyro_dgmm.event_evaluation.landmark_scores` (``auc``,
    ``brier`` at t + Δt, ``ibs`` over [t, t + Δt), ``ici``, ``e50``, ``e90``,
    ``at_risk``, ``events``); ``risk``: one row per subject at risk at t and
    horizon, the predicted probability of the event by then (``risk``) beside
    the subject's follow-up ``time`` and cause index ``status`` (0 censored);
    ``calibration``: the :class:`~pyro_dgmm.event_evaluation.Calibration` at
    t + Δt (:func:`~pyro_dgmm.plotting_joint.plot_calibration`).
    """

    scores: dict
    risk: pd.DataFrame
    calibration: Calibration


class JointMixedModel(DeepMixedModel):
    """A joint model of the outcomes of :class:`~pyro_dgmm.estimator.DeepMixedModel`
    and a time to event (:class:`~pyro_dgmm.joint.JointModel`).

    :param association: the outcome (default: the first) or the outcomes
        whose current linear predictors enter the hazard, each with its own
        coefficients (e.g. ``['log_bili', 'albumin']``).
    :param association_terms: ``('value',)`` (default) or any of ``'value'``,
        ``'slope'``, ``'area'``: the current value, the slope in time and the
        integral from 0 of that linear predictor, for every associated outcome
        (:class:`~pyro_dgmm.joint.JointModel`).
    :param baseline_hidden: widths of the network of log time in the log
        baseline hazard (``()``: Weibull).
    :param association_hidden: widths of a network of the associated
        outcomes' current values added to the log hazard beside the linear
        association (``()``: none; :class:`~pyro_dgmm.joint.JointModel`).
    :param quadrature_nodes: Gauss-Legendre nodes of each cumulative hazard.

    Other arguments as for :class:`~pyro_dgmm.estimator.DeepMixedModel`;
    ``latent_dim='auto'`` uses :func:`~pyro_dgmm.selection.default_latent_dim`
    without the search over larger ones.  The time column must be numeric;
    event times are on its scale, and the hazard's clock starts at its 0.
    """

    def __init__(self, *, association=None, association_terms=("value",), baseline_hidden=(),
                 association_hidden=(), quadrature_nodes: int = QUADRATURE_NODES, **options):
        super().__init__(**options)
        self.association = None if association is None else check_association(association, list(self.outcomes))
        self.association_terms = check_association_terms(association_terms)
        self.baseline_hidden = tuple(check_int(f"baseline_hidden[{k}]", w) for k, w in enumerate(baseline_hidden))
        self.association_hidden = tuple(check_int(f"association_hidden[{k}]", w)
                                        for k, w in enumerate(association_hidden))
        self.quadrature_nodes = check_int("quadrature_nodes", quadrature_nodes)
        self.event_spec_: EventSpec | None = None

    def fit(self, df: pd.DataFrame, config: FitConfig | None = None, *, events: pd.DataFrame | None = None,
            event_time: str | None = None, event_status: str | None = None, event_causes: Mapping | None = None,
            entry_time: str | None = None, preset: str | None = None, **config_overrides) -> "JointMixedModel":
        """Fit to the visits ``df`` and the event records ``events``.

        :param events: one row per subject (the id column, ``event_time``,
            ``event_status`` and optionally ``entry_time``).
        :param event_causes: status code -> cause name, e.g. ``{1:
            'transplant', 2: 'death'}`` (competing risks) or ``{1: 'event', 2:
            'event'}`` (composite); default: status 1 is the event, 0 censored.
        :param entry_time: column of left-truncation times (default: all at risk from 0).

        Fit settings as for :meth:`DeepMixedModel.fit
        <pyro_dgmm.estimator.DeepMixedModel.fit>` (SVI with ``missing='mask'``).
        ``refine=True`` then moves the event coefficients
        (:data:`EVENT_PARAMETERS`) with the longitudinal linear parts and the
        dispersions to the maximum of the importance-sampled marginal
        likelihood (about ten times the SVI fit's time on 500 subjects);
        ``'auto'`` (default) does not refine a joint model, whose likelihood
        has no closed form.

        :raises DataError: bad event records (:func:`~pyro_dgmm.events.event_arrays`).
        """
        if events is None or event_time is None or event_status is None:
            raise ConfigError("a joint model needs events=<frame>, event_time=<column> and event_status=<column>")
        check_keywords("fit", config_overrides, FitConfig.fields())
        if config is not None and preset is not None:
            raise ConfigError("pass either config or preset, not both")
        config = replace(config or FitConfig.from_preset(preset or "accurate"), **config_overrides)
        spec = EventSpec(event_time, event_status, None if event_causes is None else dict(event_causes), entry_time)
        schema = DataSchema.fit(df, id_col=self.id_col, time_col=self.time_col, outcomes=self.outcomes,
                                covariates=self.covariates, time_basis=self.time_basis, time_unit=self.time_unit)
        if schema.time_kind != "numeric":
            raise ConfigError(f"joint models need a numeric time column; '{self.time_col}' holds {schema.time_kind}s")
        data = schema.transform(df)
        entry, time, status = event_arrays(events, spec, self.id_col, df, self.time_col, data.ids)
        self.schema_, self.event_spec_ = schema, spec
        self.data_ = with_events(data, schema.time_basis, entry, time, status, nodes=self.quadrature_nodes,
                                 area_nodes=self._area_nodes)
        self.training_baseline_ = self._baseline_frame(df)
        self.num_visits_ = self.data_.num_visits
        self.missing, self.distributed_input, self._interrupt_warned = "mask", False, False
        self._event_rate = max(float((status > 0).sum()), 1.0) / float((time - entry).sum())
        self._time_scale = float(time.mean())
        train, validation = hold_out(self.data_, self.validation_fraction, config.seed)
        latent_dim = self.options.latent_dim
        if latent_dim == "auto":
            latent_dim = default_latent_dim(len(self.outcomes), schema.time_basis.num_features)
        self._keep(fit_with_restarts(partial(self._fit_candidate, train=train, validation=validation, imputation=None),
                                     latent_dim, config))
        return self

    def _build(self, schema, num_visits: int, latent_dim: int):
        o, causes = self.options, len(self.event_spec_.cause_names)
        model = JointModel.from_schema(schema, latent_dim, num_causes=causes, association=self.association,
                                       association_terms=self.association_terms,
                                       baseline_hidden=self.baseline_hidden,
                                       association_hidden=self.association_hidden, baseline_rate=self._event_rate,
                                       **{"activation": o.activation, **o.model_options})
        guide = JointGuide.from_schema(schema, latent_dim, num_causes=causes, time_scale=self._time_scale,
                                       kind=o.encoder, hidden=o.encoder_hidden, covariance=o.covariance,
                                       activation=o.activation, num_visits=num_visits)
        return model, guide

    def _refined_parameters(self) -> list[str]:
        """What ``refine`` moves besides the dispersions: the longitudinal
        linear parts and the event coefficients (:data:`EVENT_PARAMETERS`)."""
        return [*super()._refined_parameters(),
                *(name for name in EVENT_PARAMETERS if getattr(self.model_, name).numel())]

    @property
    def _area_nodes(self) -> int:
        """Gauss-Legendre nodes of the area integral: as many as of the cumulative hazard, 0 without an area term."""
        return self.quadrature_nodes if "area" in self.association_terms else 0

    def _init_kwargs(self) -> dict:
        """The constructor's options for the save file: the DGMM's and the event submodel's."""
        return {**super()._init_kwargs(),
                "association": None if self.association is None else list(self.association),
                "association_terms": list(self.association_terms), "baseline_hidden": list(self.baseline_hidden),
                "association_hidden": list(self.association_hidden),
                "quadrature_nodes": self.quadrature_nodes}

    def _extra_metadata(self) -> dict:
        """The event columns and cause names, and the scales the model and guide were built with."""
        spec = self.event_spec_
        return {"event_spec": {"time_col": spec.time_col, "status_col": spec.status_col,
                               "causes": None if spec.causes is None else list(spec.causes.items()),
                               "entry_col": spec.entry_col},
                "event_rate": self._event_rate, "time_scale": self._time_scale}

    def _restore_extra(self, extra: dict) -> None:
        spec = extra["event_spec"]
        causes = None if spec["causes"] is None else dict(spec["causes"])
        self.event_spec_ = EventSpec(spec["time_col"], spec["status_col"], causes, spec["entry_col"])
        self._event_rate, self._time_scale = extra["event_rate"], extra["time_scale"]

    def predict(self, history: pd.DataFrame, times, **options):
        """Not for joint models: use :meth:`predict_events`, whose trajectory
        is conditional on survival to the landmark.

        :raises ConfigError: always.
        """
        raise ConfigError("JointMixedModel.predict is not available: use predict_events(history, landmark, horizons), "
                          "whose .trajectory is the outcomes' prediction given survival to the landmark")

    def kfold(self, df: pd.DataFrame, k: int = 5, **options):
        """Not supported yet for joint models (the folds would need the event records);
        :func:`cross_validate_events` cross-validates the event predictions.

        :raises ConfigError: always.
        """
        raise ConfigError("kfold (the ELPD of held-out records) is not supported yet for JointMixedModel; "
                          "cross_validate_events scores held-out event predictions")

    @property
    def causes(self) -> list[str]:
        """The cause names, in the order of the hazards' cause axis."""
        self._check_fitted()
        return self.event_spec_.cause_names

    def event_coefficients(self) -> pd.DataFrame:
        """The event submodel's coefficients, one row per cause: ``alpha``
        (current value), ``alpha_slope``, ``alpha_area`` (slope, area, if
        fitted) (with several associated outcomes ``alpha[<outcome>]``, ...),
        ``gamma[<column>]`` (per SD of each encoded covariate),
        ``log_scale`` and ``log_time`` (Weibull :math:`\\rho - 1`)."""
        self._check_fitted()
        c = {k: v.detach().cpu().numpy() for k, v in self.model_.event_coefficients().items()}
        names = association_names(self.model_.association, self.association_terms)
        table = pd.DataFrame({name: c["alpha"][:, j] for j, name in enumerate(names)},
                             index=pd.Index(self.causes, name="cause"))
        for j, column in enumerate(self.schema_.covariate_encoder.columns):
            table[f"gamma[{column}]"] = c["gamma"][:, j]
        table["log_scale"], table["log_time"] = c["log_scale"], c["log_time"]
        return table

    def event_standard_errors(self, *, level: float = 0.95, num_samples: int = 500, seed: int = 0) -> pd.DataFrame:
        """Wald inference for the event submodel's coefficients: one row per
        cause and term of :meth:`event_coefficients` (``cause``, ``term``,
        ``estimate``, ``se``, ``z``, ``p_value``, ``lower``, ``upper``).

        From :meth:`standard_errors` over the association, covariate and
        Weibull baseline coefficients (:data:`EVENT_PARAMETERS`) jointly,
        with the outcomes' dispersions: the baseline hazard is free, as it
        should be for the association's SE (held fixed, that SE is too small);
        networks (a ``baseline_hidden`` one, the longitudinal ones) are held
        at their estimates.
        """
        self._check_fitted()
        names = [name for name in EVENT_PARAMETERS if getattr(self.model_, name).numel()]
        errors = self.standard_errors(names, level=level, num_samples=num_samples, seed=seed)
        summary = errors.summary()
        labels = {"event_association": [{"value": "alpha", "slope": "alpha_slope"}[t] for t in self.association_terms],
                  "event_covariates": [f"gamma[{c}]" for c in self.schema_.covariate_encoder.columns],
                  "baseline_intercept": ["log_scale"], "baseline_log_time": ["log_time"]}
        rows = {}  # (cause, term) -> row; a parameter's elements are (cause, term) in row-major order
        for name in names:
            terms = labels[name]
            for k, (_, row) in enumerate(summary.iloc[errors.slices[name]].iterrows()):
                rows[self.causes[k // len(terms)], terms[k % len(terms)]] = row.to_dict()
        return pd.DataFrame([{"cause": cause, "term": term, **rows[cause, term]} for cause in self.causes
                             for term in self.event_coefficients().columns if (cause, term) in rows])

    def landmark_data(self, history: pd.DataFrame, landmark: float) -> JointData:
        """Tensors of ``history`` (visits at or before ``landmark``) with the
        event record "event-free up to ``landmark``" (entry 0, follow-up t,
        censored): all the encoder and the likelihood may know at t.

        :raises DataError: a visit after ``landmark``.
        """
        self._check_fitted()
        landmark = float(landmark)
        times = pd.to_numeric(history[self.time_col])
        if (times > landmark).any():
            row = history.index[np.argmax((times > landmark).to_numpy())]
            raise DataError(f"history row {row!r} (subject {history.loc[row, self.id_col]!r}) has "
                            f"{self.time_col}={times.loc[row]:g}, after the landmark {landmark:g}")
        if not landmark > 0:
            raise ConfigError(f"landmark must be a positive time, got {landmark!r}")
        data = self.schema_.transform(history)
        n = data.num_subjects
        return with_events(data, self.schema_.time_basis, np.zeros(n), np.full(n, landmark), np.zeros(n, np.int64),
                           nodes=self.quadrature_nodes, area_nodes=self._area_nodes)

    def predict_events(self, history: pd.DataFrame, landmark: float, horizons, *, times=None,
                       num_samples: int = 500, method: str = "adaptive", seed: int | None = None) -> EventPrediction:
        """Dynamic prediction at ``landmark`` t (module docstring): for every
        subject of ``history`` and horizon u > t, the cumulative incidence of
        every cause by u given survival to t, and the event-free probability.

        :param history: visits up to t of subjects at risk at t (new or known).
        :param horizons: times u > t, any order.
        :param times: times for the predicted trajectory (default: 0 to the
            largest horizon, 50 points).
        :param num_samples: posterior draws of b per subject.
        :returns: an :class:`EventPrediction`.
        """
        data = self.landmark_data(history, landmark)
        landmark = float(landmark)
        horizons = np.sort(np.asarray(horizons, np.float64).ravel())
        if horizons.size == 0 or not (horizons > landmark).all():
            raise ConfigError(f"horizons must be times after the landmark {landmark:g}, got {horizons.tolist()}")
        seed = self._draw_seed(seed)
        draws = sample_posterior(self.model_, self.guide_, data, method, num_samples, seed=seed)
        with torch.no_grad(), pyro.validation_enabled(False):
            b = self._resampled(draws, seed)  # (S, N, q), equally weighted
            cells = num_samples * (self.quadrature_nodes + 1) ** 2 * max(1, self._area_nodes)
            size = max(1, PREDICTION_CELLS // cells)
            parts = [self._incidence(b[:, start:start + size], data.subset(slice(start, start + size)), landmark,
                                     horizons) for start in range(0, data.num_subjects, size)]
            incidence = np.concatenate([part[0] for part in parts], 1)
            survival = np.concatenate([part[1] for part in parts], 1)
            trajectory = self._trajectory(b, data, np.linspace(0.0, horizons[-1], 50) if times is None else times)
        # (N, H, C + 1, S): the causes then event-free, the draws last
        values = np.ascontiguousarray(np.moveaxis(np.concatenate([incidence, survival[..., None]], -1), 0, -1))
        n, h, k = values.shape[:3]
        low, high = np.quantile(values, [0.025, 0.975], axis=-1).astype(np.float64)
        events = pd.DataFrame({self.id_col: np.repeat(data.ids, h * k), "horizon": np.tile(np.repeat(horizons, k), n),
                               "cause": np.tile(self.causes + ["event-free"], n * h),
                               "probability": values.mean(-1).astype(np.float64).ravel(),
                               "lower": low.ravel(), "upper": high.ravel()})
        return EventPrediction(events, trajectory, history.copy(), landmark)

    def evaluate_events(self, df: pd.DataFrame, events: pd.DataFrame, *, landmark: float, horizon: float,
                        cause: str | None = None, grid: int = 6, num_samples: int = 200,
                        seed: int | None = None) -> EventEvaluation:
        r"""Score dynamic predictions at ``landmark`` t for the window (t, t +
        ``horizon``] on the subjects of ``events`` still at risk at t
        (follow-up beyond t), each predicted from their visits in ``df`` up to
        t only (:meth:`predict_events`), against their observed event records:
        time-dependent AUC, Brier score at t + Δt, integrated Brier score over
        [t, t + Δt) on ``grid`` equally spaced horizons, and calibration (ICI,
        E50, E90), all with inverse probability of censoring weights
        (:mod:`pyro_dgmm.event_evaluation`; docs/joint.md, "Evaluation").

        :param df: visits (any times: those after t are not used).
        :param events: their event records, with the columns named at :meth:`fit`.
        :param cause: the cause scored (its cumulative incidence; the other
            causes' events count as no event), or None for any event.
        :returns: an :class:`EventEvaluation`.
        :raises DataError: a subject at risk at t with no visit at or before t;
            bad event records (as at :meth:`fit`).
        """
        self._check_fitted()
        landmark, horizon = float(landmark), float(horizon)
        if cause is not None and cause not in self.causes:
            raise ConfigError(f"cause must be one of {self.causes} or None (any event), got {cause!r}")
        grid = check_int("grid", grid)
        ids = np.asarray(pd.unique(df[self.id_col]))
        _, time, status = event_arrays(events, self.event_spec_, self.id_col, df, self.time_col, ids)
        at_risk = time > landmark
        times = pd.to_numeric(df[self.time_col])
        history = df[df[self.id_col].isin(ids[at_risk]) & (times <= landmark)]
        seen = set(history[self.id_col].tolist())
        missing = [subject for subject in ids[at_risk].tolist() if subject not in seen]
        if missing:
            raise DataError(f"subject {missing[0]!r} is at risk at the landmark {landmark:g} but has no visit at or "
                            f"before it to predict from")
        horizons = landmark + horizon * np.arange(1, grid + 1) / grid
        prediction = self.predict_events(history, landmark, horizons, num_samples=num_samples, seed=seed)
        table = prediction.events
        if cause is None:
            table = table[table["cause"] == "event-free"].assign(probability=lambda t: 1.0 - t["probability"])
        else:
            table = table[table["cause"] == cause]
        risk = table.pivot(index=self.id_col, columns="horizon", values="probability").loc[ids[at_risk]]
        values = risk.to_numpy(np.float64).clip(0.0, 1.0)  # 1 - S can be -1e-16
        index = None if cause is None else 1 + self.causes.index(cause)
        window = dict(landmark=landmark, cause=index)
        scores = landmark_scores(time[at_risk], status[at_risk], values, horizons, **window)
        fit = calibration(time[at_risk], status[at_risk], values[:, -1], horizon=horizon, **window)
        long = pd.DataFrame({self.id_col: np.repeat(ids[at_risk], grid), "horizon": np.tile(horizons, at_risk.sum()),
                             "risk": values.ravel(), "time": np.repeat(time[at_risk], grid),
                             "status": np.repeat(status[at_risk], grid)})
        return EventEvaluation(scores, long, fit)

    def _resampled(self, draws, seed: int) -> torch.Tensor:
        """Equally weighted draws of b: weighted ones resampled multinomially."""
        b, log_w = draws.b, draws.log_weights
        generator = torch.Generator().manual_seed(seed)
        index = torch.multinomial(log_w.exp().T.cpu(), b.shape[0], replacement=True, generator=generator).T
        return torch.gather(b, 0, index.unsqueeze(-1).expand(-1, -1, b.shape[-1]).to(b.device))

    def _incidence(self, b: torch.Tensor, data: JointData, landmark: float, horizons: np.ndarray):
        """Per draw: cumulative incidences (S, N, H, C) and event-free
        probabilities (S, N, H), accumulated over [t, u_1], [u_1, u_2], ..."""
        s, n = b.shape[:2]
        q, causes = self.quadrature_nodes, len(self.causes)
        # rows of each subject: Q outer nodes then the interval's end, each with its own [start, end]
        repeat = torch.arange(n).repeat_interleave(q + 1)
        rows = data.subset(repeat)
        b_rows = b.repeat_interleave(q + 1, dim=1)
        survival_start = torch.ones(s, n, dtype=b.dtype)
        incidence_start = torch.zeros(s, n, causes, dtype=b.dtype)
        incidence, survival = [], []
        start = landmark
        for end in horizons:
            outer, outer_w = gauss_legendre(torch.tensor([start], dtype=torch.float64),
                                            torch.tensor([end], dtype=torch.float64), q)
            ends = torch.cat([outer[0], torch.tensor([end], dtype=torch.float64)]).repeat(n).numpy()
            at = with_events(rows, self.schema_.time_basis, np.full(n * (q + 1), start), ends,
                             np.zeros(n * (q + 1), np.int64), nodes=q, area_nodes=self._area_nodes)
            event = self.model_.event_distribution(b_rows, at)
            hazard = event.log_hazard.exp().reshape(s, n, q + 1, causes)
            cumulative = event.cumulative_hazard.sum(-1).reshape(s, n, q + 1)
            weights = outer_w[0].to(b.dtype)
            inside = (hazard[..., :q, :] * (-cumulative[..., :q]).exp().unsqueeze(-1) * weights[:, None]).sum(-2)
            incidence_start = incidence_start + survival_start.unsqueeze(-1) * inside
            survival_start = survival_start * (-cumulative[..., q]).exp()
            incidence.append(incidence_start)
            survival.append(survival_start)
            start = end
        return torch.stack(incidence, 2).numpy(), torch.stack(survival, 2).numpy()

    def _trajectory(self, b: torch.Tensor, data: JointData, times) -> pd.DataFrame:
        """Mean of every outcome at ``times`` per draw, averaged, with 95% intervals."""
        grid = torch.as_tensor(np.asarray(times, np.float64), dtype=data.times.dtype)
        n = data.num_subjects
        features = self.schema_.time_basis.transform(grid - data.time_origin).expand(n, -1, -1)
        view = replace(data, times=grid.expand(n, -1), time_features=features)
        means = self.model_.mean(b, view).numpy() + self.schema_.shift  # (S, N, G, K), the user's scale
        frames = []
        for k, name in enumerate(self.outcomes):
            low, high = np.quantile(means[..., k], [0.025, 0.975], axis=0)
            frames.append(pd.DataFrame({self.id_col: np.repeat(data.ids, len(grid)),
                                        self.time_col: np.tile(grid.numpy().astype(np.float64), n),
                                        "outcome": name, "mean": means[..., k].mean(0).ravel(),
                                        "lower": low.ravel(), "upper": high.ravel()}))
        return pd.concat(frames, ignore_index=True)



def cross_validate_events(make_estimator: Callable[[], JointMixedModel], df: pd.DataFrame, events: pd.DataFrame,
                          *, landmark: float, horizon: float, k: int = 5, seed: int = 0, cause: str | None = None,
                          grid: int = 6, num_samples: int = 200, **fit_options) -> pd.DataFrame:
    """K-fold cross-validation by subject of dynamic event predictions: for
    each fold, a fresh ``make_estimator()`` fitted to the other folds' visits
    and event records (``fit_options``: ``event_time=``, ``event_status=``,
    ``event_causes=``, fit settings) scores the held-out subjects at risk at
    ``landmark`` (:meth:`JointMixedModel.evaluate_events`).

    :param k: folds (:func:`~pyro_dgmm.event_evaluation.subject_folds` with ``seed``).
    :returns: one row per fold (``fold`` and the scores), then a row ``'mean'``
        (the fold average: the held-out estimate) and a row ``'pooled'``
        (the scores of all held-out predictions together).
    """
    id_col = make_estimator().id_col
    folds = subject_folds(events[id_col].to_numpy(), k, seed)
    rows, risks = [], []
    for fold in range(k):
        test_ids = events[id_col][folds == fold]
        in_test = df[id_col].isin(test_ids)
        estimator = make_estimator().fit(df[~in_test], events=events[folds != fold], **fit_options)
        result = estimator.evaluate_events(df[in_test], events[folds == fold], landmark=landmark, horizon=horizon,
                                           cause=cause, grid=grid, num_samples=num_samples, seed=seed)
        rows.append({"fold": fold, **result.scores})
        risks.append(result.risk)
        cause_index = None if cause is None else 1 + estimator.causes.index(cause)
    risk = pd.concat(risks, ignore_index=True)
    wide = risk.pivot(index=id_col, columns="horizon", values="risk")
    subjects = risk.drop_duplicates(id_col).set_index(id_col).loc[wide.index]
    pooled = landmark_scores(subjects["time"].to_numpy(), subjects["status"].to_numpy(), wide.to_numpy(),
                             wide.columns.to_numpy(np.float64), landmark=float(landmark), cause=cause_index)
    table = pd.DataFrame(rows)
    mean = table.drop(columns="fold").mean().to_dict()
    return pd.concat([table, pd.DataFrame([{"fold": "mean", **mean}, {"fold": "pooled", **pooled}])],
                     ignore_index=True)
