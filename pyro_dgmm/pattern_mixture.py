r"""Pattern-mixture imputation identified by the available-case missing-value
restriction (ACMV): ``fit(missing="pattern_mixture")``.

**Patterns.**  A subject's dropout time :math:`d_i` is the time of its last
row with any observed outcome.  Subjects observed at the last time of the
training grid are *completers*; the others are grouped by quantiles of
:math:`d_i` (ties kept together) into ``num_patterns - 1`` dropout patterns
``P1, P2, ...`` in order of dropout time (:class:`DropoutPatterns`).  Each
pattern must have at least ``min_subjects`` subjects.

**The model.**  A pattern-mixture model factors the joint distribution of
outcomes and pattern as :math:`p(y_i, D_i = j \mid x_i) = \pi_j(x_i)\,
p_j(y_i \mid x_i)`.  Here :math:`p_j` is the DGMM with the pattern entering
the fixed effects as one-hot indicators (the covariate ``dropout_pattern``,
treatment contrasts against the completers), while the random effects and
their map :math:`\mu_2(b_i, T_{ij})` are shared:

.. math:: \eta_{ijk} = \alpha_k + s_k\{\mu_1(x_i, e_{D_i}, T_{ij}) + \mu_2(b_i, T_{ij})\},
          \qquad b_i \sim \mathcal N(0, I_q).

Indicators rather than a decoder per pattern: every pattern then borrows
the shared networks and the random-effects structure (a pattern of 30
subjects could not train a decoder of its own), the pattern's mean curve
:math:`\mu_1(\cdot, e_j, t)` is still free to differ where it is observed
(through the dense part of :math:`\mu_1`; with ``covariate_time=True``
also by linear pattern-by-time terms), and any
:class:`~pyro_dgmm.model.MixedModel` subclass gets the pattern through its
covariates without change.  :math:`\pi_j(x)` is a multinomial logistic
regression of the pattern on the baseline covariates
(:meth:`DropoutPatterns.fit_probabilities`; the pattern shares without
covariates).

**Identification (ACMV; Little 1993, Molenberghs et al. 1998).**  Pattern
j's data say nothing about its outcomes after :math:`d_j`.  ACMV sets the
distribution of a value at time t given the past, in a pattern that has
dropped out before t, to that among the subjects still observed at t,
:math:`D \ge t` (D the dropout time):
:math:`p(y_t \mid y_{<t}, D = d) = p(y_t \mid y_{<t}, D \ge t)` for
:math:`d < t`.  Under MAR dropout this restriction holds, so the
pattern-mixture answers match the MAR fit's (Molenberghs et al. 1998 show
ACMV is MAR for monotone dropout).  The subjects observed at t are those of
the patterns :math:`A(t) = \{k: \text{some subject of pattern } k \text{ is
observed at } t\}` (completers, and dropout patterns whose latest dropout
is at or after t), of pattern k the share :math:`\rho_k(t)` whose dropout
time is at or after t (1 up to the pattern's earliest dropout; in between,
for a pattern that groups several dropout times, the training share),
so the law of :math:`y_t` given the past among them is the mixture

.. math:: p_j(y_t \mid y_{<t}, x) = \sum_{k \in A(t)} \omega_k(y_{<t}, x)\,
          p_k(y_t \mid y_{<t}, x), \qquad
          \omega_k \propto \pi_k(x)\, \rho_k(t)\, p_k(y_{<t} \mid x).

A pattern k observed at t only in part enters with its model's
:math:`p_k(y_t \mid y_{<t})`, which its subjects observed at t fitted,
and with :math:`\rho_k(t)` in place of :math:`P(D \ge t \mid y_{<t}, k)`,
which would need a model of dropout within the pattern: exact when each
pattern is one dropout time, an approximation otherwise (with the exact
conditionals of :func:`~pyro_dgmm.datasets.simulate_trial`: +0.001 in the
mean at visit 5, where leaving such patterns out of the donors, as an
earlier version did, gave -0.028 there and -0.044 with what earlier visits
passed on; docs/missing.md).  A subject's own pattern is a donor after its
dropout when other subjects of it are still observed.

In the DGMM, :math:`p_k(y_t \mid y_{<t}) = \int p_k(y_t \mid b)\,
p_k(b \mid y_{<t})\, db` with b shared across visits, so one draw of
:math:`y_t` is: draw a donor pattern k with probability :math:`\omega_k`
and b from :math:`p_k(b \mid y_{<t})` together, then :math:`y_t \sim p_k(y_t
\mid b)`.  The pair (k, b) is drawn by sampling-importance-resampling:
for each :math:`k \in A(t)`, S draws :math:`b^{(s)}` from the encoder
:math:`q(b \mid y_{<t}, e_k)` with weights

.. math:: w_k^{(s)} = \pi_k(x)\, \rho_k(t)\, \frac{p_k(y_{<t} \mid b^{(s)})\, \mathcal N(b^{(s)}; 0, I)}
          {q(b^{(s)} \mid y_{<t}, e_k)},

and one pair (k, s) drawn with probability proportional to
:math:`w_k^{(s)}`: k is then drawn with probability
:math:`\propto \pi_k \rho_k(t) \hat p_k(y_{<t})` (the importance estimate of the
marginal likelihood) and b from the weighted draws of pattern k's posterior.
Visits after dropout are imputed in time order, each conditioning on the
observed and already imputed past (:func:`acmv_completions`); missing
values before a subject's dropout are drawn from its own pattern given
all its observed values (MAR within the pattern).  With one pattern
(``num_patterns=1``) this is the MAR imputation of
:func:`~pyro_dgmm.impute.multiple_imputations`, drawn visit by visit.

**Departures from ACMV** (``impute(delta=...)``): each value after dropout
is drawn from the ACMV conditional with the linear predictor moved by delta
(:func:`~pyro_dgmm.sensitivity.delta_shift`), with the same random numbers
as its unshifted draw, which is what later visits condition on (so a
Gaussian value is its ACMV draw plus delta, as in the MAR case).

**The population mean curve** (:func:`mean_curve`): the mean of the
completed data at each visit time, :math:`\sum_j \hat\pi_j\, \hat
E_j[y_t]` over the patterns, pooled over imputations by Rubin's rules.

Example (the patterns of a small trial):

>>> from pyro_dgmm.datasets import simulate_trial
>>> df = simulate_trial(n_subjects=80, seed=0).data
>>> dropout = dropout_times(df["id"], df["time"].to_numpy(float), df[["y"]].notna().any(axis=1).to_numpy())
>>> patterns = DropoutPatterns.fit(dropout, end=6.0, config=PatternConfig(num_patterns=3, min_subjects=5))
>>> patterns.table()[["pattern", "subjects"]].to_dict("list")
{'pattern': ['P1', 'P2', 'completer'], 'subjects': [7, 10, 63]}
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .data import DataSchema, LongitudinalData
from .errors import ConfigError, DataError
from .impute import completed_frames, draw_missing, imputation_draws
from .likelihood import log_joint
from .options import check_int
from .posterior import DRAW_CELLS, subjects_per_chunk
from .sensitivity import pool

#: The covariate column that carries each subject's pattern into the model.
PATTERN_COLUMN = "dropout_pattern"
COMPLETER = "completer"
#: The label of the only pattern of ``num_patterns=1``.
SINGLE = "all"
#: Cells (particles x imputations x subjects x slots x outcomes) per chunk of an imputed visit: four
#: times the posterior's budget (fewer, larger network calls; 20% faster on one thread here).
_CELLS = 4 * DRAW_CELLS
_RIDGE = 1e-3  # on the slopes of the pattern-probability regression: finite when a covariate separates patterns


@dataclass
class PatternConfig:
    """Settings of ``fit(missing="pattern_mixture")``.

    :param num_patterns: patterns including the completers (1: one pattern
        for everybody, the MAR model).
    :param min_subjects: the fewest subjects a pattern may have (its mean
        curve is fitted from them); fewer is a :class:`~pyro_dgmm.errors.ConfigError`.
    :param num_particles: S, encoder draws of b per subject and donor
        pattern at each imputed visit (:func:`acmv_completions`).
    """

    num_patterns: int = 4
    min_subjects: int = 10
    num_particles: int = 200

    def __post_init__(self):
        """Check the settings (:mod:`pyro_dgmm.options`)."""
        self.num_patterns = check_int("num_patterns", self.num_patterns)
        self.min_subjects = check_int("min_subjects", self.min_subjects)
        self.num_particles = check_int("num_particles", self.num_particles)


def dropout_times(ids, times: np.ndarray, observed: np.ndarray) -> pd.Series:
    """Each subject's dropout time: the latest of ``times`` among its rows
    with ``observed`` True (any outcome observed), indexed by id (sorted);
    NaN for a subject with no observed row."""
    frame = pd.DataFrame({"id": np.asarray(ids), "time": np.where(observed, np.asarray(times, float), np.nan)})
    return frame.groupby("id", sort=True)["time"].max()


def _tolerance(value: float) -> float:
    return 1e-6 * max(1.0, abs(value))


@dataclass
class DropoutPatterns:
    """Fitted dropout patterns, in order of dropout time (completers last).

    Times are model times (:meth:`~pyro_dgmm.data.DataSchema.relative_times`:
    for numeric times, the user's minus the earliest training time).

    :param labels: pattern names (``P1``, ``P2``, ..., ``completer``; or ``all``).
    :param first: each pattern's earliest dropout time in training; all its
        subjects are observed at times up to it.
    :param last: each pattern's latest dropout time in training (the upper
        bound used to assign new subjects; none of its subjects is observed after it).
    :param counts: training subjects per pattern.
    :param end: the last time of the training grid (completers are observed there).
    :param coefficients: (P + 1, G - 1) slopes of the multinomial logit of the
        pattern on the covariates (intercept first; the first pattern is the
        reference); None before :meth:`fit_probabilities`.
    :param dropouts: each pattern's distinct dropout times in training, and
        ``dropout_counts`` its subjects at each: what :meth:`observed_share`
        reads (set by :meth:`fit` and :meth:`from_spec`).  The last pattern
        (completers, or the only one) is observed at every time.
    """

    labels: list[str]
    first: list[float]
    last: list[float]
    counts: list[int]
    end: float
    coefficients: list[list[float]] | None = None
    dropouts: list[list[float]] | None = None
    dropout_counts: list[list[int]] | None = None

    @classmethod
    def fit(cls, dropout: pd.Series, end: float, config: PatternConfig) -> "DropoutPatterns":
        """Group the dropout times ``dropout`` (one per subject) into
        ``config.num_patterns`` patterns (module docstring).

        Dropout times are cut at quantiles: each distinct time goes to group
        ``floor((G - 1) * m)`` where m is the share of dropouts before it plus
        half its own, so ties stay together and groups are near equal in
        size; groups left empty by ties are dropped.

        :raises ConfigError: a pattern has fewer than ``config.min_subjects`` subjects.
        """
        d = dropout.to_numpy(float)
        if config.num_patterns == 1:
            return cls._checked([SINGLE], [end], [end], [len(d)], end, config, d, [[end]], [[len(d)]])
        done = d >= end - _tolerance(end)
        values, counts = np.unique(d[~done], return_counts=True)
        groups = config.num_patterns - 1
        share = (np.cumsum(counts) - counts / 2) / max(1, counts.sum())
        _, group = np.unique(np.minimum((share * groups).astype(int), groups - 1), return_inverse=True)
        labels, first, last, sizes, times, at = [], [], [], [], [], []
        for g in range(len(np.unique(group))):
            labels.append(f"P{g + 1}")
            first.append(float(values[group == g].min()))
            last.append(float(values[group == g].max()))
            sizes.append(int(counts[group == g].sum()))
            times.append(values[group == g].tolist())
            at.append(counts[group == g].tolist())
        return cls._checked(labels + [COMPLETER], first + [end], last + [end], sizes + [int(done.sum())], end,
                            config, d, times + [[end]], at + [[int(done.sum())]])

    @classmethod
    def _checked(cls, labels, first, last, counts, end, config, d, dropouts, dropout_counts) -> "DropoutPatterns":
        patterns = cls([str(x) for x in labels], [float(x) for x in first], [float(x) for x in last],
                       [int(x) for x in counts], float(end),
                       dropouts=[[float(x) for x in row] for row in dropouts],
                       dropout_counts=[[int(x) for x in row] for row in dropout_counts])
        small = [(label, n) for label, n in zip(labels, counts) if n < config.min_subjects]
        if small:
            table = patterns.table().to_string(index=False)
            raise ConfigError(
                f"num_patterns={config.num_patterns} leaves pattern(s) "
                f"{', '.join(f'{label!r} with {n} subjects' for label, n in small)}, fewer than "
                f"min_subjects={config.min_subjects} (of {len(d)} subjects):\n{table}\n"
                "use fewer patterns (num_patterns) or a smaller min_subjects")
        return patterns

    @property
    def num_patterns(self) -> int:
        return len(self.labels)

    @property
    def categories(self) -> list[str]:
        """The levels of the pattern covariate, the reference (completers) first."""
        return self.labels[-1:] + self.labels[:-1]

    def assign(self, dropout: pd.Series) -> np.ndarray:
        """Pattern index of each dropout time (a completer at or after
        :attr:`end`; otherwise the first dropout pattern whose latest
        training dropout time is not earlier).

        :raises DataError: a subject without any observed outcome (the id named).
        """
        d = dropout.to_numpy(float)
        if np.isnan(d).any():
            raise DataError(f"subjects {dropout.index[np.isnan(d)][:5].tolist()} have no observed outcome, so no "
                            "dropout pattern: drop them or give them an observed visit")
        if self.num_patterns == 1:
            return np.zeros(len(d), dtype=int)
        index = np.searchsorted(np.asarray(self.last[:-1]) + _tolerance(self.end), d, side="left")
        index = np.minimum(index, self.num_patterns - 2)
        return np.where(d >= self.end - _tolerance(self.end), self.num_patterns - 1, index)

    def label(self, df: pd.DataFrame, id_col: str, relative_times: np.ndarray, outcomes: list[str]) -> pd.DataFrame:
        """``df`` with the column :data:`PATTERN_COLUMN` (a categorical,
        completers the reference level) holding each subject's pattern.

        :raises ConfigError: ``df`` already has a column of that name.
        """
        if PATTERN_COLUMN in df.columns:
            raise ConfigError(f"missing='pattern_mixture' adds the column '{PATTERN_COLUMN}' to the data; the data "
                              "already have one: rename it")
        observed = df[list(outcomes)].notna().any(axis=1).to_numpy()
        dropout = dropout_times(df[id_col].to_numpy(), relative_times, observed)
        labels = pd.Series(np.asarray(self.labels)[self.assign(dropout)], index=dropout.index)
        out = df.copy()
        out[PATTERN_COLUMN] = pd.Categorical(df[id_col].map(labels), categories=self.categories)
        return out

    def observed_share(self, times: torch.Tensor) -> torch.Tensor:
        r"""(N, T, G): :math:`\rho_g(t)`, the share of pattern g's training
        subjects still observed at each time t of ``times`` (N, T), i.e.
        whose dropout time is at or after t: 1 for the last pattern
        (completers, or the only pattern) and for a dropout pattern up to its
        earliest dropout time, 0 after its latest."""
        shares = []
        for times_g, counts_g in zip(self.dropouts[:-1], self.dropout_counts[:-1]):
            d = torch.as_tensor(times_g, dtype=times.dtype, device=times.device) + _tolerance(self.end)
            n = torch.as_tensor(counts_g, dtype=times.dtype, device=times.device)
            shares.append((times.unsqueeze(-1) <= d).to(times.dtype) @ n / n.sum())
        return torch.stack(shares + [torch.ones_like(times)], -1)

    def fit_probabilities(self, features: torch.Tensor, own: np.ndarray) -> "DropoutPatterns":
        r"""These patterns with :math:`\pi_j(x)` fitted: a multinomial logit of
        the pattern index ``own`` (N,) on ``features`` (N, P), by L-BFGS with
        a small ridge on the slopes (the pattern shares when P = 0)."""
        x = torch.cat([torch.ones(len(own), 1, dtype=torch.float64), features.to(torch.float64)], -1)
        target = torch.as_tensor(own, dtype=torch.long)
        weights = torch.zeros(x.shape[1], self.num_patterns - 1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = torch.cat([torch.zeros(len(own), 1, dtype=torch.float64), x @ weights], -1)
            loss = torch.nn.functional.cross_entropy(logits, target) + _RIDGE * weights[1:].pow(2).sum()
            loss.backward()
            return loss

        if self.num_patterns > 1:
            optimizer.step(closure)
        return replace(self, coefficients=weights.detach().tolist())

    def log_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \pi_j(x_i)`, (N, G), for ``features`` (N, P)."""
        weights = torch.as_tensor(self.coefficients, dtype=torch.float64).reshape(-1, self.num_patterns - 1)
        x = torch.cat([torch.ones(len(features), 1, dtype=torch.float64), features.to(torch.float64)], -1)
        logits = torch.cat([torch.zeros(len(features), 1, dtype=torch.float64), x @ weights], -1)
        return torch.log_softmax(logits, -1).to(features.dtype)

    def table(self) -> pd.DataFrame:
        """One row per pattern: ``pattern``, ``subjects``, ``share``, and the
        earliest and latest dropout time (model time)."""
        counts = np.asarray(self.counts)
        return pd.DataFrame({"pattern": self.labels, "subjects": counts, "share": counts / max(1, counts.sum()),
                             "first_dropout": self.first, "last_dropout": self.last})

    def to_spec(self) -> dict:
        """Plain values for a save file."""
        return {"labels": self.labels, "first": self.first, "last": self.last, "counts": self.counts,
                "end": self.end, "coefficients": self.coefficients, "dropouts": self.dropouts,
                "dropout_counts": self.dropout_counts}

    @classmethod
    def from_spec(cls, spec: dict) -> "DropoutPatterns":
        """The patterns saved by :meth:`to_spec`.  A file saved before
        ``dropouts`` existed gets each pattern observed up to its earliest
        dropout time only (what such a fit's imputations used)."""
        if spec.get("dropouts") is None:
            spec = {**spec, "dropouts": [[x] for x in spec["first"]], "dropout_counts": [[n] for n in spec["counts"]]}
        return cls(**spec)


