"""Likelihood-based inference: Pareto k (pyro_dgmm.diagnostics), the marginal
likelihood (marginal), standard errors, ML refinement and bands (wald), the
linear special case's tables (linear_tables) and model comparison
(comparison), against closed forms for the linear mixed model and
against statsmodels MixedLM."""
import copy
import math
import types
import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

from pyro_dgmm import ConfigError, DeepMixedModel
from pyro_dgmm import comparison, diagnostics, linear_tables, marginal, parameters, results, wald
from pyro_dgmm.datasets import simulate_linear

from common import mixedlm_reference

ALL_LINEAR = parameters.LINEAR_FIXED_EFFECTS + (parameters.LINEAR_RANDOM_EFFECTS,)


def linear_dgmm(**kwargs):
    return DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                          time_basis="poly(1)", latent_dim=kwargs.pop("latent_dim", 2),
                          model_options=dict(fixed_hidden=(), random_hidden=()), validation_fraction=0.0, **kwargs)


def mixedlm(df):
    """MixedLM (ML) with random intercept and slope; design [1, t, age, treated]."""
    return mixedlm_reference(df)[2]


# The fixture's encoder is deliberately rough: at 100-400 draws a subject or two of 60 may have
# heavy-tailed weights (k-hat > 0.7, warned about); these tests check the total and its MC SD.
ROUGH_PROPOSAL = pytest.mark.filterwarnings("ignore:.*Pareto k-hat:pyro_dgmm.diagnostics.InferenceWarning")


@pytest.fixture(scope="module")
def lmm():
    """A briefly fitted linear DGMM (a rough encoder) on 60 subjects x 6 visits, and MixedLM."""
    sim = simulate_linear(n_subjects=60, n_visits=6, seed=1)
    est = linear_dgmm().fit(sim.data, progress=False, seed=0, max_epochs=40, batch_size=16, refine=False,
                            kl_warmup_epochs=20, linear_warmup_epochs=10, elbo="meanfield")
    return types.SimpleNamespace(sim=sim, est=est, ref=mixedlm(sim.data))


def exact_log_likelihood(model, data):
    """Closed-form LMM log p(y_i) per subject: y_i ~ N(eta_i(0), J_i J_i' + s^2 I), J_i = d eta_i / d b."""
    assert bool(data.mask.all())
    n, q = data.num_subjects, model.latent_dim
    eye = torch.eye(q, dtype=data.y.dtype)
    eta0 = model.eta(torch.zeros(n, q, dtype=data.y.dtype), data)[..., 0]
    jac = torch.stack([model.eta(eye[j].expand(n, q), data)[..., 0] - eta0 for j in range(q)], -1)
    cov = jac @ jac.transpose(-1, -2) + model.dispersion("y") ** 2 * torch.eye(data.num_visits, dtype=data.y.dtype)
    return dist.MultivariateNormal(eta0, cov).log_prob(data.y[..., 0])


def exact_hessian(model, data, names):
    """Hessian of the closed-form total log-likelihood over the model parameters ``names``."""
    bound = parameters.float64_copy(model, "cpu")
    layout = parameters.Layout(bound.model, names)
    data64 = data.to(dtype=torch.float64)

    def total(theta):
        return torch.func.functional_call(bound, layout.unflatten(theta), (exact_log_likelihood, data64)).sum()

    return torch.autograd.functional.hessian(total, layout.values(bound.model))


