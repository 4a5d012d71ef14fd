"""Dynamic prediction: the posterior of b from a history against the closed
form, the prediction table, updating with a new visit, landmark scoring and
the prediction plots."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pyro_dgmm import ConfigError, DataError, DeepMixedModel  # noqa: E402
from pyro_dgmm.datasets import simulate_linear  # noqa: E402
from pyro_dgmm.evaluation import (auc, calibration_table, landmark_evaluation, landmark_split,  # noqa: E402
                                  last_value_predictions, score_predictions)
from pyro_dgmm.plotting_predict import plot_calibration, plot_dynamic_prediction  # noqa: E402
from pyro_dgmm.posterior import sample_posterior  # noqa: E402
from pyro_dgmm.predict import predict  # noqa: E402

from common import OUTCOMES, tiny_frame  # noqa: E402

LINEAR = dict(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
              time_basis="poly(1)", latent_dim=2, model_options=dict(fixed_hidden=(), random_hidden=()))


def first_visits(df: pd.DataFrame, n: int) -> pd.DataFrame:
    return df[df.groupby("id").cumcount() < n]


@pytest.fixture(scope="module")
def linear():
    """A linear-Gaussian DGMM (an LMM) briefly fitted to 40 subjects x 6 visits."""
    sim = simulate_linear(n_subjects=40, n_visits=6, seed=1)
    return sim, DeepMixedModel(**LINEAR).fit(sim.data, max_epochs=30, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def mixed():
    """All four families, gaps and covariates; a few epochs (layout tests only)."""
    frame = tiny_frame(n_subjects=30)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                         time_basis="spline(3)")
    return frame, est.fit(frame, max_epochs=3, progress=False)


def exact_posterior(model, data):
    """b | y^o of the linear-Gaussian model in closed form: eta = eta0 + J b, so
    Sigma = (I + J'MJ / s^2)^-1 and mu = Sigma J'M(y - eta0) / s^2 (M: observed)."""
    with torch.no_grad():
        q, n = model.latent_dim, data.num_subjects
        points = torch.cat([torch.zeros(1, q), torch.eye(q)])[:, None, :].expand(q + 1, n, q)
        eta = model.eta(points, data)[..., 0]  # (q + 1, N, T)
        jac = (eta[1:] - eta[0]).permute(1, 2, 0)  # (N, T, q)
        m = data.mask[..., 0].float()
        s2 = model.dispersion("y") ** 2
        cov = torch.linalg.inv(torch.eye(q) + torch.einsum("ntq,nt,ntr->nqr", jac, m, jac) / s2)
        mean = torch.einsum("nqr,ntr,nt->nq", cov, jac, m * (data.y[..., 0] - eta[0])) / s2
    return mean, cov


@pytest.mark.parametrize("method", ["adaptive", "resample-move"])
def test_posterior_of_b_from_a_history_matches_the_closed_form(linear, method):
    """From 2-visit histories the encoder (trained on 6-visit records) is off;
    the refined draws must match the exact Gaussian posterior.  Tolerances:
    with 2000 draws resampled from >= 300 effective ones the Monte Carlo SE
    of a mean is <= 0.06 posterior SDs and of an SD <= 4%; the bounds are
    about 4 SEs (80 comparisons)."""
    sim, est = linear
    data = est.transform(first_visits(sim.data, 2))
    post = sample_posterior(est.model_, est.guide_, data, method, 2000, mcmc_steps=5)
    assert post.b.shape == (2000, 40, 2)
    assert post.ess.min() > 300
    mean, cov = exact_posterior(est.model_, data)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((post.b.mean(0) - mean).abs() / sd).max() < 0.25
    assert ((post.b.std(0) / sd) - 1).abs().max() < 0.15
    if method == "resample-move":
        assert 0.1 < post.acceptance.mean() < 0.9


def test_subject_without_outcomes_gets_the_prior(linear):
    """No observed outcome: the posterior of b is N(0, I) exactly."""
    sim, est = linear
    history = first_visits(sim.data, 1).assign(y=np.nan)
    post = sample_posterior(est.model_, est.guide_, est.transform(history, require_observed=False), "adaptive", 2000)
    b = post.b.reshape(-1, 2)
    assert b.mean(0).abs().max() < 0.03 and (b.std(0) - 1).abs().max() < 0.03


def test_adding_a_visit_changes_the_prediction_and_narrows_the_interval(linear):
    """Exact for the LMM: one more observation shrinks Var(b | history), so
    both intervals at the next visit narrow.  Here 2 -> 3 visits narrows the
    mean band by about 20% and the prediction interval by about 14%, beyond
    the ~3% Monte Carlo noise of a quantile-based width from 2000 draws."""
    sim, est = linear
    target = sim.data[sim.data.groupby("id").cumcount() == 3]
    before, after = (predict(est.model_, est.guide_, est.schema_, first_visits(sim.data, n), target,
                             num_samples=2000).table for n in (2, 3))
    assert (before["mean"] - after["mean"]).abs().min() > 1e-4
    band = (after.mean_upper_95 - after.mean_lower_95) / (before.mean_upper_95 - before.mean_lower_95)
    interval = (after.upper_95 - after.lower_95) / (before.upper_95 - before.lower_95)
    assert band.mean() < 0.9 and (band < 1).all()
    assert interval.mean() < 0.95 and (interval < 1).all()


def test_prediction_table_layout(mixed):
    frame, est = mixed
    history = frame[frame.t < 2.5]
    # 201 draws: the 5/25/75/95% quantiles fall on draws, up to rounding of the position (np.quantile
    # interpolates between two draws otherwise), so a binary outcome's bounds are 0 or 1 whatever the fit
    p = predict(est.model_, est.guide_, est.schema_, history, [3.0, 4.0], levels=(0.5, 0.9),
                num_samples=201, method="encoder")
    table = p.table
    assert table.columns.tolist() == [
        "pid", "t", "outcome", "history", "horizon", "observed", "mean", "lower_50", "upper_50",
        "mean_lower_50", "mean_upper_50", "lower_90", "upper_90", "mean_lower_90", "mean_upper_90", "log_density"]
    assert len(table) == 30 * 2 * 4
    assert table.outcome.tolist()[:4] == list(OUTCOMES)
    assert not table.history.any() and table.observed.isna().all()
    last = history.groupby("pid").t.max()
    np.testing.assert_allclose(table.horizon, table.t - table.pid.map(last))
    assert (table.lower_90 <= table.lower_50).all() and (table.upper_50 <= table.upper_90).all()
    by = {name: rows for name, rows in table.groupby("outcome")}
    assert by["bin"]["mean"].between(0, 1).all() and by["bin"].lower_90.round(9).isin([0, 1]).all()
    assert by["score"][["lower_90", "upper_90", "mean"]].stack().between(1, 7).all()
    assert (by["count"].lower_90 >= 0).all()
    assert p.predictive.draws.shape == (201, 30, 2, 4)
    assert p.draws.shape == (201, len(table))  # column r: draws for table row r
    np.testing.assert_allclose(np.quantile(p.draws, 0.05, axis=0), table.lower_90)


def test_history_rows_relative_times_and_observed_values(mixed):
    frame, est = mixed
    history = frame[frame.t < 2.5]
    future = frame[frame.t >= 2.5]
    p = predict(est.model_, est.guide_, est.schema_, history, future, include_history=True, num_samples=50)
    g = p.table[p.table.outcome == "g"]
    assert len(g) == len(frame) and g.history.sum() == len(history)
    expected = frame.sort_values(["pid", "t"])["g"].to_numpy()
    np.testing.assert_array_equal(g.observed.to_numpy(), expected)  # history and held-out values
    np.testing.assert_array_equal(g.t.to_numpy(), frame.sort_values(["pid", "t"]).t.to_numpy())  # exact times
    rel = predict(est.model_, est.guide_, est.schema_, history, [0.0, 1.0], relative=True, include_history=True,
                  num_samples=50).table
    last = history.groupby("pid").t.max()
    new = rel[~rel.history & (rel.outcome == "g")]
    assert sorted(new.horizon.unique()) == [1.0]  # horizon 0 is the last history row itself
    np.testing.assert_allclose(new.t, new.pid.map(last) + 1.0)


def test_prediction_input_errors(mixed):
    frame, est = mixed
    history = frame[frame.pid < 110]
    args = (est.model_, est.guide_, est.schema_, history)
    with pytest.raises(DataError, match=r"subjects \[110, 111\].*no row in the history"):
        predict(*args, frame[frame.pid.isin([100, 110, 111])], num_samples=10)
    with pytest.raises(DataError, match="times DataFrame needs the columns"):
        predict(*args, frame[["pid"]], num_samples=10)
    with pytest.raises(DataError, match="column 'age' not found"):
        predict(est.model_, est.guide_, est.schema_, history.drop(columns="age"), [3.0], num_samples=10)
    with pytest.raises(DataError, match="has no rows"):
        predict(*args, frame[frame.t > 99], num_samples=10)
    with pytest.raises(DataError, match="time column 't' .* must be finite"):
        predict(*args, [1.0, np.nan], num_samples=10)
    with pytest.raises(ConfigError, match="levels"):
        predict(*args, [3.0], levels=(95,), num_samples=10)
    with pytest.raises(ConfigError, match="method"):
        predict(*args, [3.0], method="nuts", num_samples=10)


# -------------------------------------------------------------- evaluation
def test_scores_by_hand():
    table = pd.DataFrame({
        "outcome": ["g"] * 4 + ["bin"] * 4,
        "horizon": [0.5, 0.5, 1.5, 1.5] * 2,
        "observed": [1.0, 2.0, 3.0, np.nan, 1, 0, 1, 0],
        "mean": [1.5, 2.0, 1.0, 9.0, 0.9, 0.2, 0.4, 0.4],
        "lower_95": [0.0, 2.5, 0.0, 0.0, 0, 0, 0, 0],
        "upper_95": [2.0, 3.0, 2.0, 1.0, 1, 1, 1, 1],
    })
    scores = score_predictions(table, {"g": "gaussian", "bin": "bernoulli"}, horizon_bins=[0, 1, 2])
    g = scores[scores.outcome == "g"].set_index("horizon")
    assert g.loc["all", "n"] == 3  # the NaN row is not scored
    assert g.loc["all", "rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 4) / 3))
    assert g.loc["all", "mae"] == pytest.approx(2.5 / 3)
    assert g.loc["all", "coverage_95"] == pytest.approx(1 / 3)
    assert g.loc["(0.0, 1.0]", "width_95"] == pytest.approx(1.25)
    b = scores[scores.outcome == "bin"].set_index("horizon")
    assert b.loc["all", "auc"] == pytest.approx(3.5 / 4)  # (0.9,0.2) (0.9,0.4) (0.4,0.2) win, (0.4,0.4) tie
    assert b.loc["all", "brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.16) / 4)
    assert b["rmse"].isna().all()
    assert np.isnan(auc([0.1, 0.2], [1, 1]))


def test_calibration_table_and_last_value_baseline():
    table = pd.DataFrame({"outcome": "bin", "observed": [0, 0, 1, 1, 1],
                          "mean": [0.05, 0.15, 0.12, 0.95, 1.0], "horizon": 1.0})
    cal = calibration_table(table, {"bin": "bernoulli"}, bins=10)
    assert cal.n.tolist() == [1, 2, 2]
    assert cal.observed_rate.tolist() == [0.0, 0.5, 1.0]
    history = pd.DataFrame({"id": [1, 1, 2], "t": [0.0, 1.0, 0.0], "y": [3.0, np.nan, np.nan]})
    future = pd.DataFrame({"id": [1, 2], "t": [2.0, 3.0], "y": [4.0, 5.0]})
    base = last_value_predictions(history, future, id_col="id", time_col="t", outcomes=["y"])
    assert base["mean"].tolist() == [3.0, 3.0]  # subject 2: fallback = history mean
    assert base.horizon.tolist() == [1.0, 3.0]


def test_landmark_split_and_evaluation(mixed):
    frame, est = mixed
    history, future = landmark_split(frame, id_col="pid", time_col="t", outcomes=list(OUTCOMES),
                                     landmark=2.0, horizon=1.5)
    assert history.t.max() <= 2.0 and future.t.between(2.0, 3.5, inclusive="right").all()
    with pytest.raises(DataError, match="no subject"):
        landmark_split(frame, id_col="pid", time_col="t", outcomes=["g"], landmark=-1.0)
    result = landmark_evaluation(est.model_, est.guide_, est.schema_, frame, 2.0, horizon=2.0,
                                 horizon_bins=[0, 1, 2], num_samples=100, method="encoder")
    assert set(result.scores.method) == {"model", "last value"}
    model = result.scores[result.scores.method == "model"].set_index(["outcome", "horizon"])
    assert model.loc[("g", "all"), "n"] == result.predictions.query("outcome == 'g'").observed.notna().sum()
    assert 0 <= model.loc[("g", "all"), "coverage_95"] <= 1
    assert 0 <= model.loc[("bin", "(1.0, 2.0]"), "brier"] <= 1
    assert set(result.calibration.outcome) == {"bin"}
    assert result.predictions.horizon.between(0, 2, inclusive="right").all()


def test_prediction_plots(mixed):
    frame, est = mixed
    grid = np.linspace(0, 5, 11)
    table = predict(est.model_, est.guide_, est.schema_, frame[frame.t < 2.5], grid, include_history=True,
                    num_samples=50, method="encoder").table
    fig = plot_dynamic_prediction(table, 100, id_col="pid", time_col="t", outcomes=["g", "bin"], binary=["bin"])
    assert len(fig.axes) == 2
    with pytest.raises(DataError, match="not in the prediction table"):
        plot_dynamic_prediction(table, 999, id_col="pid", time_col="t")
    with pytest.raises(DataError, match="no 80% intervals"):
        plot_dynamic_prediction(table, 100, id_col="pid", time_col="t", level=0.8)
    cal = calibration_table(table, est.schema_.families)
    assert len(plot_calibration(cal).axes) == 1
    matplotlib.pyplot.close("all")


@pytest.mark.slow
def test_prediction_intervals_have_nominal_coverage_on_a_well_specified_lmm():
    """Fit an LMM-shaped DGMM to 300 subjects (to convergence: a residual SD
    still inflated by an unfinished fit would widen every interval); for 300
    new subjects predict visits 5-8 from visits 1-4.  Both the intervals for
    new observations and the bands of the true mean curve must have nominal
    coverage.  1200 cells, correlated within subjects (effective n between
    300 and 1200): the bounds are 2-3 binomial SDs at n = 300."""
    sim = simulate_linear(n_subjects=600, n_visits=8, seed=5)
    train, test = sim.data[sim.data.id < 300], sim.data[sim.data.id >= 300]
    est = DeepMixedModel(**LINEAR, validation_fraction=0.0).fit(train, progress=False, max_epochs=150, batch_size=32)
    order = test.groupby("id").cumcount()
    table = predict(est.model_, est.guide_, est.schema_, test[order < 4], test[order >= 4],
                    levels=(0.5, 0.95), num_samples=1000).table
    truth = table.merge(sim.truth, on=["id", "time"]).y_mean
    for label, low, high in (("95", 0.92, 0.98), ("50", 0.42, 0.58)):
        covered = table[f"lower_{label}"].le(table.observed) & table.observed.le(table[f"upper_{label}"])
        band = table[f"mean_lower_{label}"].le(truth) & truth.le(table[f"mean_upper_{label}"])
        assert low <= covered.mean() <= high and low <= band.mean() <= high, label


def test_chunks_shrink_as_records_and_draws_grow():
    from pyro_dgmm.data import DataSchema
    from pyro_dgmm.posterior import CELLS_PER_CHUNK, subjects_per_chunk

    short = DataSchema.fit(tiny_frame(), id_col="pid", time_col="t", outcomes=OUTCOMES).transform(tiny_frame())
    cells_per_subject = short.num_visits * len(short.outcomes)
    assert subjects_per_chunk(100, short) == CELLS_PER_CHUNK // (100 * cells_per_subject)
    assert subjects_per_chunk(10_000, short) < subjects_per_chunk(100, short)
    assert subjects_per_chunk(10**9, short) == 1


# ------------------------------------------------------------ calibration
def _normal_table(n: int, scale_true: float, seed: int = 0):
    """A prediction table for n values y ~ N(0, scale_true^2) under the
    forecast N(0, 1): intervals and 1000 predictive draws per row."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"outcome": "y", "horizon": rng.uniform(0, 4, n), "observed": rng.normal(0, scale_true, n),
                          "mean": 0.0})
    for level in (0.5, 0.95):
        z = stats.norm.ppf(0.5 + level / 2)
        table[f"lower_{level * 100:g}"], table[f"upper_{level * 100:g}"] = -z, z
    return table, rng.normal(size=(1000, n))


