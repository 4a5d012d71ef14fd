"""LongitudinalData / DataSchema: padding, round trips, and every bad-input message."""
import numpy as np
import pandas as pd
import pytest
import torch

from pyro_dgmm.data import DataSchema, duplicated_visits, varying_within, visit_order
from pyro_dgmm.errors import ConfigError, DataError

from common import OUTCOMES, tiny_frame


def schema_for(frame, **kwargs):
    options = dict(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"], time_basis="poly(1)")
    options.update(kwargs)
    return DataSchema.fit(frame, **options)


def test_shapes_masks_and_padding_with_unequal_visits():
    frame = tiny_frame()
    frame = frame.drop(index=frame.index[frame.pid == 101][:3])  # subject 101 keeps 2 visits
    data = schema_for(frame).transform(frame)
    n, t, k = 12, 5, 4
    assert data.y.shape == (n, t, k) and data.mask.shape == (n, t, k)
    assert data.visit_mask.shape == (n, t) and data.time_features.shape == (n, t, 1)
    assert data.covariates.shape == (n, 1 + 1)  # age + arm[T.b] (2 levels, the first the reference)
    row = list(data.ids).index(101)
    assert data.visit_mask[row].tolist() == [True, True, False, False, False]
    assert not data.mask[row, 2:].any()
    # observed cells equal the frame's values; unobserved ones hold a valid filler
    observed = frame["g"].notna().sum() + frame["bin"].notna().sum() + frame["count"].notna().sum() + \
        frame["score"].notna().sum()
    assert int(data.mask.sum()) == observed
    assert torch.all((data.y[..., 1] == 0) | (data.y[..., 1] == 1))
    assert torch.all(data.encoder_y[~data.mask] == 0)


def test_times_sorted_within_subject_and_round_trip_to_long():
    frame = tiny_frame().sample(frac=1.0, random_state=3)  # shuffled rows
    data = schema_for(frame).transform(frame)
    back = data.observed_long()
    expected = frame.sort_values(["pid", "t"]).reset_index(drop=True)
    assert back["pid"].tolist() == expected["pid"].tolist()
    assert back["t"].tolist() == expected["t"].tolist()  # the user's times exactly, not float32
    for name in OUTCOMES:
        np.testing.assert_allclose(back[name], expected[name], rtol=1e-6)
    assert torch.all(data.times[:, 1:] >= data.times[:, :-1])


def test_schema_replayed_on_new_data_and_spec_round_trip():
    frame = tiny_frame()
    schema = schema_for(frame)
    new = tiny_frame(n_subjects=3, seed=5)
    a = schema.transform(new)
    b = DataSchema.from_spec(schema.to_spec()).transform(new)
    for field in ("y", "mask", "time_features", "encoder_y", "covariates"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    # covariates are scaled with the training mean/SD, not re-learned
    mean, sd = schema.covariate_encoder.numeric["age"]
    expected = (new.groupby("pid")["age"].first().to_numpy() - mean) / sd
    np.testing.assert_allclose(a.covariates[:, 0].numpy(), expected, rtol=1e-5)


def test_history_without_outcomes_allowed_for_prediction():
    frame = tiny_frame(n_subjects=2, seed=4).drop(columns=list(OUTCOMES))
    schema = schema_for(tiny_frame())
    data = schema.transform(frame, require_observed=False)
    assert not data.mask.any() and data.num_subjects == 2
    with pytest.raises(DataError, match="no observed outcome"):
        schema.transform(frame.assign(g=np.nan, bin=np.nan, count=np.nan, score=np.nan))


def test_subset_keeps_ids_aligned():
    data = schema_for(tiny_frame()).transform(tiny_frame())
    part = data.subset(np.array([3, 1]))
    assert part.ids.tolist() == [data.ids[3], data.ids[1]]
    assert torch.equal(part.y[0], data.y[3])


def _bad(frame, message, **kwargs):
    with pytest.raises(DataError, match=message):
        schema_for(frame, **kwargs)


def test_error_empty_frame():
    _bad(tiny_frame().iloc[:0], "empty")


def test_error_missing_column_suggests_close_name():
    _bad(tiny_frame().rename(columns={"age": "agee"}), r"'age' \(did you mean 'agee'\?\)")


def test_error_non_numeric_outcome_names_rows():
    frame = tiny_frame()
    frame["g"] = frame["g"].astype(object)
    frame.loc[7, "g"] = "high"
    _bad(frame, r"outcome column 'g' must be numeric.*row 7")


def test_error_duplicated_id_time():
    frame = tiny_frame()
    frame.loc[1, "t"] = frame.loc[0, "t"]
    _bad(frame, r"duplicated \(pid, t\) pairs at rows 0, 1")


@pytest.mark.parametrize("arrangement", ["sorted", "time-shuffled within subject", "shuffled"])
def test_visit_order_and_duplicates_agree_with_lexsort_and_pandas(arrangement):
    rng = np.random.default_rng(0)
    subject = np.repeat(rng.permutation(300), 7)
    times = np.round(rng.uniform(0, 3, subject.size), 1)  # ties within subjects: some duplicates
    frame = pd.DataFrame({"s": subject, "t": times}).sort_values(["s", "t"], ignore_index=True)
    if arrangement == "time-shuffled within subject":
        frame = frame.groupby("s", sort=True, group_keys=False).sample(frac=1.0, random_state=1)
    elif arrangement == "shuffled":
        frame = frame.sample(frac=1.0, random_state=1)
    s, t = frame["s"].to_numpy(), frame["t"].to_numpy()
    order = visit_order(s, t)
    np.testing.assert_array_equal(s[order], s[np.lexsort((t, s))])
    np.testing.assert_array_equal(t[order], t[np.lexsort((t, s))])
    expected = frame.duplicated(["s", "t"], keep=False).to_numpy()
    assert expected.sum() > 20
    np.testing.assert_array_equal(duplicated_visits(s, t, order), expected)


@pytest.mark.parametrize("kind", ["float", "string", "bool"])
def test_varying_within_agrees_with_pandas_nunique(kind):
    rng = np.random.default_rng(1)
    subject = rng.integers(0, 200, 3000)
    per_subject = rng.normal(size=200)
    values = per_subject[subject].copy()
    changed = rng.choice(3000, 15, replace=False)
    values[changed] += 1.0
    series = {"float": pd.Series(values), "string": pd.Series(values.round(6).astype(str)),
              "bool": pd.Series(values > per_subject.mean())}[kind]
    expected = series.groupby(subject).transform("nunique").to_numpy() > 1
    assert expected.any()
    np.testing.assert_array_equal(varying_within(subject, series, np.argsort(subject, kind="stable")), expected)


def test_fit_transform_equals_fit_then_transform():
    frame = tiny_frame().sample(frac=1.0, random_state=2)
    schema, data = DataSchema.fit_transform(frame, id_col="pid", time_col="t", outcomes=OUTCOMES,
                                            covariates=["age", "arm"], time_basis="spline(3)")
    again = schema_for(frame, time_basis="spline(3)").transform(frame)
    for name in ("y", "mask", "visit_mask", "times", "time_features", "encoder_y", "covariates"):
        torch.testing.assert_close(getattr(data, name), getattr(again, name))
    assert list(data.ids) == list(again.ids)


def test_error_nan_and_inf_in_time_and_covariates():
    frame = tiny_frame()
    frame.loc[4, "t"] = np.nan
    _bad(frame, r"time column 't' has missing or infinite values at row 4")
    frame = tiny_frame()
    frame.loc[frame.pid == 100, "age"] = np.inf
    _bad(frame, r"covariate column 'age' has missing or infinite values at rows 0, 1")


def test_error_binary_outcome_not_zero_one():
    frame = tiny_frame()
    frame.loc[3, "bin"] = 2.0
    _bad(frame, r"outcome column 'bin' \(bernoulli\): values must be 0 or 1.*row 3")


def test_error_bounded_outcome_out_of_bounds():
    frame = tiny_frame()
    frame.loc[9, "score"] = 7.5
    _bad(frame, r"outcome column 'score' \(bounded\).*\[1, 7\].*row 9")


def test_error_subject_without_observations():
    frame = tiny_frame()
    frame.loc[frame.pid == 105, list(OUTCOMES)] = np.nan
    _bad(frame, r"no observed outcome value.*ids \[105\]")


def test_error_covariate_not_constant_within_subject():
    frame = tiny_frame()
    frame.loc[2, "arm"] = "z"
    _bad(frame, r"covariate column 'arm' changes within subjects \[100\]")


def test_error_unseen_category_level_at_transform():
    schema = schema_for(tiny_frame())
    new = tiny_frame(n_subjects=2).assign(arm="c")
    with pytest.raises(DataError, match=r"'arm' has levels not seen.*\['c'\]"):
        schema.transform(new)


def test_categorical_covariates_are_treatment_coded_with_the_reference_first():
    """Reference level: the first in sorted order, or a Categorical's first
    category that occurs; one 0/1 column per other level, named as patsy does."""
    frame = tiny_frame().assign(arm=lambda f: f["arm"].map({"a": "placebo", "b": "drug"}))
    schema = schema_for(frame)
    assert schema.covariate_encoder.columns == ["age", "arm[T.placebo]"]
    data = schema.transform(frame)
    placebo = frame.groupby("pid")["arm"].first().to_numpy() == "placebo"
    np.testing.assert_array_equal(data.covariates[:, 1].numpy(), placebo.astype(np.float32))
    frame["arm"] = pd.Categorical(frame["arm"], categories=["unused", "placebo", "drug"])
    schema = schema_for(frame)
    assert schema.covariate_encoder.categorical["arm"] == ["placebo", "drug"]
    assert schema.covariate_encoder.columns == ["age", "arm[T.drug]"]
    restored = DataSchema.from_spec(schema.to_spec())
    assert restored.covariate_encoder == schema.covariate_encoder
    assert torch.equal(restored.transform(frame).covariates, schema.transform(frame).covariates)


def test_error_model_saved_with_one_hot_categories():
    spec = schema_for(tiny_frame()).to_spec()
    del spec["covariate_encoder"]["contrasts"]  # as written before treatment contrasts
    with pytest.raises(DataError, match=r"one-hot categorical covariates \['arm'\].*refit"):
        DataSchema.from_spec(spec)


def test_error_no_outcomes_and_unknown_family():
    with pytest.raises(ConfigError, match="at least one outcome"):
        schema_for(tiny_frame(), outcomes={})
    with pytest.raises(ConfigError):
        schema_for(tiny_frame(), outcomes={"g": "gamma"})


def test_nan_outcomes_mean_missing_not_error():
    frame = tiny_frame()
    frame.loc[:5, "g"] = np.nan
    data = schema_for(frame).transform(frame)
    assert not data.mask[0, :, 0].any()


# ------------------------------------------------------------ formula covariates
def formula_frame(n_subjects: int = 30, seed: int = 1) -> pd.DataFrame:
    """tiny_frame with a three-level covariate ``site`` (x, y, z)."""
    frame = tiny_frame(n_subjects=n_subjects, seed=seed)
    sites = np.array(["x", "y", "z"])[np.arange(n_subjects) % 3]
    frame["site"] = sites[frame["pid"] - 100]
    return frame


def test_formula_gives_the_list_form_design():
    """'age + arm' is ['age', 'arm']: same columns, same values."""
    frame = tiny_frame()
    listed, formula = schema_for(frame), schema_for(frame, covariates="age + arm")
    assert formula.covariates == ["age", "arm"]
    assert formula.covariate_encoder.columns == listed.covariate_encoder.columns == ["age", "arm[T.b]"]
    assert torch.equal(formula.transform(frame).covariates, listed.transform(frame).covariates)


def test_formula_interactions_contrasts_and_transforms_by_hand():
    """Every design column against its definition: standardised numeric
    columns (interactions and I() included) first, then 0/1 treatment
    contrasts with the first sorted level as reference, no intercept."""
    frame = formula_frame()
    schema = schema_for(frame, covariates="age * arm + I(age ** 2) + C(site)")
    base = frame.groupby("pid").first()
    x = schema.transform(frame).covariates.double().numpy()
    assert schema.covariate_encoder.columns == ["age", "I(age ** 2)", "age:arm[T.b]", "arm[T.b]",
                                                "C(site)[T.y]", "C(site)[T.z]"]

    def z(values):
        return (values - values.mean()) / values.std()

    arm_b = (base["arm"] == "b").to_numpy(float)
    expected = np.column_stack([z(base["age"].to_numpy()), z(base["age"].to_numpy() ** 2),
                                z(base["age"].to_numpy() * arm_b), arm_b, (base["site"] == "y").to_numpy(float),
                                (base["site"] == "z").to_numpy(float)])
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_formula_state_is_replayed_on_new_subjects():
    """New subjects (other ids, some levels absent) get the training codes and
    the training transform state (spline knots, centring), not refitted ones."""
    frame = formula_frame()
    schema = schema_for(frame, covariates="bs(age, df=3) + center(age) + C(site) * arm")
    train = schema.transform(frame).covariates
    chosen = [103, 107, 112]  # sites x, y, x: level z absent from the new frame
    new = frame[frame.pid.isin(chosen)].assign(pid=lambda d: d.pid + 1000)
    rows = [list(schema.transform(frame).ids).index(pid) for pid in chosen]
    assert torch.equal(schema.transform(new).covariates, train[rows])


def test_formula_schema_round_trips_through_a_weights_only_save(tmp_path):
    frame = formula_frame()
    schema = schema_for(frame, covariates="bs(age, df=3) + C(site, contr.sum) * arm")
    torch.save(schema.to_spec(), tmp_path / "spec.pt")
    restored = DataSchema.from_spec(torch.load(tmp_path / "spec.pt", weights_only=True))
    assert restored.covariate_encoder == schema.covariate_encoder
    assert torch.equal(restored.transform(frame).covariates, schema.transform(frame).covariates)


@pytest.mark.parametrize("formula", ["age * arm", "C(arm) + age"])
def test_formula_unseen_level_names_column_and_level(formula):
    frame = tiny_frame()
    schema = schema_for(frame, covariates=formula)
    new = frame.assign(arm=np.where(frame.pid == 104, "c", frame.arm))
    with pytest.raises(DataError, match=r"column 'arm' has levels not seen .*\['c'\] for subjects \[104\]"):
        schema.transform(new)


def test_formula_unseen_level_of_an_expression_is_an_error():
    frame = tiny_frame()
    schema = schema_for(frame, covariates="C(arm + '_')")
    with pytest.raises(DataError, match=r"levels not seen .*c_"):
        schema.transform(frame.assign(arm="c"))


@pytest.mark.parametrize("formula, message", [
    ("age +* arm", "incorrectly used"),
    ("g ~ age", "right-hand side only"),
    ("0 + age + arm", "own intercept"),
    ("age - 1", "own intercept"),
])
def test_formula_errors_name_the_formula(formula, message):
    with pytest.raises(ConfigError, match=message):
        schema_for(tiny_frame(), covariates=formula)


def test_formula_data_errors_name_column_or_term():
    frame = tiny_frame()
    with pytest.raises(DataError, match="'weight'"):
        schema_for(frame, covariates="age + weight")
    with pytest.raises(DataError, match=r"np.log\(age - 50\)"):
        schema_for(frame, covariates="np.log(age - 50)")  # negative for some subjects
    with pytest.raises(DataError, match="changes within subjects"):
        schema_for(frame.assign(age=np.arange(len(frame), dtype=float)), covariates="age * arm")


def test_formula_fit_reproduces_the_list_fit_and_predicts_new_subjects(tmp_path):
    """Same design, same seed: the same fitted values; a formula model with
    an interaction predicts new subjects, names unseen levels, and saves."""
    from pyro_dgmm import DeepMixedModel

    frame = formula_frame()
    options = dict(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"},
                   time_basis="poly(1)", latent_dim=2)
    fit = dict(max_epochs=4, progress=False, seed=5)
    listed = DeepMixedModel(covariates=["age", "arm"], **options).fit(frame, **fit)
    formula = DeepMixedModel(covariates="age + arm", **options).fit(frame, **fit)
    pd.testing.assert_frame_equal(listed.fitted_values(num_samples=20, seed=0),
                                  formula.fitted_values(num_samples=20, seed=0))

    model = DeepMixedModel(covariates="age * C(site)", **options).fit(frame, **fit)
    new = frame[frame.pid.isin([100, 101])].assign(pid=lambda d: d.pid + 1000)
    table = model.predict(new, [1.0, 2.0], num_samples=20, seed=0).table
    assert set(table["pid"]) == {1100, 1101} and table["mean"].notna().all()
    with pytest.raises(DataError, match=r"column 'site' has levels not seen .*\['w'\]"):
        model.predict(new.assign(site="w"), [1.0], num_samples=20)
    model.save(tmp_path / "model.pt")
    loaded = DeepMixedModel.load(tmp_path / "model.pt")
    assert loaded.covariates == "age * C(site)"
    pd.testing.assert_frame_equal(loaded.predict(new, [1.0, 2.0], num_samples=20, seed=0).table, table)


def test_formula_with_partitioned_input_is_refused_before_any_work():
    from pyro_dgmm import DeepMixedModel

    model = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, covariates="age * arm")
    with pytest.raises(ConfigError, match="formula cannot be fitted with distributed_input=True"):
        model.fit(tiny_frame(), distributed_input=True, max_epochs=1)
