r"""Missing outcomes under MAR: imputation by Pyro's ``Predictive`` given
draws of b, and the talk's stochastic-approximation EM loop.

Random effects given the observed cells come from
:func:`~pyro_dgmm.posterior.sample_posterior`, the one posterior engine:
its ``'mh'`` sampler (:class:`~pyro_dgmm.posterior.IndependenceMetropolis`,
a Pyro ``MCMCKernel`` that proposes from the encoder and accepts per
subject, then takes a random-walk step) or ``'nuts'``, targeting

.. math:: \pi_i(b) \propto p(y_i^o \mid b; \theta)\, \mathcal N(b; 0, I)

(the likelihood of observed cells only, so valid under MAR).

Imputation.  Given draws of b, :func:`draw_missing` samples every cell
from the model with ``observe=False`` through ``pyro.infer.Predictive``,
keeps the observed values, and maps draws into each family's support.

The loop (:func:`fit_with_imputation`).  Step 0 fills each missing cell
with the outcome's median (the schema's filler).  Each round then (1) runs
SVI for ``epochs_per_round`` epochs with the encoder reading the completed
data and the likelihood on the observed cells only (the ELBO stays that of
the observed data); (2) moves the MCMC chain of b by ``mcmc_steps`` and
draws new values for the missing cells.  The stochastic-approximation step
:math:`\gamma_r` (1 for ``burn_in`` rounds, then :math:`(r - \text{burn\_in})^{-0.7}`)
is applied by *random replacement*: each missing cell takes the new draw
with probability :math:`\gamma_r` and keeps its previous value otherwise,
so the distribution of the fill is the SA mixture
:math:`(1-\gamma_r) F_{r-1} + \gamma_r F_r` while every filled value stays a
proper draw (averaging draws would shrink them towards the mean).

Under ``torch.distributed`` (:mod:`pyro_dgmm.parallel`) the chains are
sharded like the fit: each process moves the chains of the subjects in its
shards only, with draws seeded per (round, shard), so a run gives the same
result in one process or several with the same ``num_shards``; the trace's
means are over every process's subjects.

Example (two completed copies of the training data):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> frames = est.impute(num_imputations=2, mcmc_steps=2, warmup_steps=5)
>>> len(frames), bool(frames[0]["y"].notna().all())
(2, True)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from pyro.infer import Predictive

from .data import DataSchema, LongitudinalData
from .errors import ConfigError
from .fit import FitConfig, FitResult, ProgressBar, fit_svi
from .options import check_choice, check_float, check_int
from .parallel import Shards, all_reduce_sum, gather_objects, is_main_process, stream_seed
from .posterior import sample_posterior

#: MCMC kernels for b | y: independence Metropolis-Hastings or NUTS
#: (the samplers ``'mh'`` and ``'nuts'`` of :func:`~pyro_dgmm.posterior.sample_posterior`).
KERNELS = ("mh", "nuts")


@torch.no_grad()
def draw_missing(model, data: LongitudinalData, b: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """One completed outcome array per draw of b: observed cells keep their
    values, unobserved cells get draws from y | b via ``Predictive``.

    :param b: (S, N, q).
    :param shift: (N, T, K) added to the linear predictor before drawing
        (delta adjustment, :mod:`pyro_dgmm.sensitivity`); None: none.
    :returns: (S, N, T, K), every value inside its family's support.
    """
    predictive = Predictive(model, posterior_samples={"b": b.unsqueeze(-2)},
                            return_sites=[f"y_{name}" for name in model.outcomes])
    sites = predictive(data, observe=False, eta_shift=shift)
    draws = torch.stack([
        family.constrain(sites[f"y_{name}"]) for name, family in model.families.items()
    ], dim=-1)
    return torch.where(data.mask, data.y, draws.to(data.y.dtype))


def with_fill(data: LongitudinalData, schema: DataSchema, completed: torch.Tensor) -> LongitudinalData:
    """``data`` whose encoder reads ``completed`` (N, T, K) at every visit as if
    observed (the talk's fixed-length encoder input); the likelihood still
    uses ``data.mask``, the truly observed cells."""
    center = torch.as_tensor(schema.encoder_center, dtype=completed.dtype, device=completed.device)
    scale = torch.as_tensor(schema.encoder_scale, dtype=completed.dtype, device=completed.device)
    encoded = torch.stack([f.encode(completed[..., k]) for k, f in enumerate(schema.families.values())], -1)
    visits = data.visit_mask.unsqueeze(-1).expand_as(data.mask)
    encoder_y = torch.where(visits, (encoded - center) / scale, torch.zeros_like(encoded))
    return replace(data, encoder_y=encoder_y, encoder_mask=visits)


@dataclass
class ImputationConfig:
    """Settings of :func:`fit_with_imputation`.

    :param rounds: imputation rounds (each: SVI epochs, then an MCMC move
        of b and new draws of the missing cells).
    :param epochs_per_round: SVI epochs per round (round 1 also runs the KL
        and linear warm-ups of the fit config).
    :param later_lr_factor: learning rate of rounds 2.. relative to the fit
        config's (the networks are near a solution by then).
    :param mcmc_steps: MCMC transitions of b per round (the chain continues
        across rounds).
    :param burn_in: rounds with SA step 1 (full replacement).
    :param sa_exponent: gamma_r = (r - burn_in) ** -sa_exponent afterwards.
    :param kernel: ``'mh'`` or ``'nuts'``.
    """

    rounds: int = 12
    epochs_per_round: int = 5
    later_lr_factor: float = 0.3
    mcmc_steps: int = 10
    burn_in: int = 4
    sa_exponent: float = 0.7
    kernel: str = "mh"

    def __post_init__(self):
        """Check types and ranges (:mod:`pyro_dgmm.options`).  The SA steps
        gamma_r = (r - burn_in)^(-a) satisfy the Robbins-Monro conditions
        (sum gamma = inf, sum gamma^2 < inf) for a in (1/2, 1]."""
        for name in ("rounds", "epochs_per_round", "mcmc_steps"):
            setattr(self, name, check_int(name, getattr(self, name)))
        self.burn_in = check_int("burn_in", self.burn_in, minimum=0)
        self.later_lr_factor = check_float("later_lr_factor", self.later_lr_factor, low=0, low_open=True)
        self.sa_exponent = check_float("sa_exponent", self.sa_exponent, low=0.5, high=1, low_open=True)
        self.kernel = check_choice("kernel", self.kernel, KERNELS)

    def step_size(self, r: int) -> float:
        """gamma_r for round r = 1, 2, ..."""
        return 1.0 if r <= self.burn_in else float(r - self.burn_in) ** -self.sa_exponent

    def round_config(self, config: FitConfig, r: int) -> FitConfig:
        """SVI settings of round r: warm-ups in round 1 only."""
        if r == 1:
            warmup = max(config.kl_warmup_epochs, config.linear_warmup_epochs)
            return replace(config, max_epochs=warmup + self.epochs_per_round, progress=False)
        return replace(config, max_epochs=self.epochs_per_round, kl_start=1.0, kl_warmup_epochs=0,
                       linear_warmup_epochs=0, learning_rate=config.learning_rate * self.later_lr_factor,
                       seed=config.seed + r, progress=False)


@dataclass
class ImputationTrace:
    """Per-round record: SA step, mean MCMC acceptance rate, mean absolute
    change of the filled cells, held-out loss; total seconds."""

    step_size: list[float] = field(default_factory=list)
    acceptance_rate: list[float] = field(default_factory=list)
    fill_change: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Chain:
    """The imputation state of one group of subjects (training or held-out)."""

    data: LongitudinalData
    completed: torch.Tensor
    b: torch.Tensor | None = None

    def move(self, model, guide, schema, imputation: ImputationConfig, gamma: float) -> torch.Tensor:
        """One MCMC move of b, new draws, SA replacement; returns the sums
        (acceptance rates over subjects, subjects, absolute changes over
        missing cells, missing cells), float64 (4,)."""
        filled = with_fill(self.data, schema, self.completed)
        chain = sample_posterior(model, guide, filled, imputation.kernel, 1, warmup_steps=imputation.mcmc_steps - 1,
                                 initial_b=self.b)
        self.b = chain.b[-1]
        new = draw_missing(model, self.data, chain.b)[-1]
        replace_cell = (torch.rand(new.shape) < gamma) & ~self.data.mask
        previous, self.completed = self.completed, torch.where(replace_cell, new, self.completed)
        missing = ~self.data.mask & self.data.visit_mask.unsqueeze(-1)
        return torch.tensor([float(chain.acceptance.sum()), self.data.num_subjects,
                             float((self.completed - previous)[missing].abs().sum()), int(missing.sum())],
                            dtype=torch.float64)


def fit_with_imputation(model, guide, schema: DataSchema, train: LongitudinalData,
                        validation: LongitudinalData | None, config: FitConfig,
                        imputation: ImputationConfig, *,
                        distributed_input: bool = False) -> tuple[FitResult, ImputationTrace, torch.Tensor]:
    """The talk's stochastic-approximation EM loop (see the module docstring).

    Held-out subjects are imputed alongside (their own chains), so early
    stopping compares like with like.  Chains are kept for this process's
    shards only (the subjects :func:`~pyro_dgmm.fit.fit_svi` trains on
    here); ``distributed_input`` as in :func:`~pyro_dgmm.fit.fit_svi`.

    Ctrl-C during a round's fit ends the loop after that fit (its result
    has ``interrupted=True``).  Checkpoints (``config.checkpoint``) are
    refused: the chains carried between rounds are not in them.

    :returns: the fit history of the last round, the per-round trace
        (means over all processes' subjects), and the final completed
        training outcomes (N, T, K), gathered from every process (with
        ``distributed_input``: this process's subjects).
    """
    if config.checkpoint is not None:
        raise ConfigError(f"checkpoint={config.checkpoint!r}: the imputation loop (missing='impute') has no "
                          "checkpoints; fit without checkpoint")
    start = time.perf_counter()
    trace = ImputationTrace()
    shards = Shards.current(config.num_shards)
    groups = [_ShardedChains(train, shards, distributed_input)]  # step 0: missing cells hold the median filler
    if validation is not None:
        groups.append(_ShardedChains(validation, shards, distributed_input))
    result = None
    rounds = ProgressBar(range(1, imputation.rounds + 1), disable=not (config.progress and is_main_process()),
                  desc="imputation rounds")
    for r in rounds:
        filled = [with_fill(g.data, schema, g.completed()) for g in groups]
        result = fit_svi(model, guide, filled[0], filled[1] if validation is not None else None,
                         imputation.round_config(config, r), distributed_input=distributed_input, warn=False)
        model.cpu(), guide.cpu()
        if result.interrupted:  # Ctrl-C: no more rounds
            break
        gamma = imputation.step_size(r)
        moved = [g.move(model, guide, schema, imputation, gamma, seed=config.seed, round_=r, group=k)
                 for k, g in enumerate(groups)]
        acceptance, subjects, change, cells = all_reduce_sum(moved[0]).tolist()  # the training subjects
        acceptance, change = acceptance / subjects, (change / cells if cells else 0.0)
        trace.step_size.append(gamma)
        trace.acceptance_rate.append(acceptance)
        trace.fill_change.append(change)
        trace.validation_loss.append(result.validation_loss[-1][1] if result.validation_loss else float("nan"))
        rounds.set_postfix(accept=f"{acceptance:.2f}", change=f"{change:.3g}", gamma=f"{gamma:.2f}")
    trace.seconds = time.perf_counter() - start
    return result, trace, groups[0].completed() if distributed_input else groups[0].gathered()


class _ShardedChains:
    """One :class:`_Chain` per shard of this process for a group of subjects
    (training or held-out), laid out as :func:`~pyro_dgmm.fit.fit_svi` shards them."""

    def __init__(self, data: LongitudinalData, shards: Shards, distributed_input: bool):
        self.data, self.num_shards = data, shards.num_shards
        self.positions = {s: torch.as_tensor(index) for s, index in
                          shards.local_positions(data.num_subjects, distributed_input=distributed_input).items()}
        self.chains = {s: _Chain(data.subset(index), data.y[index].clone()) for s, index in self.positions.items()}

    def completed(self) -> torch.Tensor:
        """(N, T, K): the chains' fills at this process's subjects, the median filler elsewhere."""
        out = self.data.y.clone()
        for s, chain in self.chains.items():
            out[self.positions[s]] = chain.completed
        return out

    def gathered(self) -> torch.Tensor:
        """(N, T, K): every process's fills (every process holds the same subjects)."""
        out = self.data.y.clone()
        for part in gather_objects([(self.positions[s], c.completed) for s, c in self.chains.items()]):
            for index, completed in part:
                out[index] = completed
        return out

    def move(self, model, guide, schema, imputation: ImputationConfig, gamma: float, *, seed: int,
             round_: int, group: int) -> torch.Tensor:
        """Move every chain (draws seeded per round, group and shard); the summed totals of :meth:`_Chain.move`."""
        total = torch.zeros(4, dtype=torch.float64)
        for s, chain in self.chains.items():
            torch.manual_seed(stream_seed(seed, round_, group * self.num_shards + s, 2 * self.num_shards))
            total += chain.move(model, guide, schema, imputation, gamma)
        return total


def impute_completed(model, guide, schema: DataSchema, data: LongitudinalData, *, rounds: int = 3,
                     mcmc_steps: int = 10, kernel: str = "mh") -> torch.Tensor:
    """One completed outcome array (N, T, K) for ``data`` from a fitted model:
    ``rounds`` passes of (MCMC move of b, fresh draws of every missing cell),
    starting from the median fill, so the encoder input of a model fitted
    with :func:`fit_with_imputation` is built as in training."""
    chain = _Chain(data, data.y.clone())
    settings = ImputationConfig(mcmc_steps=mcmc_steps, kernel=kernel)
    for _ in range(rounds):
        chain.move(model, guide, schema, settings, gamma=1.0)
    return chain.completed


def multiple_imputations(model, guide, data: LongitudinalData, num_imputations: int = 5, *,
                         mcmc_steps: int = 10, warmup_steps: int = 50, kernel: str = "mh",
                         shift: torch.Tensor | None = None, models: list | None = None) -> list[pd.DataFrame]:
    r"""``num_imputations`` completed data sets drawn from the fitted model.

    One MCMC chain of b per subject (thinned by ``mcmc_steps``) gives one
    draw of b per data set; missing cells are then drawn from y | b, with
    the linear predictor moved by ``shift`` (N, T, K) where given (the delta
    adjustment of :func:`pyro_dgmm.sensitivity.delta_shift`).  The
    parameters stay at their estimates :math:`\hat\theta` (an *improper*
    imputation in Rubin's terms: the between-imputation variance misses
    their uncertainty).

    ``models`` (one per data set, e.g. :func:`~pyro_dgmm.predict.parameter_models`
    with parameters drawn from their Wald approximation) makes the imputation
    *proper*: data set m is a draw from the approximate posterior predictive

    .. math:: \theta^{(m)} \sim \mathcal N(\hat\theta, \widehat{\operatorname{cov}}),\quad
              b_i^{(m)} \sim p(b_i \mid y_i^o; \theta^{(m)}),\quad
              y_i^{mis,(m)} \sim p(y_i^{mis} \mid b_i^{(m)}; \theta^{(m)}),

    each b from its own chain under ``models[m]`` (``warmup_steps +
    mcmc_steps`` transitions, so about ``num_imputations`` times the MCMC
    work of the plug-in imputation).

    :returns: long DataFrames (one row per visit, the user's ids and
        times), each outcome completed, plus ``<outcome>_imputed`` flags
        (True where the value was drawn) and an ``imputation`` number.
    """
    if models is None:
        draws = imputation_draws(model, guide, data, num_imputations, mcmc_steps=mcmc_steps,
                                 warmup_steps=warmup_steps, kernel=kernel)
        return completed_frames(data, draw_missing(model, data, draws, shift))
    if len(models) != num_imputations:
        raise ConfigError(f"models: one per imputation needed, got {len(models)} for num_imputations={num_imputations}")
    completed = [draw_missing(m, data, imputation_draws(m, guide, data, 1, mcmc_steps=mcmc_steps,
                                                        warmup_steps=warmup_steps, kernel=kernel), shift)
                 for m in models]
    return completed_frames(data, torch.cat(completed))


def imputation_draws(model, guide, data: LongitudinalData, num_imputations: int, *, mcmc_steps: int = 10,
                     warmup_steps: int = 50, kernel: str = "mh") -> torch.Tensor:
    """(num_imputations, N, q): one draw of b_i | y_i^o per imputed data set,
    from one MCMC chain per subject thinned by ``mcmc_steps``."""
    draws = sample_posterior(model, guide, data, check_choice("kernel", kernel, KERNELS),
                             num_imputations * mcmc_steps, warmup_steps=warmup_steps).b
    return draws[mcmc_steps - 1::mcmc_steps]


def completed_frames(data: LongitudinalData, completed: torch.Tensor,
                     extra: dict[str, np.ndarray] | None = None) -> list[pd.DataFrame]:
    """The long DataFrames of :func:`multiple_imputations` from completed
    outcomes (M, N, T, K) (observed cells hold the data); ``extra`` adds
    per-visit columns, name -> (M, N, T) array."""
    completed = data.response_values(completed)  # float64
    frames = []
    for m in range(completed.shape[0]):
        values = {name: completed[m, ..., k] for k, name in enumerate(data.outcomes)}
        values.update({f"{name}_imputed": ~data.mask[..., k] for k, name in enumerate(data.outcomes)})
        values.update({name: array[m] for name, array in (extra or {}).items()})
        frame = data.to_long(values)
        frame.insert(0, "imputation", m + 1)
        frames.append(frame)
    return frames


def imputation_intervals(frames: list[pd.DataFrame], outcome: str, level: float = 0.95) -> pd.DataFrame:
    """Per-cell mean and central ``level`` interval across imputed data sets
    (rows where ``outcome`` was imputed)."""
    stacked = np.stack([f[outcome].to_numpy() for f in frames])
    tail = (1 - level) / 2
    first = frames[0]
    out = first.loc[first[f"{outcome}_imputed"], first.columns[1:3]].copy()
    rows = first[f"{outcome}_imputed"].to_numpy()
    out["mean"] = stacked[:, rows].mean(0)
    out["lower"] = np.quantile(stacked[:, rows], tail, axis=0)
    out["upper"] = np.quantile(stacked[:, rows], 1 - tail, axis=0)
    return out
