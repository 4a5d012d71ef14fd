"""Missing data: the MH kernel against a closed-form posterior, imputations in
each family's support, long-format round trips, the imputation loop."""
import numpy as np
import pandas as pd
import pytest
import torch

from pyro_dgmm import ConfigError, DeepMixedModel
from pyro_dgmm.impute import ImputationConfig, draw_missing, imputation_intervals
from pyro_dgmm.posterior import IndependenceMetropolis, sample_posterior

from common import OUTCOMES, fit_tiny_mixed_model, tiny_frame


@pytest.fixture(scope="module")
def linear_gaussian():
    """A linear-Gaussian DGMM (briefly fitted, so the encoder is a rough
    proposal) and one subject's data replicated 4000 times: 4000
    independent chains targeting the same closed-form posterior."""
    frame = tiny_frame(n_subjects=10, n_visits=6)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, time_basis="poly(1)",
                         latent_dim=2, model_options=dict(fixed_hidden=(), random_hidden=()))
    est.fit(frame, max_epochs=15, progress=False, refine=False)  # keep the rough encoder
    model, guide = est.model_, est.guide_
    one = est.data_.subset([2])
    data = one.subset(np.zeros(4000, dtype=int))
    with torch.no_grad():
        sigma = model.dispersion("g")
        eta0 = model.eta(torch.zeros(1, 2), one)[0, :, 0]
        J = torch.stack([model.eta(torch.eye(2)[j:j + 1], one)[0, :, 0] - eta0 for j in range(2)], 1)
        obs = one.mask[0, :, 0]
        J, r = J[obs], one.y[0, obs, 0] - eta0[obs]
        cov = torch.linalg.inv(torch.eye(2) + J.T @ J / sigma**2)
        mean = cov @ J.T @ r / sigma**2
    return model, guide, data, mean, cov


def _check_moments(b, mean, cov):
    """Mean within 5 Monte Carlo SEs; covariance entries within 10%+0.01."""
    se = torch.sqrt(torch.diagonal(cov) / b.shape[0])
    assert torch.all((b.mean(0) - mean).abs() < 5 * se), (b.mean(0), mean)
    assert torch.allclose(torch.cov(b.T), cov, rtol=0.1, atol=0.01), (torch.cov(b.T), cov)


def test_mh_leaves_the_exact_posterior_invariant(linear_gaussian):
    model, guide, data, mean, cov = linear_gaussian
    torch.manual_seed(1)
    start = torch.distributions.MultivariateNormal(mean, cov).sample((4000,))
    _check_moments(start, mean, cov)
    chain = sample_posterior(model, guide, data, "mh", 1, warmup_steps=30, initial_b=start)
    _check_moments(chain.b[-1], mean, cov)
    assert 0.05 < chain.acceptance.mean() <= 1


def test_mh_converges_from_prior_draws(linear_gaussian):
    model, guide, data, mean, cov = linear_gaussian
    torch.manual_seed(2)
    start = torch.randn(4000, 2)
    chain = sample_posterior(model, guide, data, "mh", 1, warmup_steps=100, initial_b=start)
    _check_moments(chain.b[-1], mean, cov)


def test_nuts_option_targets_the_same_posterior(linear_gaussian):
    model, guide, data, mean, cov = linear_gaussian
    chain = sample_posterior(model, guide, data.subset(slice(0, 200)), "nuts", 40, warmup_steps=40)
    b = chain.b.reshape(-1, 2)
    assert torch.allclose(b.mean(0), mean, atol=0.1)


