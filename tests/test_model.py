"""Model and guide: Pyro traces, masking, minibatch scaling, KL, variants."""
import copy
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions.kl import _kl_multivariatenormal_multivariatenormal as general_kl

from pyro_dgmm import DGMM, AmortizedGuide, ConfigError, DeepMixedModel, MixedModel, fit_svi, FitConfig
from pyro_dgmm.data import DataSchema
from pyro_dgmm.model import StandardNormal

from common import OUTCOMES, tiny_frame

ROOT = Path(__file__).resolve().parent.parent


def build(frame=None, covariance="full", encoder="set", outcomes=OUTCOMES):
    frame = tiny_frame() if frame is None else frame
    schema = DataSchema.fit(frame, id_col="pid", time_col="t", outcomes=outcomes, covariates=["age", "arm"],
                            time_basis="spline(3)")
    data = schema.transform(frame)
    model = DGMM.from_schema(schema, latent_dim=2)
    guide = AmortizedGuide.from_schema(schema, 2, covariance=covariance, kind=encoder, num_visits=data.num_visits)
    return model, guide, data


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
@pytest.mark.parametrize("encoder", ["set", "dense", "sequence"])
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_trace_shapes_and_finite_elbo(covariance, encoder, elbo):
    model, guide, data = build(covariance=covariance, encoder=encoder)
    guide_trace = poutine.trace(guide).get_trace(data)
    trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(data)
    trace.compute_log_prob()
    assert trace.nodes["b"]["value"].shape == (12, 1, 2)
    for name in OUTCOMES:
        site = trace.nodes[f"y_{name}"]
        assert site["fn"].batch_shape == (12, 5)
        assert torch.isfinite(site["log_prob"]).all()
    loss = elbo(num_particles=3, vectorize_particles=True, max_plate_nesting=2).differentiable_loss(model, guide, data)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _log_likelihood(model, guide, data):
    b = guide.posterior(data).mean.unsqueeze(-2)
    conditioned = poutine.condition(model, data={"b": b})
    trace = poutine.trace(conditioned).get_trace(data)
    return sum(trace.nodes[f"y_{k}"]["fn"].log_prob(trace.nodes[f"y_{k}"]["value"]).sum() for k in OUTCOMES)


def test_unobserved_cells_do_not_enter_the_likelihood():
    model, guide, data = build()
    before = _log_likelihood(model, guide, data)
    y = torch.where(data.mask, data.y, torch.tensor([100.0, 1.0, 9.0, 6.5]))  # valid, far from the filler
    after = _log_likelihood(model, guide, replace(data, y=y))
    assert torch.allclose(before, after)
    # and observed cells do enter it
    y2 = data.y.clone()
    y2[..., 0][data.mask[..., 0]] += 1.0
    assert not torch.allclose(before, _log_likelihood(model, guide, replace(data, y=y2)))


def test_minibatch_is_scaled_to_the_full_data():
    model, guide, data = build()
    batch = data.subset(slice(0, 4))
    b = guide.posterior(batch).mean.unsqueeze(-2)
    def loglik(num_subjects):
        trace = poutine.trace(poutine.condition(model, data={"b": b})).get_trace(batch, num_subjects=num_subjects)
        trace.compute_log_prob()
        return trace.log_prob_sum()
    assert torch.allclose(loglik(12), 3.0 * loglik(None), rtol=1e-5)


