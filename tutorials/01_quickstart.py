# %% [markdown]
# # 1. Quick start: fit a DGMM to a DataFrame
#
# We fit the Deep Generalized Mixed Model to the Mayo PBC sequential data
# shipped with the package (312 patients, 1,945 visits, three continuous
# markers and three binary ones) and look at fitted trajectories.

# %%
import os

import torch

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc
from pyro_dgmm.plotting import plot_loss, plot_subjects

SMOKE_TEST = "CI" in os.environ
torch.set_num_threads(1)

pbc = load_pbc()
pbc.head()

# %%
model = DeepMixedModel(id_col=PBC_ID, time_col=PBC_TIME, outcomes=PBC_OUTCOMES,
                       covariates=PBC_COVARIATES, time_basis="spline(3)", latent_dim=3)
model.fit(pbc, max_epochs=2 if SMOKE_TEST else 60, seed=0, progress=not SMOKE_TEST)
print(model.result_.stop_reason, f"{model.result_.seconds:.1f} s")

# %%
fitted = model.fitted_values(num_samples=100 if SMOKE_TEST else 500)
fig = plot_subjects(fitted, list(PBC_OUTCOMES), id_col=PBC_ID, time_col=PBC_TIME, max_subjects=4)
fig.savefig("tutorial01_subjects.png", dpi=100)
plot_loss(model.result_).savefig("tutorial01_loss.png", dpi=100)
