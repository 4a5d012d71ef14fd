r"""Stochastic variational inference for a mixed model and its amortised guide.

The objective per optimisation step, for a minibatch :math:`B` of the
:math:`N` training subjects, is the talk's penalised negative ELBO divided
by :math:`N` (a per-subject scale, so learning rates do not depend on
:math:`N`):

.. math::

    \mathcal L = \frac{1}{N}\Big[-\frac{N}{|B|}\sum_{i \in B}
        \Big(\frac1M \sum_{m=1}^M \log p(y_i^o \mid b_i^{(m)}; \theta)
        - \beta\, \mathrm{KL}\big(q(b_i \mid y_i; \phi) \,\|\, p(b_i)\big)\Big)\Big]
        + \kappa\,(\lVert W_\theta \rVert^2 + \lVert W_\phi \rVert^2)

with :math:`M` = ``num_particles``, :math:`\beta` the KL-annealing weight
(rising linearly from ``kl_start`` to 1 over ``kl_warmup_epochs``) and
:math:`\kappa` = ``ridge`` on the weight matrices of all networks (biases
and dispersion parameters are not penalised).  ``elbo='meanfield'`` uses
:class:`~pyro_dgmm.elbo.MeanFieldELBO` (Pyro's ``TraceMeanField_ELBO``,
closed-form KL as in the talk, without a host read-back per step);
``elbo='trace'`` uses ``Trace_ELBO`` (Monte Carlo KL); ``elbo='iwae'``
uses :class:`~pyro_dgmm.elbo.ImportanceWeightedELBO`, the importance-weighted
bound with :math:`M` particles, tighter than the ELBO (the held-out loss is
then that bound too).

The loop optimises with Adam (:class:`~pyro_dgmm.optim.PackedAdam`: all
parameters in one flat buffer) on ``elbo.differentiable_loss`` (the Pyro
idiom for custom objectives), clips gradient norms and follows a cosine
learning-rate schedule over ``max_epochs``.  The fit runs until a
noise-aware convergence test on the monitored loss (the negative ELBO of
held-out subjects, or the training loss when nobody is held out) is met,
and ``max_epochs`` is a cap, not the length of the fit:

1. *Plateau.* After KL annealing, every evaluation regresses the last
   ``patience`` monitored losses on their epochs
   (:func:`~pyro_dgmm.convergence.trend_test`).  The
   trend is flat when the improvement it predicts over as many epochs
   again is below two of its standard errors or below ``tolerance`` nats
   per observed value.  The first flat trend is the noise floor of the
   current learning rate, not convergence: the cosine is cut short and
   decays to its floor over ``anneal_fraction`` times the epochs run.
2. *Convergence.* From the floor on, the fit stops at the next flat trend:
   it has converged.  Reaching ``max_epochs`` before that, stopping during
   KL annealing, or never improving on the held-out loss is reported in
   :attr:`~pyro_dgmm.results.FitResult.converged` and warned about
   (:class:`~pyro_dgmm.errors.ConvergenceWarning`).

The settings are a :class:`~pyro_dgmm.fit_config.FitConfig` (re-exported
here); the stopping rule's pieces are in :mod:`pyro_dgmm.convergence`.
The parameters with the best held-out loss are restored at the end.
A long fit can write checkpoints and be resumed from one to the same
result, and Ctrl-C stops it cleanly after the current step (see
:func:`fit_svi`, :mod:`pyro_dgmm.checkpoint`, :mod:`pyro_dgmm.interrupt`).
Afterwards the fit measures how many latent directions the encoder uses
(:func:`latent_activity`) and warns
(:class:`~pyro_dgmm.errors.LatentDimensionWarning`) when all of them are:
the data may support more.

Example (a preset, and the trend test of the stopping rule on a falling
and on a flat loss):

>>> FitConfig.from_preset("fast").max_epochs
200
>>> trend_test([(e, 10.0 - 0.5 * e) for e in range(10)], tolerance=1e-4)
True
>>> trend_test([(e, 1.0 + 0.01 * (-1) ** e) for e in range(10)], tolerance=1e-4)
False
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import pyro
import torch
from tqdm.auto import tqdm

from .checkpoint import fingerprint, read_checkpoint, rng_state, set_rng_state, write_checkpoint
from .convergence import CosineDecay, trend_test
from .data import LongitudinalData
from .errors import ConfigError, ConvergenceWarning, FitError, LatentDimensionWarning
# FitConfig, PRESETS and ELBOS are re-exported: ``from pyro_dgmm.fit import FitConfig`` is the documented import.
from .fit_config import ELBOS, PRESETS, FitConfig  # noqa: F401
from .interrupt import deferred_interrupt
from .optim import PackedAdam
from .parallel import Shards, all_reduce_sum, is_main_process, reseed, stream_seed, world
from .posterior import subjects_per_chunk
from .results import FitResult


class ProgressBar(tqdm):
    """tqdm's progress bar without its monitor thread (which only forces a
    redraw of a bar stalled for ``maxinterval`` seconds, and would outlive
    the fit): a process that has fitted stays single-threaded, which is
    what lets the next race fork (:func:`~pyro_dgmm.forked.fork_helps`)."""

    monitor_interval = 0


def ridge_weights(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weight matrices of ``modules`` (parameters named ``*weight``)."""
    return [p for m in modules for n, p in m.named_parameters() if n.endswith("weight")]


