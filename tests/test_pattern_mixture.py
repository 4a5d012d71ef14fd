"""Pattern-mixture imputation under ACMV: patterns, the ACMV draws against
closed forms, the facade (errors, save/load, delta on top)."""
import math
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_dgmm import ConfigError, DataError, DeepMixedModel
from pyro_dgmm.datasets import simulate_trial
from pyro_dgmm.pattern_mixture import (PATTERN_COLUMN, DropoutPatterns, PatternConfig, acmv_completions,
                                       dropout_times, mean_curve, pattern_designs)

NAN = float("nan")


def hand_frame():
    """Eight subjects on the grid 0..3 (dropout times 3, 3, 1, 0, 2, 2, 1, 3)."""
    rows = {1: [1, 2, 3, 4], 2: [1, NAN, 3, 4],  # completers (2 has an intermittent gap)
            3: [1, 2, NAN, NAN], 4: [1, NAN, NAN, NAN], 5: [1, 2, 3], 6: [1, 2, 3, NAN], 7: [1, 2], 8: [1, 2, 3, 4]}
    return pd.DataFrame([{"id": i, "time": float(t), "y": v} for i, ys in rows.items() for t, v in enumerate(ys)])


def test_patterns_on_a_hand_example():
    df = hand_frame()
    dropout = dropout_times(df["id"], df["time"].to_numpy(), df["y"].notna().to_numpy())
    assert dropout.tolist() == [3, 3, 1, 0, 2, 2, 1, 3]  # rows that stop early (5, 7) drop out at their last row
    patterns = DropoutPatterns.fit(dropout, end=3.0, config=PatternConfig(num_patterns=3, min_subjects=1))
    # dropouts 0 (1 subject), 1 (2), 2 (2): quantile midpoints 0.1, 0.4, 0.8 of 2 groups -> {0, 1}, {2}
    assert patterns.labels == ["P1", "P2", "completer"]
    assert patterns.counts == [3, 2, 3] and patterns.first == [0, 2, 3] and patterns.last == [1, 2, 3]
    assert patterns.categories == ["completer", "P1", "P2"]
    assert patterns.assign(pd.Series([0.5, 1.0, 1.5, 2.5, 3.0, 4.0])).tolist() == [0, 0, 1, 1, 2, 2]
    labelled = patterns.label(df, "id", df["time"].to_numpy(), ["y"])
    by_subject = labelled.groupby("id")[PATTERN_COLUMN].first().astype(str).tolist()
    assert by_subject == ["completer", "completer", "P1", "P1", "P2", "P2", "P1", "completer"]
    assert patterns.dropouts == [[0, 1], [2], [3]] and patterns.dropout_counts == [[1, 2], [2], [3]]
    # P1 (dropouts 0, 1, 1) is observed in full at 0 and in part (2 of 3) at 1
    share = patterns.observed_share(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))[0].T
    assert share.numpy() == pytest.approx(np.array([[1, 2 / 3, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]))
    one = DropoutPatterns.fit(dropout, end=3.0, config=PatternConfig(num_patterns=1, min_subjects=1))
    assert one.labels == ["all"] and one.counts == [8] and one.assign(dropout).tolist() == [0] * 8


def test_pattern_errors():
    df = hand_frame()
    dropout = dropout_times(df["id"], df["time"].to_numpy(), df["y"].notna().to_numpy())
    with pytest.raises(ConfigError, match=r"'P2' with 2 subjects.*min_subjects=3"):
        DropoutPatterns.fit(dropout, end=3.0, config=PatternConfig(num_patterns=3, min_subjects=3))
    with pytest.raises(ConfigError, match="'completer' with 0 subjects"):
        DropoutPatterns.fit(dropout[dropout < 3], end=3.0, config=PatternConfig(num_patterns=2, min_subjects=1))
    patterns = DropoutPatterns.fit(dropout, end=3.0, config=PatternConfig(num_patterns=3, min_subjects=1))
    with pytest.raises(DataError, match=r"subjects \[9\] have no observed outcome"):
        patterns.assign(pd.Series([NAN], index=[9]))
    with pytest.raises(ConfigError, match=f"already have one.*{PATTERN_COLUMN}|{PATTERN_COLUMN}.*already have one"):
        patterns.label(df.assign(**{PATTERN_COLUMN: 1}), "id", df["time"].to_numpy(), ["y"])
    for bad in ({"num_patterns": 0}, {"min_subjects": 1.5}, {"num_particles": "many"}):
        with pytest.raises(ConfigError, match=list(bad)[0]):
            PatternConfig(**bad)


def test_pattern_probabilities_follow_a_covariate():
    """The multinomial logit recovers pattern shares that differ by arm."""
    rng = np.random.default_rng(0)
    arm = rng.integers(0, 2, 4000)
    p = np.where(arm[:, None] == 1, [0.1, 0.2, 0.7], [0.3, 0.3, 0.4])
    own = (rng.random((4000, 1)) > p.cumsum(1)).sum(1)
    patterns = DropoutPatterns(["P1", "P2", "completer"], [1, 2, 3], [1, 2, 3], [1, 1, 1], 3.0)
    fitted = patterns.fit_probabilities(torch.tensor(arm[:, None], dtype=torch.float32), own)
    probs = fitted.log_probabilities(torch.tensor([[0.0], [1.0]])).exp()
    # binomial SE of a share from 2000 subjects is at most 0.011: 0.035 is > 3 SE
    assert probs.numpy() == pytest.approx(np.array([[0.3, 0.3, 0.4], [0.1, 0.2, 0.7]]), abs=0.035)


def test_mean_curve_pools_the_completed_means():
    frames = [pd.DataFrame({"time": [0, 0, 1, 1], "y": [1.0, 3.0, 2.0, y1]}) for y1 in (4.0, 6.0)]
    curve = mean_curve(frames, "time", ["y"]).set_index("time")
    assert curve.loc[1, "estimate"] == pytest.approx(3.5) and curve.loc[0, "between"] == pytest.approx(0.0)
    assert curve.loc[1, "between"] == pytest.approx(np.var([3.0, 4.0], ddof=1))
    within = np.mean([np.var([2.0, 4.0], ddof=1) / 2, np.var([2.0, 6.0], ddof=1) / 2])
    assert curve.loc[1, "std_error"] == pytest.approx(math.sqrt(within + 1.5 * 0.5))


def linear_model(sim, num_patterns, seed=0):
    """A pattern-mixture fit with linear networks: the model is a linear mixed model."""
    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"],
                           latent_dim=2, model_options={"fixed_hidden": (), "random_hidden": ()})
    with pytest.warns(Warning):  # a short fit does not converge
        model.fit(sim.data, max_epochs=40, progress=False, seed=seed, missing="pattern_mixture",
                  patterns=PatternConfig(num_patterns=num_patterns, min_subjects=5))
    return model


