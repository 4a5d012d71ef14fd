"""Save files of the analyst facade: what is recorded and how it is rebuilt.

:class:`SaveLoadMethods` is the part of
:class:`~pyro_dgmm.estimator.DeepMixedModel` that writes and reads its
save file through :mod:`pyro_dgmm.storage` (the file format, its digest
and the model-class rules): the constructor's options, the fitted schema,
the padded record length, the latent dimension, the ``missing`` mode (and
the dropout patterns of a pattern-mixture fit), the fit result, and the
model's and guide's weights.  The training data are not stored.

Example:

>>> import tempfile, pathlib
>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> sim = simulate_linear(n_subjects=20, n_visits=4, seed=0)
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, latent_dim=2)
>>> est = est.fit(sim.data, max_epochs=2, progress=False)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
>>> est.save(path)
>>> DeepMixedModel.load(path).latent_dim_
2
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from . import storage
from .data import DataSchema
from .errors import SaveFileError
from .model import MixedModel
from .pattern_mixture import DropoutPatterns, PatternConfig
from .results import FitResult


def saved_facade(path: str | Path) -> str:
    """The name of the facade class that wrote the save file ``path``
    (``'DeepMixedModel'``, ``'JointMixedModel'``): the class whose ``load``
    reads it.

    :raises SaveFileError: as :meth:`SaveLoadMethods.load`.
    """
    return storage.read(path).metadata.get("facade", "DeepMixedModel")


class SaveLoadMethods:
    """:meth:`save` and :meth:`load` of :class:`~pyro_dgmm.estimator.DeepMixedModel`
    (module docstring)."""

    def save(self, path: str | Path) -> None:
        """Save the fitted model (configuration, schema, weights, fit history)
        to ``path`` in the format of :mod:`pyro_dgmm.storage`: written
        atomically (a failed save leaves the previous file intact), plain
        types only (so :meth:`load` reads it with ``weights_only=True``), with
        a SHA-256 digest that :meth:`load` verifies.  The training data are
        not stored.

        :raises ConfigError: an option has no plain form (the message says
            which); nothing is written.
        """
        self._check_fitted()
        storage.write(path, metadata={
            "init": self._init_kwargs(),
            "model_class": storage.model_class_name(self.model_class),
            "schema": self.schema_.to_spec(),
            "num_visits": self.num_visits_,
            "latent_dim": self.latent_dim_,
            "time_functions": self.time_functions_,
            "missing": self.missing,
            "patterns": None if self.patterns_ is None else {"patterns": self.patterns_.to_spec(),
                                                             "config": asdict(self.pattern_config_)},
            "result": asdict(self.result_),
            "facade": type(self).__name__,
            "extra": self._extra_metadata(),
        }, tensors={"model": self.model_.state_dict(), "guide": self.guide_.state_dict()})

    @classmethod
    def load(cls, path: str | Path, model_class: type[MixedModel] | None = None) -> "SaveLoadMethods":
        """Load a model saved with :meth:`save`; it predicts exactly as before.
        The training data are not stored: pass ``df`` to ``fitted_values``.

        The file's model class is never imported from the file's say-so: it
        is ``model_class`` if given (any :class:`~pyro_dgmm.model.MixedModel`
        subclass whose parameters fit the stored weights, e.g. a class
        defined in ``__main__``), else a class registered with
        :func:`~pyro_dgmm.storage.register_model_class`, else one shipped by
        pyro_dgmm (rules in :mod:`pyro_dgmm.storage`).

        :raises SaveFileError: the file is missing, damaged, not a pyro_dgmm
            save file, names a class that is not allowed, or its weights do
            not fit the model class, or it was written by another facade
            that keeps state of its own (a ``JointMixedModel`` file read
            with ``DeepMixedModel.load``); the message names the file.
        """
        saved = storage.read(path)
        meta = saved.metadata
        facade = meta.get("facade", "DeepMixedModel")  # files written before facades were recorded
        # another facade's file reads only if neither keeps state of its own (e.g. a user's subclass)
        if facade != cls.__name__ and (meta.get("extra") or cls._extra_metadata is not SaveLoadMethods._extra_metadata):
            raise SaveFileError(f"save file {path} holds a {facade}, not a {cls.__name__}: load it with "
                                f"{facade}.load (or saved_facade(path) to tell which)")
        model_class = storage.resolve_model_class(meta.get("model_class"), path, model_class)
        try:
            self = cls(model_class=model_class, **meta["init"])
            self.schema_ = DataSchema.from_spec(meta["schema"])
            self.latent_dim_, self.num_visits_ = meta["latent_dim"], meta["num_visits"]
            self.time_functions_ = meta.get("time_functions")  # files written before the race: absent
            self._restore_extra(meta.get("extra", {}))
            self.model_, self.guide_ = self._build(self.schema_, self.num_visits_, self.latent_dim_)
            self.model_.load_state_dict(saved.tensors["model"])
            self.guide_.load_state_dict(saved.tensors["guide"])
            self.missing = meta["missing"]
            if meta.get("patterns") is not None:  # missing='pattern_mixture'
                self.patterns_ = DropoutPatterns.from_spec(meta["patterns"]["patterns"])
                self.pattern_config_ = PatternConfig(**meta["patterns"]["config"])
            self.result_ = FitResult(**meta["result"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # ConfigError is a ValueError
            raise SaveFileError(f"save file {path} does not describe a model this pyro_dgmm can rebuild as a "
                                f"{model_class.__qualname__}: {error}") from error
        self.model_.eval(), self.guide_.eval()
        return self

    def _extra_metadata(self) -> dict:
        """A subclass's own fitted state for the save file (plain types), given
        back to :meth:`_restore_extra` before the model is rebuilt; none here."""
        return {}

    def _restore_extra(self, extra: dict) -> None:
        """Restore what :meth:`_extra_metadata` saved; nothing here."""

    def _init_kwargs(self) -> dict:
        o = self.options
        return {
            "id_col": self.id_col, "time_col": self.time_col,
            "outcomes": {k: f.to_spec() for k, f in self.schema_.families.items()},
            "covariates": self.covariates,
            "time_basis": self.schema_.time_basis.to_spec(),
            "latent_dim": o.latent_dim, "model_options": o.model_options, "encoder": o.encoder,
            "encoder_hidden": list(o.encoder_hidden), "covariance": o.covariance,
            "activation": o.activation, "validation_fraction": self.validation_fraction,
            "time_unit": self.time_unit,
        }
