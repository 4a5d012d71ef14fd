"""Tests of pyro_dgmm.datasets: the PBC loader and the simulators with known truth.

The statistical checks use the default sizes at seed 0 and tolerances of
about four standard errors, derived next to each check, so they fail on a
wrong formula or a misaligned row, not on Monte Carlo noise.
"""

import math

import numpy as np
import pandas as pd
import pytest

from pyro_dgmm.datasets import (
    PBC_CODEBOOK,
    PBC_COVARIATES,
    PBC_ID,
    PBC_OUTCOMES,
    PBC_TIME,
    SIMULATORS,
    SimulatedData,
    load_pbc,
    simulate_app,
    simulate_dropout,
    simulate_linear,
    simulate_nonlinear,
)
from pyro_dgmm.datasets.simulate import POPULATION_DRAWS
from pyro_dgmm.errors import ConfigError

SMALL = {
    "linear": {"n_subjects": 40, "n_visits": 8},
    "nonlinear": {"n_subjects": 40, "n_visits": 8},
    "dropout": {"n_subjects": 40, "n_visits": 8},
    "app": {"n_subjects": 40, "n_days": 21},
}
N_RANDOM_EFFECTS = {"linear": 2, "nonlinear": 2, "dropout": 2, "app": 3}


@pytest.fixture(scope="module")
def pbc():
    return load_pbc()


@pytest.fixture(scope="module")
def small():
    return {name: SIMULATORS[name](seed=3, **kwargs) for name, kwargs in SMALL.items()}