def gaussian_terms(model, data):
    """Per subject: eta = c + Z b exactly (linear nets), and sigma."""
    q = model.latent_dim_
    with torch.no_grad():
        c = model.model_.eta(torch.zeros(data.num_subjects, q), data)[..., 0].double()
        z = torch.stack([model.model_.eta(torch.eye(q)[d].expand(data.num_subjects, q), data)[..., 0].double() - c
                         for d in range(q)], -1)
    return c, z, float(model.model_.dispersion("y").detach())


def inputs(model, data, designs_from=None):
    designs, own = pattern_designs(model.schema_, model.training_baseline_, model.patterns_, data.ids)
    log_prior = (model.patterns_.log_probabilities(designs[-1]) if model.patterns_.num_patterns > 1
                 else torch.zeros(data.num_subjects, 1))
    return designs, own, log_prior, model.patterns_.observed_share(data.times)


@pytest.fixture(scope="module")
def trial():
    return simulate_trial(120, seed=5)


def test_acmv_with_one_pattern_draws_the_mar_conditional(trial):
    """One pattern: ACMV is MAR, so visit-by-visit draws must follow the
    Gaussian conditional of the missing values given the observed ones."""
    model = linear_model(trial, 1)
    data = model.data_
    last = torch.where(data.mask.any(-1), torch.arange(data.num_visits), -1).amax(-1)
    subjects = torch.nonzero(last <= 3).squeeze(-1)[:3]  # dropouts with 3 or more values to impute
    part = data.subset(subjects)
    designs, own, log_prior, available = inputs(model, part)
    m = 1500
    torch.manual_seed(0)
    completed, _, donor = acmv_completions(model.model_, model.guide_, model.schema_, part, designs, own, log_prior,
                                           available, torch.zeros(m, part.num_subjects, model.latent_dim_),
                                           num_particles=100)
    assert (donor == 0).all()
    c, z, sigma = gaussian_terms(model, part)
    for i in range(part.num_subjects):
        obs, mis = part.mask[i, :, 0], ~part.mask[i, :, 0] & part.visit_mask[i]
        cov = z[i] @ z[i].T + sigma ** 2 * torch.eye(part.num_visits, dtype=torch.float64)
        gain = cov[mis][:, obs] @ torch.linalg.inv(cov[obs][:, obs])
        mean = c[i, mis] + gain @ (part.y[i, obs, 0].double() - c[i, obs])
        var = cov[mis][:, mis] - gain @ cov[obs][:, mis]
        draws = completed[:, i, mis, 0].double()
        sd = var.diagonal().sqrt()
        # MC SE of a mean from 1500 draws is 0.026 SD; 0.09 SD also allows the O(1/S) bias of resampling
        assert ((draws.mean(0) - mean).abs() / sd).max() < 0.09
        assert (draws.var(0) / var.diagonal()).sub(1).abs().max() < 0.13  # MC SE of a variance ratio: 0.037
        corr = torch.corrcoef(draws.T)[0, -1]  # the first and last imputed visits, through b (MC SE <= 0.026)
        assert corr == pytest.approx(float(var[0, -1] / (sd[0] * sd[-1])), abs=0.08)


