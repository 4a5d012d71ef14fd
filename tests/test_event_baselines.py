"""Cox baselines: the coefficients and Breslow's cumulative hazard against
a hand computation and against simulated truth (known hazard ratios,
constant baseline hazard), the predicted landmark risks against the true
conditional risks, which marker values each baseline reads, and the errors
for bad input."""
import numpy as np
import pandas as pd
import pytest

from pyro_dgmm.errors import ConfigError, DataError, FitError
from pyro_dgmm.event_baselines import cox_baseline_risk, fit_cox, landmark_cox_risk, marker_values

RATE, LANDMARK, HORIZONS = 0.2, 2.0, np.array([3.0, 4.0])


def simulate(n: int, seed: int, log_hr: float = 0.7, arm_log_hr: float = -0.5):
    """Exponential event times with hazard RATE * exp(log_hr * x + arm_log_hr * [arm == 'b']),
    uniform censoring on (0, 8); the risk factor x is measured at a visit at 1.5 only (the visit
    at 0 holds noise, the visit at 3, after the landmark, garbage).  Returns visits, events, x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    arm = rng.choice(["a", "b"], n)
    hazard = RATE * np.exp(log_hr * x + arm_log_hr * (arm == "b"))
    event_time, censor = rng.exponential(1 / hazard), rng.uniform(0, 8, n)
    events = pd.DataFrame({"pid": np.arange(n) + 100, "t": np.minimum(event_time, censor),
                           "d": (event_time <= censor).astype(int) * rng.integers(1, 3, n), "arm": arm})
    visits = pd.concat([pd.DataFrame({"pid": events["pid"], "when": when, "m": value})
                        for when, value in ((0.0, rng.normal(size=n)), (1.5, x), (3.0, 100 + rng.normal(size=n)))])
    return visits.sort_values(["pid", "when"]).reset_index(drop=True), events, x


COLUMNS = dict(id_col="pid", time_col="when", event_time="t", event_status="d", covariates=["arm"], markers=["m"])


def test_breslow_steps_match_a_hand_computation_and_jump_at_the_event_time():
    time = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    status = np.array([1, 1, 2, 0, 1, 0])  # two events tied at 2 (different causes: both events)
    design = pd.DataFrame({"x": [0.5, -1.0, 0.3, 1.2, -0.4, 0.1]})
    model = fit_cox(time, status, design)
    r = np.exp(design["x"].to_numpy() * model.coefficients["x"])
    steps = [1 / r.sum(), 2 / r[1:].sum(), 1 / r[4:].sum()]  # event times 1, 2, 4
    np.testing.assert_allclose(model.event_times, [1, 2, 4])
    np.testing.assert_allclose(model.hazard_steps, steps, rtol=1e-12)
    np.testing.assert_allclose(model.cumulative_hazard([0.5, 1.0, 1.9, 2.0, 3.9, 4.0, 9.0]),
                               np.cumsum([0, steps[0], 0, steps[1], 0, steps[2], 0]), rtol=1e-12)


def test_fit_cox_recovers_known_hazard_ratios_and_the_baseline_hazard():
    visits, events, x = simulate(3000, seed=1)
    design = pd.DataFrame({"x": x, "b": (events["arm"] == "b").to_numpy(float)})
    model = fit_cox(events["t"], events["d"], design)
    # SEs are about 0.03 (x) and 0.05 (arm): a sign or scale error is far outside these tolerances
    assert model.coefficients["x"] == pytest.approx(0.7, abs=0.1)
    assert model.coefficients["b"] == pytest.approx(-0.5, abs=0.15)
    # at x = 0 and arm a the cumulative hazard is RATE * s
    np.testing.assert_allclose(model.cumulative_hazard([1.0, 2.0, 4.0]), RATE * np.array([1.0, 2.0, 4.0]), rtol=0.12)


def true_risk(test_events, x, horizons, log_hr=0.7, arm_log_hr=-0.5):
    """P(T <= u | T > LANDMARK) of the simulation, for every test subject and horizon."""
    hazard = RATE * np.exp(log_hr * x + arm_log_hr * (test_events["arm"] == "b").to_numpy())
    return 1 - np.exp(-hazard[:, None] * (horizons - LANDMARK)[None, :])


def split(visits, events, x, n_train):
    train = events["pid"] < 100 + n_train
    return (visits[visits["pid"].isin(events["pid"][train])], events[train], visits[~visits["pid"].isin(
        events["pid"][train])], events[~train], x[~train.to_numpy()])


def test_the_landmark_cox_risk_matches_the_true_conditional_risk():
    train_visits, train_events, test_visits, test_events, x = split(*simulate(3000, seed=2), n_train=2500)
    where = dict(landmark=LANDMARK, horizons=HORIZONS, **COLUMNS)
    risk = landmark_cox_risk(train_visits, train_events, test_visits, test_events, **where)
    truth = true_risk(test_events, x, HORIZONS)
    assert risk.shape == (500, 2)
    # the last marker value by the landmark is the true x; about 350 training events in (2, 4]:
    # the risks are within 0.01 to 0.03 of the truth on average over seeds 2, 3, 7, 8
    assert np.abs(risk - truth).mean() < 0.04
    assert np.corrcoef(risk[:, -1], truth[:, -1])[0, 1] > 0.95
    # reading the first value (noise) instead, as the baseline model does, is off by 0.11
    noise = cox_baseline_risk(train_visits, train_events, test_visits, test_events, **where)
    assert np.abs(noise - truth).mean() > 0.08


def test_the_baseline_cox_risk_reads_the_first_value_and_conditions_on_the_landmark():
    train_visits, train_events, test_visits, test_events, x = split(*simulate(3000, seed=3), n_train=2500)
    risk = cox_baseline_risk(train_visits, train_events, test_visits, test_events, landmark=LANDMARK,
                             horizons=HORIZONS, **COLUMNS)[:, -1]
    # the first value is noise and the visit after the landmark is never read: the risk is unrelated to x
    assert np.abs(np.corrcoef(risk, x)[0, 1]) < 0.1
    # by arm, the mean risk is the true mean risk by 4 of those at risk at the landmark (0.22, 0.31; of
    # everyone at time 0 by 4 it would be 0.41, 0.56), from 200,000 simulated subjects;
    # about 1000 training events: within 0.04 (0.01 to 0.03 over seeds 2, 3, 7, 8)
    visits, events, x_all = simulate(200_000, seed=4)
    at_risk = events["t"].to_numpy() > LANDMARK
    truth = true_risk(events[at_risk], x_all[at_risk], HORIZONS)[:, -1]
    in_b, test_in_b = (events["arm"][at_risk] == "b").to_numpy(), (test_events["arm"] == "b").to_numpy()
    np.testing.assert_allclose([risk[test_in_b].mean(), risk[~test_in_b].mean()],
                               [truth[in_b].mean(), truth[~in_b].mean()], atol=0.04)


def test_marker_values_first_and_last_observed_by_the_landmark():
    visits = pd.DataFrame({"pid": [1, 1, 1, 2, 2], "when": [2.0, 0.0, 1.0, 0.0, 3.0],
                           "m": [5.0, np.nan, 4.0, 7.0, 9.0]})
    first = marker_values(visits, ["m"], id_col="pid", time_col="when")
    last = marker_values(visits, ["m"], id_col="pid", time_col="when", upto=1.5, last=True)
    assert first["m"].to_dict() == {1: 4.0, 2: 7.0}  # the first *observed* value, rows in any order
    assert last["m"].to_dict() == {1: 4.0, 2: 7.0}  # the value at 2 (pid 1) and 3 (pid 2) is after 1.5


def test_bad_input_is_refused_with_the_column_named():
    visits, events, _ = simulate(200, seed=5)
    where = dict(landmark=LANDMARK, horizons=HORIZONS)
    for baseline in (cox_baseline_risk, landmark_cox_risk):
        with pytest.raises(DataError, match="train_events has no column 'arm'"):
            baseline(visits, events.drop(columns="arm"), visits, events, **where, **COLUMNS)
        with pytest.raises(DataError, match="test_visits has no column 'm'"):
            baseline(visits, events, visits.drop(columns="m"), events, **where, **COLUMNS)
        with pytest.raises(DataError, match="covariate column 'arm' has levels not seen.*'c'"):
            baseline(visits, events, visits, events.assign(arm="c"), **where, **COLUMNS)
        with pytest.raises(DataError, match="column 't' is missing or not a number for subject 100"):
            baseline(visits, events.assign(t=[np.nan] + [1.0] * 199), visits, events, **where, **COLUMNS)
        with pytest.raises(DataError, match="one row per subject"):
            baseline(visits, pd.concat([events, events.iloc[:1]]), visits, events, **where, **COLUMNS)
        with pytest.raises(DataError, match="no event"):
            baseline(visits, events.assign(d=0), visits, events, **where, **COLUMNS)
        with pytest.raises(ConfigError, match="horizons must be increasing times after the landmark 2"):
            baseline(visits, events, visits, events, landmark=LANDMARK, horizons=[4.0, 3.0], **COLUMNS)
        with pytest.raises(ConfigError, match="at least one covariate or marker"):
            baseline(visits, events, visits, events, **where, **{**COLUMNS, "covariates": [], "markers": []})
    with pytest.raises(DataError, match="no training subject is at risk at the landmark 2"):
        landmark_cox_risk(visits, events.assign(t=1.0), visits, events, **where, **COLUMNS)


def test_constant_and_missing_values_do_not_break_the_fit():
    visits, events, x = simulate(1000, seed=6)
    visits = visits.assign(flat=1.0, m=visits["m"].mask(visits.index % 7 == 0))  # a constant marker, gaps
    train_visits, train_events, test_visits, test_events, x = split(visits, events, x, n_train=800)
    risk = landmark_cox_risk(train_visits, train_events, test_visits, test_events, landmark=LANDMARK,
                             horizons=HORIZONS, **{**COLUMNS, "markers": ["m", "flat"]})
    assert np.isfinite(risk).all() and ((risk > 0) & (risk < 1)).all()
    assert np.corrcoef(risk[:, -1], true_risk(test_events, x, HORIZONS)[:, -1])[0, 1] > 0.8


def test_fit_cox_climbs_where_plain_newton_overshoots():
    """PBC, the training half of a 2-fold split (156 patients, 90 events): PHReg.fit's plain
    Newton steps overshoot (on the rare binary ascites) into overflow; the halved steps reach the
    maximum that BFGS finds."""
    from statsmodels.duration.hazard_regression import PHReg

    from pyro_dgmm.datasets import load_pbc, load_pbc_events
    from pyro_dgmm.event_baselines import _Design
    from pyro_dgmm.event_evaluation import subject_folds

    visits, events = load_pbc(), load_pbc_events()
    train = events[subject_folds(events["id"].to_numpy(), 2, seed=0) == 1]
    markers = marker_values(visits[visits["id"].isin(train["id"])], ["log_bili", "albumin", "protime", "ascites",
                                                                      "hepato", "spiders"], id_col="id",
                            time_col="years")
    design = _Design.fit(train, markers, ["age", "sex", "trt"], "id").transform(train, markers, "id")
    model = fit_cox(train["futime_years"], train["status"], design)
    reference = PHReg(train["futime_years"].to_numpy(), design.to_numpy(), status=(train["status"] > 0).to_numpy(float),
                      ties="breslow").fit(method="bfgs", gtol=1e-8, maxiter=1000, disp=False).params
    np.testing.assert_allclose(model.coefficients.to_numpy(), reference, atol=1e-4)
    assert model.coefficients["ascites"] == pytest.approx(0.394, abs=0.001)


def test_separation_and_a_constant_column_are_fit_errors():
    time = np.arange(1.0, 21.0)
    status = np.r_[np.ones(10), np.zeros(10)]
    with pytest.raises(FitError, match="no finite maximum.*'x'"):
        fit_cox(time, status, pd.DataFrame({"x": np.r_[np.ones(10), np.zeros(10)]}))  # events only at x = 1
    with pytest.raises(FitError, match="no finite maximum.*'z'"):
        fit_cox(time, status, pd.DataFrame({"x": np.linspace(0, 1, 20), "z": np.ones(20)}))  # a constant column
