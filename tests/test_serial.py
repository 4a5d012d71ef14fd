"""The serial process (pyro_dgmm.serial, ``serial_process='brownian'``):
its basis against Brownian motion's covariance, the model's latent layout
and options, the marginal likelihood against the closed form, fit /
predict / impute / save-load, and a statistical test on a simulation with
the matching truth."""
import math
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyro_dgmm import ConfigError, DeepMixedModel, marginal, parameters
from pyro_dgmm.data import DataSchema
from pyro_dgmm.datasets import simulate_linear_noise
from pyro_dgmm.guide import AmortizedGuide
from pyro_dgmm.model import DGMM
from pyro_dgmm.serial import brownian_basis


def test_basis_covariance_converges_to_brownian_min_t_u():
    """sum_j phi_j(t) phi_j(u) = min(t, u) for J -> infinity: with 2,000
    terms within 0.002 on [0, 5] (the truncation error is about
    S / (pi^2 J)); with 8 terms the variance at the span's end is still
    within 3% of S (the terms' variances sum as 8 / pi^2 sum 1/(j - 1/2)^2)."""
    t = torch.linspace(0, 5, 11, dtype=torch.float64)
    phi = brownian_basis(t, span=5.0, num_terms=2000)
    exact = torch.minimum(t[:, None], t[None, :])
    assert (phi @ phi.T - exact).abs().max() < 2e-3
    coarse = brownian_basis(torch.tensor([5.0], dtype=torch.float64), span=5.0, num_terms=8)
    assert abs(coarse.pow(2).sum().item() / 5.0 - 1) < 0.03
    # past the span the process is held at its value at S
    held = brownian_basis(torch.tensor([5.0, 7.5]), span=5.0, num_terms=8)
    assert torch.equal(held[0], held[1])


def schema_and_data(n=8, visits=6, seed=0):
    sim = simulate_linear_noise(n, visits, seed, brownian_sd=0.3)
    schema = DataSchema.fit(sim.data, id_col="id", time_col="time", outcomes={"y": "gaussian"},
                            covariates=sim.covariates, time_basis="poly(1)")
    return schema, schema.transform(sim.data)


def test_latent_layout_and_the_process_enters_eta_linearly():
    """b = (q random effects, K_s x J process coefficients); the process
    coordinates change eta by s_k tau_k sum_j z_j phi_j(t), the random
    effects' part is unchanged by them."""
    schema, data = schema_and_data()
    model = DGMM.from_schema(schema, 2, fixed_hidden=(), random_hidden=(), serial_process="brownian",
                             serial_terms=5)
    assert (model.random_effects_dim, model.latent_dim, model.serial_outcomes) == (2, 7, ["y"])
    assert model.serial_span == pytest.approx(float(data.times.max()), rel=1e-6)
    b = torch.randn(data.num_subjects, 7)
    z = b[:, 2:]
    without = b.clone()
    without[:, 2:] = 0
    expected = (model.outcome_scale[0] * model.serial_scale[0]
                * (brownian_basis(data.times, model.serial_span, 5) * z[:, None, :]).sum(-1))
    with torch.no_grad():
        difference = model.eta(b, data)[..., 0] - model.eta(without, data)[..., 0]
    assert torch.allclose(difference, expected, atol=1e-5)
    assert "serial tau[y]" in model.observation_parameters().values()


@pytest.mark.parametrize("options, match", [
    ({"serial_process": "ou"}, "serial_process must be one of"),
    ({"serial_process": "brownian", "serial_outcomes": ["nope"]}, "serial_outcomes must name outcomes"),
    ({"serial_process": "brownian", "serial_terms": 0}, "serial_terms must be a positive integer"),
    ({"serial_process": "brownian", "serial_span": -1.0}, "serial_span must be a positive"),
])
def test_bad_serial_options_raise_config_errors_naming_the_option(options, match):
    schema, _ = schema_and_data()
    with pytest.raises(ConfigError, match=match):
        DGMM.from_schema(schema, 2, **options)