def test_acmv_donors_follow_the_mixture_weights(trial):
    """Three patterns: the donor of a P1 subject's first missing visit s is
    drawn with probability pi_k(x) rho_k(s) p_k(y_obs) over the patterns with
    subjects observed at s (P1 itself too where it groups several dropout times)."""
    model = linear_model(trial, 3)
    net = model.model_.fixed_effects.covariate_effects
    column = model.schema_.covariate_encoder.columns.index(f"{PATTERN_COLUMN}[T.P2]")
    with torch.no_grad():
        net.weight[:, column] = 1.0  # move P2's mean curve away from the completers'
    data = model.data_
    p1 = torch.as_tensor((model.training_baseline_.set_index("id").loc[data.ids, PATTERN_COLUMN] == "P1").to_numpy())
    part = data.subset(torch.nonzero(p1).squeeze(-1)[:4])
    designs, own, log_prior, share = inputs(model, part)
    first_missing = torch.where(part.mask.any(-1), torch.arange(part.num_visits), -1).amax(-1) + 1
    m = 2000
    torch.manual_seed(1)
    _, _, donor = acmv_completions(model.model_, model.guide_, model.schema_, part, designs, own, log_prior,
                                   share, torch.zeros(m, part.num_subjects, model.latent_dim_),
                                   num_particles=500)
    for i in range(part.num_subjects):
        s, obs = int(first_missing[i]), part.mask[i, :, 0]
        assert share[i, s, 1:].tolist() == [1.0, 1.0]  # P2 and the completers are observed in full at s
        log_marginal = []
        for k in range(3):  # log pi_k(x) + log rho_k(s) + log p_k(y_obs), in closed form
            c, z, sigma = gaussian_terms(model, replace(part.subset([i]), covariates=designs[k][i:i + 1]))
            cov = z[0][obs] @ z[0][obs].T + sigma ** 2 * torch.eye(int(obs.sum()), dtype=torch.float64)
            y = part.y[i, obs, 0].double()
            log_marginal.append(torch.distributions.MultivariateNormal(c[0, obs], cov).log_prob(y)
                                + log_prior[i, k].double() + share[i, s, k].double().log())
        weights = torch.softmax(torch.stack(log_marginal), 0)
        shares = [float((donor[:, i, s] == k).double().mean()) for k in range(3)]
        # binomial SE from 2000 draws is at most 0.011; 0.04 also allows the resampling's O(1/S) bias (the
        # encoder was fitted before the change above, so its proposals are off and that bias is not negligible:
        # with 100 particles and a change of 1.5 it reached 0.06, with 200 here 0.046; with 500, 0.008 at most)
        assert shares == pytest.approx(weights.tolist(), abs=0.04)
        assert (shares[0] == 0) == (share[i, s, 0] == 0)


