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
(``gloo`` on CPU, ``nccl`` on CUDA).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


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
    (``WORLD_SIZE`` > 1 in the environment).  Returns True if one is active."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device and str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return True


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


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (no-op in a single process)."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(params) -> None:
    """Sum every parameter's gradient over processes (no-op in a single process)."""
    if world()[1] == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def gather_objects(obj) -> list:
    """Every process's ``obj`` in rank order (``[obj]`` in a single process)."""
    size = world()[1]
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def map_subjects(compute, data, *, sort_by: list[str]):
    """``compute(part)`` on this process's share of ``data``'s subjects
    (positions ``rank::world_size``), gathered into one DataFrame sorted by
    ``sort_by`` on every process.  Per-subject work (fitted values,
    imputation, prediction) is independent across subjects, so this is
    exact.  ``compute`` returns a DataFrame; in one process it is called
    on all of ``data``.
    """
    import pandas as pd

    rank, size = world()
    if size == 1:
        return compute(data)
    frame = compute(data.subset(np.arange(rank, data.num_subjects, size)))
    gathered = pd.concat(gather_objects(frame))
    return gathered.sort_values(sort_by, kind="stable").reset_index(drop=True)
