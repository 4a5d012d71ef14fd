# %% [markdown]
# # 6. Standard errors and model comparison
#
# Fitting maximises the ELBO $\tilde\ell(\theta, \phi)$, a lower bound. For
# inference about $\theta$ the talk returns to the marginal log-likelihood
#
# $$
# \ell(\theta) = \sum_{i=1}^N \log p(y_i^o; \theta), \qquad
# p(y_i^o; \theta) = \int p(y_i^o \mid b; \theta)\, \mathcal N(b; 0, I)\, db ,
# $$
#
# and estimates $\widehat{\operatorname{var}}(\hat\theta) = \{-\nabla^2
# \ell(\hat\theta)\}^{-1}$. pyro_dgmm estimates $p(y_i^o; \theta)$ by
# importance sampling with the fitted encoder $q(b_i \mid y_i)$ as proposal,
#
# $$
# \hat p_i(\theta) = \frac1S \sum_{s=1}^S
#   \frac{p(y_i^o \mid b_{is}; \theta)\, \mathcal N(b_{is}; 0, I)}{q(b_{is} \mid y_i)}, \qquad
#   b_{is} \sim q(b \mid y_i),
# $$
#
# with the draws held fixed (common random numbers), so that
# $\theta \mapsto \log \hat p(\theta)$ is smooth and its Hessian can be
# taken by automatic differentiation (or by central differences, as in the
# talk). By default the proposal is first moved to each subject's
# importance-weighted posterior moments, and control variates remove most
# of the Monte Carlo error (see `pyro_dgmm.variance`). The same estimate
# compares models: AIC, BIC and likelihood-ratio tests for nested models,
# and $\ell$ on held-out subjects, a proper predictive score, unlike the
# ELBO, which is only a bound.
#
# We use the linear simulator first, where the DGMM with linear networks
# *is* a linear mixed model and the true coefficients are known; then we
# compare a linear mixed model with a DGMM on nonlinear data.

# %%
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import torch

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.datasets import simulate_linear, simulate_nonlinear
from pyro_dgmm.variance import (LINEAR_FIXED_EFFECTS, LINEAR_RANDOM_EFFECTS, information_criteria,
                                likelihood_ratio_test, linear_coefficients, linear_random_effects_covariance,
                                marginal_log_likelihood, maximize_marginal_likelihood, population_curve,
                                standard_errors)

SMOKE_TEST = "CI" in os.environ
torch.set_num_threads(1)
pyro.set_rng_seed(0)
SAMPLES = 300 if SMOKE_TEST else 1000


