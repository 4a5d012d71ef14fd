"""Tests of pyro_dgmm.families: likelihoods, links, support checks, specs."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_dgmm.errors import ConfigError, DataError
from pyro_dgmm.families import (
    Bernoulli,
    BoundedContinuous,
    Family,
    Gaussian,
    Poisson,
    family_from_spec,
    get_family,
)

torch.set_num_threads(1)

ETA = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], dtype=torch.float64)
ALL = [Gaussian(), Bernoulli(), Poisson(), BoundedContinuous(1, 7)]
DISPERSION = {"gaussian": 0.8, "bernoulli": None, "poisson": None, "bounded": 6.0}


def _dispersion(family, dtype=torch.float64):
    value = DISPERSION[family.name]
    return None if value is None else torch.tensor(value, dtype=dtype)


# --------------------------------------------------------------- log_prob
def test_gaussian_log_prob_matches_scipy():
    y = torch.tensor([-2.0, 0.1, 0.0, 1.3, 5.0], dtype=torch.float64)
    got = Gaussian().distribution(ETA, torch.tensor(0.8, dtype=torch.float64)).log_prob(y)
    expected = stats.norm.logpdf(y.numpy(), loc=ETA.numpy(), scale=0.8)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_bernoulli_log_prob_matches_scipy():
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    got = Bernoulli().distribution(ETA, None).log_prob(y)
    p = 1 / (1 + np.exp(-ETA.numpy()))
    np.testing.assert_allclose(got.numpy(), stats.bernoulli.logpmf(y.numpy(), p), rtol=1e-10)


def test_poisson_log_prob_matches_scipy():
    y = torch.tensor([0.0, 3.0, 1.0, 2.0, 11.0], dtype=torch.float64)
    got = Poisson().distribution(ETA, None).log_prob(y)
    expected = stats.poisson.logpmf(y.numpy(), np.exp(ETA.numpy()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_bounded_log_prob_is_squeezed_beta_with_jacobian():
    low, high, eps, phi = 1.0, 7.0, 0.005, 6.0
    y = torch.tensor([1.0, 2.5, 4.0, 6.9, 7.0], dtype=torch.float64)
    got = BoundedContinuous(low, high).distribution(ETA, torch.tensor(phi, dtype=torch.float64))
    mu = 1 / (1 + np.exp(-ETA.numpy()))
    u = eps + (1 - 2 * eps) * (y.numpy() - low) / (high - low)
    expected = stats.beta.logpdf(u, mu * phi, (1 - mu) * phi) + math.log(
        (1 - 2 * eps) / (high - low)
    )
    np.testing.assert_allclose(got.log_prob(y).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounded_log_prob_finite_exactly_at_bounds(dtype):
    family = BoundedContinuous(1, 7)
    eta = torch.tensor([-3.0, 0.0, 3.0], dtype=dtype)
    d = family.distribution(eta, torch.tensor(2.0, dtype=dtype))
    for bound in (1.0, 7.0):
        assert torch.isfinite(d.log_prob(torch.full((3,), bound, dtype=dtype))).all()


# ------------------------------------------------------------------ links
@pytest.mark.parametrize(
    "family, means",
    [
        (Gaussian(), [-3.0, 0.0, 2.5]),
        (Bernoulli(), [0.01, 0.5, 0.93]),
        (Poisson(), [0.05, 1.0, 40.0]),
        (BoundedContinuous(1, 7), [1.0, 2.2, 7.0]),
    ],
)
def test_inverse_link_inverts_link(family, means):
    means = torch.tensor(means, dtype=torch.float64)
    np.testing.assert_allclose(family.inverse_link(family.link(means)), means, rtol=1e-12)


@pytest.mark.parametrize("family", ALL, ids=lambda f: f.name)
def test_sample_mean_matches_inverse_link(family):
    torch.manual_seed(0)
    eta = torch.tensor([-0.8, 0.3, 1.2], dtype=torch.float64)
    d = family.distribution(eta, _dispersion(family))
    draws = d.sample((200_000,))
    assert draws.shape == (200_000, 3)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - family.inverse_link(eta)).abs() < 4 * se).all()


@pytest.mark.parametrize("family", ALL, ids=lambda f: f.name)
def test_batch_shape_and_mask(family):
    eta = torch.zeros(2, 3)
    d = family.distribution(eta, _dispersion(family, torch.float32))
    assert d.batch_shape == (2, 3) and d.event_shape == ()
    y = torch.full((2, 3), 1.0)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    masked = d.mask(mask).log_prob(y)
    assert (masked[~mask] == 0).all()
    assert torch.equal(masked[mask], d.log_prob(y)[mask])


def test_dispersion_broadcasts_and_is_checked():
    eta = torch.zeros(4, 2)
    d = Gaussian().distribution(eta, torch.tensor([0.5, 2.0]))
    assert d.batch_shape == (4, 2)
    with pytest.raises(ValueError, match="sigma"):
        Gaussian().distribution(eta, None)
    with pytest.raises(ValueError, match="no dispersion"):
        Poisson().distribution(eta, torch.tensor(1.0))


def test_poisson_clamps_eta():
    rate = Poisson().inverse_link(torch.tensor([100.0, -100.0]))
    assert torch.isfinite(rate).all() and (rate > 0).all()


def test_bounded_constrain_clamps_to_bounds():
    draws = torch.tensor([0.98, 1.0, 3.0, 7.0, 7.02])
    expected = torch.tensor([1.0, 1.0, 3.0, 7.0, 7.0])
    assert torch.equal(BoundedContinuous(1, 7).constrain(draws), expected)
    assert torch.equal(Gaussian().constrain(draws), draws)


# ------------------------------------------------------------------ data
@pytest.mark.parametrize(
    "family, values, expected",
    [
        (Gaussian(), [np.nan, -3.0, 0.5, np.inf], [False, False, False, True]),
        (Bernoulli(), [np.nan, 0.0, 1.0, 0.5], [False, False, False, True]),
        (Poisson(), [np.nan, 0.0, 3.0, -1.0, 2.5], [False, False, False, True, True]),
        (
            BoundedContinuous(1, 7),
            [np.nan, 1.0, 4.3, 7.0, 0.9, 7.1],
            [False, False, False, False, True, True],
        ),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_invalid_flags_exactly_out_of_support(family, values, expected):
    np.testing.assert_array_equal(family.invalid(np.array(values)), expected)


def test_support_descriptions():
    assert Bernoulli().support_description == "values must be 0 or 1"
    assert Poisson().support_description == "values must be non-negative integers"
    assert BoundedContinuous(1, 7).support_description == "values must lie in [1, 7]"


@pytest.mark.parametrize(
    "family, values, expected",
    [
        (Gaussian(), [-2.0, 0.0, 3.5], [-2.0, 0.0, 3.5]),
        (Bernoulli(), [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]),
        (Poisson(), [0.0, 3.0, 1e6], np.log1p([0.0, 3.0, 1e6])),
        (BoundedContinuous(1, 7), [1.0, 4.0, 7.0], [0.0, 0.5, 1.0]),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_encode(family, values, expected):
    got = family.encode(torch.tensor(values, dtype=torch.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ------------------------------------------------------- starting values
def test_initial_values_gaussian():
    values = np.array([1.0, 3.0, np.nan, 5.0])
    family = Gaussian()
    assert family.initial_offset(values) == pytest.approx(3.0)
    assert family.initial_scale(values) == pytest.approx(np.std([1, 3, 5]))
    assert family.initial_dispersion(values) == pytest.approx(0.5 * np.std([1, 3, 5]))
    assert family.initial_scale(np.array([2.0, 2.0])) == 1.0


def test_initial_values_are_finite_at_degenerate_data():
    assert Bernoulli().initial_offset(np.zeros(5)) == pytest.approx(math.log(0.01 / 0.99))
    assert Bernoulli().initial_offset(np.array([0, 1, 1, 1.0])) == pytest.approx(math.log(3))
    assert Poisson().initial_offset(np.zeros(5)) == pytest.approx(math.log(0.01))
    assert Poisson().initial_offset(np.array([2.0, 4.0])) == pytest.approx(math.log(3))
    bounded = BoundedContinuous(1, 7)
    assert bounded.initial_offset(np.full(4, 7.0)) == pytest.approx(math.log(0.99 / 0.01))
    assert bounded.initial_offset(np.array([2.0, 6.0])) == pytest.approx(0.0, abs=1e-12)
    assert [f.initial_scale(np.array([0.0, 1.0])) for f in ALL[1:]] == [1.0, 1.0, 1.0]
    assert Poisson().initial_dispersion(np.array([1.0])) is None
    with pytest.raises(DataError, match="missing"):
        Gaussian().initial_offset(np.array([np.nan]))


def test_bounded_initial_precision_is_method_of_moments():
    rng = np.random.default_rng(0)
    u = rng.beta(0.3 * 20, 0.7 * 20, size=20_000)
    family = BoundedContinuous(0, 1, squeeze=0.001)
    assert family.initial_dispersion(u) == pytest.approx(20, rel=0.05)
    assert family.initial_dispersion(np.array([0.5, 0.5])) == 100.0
    assert family.initial_dispersion(np.array([0.0, 1.0])) == 1.0


# ---------------------------------------------------------- specs/parsing
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("gaussian", Gaussian()),
        ("Normal", Gaussian()),
        ("bernoulli", Bernoulli()),
        (" binary ", Bernoulli()),
        ("poisson", Poisson()),
        ("bounded(1,7)", BoundedContinuous(1, 7)),
        ("bounded( 0 , 1 )", BoundedContinuous(0, 1)),
        ("bounded(-2.5, 1e1)", BoundedContinuous(-2.5, 10)),
    ],
)
def test_get_family_parses_strings(spec, expected):
    assert get_family(spec) == expected


def test_get_family_returns_instance_as_is():
    family = BoundedContinuous(1, 5)
    assert get_family(family) is family


@pytest.mark.parametrize("spec", ["gamma", "bounded(1)", "bounded(a,b)", 3, {"name": "gamma"}])
def test_get_family_unknown_lists_valid_names(spec):
    with pytest.raises(ConfigError) as info:
        get_family(spec)
    message = str(info.value)
    assert repr(spec) in message
    for name in ("gaussian", "bernoulli", "poisson", "bounded(low, high)"):
        assert name in message


@pytest.mark.parametrize("args", [(7, 1), (1, 1), (0, float("inf"))])
def test_bounded_rejects_bad_bounds(args):
    with pytest.raises(ConfigError, match="low < high"):
        BoundedContinuous(*args)


def test_bounded_rejects_bad_squeeze():
    with pytest.raises(ConfigError, match="squeeze"):
        BoundedContinuous(1, 7, squeeze=0.0)


@pytest.mark.parametrize("family", ALL + [BoundedContinuous(-1, 1, squeeze=0.01)], ids=repr)
def test_spec_round_trip(family):
    spec = json.loads(json.dumps(family.to_spec()))
    rebuilt = family_from_spec(spec)
    assert isinstance(rebuilt, Family) and type(rebuilt) is type(family)
    assert rebuilt == family and hash(rebuilt) == hash(family)
    assert rebuilt.to_spec() == family.to_spec()
    assert repr(rebuilt) == repr(family)


def test_spec_with_bad_parameter_is_config_error():
    with pytest.raises(ConfigError, match="width"):
        family_from_spec({"name": "bounded", "low": 1, "high": 7, "width": 2})
    with pytest.raises(ConfigError, match="gaussian"):
        family_from_spec({"name": "gaussian", "sigma": 1.0})


def test_equality_and_repr():
    assert Gaussian() != Bernoulli()
    assert BoundedContinuous(1, 7) != BoundedContinuous(1, 5)
    assert repr(BoundedContinuous(1, 7)) == "BoundedContinuous(low=1.0, high=7.0, squeeze=0.005)"
    assert repr(Poisson()) == "Poisson()"


# ------------------------------------------------------- registered families
class Laplace(Gaussian):
    """A family of the user's own: Laplace errors, identity link, scale b."""

    name = "laplace"
    dispersion_name = "b"

    def distribution(self, eta, dispersion):
        import pyro.distributions as dist

        return dist.Laplace(eta, self._dispersion_for(eta, dispersion))


