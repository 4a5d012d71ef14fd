"""Exceptions raised by pyro_dgmm.

Every message names what the user can change: the column, the rows, the
option. None of these is raised for an internal inconsistency; those stay
``AssertionError``/``RuntimeError``.

Example:

>>> issubclass(DataError, ValueError), issubclass(NotFittedError, RuntimeError)
(True, True)
>>> describe_rows([3, 8, 12, 20, 21, 30, 31])
'rows 3, 8, 12, 20, 21 (and 2 more)'
"""


class DgmmError(Exception):
    """Base class of every error pyro_dgmm raises on purpose."""


class DataError(DgmmError, ValueError):
    """The input data (a DataFrame, a column, some rows) cannot be used as given."""


class ConfigError(DgmmError, ValueError):
    """An option (family, basis, network size, fit setting) is not valid."""


class SaveFileError(ConfigError):
    """A save file cannot be loaded: missing, damaged (its digest does not
    match), not written by pyro_dgmm, or naming a model class that was
    neither passed, registered nor shipped (see :mod:`pyro_dgmm.storage`)."""


class NotFittedError(DgmmError, RuntimeError):
    """A method that needs a fitted model was called before ``fit``."""


class FitError(DgmmError, RuntimeError):
    """Fitting broke down (for example the loss became NaN)."""


def describe_rows(labels, limit: int = 5) -> str:
    """Format row labels for a message: ``'rows 3, 8, 12 (and 4 more)'``."""
    labels = list(labels)
    shown = ", ".join(str(x) for x in labels[:limit])
    more = f" (and {len(labels) - limit} more)" if len(labels) > limit else ""
    word = "row" if len(labels) == 1 else "rows"
    return f"{word} {shown}{more}"


class ConvergenceWarning(UserWarning):
    """A fit stopped before its convergence test was met (during KL
    annealing, at ``max_epochs`` while still improving, or without ever
    improving on held-out subjects): its estimates may be far from the
    optimum (statsmodels and lme4 warn alike)."""


class ResidualStructureWarning(UserWarning):
    """A converged fit leaves structure in its residuals: consecutive
    residuals of a subject are positively correlated, as when a latent
    direction the data need collapsed or the data carry serial correlation
    the model does not (:mod:`pyro_dgmm.selection`)."""


class LatentDimensionWarning(UserWarning):
    """Every latent direction of a fit is in use: the data may support more
    random-effects directions than ``latent_dim`` gives them."""
