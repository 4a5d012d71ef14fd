"""pyro_dgmm: Deep Generalized Mixed Models on Pyro.

Importing the package turns on Pyro's module-local parameters
(``pyro.settings.set(module_local_params=True)``): each fitted model keeps
its parameters in its own ``PyroModule`` rather than in Pyro's global
parameter store, so two models never share parameters by name.
"""
import pyro

pyro.settings.set(module_local_params=True)

from .data import DataSchema, LongitudinalData  # noqa: E402
from .errors import ConfigError, DataError, FitError, NotFittedError  # noqa: E402
from .estimator import DeepMixedModel  # noqa: E402
from .families import BoundedContinuous, Bernoulli, Gaussian, Poisson, StudentT, get_family  # noqa: E402
from .fit import FitConfig, FitResult, fit_svi  # noqa: E402
from .guide import AmortizedGuide  # noqa: E402
from .model import DGMM, MixedModel  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AmortizedGuide", "Bernoulli", "BoundedContinuous", "ConfigError", "DGMM", "DataError",
    "DataSchema", "DeepMixedModel", "FitConfig", "FitError", "FitResult", "Gaussian",
    "LongitudinalData", "MixedModel", "NotFittedError", "Poisson", "StudentT", "fit_svi", "get_family",
]
