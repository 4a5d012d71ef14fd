"""Fitting: the linear-Gaussian oracle against statsmodels MixedLM, importance
posterior against the closed form, reproducibility and failure messages."""
import warnings

import numpy as np
import pytest
import torch

from pyro_dgmm import DeepMixedModel, FitConfig, FitError, ConfigError, fit_svi
from pyro_dgmm.datasets import simulate_linear
from pyro_dgmm.errors import ConvergenceWarning
from pyro_dgmm.convergence import CosineDecay, trend_test
from pyro_dgmm.fit import default_batch_size, pyro_checks
from pyro_dgmm.parallel import reseed
from pyro_dgmm.posterior import sample_posterior

from common import mixedlm_reference, tiny_frame


def linear_dgmm(**kwargs):
    """The linear special case: a linear mixed model (two random effects by default)."""
    kwargs.setdefault("latent_dim", 2)
    return DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                          time_basis="poly(1)", model_options=dict(fixed_hidden=(), random_hidden=()), **kwargs)


@pytest.fixture(scope="module")
def oracle():
    """DGMM with linear decoders on simulated LMM data, and MixedLM (ML) on the same data."""
    torch.set_num_threads(1)
    sim = simulate_linear(n_subjects=300, n_visits=10, seed=3)
    df = sim.data
    X, _, ref = mixedlm_reference(df)
    model = linear_dgmm(validation_fraction=0.0).fit(df, progress=False, seed=0, max_epochs=150, batch_size=32)
    return sim, X, ref, model


def test_oracle_population_curve_matches_mixedlm(oracle):
    """With linear decoders and a Gaussian family the DGMM is an LMM with
    unstructured D.  Its population curve eta(b=0) must match MixedLM's X beta
    within 2 SEs of MixedLM's own estimate at every cell: both fits see the
    same data, so sampling error cancels and what is left is the
    optimisation and amortisation error of SVI (measured here: median 0.9
    SE, at most 1.4 SE at the far end of follow-up, where the slope
    is slightly shrunk).  Structural errors
    (misaligned covariates, a wrong design or link) give many SEs."""
    sim, X, ref, model = oracle
    data = model.data_
    eta0 = data.response_values(model.model_.eta(torch.zeros(data.num_subjects, 2), data))[..., 0]  # user's scale
    ours = data.to_long({"eta": eta0})["eta"].to_numpy()
    theirs = X @ np.asarray(ref.fe_params)
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, np.asarray(ref.cov_params())[:4, :4], X))
    assert np.max(np.abs(ours - theirs) / se) < 2.0


def test_oracle_residual_sd_matches_mixedlm(oracle):
    """Residual SD within 3% of MixedLM's ML estimate (its SE is about 1.4% at
    3000 observations; the amortised posterior is exact in form for an LMM,
    so only optimisation error remains)."""
    sim, X, ref, model = oracle
    sigma = model.model_.dispersion("y").item()
    assert abs(sigma / np.sqrt(ref.scale) - 1) < 0.03


def test_oracle_subject_means_match_blups(oracle):
    """Fitted subject-specific means (importance-weighted posterior means)
    are as accurate as MixedLM's BLUP-based means (within 5% RMSE)."""
    sim, X, ref, model = oracle
    fitted = model.fitted_values(num_samples=1000)["y_fitted"].to_numpy()
    Z = np.column_stack([np.ones(len(sim.data)), sim.data.time])
    b = np.vstack([np.asarray(ref.random_effects[g]) for g in sim.data.id])
    blup = X @ np.asarray(ref.fe_params) + (Z * b).sum(1)
    truth = sim.truth.y_mean.to_numpy()
    rmse = lambda a: np.sqrt(np.mean((a - truth) ** 2))  # noqa: E731
    assert rmse(fitted) < 1.05 * rmse(blup)


