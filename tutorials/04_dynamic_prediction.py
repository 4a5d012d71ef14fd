# %% [markdown]
# # 4. Dynamic prediction: a patient's history, intervals, updates, landmarks
#
# The talk's objective is *dynamic prediction*: given what we have seen of a
# person so far, predict their next values, and update the prediction when
# a new visit arrives. With the PBC data we fit a DGMM to 80% of the
# patients and predict the other 20% from their histories.
#
# **The predictive distribution.** For patient $i$ with history
# $\mathcal H_i(s)$ (the observed values up to time $s$ and the baseline
# covariates) and a future time $t > s$,
#
# $$
# p\{y_{ik}(t) \mid \mathcal H_i(s)\} = \int \mathcal F_k\big(y;\, g_k^{-1}\{\eta_{ik}(t; b)\}, \sigma_k\big)\,
#   p\{b \mid \mathcal H_i(s)\}\, db, \qquad
# p\{b \mid \mathcal H_i(s)\} \propto p(y_i^o \mid b)\, \mathcal N(b; 0, I).
# $$
#
# `DeepMixedModel.predict` (see `pyro_dgmm.predict.predict`) draws
# $b^{(1)}, \dots, b^{(S)}$ from the posterior given the history (adaptive
# importance sampling, which corrects the encoder: it was trained on whole
# records, not on short histories), then one $y^{(s)}$ from each. The table
# reports
#
# * `mean`: $\frac1S \sum_s g^{-1}(\eta^{(s)})$, the predicted value (a
#   probability for binary outcomes);
# * `lower_95`, `upper_95`: a 95% *prediction interval* for a new
#   observation (quantiles of the $y^{(s)}$; includes the measurement noise);
# * `mean_lower_95`, `mean_upper_95`: a 95% credible band of the patient's
#   mean curve $g^{-1}(\eta)$.
#
# Network weights are point estimates; their uncertainty is not included.

# %%
import os

import numpy as np
import pandas as pd
import pyro
import torch

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME, load_pbc
from pyro_dgmm.plotting_predict import plot_calibration, plot_dynamic_prediction

SMOKE_TEST = "CI" in os.environ
torch.set_num_threads(1)
pyro.set_rng_seed(0)
SAMPLES = 100 if SMOKE_TEST else 1000

pbc = load_pbc()
ids = np.sort(pbc[PBC_ID].unique())
test_ids = np.random.default_rng(0).choice(ids, size=len(ids) // 5, replace=False)
train = pbc[~pbc[PBC_ID].isin(test_ids)]
test = pbc[pbc[PBC_ID].isin(test_ids)]
print(f"{train[PBC_ID].nunique()} training patients, {test[PBC_ID].nunique()} test patients")

model = DeepMixedModel(id_col=PBC_ID, time_col=PBC_TIME, outcomes=PBC_OUTCOMES, covariates=PBC_COVARIATES,
                       time_basis="spline(3)", latent_dim=3)
model.fit(train, max_epochs=2 if SMOKE_TEST else 100, seed=0, progress=False)
print(f"{model.result_.epochs_run} epochs in {model.result_.seconds:.1f} s")

# %% [markdown]
# ## One patient's history
#
# Take the test patient with the most visits, pretend we are at year 2,
# and predict every marker on a grid of times up to year 10.
# `include_history=True` adds the history rows (the fitted curve so far);
# the patient's later visits (unseen by the prediction) are passed as the
# requested times too, so the table carries their observed values.

# %%
patient = test.groupby(PBC_ID).size().idxmax()
record = test[test[PBC_ID] == patient]
grid = np.linspace(0, 10, 6 if SMOKE_TEST else 41)
shown = ["log_bili", "albumin", "ascites"]


def predict_from(history):
    """Predictions for ``patient`` after ``history``: on the grid, and at the
    later visits (their observed values are kept for the picture)."""
    last = history[PBC_TIME].max()
    later = record[record[PBC_TIME] > last][[PBC_ID, PBC_TIME, *PBC_OUTCOMES]]
    targets = pd.concat([pd.DataFrame({PBC_ID: patient, PBC_TIME: grid[grid > last]}), later])
    return model.predict(history, targets, include_history=True, num_samples=SAMPLES).table


landmark = 2.0
before = predict_from(record[record[PBC_TIME] <= landmark])
fig = plot_dynamic_prediction(before, patient, id_col=PBC_ID, time_col=PBC_TIME, outcomes=shown,
                              binary=["ascites"])
fig.savefig("tutorial04_patient.png", dpi=100)
before[before["outcome"] == "log_bili"].head()

# %% [markdown]
# Filled dots are the history, open circles the visits that came later.
# The dark band is the credible band of the patient's mean curve, the light
# band the prediction interval for a new measurement; both widen with the
# horizon. For ascites (binary) the band is that of the probability.
#
# ## A new visit arrives
#
# Add the patient's next visit to the history and predict again. The
# posterior of $b_i$ tightens, so the band of the mean curve narrows.

# %%
next_time = record.loc[record[PBC_TIME] > landmark, PBC_TIME].min()
after = predict_from(record[record[PBC_TIME] <= next_time])
horizon = 5.0
for label, table in [("history to year 2", before), (f"plus the visit at {next_time:.1f}", after)]:
    rows = table[(table["outcome"] == "log_bili") & ~table["history"]]
    row = rows.iloc[int(np.argmin(np.abs(rows[PBC_TIME].to_numpy() - horizon)))]
    print(f"{label:24s} log_bili at year {row[PBC_TIME]:.2f}: {row['mean']:.2f}  "
          f"95% band of the mean [{row['mean_lower_95']:.2f}, {row['mean_upper_95']:.2f}]  "
          f"95% prediction interval [{row['lower_95']:.2f}, {row['upper_95']:.2f}]")

fig = plot_dynamic_prediction(after, patient, id_col=PBC_ID, time_col=PBC_TIME, outcomes=shown,
                              binary=["ascites"])
fig.savefig("tutorial04_patient_updated.png", dpi=100)

# %% [markdown]
# ## Landmark evaluation on the test patients
#
# One patient is an anecdote. A *landmark* evaluation does the same for
# every test patient: cut each history at the landmark time (here year 3),
# predict each later observed value up to a horizon (4 years), and score
# the predictions by horizon: RMSE and coverage of the 95% prediction
# intervals for continuous markers, AUC and Brier score for binary ones.
# The reference is the simplest dynamic predictor: carry the last observed
# value forward.

# %%
evaluation = model.landmark_evaluation(test, landmark=3.0, horizon=4.0, horizon_bins=[0, 1, 2, 4],
                                       num_samples=SAMPLES)
scores = evaluation.scores
columns = ["outcome", "horizon", "method", "n", "rmse", "coverage_95", "auc", "brier"]
print(scores[scores["horizon"] == "all"][columns].round(3).to_string(index=False))

# %% [markdown]
# Calibration of the binary markers: group the predicted probabilities into
# bins and compare each bin's mean prediction with the observed rate; a
# calibrated model lies on the diagonal (point size: number of predictions).

# %%
fig = plot_calibration(evaluation.calibration)
fig.savefig("tutorial04_calibration.png", dpi=100)

# %% [markdown]
# **Limits.** The test patients still in follow-up after year 3 are a
# selected group (the sickest have died or had a transplant), so these
# scores describe predictions for patients who remain under observation;
# joint models of the markers and the event time address that, and are not
# part of pyro_dgmm yet. Predictions beyond the follow-up seen in training
# extrapolate the time basis (natural splines continue linearly).