def mixedlm_sigma_se(df, ref):
    """SE of the residual SD at MixedLM's ML estimates from the full observed information
    of the closed-form likelihood in (beta, chol(D), log sigma) (MixedLM reports no SE for it)."""
    n = df.id.nunique()
    y = torch.tensor(df.y.to_numpy()).reshape(n, -1)
    X = torch.tensor(np.column_stack([np.ones(len(df)), df.time, df.age, df.group == "treated"]), dtype=torch.float64)
    X, t = X.reshape(n, -1, 4), torch.tensor(df.time.to_numpy()).reshape(n, -1)
    Z = torch.stack([torch.ones_like(t), t], -1)
    chol = np.linalg.cholesky(np.asarray(ref.cov_re))
    theta = torch.tensor(np.r_[ref.fe_params, chol[0, 0], chol[1, 0], chol[1, 1], 0.5 * np.log(ref.scale)])

    def loglik(th):
        L = torch.stack([torch.stack([th[4], th[4] * 0]), torch.stack([th[5], th[6]])])
        cov = Z @ (L @ L.T) @ Z.transpose(-1, -2) + torch.exp(2 * th[7]) * torch.eye(y.shape[1], dtype=y.dtype)
        return dist.MultivariateNormal(X @ th[:4], cov).log_prob(y).sum()

    information = -torch.autograd.functional.hessian(loglik, theta)
    return float(np.sqrt(ref.scale) * torch.linalg.inv(information)[7, 7].sqrt())


class NarrowGuide:
    """A deliberately poor proposal: the right centre, a tenth of the posterior's spread."""

    def __init__(self, guide):
        self.guide = guide

    def posterior(self, data):
        q = self.guide.posterior(data)
        return dist.MultivariateNormal(q.loc, scale_tril=0.1 * q.scale_tril)


# ------------------------------------------------------------ Pareto k-hat


@pytest.mark.parametrize("shape", [0.0, 0.5, 0.9])
def test_pareto_k_recovers_the_tail_shape_of_generalized_pareto_weights(shape):
    """40 columns of 4000 GPD(k) weights: mean k-hat within 0.05 of k
    (its SD per column is about 0.1)."""
    u = torch.rand(4000, 40, dtype=torch.float64)
    weights = -torch.log(u) if shape == 0 else (u ** -shape - 1) / shape
    assert abs(diagnostics.pareto_k(weights.log()).mean().item() - shape) < 0.05


def test_narrow_proposal_gives_large_k_hat_and_a_warning(lmm):
    est = lmm.est
    with pytest.warns(diagnostics.InferenceWarning, match="Pareto k-hat"):
        result = marginal.marginal_log_likelihood(est.model_, NarrowGuide(est.guide_), est.data_, 400, adapt=False,
                                                  closed_form=False)
    assert result.unreliable.float().mean() > 0.5


# ------------------------------------------------------ marginal likelihood


@ROUGH_PROPOSAL
@pytest.mark.parametrize("adapt", [False, True])
def test_marginal_log_likelihood_matches_the_closed_form_within_its_reported_mc_sd(lmm, adapt):
    """At the (rough) fitted parameters, with the encoder as proposal: the
    total is within 4 reported MC SDs of the exact log p(y), and per subject
    the reported SDs are honest to a factor 2 (RMS of the standardised
    errors between 0.5 and 2; measured 1.0-1.4; the errors are skewed: a few
    reach -6 SDs).  With the adapted proposal, the Laplace approximation is
    this Gaussian posterior and is kept (moment matching cannot raise its
    ESS): every weight is equal and the estimate exact to rounding
    (measured 4e-15), with a reported MC SD at rounding level too."""
    est = lmm.est
    result = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 400, adapt=adapt, closed_form=False)
    with torch.no_grad():
        exact = exact_log_likelihood(parameters.float64_copy(est.model_, "cpu").model, est.data_.to(dtype=torch.float64))
    if adapt:
        assert (result.per_subject - exact).abs().max() < 1e-9 and result.mc_sd.max() < 1e-9
        assert bool(torch.isneginf(result.pareto_k).all())  # equal weights: no tail
    else:
        z = (result.per_subject - exact) / result.mc_sd
        assert 0.5 < z.pow(2).mean().sqrt() < 2 and z.abs().max() < 8
        assert abs(result.total - exact.sum().item()) < 4 * result.total_mc_sd
    frame = result.to_frame()
    assert list(frame.columns) == ["id", "log_likelihood", "mc_sd", "ess", "pareto_k"]
    assert len(frame) == est.data_.num_subjects


