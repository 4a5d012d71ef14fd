"""Model parameters as one flat vector, for likelihood-based inference.

The Wald standard errors (:mod:`pyro_dgmm.wald`), the marginal likelihood
as a function of :math:`\\theta` (:mod:`pyro_dgmm.marginal`) and the
parameter count (:mod:`pyro_dgmm.comparison`) all evaluate a float64 copy
of the model with some named parameters replaced by slices of a flat
vector theta (``torch.func.functional_call``).  This module owns that
layout, the labels of its scalars (``'sigma[y]'``, ``'name[i,j]'``), the
names of the linear parts of :class:`~pyro_dgmm.model.DGMM` and the
constrained value of a PyroParam stored unconstrained.

Example:

>>> import torch
>>> layout = Layout(torch.nn.Linear(2, 1), ["weight", "bias"])
>>> layout.slices
{'weight': slice(0, 2, None), 'bias': slice(2, 3, None)}
"""
from __future__ import annotations

import copy
import difflib
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

#: Parameters of the linear part of :class:`~pyro_dgmm.nn.FixedEffectsNet`.
LINEAR_FIXED_EFFECTS = (
    "fixed_effects.intercept", "fixed_effects.time_skip.weight", "fixed_effects.covariate_effects.weight",
)
#: The covariate-by-time fixed effects of a DGMM built with ``covariate_time=True``.
COVARIATE_TIME_EFFECTS = "fixed_effects.covariate_time.weight"
#: The matrix A of the linear random effects Z A b (covariance s^2 A A').
LINEAR_RANDOM_EFFECTS = "random_effects.linear_coefficients.weight"
#: The linear parts a DGMM may have, in table order: fixed effects, covariate-by-time terms, random-effects map.
LINEAR_PARAMETERS = (*LINEAR_FIXED_EFFECTS, COVARIATE_TIME_EFFECTS, LINEAR_RANDOM_EFFECTS)
#: Eigenvalues of an information or Jacobian Gram matrix below this fraction of the largest are flat directions.
NULL_RTOL = 1e-7


def present(model, names) -> list[str]:
    """The parameter ``names`` that ``model`` has, in the order given (a
    linear DGMM has every linear part; a deep one only some)."""
    known = dict(model.named_parameters())
    return [name for name in names if name in known]


class Bound(nn.Module):
    """Holds a model so that ``torch.func.functional_call`` can evaluate any
    function of it at substituted parameters (keys ``'model.<name>'``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


def float64_copy(model, device) -> Bound:
    """A float64 copy of ``model`` on ``device``, without gradients of its own."""
    clone = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    for p in clone.parameters():
        p.requires_grad_(False)
    return Bound(clone)


class Layout:
    """Where each named parameter's elements sit in a flat vector theta (P,)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        params = dict(model.named_parameters())
        self.names = list(names)
        self.shapes = [params[name].shape for name in self.names]
        ends = np.cumsum([math.prod(shape) for shape in self.shapes]).tolist()
        self.slices = {name: slice(end - math.prod(shape), end)
                       for name, shape, end in zip(self.names, self.shapes, ends)}

    def values(self, model: nn.Module) -> torch.Tensor:
        """The parameters' current values, flattened, (P,)."""
        params = dict(model.named_parameters())
        flat = [params[name].detach().reshape(-1) for name in self.names]
        return torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta (P,) -> {'model.<name>': tensor of the parameter's shape}, for functional_call."""
        return {f"model.{name}": theta[self.slices[name]].reshape(shape)
                for name, shape in zip(self.names, self.shapes)}


def assign(model, layout: Layout, theta: torch.Tensor) -> None:
    """Copy theta (P,) into the model's parameters ``layout.names``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in layout.unflatten(theta).items():
            target = params[key.removeprefix("model.")]
            target.copy_(value.to(target))


def dispersion_labels(model) -> dict[str, str]:
    """Parameter name of each observation-model parameter (dispersions, their
    slopes, shape parameters such as the Student-t df) -> label such as
    ``'sigma[y]'`` (:meth:`~pyro_dgmm.model.MixedModel.observation_parameters`)."""
    return model.observation_parameters()


def observation_parameter_names(model, chosen: Sequence[str] | str | None) -> list[str]:
    """``named_parameters()`` names of the chosen observation-model parameters,
    given by name (``'serial_scale'``) or label (``'serial tau[log_bili]'``,
    ``'df[protime]'``) as :func:`dispersion_labels` lists them; None: all of them.

    :raises ConfigError: a name or label the model's observation model does
        not have (the valid ones listed), or an empty choice."""
    labels = dispersion_labels(model)
    if chosen is None:
        return list(labels)
    by_label = {label: name for name, label in labels.items()}
    names = []
    for item in [chosen] if isinstance(chosen, str) else chosen:
        name = item if item in labels else by_label.get(item)
        if name is None:
            choices = ", ".join(f"'{name}' ({label})" for name, label in labels.items())
            raise ConfigError(f"{item!r} is not an observation-model parameter of this model; "
                              f"its observation-model parameters are {choices}")
        names.append(name)
    if not names:
        raise ConfigError("no observation-model parameter chosen; pass None for all of them")
    return names


def select_parameters(model, parameters: Sequence[str], include_dispersion: bool) -> list[str]:
    """Dispersions (optionally) then ``parameters``, checked against the model's names."""
    if isinstance(parameters, str):
        parameters = [parameters]
    known = [name for name, _ in model.named_parameters()]
    for name in parameters:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"the model has no parameter '{name}'{hint}; its parameters are {known}")
    chosen = list(dispersion_labels(model)) if include_dispersion else []
    chosen += [name for name in parameters if name not in chosen]
    if not chosen:
        raise ConfigError("no parameters chosen: pass parameters=[...] (names from model.named_parameters())")
    return chosen


def element_labels(model, layout: Layout) -> list[str]:
    """One label per scalar: ``'sigma[y]'`` or ``'name[i,j]'`` (``'name'`` for one-element tensors)."""
    dispersions = dispersion_labels(model)
    labels = []
    for name, shape in zip(layout.names, layout.shapes):
        base = dispersions.get(name, name)
        if math.prod(shape) == 1:
            labels.append(base)
        else:
            labels += [f"{base}[{','.join(map(str, index))}]" for index in np.ndindex(*shape)]
    return labels


def constraint_of(bound: Bound, name: str):
    """u -> the constrained value of the PyroParam stored as ``name`` = '<path>_unconstrained'."""
    path = name[: -len("_unconstrained")]
    module_path, _, attr = path.rpartition(".")

    def constrain(u: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            bound, {f"model.{name}": u}, (lambda m: getattr(m.get_submodule(module_path), attr),))

    return constrain
