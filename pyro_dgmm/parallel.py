"""Data-parallel fitting over ``torch.distributed`` ranks.

Subjects are independent given the global parameters, so the ELBO is a sum
over subjects.  The training subjects are split into ``num_shards`` shards
by position (subject ``i``, in id order, goes to shard ``i % num_shards``);
each step every shard draws its own minibatch, and the objective is the
mean of the shards' unbiased full-data ELBO estimates.  A process owns the
shards ``s`` with ``s % world_size == rank``; gradients are summed across
processes with ``all_reduce`` after each backward pass, so every process
takes the same optimizer step.  A single process with the same
``num_shards`` computes exactly the same objective (gradient accumulation
over its shards): that is what makes single- and multi-process fits equal
to float tolerance, and why they share one code path (:func:`pyro_dgmm.fit.fit_svi`).

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_from_environment` starts the process group
(``gloo`` on CPU, ``nccl`` for CUDA tensors).

After the fit, per-subject computations are spread the same way.  The
marginal likelihood and standard errors (:mod:`pyro_dgmm.marginal`) use
the ``num_shards`` shards (:func:`run_shards`), each shard's random draws
seeded by :func:`shard_seed`.  Fitted values, imputations and predictions
use fixed blocks of consecutive subjects (:func:`subject_blocks`,
:func:`map_blocks`), each seeded by its block number: their boundaries
depend on the number of subjects only, so the same ``seed`` gives the same
draws for every subject whether one process or several compute them.  Partitioned input,
where each process holds only its own subjects, is
:mod:`pyro_dgmm.partitioned`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, DataError, DgmmError


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (or without a process group): only it logs and writes."""
    return world()[0] == 0


def init_from_environment(device: str | None = None) -> bool:
    """Start the default process group when launched by ``torchrun``
    (``WORLD_SIZE`` > 1 in the environment).  Returns True if one is active.

    For CUDA devices each process takes GPU ``LOCAL_RANK`` and the group
    runs NCCL for CUDA tensors and gloo for CPU tensors and Python objects
    (counts, gathered tables)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "gloo"
        if device and str(device).startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend)
    return True


def end_process_group() -> None:
    """Wait for every process, then tear the default process group down.
    A process that exits with the group alive can abort in gloo's threads
    ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclass(frozen=True)
class Shards:
    """How training subjects are split and which shards this process computes."""

    num_shards: int
    local: tuple[int, ...]

    @classmethod
    def current(cls, num_shards: int | None = None) -> "Shards":
        rank, size = world()
        num_shards = num_shards or size
        if num_shards % size:
            raise ConfigError(f"num_shards={num_shards} must be a multiple of the number of processes ({size})")
        return cls(num_shards, tuple(s for s in range(num_shards) if s % size == rank))

    def positions(self, num_subjects: int, shard: int) -> np.ndarray:
        """Positions (in id order) of the subjects in ``shard``."""
        return np.arange(shard, num_subjects, self.num_shards)

    def local_positions(self, num_subjects: int, *, distributed_input: bool = False) -> dict[int, np.ndarray]:
        """Shard -> positions of its subjects, for this process's shards.

        Every process holds the same ``num_subjects`` subjects (default):
        :meth:`positions`.  ``distributed_input``: the process holds only
        its own subjects (partitioned input, :mod:`pyro_dgmm.partitioned`);
        they are dealt round-robin to its shards.
        """
        if not distributed_input:
            return {s: self.positions(num_subjects, s) for s in self.local}
        return {s: np.arange(k, num_subjects, len(self.local)) for k, s in enumerate(self.local)}


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (no-op in a single process)."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over processes, in place (no-op in a single process)."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def gather_objects(obj) -> list:
    """Every process's ``obj`` in rank order (``[obj]`` in a single process)."""
    size = world()[1]
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def stream_seed(seed: int, step: int, shard: int, num_shards: int) -> int:
    """The seed of the random draws of (``step``, ``shard``) in a loop over
    steps (fitting, imputation rounds): the same in any process layout."""
    return (seed * 1_000_003 + step * (num_shards + 1) + shard + 1) % (2**63 - 1)