@ROUGH_PROPOSAL
def test_mc_sd_shrinks_like_one_over_root_num_samples(lmm):
    est = lmm.est
    small = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 100, adapt=False, closed_form=False)
    large = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 1600, adapt=False, closed_form=False)
    assert 2.5 < small.total_mc_sd / large.total_mc_sd < 6  # sqrt(16) = 4


@ROUGH_PROPOSAL
def test_adapting_the_proposal_reduces_the_mc_sd(lmm):
    est = lmm.est
    plain = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 400, adapt=False, closed_form=False)
    adapted = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 400, adapt=True, closed_form=False)
    assert adapted.total_mc_sd < plain.total_mc_sd / 3
    assert adapted.ess.min() > 0.5 * 400


# ---------------------------------------------------------- standard errors


def test_autograd_hessian_equals_central_differences(lmm):
    """With common random numbers the estimate is smooth: central differences
    of it reproduce its exact (autograd) Hessian."""
    est = lmm.est
    kwargs = dict(parameters=parameters.LINEAR_FIXED_EFFECTS, num_samples=200, closed_form=False)
    auto = wald.standard_errors(est.model_, est.guide_, est.data_, **kwargs)
    central = wald.standard_errors(est.model_, est.guide_, est.data_, method="central", **kwargs)
    scale = auto.hessian.abs().max()
    assert torch.allclose(auto.hessian, central.hessian, atol=1e-5 * scale, rtol=0)


def test_standard_errors_match_the_exact_information(lmm):
    """SEs of sigma and the fixed effects (estimable combinations) from the
    Monte Carlo Hessian are within 3% of those from the closed-form Hessian
    at the same parameters (the parameters of a rough fit: not a maximum,
    so this checks the Hessian, not Wald theory)."""
    est = lmm.est
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS, num_samples=400,
                                  closed_form=False)
    exact = copy.copy(errors)
    exact.covariance, exact.null_space = wald.pseudo_inverse(
        -exact_hessian(est.model_, est.data_, errors.parameter_names), errors.labels)
    ours = linear_tables.linear_coefficients(est.model_, est.schema_, errors)
    theirs = linear_tables.linear_coefficients(est.model_, est.schema_, exact)
    assert np.allclose(ours.se, theirs.se, rtol=0.03)
    assert errors.covariance[0, 0].sqrt() == pytest.approx(exact.covariance[0, 0].sqrt().item(), rel=0.03)