def test_kernel_works_with_pyro_mcmc_api(linear_gaussian):
    from pyro.infer import MCMC

    model, guide, data, mean, cov = linear_gaussian
    kernel = IndependenceMetropolis(model, guide)
    mcmc = MCMC(kernel, num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run(data.subset(slice(0, 50)))
    assert mcmc.get_samples()["b"].shape == (5, 50, 2)


@pytest.fixture(scope="module")
def mixed():
    return fit_tiny_mixed_model("poly(1)", max_epochs=5)


def test_imputations_respect_each_family_support(mixed):
    data = mixed.data_
    completed = draw_missing(mixed.model_, data, mixed.guide_.posterior(data).sample((20,)))
    assert torch.equal(completed[:, data.mask], data.y[data.mask].expand(20, -1))
    bin_, count, score = completed[..., 1], completed[..., 2], completed[..., 3]
    assert set(bin_.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(count >= 0) and torch.equal(count, count.round())
    assert torch.all((score >= 1) & (score <= 7))


def test_multiple_imputations_round_trip_to_long(mixed):
    original = tiny_frame(n_subjects=30).sort_values(["pid", "t"]).reset_index(drop=True)
    frames = mixed.impute(num_imputations=3, warmup_steps=5)
    assert [f["imputation"].iloc[0] for f in frames] == [1, 2, 3]
    for frame in frames:
        assert frame["pid"].tolist() == original["pid"].tolist()
        np.testing.assert_allclose(frame["t"], original["t"], rtol=1e-6)
        for name in OUTCOMES:
            flag = frame[f"{name}_imputed"].to_numpy()
            assert np.array_equal(flag, original[name].isna().to_numpy())
            np.testing.assert_allclose(frame.loc[~flag, name], original.loc[~flag, name], rtol=1e-6)
            assert frame[name].notna().all()
    assert not frames[0]["g"].equals(frames[1]["g"])  # separate draws
    intervals = imputation_intervals(frames, "g")
    assert len(intervals) == original["g"].isna().sum()
    assert (intervals["lower"] <= intervals["upper"]).all()


@pytest.fixture(scope="module")
def imputed():
    """A model fitted with the imputation loop (missing='impute')."""
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, time_basis="poly(1)")
    settings = ImputationConfig(rounds=5, epochs_per_round=1, burn_in=2, mcmc_steps=3)
    return est.fit(tiny_frame(n_subjects=30), missing="impute", imputation=settings, progress=False,
                   kl_warmup_epochs=1, linear_warmup_epochs=1)


def test_imputation_loop_records_its_trace(imputed):
    est = imputed
    trace = est.imputation_trace_
    assert trace.step_size == [1.0, 1.0, 1.0, 2.0 ** -0.7, 3.0 ** -0.7]
    assert len(trace.acceptance_rate) == 5 and all(0 <= a <= 1 for a in trace.acceptance_rate)
    fitted = est.fitted_values(num_samples=20)
    assert fitted["score_fitted"].between(1, 7).all()
    with pytest.raises(ConfigError, match="missing must be"):
        DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES).fit(tiny_frame(), missing="drop")


def test_missing_impute_is_honoured_by_predict_landmark_and_inference_data(imputed, monkeypatch):
    """A model fitted with missing='impute' encodes histories completed by
    imputation (as in training) in predict, landmark_evaluation and
    to_inference_data: the encoder reads cells that were not observed,
    while the likelihood keeps the observed mask."""
    est, frame = imputed, tiny_frame(n_subjects=30)
    views = []
    encoder_view = est._encoder_view

    def spy(data):
        view = encoder_view(data)
        views.append((data, view))
        return view

    monkeypatch.setattr(est, "_encoder_view", spy)
    history = frame[frame.t < 2.5]
    calls = {
        "predict": lambda: est.predict(history, [3.0], num_samples=20, method="encoder"),
        "landmark": lambda: est.landmark_evaluation(frame, 2.5, num_samples=20, method="encoder"),
        "inference data": lambda: est.to_inference_data(num_samples=20, method="encoder"),
    }
    for name, call in calls.items():
        views.clear()
        call()
        assert views, f"{name} did not encode through the imputation view"
        for data, view in views:
            assert torch.equal(view.mask, data.mask) and torch.equal(view.y, data.y)
            assert (view.encoder_mask & ~data.mask).any(), f"{name}: the encoder saw no completed cell"


@pytest.mark.slow
def test_residual_sd_and_trend_unbiased_under_mar_dropout():
    """Linear data with MAR dropout driven by the previous value: the masked
    likelihood recovers sigma (within 5%) and the population slope (within
    0.03 per time unit), while the complete-case slope is visibly off."""
    from pyro_dgmm.datasets import simulate_linear

    sim = simulate_linear(n_subjects=600, n_visits=10, seed=2)
    df = sim.data.sort_values(["id", "time"]).copy()
    prev = df.groupby("id")["y"].shift(1)
    rng = np.random.default_rng(0)
    drop = (df.groupby("id").cumcount() >= 3) & (rng.uniform(size=len(df)) < 1 / (1 + np.exp(-(prev - 5))))
    df.loc[drop.groupby(df["id"]).cummax(), "y"] = np.nan
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                         time_basis="poly(1)", model_options=dict(fixed_hidden=(), random_hidden=()),
                         validation_fraction=0.0)
    est.fit(df, progress=False, batch_size=32, max_epochs=120)
    assert abs(est.model_.dispersion("y").item() / sim.params["sigma"] - 1) < 0.05
    curve = est.population_mean([0.0, 10.0])["y"].to_numpy()
    assert abs((curve[1] - curve[0]) / 10 - 0.3) < 0.03


