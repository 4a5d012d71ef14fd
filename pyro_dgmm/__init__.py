"""pyro_dgmm: Deep Generalized Mixed Models on Pyro.

Importing the package changes no Pyro setting.  Models and guides are
``PyroModule`` objects with process-unique names
(:func:`~pyro_dgmm.model.unique_name`), so Pyro's own ``SVI`` loop, ``poutine.trace``
and the global parameter store see every parameter, and two models never
share parameters by name.
"""
from .data import DataSchema, LongitudinalData
from .errors import ConfigError, DataError, FitError, NotFittedError
from .estimator import DeepMixedModel
from .families import BoundedContinuous, Bernoulli, Gaussian, Poisson, get_family, register_family
from .fit import FitConfig, FitResult, fit_svi
from .guide import AmortizedGuide
from .model import DGMM, MixedModel

__version__ = "0.1.0"

__all__ = [
    "AmortizedGuide", "Bernoulli", "BoundedContinuous", "ConfigError", "DGMM", "DataError",
    "DataSchema", "DeepMixedModel", "FitConfig", "FitError", "FitResult", "Gaussian",
    "LongitudinalData", "MixedModel", "NotFittedError", "Poisson", "fit_svi", "get_family",
    "register_family",
]