def reseed(seed: int, device: torch.device) -> None:
    """Seed the global generator that Pyro's draws use on ``device``.

    ``torch.manual_seed`` also seeds every accelerator backend it can find,
    which costs milliseconds a call: too much once per training step.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def shard_seed(seed: int, shard: int) -> int:
    """The seed of ``shard``'s random draws in sharded post-fit computations
    (the same in any process layout)."""
    return (seed * 1_000_003 + 7919 * (shard + 1)) % (2**63 - 1)


def run_shards(compute, num_subjects: int, *, num_shards: int | None = None, seed: int | None = None,
               distributed_input: bool = False) -> list:
    """``compute(positions)`` for every shard of ``num_subjects`` subjects,
    each shard on the process that owns it, gathered in shard order on
    every process.

    With ``seed``, torch's generator is seeded with
    :func:`shard_seed` before each shard, so the results do not depend on
    how shards are spread over processes; without it the current random
    state is used (in one process with one shard: exactly ``compute`` on
    all positions).  ``distributed_input``: positions index this
    process's own subjects (see :meth:`Shards.local_positions`).
    """
    shards = Shards.current(num_shards)
    results = []
    for s, positions in shards.local_positions(num_subjects, distributed_input=distributed_input).items():
        if seed is not None:
            torch.manual_seed(shard_seed(seed, s))
        results.append((s, compute(positions)))
    gathered = [item for part in gather_objects(results) for item in part]
    return [result for _, result in sorted(gathered, key=lambda item: item[0])]


#: Post-fit per-subject work (fitted values, imputations, predictions) is
#: cut into blocks of consecutive subjects: about ``num_subjects /
#: BLOCKS`` each (so up to this many processes share it), but no fewer
#: than ``MIN_BLOCK_SIZE`` and no more than ``MAX_BLOCK_SIZE``.  Each block
#: has a fixed cost (an MCMC run of the imputations costs about as much as
#: imputing 300 subjects), so small data stay in one or two blocks; within
#: a block, memory is bounded by chunking.
BLOCKS, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 16, 256, 4096


def subject_blocks(num_subjects: int) -> list[np.ndarray]:
    """Consecutive blocks of subject positions for post-fit work.  Their
    boundaries depend on ``num_subjects`` alone, never on the number of
    processes: that is what makes seeded results layout-independent.

    >>> [len(block) for block in subject_blocks(600)], [len(block) for block in subject_blocks(8000)]
    ([256, 256, 88], [500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500])
    """
    size = min(MAX_BLOCK_SIZE, max(MIN_BLOCK_SIZE, -(-num_subjects // BLOCKS)))
    return [np.arange(start, min(start + size, num_subjects)) for start in range(0, num_subjects, size)]


def map_blocks(compute, num_subjects: int, *, seed: int, distributed_input: bool = False) -> list:
    """``compute(positions)`` for every block of :func:`subject_blocks`,
    gathered in block order on every process.

    Block ``k`` runs on process ``k % world_size`` with torch's CPU
    generator (the one Pyro's samplers draw from) seeded by
    :func:`shard_seed` ``(seed, k)``, so every subject's draws are the same
    in one process or several: the block it belongs to, its companions and
    its seed do not depend on the process count.  The caller's random state
    is restored afterwards.  ``distributed_input``: each process holds its
    own subjects and computes all of its blocks, numbered after those of
    the lower ranks (results then depend on how subjects were partitioned).
    """
    rank, size = world()
    blocks = list(enumerate(subject_blocks(num_subjects)))
    if distributed_input:
        offset = sum(gather_objects(len(blocks))[:rank])
        blocks = [(offset + k, positions) for k, positions in blocks]
    else:
        blocks = [(k, positions) for k, positions in blocks if k % size == rank]
    results = []
    with torch.random.fork_rng(devices=[]):
        for k, positions in blocks:
            torch.default_generator.manual_seed(shard_seed(seed, k))
            results.append((k, compute(positions)))
    gathered = [item for part in gather_objects(results) for item in part]
    return [result for _, result in sorted(gathered, key=lambda item: item[0])]


def map_subjects(compute, data, *, sort_by: list[str], seed: int, distributed_input: bool = False):
    """``compute(part)`` on every block of ``data``'s subjects
    (:func:`map_blocks`: seeded per block, blocks spread over processes),
    gathered into one DataFrame sorted by ``sort_by`` on every process.
    Per-subject work (fitted values, imputation) is independent across
    subjects, so splitting it is exact, and with the same ``seed`` the
    frame is the same in any number of processes.  ``compute`` returns a
    DataFrame.
    """
    import pandas as pd

    frames = map_blocks(lambda positions: compute(data.subset(positions)), data.num_subjects, seed=seed,
                        distributed_input=distributed_input)
    return pd.concat(frames).sort_values(sort_by, kind="stable").reset_index(drop=True)


def agree(check):
    """``check()`` on every process, returning its value; if it raises a
    :class:`~pyro_dgmm.errors.DgmmError` on any process, the same kind of
    error, naming the ranks, is raised on all of them (an error on one
    rank only would leave the others waiting in the next collective)."""
    if world()[1] == 1:
        return check()
    try:
        value, failure = check(), None
    except DgmmError as error:
        value, failure = None, (type(error), str(error))
    failures = [(rank, f) for rank, f in enumerate(gather_objects(failure)) if f is not None]
    if failures:
        raise failures[0][1][0]("; ".join(f"rank {rank}: {message}" for rank, (_, message) in failures))
    return value


def hold_out(data, fraction: float, seed: int):
    """(training, held-out) subjects of ``data`` for early stopping:
    ``round(fraction * N)`` drawn at random with ``seed``, both in id order;
    (data, None) when that leaves none held out or fewer than 2 to train on."""
    n_val = int(round(fraction * data.num_subjects))
    if n_val == 0 or data.num_subjects - n_val < 2:
        return data, None
    return _draw_held_out(data, n_val, np.random.default_rng(seed))


def local_hold_out(data, fraction: float, seed: int, num_shards: int | None):
    """:func:`hold_out` of each process's own subjects (partitioned input),
    drawn with ``(seed, rank)``; subjects are held out only if every process
    can hold out at least one per shard (else (data, None) everywhere).

    :raises DataError: on every process, if some process holds fewer
        subjects than its shards.
    """
    rank = world()[0]
    per_process = len(Shards.current(num_shards).local)

    def check():
        if data.num_subjects < per_process:
            raise DataError(f"this process holds {data.num_subjects} subjects, fewer than its {per_process} "
                            "shards: use fewer processes or shards, or more data")

    agree(check)
    n_val = int(round(fraction * data.num_subjects))
    usable = n_val >= per_process and data.num_subjects - n_val >= max(2, per_process)
    if not all(gather_objects(usable)):
        return data, None
    return _draw_held_out(data, n_val, np.random.default_rng([seed, rank]))


def _draw_held_out(data, n_val: int, rng: np.random.Generator):
    """(training, held-out) subjects: ``n_val`` drawn at random, both in id order."""
    perm = rng.permutation(data.num_subjects)
    return data.subset(np.sort(perm[n_val:])), data.subset(np.sort(perm[:n_val]))
