"""The off-trace masked log-likelihood against the model's own trace: the one
likelihood every sampler uses must be exactly what ``MixedModel.forward``
puts on its sample sites, for every family, the linear dispersion model and
missing cells."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from pyro import poutine

from pyro_dgmm.data import DataSchema
from pyro_dgmm.likelihood import cell_log_likelihood, log_joint, observed_log_likelihood
from pyro_dgmm.model import DGMM

from common import tiny_frame

FAMILIES = {"g": "gaussian", "st": "student_t", "bin": "bernoulli", "count": "poisson", "score": "bounded(1,7)"}


def build(dispersion_model: str):
    """A DGMM over five families with ~20% missing cells, every parameter
    moved off its (partly zero) start so that each part of the observation
    model matters."""
    frame = tiny_frame(n_subjects=15, n_visits=6).assign(st=lambda f: f.g + np.random.default_rng(1).standard_t(3, len(f)))
    frame.loc[frame.index % 5 == 1, "st"] = np.nan
    schema = DataSchema.fit(frame, id_col="pid", time_col="t", outcomes=FAMILIES, covariates=["age", "arm"],
                            time_basis="spline(3)")
    model = DGMM.from_schema(schema, latent_dim=2, dispersion_model=dispersion_model, fixed_hidden=(8,),
                             random_hidden=(8,))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    data = schema.transform(frame)
    assert (~data.mask & data.visit_mask.unsqueeze(-1)).any(-1).any(-1).sum() > 5  # missing cells in play
    return model, data


def trace_log_probs(model, data, b):
    """Per-outcome log-probabilities (N, T) of the ``y_`` sites and the ``b``
    site's (N,) from ``poutine.trace`` of the model with ``b`` (N, q) conditioned."""
    conditioned = poutine.condition(model, data={"b": b.unsqueeze(-2)})
    trace = poutine.trace(conditioned).get_trace(data)
    trace.compute_log_prob()
    return ({name: trace.nodes[f"y_{name}"]["log_prob"] for name in model.outcomes},
            trace.nodes["b"]["log_prob"].squeeze(-1))


@pytest.mark.parametrize("dispersion_model", ["constant", "linear", "linear+random"])
def test_off_trace_likelihood_equals_the_model_trace(dispersion_model):
    """Three draws of b for every subject at once (a leading draws
    dimension) against three traced runs, cell by cell and summed."""
    model, data = build(dispersion_model)
    b = torch.randn(3, data.num_subjects, model.latent_dim)
    with torch.no_grad():
        cells = cell_log_likelihood(model, b, data)
        per_subject = observed_log_likelihood(model, b, data)
        joint = log_joint(model, b, data)
    assert cells.shape == (3, data.num_subjects, data.num_visits, len(FAMILIES))
    for s in range(3):
        sites, prior = trace_log_probs(model, data, b[s])
        traced = torch.stack([sites[name] for name in model.outcomes], -1)
        torch.testing.assert_close(cells[s], traced, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(per_subject[s], traced.sum((-2, -1)), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(joint[s], traced.sum((-2, -1)) + prior, rtol=1e-5, atol=1e-4)
    assert (cells[:, ~data.mask] == 0).all()


def test_filled_values_of_missing_cells_do_not_matter():
    """Other values (inside each family's support: a neighbouring visit's) at
    the unobserved cells leave the likelihood unchanged."""
    model, data = build("linear")
    b = torch.randn(2, data.num_subjects, model.latent_dim)
    other = torch.roll(data.y, 1, dims=1)
    assert (other != data.y)[~data.mask].any()
    refilled = replace(data, y=torch.where(data.mask, data.y, other))
    with torch.no_grad():
        torch.testing.assert_close(observed_log_likelihood(model, b, refilled), observed_log_likelihood(model, b, data))
