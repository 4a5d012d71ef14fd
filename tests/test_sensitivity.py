"""MNAR sensitivity: dropout cells, delta adjustment, Rubin's rules, tipping point."""
import numpy as np
import pandas as pd
import pytest
import torch

from pyro_dgmm import ConfigError, DeepMixedModel
from pyro_dgmm.datasets import simulate_trial
from pyro_dgmm.sensitivity import TippingPoint, _crossing, analyze, delta_shift, dropout_cells, pool


def test_pool_matches_rubins_rules_by_hand():
    q, u, m = [1.0, 1.2, 1.1], [0.04, 0.05, 0.06], 3
    q_bar, u_bar = 3.3 / 3, 0.15 / 3
    b = ((1.0 - 1.1) ** 2 + (1.2 - 1.1) ** 2 + 0.0) / 2
    t = u_bar + (1 + 1 / m) * b
    r = (1 + 1 / m) * b / u_bar
    df_rubin = (m - 1) * (1 + 1 / r) ** 2
    lam = (1 + 1 / m) * b / t
    df_obs = (10 + 1) / (10 + 3) * 10 * (1 - lam)
    df_br = 1 / (1 / df_rubin + 1 / df_obs)
    large = pool(q, u).iloc[0]
    small = pool(q, u, df_complete=10).iloc[0]
    for got, want in [(large.estimate, q_bar), (large["within"], u_bar), (large["between"], b), (large["total"], t),
                      (large.riv, r), (large.df, df_rubin), (small.df, df_br),
                      (large.fmi, (r + 2 / (df_rubin + 3)) / (r + 1))]:
        assert got == pytest.approx(want, rel=1e-12)
    from scipy import stats
    assert small.upper - small.estimate == pytest.approx(stats.t.ppf(0.975, df_br) * np.sqrt(t), rel=1e-12)
    assert small.p_value == pytest.approx(2 * stats.t.sf(q_bar / np.sqrt(t), df_br), rel=1e-12)


def test_pool_keeps_parameter_names_and_refuses_bad_input():
    est = [pd.Series({"a": 1.0, "b": 2.0}), pd.Series({"a": 1.5, "b": 2.5})]
    var = [pd.Series({"a": 0.1, "b": 0.2})] * 2
    table = pool(est, var)
    assert table.index.tolist() == ["a", "b"] and table.loc["b", "estimate"] == pytest.approx(2.25)
    with pytest.raises(ConfigError, match="at least 2"):
        pool([1.0], [0.1])
    with pytest.raises(ConfigError, match="one variance per estimate"):
        pool([1.0, 2.0], [0.1])
    with pytest.raises(ConfigError, match="non-negative"):
        pool([1.0, 2.0], [0.1, -0.1])


def test_analyze_accepts_statsmodels_results_and_tuples():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(0)
    frames = [pd.DataFrame({"x": rng.normal(size=50), "y": rng.normal(size=50)}) for _ in range(3)]
    by_results = analyze(frames, lambda f: smf.ols("y ~ x", f).fit())
    fits = [smf.ols("y ~ x", f).fit() for f in frames]
    by_tuple = analyze(frames, lambda f: (smf.ols("y ~ x", f).fit().params, smf.ols("y ~ x", f).fit().bse ** 2),
                       df_complete=48)
    assert by_results.loc["x", "estimate"] == pytest.approx(np.mean([f.params["x"] for f in fits]))
    assert by_results.loc["x", "df"] == pytest.approx(by_tuple.loc["x", "df"])  # df_resid = 48 taken from results
    with pytest.raises(ConfigError, match="imputed data set 1"):
        analyze(frames, lambda f: 3.0)


@pytest.fixture(scope="module")
def trial_fit():
    sim = simulate_trial(60, seed=3)
    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"])
    with pytest.warns(Warning):
        model.fit(sim.data, max_epochs=4, progress=False)
    return sim, model


def test_dropout_cells_are_the_visits_after_the_last_observed_value(trial_fit):
    sim, model = trial_fit
    data = model.transform(sim.data)
    after = dropout_cells(data)[..., 0].numpy()
    y = sim.data.pivot(index="id", columns="time", values="y").to_numpy()
    last = np.array([np.flatnonzero(~np.isnan(row)).max() for row in y])
    expected = np.arange(y.shape[1])[None, :] > last[:, None]
    assert (after == expected).all() and after.sum() == np.isnan(y).sum()  # monotone dropout: all missing cells


def test_delta_shift_forms_and_errors(trial_fit):
    sim, model = trial_fit
    data = model.transform(sim.data)
    after = dropout_cells(data)
    assert torch.equal(delta_shift(data, -1.5), torch.where(after, -1.5, 0.0))
    assert torch.equal(delta_shift(data, {"y": 2.0}), torch.where(after, 2.0, 0.0))
    baseline = sim.data.groupby("id")[["arm"]].first().reset_index()
    per_arm = delta_shift(data, lambda cells: np.where(cells["arm"] == 1, -1.0, 0.0), baseline)[..., 0]
    arm = torch.tensor(baseline["arm"].to_numpy(copy=True))[:, None]
    assert torch.equal(per_arm, torch.where(after[..., 0] & (arm == 1), -1.0, 0.0))
    with pytest.raises(ConfigError, match=r"outcomes \['z'\]"):
        delta_shift(data, {"z": 1.0})
    with pytest.raises(ConfigError, match="one number per post-dropout cell"):
        delta_shift(data, lambda cells: [1.0], baseline)
    with pytest.raises(ConfigError, match="non-finite"):
        delta_shift(data, lambda cells: np.full(len(cells), np.nan), baseline)
    with pytest.raises(ConfigError, match="delta"):
        delta_shift(data, float("inf"))