def test_marginal_likelihood_matches_the_closed_form_with_the_process_covariance():
    """Linear nets: y_i ~ N(eta_i(0), Z A A' Z' + s^2 tau^2 Phi Phi' + sigma^2 I),
    with Phi the basis at the subject's times.  The importance-sampled
    marginal likelihood (the engine behind every likelihood tool) at an
    untrained encoder's proposal, adapted (the Laplace step is exact for
    this Gaussian posterior), equals that closed form, built here from the
    random-effects net and :func:`brownian_basis` rather than from the
    model's eta."""
    schema, data = schema_and_data(n=10, visits=6)
    model = DGMM.from_schema(schema, 2, fixed_hidden=(), random_hidden=(), serial_process="brownian",
                             serial_terms=6)
    with torch.no_grad():
        model.serial_scale.fill_(0.4)
    guide = AmortizedGuide.from_schema(schema, model.latent_dim)
    with torch.no_grad():
        model64 = parameters.float64_copy(model, "cpu").model
        data64 = data.to(dtype=torch.float64)
        n, q = data64.num_subjects, 2
        eye = torch.eye(q, dtype=torch.float64)
        scale = model64.outcome_scale[0]
        eta0 = model64.eta(torch.zeros(n, model.latent_dim, dtype=torch.float64), data64)[..., 0]
        features = data64.time_features
        jac = torch.stack([scale * model64.random_effects(eye[j].expand(n, q), features)[..., 0]
                           for j in range(q)], -1)
        phi = brownian_basis(data64.times, model.serial_span, 6) * scale * 0.4
        cov = (jac @ jac.transpose(-1, -2) + phi @ phi.transpose(-1, -2)
               + model64.dispersion("y") ** 2 * torch.eye(data64.num_visits, dtype=torch.float64))
        exact = dist.MultivariateNormal(eta0, cov).log_prob(data64.y[..., 0])
    result = marginal.marginal_log_likelihood(model, guide, data, 2000, seed=0)
    assert (result.per_subject - exact).abs().max() < 1e-6