def test_closed_form_is_the_exact_likelihood_and_information(lmm):
    """A linear mixed model is integrated exactly (``closed_form``, the
    default): per-subject log p(y_i) and the Hessian over the fixed effects,
    the random-effects map and sigma equal the closed-form multivariate
    normal's (the test's own formula) to rounding, at parameters that are
    not a maximum; no Monte Carlo error, no tail."""
    est = lmm.est
    result = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 100)
    with torch.no_grad():
        exact = exact_log_likelihood(parameters.float64_copy(est.model_, "cpu").model, est.data_.to(dtype=torch.float64))
    assert result.exact and (result.per_subject - exact).abs().max() < 1e-9
    assert float(result.mc_sd.max()) == 0 and bool(torch.isneginf(result.pareto_k).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", diagnostics.InferenceWarning)  # not at a maximum: indefinite in A
        errors = wald.standard_errors(est.model_, est.guide_, est.data_, ALL_LINEAR, num_samples=100)
    reference = exact_hessian(est.model_, est.data_, errors.parameter_names)
    assert torch.allclose(errors.hessian, reference, rtol=1e-8, atol=1e-8 * float(reference.abs().max()))


def test_closed_form_is_used_only_where_the_log_joint_is_quadratic_in_b(lmm):
    """Networks with a nonlinearity in b, or a Bernoulli outcome, are not
    integrated in closed form (the expansion at two points disagrees)."""
    from pyro_dgmm.data import DataSchema
    from pyro_dgmm.guide import AmortizedGuide
    from pyro_dgmm.model import DGMM

    df = lmm.sim.data.assign(flag=(lmm.sim.data.y > lmm.sim.data.y.median()).astype(float))
    assert marginal.closed_form_applies(lmm.est.model_, lmm.est.guide_, lmm.est.data_)
    for outcomes, options in (({"y": "gaussian"}, {}), ({"flag": "bernoulli"}, dict(fixed_hidden=(), random_hidden=()))):
        schema = DataSchema.fit(df, id_col="id", time_col="time", outcomes=outcomes, time_basis="poly(1)")
        model = DGMM.from_schema(schema, latent_dim=2, **options)
        torch.manual_seed(0)
        with torch.no_grad():  # away from the initial zero last layers, which make eta constant in b
            for p in model.parameters():
                p.normal_(0, 0.5)
        guide = AmortizedGuide.from_schema(schema, latent_dim=2)
        assert not marginal.closed_form_applies(model, guide, schema.transform(df))


def test_the_closed_form_check_answers_for_what_the_moves_move(lmm):
    """``closed_form_applies`` asked for the linear parameters must give the
    answer of the objective that the refinement and the standard errors
    build for them, whose moves include the dispersions.  Swept across a
    nonlinearity in b from negligible to plain (the dense net's last layer
    at eps), both answers change together; checking the linear parameters
    alone once passed where the refinement's objective failed, and a
    default fit then importance-sampled for minutes instead of seconds."""
    from pyro_dgmm.data import DataSchema
    from pyro_dgmm.guide import AmortizedGuide
    from pyro_dgmm.model import DGMM
    from pyro_dgmm.parameters import LINEAR_PARAMETERS, present, select_parameters

    df = lmm.sim.data
    schema = DataSchema.fit(df, id_col="id", time_col="time", outcomes={"y": "gaussian"}, time_basis="poly(1)")
    model, data = DGMM.from_schema(schema, latent_dim=2, random_hidden=(8,)), schema.transform(df)
    guide = AmortizedGuide.from_schema(schema, latent_dim=2)
    linear = present(model, LINEAR_PARAMETERS)
    last = model.random_effects.joint[-1].weight
    answers = []
    for eps in np.logspace(-10, -2, 49):
        with torch.no_grad():
            last.fill_(float(eps))
        moved = marginal.MarginalObjective(model, guide, data, select_parameters(model, linear, True), 500, None, 0,
                                           False)
        answers.append((marginal.closed_form_applies(model, guide, data, linear), moved.exact))
    assert all(check == exact for check, exact in answers), answers
    assert {exact for _, exact in answers} == {True, False}  # the sweep crosses the boundary


def statsmodels_names(df) -> list[str]:
    """The fixed-effect names statsmodels gives the design [1, t, age, group] (formula API, not fitted)."""
    import statsmodels.formula.api as smf

    return smf.mixedlm("y ~ time + age + group", df, groups=df["id"], re_formula="~time").exog_names


def test_treatment_contrasts_identify_every_fixed_effect(lmm):
    """The categorical covariate's reference level is dropped: the raw linear
    parameters have no flat direction, every one has a finite SE, and the
    data-scale coefficients carry statsmodels' names."""
    est = lmm.est
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS, num_samples=200)
    assert errors.null_space.shape[1] == 0
    table = errors.summary()
    assert len(table) == 5 and np.isfinite(table.se).all()  # intercept, time, age, group[T.treated], sigma
    coefficients = linear_tables.linear_coefficients(est.model_, est.schema_, errors)
    assert np.isfinite(coefficients.se).all()
    assert sorted(coefficients.loc["y"].index) == sorted(statsmodels_names(lmm.sim.data))