@dataclass
class Pause:
    """A fit held after ``epochs`` epochs, to be continued later in memory
    (as a checkpoint does on disk): ``fit_svi(..., pause=Pause(60))`` stops
    after epoch 60 and leaves its full state in :attr:`state` (the result is
    partial: no best parameters restored, no warnings, no diagnostics);
    passing the same object again continues from there, to the result the
    fit would have had without the pause.  :class:`~pyro_dgmm.selection.TimeFunctionRace`
    uses it to train two model structures side by side."""

    epochs: int
    state: dict | None = None

    @property
    def held(self) -> bool:
        """Whether a fit is held here, waiting to be continued."""
        return self.state is not None


def fit_svi(model, guide, train: LongitudinalData, validation: LongitudinalData | None = None,
            config: FitConfig | None = None, *, distributed_input: bool = False, warn: bool = True,
            guide_only: bool = False, stage: str = "", pause: Pause | None = None) -> FitResult:
    """Fit ``model`` and ``guide`` to ``train`` in place; return a :class:`FitResult`.

    Runs unchanged in one process or in each of several ``torch.distributed``
    processes (see :mod:`pyro_dgmm.parallel`): every process passes the same
    ``train``/``validation`` and computes the shards it owns.

    :param distributed_input: each process passes only its own subjects
        (partitioned input, :mod:`pyro_dgmm.partitioned`); they form its
        shards, and N is the number of subjects over all processes.

    :param validation: held-out subjects for the convergence test (None:
        the test watches the training loss, and the final parameters are kept).
    :param guide_only: train the encoder alone, the model's parameters held
        fixed (to re-amortise the guide after the model was moved, e.g. by
        the maximum-likelihood refinement).
    :param warn: warn (:class:`~pyro_dgmm.errors.ConvergenceWarning`,
        :class:`~pyro_dgmm.errors.LatentDimensionWarning`) about what the
        result says; off for fits that are one step of a longer procedure
        (the imputation loop's rounds).
    :param stage: which fit of a longer procedure this is (e.g. a candidate
        of ``latent_dim='auto'``), recorded in the checkpoint.
    :param pause: hold the fit after ``pause.epochs`` epochs, its state in
        ``pause.state``, or continue the fit held there (:class:`Pause`).

    *Checkpoints* (``config.checkpoint``, :mod:`pyro_dgmm.checkpoint`) are
    written every ``checkpoint_every`` epochs, when the fit stops and when
    it is interrupted; ``config.resume`` continues from one.  Every step
    draws from generators seeded by its global step number
    (:func:`~pyro_dgmm.parallel.stream_seed`) and every evaluation from a
    fixed seed, so beyond parameters, optimiser and schedule a checkpoint
    needs only the per-shard generators of the subject order (and the
    order of an epoch it stopped inside) to continue exactly.

    *Ctrl-C* (SIGINT, in a single-process fit on the main thread; see
    :mod:`pyro_dgmm.interrupt`) stops the fit after the current step (a
    :class:`KeyboardInterrupt` raised inside a step, e.g. by a callback,
    stops it before that step, which is dropped): the best parameters
    are restored as at a normal stop, a checkpoint is written if one was
    asked for, and the result has ``interrupted=True`` and
    ``converged=False``.  A second Ctrl-C aborts at once.
    """
    config = resolve_objective(config or FitConfig(), train, distributed_input)
    device = config.resolved_device()
    if config.checkpoint is not None and world()[1] > 1:
        raise ConfigError(f"checkpoint={config.checkpoint!r}: checkpoints are written by single-process fits "
                          "only; run without checkpoint under torch.distributed")
    pyro.set_rng_seed(config.seed)
    model.to(device)
    guide.to(device)
    shards = Shards.current(config.num_shards)
    train_shards = _local_shards(train, shards, device, distributed_input)
    val_shards = _local_shards(validation, shards, device, distributed_input) if validation is not None else []
    elbo = ELBOS[config.elbo](num_particles=config.num_particles, vectorize_particles=True,
                              max_plate_nesting=2)
    eval_elbo = ELBOS[config.elbo](num_particles=config.eval_particles, vectorize_particles=True,
                                   max_plate_nesting=2)
    trained = [guide] if guide_only else [model, guide]
    optimizer = PackedAdam([p for module in trained for p in module.parameters()])
    linear_warmup_rate = optimizer.mask([] if guide_only else model.residual_parameters(), 0.0, other=1.0)
    ridge_gradient = optimizer.mask(ridge_weights(*trained), 2 * config.ridge)  # d/dw of ridge * |w|^2
    n = _num_subjects(train, distributed_input)
    batch_size = config.batch_size or default_batch_size(n)
    shard_batch = max(1, batch_size // shards.num_shards)
    steps_per_epoch = math.ceil(n / (shard_batch * shards.num_shards))
    total_steps = config.max_epochs * steps_per_epoch
    frozen_steps = config.linear_warmup_epochs * steps_per_epoch

    decay = CosineDecay(total_steps, config.final_lr_factor)
    positions = torch.arange(shard_batch, device=device)
    generators = {s: torch.Generator().manual_seed(config.seed * 7919 + s) for s in shards.local}
    eval_seed = stream_seed(config.seed, 0, -1, 1)  # the same at every evaluation (see heldout_loss)
    # the tolerance per observed value, on the monitored loss's per-subject scale
    monitored_data = validation if validation is not None else train
    tolerance = config.tolerance * _mean_per_subject(monitored_data.mask, monitored_data, distributed_input)
    result = FitResult(config=asdict(config))
    progress = _Progress()
    mark = None
    if config.checkpoint is not None or config.resume_path is not None:
        options = {k: v for k, v in asdict(config).items() if k not in _NOT_FINGERPRINTED}
        options.update(guide_only=guide_only, distributed_input=distributed_input)
        mark = fingerprint(options, [train, validation], [model, guide])
    parts = dict(model=model, guide=guide, optimizer=optimizer, decay=decay, generators=generators,
                 result=result, progress=progress, device=device)
    if pause is not None and config.resume_path is not None:
        raise ConfigError("a paused fit cannot also resume from a checkpoint")
    pausing = pause is not None and not pause.held
    if config.resume_path is not None or (pause is not None and pause.held):
        _load_state(read_checkpoint(config.resume_path, mark) if pause is None else pause.state, **parts)
        result.interrupted = False  # this run's own interruption, if any, is set below
        result.stop_reason = result.stop_reason if progress.finished else ""
        if pause is not None:
            pause.state = None
    seconds_before, start = result.seconds, time.perf_counter()

    def save_checkpoint() -> None:
        result.seconds = seconds_before + time.perf_counter() - start
        if config.checkpoint is not None:
            write_checkpoint(config.checkpoint, _state(**parts), mark, stage=stage)

    def end_of_epoch(epoch: int, beta: float, epoch_loss: float) -> bool:
        """Evaluate and apply the stopping rule (module docstring); True: converged."""
        if (epoch + 1) % config.eval_every:
            return False
        if validation is None:
            current = epoch_loss  # per subject, like the held-out loss
        else:
            current = heldout_loss(model, guide, val_shards, eval_elbo, seed=eval_seed)
            result.validation_loss.append((epoch, current))
        if beta < 1.0:  # the objective is not yet the ELBO: nothing to compare
            return False
        progress.monitored.append((epoch, current))
        if current < progress.best_loss:
            progress.best_loss = current
            progress.best_state = _snapshot(model, guide) if validation is not None else None
            result.best_epoch = epoch
        if len(progress.monitored) < config.patience or trend_test(progress.monitored[-config.patience:],
                                                                      tolerance):
            return False
        if (epoch + 1) * steps_per_epoch >= decay.end:  # flat at the final learning rate
            result.converged = True
            result.stop_reason = "converged: the monitored loss stopped improving at the final learning rate"
            return True
        if not decay.shortened:
            anneal_epochs = max(config.patience * config.eval_every, round(config.anneal_fraction * (epoch + 1)))
            if decay.shorten((epoch + 1) * steps_per_epoch, anneal_epochs * steps_per_epoch):
                result.annealed_at = epoch
        return False

    bar = ProgressBar(total=config.max_epochs, initial=progress.epoch,
               disable=not (config.progress and is_main_process()), desc="fitting DGMM", unit="epoch")
    with deferred_interrupt(enabled=world()[1] == 1) as stop:
        while not (progress.finished or stop.requested) and progress.epoch < config.max_epochs \
                and not (pausing and progress.epoch >= pause.epochs):
            epoch = progress.epoch
            beta = config.kl_scale(epoch)
            model.train(), guide.train()
            if progress.orders is None:  # a new epoch (not one resumed in its middle)
                progress.orders = {s: torch.randperm(d.num_subjects, generator=generators[s]).to(device)
                                   for s, d in train_shards.items()}
                progress.epoch_loss = torch.zeros((), device=device)
            while progress.step < steps_per_epoch and not stop.requested:
                step = progress.step
                global_step = epoch * steps_per_epoch + step
                optimizer.zero_grad()
                loss = torch.zeros((), device=device)
                try:
                    for s, shard in train_shards.items():
                        reseed(stream_seed(config.seed, global_step, s, shards.num_shards), device)
                        index = progress.orders[s][(step * shard_batch + positions) % shard.num_subjects]
                        checked = epoch == 0 and step == 0
                        with pyro_checks(checked):
                            shard_loss = elbo.differentiable_loss(*as_run(model, guide, checked),
                                                                  shard.minibatch(index), num_subjects=n,
                                                                  kl_scale=beta)
                        loss = loss + shard_loss / (n * shards.num_shards)
                    loss.backward()
                except KeyboardInterrupt:  # raised inside the step: drop the step, stop before it
                    if stop.requested:
                        raise
                    stop.request()
                    break
                all_reduce_sum(optimizer.grad)
                optimizer.grad.addcmul_(optimizer.data, ridge_gradient)
                optimizer.clip_grad_norm_(config.clip_norm)
                rate = config.learning_rate * decay(global_step)
                optimizer.step(rate * linear_warmup_rate if global_step < frozen_steps else rate)
                progress.epoch_loss += loss.detach() / steps_per_epoch  # stays on the device: no sync per step
                progress.step += 1
            if stop.requested:  # mid-epoch, or before its evaluation: the checkpoint resumes here
                break
            epoch_loss = float(all_reduce_sum(progress.epoch_loss.cpu()))
            if not math.isfinite(epoch_loss):
                raise FitError(
                    f"the loss became {epoch_loss} in epoch {epoch}. Try a smaller learning_rate (now "
                    f"{config.learning_rate}), a smaller clip_norm (now {config.clip_norm}), a larger "
                    f"ridge (now {config.ridge}) or a longer kl_warmup_epochs; also check outcomes "
                    "for extreme values"
                )
            with torch.no_grad():
                ridge = 0.5 * float((optimizer.data.square() * ridge_gradient).sum())  # ridge * |w|^2
                result.train_loss.append(epoch_loss + ridge)
            result.kl_scale.append(beta)
            result.epochs_run = epoch + 1
            bar.update(1)
            bar.set_postfix(loss=f"{result.train_loss[-1]:.4g}", beta=f"{beta:.2f}")
            progress.finished = end_of_epoch(epoch, beta, epoch_loss)
            progress.epoch, progress.step, progress.orders, progress.epoch_loss = epoch + 1, 0, None, None
            if (epoch + 1) % config.checkpoint_every == 0 and not progress.finished:
                save_checkpoint()
    bar.close()
    if pausing and not (progress.finished or stop.requested) and progress.epoch < config.max_epochs:
        result.seconds = seconds_before + time.perf_counter() - start
        pause.state = copy.deepcopy(_state(**parts))
        result.stop_reason = f"paused after epoch {progress.epoch}"
        optimizer.release()
        return result
    if stop.requested:
        result.interrupted, result.converged = True, False
        result.stop_reason = (f"interrupted (Ctrl-C) in epoch {progress.epoch} after {progress.step} of its "
                              f"{steps_per_epoch} steps; " + (f"checkpoint {config.checkpoint} continues it "
                                                              "(resume=True)" if config.checkpoint else
                                                              "no checkpoint was asked for"))
    else:
        progress.finished = True
    save_checkpoint()
    optimizer.release()
    if guide_only:  # the held model's gradients were computed but never used
        for p in model.parameters():
            p.grad = None
    if progress.best_state is not None:
        _restore(model, guide, progress.best_state)
    model.eval(), guide.eval()
    monitored = progress.monitored
    never_improved = validation is not None and bool(monitored) and result.best_epoch == monitored[0][0]
    if not result.interrupted and (never_improved or not result.converged):
        result.converged = False
        result.stop_reason = _unconverged_reason(result, config, validation is not None, never_improved)
        if warn and is_main_process():
            warnings.warn(f"the fit did not converge: {result.stop_reason}", ConvergenceWarning, stacklevel=2)
    result.latent_activity = latent_activity(guide, train_shards, model.latent_dim).tolist()
    q = model.random_effects_dim  # the random effects' directions (b also holds any serial-process coordinates)
    result.active_directions = sum(v > ACTIVE_THRESHOLD for v in result.latent_activity[:q])
    if warn and not result.interrupted and result.active_directions == q and is_main_process():
        warnings.warn(
            f"all {q} latent directions are in use (variances of the posterior means across "
            f"subjects: {', '.join(f'{v:.2g}' for v in result.latent_activity)}): the data may support more "
            "random-effects directions; try a larger latent_dim or latent_dim='auto'",
            LatentDimensionWarning, stacklevel=2)
    return result


#: Settings a checkpoint need not match: they do not change the fit's
#: numbers (``device``: a fit continued on another device is a valid
#: continuation, equal to the uninterrupted one up to floating-point
#: rounding rather than to the bit).
_NOT_FINGERPRINTED = ("progress", "checkpoint", "checkpoint_every", "resume", "refine", "device", "restarts",
                      "race_epochs", "parallel_race")


@dataclass
class _Progress:
    """The fit loop's own state: where it stands and what the stopping rule has seen."""

    epoch: int = 0  # the epoch running, or the next one
    step: int = 0  # the next step of that epoch
    orders: dict | None = None  # that epoch's subject order per shard, once drawn
    epoch_loss: torch.Tensor | None = None  # that epoch's loss so far (its steps' mean, partial)
    best_loss: float = math.inf
    best_state: tuple | None = None  # model and guide states at the best held-out loss
    monitored: list = field(default_factory=list)  # (epoch, loss) after KL annealing
    finished: bool = False  # the loop ended (converged or max_epochs): a resume only restores


def _state(model, guide, optimizer: PackedAdam, decay: CosineDecay, generators: dict, result: FitResult,
           progress: _Progress, device: torch.device) -> dict:
    """Everything :func:`fit_svi` needs to continue, as tensors and plain values."""
    return {
        "model": model.state_dict(), "guide": guide.state_dict(),
        "optimizer": {"steps": optimizer.steps, "exp_avg": optimizer.exp_avg, "exp_avg_sq": optimizer.exp_avg_sq},
        "decay": {"start": decay.start, "length": decay.length, "top": decay.top, "shortened": decay.shortened},
        "generators": {s: g.get_state() for s, g in generators.items()},
        "rng": rng_state(device),
        "result": {k: v for k, v in asdict(result).items() if k != "config"},
        "progress": asdict(progress),
    }


def _load_state(state: dict, model, guide, optimizer: PackedAdam, decay: CosineDecay, generators: dict,
                result: FitResult, progress: _Progress, device: torch.device) -> None:
    """Put the state saved by :func:`_state` back (in place)."""
    model.load_state_dict(state["model"])  # parameters are views of optimizer.data: copied into it
    guide.load_state_dict(state["guide"])
    optimizer.steps = state["optimizer"]["steps"]
    optimizer.exp_avg.copy_(state["optimizer"]["exp_avg"])
    optimizer.exp_avg_sq.copy_(state["optimizer"]["exp_avg_sq"])
    for name, value in state["decay"].items():
        setattr(decay, name, value)
    for s, generator in generators.items():
        generator.set_state(state["generators"][s])
    set_rng_state(state["rng"], device)
    for name, value in state["result"].items():
        setattr(result, name, value)
    for name, value in state["progress"].items():
        setattr(progress, name, value)
    if progress.orders is not None:
        progress.orders = {s: order.to(device) for s, order in progress.orders.items()}
        progress.epoch_loss = progress.epoch_loss.to(device)
    if progress.best_state is not None:
        progress.best_state = tuple({k: v.to(device) for k, v in part.items()} for part in progress.best_state)


def _unconverged_reason(result: FitResult, config: FitConfig, held_out: bool, never_improved: bool) -> str:
    """Why a fit that did not converge stopped, in words a user can act on."""
    if never_improved:
        return (f"the held-out loss never improved after KL annealing (epoch {result.best_epoch}); the "
                "parameters of that epoch are kept. The model may overfit: try a larger ridge, smaller "
                "networks or more subjects")
    if result.kl_scale and result.kl_scale[-1] < 1.0:
        return (f"it stopped during KL annealing (beta = {result.kl_scale[-1]:.2f} after {result.epochs_run} "
                f"epochs, kl_warmup_epochs={config.kl_warmup_epochs}); raise max_epochs")
    if held_out and result.best_epoch < 0:
        return (f"the held-out loss was never evaluated after KL annealing in {result.epochs_run} epochs; "
                "raise max_epochs")
    return (f"it reached max_epochs={config.max_epochs} while the loss was still improving; raise max_epochs "
            "(the fit stops by itself once it has converged)")


#: Variance across subjects of the posterior means above which a latent
#: direction counts as active (Burda, Grosse & Salakhutdinov 2016).
ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def latent_activity(guide, shards: dict[int, LongitudinalData], latent_dim: int) -> torch.Tensor:
    r"""Eigenvalues, descending, of :math:`\operatorname{Cov}_i(E_q[b_i])`
    over the subjects of ``shards`` (summed over processes).

    For an exact posterior, :math:`\operatorname{Cov}(E[b \mid y]) = I -
    E[\operatorname{Cov}(b \mid y)]`: an eigenvalue near 1 is a direction
    the data pin down, one near 0 a direction left at its prior (unused).
    Eigenvalues, unlike per-coordinate variances, do not depend on how the
    fit happened to rotate b.
    """
    sums = torch.zeros(1 + latent_dim + latent_dim ** 2, dtype=torch.float64)
    for data in shards.values():
        for chunk in data.chunks(4096):
            loc = guide.posterior(chunk).loc.double().cpu()
            sums += torch.cat([torch.tensor([loc.shape[0]], dtype=torch.float64), loc.sum(0), (loc.T @ loc).flatten()])
    sums = all_reduce_sum(sums)
    q = latent_dim
    count, total, outer = sums[0], sums[1:1 + q], sums[1 + q:].reshape(q, q)
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    return torch.linalg.eigvalsh(covariance).flip(0).clamp_min(0.0)


#: Visits per subject below which ``elbo='auto'`` fits the importance-weighted bound.
SPARSE_VISITS = 10
#: Particles of the importance-weighted bound when ``num_particles`` is not
#: set (on the sparse development truth: RMSE 0.164, 0.162, 0.160 with 8, 16,
#: 32; the bound's memory per step grows with it, set ``num_particles`` lower
#: for very large batches).
IWAE_PARTICLES = 32


def resolve_objective(config: FitConfig, train: LongitudinalData, distributed_input: bool = False) -> FitConfig:
    """``config`` with ``elbo='auto'`` and ``num_particles=None`` made concrete.

    ``'auto'`` is the importance-weighted bound with :data:`IWAE_PARTICLES`
    particles when the training subjects have on average fewer than
    :data:`SPARSE_VISITS` visits with an observed value, and the mean-field
    ELBO otherwise.  With few visits the posterior of b is far from
    Gaussian (a few points cannot pin down a shift or a rate), the Gaussian
    encoder misfits it, and the ELBO pulls the decoder towards curves whose
    posterior it can fit, leaving latent directions unused; the tighter
    bound removes most of that pull (on the sparse development truth, 3-8
    visits, RMSE 15% lower and two active directions instead of one, at 2-4
    times the cost per epoch).  With many visits the posterior is nearly
    Gaussian and the two fits agree (within 2% on the dense development
    truths), so the cheaper ELBO is kept (docs/fitting.md).
    """
    elbo = config.elbo
    if elbo == "auto":
        visits = _mean_per_subject(train.mask.any(-1), train, distributed_input)  # visits with an observed value
        elbo = "iwae" if visits < SPARSE_VISITS else "meanfield"
    particles = config.num_particles or (IWAE_PARTICLES if elbo == "iwae" else 1)
    return replace(config, elbo=elbo, num_particles=particles)


def _mean_per_subject(counts: torch.Tensor, data: LongitudinalData, distributed_input: bool) -> float:
    """``counts`` (per subject, or their total) summed and divided by the
    number of subjects of ``data``, over processes with ``distributed_input``."""
    totals = torch.tensor([float(counts.sum()), float(data.num_subjects)], dtype=torch.float64)
    if distributed_input:
        totals = all_reduce_sum(totals)
    return float(totals[0] / totals[1].clamp_min(1.0))


@contextlib.contextmanager
def pyro_checks(enabled: bool):
    """Pyro's and torch's argument, support and trace checks as they are set
    (``enabled``; on unless the user switched them off) or off.

    The fit loop runs its first step with the checks and skips them after
    that: they cost about a sixth of a small-batch step, and the inputs
    do not change between steps (non-finite losses are caught anyway).
    """
    if enabled:
        yield
        return
    with pyro.validation_enabled(False), pyro.settings.context(validate_poutine=False):
        yield


def as_run(model, guide, checked: bool) -> tuple:
    """The model and guide as the fit loop calls them in a step.

    Called as modules, a ``PyroModule`` model and guide emit a ``param``
    statement for every parameter they read: that is how Pyro's ``SVI``,
    ``poutine.trace`` and the parameter store see them.  The fit loop
    optimises ``module.parameters()`` itself and reads no ``param`` site,
    so after its first step (``checked``: run the Pyro way, with every
    check) it calls their ``forward`` methods: the same computation without
    the statements, about a tenth faster per small-batch step.  (Outside a
    module call, a ``PyroSample`` attribute of a user's variant would be
    drawn without a sample site; the amortised guide covers only ``b``, so
    Pyro warns about such sites at the checked step.)
    """
    return (model, guide) if checked else (model.forward, guide.forward)


def _local_shards(data: LongitudinalData, shards: Shards, device,
                  distributed_input: bool = False) -> dict[int, LongitudinalData]:
    """This process's shards of ``data``, on ``device``."""
    positions = shards.local_positions(data.num_subjects, distributed_input=distributed_input)
    return {s: data.subset(index).to(device) for s, index in positions.items()}


def _num_subjects(data: LongitudinalData, distributed_input: bool) -> int:
    """N: ``data``'s subjects, summed over processes for partitioned input."""
    if not distributed_input:
        return data.num_subjects
    return int(all_reduce_sum(torch.tensor(data.num_subjects, dtype=torch.int64)))


def default_batch_size(num_subjects: int) -> int:
    """``num_subjects // 50`` clamped to [64, 65536]: about 50 steps an epoch
    from 3,200 to 3.3 million subjects, so the schedule (in epochs) means
    the same number of steps across that range, and per-step overhead
    (tracing, kernel launches) is paid about 50 times an epoch.  Memory for
    the step's activations grows with the batch and is bounded by it."""
    return min(max(64, num_subjects // 50), 65536)


def heldout_loss(model, guide, shards: dict[int, LongitudinalData], elbo, seed: int) -> float:
    """Negative ELBO per held-out subject, summed over shards and processes
    (no KL annealing, no gradients), in chunks of
    :func:`~pyro_dgmm.posterior.subjects_per_chunk` subjects for the draws,
    so memory stays bounded however many subjects are held out.

    The fit loop passes the same ``seed`` at every evaluation (common random
    numbers): the difference between two evaluations then reflects the
    change of parameters rather than fresh Monte Carlo noise, so the
    stopping rule does not stop on a noisy dip.
    """
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad(), pyro_checks(False):
        for s, data in shards.items():
            for i, chunk in enumerate(data.chunks(subjects_per_chunk(elbo.num_particles, data))):
                reseed(seed + 7919 * s + i, data.device)
                total += torch.tensor([elbo.loss(model, guide, chunk), chunk.num_subjects], dtype=torch.float64)
    total = all_reduce_sum(total)
    return float(total[0] / total[1])


def _snapshot(model, guide) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(guide.state_dict())


def _restore(model, guide, snapshot) -> None:
    model.load_state_dict(snapshot[0])
    guide.load_state_dict(snapshot[1])