def test_importance_posterior_matches_closed_form_lmm_posterior():
    """For fixed LMM parameters, b | y is Gaussian in closed form:
    Sigma = (I + A'Z'ZA / s^2)^-1, mu = Sigma A'Z'(y - X beta) / s^2.
    Importance sampling from a briefly trained (rough) encoder must recover
    mu to within 0.05 (Monte Carlo error with 20000 draws and an effective
    sample size above 200 is below 0.02)."""
    frame = tiny_frame(n_subjects=6, n_visits=5)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, time_basis="poly(1)",
                         latent_dim=2, model_options=dict(fixed_hidden=(), random_hidden=()))
    est.fit(frame, max_epochs=40, progress=False)
    model, guide, data = est.model_, est.guide_, est.data_
    torch.manual_seed(0)
    draws = sample_posterior(model, guide, data, num_draws=20000)
    assert draws.ess.min() > 200
    mean_is = (draws.weights[..., None] * draws.b).sum(0)
    with torch.no_grad():
        sigma = model.dispersion("g")
        eta0 = model.eta(torch.zeros(data.num_subjects, 2), data)[..., 0]
        for i in range(data.num_subjects):
            obs = data.mask[i, :, 0]
            # columns of the Jacobian d eta / d b (eta is linear in b)
            J = torch.stack([model.eta(torch.eye(2)[j].expand(data.num_subjects, 2), data)[i, :, 0] - eta0[i]
                             for j in range(2)], dim=1)[obs]
            r = data.y[i, obs, 0] - eta0[i, obs]
            precision = torch.eye(2) + J.T @ J / sigma**2
            mu = torch.linalg.solve(precision, J.T @ r / sigma**2)
            assert torch.allclose(mean_is[i], mu, atol=0.05), (i, mean_is[i], mu)


def test_same_seed_same_fit_and_different_seed_differs():
    frame = tiny_frame(n_subjects=20)
    a = linear_dgmm_tiny().fit(frame, max_epochs=3, progress=False, seed=4)
    b = linear_dgmm_tiny().fit(frame, max_epochs=3, progress=False, seed=4)
    c = linear_dgmm_tiny().fit(frame, max_epochs=3, progress=False, seed=5)
    assert a.result_.train_loss == b.result_.train_loss
    assert a.result_.train_loss != c.result_.train_loss


def linear_dgmm_tiny(**kwargs):
    return DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"},
                          covariates=["arm"], time_basis="poly(1)", **kwargs)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_with_a_clear_message():
    frame = tiny_frame()
    frame["g"] = frame["g"] * 1e30  # absurd scale: the Gaussian log-density overflows in float32
    with pytest.raises(FitError, match="learning_rate"):
        DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}).fit(
            frame.assign(g=frame.g.where(frame.index % 2 == 0, 1e-30)), progress=False, max_epochs=3)