def test_acmv_matches_mar_where_a_pattern_groups_two_dropout_times():
    """Under MAR dropout ACMV is MAR: a subject's first missing value must be
    drawn from the true E[y_t | y_<t] on average, also where its pattern
    groups two dropout times (P1: last visit 1 or 2), so that some of it is
    still observed at t = 2.  A linear mixed model (so the conditional has a
    closed form) with dropout depending on the last value; the pattern
    mixture fitted with linear networks."""
    rng = np.random.default_rng([24, 2])
    n, t = 400, np.arange(4.0)
    arm = rng.integers(0, 2, n)
    mean = 10 + (-0.5 + 0.3 * arm[:, None]) * t
    b = rng.standard_normal((n, 2)) * [2.0, 0.4]
    y = mean + b[:, :1] + b[:, 1:] * t + rng.standard_normal((n, 4))
    leaves = rng.random((n, 3)) < 1 / (1 + np.exp(1.4 - 0.5 * (y[:, :-1] - 10)))  # after visit j: P(y_j)
    leaves[:, 0] = False
    observed = np.hstack([np.ones((n, 1), bool), np.cumprod(~leaves, 1).astype(bool)])
    df = pd.DataFrame({"id": np.repeat(np.arange(n), 4), "time": np.tile(t, n),
                       "y": np.where(observed, y, NAN).ravel(), "arm": np.repeat(arm, 4)})
    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"],
                           latent_dim=2, model_options={"fixed_hidden": (), "random_hidden": (), "covariate_time": True})
    with pytest.warns(Warning):  # a short fit does not converge
        model.fit(df, max_epochs=40, progress=False, seed=0, missing="pattern_mixture",
                  patterns=PatternConfig(num_patterns=2, min_subjects=5))
    assert model.patterns_.dropouts == [[1.0, 2.0], [3.0]]
    rows = np.nonzero(observed.sum(1) == 2)[0]  # last observed visit 1: visit 2 is their first missing one
    cov = np.array([[4 + 0.16 * i * j + (i == j) for j in range(4)] for i in range(4)])
    true_mean = mean[rows, 2] + (y[rows, :2] - mean[rows, :2]) @ np.linalg.solve(cov[:2, :2], cov[:2, 2])
    part = model.data_.subset(torch.as_tensor(pd.Index(model.data_.ids).get_indexer(rows)))
    designs, own, log_prior, share = inputs(model, part)
    assert 0 < float(share[0, 2, 0]) < 1  # P1 is observed at visit 2 in part
    torch.manual_seed(0)
    completed, _, donor = acmv_completions(model.model_, model.guide_, model.schema_, part, designs, own, log_prior,
                                           share, torch.zeros(20, len(rows), 2), num_particles=100)
    assert 0.1 < float((donor[:, :, 2] == 0).double().mean()) < 0.6  # P1's own subjects observed at 2 are donors
    observed_cells = model.data_.mask[..., 0]  # the model's units -> the data's (a linear map)
    slope, intercept = np.polyfit(model.data_.y[..., 0][observed_cells].double().numpy(),
                                  y[model.data_.ids][observed_cells.numpy()], 1)
    bias = intercept + slope * completed[:, :, 2, 0].double().mean(0).numpy() - true_mean
    # SE of the mean bias over these ~110 subjects is 0.04; leaving P1 out of the donors at visit 2 (the rule
    # before issue 24's fix: completers only, who are selected for low y_2) gave -0.38 here (-0.35, -0.67 with
    # other seeds), while this rule gave -0.00 (+0.07, +0.01)
    assert abs(bias.mean()) < 0.15


@pytest.fixture(scope="module")
def pm_fit():
    sim = simulate_trial(80, seed=2)
    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"],
                           latent_dim=2)
    with pytest.warns(Warning):
        model.fit(sim.data, max_epochs=4, progress=False, missing="pattern_mixture",
                  patterns=PatternConfig(num_patterns=3, min_subjects=5, num_particles=50))
    return sim, model


def test_impute_keeps_data_and_takes_donors_observed_at_each_visit(pm_fit):
    sim, model = pm_fit
    assert model.schema_.covariates == ["arm", PATTERN_COLUMN]
    frames = model.impute(num_imputations=3, mcmc_steps=2, warmup_steps=5)
    observed = sim.data["y"].notna().to_numpy()
    last = dict(zip(model.patterns_.labels, model.patterns_.last))
    for frame in frames:
        assert np.allclose(frame["y"].to_numpy()[observed], sim.data["y"].to_numpy()[observed])
        assert frame["y"].notna().all() and (frame["y_imputed"].to_numpy() == ~observed).all()
        after = frame["y_imputed"].to_numpy()  # monotone dropout: every missing value is after dropout
        donors = frame.loc[after, "donor_pattern"]  # a pattern with subjects observed at the visit
        assert all(d == "completer" or t <= last[d] for d, t in zip(donors, frame.loc[after, "time"]))
        assert (frame.loc[~after, "donor_pattern"] == frame.loc[~after, PATTERN_COLUMN].astype(str)).all()
    curve = model.imputed_mean_curve(num_imputations=2, mcmc_steps=2, warmup_steps=5)
    assert curve["time"].tolist() == sorted(sim.data["time"].unique()) and (curve["subjects"] == 80).all()


