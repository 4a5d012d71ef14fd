# %% [markdown]
# # 5. Posterior checks with ArviZ
#
# A fitted DGMM is a statement about the data: if it is right, data drawn
# from it should look like the data we have. This tutorial exports a fit of
# the PBC data to ArviZ's `InferenceData` and uses ArviZ's tools to check
# it: posterior summaries of the random effects, posterior predictive checks
# (PPC), LOO-PIT, leave-one-subject-out cross-validation (LOO) and, where LOO
# fails, exact K-fold cross-validation by subject.
#
# **What the posterior is here.** The network weights $\hat\theta$ are point
# estimates; the posterior is over each patient's random effects,
#
# $$
# p(b_i \mid y_i^o; \hat\theta) \propto p(y_i^o \mid b_i; \hat\theta)\, \mathcal N(b_i; 0, I),
# $$
#
# drawn by adaptive importance sampling and resampling
# (`pyro_dgmm.posterior.sample_posterior`). Replicated data
# $y^{\text{rep}(s)} \sim p(y \mid b^{(s)}; \hat\theta)$, one per draw, form
# the posterior predictive distribution.

# %%
import os
import warnings

import arviz as az
import matplotlib.pyplot as plt
import pyro
import torch
from matplotlib import MatplotlibDeprecationWarning

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.convert import subject_loo
from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc

SMOKE_TEST = "CI" in os.environ
torch.set_num_threads(1)
pyro.set_rng_seed(0)
# arviz 0.23 calls a matplotlib helper that matplotlib >= 3.11 deprecates; the plots are unaffected
warnings.filterwarnings("ignore", category=MatplotlibDeprecationWarning)

pbc = load_pbc()
model = DeepMixedModel(id_col=PBC_ID, time_col=PBC_TIME, outcomes=PBC_OUTCOMES, covariates=PBC_COVARIATES,
                       time_basis="spline(3)", latent_dim=3)
model.fit(pbc, max_epochs=2 if SMOKE_TEST else 100, seed=0, progress=False)

# %% [markdown]
# ## InferenceData
#
# `to_inference_data()` runs the sampler of $b$ several times independently
# (`chains=4`, each with its own random numbers), draws replicated data for
# every patient (`pyro_dgmm.predict.posterior_predictive`) and lays them out
# for ArviZ (`pyro_dgmm.convert.to_inference_data`): `subject` (the
# patients' ids) and `latent` (the components of $b$) for the posterior, and
# for each outcome one observation dimension `obs_<outcome>` over the cells
# where it was observed, in long form with the patient and visit time as
# coordinates. Replicated data, observed data and pointwise
# log-likelihood sit on the same cells, so every check below compares like
# with like. Binary draws are integers.

# %%
idata = model.to_inference_data(num_samples=50 if SMOKE_TEST else 500, chains=4)
idata

# %%
print(idata.observed_data["y_ascites"].dtype, idata.posterior_predictive["y_ascites"].dtype)
idata.observed_data["y_log_bili"].to_dataframe().head()

# %% [markdown]
# ## Summaries of the random effects
#
# With several independent chains $\hat R$ and the effective sample size
# are defined: where the chains' importance approximations disagree (a
# patient whose posterior the proposals miss), $\hat R$ rises and the ESS
# falls. `sample_stats` holds each chain's importance ESS per patient.

# %%
az.summary(idata, var_names=["b"], coords={"subject": idata.posterior["subject"][:3]})

# %%
ess = idata.sample_stats["importance_ess"]
print(f"importance ESS per patient and chain: median {float(ess.median()):.0f}, "
      f"smallest {float(ess.min()):.0f} (of {4 * idata.posterior.sizes['draw']} proposals per chain)")

# %% [markdown]
# ## Posterior predictive checks
#
# Compare the distribution of the observed values with that of replicated
# data at the same cells.

# %%
continuous = ["y_log_bili", "y_albumin", "y_protime"]
axes = az.plot_ppc(idata, var_names=continuous, num_pp_samples=50, random_seed=0, figsize=(9, 3))
axes.ravel()[0].figure.savefig("tutorial05_ppc.png", dpi=100)

# %% [markdown]
# Thin lines are replicated data sets, the black line the observed data.
# Where they disagree the model misses a feature of the data: a right tail
# in `protime` that a Gaussian cannot produce, for instance (tutorial 2
# replaces it with a Student-t).
#
# For the binary markers a density plot says little; check a *test
# statistic* instead, here the share of "yes" answers, with its Bayesian
# p-value $P(T(y^{\text{rep}}) \ge T(y))$ (values near 0 or 1 flag misfit):

