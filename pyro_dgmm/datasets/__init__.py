"""Data sets for pyro_dgmm: the PBC follow-up data and simulators with known truth.

* :func:`load_pbc` loads the Mayo Clinic PBC follow-up visits (R
  ``survival::pbcseq``), with :data:`PBC_CODEBOOK`, suggested outcome
  families :data:`PBC_OUTCOMES` and the column roles :data:`PBC_ID`,
  :data:`PBC_TIME`, :data:`PBC_COVARIATES`; :func:`load_pbc_events` the
  patients' follow-up and status (one row per patient) for joint models.
* The simulators return a :class:`SimulatedData` (data, truth, random
  effects, population means); :data:`SIMULATORS` maps a short name to each.
  :func:`simulate_joint` adds event times (:class:`JointSimulatedData`) for
  joint models.

Example:

>>> load_pbc()[["id", "years"]].shape[1]
2
>>> simulate_linear(n_subjects=3, n_visits=2, seed=0).data.shape
(6, 5)
"""

from pyro_dgmm.datasets.app import simulate_app
from pyro_dgmm.datasets.pbc import (
    PBC_CODEBOOK,
    PBC_COVARIATES,
    PBC_ID,
    PBC_OUTCOMES,
    PBC_TIME,
    load_pbc,
    load_pbc_events,
)
from pyro_dgmm.datasets.simulate import (
    SimulatedData,
    simulate_dropout,
    simulate_linear,
    simulate_linear_noise,
    simulate_nonlinear,
)
from pyro_dgmm.datasets.joint import JointSimulatedData, simulate_joint
from pyro_dgmm.datasets.trial import simulate_trial

SIMULATORS = {
    "linear": simulate_linear,
    "nonlinear": simulate_nonlinear,
    "dropout": simulate_dropout,
    "app": simulate_app,
    "trial": simulate_trial,
}

__all__ = [
    "PBC_CODEBOOK",
    "PBC_COVARIATES",
    "PBC_ID",
    "PBC_OUTCOMES",
    "PBC_TIME",
    "SIMULATORS",
    "JointSimulatedData",
    "SimulatedData",
    "load_pbc",
    "load_pbc_events",
    "simulate_app",
    "simulate_dropout",
    "simulate_joint",
    "simulate_linear",
    "simulate_linear_noise",
    "simulate_nonlinear",
    "simulate_trial",
]
