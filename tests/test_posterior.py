"""The posterior engine: every weighted sampler of b | y against the closed
form of a linear mixed model (posterior moments and the marginal
likelihood), the fitted Gaussian proposal, seeding, and the rule that
``pyro.sample`` appears in the model, guide and joint-model modules only."""
import ast
from pathlib import Path

import pytest
import torch

import pyro_dgmm
from pyro_dgmm import ConfigError, DeepMixedModel
from pyro_dgmm.datasets import simulate_linear
from pyro_dgmm.posterior import gaussian_proposal, sample_posterior, weighted_moments

LINEAR = dict(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
              time_basis="poly(1)", latent_dim=2, model_options=dict(fixed_hidden=(), random_hidden=()))


def exact_posterior(model, data):
    """Posterior mean (N, q), covariance (N, q, q) and log p(y_i^o) (N,) of
    every subject of ``data`` under a linear-Gaussian ``model``, in closed
    form: eta = eta0 + J b exactly, so y_i^o ~ N(eta0, J J' + s^2 I)."""
    with torch.no_grad():
        q, n = model.latent_dim, data.num_subjects
        points = torch.cat([torch.zeros(1, q), torch.eye(q)])[:, None, :].expand(q + 1, n, q)
        eta = model.eta(points, data)[..., 0].double()  # (q + 1, N, T)
        eta0, jac = eta[0], (eta[1:] - eta[0]).permute(1, 2, 0)  # (N, T), (N, T, q)
        s2 = float(model.dispersion("y")) ** 2
        mean, cov, log_marginal = [], [], []
        for i in range(n):
            observed = data.mask[i, :, 0]
            j, r = jac[i, observed], data.y[i, observed, 0].double() - eta0[i, observed]
            cov_i = torch.linalg.inv(torch.eye(q, dtype=torch.float64) + j.T @ j / s2)
            mean.append(cov_i @ j.T @ r / s2)
            cov.append(cov_i)
            marginal = torch.distributions.MultivariateNormal(torch.zeros_like(r), j @ j.T + s2 * torch.eye(len(r)))
            log_marginal.append(marginal.log_prob(r))
    return torch.stack(mean), torch.stack(cov), torch.stack(log_marginal)


@pytest.fixture(scope="module")
def lmm():
    """A linear-Gaussian DGMM (an LMM) fitted to 30 subjects x 6 visits, and
    their first 3 visits as histories (a wide, prior-dominated posterior,
    where the encoder trained on whole records is a rough proposal), with
    the exact posterior of each at the fitted parameters."""
    sim = simulate_linear(n_subjects=30, n_visits=6, seed=2)
    est = DeepMixedModel(**LINEAR).fit(sim.data, max_epochs=40, batch_size=8, progress=False,
                                       refine=False)  # the SVI encoder as proposal, not one refitted after refine
    data = est.transform(sim.data[sim.data.groupby("id").cumcount() < 3])
    return (est, data, *exact_posterior(est.model_, data))


@pytest.mark.parametrize("method, records, min_ess", [("importance", "whole", 20), ("adaptive", "history", 500)])
def test_weighted_draws_match_the_closed_form(lmm, method, records, min_ess):
    """'importance' (the encoder as proposal) on the whole records the
    encoder was trained on, 'adaptive' on the 3-visit histories, 4000 draws.
    Per subject, with its effective sample size E, the Monte Carlo SE of a
    posterior mean is about SD / sqrt(E), of an SD about SD / sqrt(2 E) and
    of log p(y_i^o) about 1 / sqrt(E): each is checked to 4.5 SEs (60, 60
    and 30 comparisons), plus float32 rounding."""
    est, data = lmm[:2]
    if records == "whole":
        data = est.data_
    mean, cov, log_marginal = exact_posterior(est.model_, data)
    draws = sample_posterior(est.model_, est.guide_, data, method, 4000, seed=1)
    assert draws.b.shape == (4000, 30, 2) and draws.method == method
    assert draws.ess.min() > min_ess
    se = 1 / draws.ess.double().sqrt()
    b_mean, b_cov, _ = weighted_moments(draws.log_weights.double(), draws.b.double())
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((b_mean - mean).abs() / sd < 4.5 * se[:, None] + 1e-3).all()
    assert ((b_cov.diagonal(dim1=-2, dim2=-1).sqrt() / sd - 1).abs() < 4.5 * se[:, None] / 2 ** 0.5 + 1e-3).all()
    assert ((draws.log_marginal.double() - log_marginal).abs() < 4.5 * se + 1e-3).all()
    if method == "adaptive":  # a proposal fitted to each posterior: every estimate tight
        assert ((b_mean - mean).abs() / sd).max() < 0.2 and (draws.log_marginal.double() - log_marginal).abs().max() < 0.05