def test_convergence_rule_decays_then_stops_at_a_flat_trend_and_restores_the_best_epoch():
    frame = tiny_frame(n_subjects=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a converged fit does not warn
        est = linear_dgmm_tiny(latent_dim=2).fit(frame, max_epochs=400, progress=False, patience=4,
                                                 kl_warmup_epochs=2, eval_every=1, learning_rate=0.05,
                                                 elbo="meanfield")  # the rule's mechanics, on a smooth loss
    r = est.result_
    assert r.converged and r.stop_reason.startswith("converged") and r.epochs_run < 400
    # the first flat trend starts the decay over the epochs run so far (anneal_fraction 1) ...
    assert r.annealed_at is not None
    anneal_epochs = max(4, r.annealed_at + 1)
    # ... and the fit ends at a flat trend at the floor, not before it
    assert r.epochs_run >= r.annealed_at + 1 + anneal_epochs
    best = min(v for e, v in r.validation_loss if e >= 2)
    assert dict(r.validation_loss)[r.best_epoch] == best


def test_trend_test_separates_a_trend_from_noise_and_from_a_negligible_trend():
    rng = np.random.default_rng(0)
    epochs = np.arange(0, 40, 2)
    noise = rng.normal(0, 0.05, epochs.size)
    falling = list(zip(epochs, 10 - 0.01 * epochs + noise))  # 0.4 over the window, noise SD 0.05
    flat = list(zip(epochs, 10 + noise))
    rising = list(zip(epochs, 10 + 0.01 * epochs + noise))
    assert trend_test(falling, tolerance=0.1)
    assert not trend_test(flat, tolerance=0.1)
    assert not trend_test(rising, tolerance=0.1)
    assert not trend_test(falling, tolerance=1.0)  # real, but smaller than worth waiting for
    assert not trend_test(list(zip(epochs, 10 - 0.01 * epochs + 40 * noise)), tolerance=0.1)  # lost in noise


@pytest.mark.parametrize("max_epochs, reason", [(5, "KL annealing"), (30, "max_epochs=30")])
def test_a_fit_stopped_early_warns_and_says_why(max_epochs, reason):
    frame = tiny_frame(n_subjects=40)
    with pytest.warns(ConvergenceWarning, match=reason):
        est = linear_dgmm_tiny(latent_dim=2).fit(frame, max_epochs=max_epochs, progress=False, kl_warmup_epochs=12,
                                                 tolerance=0.0)
    assert not est.result_.converged and reason in est.result_.stop_reason


def test_fast_preset_and_bad_preset():
    fast = FitConfig.from_preset("fast", seed=3)
    assert (fast.max_epochs, fast.patience, fast.anneal_fraction, fast.seed) == (200, 6, 0.5, 3)
    assert FitConfig.from_preset("accurate") == FitConfig()
    with pytest.raises(ConfigError, match="preset must be one of"):
        FitConfig.from_preset("quick")
    with pytest.raises(ConfigError, match="either config or preset"):
        linear_dgmm_tiny().fit(tiny_frame(), FitConfig(), preset="fast")


def test_cosine_decay_is_cut_short_continuously():
    decay = CosineDecay(total_steps=1000, floor=0.05)
    assert decay(0) == pytest.approx(1.0) and decay(1000) == pytest.approx(0.05) and decay(5000) == pytest.approx(0.05)
    assert decay(500) == pytest.approx(0.525)
    at_300 = decay(300)
    assert not decay.shorten(300, 800)  # would end later than the schedule: unchanged
    assert decay.shorten(300, 100) and decay.shortened
    assert decay(300) == pytest.approx(at_300)  # no jump in the learning rate
    assert decay(350) == pytest.approx(0.05 + (at_300 - 0.05) * 0.5)
    assert decay(400) == pytest.approx(0.05) and decay(999) == pytest.approx(0.05)


def test_default_batch_size_gives_about_fifty_steps_an_epoch():
    assert default_batch_size(100) == 64
    assert default_batch_size(80_000) == 1600
    assert default_batch_size(10_000_000) == 65536


def test_pyro_checks_switch_validation_off_and_back():
    import pyro
    import pyro.distributions

    before = pyro.settings.get("validate_poutine"), pyro.distributions.is_validation_enabled()
    with pyro_checks(False):
        assert not pyro.settings.get("validate_poutine") and not pyro.distributions.is_validation_enabled()
    assert (pyro.settings.get("validate_poutine"), pyro.distributions.is_validation_enabled()) == before


def test_reseed_repeats_the_draws():
    reseed(123, torch.device("cpu"))
    first = torch.randn(5)
    reseed(123, torch.device("cpu"))
    assert torch.equal(first, torch.randn(5))


def test_bad_fit_settings_are_config_errors():
    with pytest.raises(ConfigError, match="elbo"):
        FitConfig(elbo="renyi")
    with pytest.raises(ConfigError, match="kl_start"):
        FitConfig(kl_start=0.0)
    with pytest.raises(ConfigError, match="CUDA"):
        FitConfig(device="cuda").resolved_device() if not torch.cuda.is_available() else (_ for _ in ()).throw(
            ConfigError("CUDA available; nothing to check"))


def _loss_and_gradients(elbo_classes, num_particles: int, validate: bool):
    """Loss and gradients of each ELBO class on the same minibatch (16 of 40
    subjects: subsampling scale 2.5) with KL annealing (beta 0.3), from the
    same random numbers."""
    import pyro

    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                         time_basis="poly(1)", latent_dim=2)
    est.fit(simulate_linear(n_subjects=40, n_visits=5, seed=2).data, progress=False, max_epochs=2)
    batch = est.data_.subset(np.arange(7, 23))
    params = list(est.model_.parameters()) + list(est.guide_.parameters())
    results = []
    for elbo in elbo_classes:
        reseed(11, batch.device)
        with pyro.validation_enabled(validate):
            loss = elbo(num_particles=num_particles, vectorize_particles=True,
                        max_plate_nesting=2).differentiable_loss(est.model_, est.guide_, batch, num_subjects=40,
                                                                 kl_scale=0.3)
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    return results


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("reference, ours, num_particles", [
    ("TraceMeanField_ELBO", "MeanFieldELBO", 1), ("TraceMeanField_ELBO", "MeanFieldELBO", 3),
    ("Trace_ELBO", "ImportanceWeightedELBO", 1)])