def reporting_warnings(fn, *args, **kwargs):
    """Call fn, printing (instead of raising or hiding) the diagnostics it warns about."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    for w in caught:
        print(f"{w.category.__name__}: {w.message}")
    return result


# %% [markdown]
# ## A linear mixed model, fitted as a DGMM
#
# `simulate_linear` draws $y_{ij} = 1 + 0.3 t_{ij} + 0.5\,\text{age}_i +
# 0.8\,\text{treated}_i + b_{0i} + b_{1i} t_{ij} + \varepsilon_{ij}$. With
# `fixed_hidden=()` and `random_hidden=()` both networks are linear and the
# DGMM is this model (with $\operatorname{cov}(b_{0i}, b_{1i}) = AA^\top$).
# Standard errors need a *converged* fit: the balance between the fixed
# effects and the mean of the random effects is a slow direction for
# stochastic optimisation, so we take many small steps (small batches, more
# epochs) and use every subject for training.

# %%
sim = simulate_linear(n_subjects=40 if SMOKE_TEST else 300, n_visits=5 if SMOKE_TEST else 10, seed=0)
LINEAR = dict(fixed_hidden=(), random_hidden=())


def fit_lmm(time_basis):
    """A linear DGMM (a linear mixed model) fitted by SVI to the linear simulator."""
    model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates,
                           time_basis=time_basis, latent_dim=2, model_options=LINEAR, validation_fraction=0.0)
    model.fit(sim.data, max_epochs=2 if SMOKE_TEST else 150, batch_size=32, seed=0, progress=False)
    print(f"{time_basis}: {model.result_.epochs_run} epochs in {model.result_.seconds:.0f} s")
    return model


lmm = fit_lmm("poly(1)")

# %% [markdown]
# SVI maximises the ELBO, whose maximiser differs from the maximum
# likelihood estimate by the encoder's *amortisation gap*. Wald intervals
# need the maximum of $\ell$, so first polish the estimates:
# `maximize_marginal_likelihood` takes a few damped (saddle-free) Newton
# steps on $\log \hat p(y; \theta)$, in place.

# %%
ALL_LINEAR = [*LINEAR_FIXED_EFFECTS, LINEAR_RANDOM_EFFECTS]
polish = reporting_warnings(maximize_marginal_likelihood, lmm.model_, lmm.guide_, lmm.data_,
                            parameters=ALL_LINEAR, num_samples=SAMPLES, max_steps=2 if SMOKE_TEST else 20)
print(f"log-likelihood {polish.log_likelihood_before:.1f} -> {polish.log_likelihood_after:.1f} "
      f"in {polish.steps} steps (converged: {polish.converged})")

# %% [markdown]
# `standard_errors` takes model parameters by name (those of
# `model.named_parameters()`; `LINEAR_FIXED_EFFECTS` names the linear part
# of $\mu_1$) and always adds the dispersions (here the residual SD). The
# network works on standardised covariates and a centred, scaled time, so
# `linear_coefficients` maps the estimates and their covariance to the
# coefficients of the data-scale design $[1, t, \text{age}, \text{treated}]$,
# the numbers a linear mixed model program would report.

# %%
errors = reporting_warnings(standard_errors, lmm.model_, lmm.guide_, lmm.data_, parameters=LINEAR_FIXED_EFFECTS,
                            num_samples=SAMPLES, seed=0)
table = linear_coefficients(lmm.model_, lmm.schema_, errors)
truth = pd.Series(sim.params["beta"]).rename({"intercept": "Intercept", "group[treated]": "group[T.treated]"})
table["truth"] = [truth[term] for term in table.index.get_level_values("term")]
print(table[["estimate", "se", "lower", "upper", "truth"]].round(3).to_string())
print(errors.summary().loc[["sigma[y]"], ["estimate", "se", "lower", "upper"]].round(3).to_string(),
      "  truth:", sim.params["sigma"])

# %% [markdown]
# The random-effects covariance on the data scale (intercept and slope in
# time units) against the simulator's $D$:

# %%
print(linear_random_effects_covariance(lmm.model_, lmm.schema_).round(3).to_string())
print("truth:", sim.params["D"])

# %% [markdown]
# These standard errors are *conditional*: the parameters not listed (here
# the random-effects loadings $A$) are held at their estimates. For a linear
# mixed model the fixed effects and the residual SD are nearly orthogonal to
# the covariance parameters, so this changes little; for deep networks,
# standard errors of individual weights mean little, and the useful targets
# are curves and contrasts, as below.
#
# ## A population curve with a confidence band
#
# `population_curve` evaluates the typical subject's curve
# $\eta^0 = \alpha + s\,\nu(b = 0, X, T)$ at any covariates and times, with
# pointwise delta-method standard errors
# $\sqrt{J \widehat{\operatorname{cov}}(\hat\theta) J^\top}$,
# $J = \partial \eta^0 / \partial \theta$.

# %%
grid = np.linspace(0, 10, 21)
design = pd.DataFrame({"id": np.repeat([0, 1], len(grid)), "time": np.tile(grid, 2), "age": 0.0,
                       "group": np.repeat(["control", "treated"], len(grid))})
curve = population_curve(lmm.model_, lmm.schema_.transform(design, require_observed=False), errors)
curve = curve.merge(design[["id", "time", "group"]], on=["id", "time"])

fig, ax = plt.subplots(figsize=(6, 3.8))
for k, (group, rows) in enumerate(curve.groupby("group")):
    true_line = 1.0 + 0.3 * rows["time"] + 0.8 * (group == "treated")
    ax.fill_between(rows["time"], rows["y_lower"], rows["y_upper"], color=f"C{k}", alpha=0.25,
                    label=f"{group}: 95% band")
    ax.plot(rows["time"], rows["y"], color=f"C{k}", label=f"{group}: estimate")
    ax.plot(rows["time"], true_line, color=f"C{k}", ls="--", lw=1, label=f"{group}: truth")
ax.set(xlabel="time", ylabel="y (age at its mean)", title="population curves, linear mixed model")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig("tutorial06_population_band.png", dpi=100)

# %% [markdown]
# ## Nested models: AIC, BIC and a likelihood-ratio test
#
# Is there curvature in the population course? Fit the model with a
# quadratic time basis too (fixed *and* random effects on $[1, t, t^2]$),
# polish both, and compare. `information_criteria` returns $\hat\ell$ with
# its Monte Carlo SD, the number of identified parameters $p$ (the rank of
# the model's Jacobian, so a rank-$q$ random-effects covariance counts what
# it can identify) and AIC $= -2\hat\ell + 2p$, BIC $= -2\hat\ell + p \log n$
# ($n$ observed cells). The likelihood-ratio statistic $2(\hat\ell_1 -
# \hat\ell_0)$ is referred to $\chi^2_{p_1 - p_0}$.

# %%
quadratic = fit_lmm("poly(2)")
reporting_warnings(maximize_marginal_likelihood, quadratic.model_, quadratic.guide_, quadratic.data_,
                   parameters=ALL_LINEAR, num_samples=SAMPLES, max_steps=2 if SMOKE_TEST else 20)
criteria = {name: reporting_warnings(information_criteria, model.model_, model.guide_, model.data_,
                                     num_samples=SAMPLES)
            for name, model in [("linear time", lmm), ("quadratic time", quadratic)]}
print(pd.DataFrame({name: {"log-likelihood": c.log_likelihood, "MC SD": c.mc_sd, "parameters": c.num_parameters,
                           "AIC": c.aic, "BIC": c.bic} for name, c in criteria.items()}).T.round(1).to_string())
if criteria["quadratic time"].num_parameters > criteria["linear time"].num_parameters:
    test = likelihood_ratio_test(criteria["linear time"], criteria["quadratic time"])
    print(f"LR statistic {test.statistic:.2f} on {test.df} df, p = {test.p_value:.2f} (MC SD {test.mc_sd:.2f})")

# %% [markdown]
# The data were simulated with a linear course, so the test should not
# reject and AIC and BIC should prefer the smaller model. A test of a
# variance component (is there a random slope?) puts the null on the
# boundary of the parameter space, where the $\chi^2$ reference is
# conservative.
#
# ## Comparing models by held-out marginal likelihood
#
# On the nonlinear simulator (sigmoid profiles whose level and timing vary
# by subject), compare a linear mixed model in time with the DGMM. Fit both
# to 75% of the subjects and estimate $\sum_i \log p(y_i^o; \hat\theta)$ on
# the other 25%: the log predictive density of new subjects, in nats. (AIC
# and BIC need a parameter count, which is not meaningful for penalised
# networks with thousands of weights; held-out likelihood needs none.)
# Each estimate carries its Monte Carlo SD; the Pareto $\hat k$ diagnostic
# warns when the encoder is a poor proposal for some subjects.

# %%
nonlinear = simulate_nonlinear(n_subjects=40 if SMOKE_TEST else 400, n_visits=5 if SMOKE_TEST else 10, seed=1)
subjects = nonlinear.data["id"].unique()
held_out = np.random.default_rng(0).choice(subjects, size=len(subjects) // 4, replace=False)
train = nonlinear.data[~nonlinear.data["id"].isin(held_out)]
test = nonlinear.data[nonlinear.data["id"].isin(held_out)]

candidates = {
    "LMM, linear time": dict(time_basis="poly(1)", model_options=dict(fixed_hidden=(), random_hidden=())),
    "DGMM, spline(4)": dict(time_basis="spline(4)"),
}
rows, per_subject = [], {}
for name, options in candidates.items():
    model = DeepMixedModel(id_col="id", time_col="time", outcomes=nonlinear.outcomes,
                           covariates=nonlinear.covariates, **options)
    model.fit(train, max_epochs=2 if SMOKE_TEST else 150, batch_size=32, seed=0, progress=False)
    score = reporting_warnings(marginal_log_likelihood, model.model_, model.guide_, model.transform(test),
                               num_samples=SAMPLES, seed=0)
    per_subject[name] = score.per_subject.numpy()
    rows.append({"model": name, "held-out log-likelihood": score.total, "Monte Carlo SD": score.total_mc_sd,
                 "subjects with k > 0.7": int(score.unreliable.sum()), "fit seconds": model.result_.seconds})
comparison = pd.DataFrame(rows).set_index("model")
print(comparison.round(1).to_string())

# %% [markdown]
# The total hides how the gain is spread: per held-out subject, the
# difference $\log \hat p_{\text{DGMM}}(y_i^o) - \log \hat p_{\text{LMM}}(y_i^o)$
# (positive: the DGMM predicts that subject's data better).

# %%
gain = per_subject["DGMM, spline(4)"] - per_subject["LMM, linear time"]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.hist(gain, bins=30, color="C3", alpha=0.8)
ax.axvline(0, color="k", lw=1)
ax.set(xlabel="log p(y_i | DGMM) - log p(y_i | LMM), nats", ylabel="held-out subjects",
       title=f"DGMM better for {np.mean(gain > 0):.0%} of held-out subjects; total {gain.sum():+.0f} nats")
fig.tight_layout()
fig.savefig("tutorial06_comparison.png", dpi=100)

# %% [markdown]
# The difference in held-out log-likelihood is the log of a ratio of
# predictive densities for the held-out subjects, so a difference of a few
# nats is small; here the DGMM's ability to shift each subject's sigmoid in
# time is worth far more. Check the Pareto $\hat k$ count: the posterior of
# a sigmoid's timing can be far from Gaussian, and subjects with
# $\hat k > 0.7$ have estimates less precise than their Monte Carlo SD says
# (more `num_samples` help).
#
# **Limits.** Standard errors treat $\hat\theta$ as a maximum of $\ell$; the
# fit maximises the ELBO, which agrees with $\ell$ only when the encoder is
# exact, so a Hessian that is not negative definite (an `InferenceWarning`)
# means the fit is not at a maximum of $\ell$ or the Monte Carlo error is too
# large. The likelihood-ratio test needs nested models fitted by maximum
# likelihood; it is not valid when parameters of the larger model vanish
# under the null (a network unit with zero output weight).
