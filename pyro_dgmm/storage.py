"""Save files of fitted models: the format, its integrity check, and which
model classes a file may name.

:meth:`DeepMixedModel.save <pyro_dgmm.estimator.DeepMixedModel.save>` and
:meth:`~pyro_dgmm.estimator.DeepMixedModel.load` are thin calls into this
module.

**Format** (``SAVE_FORMAT = 2``).  One file written by :func:`torch.save`
holding only plain Python values and tensors, so it is read with
``torch.load(..., weights_only=True)`` (PyTorch's restricted unpickler: a
file cannot make the reader run code)::

    {"format": "pyro_dgmm", "version": 2,
     "metadata": {...},                 # options, schema, fit history: plain types
     "tensors": {"model": {name: tensor}, "guide": {name: tensor}},
     "sha256": "..."}                   # digest of version, metadata and tensors

Everything is normalised to plain Python types before it is written
(:func:`to_plain`: numpy scalars and arrays, paths, named tuples), so
whatever ``save`` accepts ``load`` reads; a value that has no plain form
(a function, an object) is refused at save time with a
:class:`~pyro_dgmm.errors.ConfigError` that names where it sits.  The file
is written atomically (:func:`~pyro_dgmm.files.atomic_path`): a save that
fails part-way leaves the previous file as it was.

**Integrity.**  The digest is SHA-256 over the format version, the
metadata's ``repr`` (deterministic for plain types) and, for every tensor,
its name, dtype, shape and raw bytes.  ``load`` recomputes it: flipped bytes
in the weights, a truncated or empty file, another program's file, a
directory or a missing path each raise :class:`~pyro_dgmm.errors.SaveFileError`
naming the file and what is wrong.  The digest detects damage, not
tampering (anyone can recompute it): it is not a signature.

**Model classes.**  A file stores its model class as ``'module:qualname'``
but never imports anything because of it.  The name resolves to, in order:

1. the class passed as ``load(path, model_class=...)``, which must be a
   :class:`~pyro_dgmm.model.MixedModel` subclass; passing it is the
   user's explicit choice, so it is used even if its name differs from the
   stored one (a class renamed, moved, or defined in ``__main__``), and
   the stored weights must fit it;
2. a class registered with :func:`register_model_class` under that name;
3. a ``MixedModel`` subclass shipped by pyro_dgmm, looked up in the
   already-imported ``pyro_dgmm`` modules (attribute dictionaries only:
   no import, no ``__getattr__``).

Any other name is refused with a :class:`~pyro_dgmm.errors.SaveFileError`
that says how to pass or register the class.

Example::

    >>> import torch
    >>> from pyro_dgmm.model import DGMM
    >>> model_class_name(DGMM)
    'pyro_dgmm.model:DGMM'
    >>> resolve_model_class('pyro_dgmm.model:DGMM', 'model.pt') is DGMM
    True
    >>> to_plain({"latent_dim": np.int64(4), "hidden": np.array([64, 32])})
    {'latent_dim': 4, 'hidden': [64, 32]}
"""
from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Mapping

import numpy as np
import torch

from .errors import ConfigError, SaveFileError
from .files import atomic_path
from .model import MixedModel

#: Version of the save format written by :func:`write`; files of another
#: version are refused with a message saying so.
SAVE_FORMAT = 2
_MARK = "pyro_dgmm"
_REGISTERED: dict[str, type] = {}