def test_our_elbos_give_pyros_loss_and_gradients(reference, ours, num_particles, validate):
    """The device-side losses equal Pyro's, value and gradients, on a
    minibatch with subsampling scale and KL annealing, through Pyro's
    checked path (validation on) and the lean one (off): the mean-field
    ELBO equals ``TraceMeanField_ELBO``; the IWAE bound with M = 1 is the
    ELBO with a Monte Carlo KL, ``Trace_ELBO`` (so the plate scale and beta
    enter it exactly as Pyro applies them)."""
    import pyro.infer

    from pyro_dgmm import elbo

    (pyro_loss, pyro_grads), (our_loss, our_grads) = _loss_and_gradients(
        (getattr(pyro.infer, reference), getattr(elbo, ours)), num_particles, validate)
    assert torch.allclose(our_loss, pyro_loss, rtol=1e-5)
    for a, b in zip(our_grads, pyro_grads):  # float32 rounding scales with the largest entry (up to ~700 here)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(b.abs().max())))


def test_importance_weighted_elbo_tightens_to_the_marginal_likelihood():
    """The bound rises with M towards log p(y): with M = 1000 it is within
    0.5 nats (of about 920) of the importance-sampled log marginal
    likelihood with 20,000 draws, and above the mean-field ELBO by more
    than its Monte Carlo noise.  One estimate of the M = 10 bound has a
    Monte Carlo SD of about 1.6 nats here, more than its expected gap to
    M = 1000, so it is averaged over 8 seeds and compared within 3 SEs."""
    import pyro

    from pyro_dgmm.elbo import ImportanceWeightedELBO, MeanFieldELBO

    sim = simulate_linear(n_subjects=100, n_visits=6, seed=1)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates,
                         latent_dim=2).fit(sim.data, max_epochs=30, progress=False, elbo="meanfield")
    def loss(elbo, m, seed):
        pyro.set_rng_seed(seed)
        return elbo(num_particles=m, vectorize_particles=True, max_plate_nesting=2).loss(
            est.model_, est.guide_, est.data_)

    iwae_10 = np.array([loss(ImportanceWeightedELBO, 10, seed) for seed in range(8)])
    losses = {"elbo": loss(MeanFieldELBO, 100, 0), "iwae_10": iwae_10.mean(),
              "iwae_1000": loss(ImportanceWeightedELBO, 1000, 0)}
    torch.manual_seed(0)
    exact = -float(sample_posterior(est.model_, est.guide_, est.data_, num_draws=20000).log_marginal.sum())
    assert abs(losses["iwae_1000"] - exact) < 0.5, (losses, exact)
    assert losses["elbo"] - losses["iwae_10"] > 5, losses
    assert losses["iwae_10"] >= losses["iwae_1000"] - 3 * iwae_10.std(ddof=1) / np.sqrt(8), (losses, iwae_10)