def pattern_designs(schema: DataSchema, baseline: pd.DataFrame, patterns: DropoutPatterns,
                    ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The covariate design of subjects ``ids`` under every pattern,
    (G, N, P), and each one's own pattern index (N,), from ``baseline``
    (one row per subject: id, covariates and :data:`PATTERN_COLUMN`)."""
    rows = baseline.set_index(schema.id_col).loc[ids].reset_index()
    own = torch.as_tensor(pd.Categorical(rows[PATTERN_COLUMN].astype(str), categories=patterns.labels).codes,
                          dtype=torch.long)
    if (own < 0).any():
        raise DataError(f"column '{PATTERN_COLUMN}' has values other than the fitted patterns {patterns.labels}")
    if patterns.num_patterns == 1:  # no pattern covariate
        design = torch.as_tensor(schema.covariate_encoder.transform(rows), dtype=torch.float32)
        return design.unsqueeze(0), own
    designs = []
    for label in patterns.labels:
        rows[PATTERN_COLUMN] = pd.Categorical([label] * len(rows), categories=patterns.categories)
        designs.append(torch.as_tensor(schema.covariate_encoder.transform(rows), dtype=torch.float32))
    return torch.stack(designs), own


def _paired_draws(model, data: LongitudinalData, b: torch.Tensor,
                  shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unshifted and shifted completions of ``data`` at draws ``b`` from the
    same random numbers (:func:`~pyro_dgmm.impute.draw_missing`)."""
    state = torch.get_rng_state()
    plain = draw_missing(model, data, b)
    if shift is None:
        return plain, plain
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    shifted = draw_missing(model, data, b, shift)
    torch.set_rng_state(after)
    return plain, shifted


@torch.no_grad()
def acmv_completions(model, guide, schema: DataSchema, data: LongitudinalData, designs: torch.Tensor,
                     own: torch.Tensor, log_prior: torch.Tensor, share: torch.Tensor, b: torch.Tensor, *,
                     num_particles: int = 200,
                     shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Completed outcomes under ACMV (module docstring), one per draw of b.

    :param data: the subjects, their own patterns in the covariates.
    :param designs: (G, N, P) covariates under each pattern; ``own`` (N,) their own.
    :param log_prior: (N, G) :math:`\\log \\pi_k(x_i)`.
    :param share: (N, T, G) :math:`\\rho_k(t)`, the share of pattern k observed
        at each visit (:meth:`DropoutPatterns.observed_share`).
    :param b: (M, N, q) draws of b_i | y_i^o under the own pattern.
    :param shift: (N, T, K) delta added to the linear predictor of drawn cells.
    :returns: the completions (M, N, T, K) that later visits condition on,
        the same with ``shift`` applied (what is reported), and the donor
        pattern of every visit (M, N, T) (the own pattern up to dropout; after
        it, any pattern with subjects observed there, the own one included).
    """
    m, (n, t, _) = b.shape[0], data.y.shape
    completed, reported = _paired_draws(model, data, b, shift)
    donor = own.view(1, n, 1).expand(m, n, t).clone()
    slots = torch.arange(t)
    last = torch.where(data.mask.any(-1), slots, -1).amax(-1)
    for s in range(t):
        rows = torch.nonzero(data.visit_mask[:, s] & (last < s)).squeeze(-1)
        if rows.numel() == 0:
            continue
        size = subjects_per_chunk(num_particles * m, data, _CELLS)
        for chunk in rows.split(size):
            pattern, values, shifted = _acmv_visit(model, guide, schema, data, designs, log_prior, share,
                                                   completed, shift, chunk, s, num_particles)
            completed[:, chunk, s], reported[:, chunk, s], donor[:, chunk, s] = values, shifted, pattern
    return completed, reported, donor


def _acmv_visit(model, guide, schema, data, designs, log_prior, share, completed, shift, rows, s, particles):
    """Draws at visit slot ``s`` for subjects ``rows`` that dropped out before
    it, one per imputation: (donor pattern, value, shifted value), each (M, n[, K])."""
    m, n = completed.shape[0], len(rows)
    replicated = rows.repeat(m)  # position j * n + i: imputation j, subject rows[i]
    past = data.subset(replicated)
    past_cells = (torch.arange(data.num_visits) < s).view(1, -1, 1) & past.visit_mask.unsqueeze(-1)
    y = completed[:, rows].reshape(m * n, *completed.shape[2:])
    families = list(schema.families.values())
    encoded = torch.stack([f.encode(y[..., j]) for j, f in enumerate(families)], -1)
    center = torch.as_tensor(schema.encoder_center, dtype=y.dtype)
    scale = torch.as_tensor(schema.encoder_scale, dtype=y.dtype)
    past = replace(past, y=y, mask=past_cells, encoder_mask=None,
                   encoder_y=torch.where(past_cells, (encoded - center) / scale, torch.zeros_like(encoded)))
    donors = [g for g in range(designs.shape[0]) if (share[rows, s, g] > 0).any()]
    draws, log_w = [], []
    for g in donors:
        view = replace(past, covariates=designs[g][replicated])
        q = guide.posterior(view)  # the encoder reads every slot (the dense one needs them all)
        b = q.sample((particles,))  # (S, M n, q)
        # the likelihood of the past needs the slots before s only
        weight = (log_joint(model, b, _first_slots(view, s)) - q.log_prob(b) + log_prior[replicated, g]
                  + share[replicated, s, g].log())  # -inf where none of pattern g is observed
        draws.append(b)
        log_w.append(weight)
    pick = torch.multinomial(torch.softmax(torch.cat(log_w), 0).T, 1).squeeze(-1)  # over (pattern, particle)
    chosen = torch.stack(draws)[pick // particles, pick % particles, torch.arange(m * n)]  # (M n, q)
    pattern = torch.as_tensor(donors)[pick // particles]
    values = torch.empty(m * n, completed.shape[-1], dtype=completed.dtype)
    shifted = torch.empty_like(values)
    for g in pattern.unique().tolist():
        at = torch.nonzero(pattern == g).squeeze(-1)
        view = replace(past.subset(at), covariates=designs[g][replicated[at]])
        plain, moved = _paired_draws(model, view, chosen[at].unsqueeze(0),
                                     None if shift is None else shift[replicated[at]])
        values[at], shifted[at] = plain[0, :, s], moved[0, :, s]
    return pattern.view(m, n), values.view(m, n, -1), shifted.view(m, n, -1)


def _first_slots(view: LongitudinalData, s: int) -> LongitudinalData:
    """``view`` cut to its first ``s`` visit slots (the tensors with a time
    axis; covariates stay)."""
    return replace(view, **{name: getattr(view, name)[:, :s] for name in
                            ("y", "mask", "visit_mask", "times", "time_features", "encoder_y")},
                   time_values=None if view.time_values is None else view.time_values[:, :s])


def pattern_mixture_imputations(model, guide, schema: DataSchema, data: LongitudinalData,
                                baseline: pd.DataFrame, patterns: DropoutPatterns, num_imputations: int, *,
                                num_particles: int = 200, mcmc_steps: int = 10, warmup_steps: int = 50,
                                kernel: str = "mh", shift: torch.Tensor | None = None) -> list[pd.DataFrame]:
    """``num_imputations`` data sets completed under ACMV
    (:func:`acmv_completions`), as :func:`~pyro_dgmm.impute.multiple_imputations`
    returns them, plus ``donor_pattern``: the pattern whose model drew each
    visit (the subject's own before its dropout).  ``baseline`` as in
    :func:`pattern_designs`; the rest as in
    :func:`~pyro_dgmm.impute.multiple_imputations`."""
    designs, own = pattern_designs(schema, baseline, patterns, data.ids)
    log_prior = (patterns.log_probabilities(designs[-1]) if patterns.num_patterns > 1
                 else torch.zeros(data.num_subjects, 1))
    b = imputation_draws(model, guide, data, num_imputations, mcmc_steps=mcmc_steps, warmup_steps=warmup_steps,
                         kernel=kernel)
    _, reported, donor = acmv_completions(model, guide, schema, data, designs, own, log_prior,
                                          patterns.observed_share(data.times), b, num_particles=num_particles,
                                          shift=shift)
    return completed_frames(data, reported, {"donor_pattern": np.asarray(patterns.labels)[donor.numpy()]})


def mean_curve(frames: list[pd.DataFrame], time_col: str, outcomes: list[str], *,
               level: float = 0.95) -> pd.DataFrame:
    """The population mean curve from imputed data sets: at each visit time
    and for each outcome, the mean over subjects of the completed values,
    pooled over the data sets by Rubin's rules
    (:func:`~pyro_dgmm.sensitivity.pool`, complete-data variance
    :math:`s^2 / n`).

    :returns: one row per (time, outcome): ``estimate``, ``std_error``,
        ``between`` (B; :math:`\\sqrt{B/m}` is the Monte Carlo error of the
        estimate from using m imputations), ``lower``/``upper``, ``subjects``.
    """
    rows = []
    for name in outcomes:
        for time, _ in frames[0].groupby(time_col, sort=True):
            cells = [f.loc[f[time_col] == time, name] for f in frames]
            table = pool([c.mean() for c in cells], [c.var(ddof=1) / len(c) if len(c) > 1 else 0.0 for c in cells],
                         df_complete=max(1, len(cells[0]) - 1), level=level).iloc[0]
            rows.append({time_col: time, "outcome": name, "estimate": table["estimate"],
                         "std_error": table["std_error"], "between": table["between"], "lower": table["lower"],
                         "upper": table["upper"], "subjects": len(cells[0])})
    return pd.DataFrame(rows)