def test_interval_coverage_and_pit_of_a_calibrated_forecast():
    """Calibrated forecast, 4000 values: coverage within 3 binomial SEs of
    the nominal levels in every horizon bin, and the PIT histogram flat
    (every bin within 5 SDs of a multinomial count, 400 +- 19; the PIT from
    1000 draws adds a rounding of 1/1000)."""
    from pyro_dgmm.evaluation import interval_coverage, pit_histogram, pit_values

    table, draws = _normal_table(4000, 1.0)
    coverage = interval_coverage(table, horizon_bins=[0, 2, 4])
    assert set(coverage.horizon) == {"(0.0, 2.0]", "(2.0, 4.0]", "all"} and set(coverage.nominal) == {0.5, 0.95}
    assert ((coverage.coverage - coverage.nominal).abs() < 3 * coverage.se).all()
    np.testing.assert_allclose(coverage.coverage, 1 - coverage.below - coverage.above)
    pit = pit_values(table, draws, {"y": "gaussian"})
    hist = pit_histogram(pit, bins=10)
    assert len(hist) == 10 and hist.n.sum() == 4000
    assert (hist.n - 400).abs().max() < 5 * np.sqrt(4000 * 0.1 * 0.9)


def test_too_narrow_forecast_has_low_coverage_and_a_u_shaped_pit():
    from pyro_dgmm.evaluation import interval_coverage, pit_histogram, pit_values

    table, draws = _normal_table(4000, 1.5)
    coverage = interval_coverage(table).set_index("nominal")
    assert coverage.loc[0.95, "coverage"] < 0.85  # P(|N(0, 1.5^2)| < 1.96) = 0.809
    hist = pit_histogram(pit_values(table, draws, {"y": "gaussian"}), bins=10)
    assert hist.density.iloc[0] > 1.5 and hist.density.iloc[-1] > 1.5 and hist.density.iloc[4:6].max() < 0.8


