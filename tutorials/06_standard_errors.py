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
# of the Monte Carlo error (see `pyro_dgmm.marginal`). The same estimate
# compares models: AIC, BIC and likelihood-ratio tests for nested models,
# and $\ell$ on held-out subjects, a proper predictive score, unlike the
# ELBO, which is only a bound.
#
# The fitted model offers all of it: `summary()`, `standard_errors()`,
# `marginal_log_likelihood()`, `information_criteria()`, `compare(other)` and
# `population_curve(df)`, each computed once and cached. We use the linear
# simulator first, where the DGMM with linear networks *is* a linear mixed
# model and the true coefficients are known; then we compare a linear mixed
# model with a DGMM on nonlinear data.

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

SMOKE_TEST = "CI" in os.environ
torch.set_num_threads(1)
pyro.set_rng_seed(0)
SAMPLES = 300 if SMOKE_TEST else 500
SHORT = dict(max_epochs=2) if SMOKE_TEST else {}  # a real fit runs until it converges


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
# Standard errors need a *converged* fit at the maximum of the likelihood.
# SVI maximises the ELBO, whose maximiser differs from the maximum
# likelihood estimate by the encoder's *amortisation gap*, so we fit with
# `refine=True`: after SVI, a few damped (saddle-free) Newton steps on the
# importance-sampled $\log \hat p(y; \theta)$ move the linear fixed and
# random effects and the residual SD to its maximum (for this model, the
# maximum likelihood estimate of the linear mixed model).

# %%
sim = simulate_linear(n_subjects=40 if SMOKE_TEST else 300, n_visits=5 if SMOKE_TEST else 10, seed=0)
LINEAR = dict(fixed_hidden=(), random_hidden=())


def fit_lmm(time_basis):
    """A linear DGMM (a linear mixed model) fitted by SVI to the linear simulator."""
    model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates,
                           time_basis=time_basis, latent_dim=2, model_options=LINEAR, validation_fraction=0.0)
    reporting_warnings(model.fit, sim.data, seed=0, progress=False, refine=True, **SHORT)
    refinement = model.result_.refinement
    print(f"{time_basis}: {model.result_.epochs_run} epochs in {model.result_.seconds:.0f} s; log-likelihood "
          f"{refinement['log_likelihood_before']:.1f} -> {refinement['log_likelihood_after']:.1f} by the refinement")
    return model


lmm = fit_lmm("poly(1)")
print(lmm)

# %% [markdown]
# `summary()` prints what a linear mixed model program would: the fixed
# effects on the data-scale design $[1, t, \text{age}, \text{treated}]$ (the
# network works on standardised covariates and a centred, scaled time;
# the summary maps the estimates and their covariance back) with Wald
# standard errors and 95% intervals, the residual SD, the random-effects
# covariance, the log-likelihood with its Monte Carlo SD, AIC and BIC, and
# notes on anything to distrust.

# %%
summary = reporting_warnings(lmm.summary, num_samples=SAMPLES)
print(summary)

# %% [markdown]
# The same numbers as DataFrames (`summary.tables`, or `summary.to_frame()`
# in one long table), here beside the simulator's truth:

# %%
table = summary.fixed_effects.copy()
truth = pd.Series(sim.params["beta"]).rename({"intercept": "Intercept", "group[treated]": "group[T.treated]"})
table["truth"] = [truth[term] for term in table.index.get_level_values("term")]
print(table[["estimate", "se", "lower", "upper", "truth"]].round(3).to_string())
print(summary.dispersions[["estimate", "se", "lower", "upper"]].round(3).to_string(),
      "  truth:", sim.params["sigma"])

# %% [markdown]
# The random-effects covariance on the data scale (intercept and slope in
# time units) against the simulator's $D$:

# %%
print(summary.random_effects.round(3).to_string())
print("truth:", sim.params["D"])

# %% [markdown]
# The summary's standard errors are *conditional* on the random-effects
# loadings $A$ (held at their estimates), as a linear mixed model program's
# $(X^\top V^{-1} X)^{-1}$ is conditional on the variance parameters: the
# fixed effects and the residual SD are nearly orthogonal to them.
# `standard_errors(parameters)` takes any model parameters by name (those of
# `model.model_.named_parameters()`; by default the linear parts, $A$
# included, and always the dispersions). For deep networks,
# standard errors of individual weights mean little, and the useful targets
# are curves and contrasts, as below.
#
# ## A population curve with a confidence band
#
# `population_curve` evaluates the typical subject's curve
# $\eta^0 = \alpha + s\,\nu(b = 0, X, T)$ at any covariates and times, with
# pointwise delta-method standard errors
# $\sqrt{J \widehat{\operatorname{cov}}(\hat\theta) J^\top}$,
# $J = \partial \eta^0 / \partial \theta$, over every parameter of the
# fixed-effects net.

# %%
grid = np.linspace(0, 10, 21)
design = pd.DataFrame({"id": np.repeat([0, 1], len(grid)), "time": np.tile(grid, 2), "age": 0.0,
                       "group": np.repeat(["control", "treated"], len(grid))})
curve = reporting_warnings(lmm.population_curve, design, num_samples=SAMPLES)
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
# refined in the same way, and compare. `information_criteria()` returns $\hat\ell$ with
# its Monte Carlo SD, the number of identified parameters $p$ (the rank of
# the model's Jacobian, so a rank-$q$ random-effects covariance counts what
# it can identify) and AIC $= -2\hat\ell + 2p$, BIC $= -2\hat\ell + p \log n$
# ($n$ observed cells). `compare(other)` puts two models side by side and,
# for models of different size, refers the likelihood-ratio statistic
# $2(\hat\ell_1 - \hat\ell_0)$ to $\chi^2_{p_1 - p_0}$ (valid if the smaller
# model is nested in the larger, which it cannot check).

# %%
quadratic = fit_lmm("poly(2)")
comparison = reporting_warnings(lmm.compare, quadratic, names=["linear time", "quadratic time"],
                                num_samples=SAMPLES)
print(comparison)

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
    score = reporting_warnings(model.marginal_log_likelihood, test, num_samples=SAMPLES, seed=0)
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