def test_dispersion_is_reported_on_its_natural_scale(lmm):
    """sigma = exp(u): SE = sigma se(u), interval exp(u -/+ z se(u))."""
    est = lmm.est
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, num_samples=200, level=0.9)
    u, se_u = errors.theta[0], errors.covariance[0, 0].sqrt()
    row = errors.summary().loc["sigma[y]"]
    z = 1.6448536269514722
    assert row.estimate == pytest.approx(est.model_.dispersion("y").item(), rel=1e-6)
    assert row.se == pytest.approx((u.exp() * se_u).item(), rel=1e-9)
    assert (row.lower, row.upper) == pytest.approx(((u - z * se_u).exp().item(), (u + z * se_u).exp().item()))
    assert row.z == pytest.approx(row.estimate / row.se)


def test_hessian_that_is_not_negative_definite_warns(lmm):
    """With the random-effects matrix A shrunk towards 0 the likelihood
    curves upwards in A (the data want more between-subject variance)."""
    est = lmm.est
    model = copy.deepcopy(est.model_)
    with torch.no_grad():
        model.random_effects.linear_coefficients.weight.mul_(0.05)
    with pytest.warns(diagnostics.InferenceWarning, match="not positive definite"):
        wald.standard_errors(model, est.guide_, est.data_, [parameters.LINEAR_RANDOM_EFFECTS], num_samples=200)


# ------------------------------------- maximum likelihood and MixedLM oracle


@pytest.fixture(scope="module")
def maximized(lmm):
    """The fitted model moved to the maximum of the estimated marginal likelihood."""
    est = copy.deepcopy(lmm.est)
    result = wald.maximize_marginal_likelihood(est.model_, est.guide_, est.data_, ALL_LINEAR, num_samples=400)
    return est, result


def test_maximized_log_likelihood_matches_mixedlm(lmm, maximized):
    """The maximised closed-form log-likelihood equals MixedLM's maximised
    llf to its optimiser's precision (1e-3 nats)."""
    est, result = maximized
    assert result.converged and result.log_likelihood_after > result.log_likelihood_before
    estimate = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 1000)
    assert estimate.exact and abs(estimate.total - lmm.ref.llf) < 1e-3


def test_maximized_coefficients_and_standard_errors_match_mixedlm(lmm, maximized):
    """Acceptance (small version): fixed effects within 0.2 of MixedLM's SE of
    its estimates, their SEs and the residual SD's within 10% (sigma's
    reference is the full observed information of the closed-form
    likelihood at MixedLM's estimates)."""
    est, _ = maximized
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS, num_samples=1000)
    table = linear_tables.linear_coefficients(est.model_, est.schema_, errors).loc["y"]
    assert list(table.index) == ["Intercept", "time", "age", "group[T.treated]"]  # statsmodels' names
    bse = np.asarray(lmm.ref.bse)[:4]
    assert np.all(np.abs(table.estimate - np.asarray(lmm.ref.fe_params)) < 0.2 * bse)
    assert np.allclose(table.se, bse, rtol=0.1)
    sigma = errors.summary().loc["sigma[y]"]
    assert sigma.estimate == pytest.approx(np.sqrt(lmm.ref.scale), rel=0.01)
    assert sigma.se == pytest.approx(mixedlm_sigma_se(lmm.sim.data, lmm.ref), rel=0.1)
    covariance = linear_tables.linear_random_effects_covariance(est.model_, est.schema_)
    assert np.allclose(covariance.to_numpy(), np.asarray(lmm.ref.cov_re), rtol=0.1, atol=0.01)