def test_randomised_pit_of_a_calibrated_count_forecast_is_uniform():
    """Poisson(3) values under their own predictive distribution: without
    randomisation the PIT would pile up on a few values; randomised it is
    uniform (4000 values, every decile within 5 multinomial SDs)."""
    from pyro_dgmm.evaluation import pit_histogram, pit_values

    rng = np.random.default_rng(1)
    table = pd.DataFrame({"outcome": "c", "horizon": 1.0, "observed": rng.poisson(3.0, 4000).astype(float)})
    pit = pit_values(table, rng.poisson(3.0, (2000, 4000)).astype(float), {"c": "poisson"}, seed=2)
    assert pit.pit.between(0, 1).all()
    hist = pit_histogram(pit, bins=10)
    assert (hist.n - 400).abs().max() < 5 * np.sqrt(4000 * 0.1 * 0.9)
    with pytest.raises(DataError, match="one column per table row"):
        pit_values(table, np.zeros((10, 3)), {"c": "poisson"})
    with pytest.raises(DataError, match="no 'pit' column"):
        pit_histogram(table)


def test_landmark_evaluation_reports_coverage_and_pit_with_a_figure(mixed):
    from pyro_dgmm.plotting_predict import plot_interval_calibration

    frame, est = mixed
    result = landmark_evaluation(est.model_, est.guide_, est.schema_, frame, 2.0, horizon_bins=[0, 1, 2],
                                 num_samples=100, method="encoder")
    assert set(result.coverage.nominal) == {0.5, 0.8, 0.95}
    assert set(result.coverage.outcome) == set(OUTCOMES)
    assert result.predictions.pit.dropna().between(0, 1).all()
    assert set(result.pit.outcome) == set(OUTCOMES) and (result.pit.groupby("outcome").n.sum() > 0).all()
    assert "log_density" in result.scores.columns
    fig = plot_interval_calibration(result.coverage, result.pit)
    assert len(fig.axes) == 2 * len(OUTCOMES)
    matplotlib.pyplot.close("all")