def test_importance_weighted_bound_stays_a_lower_bound_for_an_ill_conditioned_encoder():
    """An encoder with 16 directions whose Cholesky factor has small
    diagonals (0.02) and large off-diagonals (2): inverting it amplifies the
    float32 rounding of b by orders of magnitude, and log q(b) by a solve
    made the bound +1e7 on PBC (then NaN).  From the sampling noise it stays
    below the exact log-likelihood of this linear mixed model."""
    import pyro

    from pyro_dgmm import marginal
    from pyro_dgmm.elbo import ImportanceWeightedELBO

    sim = simulate_linear(n_subjects=30, n_visits=6, seed=4)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates,
                         time_basis="poly(1)", latent_dim=16, model_options=dict(fixed_hidden=(), random_hidden=()))
    est.fit(sim.data, max_epochs=1, progress=False, elbo="meanfield", refine=False)
    q = 16
    with torch.no_grad():
        last = est.guide_.encoder.head.net[-1]
        last.weight.zero_()
        last.bias[q:2 * q] = -3.0  # softplus(-4) + 1e-4: diagonals near 0.02
        last.bias[2 * q:] = 2.0
        est.guide_.encoder.linear.weight.zero_()
    pyro.set_rng_seed(0)
    bound = -ImportanceWeightedELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=2).loss(
        est.model_, est.guide_, est.data_)
    exact = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 1700)
    assert exact.exact and np.isfinite(bound) and bound < exact.total, (bound, exact.total)


@pytest.mark.slow
def test_default_rule_does_not_stop_while_a_latent_direction_is_quiet():
    """Nonlinear simulator, seed 1: after KL annealing the second latent
    direction goes quiet for a while (KL below 0.2 nats) and the held-out loss
    is flat; a patience of 5 found its plateau there (epoch 25) and the
    shortened schedule ended at epoch 39 with RMSE 0.226.  The default must
    wait it out: at least two directions carry information and the
    subject-specific means are within 15% of the 200-epoch fit's (0.097)."""
    from pyro_dgmm.datasets import simulate_nonlinear

    torch.set_num_threads(1)
    sim = simulate_nonlinear(n_subjects=800, seed=1)
    est = DeepMixedModel(id_col=sim.id_col, time_col=sim.time_col, outcomes=sim.outcomes,
                         covariates=sim.covariates).fit(sim.data, progress=False)
    truth = sim.truth["y_mean"].to_numpy()
    rmse = float(np.sqrt(np.mean((est.fitted_values()["y_fitted"].to_numpy() - truth) ** 2)))
    assert rmse < 0.112
    # both random parameters (level, shift of the rise) carry information: two directions in use at least
    assert est.result_.active_directions >= 2, est.result_.latent_activity


def test_guide_only_fit_moves_the_encoder_and_nothing_else():
    est = linear_dgmm_tiny(latent_dim=2).fit(tiny_frame(n_subjects=30), max_epochs=5, progress=False)
    before_model = {k: v.clone() for k, v in est.model_.state_dict().items()}
    before_guide = {k: v.clone() for k, v in est.guide_.state_dict().items()}
    fit_svi(est.model_, est.guide_, est.data_, None, FitConfig(max_epochs=3, kl_start=1.0, kl_warmup_epochs=0,
                                                               progress=False), warn=False, guide_only=True)
    assert all(torch.equal(v, est.model_.state_dict()[k]) for k, v in before_model.items())
    assert not all(torch.equal(v, est.guide_.state_dict()[k]) for k, v in before_guide.items())
    assert all(p.grad is None for p in est.model_.parameters())