def test_meanfield_kl_agrees_with_monte_carlo_kl():
    """TraceMeanField (closed-form KL) and Trace_ELBO (Monte Carlo KL) estimate
    the same ELBO: with 4000 particles their difference is within 5 Monte Carlo SEs."""
    model, guide, data = build(outcomes={"g": "gaussian"})
    pyro.set_rng_seed(1)
    losses = []
    for seed in range(4):
        pyro.set_rng_seed(seed)
        losses.append(Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=2).loss(model, guide, data))
    mc = torch.tensor(losses)
    mf = TraceMeanField_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=2).loss(model, guide, data)
    se = mc.std() / 2.0
    assert abs(mc.mean().item() - mf) < 5 * se + 1e-3 * abs(mf)


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_standard_normal_prior_kl_is_the_gaussian_kl(latent_dim):
    """The registered closed-form KL from N(0, I) equals torch's general Gaussian
    KL (full and diagonal factors, broadcast batch shapes), and the prior is a
    standard normal in its density and draws."""
    torch.manual_seed(0)
    prior = StandardNormal(latent_dim, dtype=torch.float64).expand([5, 1])
    assert isinstance(prior, StandardNormal) and prior.batch_shape == (5, 1)
    reference = dist.MultivariateNormal(torch.zeros(latent_dim, dtype=torch.float64),
                                        scale_tril=torch.eye(latent_dim, dtype=torch.float64)).expand([5, 1])
    diagonal = torch.rand(5, 1, latent_dim, dtype=torch.float64) * 2 + 0.1
    for lower in (torch.randn(5, 1, latent_dim, latent_dim, dtype=torch.float64).tril(-1), 0.0):
        q = dist.MultivariateNormal(torch.randn(5, 1, latent_dim, dtype=torch.float64),
                                    scale_tril=torch.diag_embed(diagonal) + lower)
        assert torch.allclose(kl_divergence(q, prior), general_kl(q, reference), rtol=1e-12, atol=1e-12)
    q = dist.MultivariateNormal(torch.randn(latent_dim, dtype=torch.float64), scale_tril=torch.diag(diagonal[0, 0]))
    assert kl_divergence(q, prior).shape == (5, 1)
    b = torch.randn(5, 1, latent_dim, dtype=torch.float64)
    assert torch.allclose(prior.log_prob(b), reference.log_prob(b))
    draws = StandardNormal(latent_dim).sample((20000,))
    assert draws.mean(0).abs().max() < 0.03 and (draws.std(0) - 1).abs().max() < 0.03


class RandomInterceptModel(MixedModel):
    """A user variant: nu = beta0 + beta1 * t + b_i1 (random intercept only)."""

    def __init__(self, families, latent_dim, *, offsets, scales, dispersions, num_covariates,
                 num_time_features, activation="tanh"):
        super().__init__(families, latent_dim, offsets, scales, dispersions)
        self.trend = torch.nn.Linear(num_time_features, len(families))

    def linear_predictor(self, b, data):
        return self.trend(data.time_features) + b[..., :1].unsqueeze(-2)


def test_user_variant_fits_through_the_estimator():
    frame = tiny_frame(n_subjects=40, n_visits=6)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, model_class=RandomInterceptModel,
                         latent_dim=1, time_basis="poly(1)")
    est.fit(frame, max_epochs=30, progress=False, learning_rate=0.05)
    losses = est.result_.train_loss
    assert losses[-1] < losses[0]
    fitted = est.fitted_values(num_samples=100)
    observed = fitted["g"].notna()
    # a random-intercept fit explains most of the between-subject variance
    resid = (fitted["g"] - fitted["g_fitted"])[observed]
    assert resid.std() < 0.6 * fitted["g"][observed].std()
    with pytest.raises(ConfigError, match="subclass of MixedModel"):
        DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, model_class=dict)


def test_fitted_means_weight_the_means_at_the_importance_draws():
    """fitted_means reuses the linear predictor computed for the importance
    weights; the result is the weighted mean of E[y | b] at those draws."""
    from pyro_dgmm.posterior import fitted_means, sample_posterior

    model, guide, data = build()
    pyro.set_rng_seed(3)
    draws = sample_posterior(model, guide, data, num_draws=50, keep_eta=True)
    with torch.no_grad():
        expected = (draws.weights[..., None, None] * model.mean(draws.b, data)).sum(0)
    assert draws.eta is not None and draws.eta.shape == (50, data.num_subjects, data.num_visits, len(OUTCOMES))
    pyro.set_rng_seed(3)
    assert torch.allclose(fitted_means(model, guide, data, num_samples=50), expected, atol=1e-6)
    assert sample_posterior(model, guide, data, "encoder", num_draws=5).eta is None


def test_covariate_by_time_terms_start_at_zero_and_add_x_delta_t():
    frame = tiny_frame()
    schema = DataSchema.fit(frame, id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                            time_basis="poly(2)")
    data = schema.transform(frame)
    plain = DGMM.from_schema(schema, latent_dim=2)
    crossed = DGMM.from_schema(schema, latent_dim=2, covariate_time=True)
    missing, unexpected = crossed.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["fixed_effects.covariate_time.weight"] and not unexpected
    b = torch.randn(data.num_subjects, 2)
    assert torch.equal(plain.eta(b, data), crossed.eta(b, data))  # zero start: the same model
    weight = crossed.fixed_effects.covariate_time.weight  # (K, P * F)
    p, f = data.covariates.shape[-1], data.time_features.shape[-1]
    assert weight.shape == (len(OUTCOMES), p * f)
    with torch.no_grad():
        weight[0, 1 * f + 0] = 0.7  # covariate 1 times time feature 0, outcome 0
    delta = (crossed.eta(b, data) - plain.eta(b, data))[..., 0]
    expected = crossed.outcome_scale[0] * 0.7 * data.covariates[:, 1:2] * data.time_features[..., 0]
    torch.testing.assert_close(delta, expected)


