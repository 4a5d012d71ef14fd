"""Tests of pyro_dgmm.bases: time bases, extrapolation, specs and parsing."""

import json
import math

import numpy as np
import pytest
import torch

from pyro_dgmm.bases import (
    CombinedBasis,
    Fourier,
    NaturalSpline,
    Polynomial,
    TimeBasis,
    basis_from_spec,
    parse_basis,
)
from pyro_dgmm.errors import ConfigError, DataError, NotFittedError

torch.set_num_threads(1)

TIMES = np.linspace(0.0, 10.0, 201)


def _lstsq_residual(features: np.ndarray, target: np.ndarray) -> float:
    """Max abs residual of the least-squares fit of target on [1, features]."""
    design = np.column_stack([np.ones(len(target)), features])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.abs(design @ coef - target).max())


def _bases():
    return [
        Polynomial(3),
        NaturalSpline(5),
        NaturalSpline(knots=[2.0, 7.0], extrapolation="clip"),
        Fourier(7, 2),
        NaturalSpline(4) + Fourier(3.5),
    ]


# ---------------------------------------------------------- shapes/dtypes
@pytest.mark.parametrize("basis", _bases(), ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype(basis, dtype):
    basis.fit(TIMES)
    out = basis.transform(torch.linspace(0, 10, 12, dtype=dtype).reshape(3, 4))
    assert out.shape == (3, 4, basis.num_features)
    assert out.dtype == dtype and out.device.type == "cpu"
    assert torch.isfinite(out).all()


def test_num_features_known_before_fit():
    assert [b.num_features for b in _bases()] == [3, 5, 3, 4, 6]


def test_integer_times_become_default_float():
    out = Polynomial(2).fit(TIMES).transform(torch.tensor([1, 2, 3]))
    assert out.dtype == torch.get_default_dtype()


# ------------------------------------------------------------- polynomial
def test_polynomial_is_exact_powers_of_standardised_time():
    basis = Polynomial(3).fit(TIMES)
    t = np.array([-1.0, 0.0, 3.3, 12.0])
    z = (t - TIMES.mean()) / TIMES.std()
    expected = np.column_stack([z, z**2, z**3])
    np.testing.assert_allclose(basis.transform(torch.tensor(t)).numpy(), expected, rtol=1e-12)


def test_polynomial_constant_times_use_unit_scale():
    basis = Polynomial(2).fit(np.full(5, 3.0))
    np.testing.assert_allclose(basis.transform(torch.tensor([4.0])).numpy(), [[1.0, 1.0]])


# ----------------------------------------------------------------- spline
@pytest.mark.parametrize("df", [1, 2, 4, 8])
def test_spline_span_contains_linear_functions(df):
    features = NaturalSpline(df).fit(TIMES).transform(torch.tensor(TIMES)).numpy()
    assert features.shape == (len(TIMES), df)
    assert _lstsq_residual(features, 3.0 * TIMES - 2.0) < 1e-10


def test_spline_columns_have_unit_sd_on_fitted_times():
    features = NaturalSpline(6).fit(TIMES).transform(torch.tensor(TIMES)).numpy()
    np.testing.assert_allclose(features.std(0), 1.0, rtol=1e-12)


def test_spline_scales_from_a_sample_of_many_periodic_times():
    """Over SCALE_SAMPLE times the SD comes from a random draw; rows repeating
    a visit pattern (a stride would see one visit of each subject) still get
    SDs within 1% of the exact ones."""
    visits = np.linspace(0.0, 3.0, 20) ** 2
    times = np.tile(visits, 60_000)  # 1.2M rows, 20 visits per subject
    features = NaturalSpline(4).fit(times).transform(torch.tensor(visits)).numpy()
    np.testing.assert_allclose(features.std(0), 1.0, rtol=0.01)


def test_spline_is_linear_beyond_boundary_knots():
    basis = NaturalSpline(6).fit(TIMES)
    for grid in (np.linspace(10, 40, 31), np.linspace(-30, 0, 31)):
        second_diff = np.diff(basis.transform(torch.tensor(grid)).numpy(), n=2, axis=0)
        assert np.abs(second_diff).max() < 1e-9
    inside = np.diff(basis.transform(torch.tensor(np.linspace(2, 8, 31))).numpy(), n=2, axis=0)
    assert np.abs(inside).max() > 1e-3


def test_spline_reproduces_smooth_function():
    features = NaturalSpline(8).fit(TIMES).transform(torch.tensor(TIMES)).numpy()
    assert _lstsq_residual(features, np.sin(TIMES)) < 0.06


def test_spline_knots_at_quantiles_and_ties():
    times = np.concatenate([np.linspace(0, 1, 50), np.linspace(1, 10, 50)])
    basis = NaturalSpline(2).fit(times)
    assert basis.all_knots == [0.0, float(np.quantile(times, 0.5)), 10.0]
    tied = NaturalSpline(4).fit(np.array([0.0] * 50 + [1.0, 2.0, 3.0, 4.0]))
    assert tied.all_knots == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(DataError, match="2 distinct times"):
        NaturalSpline(3).fit(np.array([5.0, 5.0]))


def test_spline_explicit_knots():
    basis = NaturalSpline(knots=[2, 5]).fit(TIMES)
    assert basis.num_features == 3 and basis.all_knots == [0.0, 2.0, 5.0, 10.0]
    with pytest.raises(DataError, match="strictly inside"):
        NaturalSpline(knots=[5, 12]).fit(TIMES)
    with pytest.raises(ConfigError, match="not both"):
        NaturalSpline(3, knots=[2, 5])
    with pytest.raises(ConfigError, match="strictly increasing"):
        NaturalSpline(knots=[5, 2])


# ------------------------------------------------- fit/transform contract
@pytest.mark.parametrize(
    "basis", [Polynomial(), NaturalSpline(), Polynomial() + Fourier(7)], ids=repr
)
def test_transform_before_fit_raises(basis):
    assert not basis.is_fitted
    with pytest.raises(NotFittedError, match="not fitted"):
        basis.transform(torch.zeros(3))


def test_fourier_needs_no_fit():
    assert Fourier(7).is_fitted
    assert Fourier(7).transform(torch.zeros(2)).shape == (2, 2)


@pytest.mark.parametrize(
    "times, match",
    [(np.array([]), "empty"), (np.array([1.0, np.nan]), "1 of 2"), (np.zeros((2, 2)), "1-d")],
)
def test_fit_rejects_bad_times(times, match):
    with pytest.raises(DataError, match=match):
        Polynomial().fit(times)


def test_refit_overwrites_state():
    basis = Polynomial(1).fit(TIMES)
    basis.fit(TIMES + 100)
    assert basis.center == pytest.approx(105.0) and basis.t_min == 100.0


# ---------------------------------------------------------- extrapolation
def test_error_policy_names_count_and_range():
    basis = NaturalSpline(3, extrapolation="error").fit(TIMES)
    basis.transform(torch.tensor([0.0, 5.0, 10.0]))
    with pytest.raises(DataError, match=r"2 of 4 times lie outside the fitted range \[0, 10\]"):
        basis.transform(torch.tensor([-1.0, 5.0, 10.5, 3.0]))


def test_error_policy_accepts_float32_copy_of_fitted_times():
    times = np.array([0.1, 0.7, 1.3])
    basis = Polynomial(2, extrapolation="error").fit(times)
    assert basis.transform(torch.tensor(times, dtype=torch.float32)).shape == (3, 2)


@pytest.mark.parametrize("cls", [Polynomial, NaturalSpline])
def test_clip_policy_equals_value_at_boundary(cls):
    basis = cls(extrapolation="clip").fit(TIMES)
    out = basis.transform(torch.tensor([-5.0, 0.0, 10.0, 25.0], dtype=torch.float64))
    assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3])