@pytest.fixture(scope="module")
def default():
    """Default-size simulations at seed 0, built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = SIMULATORS[name](seed=0)
        return cache[name]

    return get


def wide(sim: SimulatedData, column: str, frame: str = "data") -> np.ndarray:
    """``(n_subjects, n_visits)`` array of a column (rows are id-major, visit-minor)."""
    source = sim.data if frame == "data" else sim.truth
    n_subjects = sim.random_effects.shape[0]
    return source[column].to_numpy().reshape(n_subjects, -1)


def missing_fraction(sim: SimulatedData) -> float:
    return float(sim.data[list(sim.outcomes)].isna().to_numpy().mean())


# -------------------------------------------------------------------- PBC


def test_pbc_shape_ids_and_columns(pbc):
    assert pbc.shape[0] == 1945
    assert pbc[PBC_ID].nunique() == 312
    assert set(PBC_CODEBOOK) == set(pbc.columns)
    assert all(isinstance(text, str) and text for text in PBC_CODEBOOK.values())
    assert set(PBC_OUTCOMES) | set(PBC_COVARIATES) | {PBC_ID, PBC_TIME} <= set(pbc.columns)
    assert set(PBC_OUTCOMES.values()) == {"gaussian", "bernoulli"}


def test_pbc_time_axis_sorted_and_derived_columns(pbc):
    assert pbc[PBC_ID].is_monotonic_increasing
    assert pbc.groupby(PBC_ID)[PBC_TIME].apply(lambda t: t.is_monotonic_increasing).all()
    assert (pbc.groupby(PBC_ID)[PBC_TIME].first() == 0).all()
    np.testing.assert_allclose(pbc["years"], pbc["day"] / 365.25)
    np.testing.assert_allclose(pbc["futime_years"], pbc["futime"] / 365.25)
    np.testing.assert_allclose(np.exp(pbc["log_bili"]), pbc["bili"])
    assert (pbc["years"] <= pbc["futime_years"]).all()


def test_pbc_types_and_missing_markers(pbc):
    assert isinstance(pbc["sex"].dtype, pd.CategoricalDtype)
    assert list(pbc["sex"].cat.categories) == ["f", "m"]
    assert set(pbc["trt"]) == {0, 1}
    assert (pbc.groupby(PBC_ID)[["trt", "age", "sex"]].nunique() == 1).all().all()
    for marker in ("ascites", "hepato", "spiders"):
        assert pbc[marker].dtype == float
        assert set(pbc[marker].dropna()) == {0.0, 1.0}
        assert pbc[marker].isna().sum() > 0  # NaN marks a missing outcome
    assert pbc[["bili", "albumin", "protime", "log_bili"]].notna().all().all()


# ------------------------------------------------ all simulators: structure


@pytest.mark.parametrize("name", list(SMALL))
def test_simulator_structure(small, name):
    sim = small[name]
    n_subjects = SMALL[name]["n_subjects"]
    n_visits = SMALL[name].get("n_visits", SMALL[name].get("n_days"))
    outcomes, covariates = list(sim.outcomes), sim.covariates
    assert (sim.id_col, sim.time_col) == ("id", "time")
    assert list(sim.data.columns) == ["id", "time", *outcomes, *covariates]
    assert len(sim.data) == len(sim.truth) == n_subjects * n_visits
    assert sim.random_effects.shape == (n_subjects, N_RANDOM_EFFECTS[name])
    np.testing.assert_array_equal(sim.data["id"], np.repeat(np.arange(n_subjects), n_visits))
    assert sim.data["id"].dtype == np.int64
    pd.testing.assert_frame_equal(sim.truth[["id", "time"]], sim.data[["id", "time"]])
    assert (np.diff(wide(sim, "time"), axis=1) >= 0).all()
    assert (sim.data.groupby("id")[covariates].nunique() == 1).all().all()
    expected_truth = [f"{y}_{kind}" for y in outcomes for kind in ("mean", "complete")]
    assert list(sim.truth.columns) == ["id", "time", *expected_truth]
    assert list(sim.population_truth.columns) == [
        "time",
        *(f"{y}_population_mean" for y in outcomes),
    ]


@pytest.mark.parametrize("name", list(SMALL))
def test_observed_values_are_the_complete_values(small, name):
    sim = small[name]
    for y in sim.outcomes:
        observed, complete = sim.data[y], sim.truth[f"{y}_complete"]
        assert observed.dtype == float
        assert complete.notna().all() and sim.truth[f"{y}_mean"].notna().all()
        seen = observed.notna()
        np.testing.assert_array_equal(observed[seen], complete[seen])


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_output_other_seed_differs(small, name):
    again = SIMULATORS[name](seed=3, **SMALL[name])
    other = SIMULATORS[name](seed=4, **SMALL[name])
    pd.testing.assert_frame_equal(again.data, small[name].data)
    pd.testing.assert_frame_equal(again.truth, small[name].truth)
    np.testing.assert_array_equal(again.random_effects, small[name].random_effects)
    assert not np.allclose(other.random_effects, small[name].random_effects)
    y = next(iter(again.outcomes))
    assert not np.array_equal(other.truth[f"{y}_complete"], again.truth[f"{y}_complete"])


@pytest.mark.parametrize(
    ("name", "times"),
    [("linear", (0.0, 5.0, 10.0)), ("nonlinear", (0.0, 4.0, 6.0, 10.0)), ("app", (0, 3, 50, 104))],
)
def test_population_truth_matches_empirical_mean_of_complete_data(default, name, times):
    """Mean over subjects of ``<y>_complete`` at a visit vs the population truth there.

    Irregular times: the population mean is interpolated at each subject's
    own visit time and averaged. Tolerance: 4 standard errors of the
    difference between two independent means of ``n`` and ``POPULATION_DRAWS``
    subjects, using the sd of the complete values (an upper bound on the sd
    of the conditional means that the Monte Carlo averages).
    """
    sim = default(name)
    grid = sim.population_truth["time"].to_numpy()
    nominal = wide(sim, "time")[0] if name == "app" else np.linspace(0, 10, 20)
    for t in times:
        visit = int(np.argmin(np.abs(nominal - t)))
        subject_times = wide(sim, "time")[:, visit]
        for y in sim.outcomes:
            values = wide(sim, f"{y}_complete", "truth")[:, visit]
            curve = sim.population_truth[f"{y}_population_mean"]
            population = np.interp(subject_times, grid, curve)
            tol = 4 * values.std() * math.sqrt(1 / len(values) + 1 / POPULATION_DRAWS)
            assert abs(values.mean() - population.mean()) < tol, (name, y, t)


# ------------------------------------------------------------------ linear


def test_linear_truth_is_the_model_evaluated_at_the_random_effects(small):
    sim = small["linear"]
    beta, b = sim.params["beta"], sim.random_effects[sim.data["id"]]
    t, treated = sim.data["time"], (sim.data["group"] == "treated").astype(float)
    expected = (
        beta["intercept"] + beta["time"] * t + beta["age"] * sim.data["age"]
        + beta["group[treated]"] * treated + b[:, 0] + b[:, 1] * t
    )
    np.testing.assert_allclose(sim.truth["y_mean"], expected)
    assert list(sim.data["group"].cat.categories) == ["control", "treated"]
    assert sim.data["time"].between(0, 10).all() and (wide(sim, "time")[:, 0] == 0).all()


def test_linear_recovers_fixed_effects_and_slope_variance(default):
    """Two-stage check: per-subject OLS lines, then their mean and spread.

    With 800 subjects and 20 visits over [0, 10], the per-subject slope is
    0.3 + b1_i + noise of variance sigma^2 / S_tt (S_tt ~ 184, so ~0.0014).
    Mean slope: SE = sqrt((0.09 + 0.0014) / 800) ~ 0.011, tolerance 0.045.
    Slope variance: var(slopes) - mean(sigma^2 / S_tt) estimates D11 = 0.09
    with SE ~ 0.0914 sqrt(2 / 800) ~ 0.0046, tolerance 0.02. Per-subject
    intercepts regressed on (1, age, treated): residual sd ~ 1.02, so SE
    ~0.036 for age and ~0.072 for treated; tolerances 0.15 and 0.3.
    """
    sim = default("linear")
    t, y = wide(sim, "time"), wide(sim, "y")
    t_c = t - t.mean(axis=1, keepdims=True)
    s_tt = (t_c**2).sum(axis=1)
    slopes = (t_c * y).sum(axis=1) / s_tt
    intercepts = y.mean(axis=1) - slopes * t.mean(axis=1)
    beta, sigma = sim.params["beta"], sim.params["sigma"]
    assert abs(slopes.mean() - beta["time"]) < 0.045
    slope_variance = slopes.var(ddof=1) - np.mean(sigma**2 / s_tt)
    assert abs(slope_variance - sim.params["D"][1][1]) < 0.02

    first = sim.data.groupby("id").first()
    design = np.column_stack(
        [np.ones(len(first)), first["age"], (first["group"] == "treated").astype(float)]
    )
    coef = np.linalg.lstsq(design, intercepts, rcond=None)[0]
    expected = [beta["intercept"], beta["age"], beta["group[treated]"]]
    assert (np.abs(coef - expected) < [0.2, 0.15, 0.3]).all(), coef


def test_linear_random_effects_and_population_mean(default):
    """b has covariance D (SEs ~0.05, ~0.011, ~0.0045 for n = 800: 4 SE);
    the Monte Carlo population mean is 1.4 + 0.3 t (its SE at t = 10 is
    sqrt(12.4 / 20000) ~ 0.025)."""
    sim = default("linear")
    error = np.abs(np.cov(sim.random_effects.T) - np.asarray(sim.params["D"]))
    assert (error < [[0.2, 0.05], [0.05, 0.02]]).all(), error
    pop = sim.population_truth
    assert len(pop) == 50 and pop["time"].iloc[0] == 0 and pop["time"].iloc[-1] == 10
    np.testing.assert_allclose(pop["y_population_mean"], 1.4 + 0.3 * pop["time"], atol=0.1)
    residual = sim.truth["y_complete"] - sim.truth["y_mean"]
    assert abs(residual.std() - sim.params["sigma"]) < 0.02  # SE 0.5 / sqrt(2 * 16000) ~ 0.003


# ---------------------------------------------------- nonlinear and dropout


def test_nonlinear_truth_is_the_model_evaluated_at_the_random_effects(small):
    sim, p = small["nonlinear"], small["nonlinear"].params
    b, t = sim.random_effects[sim.data["id"]], sim.data["time"]
    rise = 1 / (1 + np.exp(-(t - p["midpoint"] - p["shift_scale"] * b[:, 1]) / p["width"]))
    expected = (
        p["intercept"] + p["x"] * sim.data["x"] + p["b0_scale"] * b[:, 0] + p["amplitude"] * rise
    )
    np.testing.assert_allclose(sim.truth["y_mean"], expected)
    assert sim.data["y"].notna().all()


def test_dropout_has_the_complete_data_of_the_nonlinear_simulator(small):
    nonlinear = simulate_nonlinear(seed=3, **SMALL["dropout"])
    pd.testing.assert_frame_equal(small["dropout"].truth, nonlinear.truth)
    assert {"a0", "a1"} <= set(small["dropout"].params)


def test_dropout_is_monotone_and_about_30_percent(default):
    sim = default("dropout")
    observed = ~np.isnan(wide(sim, "y"))
    assert 0.25 <= missing_fraction(sim) <= 0.35
    assert observed[:, :3].all()
    assert (np.diff(observed.astype(int), axis=1) <= 0).all()  # once out, out for good


def test_dropout_complete_cases_are_biased_downward_late(default):
    """High values drop out (a1 > 0), so late complete cases sit below the truth.

    Over the last 5 visits the shift is about -0.5 at seed 0. About 200-370
    subjects are left there, and the complete-case mean has a subject-clustered
    SE of ~0.04, so the threshold -0.25 is ~6 SE from both zero and -0.5.
    """
    sim = default("dropout")
    late = slice(15, 20)
    y, t = wide(sim, "y")[:, late], wide(sim, "time")[:, late]
    seen = ~np.isnan(y)
    pop = sim.population_truth
    population = np.interp(t[seen], pop["time"], pop["y_population_mean"])
    assert y[seen].mean() - population.mean() < -0.25


# --------------------------------------------------------------------- app


def test_app_missingness(default):
    sim = default("app")
    affect, lonely, bored = (wide(sim, y) for y in ("affect", "lonely", "bored"))
    assert 0.58 <= missing_fraction(sim) <= 0.64
    assert not np.isnan(affect[:, 0]).any()  # every subject answers on day 0
    np.testing.assert_array_equal(np.isnan(lonely), np.isnan(bored))
    assert not (np.isnan(affect) & ~np.isnan(lonely)).any()  # a missed day misses every item
    binary_only = (~np.isnan(affect) & np.isnan(lonely)).sum() / (~np.isnan(affect)).sum()
    assert 0.04 < binary_only < 0.06  # 5% of answered days; SE ~0.001 over ~50000 days


def test_app_missingness_depends_on_yesterdays_affect_and_weekends(default):
    """Missing is likelier after a low observed affect (MAR) and on weekends."""
    sim = default("app")
    affect = wide(sim, "affect")
    yesterday, missing_today = affect[:, :-1], np.isnan(affect[:, 1:])
    assert missing_today[yesterday < 3].mean() > missing_today[yesterday > 5].mean() + 0.05
    day_missing = sim.data["affect"].isna()
    weekend = sim.data["time"] % 7 >= 5
    assert day_missing[weekend].mean() > day_missing[~weekend].mean() + 0.05


def test_app_values_and_grid(default):
    sim = default("app")
    affect = sim.data["affect"].dropna()
    assert affect.between(1, 7).all()
    assert (affect == 1).any() or (affect == 7).any()
    near_bound = ((affect > 1) & (affect < 1.01)) | ((affect < 7) & (affect > 6.99))
    assert not near_bound.any()  # draws within 0.01 of a bound were snapped to it
    for y in ("lonely", "bored"):
        assert set(sim.data[y].dropna()) == {0.0, 1.0}
        assert sim.truth[f"{y}_mean"].between(0, 1).all()
    assert sim.truth["affect_mean"].between(1, 7).all()
    np.testing.assert_array_equal(wide(sim, "time"), np.tile(np.arange(105.0), (1174, 1)))
    np.testing.assert_array_equal(sim.population_truth["time"], np.arange(105.0))
    assert list(sim.data["sex"].cat.categories) == ["female", "male"]
    assert sim.outcomes == {"affect": "bounded(1,7)", "lonely": "bernoulli", "bored": "bernoulli"}


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("simulator", "kwargs", "argument"),
    [
        (simulate_linear, {"n_subjects": 0}, "n_subjects"),
        (simulate_linear, {"n_visits": 1}, "n_visits"),
        (simulate_linear, {"seed": -1}, "seed"),
        (simulate_nonlinear, {"n_visits": 4.0}, "n_visits"),
        (simulate_nonlinear, {"seed": 1.5}, "seed"),
        (simulate_dropout, {"dropout_strength": float("nan")}, "dropout_strength"),
        (simulate_dropout, {"n_subjects": True}, "n_subjects"),
        (simulate_app, {"n_days": 1}, "n_days"),
        (simulate_app, {"n_subjects": "10"}, "n_subjects"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_argument(simulator, kwargs, argument):
    with pytest.raises(ConfigError, match=argument):
        simulator(**kwargs)