def test_laplace_proposal_is_the_exact_posterior_of_a_linear_model(lmm):
    """The Laplace step alone (rounds=0) is exact for a Gaussian posterior.
    Moment matching (rounds=3, 2000 pilot draws) estimates the moments
    from draws, so it could only move it off by Monte Carlo noise: every
    subject keeps the Laplace approximation, whose ESS is the larger."""
    est, data, mean, cov, _ = lmm
    q = est.guide_.posterior(data)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    fitted = {}
    for rounds in (0, 3):
        torch.manual_seed(rounds)
        fitted[rounds] = gaussian_proposal(est.model_, data, q.loc.detach(), q.scale_tril.detach(), rounds=rounds,
                                           num_proposals=2000)
    loc, tril = fitted[0]
    fitted_cov = (tril @ tril.transpose(-1, -2)).double()
    assert ((loc.double() - mean).abs() / sd).max() < 0.01
    assert (fitted_cov.diagonal(dim1=-2, dim2=-1).sqrt() / sd - 1).abs().max() < 0.01
    assert torch.equal(fitted[3][0], loc) and torch.equal(fitted[3][1], tril)


def test_a_flat_likelihood_gives_the_prior(lmm):
    """The ``log_likelihood`` hook replaces the model's (as the marginal
    likelihood does with other parameter values): a constant one leaves
    the N(0, I) prior."""
    est, data, _, _, _ = lmm
    q = est.guide_.posterior(data)
    loc, tril = gaussian_proposal(est.model_, data, q.loc.detach(), q.scale_tril.detach(), rounds=0,
                                  log_likelihood=lambda b, chunk: torch.zeros(b.shape[:-1]))
    torch.testing.assert_close(loc, torch.zeros_like(loc), atol=1e-4, rtol=0)
    torch.testing.assert_close(tril @ tril.transpose(-1, -2), torch.eye(2).expand(30, 2, 2), atol=1e-4, rtol=0)


def test_seed_reproduces_and_leaves_the_callers_generator_alone(lmm):
    est, data, _, _, _ = lmm
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = sample_posterior(est.model_, est.guide_, data, "adaptive", 50, seed=3)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(sample_posterior(est.model_, est.guide_, data, "adaptive", 50, seed=3).b, first.b)
    assert not torch.equal(sample_posterior(est.model_, est.guide_, data, "adaptive", 50, seed=4).b, first.b)


def test_options_are_checked(lmm):
    est, data, _, _, _ = lmm
    with pytest.raises(ConfigError, match="method must be one of"):
        sample_posterior(est.model_, est.guide_, data, "gibbs")
    with pytest.raises(ConfigError, match="num_draws"):
        sample_posterior(est.model_, est.guide_, data, num_draws=0)
    with pytest.raises(ConfigError, match="initial_b must have shape"):
        sample_posterior(est.model_, est.guide_, data, "mh", 2, initial_b=torch.zeros(3, 2))


def test_pyro_sample_only_in_the_model_and_guide_modules():
    """The sample sites of the library are the model's and the guide's: every
    other module works off-trace (``pyro_dgmm.likelihood``) or through
    Pyro's inference utilities on the model."""
    allowed = {"model.py", "guide.py", "joint.py"}  # joint.py: the joint model's event site
    root = Path(pyro_dgmm.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            imported = isinstance(node, ast.ImportFrom) and node.module == "pyro" and any(
                alias.name == "sample" for alias in node.names)
            called = isinstance(node, ast.Attribute) and node.attr == "sample" and isinstance(
                node.value, ast.Name) and node.value.id == "pyro"
            if (imported or called) and path.name not in allowed:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"pyro.sample outside model.py/guide.py/joint.py: {offenders}"
    assert (root / "model.py").read_text().count("pyro.sample(") >= 2  # the check sees what it is looking for