def test_impute_with_delta_moves_only_the_values_after_dropout(trial_fit):
    sim, model = trial_fit
    mar = model.impute(sim.data, 3, mcmc_steps=2, warmup_steps=5, seed=7)
    shifted = model.impute(sim.data, 3, mcmc_steps=2, warmup_steps=5, seed=7, delta=-2.0)
    for a, b in zip(mar, shifted):
        after = b["y_delta"] != 0
        assert after.sum() == sim.data["y"].isna().sum()
        np.testing.assert_allclose(b.loc[after, "y"] - a.loc[after, "y"], -2.0, atol=1e-4)  # same random numbers
        np.testing.assert_array_equal(b.loc[~after, "y"], a.loc[~after, "y"])
        assert b["arm"].tolist() == sim.data.sort_values(["id", "time"])["arm"].tolist()  # covariates carried


def test_impute_delta_is_on_the_link_scale_for_binary_outcomes():
    rng = np.random.default_rng(1)
    n, j = 30, 5
    y = (rng.random((n, j)) < 0.3).astype(float)
    y[:10, 3:] = np.nan
    df = pd.DataFrame({"id": np.repeat(np.arange(n), j), "time": np.tile(np.arange(j, dtype=float), n),
                       "event": y.ravel()})
    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"event": "bernoulli"})
    with pytest.warns(Warning):
        model.fit(df, max_epochs=3, progress=False)
    up = model.impute(df, 2, mcmc_steps=2, warmup_steps=5, delta=30.0)[0]
    down = model.impute(df, 2, mcmc_steps=2, warmup_steps=5, delta=-30.0)[0]
    after = up["event_delta"] != 0
    assert after.sum() == 20 and (up.loc[after, "event"] == 1).all() and (down.loc[after, "event"] == 0).all()


def test_tipping_point_crossing_is_interpolated_on_the_bound():
    table = pd.DataFrame({"delta": [0.0, -1.0, -2.0], "estimate": [2.0, 1.5, 1.0],
                          "lower": [1.0, 0.5, -0.5], "upper": [3.0, 2.5, 2.5], "p_value": [0.001, 0.01, 0.2]})
    table["significant"] = table["p_value"] < 0.05
    assert _crossing(table) == pytest.approx(-1.0 - 0.5 / 1.0)
    table["significant"] = True
    assert _crossing(table) is None


def test_tipping_point_runs_end_to_end(trial_fit):
    from pyro_dgmm.plotting import plot_tipping_point
    from pyro_dgmm.sensitivity import tipping_point

    sim, model = trial_fit

    def last_mean(frame):
        last = frame.loc[frame["time"] == frame["time"].max(), "y"]
        return last.mean(), last.var() / len(last)

    result = tipping_point(model, sim.data, last_mean, [0.0, -40.0], num_imputations=3, mcmc_steps=2,
                           warmup_steps=5, seed=1)
    assert isinstance(result, TippingPoint) and len(result.table) == 2
    assert result.table["estimate"].iloc[1] < result.table["estimate"].iloc[0] - 5  # 40 x dropout fraction
    assert result.table["significant"].iloc[0] and result.tipping_delta is not None
    assert -40 < result.tipping_delta < 0
    assert plot_tipping_point(result).axes[0].get_xlabel().startswith("delta")
    with pytest.raises(ConfigError, match="at least 2"):
        tipping_point(model, sim.data, last_mean, [0.0])


@pytest.mark.slow
def test_delta_adjustment_with_the_true_delta_removes_most_of_the_mar_bias():
    """Pattern-mixture truth: values after dropout are 1.5 below what MAR
    implies; the MAR analysis of the last-visit mean is biased upwards by
    about 1.5 x 30%; the delta-adjusted one with delta = -1.5 removes >= 70%."""
    sim = simulate_trial(300, seed=11, delta=-1.5)
    model = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["arm"])
    model.fit(sim.data, progress=False, seed=0)
    last = sim.truth["time"] == sim.truth["time"].max()
    truth = sim.truth.loc[last, "y_complete"].mean()

    def last_mean(frame):
        values = frame.loc[frame["time"] == frame["time"].max(), "y"]
        return values.mean(), values.var() / len(values)

    bias = {d: analyze(model.impute(sim.data, 20, delta=d, seed=0), last_mean).iloc[0].estimate - truth
            for d in (0.0, -1.5)}
    assert bias[0.0] > 0.25  # MAR misses the departure
    assert abs(bias[-1.5]) <= 0.3 * bias[0.0]