def test_parameter_uncertainty_draws_follow_the_wald_approximation_and_widen_intervals(linear):
    """Parameter draws: their SD on the working scale matches the standard
    errors (200 draws: within 25%, about 2.5 SDs of a sample SD); the 95%
    intervals of 40 training subjects' future visits widen, by a few
    percent (p/n small), never by more than half (S = 1000 draws of y per
    cell: the Monte Carlo error of the mean width ratio is well under 1%)."""
    import dataclasses

    from pyro_dgmm import parameters, wald
    from pyro_dgmm.predict import parameter_models

    sim, est = linear
    # the fixed effects and sigma (the random-effects map of this short fit is not at a maximum yet)
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS,
                                  num_samples=300)
    models = parameter_models(est.model_, errors, 200, seed=1)
    name = errors.parameter_names[0]
    values = torch.stack([dict(m.named_parameters())[name].detach().reshape(-1) for m in models]).double()
    expected = errors.covariance.diagonal()[errors.slices[name]].sqrt()
    np.testing.assert_allclose(values.std(0).numpy(), expected.numpy(), rtol=0.25)
    history, later = first_visits(sim.data, 3), sim.data[sim.data.groupby("id").cumcount() >= 3]
    widths = []
    for errors_ in (dataclasses.replace(errors, covariance=0 * errors.covariance), errors):  # same path, same seeds
        torch.manual_seed(0)
        table = est.predict(history, later, num_samples=1000, parameter_uncertainty=errors_, parameter_draws=10).table
        widths.append(table.upper_95 - table.lower_95)
    ratio = (widths[1] / widths[0]).mean()
    assert 1.0 < ratio < 1.5  # measured 1.02-1.04
    with pytest.raises(ConfigError, match="parameter_draws"):
        est.predict(history, later, num_samples=10, parameter_uncertainty=errors, parameter_draws=20)