def test_learned_time_functions_start_at_zero_and_add_random_coefficients():
    """time_functions=M: at the start the same model as without (W = 0);
    with W set, mu2 gains (W b)_km h_m(T) on the outcome's scale; the path
    is held with the nonlinear paths during the linear warm-up; with linear
    random effects it is refused."""
    frame = tiny_frame()
    schema = DataSchema.fit(frame, id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                            time_basis="poly(2)")
    data = schema.transform(frame)
    plain = DGMM.from_schema(schema, latent_dim=2)
    learned = DGMM.from_schema(schema, latent_dim=2, time_functions=3)
    missing, unexpected = learned.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["random_effects.learned_basis.0.bias", "random_effects.learned_basis.0.weight",
                               "random_effects.learned_basis.2.bias", "random_effects.learned_basis.2.weight",
                               "random_effects.learned_coefficients.weight"] and not unexpected
    b = torch.randn(data.num_subjects, 2)
    assert torch.equal(plain.eta(b, data), learned.eta(b, data))  # zero start: the same model
    effects = learned.random_effects
    assert effects.learned_coefficients.weight.shape == (len(OUTCOMES) * 3, 2)
    with torch.no_grad():
        effects.learned_coefficients.weight[1 * 3 + 2, 0] = 0.5  # outcome 1, function 2, from b_0
    delta = (learned.eta(b, data) - plain.eta(b, data))[..., 1]
    expected = learned.outcome_scale[1] * 0.5 * b[:, 0:1] * effects.learned_basis(data.time_features)[..., 2]
    torch.testing.assert_close(delta, expected)
    held = {id(p) for p in learned.residual_parameters()}
    assert all(id(p) in held for p in [*effects.learned_basis.parameters(), effects.learned_coefficients.weight])
    with pytest.raises(ConfigError, match="time_functions needs the dense random-effects net"):
        DGMM.from_schema(schema, latent_dim=2, time_functions=2, random_hidden=())
    with pytest.raises(ConfigError, match="time_functions must be a non-negative integer"):
        DGMM.from_schema(schema, latent_dim=2, time_functions=-1)


def test_learned_time_functions_fit_save_and_load(tmp_path):
    frame = tiny_frame(n_subjects=20)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"], latent_dim=2,
                         model_options={"time_functions": 2})
    with pytest.warns(Warning):  # four epochs do not converge
        est.fit(frame, max_epochs=4, kl_warmup_epochs=1, linear_warmup_epochs=1, progress=False, seed=0)
    assert est.model_.random_effects.learned_coefficients.weight.abs().sum() > 0  # trained past its zero start
    est.save(tmp_path / "m.pt")
    loaded = DeepMixedModel.load(tmp_path / "m.pt")
    assert loaded.model_.random_effects.time_functions == 2
    fitted, reloaded = est.fitted_values(frame, seed=0), loaded.fitted_values(frame, seed=0)
    for k in OUTCOMES:
        np.testing.assert_array_equal(fitted[f"{k}_fitted"], reloaded[f"{k}_fitted"])


# ------------------------------------------------------------- Pyro idioms
def all_parameters(est) -> dict:
    """name -> parameter of a fitted model and its guide."""
    named = {f"model.{n}": p for n, p in est.model_.named_parameters()}
    return named | {f"guide.{n}": p for n, p in est.guide_.named_parameters()}


