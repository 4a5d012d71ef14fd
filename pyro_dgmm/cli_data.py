"""Where the ``fit`` command's data come from: a shipped data set
(``--dataset``, its columns fixed) or the outcome columns and families named
by ``--outcome``.

>>> parse_outcomes(["albumin:gaussian", "spiders:bernoulli"])
{'albumin': 'gaussian', 'spiders': 'bernoulli'}
"""
from __future__ import annotations

from .errors import ConfigError

SHIPPED = ("pbc", "linear", "nonlinear", "dropout", "app")


def parse_outcomes(items: list[str]) -> dict[str, str]:
    """``--outcome NAME:FAMILY`` arguments as ``{name: family}``."""
    outcomes = {}
    for item in items:
        name, sep, family = item.rpartition(":")
        if not sep or not name:
            raise ConfigError(f"--outcome expects NAME:FAMILY (e.g. y:gaussian), got '{item}'")
        outcomes[name] = family
    return outcomes


def shipped(name: str, seed: int, families: dict[str, str]):
    """(frame, id, time, outcomes, covariates) of the shipped data set
    ``name``, with ``families`` (from ``--outcome``) replacing the families
    of some of its outcomes, e.g. ``--dataset pbc --outcome
    protime:student_t``; a name that is not one of its outcomes is an error."""
    from . import datasets

    if name == "pbc":
        frame, id_col, time_col = datasets.load_pbc(), datasets.PBC_ID, datasets.PBC_TIME
        outcomes, covariates = dict(datasets.PBC_OUTCOMES), list(datasets.PBC_COVARIATES)
    else:
        sim = datasets.SIMULATORS[name](seed=seed)
        frame, id_col, time_col = sim.data, sim.id_col, sim.time_col
        outcomes, covariates = dict(sim.outcomes), list(sim.covariates)
    unknown = sorted(set(families) - set(outcomes))
    if unknown:
        raise ConfigError(f"--outcome {unknown[0]}: not an outcome of the {name} data set; with --dataset, "
                          f"--outcome NAME:FAMILY changes the family of one of {sorted(outcomes)}")
    outcomes.update(families)
    return frame, id_col, time_col, outcomes, covariates


def refuse_csv_options(args) -> None:
    """With ``--dataset`` the columns are the data set's: ``--id``, ``--time``,
    ``--covariate`` and ``--covariate-formula`` are refused, not ignored."""
    given = [flag for flag, value in (("--id", args.id), ("--time", args.time), ("--covariate", args.covariate),
                                      ("--covariate-formula", args.covariate_formula)) if value]
    if given:
        raise ConfigError(f"{given[0]} is for CSV input: the {args.dataset} data set's columns are fixed "
                          "(--outcome NAME:FAMILY can change the family of one of its outcomes)")