def test_extend_policy_continues_polynomial():
    basis = Polynomial(2).fit(TIMES)
    z = (20.0 - TIMES.mean()) / TIMES.std()
    np.testing.assert_allclose(basis.transform(torch.tensor([20.0])).numpy(), [[z, z**2]])


def test_bad_policy_is_config_error():
    with pytest.raises(ConfigError, match="extrapolation"):
        Polynomial(extrapolation="wrap")


# ---------------------------------------------------------------- Fourier
def test_fourier_columns_and_periodicity():
    basis = Fourier(7.0, harmonics=2)
    t = torch.tensor([0.3, 1.7, 5.0], dtype=torch.float64)
    out = basis.transform(t)
    w = 2 * math.pi / 7.0
    expected = torch.stack([(w * t).sin(), (w * t).cos(), (2 * w * t).sin(), (2 * w * t).cos()], -1)
    assert torch.allclose(out, expected, rtol=0, atol=1e-14)
    assert torch.allclose(basis.transform(t + 7.0 * 3), out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("args", [(0,), (-3,), (float("nan"),), (7, 0), (7, 1.5)])
def test_fourier_rejects_bad_arguments(args):
    with pytest.raises(ConfigError):
        Fourier(*args)


# --------------------------------------------------------------- combined
def test_combined_concatenates_in_order():
    poly, spline, fourier = Polynomial(2), NaturalSpline(3), Fourier(7)
    combined = poly + spline + fourier
    assert isinstance(combined, CombinedBasis) and combined.bases == [poly, spline, fourier]
    assert combined.num_features == 7
    combined.fit(TIMES)
    t = torch.tensor([0.5, 4.0, 9.5], dtype=torch.float64)
    expected = torch.cat([poly.transform(t), spline.transform(t), fourier.transform(t)], -1)
    assert torch.equal(combined.transform(t), expected)


def test_combined_rejects_non_bases():
    with pytest.raises(ConfigError, match="TimeBasis"):
        CombinedBasis([Polynomial(), "poly(2)"])
    with pytest.raises(ConfigError, match="at least one"):
        CombinedBasis([])


# ------------------------------------------------------ specs and parsing
@pytest.mark.parametrize("basis", _bases() + [Polynomial(2)], ids=repr)
def test_spec_round_trip_gives_identical_transform(basis):
    t = torch.linspace(-3, 13, 17, dtype=torch.float64)
    unfitted = basis_from_spec(json.loads(json.dumps(basis.to_spec())))
    assert unfitted == basis
    basis.fit(TIMES + np.sin(TIMES))
    rebuilt = basis_from_spec(json.loads(json.dumps(basis.to_spec())))
    assert rebuilt == basis and rebuilt.is_fitted and repr(rebuilt) == repr(basis)
    assert torch.equal(rebuilt.transform(t), basis.transform(t))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("poly(2)", Polynomial(2)),
        ("poly", Polynomial(2)),
        ("spline(4)", NaturalSpline(4)),
        ("Spline", NaturalSpline(4)),
        ("fourier(7)", Fourier(7)),
        ("fourier(365.25, 3)", Fourier(365.25, 3)),
        ("spline(4) + fourier(7)", NaturalSpline(4) + Fourier(7)),
        ("poly(1)+spline(3)+fourier(7,2)", Polynomial(1) + NaturalSpline(3) + Fourier(7, 2)),
    ],
)
def test_parse_basis_strings(text, expected):
    assert parse_basis(text) == expected


def test_parse_basis_passes_instances_and_dicts():
    basis = Polynomial(4)
    assert parse_basis(basis) is basis
    assert parse_basis(basis.to_spec()) == basis
    assert isinstance(parse_basis({"name": "fourier", "period": 2.0, "harmonics": 1}), TimeBasis)


@pytest.mark.parametrize(
    "spec",
    ["bspline(4)", "poly(2.5)", "spline()", "fourier", "fourier(7,2,1)", "spline(4)+", "", 3],
)
def test_parse_basis_errors_list_accepted_forms(spec):
    with pytest.raises(ConfigError) as info:
        parse_basis(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "'spline(df)'" in message and "'fourier(period, harmonics)'" in message


@pytest.mark.parametrize(
    "spec",
    [{"name": "wavelet"}, {"name": "poly", "degree": 2, "colour": 1}, {"name": "combined"}],
)
def test_bad_spec_dict_is_config_error(spec):
    with pytest.raises(ConfigError, match="invalid time basis spec"):
        basis_from_spec(spec)


def test_bad_degree_and_df():
    with pytest.raises(ConfigError, match="degree"):
        Polynomial(0)
    with pytest.raises(ConfigError, match="df"):
        NaturalSpline(2.5)