# ------------------------------------------------ acceptance simulations
def _noise_coverage(settings: dict, seed: int, **noise):
    """Fit on 300 subjects x 10 visits of simulate_linear_noise, predict 300
    new subjects' visits after time 5 from those up to 5: 95% coverage and
    the fitted models."""
    from pyro_dgmm.datasets import simulate_linear_noise

    train = simulate_linear_noise(300, 10, seed, **noise)
    test = simulate_linear_noise(300, 10, seed + 1000, **noise).data.assign(id=lambda d: d.id + 300)
    out = {}
    for label, (family, dispersion_model) in settings.items():
        est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": family}, covariates=["age", "group"],
                             model_options={"dispersion_model": dispersion_model})
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: the coverage is what is tested
            est.fit(train.data, progress=False, seed=seed)
        result = est.landmark_evaluation(test, 5.0, seed=seed)
        coverage = result.coverage.query("horizon == 'all'").set_index("nominal").coverage
        out[label] = (coverage, est)
    return out


@pytest.mark.slow
def test_student_t_calibrates_every_level_under_t3_errors():
    """t3 errors (acceptance of issue 25): 95% coverage in [0.93, 0.97]
    with the Student-t family, and its 50% and 80% intervals closer to
    nominal than the Gaussian fit's (about 1500 future values of 300
    subjects: binomial SE 0.6-1.3%).  The Gaussian's 95% intervals cover
    about 95% too (for t3 errors the Gaussian 95% interval happens to hold
    about 95.7%); its 50% and 80% ones over-cover (0.55, 0.84 at seeds
    0-2).  SVI leaves the df near 4.5 for a true 3; moved to the maximum
    of the marginal likelihood (refine_observation_model) they come within
    25% (2.78 at seed 0)."""
    out = _noise_coverage({"t": ("student_t", "constant"), "gaussian": ("gaussian", "constant")}, 0, df=3.0)
    t, gaussian = out["t"][0], out["gaussian"][0]
    assert 0.93 <= t[0.95] <= 0.97
    for level in (0.5, 0.8):
        assert abs(t[level] - level) < abs(gaussian[level] - level)
    est = out["t"][1]
    est.refine_observation_model()
    assert abs(est.model_.shape_parameters("y")["df"].item() / 3 - 1) < 0.25


