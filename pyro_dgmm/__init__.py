"""pyro_dgmm: Deep Generalized Mixed Models on Pyro.

Importing the package changes no Pyro setting.  Models and guides are
``PyroModule`` objects with process-unique names
(:func:`~pyro_dgmm.model.unique_name`), so Pyro's own ``SVI`` loop, ``poutine.trace``
and the global parameter store see every parameter, and two models never
share parameters by name.

Example (a two-epoch fit on a tiny simulated data set):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> df = simulate_linear(n_subjects=12, n_visits=4, seed=0).data
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"])
>>> est = est.fit(df, max_epochs=2, progress=False)  # a real fit runs until it converges
>>> est.fitted_values(num_samples=20).columns.tolist()
['id', 'time', 'y', 'y_fitted']
"""
from .data import DataSchema, LongitudinalData
from .errors import ConfigError, DataError, FitError, NotFittedError
from .estimator import DeepMixedModel
from .families import BoundedContinuous, Bernoulli, Gaussian, Poisson, StudentT, get_family, register_family
from .fit import FitConfig, fit_svi
from .results import FitResult
from .guide import AmortizedGuide
from .model import DGMM, MixedModel
from .storage import register_model_class

__version__ = "0.1.0"

__all__ = [
    "AmortizedGuide", "Bernoulli", "BoundedContinuous", "ConfigError", "DGMM", "DataError",
    "DataSchema", "DeepMixedModel", "FitConfig", "FitError", "FitResult", "Gaussian",
    "LongitudinalData", "MixedModel", "NotFittedError", "Poisson", "StudentT", "fit_svi", "get_family",
    "register_family", "register_model_class",
]
