# %% [markdown]
# # 5. Posterior checks with ArviZ
#
# A fitted DGMM is a statement about the data: if it is right, data drawn
# from it should look like the data we have. This tutorial exports a fit of
# the PBC data to ArviZ's `InferenceData` and uses ArviZ's tools to check
# it: posterior summaries of the random effects, posterior predictive checks
# (PPC) and leave-one-subject-out cross-validation (LOO).
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
import numpy as np
import pyro
import torch
from matplotlib import MatplotlibDeprecationWarning

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc
from pyro_dgmm.marginal import marginal_log_likelihood

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
# `to_inference_data()` draws $b$ and the replicated data for every patient
# (`pyro_dgmm.predict.posterior_predictive`) and lays them out for ArviZ
# (`pyro_dgmm.convert.to_inference_data`) with named dimensions: `subject` (the patients' ids), `visit` (the visit slot,
# 0, 1, ... in time order; visit *times* are in `constant_data.time`),
# `latent` (the components of $b$). Unobserved cells are NaN in
# `observed_data`.

# %%
idata = model.to_inference_data(num_samples=100 if SMOKE_TEST else 1000)
idata

# %% [markdown]
# ## Summaries of the random effects
#
# `az.summary` works on any variable. The draws form a single "chain" of
# independent resampled draws, so between-chain diagnostics ($\hat R$) do
# not apply: ask for the statistics only.

# %%
az.summary(idata, var_names=["b"], coords={"subject": idata.posterior["subject"][:3]}, kind="stats")

# %% [markdown]
# ## Posterior predictive checks
#
# Compare the distribution of the observed values with that of replicated
# data *at the same cells*: the replicated data cover every planned cell,
# including those not observed, so first keep only the observed ones. With
# xarray, stack (subject, visit) into one `cell` dimension and select.

# %%
def observed_cells(idata, names):
    """InferenceData with the posterior predictive and observed data of
    ``names`` restricted to the observed cells (dimension ``cell``)."""
    groups = {"posterior_predictive": {}, "observed_data": {}}
    for name in names:
        observed = idata.observed_data[name].stack(cell=("subject", "visit"))
        keep = observed.notnull().to_numpy()
        replicated = idata.posterior_predictive[name].stack(cell=("subject", "visit"))
        groups["observed_data"][name] = observed.to_numpy()[keep]
        groups["posterior_predictive"][name] = replicated.to_numpy()[..., keep]
    return az.from_dict(**groups)


continuous = ["y_log_bili", "y_albumin", "y_protime"]
cells = observed_cells(idata, continuous + ["y_ascites", "y_hepato", "y_spiders"])
axes = az.plot_ppc(cells, var_names=continuous, num_pp_samples=50, random_seed=0)
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
axes = az.plot_bpv(cells, var_names=binary, kind="t_stat", t_stat="mean")
axes.ravel()[0].figure.savefig("tutorial05_bpv.png", dpi=100)

# %% [markdown]
# ## Leave-one-subject-out cross-validation
#
# `log_likelihood.y` holds each patient's log-likelihood summed over their
# observed cells, $\log p(y_i^o \mid b_i^{(s)})$, so `az.loo` leaves out one
# *patient* at a time: the sound unit for a mixed model, whose cells share
# $b_i$. PSIS-LOO reweights the posterior draws of $b_i$ to approximate the
# posterior without patient $i$ and reports a Pareto $\hat k$ per patient:
# above a threshold (0.7 for large numbers of draws; ArviZ prints the one it
# uses) the approximation is unreliable.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loo = az.loo(idata, pointwise=True)
print(loo)
for w in caught:
    print("warning:", str(w.message)[:120], "...")

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
# predictive density of patient $i$ is exactly the marginal likelihood
#
# $$
# p(y_i^o \mid y_{-i}) \approx p(y_i^o; \hat\theta) = \int p(y_i^o \mid b)\, \mathcal N(b; 0, I)\, db,
# $$
#
# (up to the influence of patient $i$ on $\hat\theta$), which
# `pyro_dgmm.marginal.marginal_log_likelihood` estimates by importance
# sampling, with its own Pareto $\hat k$ per patient. Its sum is the quantity
# to compare models with (tutorial 6).

# %%
with warnings.catch_warnings(record=True):  # the k-hat count is printed below
    warnings.simplefilter("always")
    marginal = marginal_log_likelihood(model.model_, model.guide_, model.data_,
                                       num_samples=100 if SMOKE_TEST else 2000)
print(f"elpd by PSIS-LOO: {loo.elpd_loo:.1f}   sum of log p(y_i^o) by importance sampling: "
      f"{marginal.total:.1f} (Monte Carlo SD {marginal.total_mc_sd:.1f}, "
      f"{int(marginal.unreliable.sum())} of {len(marginal.ids)} patients with k > 0.7)")

# %% [markdown]
# ## Saving
#
# `InferenceData` saves to netCDF with `idata.to_netcdf("pbc.nc")`, and its
# attributes record the library versions, families, time basis and how the
# posterior was drawn.

# %%
print({key: idata.posterior.attrs[key] for key in ("pyro_dgmm_version", "posterior_method", "num_draws")})