def test_summary_matches_mixedlm_to_three_significant_digits(lmm):
    """Issue 21's acceptance, small version: ``summary()`` of the linear
    special case fitted with ``refine=True`` gives MixedLM's coefficients
    (to 1e-3 of their SEs), its reported ``bse`` (the full observed
    information, cross terms with the random-effects map included: relative
    1e-3) and its log-likelihood (1e-3 nats)."""
    est = linear_dgmm().fit(lmm.sim.data, progress=False, seed=0, max_epochs=40, batch_size=16,
                            kl_warmup_epochs=20, linear_warmup_epochs=10, elbo="meanfield")
    assert est.result_.refinement["converged"]  # refine='auto': a linear mixed model is refined by default
    summary = est.summary()
    table = summary.fixed_effects.loc["y"]
    np.testing.assert_allclose(table["estimate"], np.asarray(lmm.ref.fe_params), atol=1e-3 * np.asarray(lmm.ref.bse_fe).min())
    np.testing.assert_allclose(table["se"], np.asarray(lmm.ref.bse_fe), rtol=1e-3)
    assert summary.info["Log-likelihood"] == f"{est.marginal_log_likelihood().total:.3f}"
    assert est.marginal_log_likelihood().total == pytest.approx(lmm.ref.llf, abs=1e-3)


def test_parameter_count_and_information_criteria_match_mixedlm(lmm, maximized):
    """Honest count: 4 fixed effects, 3 for D (4 entries of A less 1 rotation) and sigma = MixedLM's 8."""
    est, _ = maximized
    assert comparison.count_parameters(est.model_, est.data_) == 8
    criteria = comparison.information_criteria(est.model_, est.guide_, est.data_)
    assert criteria.num_parameters == 8 and criteria.num_observations == len(lmm.sim.data)
    assert criteria.aic == pytest.approx(lmm.ref.aic, abs=1.0)
    assert criteria.bic == pytest.approx(lmm.ref.bic, abs=1.0)


def test_population_curve_band_agrees_with_the_linear_coefficients(lmm, maximized):
    """At age 0 and the control group the typical curve is intercept + slope t;
    at t = 0 its delta-method SE is the intercept's SE."""
    est, _ = maximized
    errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS, num_samples=200)
    coef = linear_tables.linear_coefficients(est.model_, est.schema_, errors).loc["y"]
    grid = pd.DataFrame({"id": [0, 0, 1], "time": [0.0, 5.0, 5.0], "age": [0.0, 0.0, 1.0],
                         "group": ["control", "control", "treated"]})
    band = wald.population_curve(est.model_, est.schema_.transform(grid, require_observed=False), errors)
    intercept = coef.estimate["Intercept"]
    expected = [intercept, intercept + 5 * coef.estimate.time, coef.estimate.sum() + 4 * coef.estimate.time]
    assert np.allclose(band.y, expected, atol=1e-5)
    assert band.y_se[0] == pytest.approx(coef.se["Intercept"], rel=1e-4)
    assert np.allclose(band.y_upper - band.y, 1.959964 * band.y_se, rtol=1e-5)
    response = wald.population_curve(est.model_, est.schema_.transform(grid, require_observed=False), errors,
                                  scale="response")
    assert np.allclose(response[["y", "y_se", "y_lower"]], band[["y", "y_se", "y_lower"]])


# ----------------------------------------------------------- comparison


def test_likelihood_ratio_test():
    null = results.InformationCriteria(-1010.0, 0.3, 7, 500)
    alternative = results.InformationCriteria(-1000.0, 0.4, 8, 500)
    test = comparison.likelihood_ratio_test(null, alternative)
    assert (test.statistic, test.df) == (20.0, 1)
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(20.0 / 2)), rel=1e-9)  # chi2(1) tail
    assert test.mc_sd == pytest.approx(1.0)
    assert comparison.likelihood_ratio_test(alternative, results.InformationCriteria(-1001.0, 0.3, 9, 500)).p_value == 1.0
    with pytest.raises(ConfigError, match="more parameters"):
        comparison.likelihood_ratio_test(alternative, null)
    with pytest.raises(ConfigError, match="different data"):
        comparison.likelihood_ratio_test(null, results.InformationCriteria(-1000.0, 0.4, 8, 499))


# ------------------------------------------------------------ user errors