def test_delta_moves_only_the_values_after_dropout(pm_fit):
    sim, model = pm_fit
    plain = model.impute(num_imputations=2, mcmc_steps=2, warmup_steps=5, seed=3)
    shifted = model.impute(num_imputations=2, mcmc_steps=2, warmup_steps=5, seed=3, delta=-1.0)
    for a, b in zip(plain, shifted):
        after = a["y_imputed"].to_numpy()
        assert (b["y_delta"].to_numpy() == np.where(after, -1.0, 0.0)).all()
        # same random numbers: a Gaussian value is its ACMV draw plus delta, and later visits condition on the
        # unshifted draws, so the donors are unchanged too
        assert b["y"].to_numpy() - a["y"].to_numpy() == pytest.approx(np.where(after, -1.0, 0.0), abs=1e-5)
        assert (a["donor_pattern"] == b["donor_pattern"]).all()


def test_parameter_uncertainty_imputes_each_data_set_under_its_own_parameters(pm_fit):
    """True: numbered data sets with the data kept and delta applied.  A
    StandardErrors centred 50 above the fitted intercept with no spread:
    every data set's model has that intercept, and the imputed values move
    by tens (b ~ N(0, I) cannot take it back), so the drawn models are the
    ones used."""
    import dataclasses

    sim, model = pm_fit
    with warnings.catch_warnings():  # a 4-epoch fit may be off a maximum (an indefinite Hessian warns): not tested here
        warnings.simplefilter("ignore")
        errors = model.standard_errors()  # cached: what True draws from
    frames = model.impute(num_imputations=3, mcmc_steps=2, warmup_steps=5, delta=-1.0, parameter_uncertainty=True)
    observed = sim.data["y"].notna().to_numpy()
    assert [f["imputation"].unique().tolist() for f in frames] == [[1], [2], [3]]
    for frame in frames:
        assert np.allclose(frame["y"].to_numpy()[observed], sim.data["y"].to_numpy()[observed])
        assert frame["y"].notna().all() and (frame["y_delta"].to_numpy() == np.where(~observed, -1.0, 0.0)).all()
    theta = errors.theta.clone()
    theta[errors.slices["fixed_effects.intercept"]] += 50.0
    moved = dataclasses.replace(errors, theta=theta, covariance=0 * errors.covariance)
    plain, shifted = (model.impute(num_imputations=2, mcmc_steps=2, warmup_steps=5, parameter_uncertainty=u)[0]
                      for u in (False, moved))
    imputed = plain["y_imputed"].to_numpy()
    assert (shifted["y"] - plain["y"]).to_numpy()[imputed].mean() > 10


def test_save_and_load_a_pattern_mixture_fit(pm_fit, tmp_path):
    sim, model = pm_fit
    model.save(tmp_path / "pm.pt")
    loaded = DeepMixedModel.load(tmp_path / "pm.pt")
    assert loaded.patterns_ == model.patterns_ and loaded.pattern_config_ == model.pattern_config_
    assert loaded.missing == "pattern_mixture"
    before = model.impute(sim.data, num_imputations=2, mcmc_steps=2, warmup_steps=5, seed=1)
    after = loaded.impute(sim.data, num_imputations=2, mcmc_steps=2, warmup_steps=5, seed=1)
    for a, b in zip(before, after):
        pd.testing.assert_frame_equal(a, b)


def test_facade_errors(pm_fit):
    sim, model = pm_fit
    with pytest.raises(ConfigError, match="imputed_mean_curve"):
        model.population_mean([0.0, 1.0])
    fresh = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"])
    with pytest.raises(ConfigError, match="patterns must be a PatternConfig"):
        fresh.fit(sim.data, missing="pattern_mixture", patterns={"num_patterns": 3})
    with pytest.raises(ConfigError, match="distributed_input"):
        fresh.fit(sim.data, missing="pattern_mixture", distributed_input=True)
    with pytest.raises(ConfigError, match="min_subjects=50"):
        fresh.fit(sim.data, missing="pattern_mixture", patterns=PatternConfig(min_subjects=50))
    with pytest.raises(ConfigError, match="missing"):
        fresh.fit(sim.data, missing="pattern-mixture")



def test_kfold_refits_with_the_fits_patterns(pm_fit, monkeypatch):
    sim, model = pm_fit
    seen = []
    original = DeepMixedModel.fit

    def recording_fit(self, df, config=None, **options):
        seen.append(options.get("patterns"))
        return original(self, df, config, **options)

    monkeypatch.setattr(DeepMixedModel, "fit", recording_fit)
    # the fit's min_subjects=5 is too many for a pattern of half the subjects: proof it was passed on
    with pytest.raises(ConfigError, match="min_subjects=5"):
        model.kfold(sim.data, k=2, num_samples=50, max_epochs=2)
    assert seen == [model.pattern_config_]