# %%
binary = ["y_ascites", "y_hepato", "y_spiders"]
axes = az.plot_bpv(idata, var_names=binary, kind="t_stat", t_stat="mean", figsize=(9, 3))
axes.ravel()[0].figure.savefig("tutorial05_bpv.png", dpi=100)

# %% [markdown]
# The LOO-PIT check: for each observed value, where it falls in its
# predictive distribution with that cell left out (PSIS over the cell's
# log-likelihood). A calibrated model gives uniform values; a U shape
# means predictive distributions too narrow, a hump too wide.

# %%
ax = az.plot_loo_pit(idata, y="y_log_bili", figsize=(5, 3))
ax.figure.savefig("tutorial05_loo_pit.png", dpi=100)

# %% [markdown]
# ## Leave-one-subject-out cross-validation
#
# `log_likelihood.y` holds each patient's log-likelihood summed over their
# observed cells, $\log p(y_i^o \mid b_i^{(s)})$, so `az.loo(idata,
# var_name="y")` leaves out one *patient* at a time: the sound unit for a
# mixed model, whose cells share $b_i$. `pyro_dgmm.convert.subject_loo`
# runs it and warns when the Pareto $\hat k$ of too many patients is above
# ArviZ's threshold, where the approximation cannot be trusted.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loo = subject_loo(idata)
print(loo)
for w in caught:
    print("warning:", str(w.message))

# %%
fig, ax = plt.subplots(figsize=(7, 3))
az.plot_khat(loo, ax=ax, show_bins=True)
ax.set_title("Pareto k per patient (leave one patient out)")
fig.tight_layout()
fig.savefig("tutorial05_khat.png", dpi=100)

# %% [markdown]
# Expect most $\hat k$ to be large. Leaving patient $i$ out sends $b_i$ back
# to its prior $\mathcal N(0, I)$, far from $p(b_i \mid y_i^o)$ for an
# informative record, and no reweighting of posterior draws can bridge
# that. For a mixed model with point-estimated weights the leave-one-out
# predictive density of patient $i$ is the marginal likelihood
#
# $$
# p(y_i^o \mid y_{-i}) \approx p(y_i^o; \hat\theta_{-i}) = \int p(y_i^o \mid b; \hat\theta_{-i})\, \mathcal N(b; 0, I)\, db,
# $$
#
# which `pyro_dgmm.marginal.marginal_log_likelihood` estimates by
# importance sampling. Computed with $\hat\theta$ fitted to *all*
# patients it is optimistic; exact K-fold cross-validation by patient
# refits without each fold and scores the held-out patients:
# `DeepMixedModel.kfold`. Its result is an ELPD object that `az.compare`
# accepts. Here: the spline time basis against a straight line in time.

# %%
line = DeepMixedModel(id_col=PBC_ID, time_col=PBC_TIME, outcomes=PBC_OUTCOMES, covariates=PBC_COVARIATES,
                      time_basis="poly(1)", latent_dim=3)
line.fit(pbc, max_epochs=2 if SMOKE_TEST else 100, seed=0, progress=False)
folds = 2 if SMOKE_TEST else 5
samples = 100 if SMOKE_TEST else 1000
patients = pbc[pbc[PBC_ID].isin(pbc[PBC_ID].unique()[:40])] if SMOKE_TEST else pbc  # smoke: a quick look
with warnings.catch_warnings():
    # the refits of a smoke run stop early, and a Pareto k above 0.7 sets the `warning` column below
    warnings.simplefilter("ignore")
    scores = {"spline(3)": model.kfold(patients, k=folds, num_samples=samples),
              "poly(1)": line.kfold(patients, k=folds, num_samples=samples)}
    comparison = az.compare(scores)
comparison

# %% [markdown]
# `elpd_loo` is the K-fold estimate (the column keeps ArviZ's name),
# `p_loo` the optimism of the in-sample score (the sum of $\log \hat
# p(y_i^o; \hat\theta)$ with all patients in the fit, minus the K-fold
# score), `elpd_diff` and `dse` the difference to the best model and its
# standard error over patients. `warning` is set when some held-out
# patient's importance estimate had Pareto $\hat k > 0.7$.

# %% [markdown]
# ## Saving
#
# `InferenceData` saves to netCDF with `idata.to_netcdf("pbc.nc")`, and its
# attributes record the library versions, families, time basis and how the
# posterior was drawn.

# %%
print({key: idata.posterior.attrs[key] for key in ("pyro_dgmm_version", "posterior_method", "num_chains",
                                                    "num_draws")})