def test_latent_activity_counts_the_directions_the_data_use():
    """Linear simulator: two random effects (intercept and slope).  Given four
    latent directions, the fit uses two: the other two stay at the prior
    (variance of their posterior means across subjects near 0), and it does
    not warn; given one, that one is in use and the fit warns."""
    from pyro_dgmm.errors import LatentDimensionWarning

    torch.set_num_threads(1)
    sim = simulate_linear(n_subjects=200, n_visits=10, seed=4)
    est = linear_dgmm(latent_dim=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatentDimensionWarning)
        est.fit(sim.data, progress=False, seed=0)
    activity = est.result_.latent_activity
    assert est.result_.active_directions == 2, activity
    assert activity[1] > 0.2 and activity[2] < 0.01  # in use vs at the prior: far apart, not near the threshold
    with pytest.warns(LatentDimensionWarning, match="all 1 latent directions are in use"):
        linear_dgmm(latent_dim=1).fit(sim.data, progress=False, seed=0, max_epochs=60)


def test_auto_latent_dim_grows_while_every_direction_is_in_use_and_keeps_the_best(monkeypatch, caplog):
    """Started (here) at one direction on data with two random effects,
    'auto' refits with two (both in use: saturated again) and then four,
    where two stay unused; it keeps the fit with the best held-out ELBO,
    which is not the one-direction fit, and only the kept fit's warnings
    reach the user (none here)."""
    import logging

    import pyro_dgmm.estimator as estimator
    from pyro_dgmm.errors import LatentDimensionWarning

    torch.set_num_threads(1)
    monkeypatch.setattr(estimator, "default_latent_dim", lambda num_outcomes, num_time_features: 1)
    sim = simulate_linear(n_subjects=200, n_visits=10, seed=4)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="pyro_dgmm.selection"):
        warnings.simplefilter("error", LatentDimensionWarning)
        est = linear_dgmm(latent_dim="auto").fit(sim.data, progress=False, seed=0)
    assert "refitting with 2" in caplog.text and "refitting with 4" in caplog.text
    assert est.latent_dim_ in (2, 4) and est.model_.latent_dim == est.latent_dim_
    assert est.result_.active_directions == 2 and est.options.latent_dim == "auto"
    search = est.result_.latent_dim_search
    assert [s["latent_dim"] for s in search] == [1, 2, 4]
    assert [s["kept"] for s in search] == [s["latent_dim"] == est.latent_dim_ for s in search]
    assert search[0]["active_directions"] == 1 and search[2]["active_directions"] == 2
    assert min(search, key=lambda s: s["heldout_loss"])["kept"]


def test_default_latent_dim_grows_with_outcomes_and_time_functions():
    from pyro_dgmm.selection import default_latent_dim

    assert default_latent_dim(1, 1) == 4
    assert default_latent_dim(3, 2) == 6
    assert default_latent_dim(6, 1) == 8 and default_latent_dim(30, 6) == 8
    with pytest.raises(ConfigError, match="latent_dim must be a positive integer or 'auto'"):
        linear_dgmm(latent_dim=0)


@pytest.mark.parametrize("visits, expected", [(5, ("iwae", 32)), (12, ("meanfield", 1))])
def test_auto_objective_is_the_importance_weighted_bound_when_visits_are_few(visits, expected):
    """``elbo='auto'`` resolves by the mean number of visits with an observed
    value (below 10: IWAE with 8 particles), explicit settings are kept, and
    the fit records what it used."""
    from pyro_dgmm.fit import resolve_objective

    est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, latent_dim=2)
    frame = tiny_frame(n_subjects=8, n_visits=visits)
    frame["g"] = frame["g"].fillna(0.0)  # every visit observed: the mean is exactly `visits`
    est.fit(frame, max_epochs=2, progress=False)
    assert (est.result_.config["elbo"], est.result_.config["num_particles"]) == expected
    data = est.data_
    assert resolve_objective(FitConfig(elbo="meanfield"), data).num_particles == 1
    assert resolve_objective(FitConfig(num_particles=3), data).num_particles == 3
    assert resolve_objective(FitConfig(elbo="iwae"), data) == FitConfig(elbo="iwae", num_particles=32)
    with pytest.raises(ConfigError, match="elbo"):
        FitConfig(elbo="bogus")