@pytest.fixture(scope="module")
def brief():
    """A briefly fitted DGMM with the process on 40 simulated subjects."""
    sim = simulate_linear_noise(40, 6, 0, brownian_sd=0.3)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=sim.covariates,
                         time_basis="poly(1)", latent_dim=2, model_options={"serial_process": "brownian",
                                                                             "serial_terms": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a brief fit does not converge
        est.fit(sim.data, progress=False, seed=0, max_epochs=3)
    return sim, est


def test_fit_predict_impute_and_save_load_carry_the_process(brief, tmp_path):
    sim, est = brief
    assert est.model_.latent_dim == 6 and est.guide_.posterior(est.data_).loc.shape[-1] == 6
    history = sim.data[sim.data.time <= 5]
    prediction = est.predict(history, [6.0, 9.0], num_samples=200, seed=1)
    assert prediction.table["mean"].notna().all()
    completed = est.impute(sim.data.assign(y=sim.data.y.mask(sim.data.index % 4 == 0)), num_imputations=2, seed=1)
    assert all(frame["y"].notna().all() for frame in completed)
    path = tmp_path / "serial.pt"
    est.save(path)
    loaded = DeepMixedModel.load(path)
    assert loaded.model_.serial_outcomes == ["y"] and loaded.model_.serial_terms == 4
    assert torch.equal(loaded.model_.serial_scale, est.model_.serial_scale)
    again = loaded.predict(history, [6.0, 9.0], num_samples=200, seed=1)
    np.testing.assert_allclose(again.table["mean"], prediction.table["mean"], rtol=1e-6)


@pytest.mark.slow
def test_simulated_brownian_drift_scale_recovered_and_far_intervals_hold():
    """300 subjects x 10 visits of a random intercept and slope plus a
    Brownian drift with SD 0.3 per root time unit and noise SD 0.5
    (``simulate_linear_noise(brownian_sd=0.3)``); the linear DGMM with the
    process, fitted by SVI (which shrinks tau towards 0: measured 0.006)
    and then ``refine_observation_model()``: tau within 15% of 0.3
    (measured 0.288) and sigma within 10% of 0.5 (0.519).  300 new subjects
    predicted from their visits up to time 5: 95% intervals 2-5 time units
    past the landmark cover 93-97% (measured 0.957; the same model without
    the process covers 0.91 there, its intervals not widening with the gap)."""
    from pyro_dgmm.evaluation import landmark_evaluation

    train = simulate_linear_noise(300, 10, 0, brownian_sd=0.3)
    test = simulate_linear_noise(300, 10, 1000, brownian_sd=0.3)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=train.covariates,
                         time_basis="poly(1)", latent_dim=2,
                         model_options={"fixed_hidden": (), "random_hidden": (), "serial_process": "brownian"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / Pareto k notes of the fit
        est.fit(train.data, progress=False, seed=0)
        est.refine_observation_model(num_samples=1000)
    model = est.model_
    tau = abs(float(model.serial_scale.detach()[0] * model.outcome_scale[0]))
    assert tau == pytest.approx(0.3, rel=0.15)
    assert float(model.dispersion("y").detach()) == pytest.approx(0.5, rel=0.1)
    result = landmark_evaluation(model, est.guide_, est.schema_, test.data.assign(id=test.data.id + 300), 5.0,
                                 horizon_bins=[0, 2, 6], seed=0)
    far = result.scores[(result.scores.method == "model") & (result.scores.horizon == "(2.0, 6.0]")].iloc[0]
    assert far["n"] > 800 and 0.93 <= far["coverage_95"] <= 0.97


def test_refine_observation_model_moves_only_the_chosen_parameters():
    """``refine_observation_model(["serial_scale"])`` (the PBC recommendation,
    docs/prediction.md) moves tau and leaves the dispersion where SVI left it;
    the label form names the same parameter; an unknown name is refused with
    the model's observation-model parameters listed."""
    sim = simulate_linear_noise(40, 6, 0, brownian_sd=0.3)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=sim.covariates,
                         time_basis="poly(1)", latent_dim=2,
                         model_options={"fixed_hidden": (), "random_hidden": (), "serial_process": "brownian",
                                        "serial_terms": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a brief fit does not converge
        est.fit(sim.data, progress=False, seed=0, max_epochs=3, refine=False)  # tau where SVI left it
    sigma = est.model_.dispersion("y").detach().clone()
    tau = est.model_.serial_scale.detach().clone()
    result = est.refine_observation_model(["serial tau[y]"], num_samples=300)
    assert result.log_likelihood_after > result.log_likelihood_before
    assert not torch.equal(est.model_.serial_scale.detach(), tau)
    assert torch.equal(est.model_.dispersion("y").detach(), sigma)
    assert parameters.observation_parameter_names(est.model_, "serial_scale") == ["serial_scale"]
    with pytest.raises(ConfigError, match=r"'df\[y\]' is not an observation-model parameter.*serial_scale"):
        est.refine_observation_model(["df[y]"])


def test_fit_moves_the_serial_scale_to_its_maximum_unless_refine_is_false():
    """A deep DGMM has no closed-form likelihood, so ``refine='auto'`` does
    not refine its linear parts; it still moves the serial scale tau to its
    maximum-likelihood value (``FitResult.serial_refinement``; SVI shrinks
    tau towards 0 in a converged fit, see the slow test above): maximising
    again from the fitted model, with other draws, gains almost nothing.
    ``refine=False`` leaves tau where SVI left it."""
    sim = simulate_linear_noise(40, 6, 3, brownian_sd=0.5)
    fits = {}
    for refine in ("auto", False):
        est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=sim.covariates,
                             time_basis="poly(1)", latent_dim=2,
                             model_options={"serial_process": "brownian", "serial_terms": 2})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a brief fit does not converge
            est.fit(sim.data, progress=False, seed=0, max_epochs=10, refine=refine)
        fits[refine] = est
    assert fits["auto"].result_.refinement is None  # no closed form: the linear parts stay SVI's
    refined = fits["auto"].result_.serial_refinement
    assert refined["log_likelihood_after"] >= refined["log_likelihood_before"] and refined["converged"]
    assert refined["serial_tau"] == fits["auto"].model_.serial_tau()
    assert fits[False].result_.serial_refinement is None
    assert fits[False].model_.serial_tau() != fits["auto"].model_.serial_tau()
    again = fits["auto"].refine_observation_model(["serial_scale"], seed=1)
    assert again.log_likelihood_after - again.log_likelihood_before < 0.5