# ------------------------------------------- proper multiple imputation
@pytest.fixture(scope="module")
def dropouts():
    """A linear DGMM fitted to convergence (seed 0) on 48 subjects x 8 visits
    of ``simulate_linear``, three in four seen at their first two visits
    only: their later values depend on the fixed effects, estimated mostly
    from the other 12, and their own two values absorb little of them."""
    from pyro_dgmm.datasets import simulate_linear

    df = simulate_linear(n_subjects=48, n_visits=8, seed=4).data
    df.loc[(df.groupby("id").cumcount() >= 2) & (df["id"] % 4 != 0), "y"] = np.nan
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                         time_basis="poly(1)", latent_dim=2, model_options=dict(fixed_hidden=(), random_hidden=()))
    with pytest.warns(Warning):  # the SEs' importance sampling reports a few heavy-tailed subjects
        est.fit(df, max_epochs=200, progress=False, seed=0)
        est.standard_errors()
    return est


def _imputed_mean(frame: pd.DataFrame) -> float:
    return float(frame.loc[frame["y_imputed"], "y"].mean())


@pytest.mark.slow
def test_parameter_uncertainty_widens_the_between_imputation_variance(dropouts):
    """The between-imputation variance B of the mean of the imputed values
    grows once the parameters vary: measured 0.058 -> 0.150 with 20
    imputations at seed 0 (ratios 1.5-3.7 over imputation seeds 0-3).  If
    the drawn parameters were ignored, B's ratio would be an F(19, 19)
    variate around 1, above 1.3 with probability about 0.3 only."""
    plug_in, proper = ([_imputed_mean(f) for f in dropouts.impute(num_imputations=20, seed=0,
                                                                  parameter_uncertainty=flag)]
                       for flag in (False, True))
    assert np.var(proper, ddof=1) > 1.3 * np.var(plug_in, ddof=1)


def test_each_imputation_draws_b_and_y_under_its_own_parameters(dropouts):
    """Intercept draws with SD 1 (everything else fixed): a subject's b,
    drawn under the drawn model from its two observed values, absorbs most
    of the intercept's shift (a fraction sigma_b^2 / (sigma_b^2 + sigma^2 / 2),
    about 0.9), so the imputed mean moves about 0.1 per unit of intercept.
    If b came from the plug-in model the slope would be about 1; if y came
    from the plug-in model given the shifted b, about -0.9.  Ten imputations:
    the slope's SE is about 0.1."""
    import dataclasses

    errors = dropouts.standard_errors(["fixed_effects.intercept"])
    position = errors.slices["fixed_effects.intercept"].start
    covariance = torch.zeros_like(errors.covariance)
    covariance[position, position] = 1.0
    errors = dataclasses.replace(errors, covariance=covariance)
    frames = dropouts.impute(num_imputations=10, seed=3, parameter_uncertainty=errors)
    models = dropouts._parameter_draws(errors, 10, 3)  # the same seed: the same draws
    shifts = np.array([m.fixed_effects.intercept.item() for m in models]) - errors.theta[position].item()
    assert shifts.std() > 0.5  # the intercept did vary
    slope = np.polyfit(shifts, [_imputed_mean(f) for f in frames], 1)[0]
    assert abs(slope) < 0.4, slope


def test_parameter_draws_are_independent_and_collapse_without_variance(dropouts):
    import dataclasses

    errors = dropouts.standard_errors()
    theta = errors.theta.detach()
    names = errors.parameter_names

    def drawn(models):
        return torch.stack([torch.cat([dict(m.named_parameters())[name].detach().reshape(-1).double()
                                       for name in names]) for m in models])

    values = drawn(dropouts._parameter_draws(True, 6, 0))
    assert (values.std(0)[errors.se.isfinite()] > 0).all()  # every identified parameter varies
    assert not torch.allclose(values[0] + values[1], 2 * theta, atol=1e-4)  # independent, not antithetic pairs
    frozen = drawn(dropouts._parameter_draws(dataclasses.replace(errors, covariance=0 * errors.covariance), 3, 0))
    torch.testing.assert_close(frozen, theta.expand(3, -1), atol=1e-6, rtol=0)
    assert dropouts._parameter_draws(False, 3, 0) is None


def test_parameter_uncertainty_refuses_anything_but_a_flag_or_standard_errors(dropouts):
    from pyro_dgmm.impute import multiple_imputations

    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="parameter_uncertainty must be False, True or a StandardErrors"):
            dropouts.impute(num_imputations=2, parameter_uncertainty=bad)
    with pytest.raises(ConfigError, match="one per imputation"):
        multiple_imputations(dropouts.model_, dropouts.guide_, dropouts.data_, 3, models=[dropouts.model_])