def test_user_errors_are_config_errors(lmm):
    est = lmm.est
    args = (est.model_, est.guide_, est.data_)
    with pytest.raises(ConfigError, match="did you mean 'fixed_effects.intercept'"):
        wald.standard_errors(*args, ["fixed_effects.intercep"])
    with pytest.raises(ConfigError, match="num_samples must be at least 50"):
        marginal.marginal_log_likelihood(*args, num_samples=20)
    with pytest.raises(ConfigError, match="method"):
        wald.standard_errors(*args, method="bfgs")
    with pytest.raises(ConfigError, match="no parameters"):
        wald.standard_errors(*args, include_dispersion=False)
    errors = wald.standard_errors(*args, num_samples=400)
    with pytest.raises(ConfigError, match="errors lacks"):
        linear_tables.linear_coefficients(est.model_, est.schema_, errors)
    deep = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, time_basis="spline(3)")
    deep.fit(lmm.sim.data, progress=False, max_epochs=1)
    with pytest.raises(ConfigError, match="fixed_hidden"):
        linear_tables.linear_coefficients(deep.model_, deep.schema_, errors)
    with pytest.raises(ConfigError, match="random_hidden"):
        linear_tables.linear_random_effects_covariance(deep.model_, deep.schema_)


# ------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_acceptance_against_mixedlm_on_300_subjects():
    """The issue's acceptance on the configuration of tests/test_fit.py (300
    subjects x 10 visits, 150 epochs of SVI): at the SVI estimates and after
    maximisation, the total marginal log-likelihood within 0.5% of MixedLM's
    and the SEs of the fixed effects and the residual SD within 10%
    (measured at the SVI estimates: 0.1% and 0.94-1.03; after maximisation:
    0.0002% and 1.00-1.01)."""
    sim = simulate_linear(n_subjects=300, n_visits=10, seed=3)
    ref = mixedlm(sim.data)
    est = linear_dgmm().fit(sim.data, progress=False, seed=0, max_epochs=150, batch_size=32)
    sigma_se = mixedlm_sigma_se(sim.data, ref)
    for polish in (False, True):
        if polish:
            wald.maximize_marginal_likelihood(est.model_, est.guide_, est.data_, ALL_LINEAR)
        errors = wald.standard_errors(est.model_, est.guide_, est.data_, parameters.LINEAR_FIXED_EFFECTS)
        assert abs(errors.marginal.total / ref.llf - 1) < 0.005
        table = linear_tables.linear_coefficients(est.model_, est.schema_, errors).loc["y"]
        assert np.allclose(table.se, np.asarray(ref.bse)[:4], rtol=0.1)
        assert errors.summary().loc["sigma[y]", "se"] == pytest.approx(sigma_se, rel=0.1)


