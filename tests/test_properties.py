"""Property-based tests (hypothesis) over random long frames.

Valid frames (int, str or categorical ids; irregular, unsorted times;
subjects with one visit; outcomes missing in most rows; Gaussian, Bernoulli
and Poisson outcomes together; times and outcomes at extreme but valid
offsets and scales) build, fit briefly and give fitted values without a
crash; ids, times and observed values come back as given; fitted values lie
in each family's support.  A single corrupted cell of a valid frame gives a
DataError naming its column.
"""
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.errors import DataError

FAMILIES = {"g": "gaussian", "b": "bernoulli", "n": "poisson"}
TINY = dict(latent_dim=1, encoder_hidden=(4,), model_options=dict(fixed_hidden=(4,), random_hidden=(4,)))
QUICK = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def long_frames(draw):
    """(frame, outcomes): a random valid long frame and its outcome families."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    n = draw(st.integers(1, 7))
    visits = rng.integers(1, draw(st.integers(1, 5)) + 1, size=n)  # 1..5 visits, some subjects one
    outcomes = {name: FAMILIES[name] for name in draw(st.lists(st.sampled_from(sorted(FAMILIES)), min_size=1,
                                                               max_size=3, unique=True))}
    time_offset = draw(st.sampled_from([0.0, -50.0, 1e6, 1e9]))
    time_scale = draw(st.sampled_from([1e-6, 1.0, 1e3]))
    y_offset = draw(st.sampled_from([0.0, 1e6, -1e7]))
    y_scale = draw(st.sampled_from([1e-6, 1.0, 1e3]))
    missing = draw(st.sampled_from([0.0, 0.3, 0.9]))

    ids = np.repeat(np.arange(n), visits)
    times = np.concatenate([np.sort(rng.choice(20, size=v, replace=False) + rng.uniform(0, 0.9, v))
                            for v in visits]) * time_scale + time_offset
    b = rng.normal(size=n)[ids]
    frame = pd.DataFrame({"id": ids, "t": times})
    for name in outcomes:
        values = {"g": y_offset + y_scale * (b + rng.normal(size=ids.size)),
                  "b": (rng.uniform(size=ids.size) < 1 / (1 + np.exp(-b))).astype(float),
                  "n": rng.poisson(np.exp(0.5 + 0.5 * b)).astype(float)}[name]
        values[rng.uniform(size=ids.size) < missing] = np.nan
        frame[name] = values
    fill = {"g": y_offset, "b": 1.0, "n": 2.0}  # valid values for the cells that must be observed
    lead = list(outcomes)[0]
    first = np.r_[0, np.cumsum(visits)[:-1]]  # every subject keeps an observed value
    frame.loc[first, lead] = frame.loc[first, lead].fillna(fill[lead])
    for name in outcomes:  # and so does every outcome column
        if frame[name].isna().all():
            frame.loc[0, name] = fill[name]
    id_kind = draw(st.sampled_from(["int", "str", "category"]))
    if id_kind == "str":
        frame["id"] = "s" + frame["id"].astype(str)
    elif id_kind == "category":
        frame["id"] = pd.Categorical("c" + frame["id"].astype(str))
    return frame.sample(frac=1.0, random_state=int(rng.integers(1000))).reset_index(drop=True), outcomes


@settings(QUICK, max_examples=30)
@given(long_frames())
def test_valid_frames_fit_and_come_back_unchanged(case):
    frame, outcomes = case
    est = DeepMixedModel(id_col="id", time_col="t", outcomes=outcomes, **TINY)
    est.fit(frame, max_epochs=2, progress=False)
    out = est.fitted_values(num_samples=8)
    assert len(out) == len(frame)
    # ids and times exactly as given; observed values to float32 precision of their deviation from the
    # training mean (the model stores outcomes centred in float64, then cast)
    merged = frame.astype({"id": str}).merge(out.astype({"id": str}), on=["id", "t"], suffixes=("", "_out"),
                                             validate="one_to_one")
    assert len(merged) == len(frame)
    for name, family in outcomes.items():
        given_, back = merged[name].to_numpy(), merged[f"{name}_out"].to_numpy()
        assert np.array_equal(np.isnan(given_), np.isnan(back))
        observed = ~np.isnan(given_)
        deviation = np.abs(given_[observed] - given_[observed].mean()).max()
        rounding = 1e-15 * np.abs(given_[observed]).max()  # float64 subtraction and addition of the shift
        np.testing.assert_allclose(back[observed], given_[observed], rtol=0, atol=1e-6 * deviation + rounding)
        fitted = merged[f"{name}_fitted"].to_numpy()
        assert np.isfinite(fitted).all()
        if family == "bernoulli":
            assert ((fitted >= 0) & (fitted <= 1)).all()
        if family == "poisson":
            assert (fitted >= 0).all()


CORRUPTIONS = {  # what goes into the cell -> the columns it may go into
    "text": (lambda family: "oops", ("t", "g", "b", "n")),
    "inf": (lambda family: np.inf, ("t", "g", "b", "n", "age")),
    "nan": (lambda family: np.nan, ("id", "t", "age")),
    "too large": (lambda family: 1e39, ("t", "g", "n", "age")),
    "outside support": (lambda family: {"bernoulli": 2.0, "poisson": -1.0}[family], ("b", "n")),
    "not an integer": (lambda family: 0.5, ("n",)),
}


def valid_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(6), 4)
    frame = pd.DataFrame({"id": ids, "t": np.tile(np.arange(4.0), 6) + rng.uniform(0, 0.5, ids.size),
                          "g": rng.normal(size=ids.size), "b": rng.integers(0, 2, ids.size).astype(float),
                          "n": rng.poisson(2.0, ids.size).astype(float), "age": 40.0 + ids})
    return frame


@settings(QUICK, max_examples=150)
@given(kind=st.sampled_from(sorted(CORRUPTIONS)), pick=st.integers(0, 10 ** 6), row=st.integers(0, 23))
def test_a_corrupted_cell_gives_a_data_error_naming_its_column(kind, pick, row):
    value_for, columns = CORRUPTIONS[kind]
    column = columns[pick % len(columns)]
    frame = valid_frame()
    family = FAMILIES.get(column)
    value = value_for(family)
    if isinstance(value, str):
        frame = frame.astype({column: object})
    if column == "age":  # a covariate is constant within a subject: corrupt the whole subject
        frame.loc[frame.id == frame.id[row], column] = value
    else:
        frame.loc[row, column] = value
    est = DeepMixedModel(id_col="id", time_col="t", outcomes=FAMILIES, covariates=["age"], **TINY)
    with pytest.raises(DataError) as err:
        est.fit(frame, max_epochs=1, progress=False)
    assert f"'{column}'" in str(err.value)
