# %% [markdown]
# # 1. Quick start: fit a DGMM to a DataFrame
#
# We fit a Deep Generalized Mixed Model (DGMM) to the Mayo Clinic PBC
# follow-up data shipped with the package (312 patients, 1,945 visits, three
# continuous markers and three binary ones), look at the fitted trajectories
# of a few patients and at the population mean curves, and save the model.
#
# **The model.** For patient $i$ with visits at times $t_{ij}$, outcomes
# $k = 1, \dots, K$, baseline covariates $X_i$ and functions of time
# $T_{ij}$ (here a natural spline of the visit time):
#
# $$
# \begin{aligned}
# b_i &\sim \mathcal N(0, I_q), \\
# \eta_{ijk} &= \mu_{1k}(X_i, T_{ij}) + \mu_{2k}(b_i, T_{ij}), \\
# y_{ijk} \mid b_i &\sim \mathcal F_k\big(g_k^{-1}(\eta_{ijk}), \sigma_k\big).
# \end{aligned}
# $$
#
# $\mu_1$ (the *fixed-effects network*) describes the average course given
# the covariates; $\mu_2$ (the *random-effects network*) lets each patient
# deviate from it through a low-dimensional latent $b_i$ shared by all
# outcomes. $\mathcal F_k$ and $g_k$ are a family and its link: Gaussian
# with identity link for the lab values, Bernoulli with logit link for the
# binary signs. Missing cells (NaN) simply drop out of the likelihood.
#
# **The fit.** The marginal likelihood $\sum_i \log \int p(y_i \mid b)\,
# p(b)\, db$ has no closed form, so the DGMM is fitted as a variational
# auto-encoder: an *encoder* network gives $q(b_i \mid y_i) = \mathcal
# N(\mu_b(y_i), \Sigma_b(y_i))$ and we maximise the evidence lower bound
# (ELBO)
#
# $$
# \tilde\ell(\theta, \phi) = \sum_i \Big\{ E_{q(b_i \mid y_i)}
# \log p(y_i \mid b_i; \theta) - \mathrm{KL}\big(q(b_i \mid y_i) \,\|\, p(b_i)\big)\Big\}
# $$
#
# with Pyro's stochastic variational inference, KL annealing and early
# stopping on held-out patients.

# %%
import os

import matplotlib.pyplot as plt
import pyro
import torch

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.datasets import PBC_CODEBOOK, PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc
from pyro_dgmm.plotting import plot_loss, plot_subjects

SMOKE_TEST = "CI" in os.environ  # set by the test suite: tiny fits, same code path
torch.set_num_threads(1)  # one thread: much faster on small or shared machines
pyro.set_rng_seed(0)

pbc = load_pbc()
print(pbc.shape)
pbc[[PBC_ID, PBC_TIME, *PBC_OUTCOMES, *PBC_COVARIATES]].head()

# %% [markdown]
# The data are *long*: one row per visit, a patient id, the visit time in
# years, one column per outcome (NaN where not measured) and baseline
# covariates, constant within a patient. The column roles and suggested
# families ship with the data:

# %%
for name, family in PBC_OUTCOMES.items():
    print(f"{name:9s} {family:10s} {PBC_CODEBOOK[name]}")
print("covariates:", PBC_COVARIATES, " time:", PBC_TIME)

# %% [markdown]
# ## Fit
#
# `DeepMixedModel` is the analyst's entry point. `outcomes` maps each
# outcome column to its family; all outcomes share one latent $b_i$ of
# dimension `latent_dim` $= q$. `time_basis` builds $T_{ij}$ from the time
# column (`'spline(3)'`: a natural cubic spline with 3 degrees of freedom).
# `fit` takes the DataFrame and any setting of `pyro_dgmm.fit.FitConfig`
# as a keyword (here the number of epochs and the seed).

# %%
model = DeepMixedModel(id_col=PBC_ID, time_col=PBC_TIME, outcomes=PBC_OUTCOMES,
                       covariates=PBC_COVARIATES, time_basis="spline(3)", latent_dim=3)
model.fit(pbc, max_epochs=2 if SMOKE_TEST else 100, seed=0, progress=False)
print(f"{model.result_.stop_reason}; {model.result_.epochs_run} epochs in {model.result_.seconds:.1f} s")

# %% [markdown]
# The loss curve shows the training objective (the negative ELBO per
# patient plus the ridge penalty) and the negative ELBO of the 10% of
# patients held out for early stopping; the parameters of the best
# held-out epoch are kept.

# %%
fig = plot_loss(model.result_)
fig.savefig("tutorial01_loss.png", dpi=100)

# %% [markdown]
# ## Fitted trajectories
#
# `fitted_values()` returns, for every visit, the observed values and the
# subject-specific fitted means $E[g^{-1}(\eta_{ijk}) \mid y_i^o]$ on the
# response scale (probabilities for binary outcomes). The expectation over
# $b_i$ is taken by importance sampling with the encoder as proposal, which
# corrects the encoder's approximation for each patient.

# %%
fitted = model.fitted_values(num_samples=50 if SMOKE_TEST else 500)
fitted.head()

# %%
fig = plot_subjects(fitted, list(PBC_OUTCOMES), id_col=PBC_ID, time_col=PBC_TIME, max_subjects=4)
fig.savefig("tutorial01_subjects.png", dpi=100)

# %% [markdown]
# Dots are observed values, lines the fitted means: the latent $b_i$ learned
# from all six markers moves each patient's curves together (a patient with
# rising bilirubin tends to have falling albumin and a rising chance of
# ascites).
#
# ## Population mean curves
#
# `population_mean(times)` averages $E[y(t) \mid b]$ over $b \sim \mathcal
# N(0, I)$ and over the covariates of the training patients: the expected
# course of a marker in this population (for binary outcomes: the
# prevalence).

# %%
grid = torch.linspace(0, 12, 7 if SMOKE_TEST else 49).tolist()
population = model.population_mean(grid, num_samples=50 if SMOKE_TEST else 500)
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
for ax, name in zip(axes, ["log_bili", "albumin", "ascites"]):
    seen = pbc[pbc[name].notna()]
    ax.scatter(seen[PBC_TIME], seen[name], s=3, alpha=0.15, color="grey", label="visits")
    ax.plot(population[PBC_TIME], population[name], color="C3", lw=2, label="population mean")
    ax.set(title=name, xlabel=PBC_TIME)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig("tutorial01_population.png", dpi=100)

# %% [markdown]
# The visit clouds thin out with time: sicker patients leave the study
# (death or transplant), so the raw averages at late times describe the
# survivors. The model's curves use every patient's observed history (valid
# under missing at random, see tutorial 3).
#
# ## Save and load
#
# `save` stores the configuration, the fitted schema (scalers, spline knots,
# category levels) and the weights; `load` predicts exactly as before. The
# training data are not stored, so pass the DataFrame to `fitted_values`.

# %%
model.save("tutorial01_model.pt")
again = DeepMixedModel.load("tutorial01_model.pt")
pyro.set_rng_seed(1)
before = model.fitted_values(pbc, num_samples=20)
pyro.set_rng_seed(1)
after = again.fitted_values(pbc, num_samples=20)
print("identical after load:", before.equals(after))