@pytest.mark.slow
def test_refinement_lands_the_linear_special_case_on_the_mle_with_three_random_effects():
    """A linear mixed model with random intercept, slope and quadratic term
    (correlated) and a covariate-by-time term, fitted as the linear DGMM
    (``covariate_time=True``) with ``refine=True``: the
    refinement is part of ``fit``, and it reaches MixedLM's maximum: the
    log-likelihood within 0.5 nats (Monte Carlo error of the estimate is
    far smaller for a Gaussian posterior), the population mean curve within
    a quarter of the intercept's SE of MixedLM's fixed effects."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    n, j = 150, 8
    t = np.tile(np.linspace(0, 3, j), n) + rng.uniform(0, 0.1, n * j)
    ids = np.repeat(np.arange(n), j)
    z = rng.standard_normal(n)[ids]
    b = rng.multivariate_normal([0, 0, 0], [[1, 0.3, -0.1], [0.3, 0.4, -0.05], [-0.1, -0.05, 0.09]], n)[ids]
    y = (1 + 0.5 * z + 0.7 * t - 0.2 * t ** 2 + 0.3 * z * t + b[:, 0] + b[:, 1] * t + b[:, 2] * t ** 2
         + rng.normal(0, 0.5, n * j))
    df = pd.DataFrame({"id": ids, "time": t, "z": z, "y": y})
    X = np.column_stack([np.ones_like(t), t, t ** 2, z, z * t, z * t ** 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = MixedLM(y, X, groups=ids, exog_re=X[:, :3]).fit(reml=False)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["z"],
                         time_basis="poly(2)", latent_dim=3, validation_fraction=0.0,
                         model_options=dict(fixed_hidden=(), random_hidden=(), covariate_time=True))
    est.fit(df, progress=False, seed=0, refine=True)
    refinement = est.result_.refinement
    assert refinement["converged"]
    assert refinement["log_likelihood_after"] == pytest.approx(ref.llf, abs=0.5)
    assert refinement["log_likelihood_after"] > refinement["log_likelihood_before"]
    population = est.population_mean([0.0, 1.5, 3.0], df)["y"].to_numpy()
    # E[y(t)] averaged over the subjects' z (z enters linearly): MixedLM's fixed effects at the mean z
    times, beta, z_mean = np.array([0, 1.5, 3]), np.asarray(ref.fe_params), z[::j].mean()
    expected = beta[0] + beta[1] * times + beta[2] * times ** 2 + z_mean * (beta[3] + beta[4] * times + beta[5] * times ** 2)
    se = np.sqrt(np.asarray(ref.cov_params())[0, 0])
    np.testing.assert_allclose(population, expected, atol=0.25 * se + 0.02)


@pytest.mark.parametrize("dispersion_model", ["linear", "linear+random"])
def test_student_t_marginal_likelihood_matches_quadrature_over_one_random_effect(dispersion_model):
    """Student-t outcome, dispersion depending on time and covariates (and
    on b), one random effect: log p(y_i) by the trapezoid rule over b on
    [-10, 10] (4001 points; the integrand is smooth and the N(0, 1) prior
    makes the truncation error < 1e-20) against the importance-sampling
    estimate, within 4 of its reported MC SDs per subject (plus 1e-3 for
    the quadrature).  Pareto k-hat exceeds 0.7 here, rightly: the t
    likelihood decays only polynomially in b, so far from the data the
    posterior follows the N(0, 1) prior, which has heavier tails than a
    Gaussian proposal narrower than it (docs/inference.md); at this S the
    estimate is still accurate."""
    from pyro_dgmm.datasets import simulate_linear_noise
    from pyro_dgmm.posterior import observed_log_likelihood

    sim = simulate_linear_noise(10, 5, seed=4, df=3, sd_growth=1.0)
    est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "student_t"}, covariates=["age"],
                         time_basis="poly(1)", latent_dim=1, validation_fraction=0.0,
                         model_options=dict(fixed_hidden=(), random_hidden=(), dispersion_model=dispersion_model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 2-epoch fit warns that it has not converged
        est.fit(sim.data, max_epochs=2, progress=False)
    with torch.no_grad():  # make every part of the observation model matter
        est.model_.dispersion_slopes_0.copy_(torch.linspace(0.3, -0.2, est.model_.dispersion_slopes_0.numel()))
        est.model_.df_0_unconstrained.fill_(1.0)  # df = 2 + softplus(1) = 3.31
    with pytest.warns(diagnostics.InferenceWarning, match="Pareto k-hat"):
        result = marginal.marginal_log_likelihood(est.model_, est.guide_, est.data_, 2000)
    grid = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    model, data = parameters.float64_copy(est.model_, "cpu").model, est.data_.to(dtype=torch.float64)
    with torch.no_grad():
        b = grid[:, None, None].expand(len(grid), data.num_subjects, 1)
        log_integrand = observed_log_likelihood(model, b, data) + dist.Normal(0.0, 1.0).log_prob(grid)[:, None]
    weights = torch.full_like(grid, float(grid[1] - grid[0]))
    weights[[0, -1]] /= 2
    exact = torch.logsumexp(log_integrand + weights.log()[:, None], 0)
    assert (result.per_subject - exact).abs().max() < 4 * result.mc_sd.max() + 1e-3
    assert 0 < result.mc_sd.max() < 0.05
