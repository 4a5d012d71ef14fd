"""Issue 22, numerics and input types: values that float32 would silently
spoil, datetime/timedelta time columns, and bad inputs that used to give raw
tracebacks.  Every bad-input case asserts the error class and that the
message names the column or option."""
import numpy as np
import pandas as pd
import pyro
import pytest

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.data import DataSchema
from pyro_dgmm.errors import ConfigError, DataError

from common import OUTCOMES, tiny_frame

TINY = dict(latent_dim=2, encoder_hidden=(8,), model_options=dict(fixed_hidden=(8,), random_hidden=(8,)))
START = pd.Timestamp("2021-03-01")


def small_frame(n: int = 30, visits: int = 6, seed: int = 0) -> pd.DataFrame:
    """Gaussian and Poisson outcomes, irregular numeric times in [0, 6)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n), visits)
    t = np.tile(np.arange(visits, dtype=float), n) + rng.uniform(0, 0.5, ids.size)
    b = rng.normal(size=n)[ids]
    return pd.DataFrame({"id": ids, "t": t, "y": 1 + 0.5 * t + b + rng.normal(0, 0.5, ids.size),
                         "c": rng.poisson(np.exp(0.3 + 0.2 * b)).astype(float)})


def fit(frame: pd.DataFrame, epochs: int = 20, **options) -> DeepMixedModel:
    est = DeepMixedModel(id_col="id", time_col="t", outcomes={"y": "gaussian", "c": "poisson"}, **TINY, **options)
    return est.fit(frame, max_epochs=epochs, progress=False, seed=0)


def fitted(est: DeepMixedModel, df: pd.DataFrame | None = None) -> pd.DataFrame:
    pyro.set_rng_seed(1)
    return est.fitted_values(df, num_samples=50)


# ------------------------------------------------------- shifted and scaled data
@pytest.fixture(scope="module")
def reference():
    frame = small_frame()
    return frame, fitted(fit(frame))


@pytest.mark.parametrize("time_shift, outcome_shift, time_scale", [
    (1e9, 0.0, 1.0), (0.0, 1e7, 1.0), (1e9, 1e7, 1.0), (0.0, 0.0, 1e-6), (-1e9, -1e8, 1.0),
], ids=["times+1e9", "outcome+1e7", "both", "times*1e-6", "times-1e9,outcome-1e8"])
def test_shifted_and_scaled_data_give_the_same_fit(reference, time_shift, outcome_shift, time_scale):
    """Before issue 22 these gave errors 3-80x larger than the unshifted data:
    float32 resolves 1e9 + t only to 64 and 1e7 + y only to 1."""
    frame, base = reference
    moved = frame.assign(t=frame.t * time_scale + time_shift, y=frame.y + outcome_shift)
    out = fitted(fit(moved))
    # the user's ids, times and observed values come back as given (float64 arithmetic only)
    assert out.id.tolist() == base.id.tolist()
    np.testing.assert_allclose(out.t.to_numpy(), base.t.to_numpy() * time_scale + time_shift, rtol=1e-15, atol=1e-6)
    np.testing.assert_allclose(out.y - outcome_shift, base.y, rtol=0, atol=1e-6)
    # the same fit: 1e-3 relative (to the outcome's spread); the float32 error of the old cast was ~1
    spread = base.y.std()
    np.testing.assert_allclose(out.y_fitted - outcome_shift, base.y_fitted, rtol=1e-3, atol=1e-3 * spread)
    np.testing.assert_allclose(out.c_fitted, base.c_fitted, rtol=1e-3)


def test_predictions_and_imputations_carry_the_outcome_shift(reference):
    frame, _ = reference
    est = fit(frame.assign(y=frame.y + 1e7), epochs=5)
    history = frame[frame.id < 3].assign(y=frame.y + 1e7)
    table = est.predict(history, [2.0, 7.0], num_samples=30).table
    y = table[table.outcome == "y"]
    assert y["mean"].between(1e7 - 20, 1e7 + 20).all()
    assert (y["lower_95"] < y["mean"]).all() and (y["mean"] < y["upper_95"]).all()
    completed = est.impute(history.assign(y=history.y.where(history.t > 1)), num_imputations=2,
                           mcmc_steps=2, warmup_steps=2)
    for frame_m in completed:
        assert frame_m["y"].between(1e7 - 20, 1e7 + 20).all()
        observed = ~frame_m["y_imputed"]
        expected = history.sort_values(["id", "t"]).y.to_numpy()[observed.to_numpy()]
        np.testing.assert_allclose(frame_m.loc[observed, "y"], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------ datetime columns
def with_times(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """``frame`` with its times (in weeks) as datetimes, tz-aware datetimes or timedeltas."""
    offsets = pd.to_timedelta(frame.t * 7, unit="D")
    column = {"datetime": START + offsets, "tz": (START + offsets).dt.tz_localize("Europe/Paris"),
              "timedelta": offsets}[kind]
    return frame.assign(t=column)


@pytest.fixture(scope="module", params=["datetime", "tz", "timedelta"])
def time_typed(request):
    frame = with_times(small_frame(n=12, visits=4), request.param)
    return request.param, frame, fit(frame, epochs=3, time_unit="weeks")


def test_datetime_times_come_back_in_the_users_type(time_typed):
    kind, frame, est = time_typed
    out = fitted(est)
    assert out.t.dtype == frame.t.dtype
    expected = frame.sort_values(["id", "t"]).t.reset_index(drop=True)
    assert (out.t == expected).all()
    # model time: weeks since the earliest training visit
    data = est.data_
    assert float(data.times[data.visit_mask].min()) == 0.0
    np.testing.assert_allclose(data.times[data.visit_mask].max().item(),
                               ((frame.t.max() - frame.t.min()) / pd.Timedelta(weeks=1)), rtol=1e-6)


def test_predict_at_timestamps_and_relative_offsets(time_typed):
    kind, frame, est = time_typed
    history = frame[frame.id < 2]
    when = frame.t.iloc[5]
    table = est.predict(history, [when], num_samples=10).table
    assert (table.t == when).all() and table.t.dtype == frame.t.dtype
    later = est.predict(history, [1.0], relative=True, num_samples=10).table
    last = history.groupby("id").t.max()
    assert (later.t.to_numpy() == (later.id.map(last) + pd.Timedelta(weeks=1)).to_numpy()).all()
    np.testing.assert_allclose(later.horizon, 1.0)
    offsets = est.predict(history, [pd.Timedelta(weeks=2)], relative=True, num_samples=10).table
    np.testing.assert_allclose(offsets.horizon, 2.0)


def test_time_conversion_is_saved_and_replayed(time_typed, tmp_path):
    kind, frame, est = time_typed
    est.save(tmp_path / "model.pt")
    loaded = DeepMixedModel.load(tmp_path / "model.pt")
    assert loaded.time_unit == "weeks" and loaded.schema_.time_kind == est.schema_.time_kind
    a, b = est.transform(frame), loaded.transform(frame)
    assert (a.times == b.times).all() and (a.time_features == b.time_features).all()


# ----------------------------------------------------------------- bad inputs
def frame_with(change) -> pd.DataFrame:
    frame = small_frame(n=6, visits=3)
    return change(frame)


def set_cell(column, value, row=4):
    def change(frame):
        frame = frame.astype({column: object}) if isinstance(value, str) else frame
        frame.loc[row, column] = value
        return frame
    return change


def multiindex(frame):
    frame.columns = pd.MultiIndex.from_product([["a"], frame.columns])
    return frame


BAD_FRAMES = {
    "outcome beyond float32": (set_cell("y", 1e39), "outcome column 'y'", "float32"),
    "count beyond float32": (set_cell("c", 1e39), "outcome column 'c'", "float32"),
    "time beyond float32": (set_cell("t", 1e39), "time column 't'", "float32"),
    "times at both ends of float64": (lambda f: f.assign(t=np.where(f.index == 4, 1.7e308, np.where(
        f.index == 5, -1.7e308, f.t))), "time column 't'", "float32"),
    "covariate beyond float32": (lambda f: f.assign(age=np.where(f.id == 2, -1e39, 40.0)), "covariate column 'age'",
                                 "float32"),
    "all-NaN outcome column": (lambda f: f.assign(z=np.nan), "outcome column 'z'", "no observed value"),
    "MultiIndex columns": (multiindex, "MultiIndex", "flatten"),
    "text in an outcome": (set_cell("y", "high"), "outcome column 'y'", "must be numeric"),
    "duplicated visit": (lambda f: f.assign(t=np.where(f.index < 2, 0.25, f.t)), "duplicated (id, t)", "rows 0, 1"),
    "date strings as times": (lambda f: f.assign(t=(START + pd.to_timedelta(f.t, unit="D")).astype(str)),
                              "time column 't'", "pd.to_datetime"),
    "NaT time": (lambda f: f.assign(t=(START + pd.to_timedelta(f.t, unit="D")).where(f.index != 3)),
                 "time column 't'", "NaT"),
    "NaN time": (set_cell("t", np.nan), "time column 't'", "missing"),
    "inf outcome": (set_cell("y", np.inf), "outcome column 'y'", "infinite"),
    "NaN id": (set_cell("id", np.nan), "id column 'id'", "missing"),
    "negative count": (set_cell("c", -1.0), "outcome column 'c'", "non-negative"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES), ids=list(BAD_FRAMES))
def test_bad_training_frame(case):
    change, column, detail = BAD_FRAMES[case]
    frame = frame_with(change)
    outcomes = {"y": "gaussian", "c": "poisson", **({"z": "gaussian"} if "z" in frame else {})}
    covariates = ["age"] if "age" in frame else []
    with pytest.raises(DataError) as err:
        DeepMixedModel(id_col="id", time_col="t", outcomes=outcomes, covariates=covariates, **TINY).fit(
            frame, max_epochs=1, progress=False)
    assert column in str(err.value) and detail in str(err.value)


@pytest.fixture(scope="module")
def numeric_model():
    return fit(small_frame(n=8, visits=3), epochs=2)


@pytest.fixture(scope="module")
def datetime_model():
    return fit(with_times(small_frame(n=8, visits=3), "datetime"), epochs=2)


def history_of(model_frame_kind, change):
    frame = small_frame(n=2, visits=3)
    if model_frame_kind != "numeric":
        frame = with_times(frame, model_frame_kind)
    return change(frame)


BAD_PREDICTIONS = {
    # (model, history kind, change to the history, prediction times, relative, words in the message)
    "numbers at a datetime model": ("datetime", "datetime", lambda f: f, [1.0], False, ["time column 't'", "numbers"]),
    "numeric history at a datetime model": ("datetime", "numeric", lambda f: f, [START], False,
                                            ["time column 't'", "datetimes"]),
    "tz-aware history at a naive model": ("datetime", "tz", lambda f: f, [START], False, ["time column 't'", "tz-"]),
    "timedelta history at a datetime model": ("datetime", "timedelta", lambda f: f, [START], False,
                                              ["time column 't'", "timedeltas"]),
    "timestamps at a numeric model": ("numeric", "numeric", lambda f: f, [START], False, ["time column 't'", "numbers"]),
    "timestamp offsets": ("datetime", "datetime", lambda f: f, [START], True, ["time column 't'", "offsets"]),
    "history time beyond float32": ("numeric", "numeric", set_cell("t", 1e39, row=1), [1.0], False,
                                    ["time column 't'", "float32"]),
    "history outcome beyond float32": ("numeric", "numeric", set_cell("y", -1e39, row=1), [1.0], False,
                                       ["outcome column 'y'", "float32"]),
    "NaN prediction time": ("numeric", "numeric", lambda f: f, [1.0, np.nan], False, ["time column 't'", "finite"]),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS), ids=list(BAD_PREDICTIONS))
def test_bad_prediction_input(case, numeric_model, datetime_model):
    model, kind, change, times, relative, words = BAD_PREDICTIONS[case]
    est = numeric_model if model == "numeric" else datetime_model
    with pytest.raises(DataError) as err:
        est.predict(history_of(kind, change), times, relative=relative, num_samples=5)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("value", ["fortnights", 7, None], ids=["unknown unit", "a number", "None"])
def test_time_unit_must_be_a_known_unit(value):
    with pytest.raises(ConfigError, match="time_unit must be one of"):
        DeepMixedModel(id_col="id", time_col="t", outcomes={"y": "gaussian"}, time_unit=value)
    with pytest.raises(ConfigError, match="time_unit"):
        DataSchema.fit(tiny_frame(), id_col="pid", time_col="t", outcomes=OUTCOMES, time_unit=value)


def test_landmark_evaluation_refuses_datetime_times(datetime_model):
    """Landmarks and horizons are numbers: a datetime column is refused, not compared as nanoseconds."""
    frame = with_times(small_frame(n=4, visits=3), "datetime")
    with pytest.raises(DataError) as err:
        datetime_model.landmark_evaluation(frame, 1.0, num_samples=5)
    assert "'t'" in str(err.value) and "numeric time column" in str(err.value)


@pytest.mark.parametrize("kind", ["datetime", "tz", "timedelta"])
@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_time_values_keep_their_type_and_resolution(kind, unit):
    frame = with_times(small_frame(n=3, visits=3), kind)
    frame["t"] = frame.t.dt.floor("s").astype(str(frame.t.dtype).replace("[ns", f"[{unit}"))
    schema = DataSchema.fit(frame, id_col="id", time_col="t", outcomes={"y": "gaussian"}, time_unit="hours")
    back = DataSchema.from_spec(schema.to_spec()).transform(frame).observed_long()
    assert back.t.dtype == frame.t.dtype
    assert (back.t == frame.sort_values(["id", "t"]).t.reset_index(drop=True)).all()