class Truncated(Poisson):
    """A registered family with a constructor argument (kept in its spec)."""

    name = "capped_poisson"

    def __init__(self, cap: int = 10):
        self.cap = cap

    def to_spec(self):
        return {"name": self.name, "cap": self.cap}


def test_registered_family_fits_saves_and_reloads(tmp_path):
    from pyro_dgmm import DeepMixedModel, register_family

    from common import tiny_frame

    register_family("laplace", Laplace)
    register_family("capped_poisson", Truncated)
    assert isinstance(get_family("Laplace"), Laplace)
    assert get_family({"name": "capped_poisson", "cap": 3}).cap == 3
    frame = tiny_frame(n_subjects=20)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "laplace", "count": Truncated(cap=5)})
    est.fit(frame, max_epochs=2, progress=False)
    assert est.model_.observation_distributions(torch.zeros(20, est.latent_dim_), est.data_)["g"].__class__.__name__ \
        == "Laplace"
    est.save(tmp_path / "model.pt")
    loaded = DeepMixedModel.load(tmp_path / "model.pt")
    assert isinstance(loaded.schema_.families["g"], Laplace)
    assert loaded.schema_.families["count"].cap == 5
    a, b = (m.fitted_values(frame, num_samples=10, seed=3) for m in (est, loaded))
    np.testing.assert_allclose(a["g_fitted"], b["g_fitted"], rtol=1e-6)