def svi_steps(est, steps: int) -> None:
    """Pyro's own loop: SVI with a pyro.optim optimiser and Trace_ELBO."""
    svi = pyro.infer.SVI(est.model_, est.guide_, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(steps):
        svi.step(est.data_)


@pytest.fixture(scope="module")
def two_fits():
    """Two models fitted in one process, past the linear warm-up (so every
    nonlinear path has left its zero start)."""
    frame = tiny_frame(n_subjects=30)
    return [DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"])
            .fit(frame, max_epochs=8, kl_warmup_epochs=2, linear_warmup_epochs=1, progress=False, seed=s)
            for s in (0, 1)]


def test_plain_pyro_svi_trains_every_parameter_of_model_and_guide(two_fits):
    est = two_fits[0]
    params = all_parameters(est)
    before = {n: p.detach().clone() for n, p in params.items()}
    trace = poutine.trace(est.model_).get_trace(est.data_)
    seen = {id(site["value"].unconstrained()) for site in trace.nodes.values() if site["type"] == "param"}
    assert {id(p) for p in est.model_.parameters()} <= seen  # poutine.trace sees every model parameter
    svi_steps(est, 2)
    unchanged = [n for n, p in params.items() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"SVI left {unchanged} unchanged"
    store = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    assert {id(p) for p in params.values()} <= store


def test_two_models_in_one_process_keep_their_own_parameters(two_fits):
    first, second = two_fits
    first_before = {n: p.detach().clone() for n, p in all_parameters(first).items()}
    second_params = all_parameters(second)
    second_before = {n: p.detach().clone() for n, p in second_params.items()}
    svi_steps(second, 2)  # after the first model's sites are in the param store
    assert all(torch.equal(p.detach(), first_before[n]) for n, p in all_parameters(first).items())
    assert all(p is all_parameters(second)[n] for n, p in second_params.items())  # none replaced
    assert all(not torch.equal(p.detach(), second_before[n]) for n, p in second_params.items())
    copy_ = copy.deepcopy(second)  # a copy is a third model with sites of its own
    assert copy_.model_._pyro_name != second.model_._pyro_name
    second_trained = {n: p.detach().clone() for n, p in second_params.items()}
    svi_steps(copy_, 1)
    assert all(torch.equal(p.detach(), second_trained[n]) for n, p in all_parameters(second).items())
    assert not torch.equal(next(copy_.model_.parameters()), second_trained["model." + next(
        copy_.model_.named_parameters())[0]])


def test_importing_the_package_changes_no_pyro_setting():
    code = ("import pyro; before = dict(pyro.settings.get()); import pyro_dgmm; "
            "assert dict(pyro.settings.get()) == before, (before, pyro.settings.get())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_linear_dispersion_is_log_linear_in_time_features_and_covariates():
    from pyro_dgmm import ConfigError

    frame = tiny_frame()
    outcomes = {"g": "t", "bin": "bernoulli", "score": "bounded(1,7)"}
    schema = DataSchema.fit(frame, id_col="pid", time_col="t", outcomes=outcomes, covariates=["age", "arm"],
                            time_basis="poly(2)")
    data = schema.transform(frame)
    model = DGMM.from_schema(schema, latent_dim=2, dispersion_model="linear")
    assert model.dispersion("bin", data) is None and model.dispersion_coefficients("bin") is None
    features = model.dispersion_features(data)
    width = 2 + len(schema.covariate_encoder.columns)  # poly(2), then the encoded age and arm
    assert features.shape == (data.num_subjects, data.num_visits, width)
    slopes = torch.linspace(0.4, -0.3, width)
    with torch.no_grad():
        model.dispersion_slopes_0.copy_(slopes)
    expected = model.dispersion_0 * torch.exp(features @ slopes)
    torch.testing.assert_close(model.dispersion("g", data), expected)
    assert model.dispersion("score", data).shape == (data.num_subjects, data.num_visits)
    # the slopes reach the likelihood: the trace's log-density of y_g is the Student-t one at sigma(T, x)
    trace = poutine.trace(model).get_trace(data)
    eta = trace.nodes["_RETURN"]["value"][..., 0]
    df = model.shape_parameters("g")["df"]
    direct = dist.StudentT(df, eta, expected).log_prob(data.y[..., 0])
    site = trace.nodes["y_g"]
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), torch.where(data.mask[..., 0], direct, 0.0))
    with pytest.raises(ConfigError, match="pass the data"):
        model.dispersion("g")
    with pytest.raises(ConfigError, match="dispersion_model must be one of"):
        DGMM.from_schema(schema, latent_dim=2, dispersion_model="quadratic")
    constant = DGMM.from_schema(schema, latent_dim=2)
    assert constant.dispersion("g", data).shape == () and "dispersion_slopes_0" not in dict(constant.named_parameters())
