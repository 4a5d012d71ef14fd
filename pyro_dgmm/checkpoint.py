"""Checkpoint files of a fit: written atomically, read back only for the fit they belong to.

A checkpoint holds everything the fit loop (:func:`~pyro_dgmm.fit.fit_svi`)
needs to continue exactly where it stopped: model and guide parameters,
the optimiser's moments and step count, the learning-rate schedule, the
stopping rule's history and best state, the position in the epoch (the
epoch's subject order and partial loss when it stopped mid-epoch) and the
random number generators.  Resumed on the same machine type with the same
seed, a fit ends with the same parameters, to the bit, as one that never
stopped.

The file is a ``torch.save`` of tensors and plain Python values only, so it
loads with ``torch.load(..., weights_only=True)`` (no code runs on load),
and it is written with :func:`~pyro_dgmm.files.atomic_path`: a fit killed
while writing leaves the previous checkpoint intact.

Each checkpoint carries a :func:`fingerprint` of what the fit was given: a
digest of the training and held-out data, the architecture of model and
guide, and every fit setting that changes the numbers.  :func:`read_checkpoint`
refuses (:class:`~pyro_dgmm.errors.ConfigError` naming the file and what
differs) to continue a fit from another fit's checkpoint.

    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "fit.ckpt"
    >>> net = torch.nn.Linear(2, 1)
    >>> mark = fingerprint({"learning_rate": 0.01}, [], [net])
    >>> write_checkpoint(path, {"epoch": 3}, mark, stage="demo")
    >>> read_checkpoint(path, mark)["epoch"]
    3
    >>> read_checkpoint(path, fingerprint({"learning_rate": 0.02}, [], [net]))
    Traceback (most recent call last):
    ...
    pyro_dgmm.errors.ConfigError: checkpoint ... belongs to another fit: fit settings differ: learning_rate (checkpoint 0.01, now 0.02); ...
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .errors import ConfigError
from .files import atomic_path

#: What a checkpoint file says it is (checked before anything else is read).
CHECKPOINT_FORMAT = "pyro_dgmm checkpoint 1"


def _tensor_digest(digest, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s dtype, shape and bytes into ``digest``."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def data_digest(data) -> str | None:
    """SHA-256 over every tensor field and the outcome names of a
    :class:`~pyro_dgmm.longitudinal.LongitudinalData` (None for None)."""
    if data is None:
        return None
    digest = hashlib.sha256(repr(list(data.outcomes)).encode())
    for field in dataclasses.fields(data):
        value = getattr(data, field.name)
        if isinstance(value, torch.Tensor):
            digest.update(field.name.encode())
            _tensor_digest(digest, value)
    return digest.hexdigest()


def architecture(modules: Iterable[torch.nn.Module]) -> str:
    """The classes of ``modules`` and the names and shapes of their states."""
    return "; ".join(
        f"{type(m).__qualname__}(" + ", ".join(f"{k}:{tuple(v.shape)}" for k, v in m.state_dict().items()) + ")"
        for m in modules)


def fingerprint(options: dict, datasets: Iterable, modules: Iterable[torch.nn.Module]) -> dict:
    """What a checkpoint must match to be resumed: ``options`` (plain values:
    the fit settings that change the numbers), a :func:`data_digest` of each
    of ``datasets`` and a digest of the :func:`architecture` of ``modules``."""
    return {
        "options": dict(options),
        "data": [data_digest(d) for d in datasets],
        "architecture": hashlib.sha256(architecture(modules).encode()).hexdigest(),
    }


def _differences(saved: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    options = sorted(set(saved["options"]) | set(current["options"]))
    changed = [f"{k} (checkpoint {saved['options'].get(k)!r}, now {current['options'].get(k)!r})"
               for k in options if saved["options"].get(k) != current["options"].get(k)]
    if changed:
        out.append("fit settings differ: " + ", ".join(changed))
    names = ("the training data", "the held-out data")
    for name, old, new in zip(names, saved["data"], current["data"]):
        if old != new:
            out.append(f"{name} differ" if old and new else
                       f"{name} {'are missing now' if old else 'were absent then'}")
    if saved["architecture"] != current["architecture"]:
        out.append("the model or guide architecture differs (latent_dim, networks, outcomes or covariates)")
    return out


def write_checkpoint(path: str | os.PathLike, state: dict, mark: dict, *, stage: str = "") -> None:
    """Write ``state`` (tensors and plain values) with its fingerprint ``mark``
    and a ``stage`` label (which fit of a longer procedure it belongs to)
    to ``path``, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": mark, "stage": stage, "state": state}, tmp)


def read_checkpoint(path: str | os.PathLike, mark: dict | None = None) -> dict:
    """The state stored at ``path`` by :func:`write_checkpoint`, after checking
    that it is a readable checkpoint and (given ``mark``) that it belongs to
    the same fit; :class:`~pyro_dgmm.errors.ConfigError` naming the file otherwise."""
    saved = open_checkpoint(path)
    if mark is not None:
        differences = _differences(saved["fingerprint"], mark)
        if differences:
            raise ConfigError(f"checkpoint {path} belongs to another fit: {'; '.join(differences)}; resume with "
                              "the data and settings it was written with, or start afresh without resume")
    return saved["state"]


def open_checkpoint(path: str | os.PathLike) -> dict:
    """The whole checkpoint file at ``path`` (format, fingerprint, stage, state),
    without comparing fingerprints."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint file {path} does not exist" if not path.exists()
                          else f"checkpoint {path} is not a file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ConfigError(f"checkpoint {path} cannot be read (truncated, corrupted or not a checkpoint): "
                          f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if not (isinstance(saved, dict) and saved.get("format") == CHECKPOINT_FORMAT):
        raise ConfigError(f"{path} is not a pyro_dgmm checkpoint (format '{CHECKPOINT_FORMAT}')")
    return saved


def rng_state(device: torch.device) -> dict:
    """The states of the generators a fit may draw from: torch's (which
    Pyro's draws use; the accelerator's on ``device``), Python's ``random``
    and NumPy's global one, as tensors and plain values."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