def model_class_name(cls: type) -> str:
    """``'module:qualname'``: how a save file names a model class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_model_class(cls: type) -> type:
    """Allow save files that name ``cls`` (by :func:`model_class_name`) to be
    loaded without passing ``model_class=``; returns ``cls``, so it also
    works as a class decorator.  Registering another class under the same
    name (a class redefined in a notebook) replaces the earlier one.

    :raises ConfigError: ``cls`` is not a subclass of
        :class:`~pyro_dgmm.model.MixedModel`.
    """
    if not (isinstance(cls, type) and issubclass(cls, MixedModel)):
        raise ConfigError(f"register_model_class expects a subclass of MixedModel, got {cls!r}")
    _REGISTERED[model_class_name(cls)] = cls
    return cls


def _shipped_class(name: str) -> type | None:
    """The pyro_dgmm class called ``name``, found in modules already imported
    (their ``__dict__``, then the classes' ``__dict__``), or None."""
    module_name, _, qualname = name.partition(":")
    if module_name != "pyro_dgmm" and not module_name.startswith("pyro_dgmm."):
        return None
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        if obj is None:
            return None
        obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
    return obj if isinstance(obj, type) and issubclass(obj, MixedModel) else None


def resolve_model_class(name: str, path: str | os.PathLike, model_class: type | None = None) -> type:
    """The model class to rebuild a file's model with (rules in the module
    docstring); ``path`` only names the file in messages.

    :raises ConfigError: ``model_class`` is not a MixedModel subclass.
    :raises SaveFileError: ``name`` is neither registered nor shipped and no
        ``model_class`` was passed.
    """
    if model_class is not None:
        if not (isinstance(model_class, type) and issubclass(model_class, MixedModel)):
            raise ConfigError(f"model_class must be a subclass of MixedModel, got {model_class!r}")
        return model_class
    if not isinstance(name, str):
        raise SaveFileError(f"save file {path} names no model class (it holds {name!r}): pass load('{path}', "
                            "model_class=...)")
    found = _REGISTERED.get(name) or _shipped_class(name)
    if found is None:
        short = name.rpartition(":")[2].rpartition(".")[2] or name
        raise SaveFileError(
            f"save file {path} names model class '{name}', which is neither shipped with pyro_dgmm nor "
            f"registered; nothing is imported because a file says so: import the class yourself and pass "
            f"load('{path}', model_class={short}) or call pyro_dgmm.register_model_class({short}) first")
    return found


def to_plain(value, where: str = "value"):
    """``value`` as plain Python types (dict, list, tuple, str, int, float,
    bool, None): numpy scalars and arrays become numbers and lists, paths
    strings, named tuples tuples, tensors lists.

    :param where: how messages name ``value`` (e.g. ``"init['latent_dim']"``).
    :raises ConfigError: something has no plain form; the message says where.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_plain(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            plain_key = to_plain(key, f"a key of {where}")
            if not isinstance(plain_key, (str, int, float, bool, tuple)) and plain_key is not None:
                raise ConfigError(f"cannot save: key {key!r} of {where} is a {type(key).__name__}")
            out[plain_key] = to_plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, tuple):
        return tuple(to_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, list):
        return [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ConfigError(f"cannot save: {where} is a {type(value).__name__} ({value!r:.60}); a save file holds "
                      "numbers, strings, lists and dicts only")


def _digest(version, metadata: dict, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """SHA-256 over the version, ``repr(metadata)`` and each tensor's name,
    dtype, shape and bytes (the module docstring)."""
    digest = hashlib.sha256(f"{_MARK} {version}\n{metadata!r}\n".encode())
    for group, state in tensors.items():
        for name, tensor in state.items():
            digest.update(f"{group}/{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def write(path: str | os.PathLike, metadata: dict, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Write a save file atomically: ``metadata`` (normalised by
    :func:`to_plain`), ``tensors`` (group -> name -> tensor, e.g. state
    dicts) and their digest.

    :raises ConfigError: ``path`` is a folder or its folder does not exist,
        a metadata value has no plain form, or a tensor group holds
        something else than tensors (nothing is written).
    """
    folder = Path(path).parent
    if Path(path).is_dir():
        raise ConfigError(f"cannot save to {path}: it is a folder; pass a file name such as {Path(path) / 'model.pt'}")
    if not folder.is_dir():
        raise ConfigError(f"cannot save to {path}: the folder {folder} does not exist")
    metadata = to_plain(metadata, "the model's settings")
    stored = {}
    for group, state in tensors.items():
        for name, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                raise ConfigError(f"cannot save: {group} state '{name}' is a {type(tensor).__name__}, not a tensor")
        stored[str(group)] = {str(name): tensor.detach().cpu() for name, tensor in state.items()}
    content = {"format": _MARK, "version": SAVE_FORMAT, "metadata": metadata, "tensors": stored,
               "sha256": _digest(SAVE_FORMAT, metadata, stored)}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


@dataclass
class SavedFile:
    """A verified save file: ``metadata`` (plain types) and ``tensors``
    (group -> name -> tensor)."""

    metadata: dict
    tensors: dict


def read(path: str | os.PathLike) -> SavedFile:
    """Read and verify a file written by :func:`write` (weights only, digest
    checked).

    :raises SaveFileError: the file is missing, a directory, empty,
        truncated, not a PyTorch archive, not a pyro_dgmm save file, of
        another format version, or its digest does not match (the message
        names the file and says which).
    """
    path = Path(path)
    if not path.exists():
        raise SaveFileError(f"save file {path} does not exist")
    if path.is_dir():
        raise SaveFileError(f"save file {path} is a directory, not a file written by DeepMixedModel.save")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            zip_start = handle.read(4) == b"PK\x03\x04"
    except OSError as error:
        raise SaveFileError(f"save file {path} cannot be read: {error.strerror}") from None
    if size == 0:
        raise SaveFileError(f"save file {path} is empty (0 bytes): it was not written completely")
    if not zipfile.is_zipfile(path):
        what = "is truncated or damaged" if zip_start else "is not a PyTorch archive written by DeepMixedModel.save"
        raise SaveFileError(f"save file {path} {what} ({size} bytes)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for damaged or foreign archives
        # the error's own text may suggest weights_only=False, an unsafe reload: name only its kind
        raise SaveFileError(f"save file {path} cannot be read as a pyro_dgmm save file: it is damaged, "
                            f"or holds objects other than plain values and tensors ({type(error).__name__})") from None
    if not (isinstance(content, dict) and content.get("format") in (_MARK, 1)):
        raise SaveFileError(f"save file {path} was written by torch.save but not by DeepMixedModel.save")
    version = content.get("version", content.get("format"))
    if version != SAVE_FORMAT:
        raise SaveFileError(f"save file {path} has save format {version!r}; this pyro_dgmm reads format "
                            f"{SAVE_FORMAT} only (format 1 files have no integrity check): fit and save again")
    metadata, tensors = content.get("metadata"), content.get("tensors")
    well_formed = isinstance(metadata, dict) and isinstance(tensors, dict) and all(
        isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())
        for state in tensors.values())
    if not well_formed or not isinstance(content.get("sha256"), str):
        raise SaveFileError(f"save file {path} lacks the metadata, tensors or digest of a pyro_dgmm save file")
    if _digest(version, metadata, tensors) != content["sha256"]:
        raise SaveFileError(f"save file {path} is corrupted: its SHA-256 digest does not match its content "
                            "(bytes changed after it was saved)")
    return SavedFile(metadata, tensors)
