"""The settings of a fit: :class:`FitConfig` and its named :data:`PRESETS`.

Every setting is checked when the config is made (type, range, choice; a
:class:`~pyro_dgmm.errors.ConfigError` naming it), so a bad setting fails
before any epoch runs.  :func:`~pyro_dgmm.fit.fit_svi` reads the config;
the usual import is ``from pyro_dgmm.fit import FitConfig``.

>>> FitConfig.from_preset("fast", learning_rate=0.01).max_epochs
200
>>> FitConfig(kl_start=0.5, kl_warmup_epochs=10).kl_scale(5)
0.75
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, replace

import torch
from pyro.infer import Trace_ELBO

from .elbo import ImportanceWeightedELBO, MeanFieldELBO
from .errors import ConfigError
from .options import check_bool, check_choice, check_float, check_int, check_keywords

#: The objectives ``elbo=`` names (``'auto'`` chooses one, :func:`~pyro_dgmm.fit.resolve_objective`).
ELBOS = {"meanfield": MeanFieldELBO, "trace": Trace_ELBO, "iwae": ImportanceWeightedELBO}


@dataclass
class FitConfig:
    """Settings of :func:`~pyro_dgmm.fit.fit_svi` (all keyword, all with defaults).

    :param elbo: ``'meanfield'`` (closed-form KL), ``'trace'`` (Monte Carlo
        KL), ``'iwae'`` (importance-weighted bound over ``num_particles``) or
        ``'auto'`` (default): ``'iwae'`` when subjects have few visits,
        ``'meanfield'`` otherwise (:func:`~pyro_dgmm.fit.resolve_objective`).
    :param num_particles: M, Monte Carlo draws of b per subject and step
        (None: :data:`~pyro_dgmm.fit.IWAE_PARTICLES` for ``'iwae'``, 1 otherwise).
    :param max_epochs: passes over the training subjects, at most (a cap:
        the fit normally ends at convergence, see the module docstring).
    :param batch_size: subjects per step; None: :func:`~pyro_dgmm.fit.default_batch_size`.
    :param learning_rate: Adam's initial step size; decays along a cosine
        to ``learning_rate * final_lr_factor`` at ``max_epochs``.
    :param kl_start: KL annealing starts at beta = kl_start (must be > 0).
    :param kl_warmup_epochs: beta rises from ``kl_start`` to 1 over these epochs.
    :param linear_warmup_epochs: epochs during which the model's
        :meth:`~pyro_dgmm.model.MixedModel.residual_parameters` (the dense
        nonlinear paths of :class:`~pyro_dgmm.model.DGMM`) are held at their
        zero start, so the fit first finds the linear mixed model and its
        latent directions; flexible nets trained from the start tend to
        settle on a single latent direction instead.
    :param ridge: kappa, the ridge penalty on network weights.
    :param clip_norm: gradient-norm clipping threshold.
    :param eval_every: epochs between held-out evaluations.
    :param patience: evaluations (after KL annealing) that the trend test
        looks back over (:func:`~pyro_dgmm.convergence.trend_test`).  The first flat trend
        shortens the cosine schedule: the learning rate decays to its floor
        over ``anneal_fraction`` times the epochs run so far (at least
        ``patience * eval_every`` epochs, see :class:`~pyro_dgmm.convergence.CosineDecay`); the
        first flat trend at the floor ends the fit (converged).
    :param tolerance: the smallest improvement of the monitored loss, in
        nats per observed value, over ``patience`` evaluations that still
        counts as progress.
    :param refine: after SVI, move the linear fixed and random effects and
        the dispersions to the maximum of the marginal likelihood
        (:func:`~pyro_dgmm.wald.maximize_marginal_likelihood`; done by
        :class:`~pyro_dgmm.estimator.DeepMixedModel`, on every subject: the
        ones held out for the convergence test too).  ``'auto'``
        (default): where the likelihood has a closed form (a linear mixed
        model: Gaussian outcomes, linear parts; :mod:`pyro_dgmm.marginal`),
        where it is exact and takes seconds, so such a fit ends at the
        maximum likelihood estimate, as lme4's and MixedLM's do; ``True``:
        always (importance-sampled otherwise: minutes for hundreds of
        subjects; a joint model's event coefficients move too); ``False``: never.
        The serial-process scales (``serial_process='brownian'``) move
        with the dispersions; where ``'auto'`` finds no closed form they
        are still moved, alone (``FitResult.serial_refinement``): SVI
        shrinks them towards 0, and the intervals at far horizons with them
        (:mod:`pyro_dgmm.serial`; minutes for hundreds of subjects).
    :param restarts: refits from other seeds, at most, when a converged fit
        leaves structure in its residuals (lag-1 autocorrelation within
        subjects above :data:`~pyro_dgmm.selection.RESTART_THRESHOLD`, the
        mark of a collapsed latent direction); the fit with the lowest
        held-out loss is kept (:mod:`pyro_dgmm.selection`).  0: never.
        Not with ``checkpoint`` (a checkpoint holds one fit).
    :param race_epochs: for a :class:`~pyro_dgmm.model.DGMM` whose
        ``time_functions`` is left to the fit (``'auto'``, the default),
        the fit without and the fit with learned time functions are trained
        side by side for this many epochs and the one with the lower
        held-out loss over the last half of them continues
        (:class:`~pyro_dgmm.selection.TimeFunctionRace`).  0: no race
        (no learned time functions).  Not with ``checkpoint`` or the
        imputation loop.
    :param parallel_race: train the race's two structures at the same time,
        the learned one in a forked process, where that is safe and a
        second core is free (:func:`~pyro_dgmm.forked.fork_helps`: Linux,
        one torch thread, CPU, no other thread running); the result is the
        same, the race takes the time of one fit.  False: one after the other.
    :param eval_particles: draws of b per held-out subject per evaluation.
    :param seed: makes a run reproducible (data split, batches, draws, init).
    :param num_shards: subjects are split into this many shards, each
        drawing ``batch_size / num_shards`` subjects a step (default: the
        number of ``torch.distributed`` processes, 1 without); a fit with
        the same ``num_shards`` gives the same result in any number of
        processes that divides it (see :mod:`pyro_dgmm.parallel`).
    :param device: ``'cpu'``, ``'cuda'``, or None for cuda when available.
    :param progress: show a tqdm progress bar.
    :param checkpoint: a file to write the fit's full state to (see
        :mod:`pyro_dgmm.checkpoint`) every ``checkpoint_every`` epochs, when
        the fit stops and when it is interrupted; None: no checkpoints.
    :param checkpoint_every: epochs between checkpoints.
    :param resume: continue from a checkpoint: True reads ``checkpoint``, a
        path reads that file (and, without ``checkpoint``, keeps writing
        there).  The checkpoint must come from the same data and settings
        (:class:`~pyro_dgmm.errors.ConfigError` otherwise); the resumed fit
        ends with the parameters the fit would have had without the break.
    """

    elbo: str = "auto"
    num_particles: int | None = None
    max_epochs: int = 1000
    batch_size: int | None = None
    learning_rate: float = 0.01
    final_lr_factor: float = 0.05
    kl_start: float = 0.01
    kl_warmup_epochs: int = 12
    linear_warmup_epochs: int = 6
    ridge: float = 1e-4
    clip_norm: float = 10.0
    eval_every: int = 2
    patience: int = 40
    anneal_fraction: float = 1.0
    tolerance: float = 1e-4
    refine: bool | str = "auto"
    restarts: int = 2
    race_epochs: int = 80
    parallel_race: bool = True
    eval_particles: int = 4
    seed: int = 0
    num_shards: int | None = None
    device: str | None = "cpu"
    progress: bool = True
    checkpoint: str | None = None
    checkpoint_every: int = 10
    resume: bool | str = False

    def __post_init__(self):
        """Check every setting's type and range (:mod:`pyro_dgmm.options`) and
        normalise numpy scalars to Python ones, so a bad setting fails here,
        naming itself, rather than in the middle of a fit."""
        self.elbo = check_choice("elbo", self.elbo, ["auto", *ELBOS])
        self.num_particles = check_int("num_particles", self.num_particles, none=True)
        for name in ("max_epochs", "eval_every", "eval_particles"):
            setattr(self, name, check_int(name, getattr(self, name)))
        for name in ("kl_warmup_epochs", "linear_warmup_epochs", "seed", "restarts", "race_epochs"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=0))
        self.patience = check_int("patience (evaluations for the trend test)", self.patience, minimum=3)
        self.batch_size = check_int("batch_size", self.batch_size, none=True)
        self.num_shards = check_int("num_shards", self.num_shards, none=True)
        self.learning_rate = check_float("learning_rate", self.learning_rate, low=0, low_open=True)
        for name in ("final_lr_factor", "kl_start", "anneal_fraction"):
            setattr(self, name, check_float(name, getattr(self, name), low=0, high=1, low_open=True))
        self.ridge = check_float("ridge", self.ridge, low=0)
        self.clip_norm = check_float("clip_norm", self.clip_norm, low=0, low_open=True)
        self.tolerance = check_float("tolerance", self.tolerance, low=0)
        if self.refine != "auto":
            self.refine = check_bool("refine", self.refine)
        self.progress = check_bool("progress", self.progress)
        self.parallel_race = check_bool("parallel_race", self.parallel_race)
        if self.device is not None and not isinstance(self.device, (str, torch.device)):
            raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N', a torch.device or None, got {self.device!r}")
        self._check_checkpoint_options()

    def _check_checkpoint_options(self) -> None:
        """Normalise ``checkpoint``/``resume`` to str (plain values in a saved
        config) and refuse what cannot work before any epoch runs."""
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be a positive integer (epochs), got {self.checkpoint_every!r}")
        if isinstance(self.resume, os.PathLike):
            self.resume = os.fspath(self.resume)
        if not isinstance(self.resume, (bool, str)):
            raise ConfigError(f"resume must be True, False or a checkpoint path, got {self.resume!r}")
        if isinstance(self.resume, str) and self.checkpoint is None:
            self.checkpoint = self.resume
        if self.checkpoint is None:
            if self.resume:
                raise ConfigError("resume=True needs checkpoint=PATH (the file to continue from)")
            return
        if not isinstance(self.checkpoint, (str, os.PathLike)):
            raise ConfigError(f"checkpoint must be a file path or None, got {self.checkpoint!r}")
        self.checkpoint = os.fspath(self.checkpoint)
        folder = os.path.dirname(os.path.abspath(self.checkpoint))
        if os.path.isdir(self.checkpoint):
            raise ConfigError(f"checkpoint {self.checkpoint} is a folder; give a file path")
        if not os.path.isdir(folder):
            raise ConfigError(f"checkpoint {self.checkpoint}: its folder {folder} does not exist")

    @property
    def resume_path(self) -> str | None:
        """The checkpoint file a resumed fit reads (None: start afresh)."""
        if self.resume is False:
            return None
        return self.checkpoint if self.resume is True else self.resume

    @classmethod
    def fields(cls) -> list[str]:
        """The names of the settings (what ``fit(**overrides)`` accepts)."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_preset(cls, preset: str = "accurate", **overrides) -> "FitConfig":
        """The settings of a named preset (:data:`PRESETS`), with ``overrides``."""
        check_choice("preset", preset, PRESETS)
        check_keywords("FitConfig.from_preset", overrides, cls.fields())
        return cls(**{**PRESETS[preset], **overrides})

    def resolved_device(self) -> torch.device:
        """The torch device to fit on: ``device=None`` is CUDA when available,
        ``'cuda'`` under torchrun is this process's GPU (``LOCAL_RANK``)."""
        if self.device is None:
            return replace(self, device="cuda" if torch.cuda.is_available() else "cpu").resolved_device()
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device='{self.device}' was asked for but CUDA is not available")
        if self.device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
            return torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
        return torch.device(self.device)

    def kl_scale(self, epoch: int) -> float:
        """beta at ``epoch`` (0-based): linear from kl_start to 1."""
        if self.kl_warmup_epochs <= 0:
            return 1.0
        return min(1.0, self.kl_start + (1 - self.kl_start) * epoch / self.kl_warmup_epochs)


#: Named fit settings.  ``'accurate'`` (the defaults) fits until the
#: convergence test is met; ``'fast'`` is for quick looks: a shorter trend
#: window, a coarser tolerance, a shorter decay and a lower cap, at some
#: cost in accuracy (docs/fitting.md gives both side by side).
PRESETS = {
    "accurate": {},
    "fast": {"max_epochs": 200, "patience": 6, "anneal_fraction": 0.5, "tolerance": 1e-3, "restarts": 0,
             "race_epochs": 0},
}