def test_register_family_refuses_bad_names_and_factories():
    from pyro_dgmm import register_family

    with pytest.raises(ConfigError, match="built-in family"):
        register_family("gaussian", Laplace)
    with pytest.raises(ConfigError, match="lower-case identifier"):
        register_family("My Family", Laplace)
    with pytest.raises(ConfigError, match="callable"):
        register_family("laplace2", "Laplace")
    register_family("not_a_family", lambda: "oops")
    with pytest.raises(ConfigError, match="returned 'oops', not a Family"):
        get_family("not_a_family")


# ------------------------------------------------------------ Student-t
def test_student_t_log_prob_matches_torch_and_scipy():
    from pyro_dgmm.families import StudentT

    y = torch.tensor([-3.0, -0.4, 0.1, 1.9, 12.0], dtype=torch.float64)
    df = torch.tensor(3.7, dtype=torch.float64)
    got = StudentT().distribution(ETA, 0.8, df=df).log_prob(y)
    torch.testing.assert_close(got, torch.distributions.StudentT(df, ETA, 0.8).log_prob(y))
    np.testing.assert_allclose(got.numpy(), stats.t.logpdf(y.numpy(), 3.7, loc=ETA.numpy(), scale=0.8), rtol=1e-10)
    fixed = StudentT(df=4).distribution(ETA, 0.8)  # a fixed df needs no df argument
    np.testing.assert_allclose(fixed.log_prob(y).numpy(), stats.t.logpdf(y.numpy(), 4, loc=ETA.numpy(), scale=0.8))
    with pytest.raises(ValueError, match="pass df exactly"):
        StudentT().distribution(ETA, 0.8)
    with pytest.raises(ValueError, match="pass df exactly"):
        StudentT(df=4).distribution(ETA, 0.8, df=df)


