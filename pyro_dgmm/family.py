r"""The contract of an outcome family: the :class:`Family` base class.

A family bundles everything the model needs to know about one outcome:
the link :math:`g`, the likelihood :math:`F(g^{-1}(\eta), \theta)`, the
support check of the raw data, the transform of the data fed to the
encoder and data-driven starting values.  A family of your own subclasses
:class:`Family` and implements its abstract methods (tutorial 2);
:mod:`pyro_dgmm.families` holds the built-in ones and the registry of
names, and re-exports :class:`Family` (``from pyro_dgmm.families import
Family`` is the usual import).

>>> sd_or_one([1.0, float("nan"), 3.0])
1.0
>>> from pyro_dgmm.families import Poisson
>>> isinstance(Poisson(), Family), Poisson().initial_offset([0.0, 0.0])
(True, -4.605170185988091)
"""

from __future__ import annotations

import abc
import json
import math

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyro_dgmm.errors import DataError

#: Observed means are clipped to ``[MEAN_CLIP, 1 - MEAN_CLIP]`` (probability
#: scale) or to ``>= MEAN_CLIP`` (counts) before the link is applied in
#: :meth:`Family.initial_offset`, so that an outcome that is all 0 (or all 1)
#: gives a finite starting predictor.
MEAN_CLIP = 0.01


def observed_values(values: np.ndarray) -> np.ndarray:
    """The non-NaN entries of ``values`` as a 1-d float array; at least one."""
    values = np.asarray(values, dtype=float).ravel()
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        raise DataError("cannot compute starting values: every value is missing (NaN)")
    return observed


def sd_or_one(values: np.ndarray) -> float:
    """SD (``ddof=0``) of the observed values, or 1.0 when it is 0 or undefined."""
    sd = float(np.std(observed_values(values)))
    return sd if sd > 0 and math.isfinite(sd) else 1.0


class Family(abc.ABC):
    """An outcome family: link ``g``, likelihood ``F`` and data support.

    Subclasses set the class attributes ``name``, ``has_dispersion`` and
    ``dispersion_name`` and implement the abstract methods. All tensor
    methods work elementwise on tensors of any shape.
    """

    #: Short name used in specs and messages, e.g. ``'gaussian'``.
    name: str
    #: Whether the model learns one positive dispersion parameter for this outcome.
    has_dispersion: bool = False
    #: Name of that parameter (``'sigma'``, ``'precision'``) or ``None``.
    dispersion_name: str | None = None
    #: Whether ``y - c`` follows the family with its location moved by ``-c``
    #: on the whole real line, so the schema may subtract the training mean in
    #: float64 before the float32 cast (:mod:`pyro_dgmm.data`); True for
    #: :class:`~pyro_dgmm.families.Gaussian`, False where a shift would leave the support.
    shift_invariant: bool = False
    #: Names of further per-outcome parameters the model learns for this
    #: family (such as the Student-t degrees of freedom ``('df',)``); they
    #: reach :meth:`distribution` as keyword arguments.  Empty for most families.
    shape_names: tuple[str, ...] = ()

    # ----------------------------------------------------------------- link
    @abc.abstractmethod
    def inverse_link(self, eta: torch.Tensor) -> torch.Tensor:
        """Response-scale mean ``E[y | eta] = g^{-1}(eta)``; same shape as ``eta``."""

    @abc.abstractmethod
    def link(self, mean: torch.Tensor) -> torch.Tensor:
        """The link ``g(mean)``, inverse of :meth:`inverse_link`; same shape as ``mean``."""

    # ----------------------------------------------------------- likelihood
    @abc.abstractmethod
    def distribution(
        self, eta: torch.Tensor, dispersion: torch.Tensor | None
    ) -> dist.TorchDistribution:
        """The distribution of ``y`` given ``eta`` on the original data scale.

        Args:
            eta: linear predictor, shape ``S`` (any).
            dispersion: the dispersion parameter, a scalar tensor or one that
                broadcasts to ``S``; must be ``None`` exactly when
                ``has_dispersion`` is False.

        Returns:
            A Pyro distribution with ``batch_shape == S`` and ``event_shape == ()``.
        """

    def constrain(self, draws: torch.Tensor) -> torch.Tensor:
        """Map draws of :meth:`distribution` into the support (identity here)."""
        return draws

    def initial_shape(self) -> dict[str, float]:
        """Starting values of the parameters :attr:`shape_names` (none here)."""
        return {}

    def shape_constraint(self, name: str) -> constraints.Constraint:
        """Support of the shape parameter ``name``, with the bijection the
        model optimises it through (``biject_to(constraint)``)."""
        raise KeyError(f"the {self.name} family has no shape parameter '{name}'")

    # ---------------------------------------------------------------- data
    #: Human-readable description of the support, for error messages.
    support_description: str

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask, True where a non-NaN value lies outside the support.

        NaN marks a missing value and is never invalid; ``±inf`` always is.

        Args:
            values: array of any shape.

        Returns:
            Boolean array of the same shape.
        """
        values = np.asarray(values, dtype=float)
        return ~np.isnan(values) & ~(np.isfinite(values) & self._in_support(values))

    @abc.abstractmethod
    def _in_support(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of finite ``values`` in the support (NaN/inf: anything)."""

    @abc.abstractmethod
    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Transform of valid data values used as encoder input; finite for valid values."""

    # ------------------------------------------------------ starting values
    def initial_offset(self, values: np.ndarray) -> float:
        """Starting linear predictor: ``g(mean of the observed values)`` (safeguarded)."""
        mean = float(np.mean(observed_values(values)))
        return float(self.link(torch.tensor(self._safe_mean(mean), dtype=torch.float64)))

    def _safe_mean(self, mean: float) -> float:
        """Clip an observed mean into the region where :meth:`link` is finite."""
        return mean

    def initial_scale(self, values: np.ndarray) -> float:
        """Factor multiplying the network's output for this outcome (1.0 here)."""
        observed_values(values)
        return 1.0

    def initial_dispersion(self, values: np.ndarray) -> float | None:
        """Starting value of the dispersion parameter, ``None`` without one."""
        observed_values(values)
        return None

    # -------------------------------------------------------- serialisation
    def to_spec(self) -> dict:
        """JSON-serialisable dict from which :func:`~pyro_dgmm.families.get_family` rebuilds this family."""
        return {"name": self.name}

    def _dispersion_for(self, eta: torch.Tensor, dispersion) -> torch.Tensor | None:
        """Check ``dispersion`` against ``has_dispersion``; expand it to ``eta.shape``."""
        if not self.has_dispersion:
            if dispersion is not None:
                raise ValueError(f"the {self.name} family has no dispersion parameter; pass None")
            return None
        if dispersion is None:
            raise ValueError(
                f"the {self.name} family needs its dispersion ({self.dispersion_name}); got None"
            )
        return torch.as_tensor(dispersion, dtype=eta.dtype, device=eta.device).expand(eta.shape)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Family):
            return NotImplemented
        return self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_spec(), sort_keys=True))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_spec().items() if k != "name")
        return f"{type(self).__name__}({params})"