@pytest.mark.slow
def test_linear_dispersion_covers_when_the_residual_sd_grows_over_time():
    """Residual SD growing fourfold over follow-up: 95% coverage in [0.93,
    0.97] with dispersion_model='linear' (the constant-dispersion figure is
    reported by benchmarks/calibration.py)."""
    out = _noise_coverage({"linear": ("gaussian", "linear")}, 0, sd_growth=float(np.log(4.0)))
    assert 0.93 <= out["linear"][0][0.95] <= 0.97


def test_the_joint_nets_split_first_layer_is_the_concatenated_one():
    """The samplers' many-draw passes apply the joint random-effects net's
    first layer to b and to the time features separately (predict's speed,
    docs/prediction.md): the same function as the net on the concatenation
    (b_i, T_ij), checked with random weights everywhere."""
    from pyro_dgmm.nn import RandomEffectsNet

    torch.manual_seed(0)
    net = RandomEffectsNet(3, 4, 2, (8, 8))
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter)
    b, features = torch.randn(7, 5, 3), torch.randn(5, 6, 4)
    concatenated = torch.cat([b.unsqueeze(-2).expand(7, 5, 6, 3), features.expand(7, 5, 6, 4)], -1)
    torch.testing.assert_close(net._joint(b, features), net.joint(concatenated))


def test_predict_uses_half_the_draws_as_proposals_unless_told():
    """P = S / 2, at least 500 (all S below 500)."""
    from pyro_dgmm.predict import default_proposals

    assert [default_proposals(s) for s in (50, 500, 800, 1000, 3000)] == [50, 500, 500, 500, 1500]