def test_student_t_df_constraint_is_softplus_above_two():
    from torch.distributions import biject_to

    from pyro_dgmm.families import StudentT

    family = StudentT()
    assert family.shape_names == ("df",) and StudentT(4).shape_names == ()
    assert family.initial_shape() == {"df": StudentT.initial_df}
    transform = biject_to(family.shape_constraint("df"))
    u = torch.tensor([-50.0, 0.0, 3.0, 100.0], dtype=torch.float64)
    torch.testing.assert_close(transform(u), 2 + torch.nn.functional.softplus(u))
    torch.testing.assert_close(transform.inv(transform(u[1:])), u[1:])
    assert (transform(u) >= 2).all() and family.shape_constraint("df").check(torch.tensor(2.5))
    with pytest.raises(KeyError):
        StudentT(4).shape_constraint("df")


@pytest.mark.parametrize("spec, expected", [
    ("student_t", {"name": "student_t"}), ("t", {"name": "student_t"}), (" Student_T ", {"name": "student_t"}),
    ("student_t(4)", {"name": "student_t", "df": 4.0}), ("t(2.5)", {"name": "student_t", "df": 2.5}),
])
def test_student_t_specs_round_trip(spec, expected):
    family = get_family(spec)
    assert family.to_spec() == expected
    assert get_family(json.loads(json.dumps(family.to_spec()))) == family


def test_student_t_rejects_bad_df():
    from pyro_dgmm.families import StudentT

    with pytest.raises(ConfigError, match="df > 0"):
        StudentT(df=0)
    with pytest.raises(ConfigError, match="valid families are"):
        get_family("student(3)")
