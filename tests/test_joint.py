"""Joint models of outcomes and time to event: the event log-likelihood against
a direct numerical integral, the trace against the off-trace likelihood, the
event data checks, fitting through SVI, dynamic prediction, and (slow)
recovery of the association on simulated data."""
import dataclasses
import math
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro import poutine
from scipy.integrate import quad

from pyro_dgmm.data import DataSchema
from pyro_dgmm.diagnostics import InferenceWarning
from pyro_dgmm.datasets import load_pbc, load_pbc_events
from pyro_dgmm.datasets.joint import simulate_joint
from pyro_dgmm.errors import ConfigError, DataError, SaveFileError
from pyro_dgmm.estimator import DeepMixedModel
from pyro_dgmm.events import with_events
from pyro_dgmm.joint import JointModel
from pyro_dgmm import joint, joint_estimator, marginal, wald
from pyro_dgmm.joint_estimator import JointMixedModel
from pyro_dgmm.likelihood import observed_log_likelihood
from pyro_dgmm.persistence import saved_facade
from pyro_dgmm.plotting_joint import plot_event_prediction


def small_joint(num_causes=1, seed=0, n=6, terms=("value",), association=None, nodes=15, area_nodes=0,
                association_hidden=()):
    """A tiny simulated data set with random (nonzero) event parameters; with
    ``association``, a second, binary outcome ``z`` (y above its median) to associate too."""
    sim = simulate_joint(n_subjects=n, seed=seed)
    visits = sim.data.assign(z=(sim.data["y"] > sim.data["y"].median()).astype(float))
    outcomes = {"y": "gaussian"} if association is None else {"y": "gaussian", "z": "bernoulli"}
    schema = DataSchema.fit(visits, id_col="id", time_col="time", outcomes=outcomes, covariates=["x"],
                            time_basis="poly(2)")
    data = schema.transform(visits)
    events = sim.events.set_index("id").loc[data.ids]
    rng = np.random.default_rng(seed)
    status = events["status"].to_numpy() * rng.integers(1, num_causes + 1, n)
    entry = np.where(np.arange(n) % 2 == 1, 0.3 * events["time"].to_numpy(), 0.0)  # left truncation for half
    torch.manual_seed(seed)
    model = JointModel.from_schema(schema, latent_dim=2, num_causes=num_causes, baseline_hidden=(4,),
                                   association_terms=terms, association=association,
                                   association_hidden=association_hidden)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    joint = with_events(data.to(dtype=torch.float64), schema.time_basis, entry, events["time"], status, nodes=nodes,
                        area_nodes=area_nodes)
    return model.double(), schema, joint, entry, events["time"].to_numpy(), status


@pytest.mark.parametrize("num_causes, terms, association, hidden", [
    (1, ("value",), None, ()), (2, ("value", "slope"), None, ()), (1, ("slope",), None, ()),
    (2, ("value", "slope"), ("z", "y"), (3,)), (1, ("area", "value"), None, ())])
def test_event_log_likelihood_equals_a_direct_numerical_integral(num_causes, terms, association, hidden):
    # the two-outcome and area draws have Weibull shapes below 1 (a hazard singular at 0): 15 nodes leave
    # 2e-4 and 2e-5, 60 nodes 1e-6
    model, schema, data, entry, time, status = small_joint(num_causes, terms=terms, association=association,
                                                           nodes=15 if association is None and "area" not in terms
                                                           else 60,
                                                           area_nodes=15 if "area" in terms else 0,
                                                           association_hidden=hidden)
    outcomes = [["y", "z"].index(name) for name in (association or ("y",))]
    b = torch.randn(data.num_subjects, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def eta(i, t):  # at one time t, or at several (then times on the first axis)
        times = torch.as_tensor(np.atleast_1d(t), dtype=torch.float64)[None]
        view = replace(data.subset([i]), time_features=schema.time_basis.transform(times))
        return model.eta(b[i:i + 1], view)[0, :, outcomes].squeeze(0)

    def log_hazard(i, t):  # the hazard written out from the model's pieces, at one time
        value = {"value": eta(i, t), "slope": (eta(i, t + 1e-5) - eta(i, t - 1e-5)) / 2e-5}
        if "area" in terms:
            x, w = np.polynomial.legendre.leggauss(20)  # 20 nodes on [0, t], exact for eta of degree < 40 in s
            value["area"] = torch.as_tensor(w * t / 2, dtype=torch.float64) @ eta(i, t / 2 * (x + 1))
        association = torch.stack([value[term] for term in terms], -1).flatten() @ model.event_association.T
        if hidden:
            association = association + model.association_net(value["value"])
        base = model.baseline_intercept + model.baseline_log_time * math.log(t)
        base = base + model.baseline_net(torch.tensor([[math.log(t)]], dtype=torch.float64))[0]
        return base + data.covariates[i] @ model.event_covariates.T + association

    expected = []
    with torch.no_grad():
        for i in range(data.num_subjects):
            cumulative = sum(quad(lambda t: float(log_hazard(i, t)[c].exp()), entry[i], time[i], epsabs=1e-12)[0]
                             for c in range(num_causes))
            event = float(log_hazard(i, time[i])[status[i] - 1]) if status[i] > 0 else 0.0
            expected.append(event - cumulative)
        got = model.subject_log_likelihood(b, data)
    assert status.min() == 0 and status.max() > 0 and (entry > 0).any()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)  # quadrature error only


def test_an_absurd_draw_of_b_gives_a_finite_loss_and_gradient_in_float32():
    """A draw of b far in the tails (as early in a fit) once overflowed exp(log h) in float32: NaN loss.
    Here the hazard's linear predictor is pushed to about 200 through the intercept."""
    model, schema, data, *_ = small_joint(terms=("value", "slope"))
    model, data = model.float(), data.to(dtype=torch.float32)
    with torch.no_grad():
        model.baseline_intercept.add_(200.0)
    b = torch.full((data.num_subjects, 2), 3.0, requires_grad=True)
    log_likelihood = model.subject_log_likelihood(b, data).sum()
    log_likelihood.backward()
    assert torch.isfinite(log_likelihood) and log_likelihood < -1e7  # finite, and still a terrible fit
    assert torch.isfinite(b.grad).all() and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                 if p.grad is not None)
    assert model.log_hazard(b, data).max() <= joint.MAX_LOG_HAZARD


def test_joint_data_moves_and_batches_every_tensor():
    """to(device) and minibatch go through tensor_fields: a tensor of JointData missing there (the quadrature
    nodes, say) would stay on the CPU in a fit with device='cuda'.  The 'meta' device stands in for a GPU."""
    _, _, data, *_ = small_joint()
    tensors = {f.name for f in dataclasses.fields(data) if isinstance(getattr(data, f.name), torch.Tensor)}
    assert {"node_times", "node_weights", "node_features", "node_slopes", "event_status"} <= tensors
    assert tensors - {"encoder_mask"} <= set(type(data).tensor_fields)
    moved = data.to(device="meta")
    assert all(getattr(moved, name).device.type == "meta" for name in tensors)
    assert moved.device.type == "meta"
    batch = data.minibatch(torch.tensor([2, 0]))
    for name in tensors - {"encoder_mask"}:
        assert torch.equal(getattr(batch, name), getattr(data, name)[[2, 0]]), name


def test_the_trace_has_the_off_trace_log_likelihood():
    model, _, data, *_ = small_joint(2)
    b = torch.randn(data.num_subjects, 1, 2, dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model, data={"b": b})).get_trace(data)
    trace.compute_log_prob()
    sites = [name for name in trace.nodes if name.startswith("y_") or name == "event"]
    assert "event" in sites
    from_trace = sum(trace.nodes[name]["log_prob"].sum(-1) for name in sites)  # (N,)
    np.testing.assert_allclose(from_trace.detach().numpy(),
                               observed_log_likelihood(model, b.squeeze(-2), data).detach().numpy(), rtol=1e-10)


def test_the_landmark_encoder_input_hides_the_future():
    sim = simulate_joint(n_subjects=30, seed=2)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2)
    est.fit(sim.data, events=sim.events, event_time="time", event_status="status", max_epochs=2, progress=False)
    subject = sim.events[(sim.events.status == 1) & (sim.events.time > 1.5)].iloc[0]
    history = sim.data[(sim.data.id == subject.id) & (sim.data.time <= 1.0)]
    landmark = est.landmark_data(history, 1.0)
    assert landmark.event_status.tolist() == [0] and landmark.event_time.tolist() == [1.0]
    known = with_events(est.transform(history), est.schema_.time_basis, [0.0], [subject.time], [1])
    # the encoder reads the event record (so the landmark must hide it), and the landmark record is all it gets
    assert not torch.allclose(est.guide_.posterior(known).loc, est.guide_.posterior(landmark).loc)
    censored_late = with_events(est.transform(history), est.schema_.time_basis, [0.0], [1.0], [0])
    assert torch.equal(est.guide_.posterior(censored_late).loc, est.guide_.posterior(landmark).loc)
    with pytest.raises(DataError, match="after the landmark"):
        est.landmark_data(sim.data[sim.data.id == subject.id], 1.0)
    with pytest.raises(ConfigError, match="event records"):  # a frame without event records reaches no encoder
        est.fitted_values(history, num_samples=10)
    for call in (lambda: est.predict(history, [2.0]), lambda: est.kfold(sim.data)):
        with pytest.raises(ConfigError, match="JointMixedModel"):
            call()
    assert est.fitted_values(num_samples=10).shape[0] == len(sim.data)  # the training data carry their records


@pytest.mark.parametrize("elbo", ["auto", "meanfield", "trace", "iwae"])
def test_svi_fits_the_event_site(elbo):
    sim = simulate_joint(n_subjects=30, seed=3)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2)
    est.fit(sim.data, events=sim.events, event_time="time", event_status="status", max_epochs=3, progress=False,
            elbo=elbo, batch_size=16)
    after = est.event_coefficients()
    assert np.isfinite(est.result_.train_loss).all() and len(est.result_.train_loss) == 3
    assert est.result_.config["elbo"] in (["meanfield", "iwae"] if elbo == "auto" else [elbo])
    assert (after["alpha"] != 0).all()  # the event parameters get gradients through the ELBO (they start at 0)
    assert list(after.columns) == ["alpha", "gamma[x]", "log_scale", "log_time"]


# a 40-epoch fit of 60 subjects leaves a few heavy-tailed importance weights; this test is about the event term
@pytest.mark.filterwarnings("ignore:.*Pareto k-hat:pyro_dgmm.diagnostics.InferenceWarning")
def test_standard_errors_of_the_event_submodel_come_from_the_marginal_likelihood():
    """The marginal likelihood holds the event term (else its curvature in alpha is 0 and the SE infinite)."""
    sim = simulate_joint(n_subjects=60, seed=6)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2,
                          model_options={"fixed_hidden": (), "random_hidden": ()})
    est.fit(sim.data, events=sim.events, event_time="time", event_status="status", max_epochs=40, progress=False)
    table = est.standard_errors(["event_association", "baseline_log_time"], num_samples=200).summary()
    se = table.loc[["event_association", "baseline_log_time"], "se"].to_numpy()
    assert np.isfinite(se).all() and (se > 0.02).all() and (se < 1.0).all()
    # the facade's table: every coefficient of event_coefficients, the baseline free beside the association
    event = est.event_standard_errors(num_samples=200)
    coefficients = est.event_coefficients()
    assert event.term.tolist() == list(coefficients.columns) and (event.cause == "event").all()
    np.testing.assert_allclose(event.estimate, coefficients.iloc[0].to_numpy(), rtol=1e-6)
    joint = est.standard_errors(list(joint_estimator.EVENT_PARAMETERS), num_samples=200).summary()
    np.testing.assert_allclose(event.se, joint.loc[["event_association", "event_covariates", "baseline_intercept",
                                                    "baseline_log_time"], "se"], rtol=1e-6)
    assert (event.lower < event.estimate).all() and (event.estimate < event.upper).all()
    alpha = event.set_index("term").loc["alpha", "se"]
    assert alpha > se[0]  # with the baseline hazard free the association is less certain


@pytest.mark.filterwarnings("ignore:.*Pareto k-hat:pyro_dgmm.diagnostics.InferenceWarning")
def test_refine_moves_the_event_coefficients_to_the_marginal_likelihood_maximum():
    """refine=True moves the event coefficients with the linear parts: the same SVI fit, refined, has a higher
    importance-sampled marginal likelihood, and a second maximisation from there finds no step to take."""
    sim = simulate_joint(n_subjects=60, seed=6)
    fits = {}
    for refine in (False, True):
        est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"],
                              latent_dim=2, time_basis="poly(2)",  # as written (poly(3): 2nd pass +2.1 nats, open)
                              model_options={"fixed_hidden": (), "random_hidden": ()})
        fits[refine] = est.fit(sim.data, events=sim.events, event_time="time", event_status="status",
                               max_epochs=20, progress=False, refine=refine, seed=1)
    refinement = fits[True].result_.refinement
    assert fits[False].result_.refinement is None
    assert {"event_association", "baseline_log_time", "random_effects.linear_coefficients.weight"} <= set(
        refinement["parameters"])
    assert refinement["converged"] and refinement["log_likelihood_after"] > refinement["log_likelihood_before"]
    moved = fits[True].event_coefficients().iloc[0] - fits[False].event_coefficients().iloc[0]
    assert (moved.abs() > 1e-4).all(), moved
    refined = fits[True]
    again = wald.maximize_marginal_likelihood(refined.model_, refined.guide_, refined._training_data("test"),
                                              ["event_association", "baseline_intercept", "baseline_log_time"],
                                              include_dispersion=False, num_samples=500, seed=0)
    assert again.log_likelihood_after - again.log_likelihood_before < 0.05


def test_an_association_at_zero_does_not_pass_for_a_closed_form_likelihood():
    """With alpha exactly 0 the event term does not depend on b, so the log joint is quadratic at that point;
    but not as alpha moves, so a refinement or SE that moves alpha must not use the closed form."""
    sim = simulate_joint(n_subjects=20, seed=2)
    schema = DataSchema.fit(sim.data, id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"],
                            time_basis="poly(1)")
    events = sim.events.set_index("id").loc[schema.transform(sim.data).ids]
    data = with_events(schema.transform(sim.data), schema.time_basis, np.zeros(20), events["time"], events["status"])
    torch.manual_seed(0)
    model = JointModel.from_schema(schema, latent_dim=2, num_causes=1, fixed_hidden=(), random_hidden=())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.event_association.zero_()
    guide = joint.JointGuide.from_schema(schema, latent_dim=2, num_causes=1, time_scale=float(events["time"].mean()))
    assert marginal.closed_form_applies(model, guide, data)
    assert marginal.closed_form_applies(model, guide, data, ["fixed_effects.intercept"])
    assert not marginal.closed_form_applies(model, guide, data, ["event_association"])


def events_frame():
    sim = simulate_joint(n_subjects=8, seed=4)
    return sim.data, sim.events


@pytest.mark.parametrize("edit, message", [
    (lambda df, ev: (df, ev[ev.id != 3]), "subject 3 has visits but no row"),
    (lambda df, ev: (df[df.id != 3], ev), "subject 3 is in the events frame but has no visits"),
    (lambda df, ev: (df, ev.assign(time=np.where(ev.id == 2, -1.0, ev.time))), "finite times >= 0; subject 2"),
    (lambda df, ev: (df, ev.assign(status=np.where(ev.id == 5, 7, ev.status))), "status 7 for subject 5"),
    (lambda df, ev: (df, pd.concat([ev, ev.iloc[:1]])), "subject 0 has more than one row"),
    (lambda df, ev: (df, ev.drop(columns="status")), "no column 'status'"),
])
def test_bad_event_records_are_named(edit, message):
    df, ev = edit(*events_frame())
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2)
    with pytest.raises(DataError, match=message):
        est.fit(df, events=ev, event_time="time", event_status="status", max_epochs=1, progress=False)


def test_a_visit_after_the_event_is_named():
    df, ev = events_frame()
    late = df[df.id == 1].iloc[[-1]].assign(time=float(ev.time[ev.id == 1].iloc[0]) + 0.5)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2)
    with pytest.raises(DataError, match="subject 1 has a visit at time="):
        est.fit(pd.concat([df, late]), events=ev, event_time="time", event_status="status", max_epochs=1,
                progress=False)
    with pytest.raises(ConfigError, match="events="):
        est.fit(df, max_epochs=1, progress=False)


def test_competing_risk_predictions_are_probabilities_that_sum_to_one(monkeypatch):
    sim = simulate_joint(n_subjects=40, seed=5)
    events = sim.events.assign(status=sim.events.status * np.where(sim.events.id % 3 == 0, 1, 2))
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2)
    est.fit(sim.data, events=events, event_time="time", event_status="status",
            event_causes={1: "transplant", 2: "death"}, max_epochs=20, progress=False)
    history = sim.data[sim.data.id.isin([0, 1]) & (sim.data.time <= 2.0)]
    prediction = est.predict_events(history, landmark=2.0, horizons=[6.0, 3.0, 4.0, 2.5], num_samples=200, seed=0)
    pred = prediction.events
    assert set(pred.cause) == {"transplant", "death", "event-free"}
    assert pred.probability.between(0, 1).all() and (pred.lower <= pred.probability).all()
    assert (pred.probability <= pred.upper).all()
    for (subject, cause), rows in pred.groupby(["id", "cause"]):
        values = rows.sort_values("horizon").probability.to_numpy()
        assert (np.diff(values) >= 0).all() if cause != "event-free" else (np.diff(values) <= 0).all()
    totals = pred.groupby(["id", "horizon"]).probability.sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0, atol=1e-4)
    assert sorted(pred.horizon.unique()) == [2.5, 3.0, 4.0, 6.0]
    curve = prediction.trajectory[prediction.trajectory.id == 0]
    assert (curve["lower"] <= curve["mean"]).all() and (curve["mean"] <= curve["upper"]).all()
    figure = plot_event_prediction(prediction, 0, id_col="id", time_col="time")
    assert [line.get_label() for line in figure.axes[1].get_lines()][:2] == ["transplant", "death"]
    with pytest.raises(DataError, match="subject 99"):
        plot_event_prediction(prediction, 99, id_col="id", time_col="time")
    with warnings.catch_warnings():  # a 20-epoch fit is not at a maximum: only the table's layout is checked here
        warnings.simplefilter("ignore", InferenceWarning)
        table = est.event_standard_errors(num_samples=50).set_index(["cause", "term"])
    coefficients = est.event_coefficients().stack()
    np.testing.assert_allclose(table.estimate.loc[coefficients.index], coefficients, rtol=1e-6)
    assert len(table) == len(coefficients) == 8
    monkeypatch.setattr(joint_estimator, "PREDICTION_CELLS", 1)  # one subject per chunk: the same numbers
    chunked = est.predict_events(history, landmark=2.0, horizons=[6.0, 3.0, 4.0, 2.5], num_samples=200, seed=0)
    pd.testing.assert_frame_equal(chunked.events, pred)


def test_a_saved_joint_model_loads_and_predicts_as_before(tmp_path):
    """Saved, loaded, saved again: the same coefficients, the same predictions with the same seed, and the
    settings of the event submodel (causes, slope term, baseline network, quadrature) come back."""
    sim = simulate_joint(n_subjects=30, seed=7)
    events = sim.events.assign(status=sim.events.status * np.where(sim.events.id % 2 == 0, 1, 2), entry=0.0)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2,
                          association_terms=("value", "slope"), baseline_hidden=(3,), quadrature_nodes=9)
    est.fit(sim.data, events=events, event_time="time", event_status="status", entry_time="entry",
            event_causes={1: "transplant", 2: "death"}, max_epochs=3, progress=False)
    history = sim.data[sim.data.id.isin([0, 1]) & (sim.data.time <= 1.0)]

    def predicted(model):
        return model.predict_events(history, landmark=1.0, horizons=[2.0, 4.0], num_samples=40, seed=3)

    est.save(tmp_path / "a.pt")
    loaded = JointMixedModel.load(tmp_path / "a.pt")
    loaded.save(tmp_path / "b.pt")
    again = JointMixedModel.load(tmp_path / "b.pt")
    first = predicted(est)
    assert first.events.probability.gt(0).all()  # a real prediction, so equality below means something
    for model in (loaded, again):
        pd.testing.assert_frame_equal(model.event_coefficients(), est.event_coefficients())
        pd.testing.assert_frame_equal(predicted(model).events, first.events)
        pd.testing.assert_frame_equal(predicted(model).trajectory, first.trajectory)
        assert model.causes == ["transplant", "death"] and model.event_spec_ == est.event_spec_
        assert (model.association_terms, model.baseline_hidden, model.quadrature_nodes) == (("value", "slope"), (3,), 9)
    assert saved_facade(tmp_path / "b.pt") == "JointMixedModel"
    with pytest.raises(SaveFileError, match="holds a JointMixedModel.*JointMixedModel.load"):
        DeepMixedModel.load(tmp_path / "a.pt")


def test_load_pbc_events_is_one_row_per_patient():
    visits, events = load_pbc(), load_pbc_events()
    assert len(events) == 312 == visits["id"].nunique()
    assert set(events["status"]) == {0, 1, 2}
    last = visits.groupby("id")["years"].max()
    assert (last.loc[events["id"]].to_numpy() <= events["futime_years"].to_numpy()).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pyro_dgmm.errors.LatentDimensionWarning")  # the truth has 2 directions
def test_the_association_is_recovered_on_500_simulated_subjects():
    sim = simulate_joint(n_subjects=500, seed=1)
    pyro.set_rng_seed(0)
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"], latent_dim=2,
                          model_options={"fixed_hidden": (), "random_hidden": ()})
    est.fit(sim.data, events=sim.events, event_time="time", event_status="status", progress=False, seed=0)
    table = est.event_coefficients()
    assert abs(table["alpha"].iloc[0] - sim.params["alpha"]) < 0.15
    assert abs(table["log_time"].iloc[0] - (sim.params["weibull_shape"] - 1)) < 0.25


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pyro_dgmm.errors.LatentDimensionWarning")
@pytest.mark.filterwarnings("ignore::pyro_dgmm.diagnostics.InferenceWarning")  # 2 of 312 subjects with Pareto k > 0.7
def test_pbc_association_lies_in_the_jmbayes2_interval():
    """PBC, log bilirubin (random intercept and slope, year * sex), composite event, sex in the hazard:
    JMbayes2's 95% interval for the current-value association is 1.08 to 1.41 (posterior SD about 0.085)."""
    est = JointMixedModel(id_col="id", time_col="years", outcomes={"log_bili": "gaussian"}, covariates=["sex"],
                          latent_dim=2,
                          model_options={"fixed_hidden": (), "random_hidden": (), "covariate_time": True})
    est.fit(load_pbc(), events=load_pbc_events(), event_time="futime_years", event_status="status",
            event_causes={1: "event", 2: "event"}, progress=False, seed=0)
    alpha = est.event_coefficients()["alpha"].iloc[0]
    assert 1.08 < alpha < 1.41
    # with the baseline hazard and sex effect free too (held fixed, the SE is conditional on them: about 0.05)
    event = ["event_association", "event_covariates", "baseline_intercept", "baseline_log_time"]
    se = est.standard_errors(event).summary().loc["event_association", "se"]
    assert 0.06 < se < 0.12


def test_evaluate_events_scores_the_subjects_at_risk_from_their_history_only():
    from pyro_dgmm.event_evaluation import landmark_scores

    sim = simulate_joint(n_subjects=60, seed=7)
    visits = sim.data.assign(z=sim.data["y"] + 0.5 * np.sin(sim.data["time"]))
    est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian", "z": "gaussian"},
                          covariates=["x"], latent_dim=2, association=["y", "z"], association_terms=("value", "slope"),
                          association_hidden=(4,))
    est.fit(visits, events=sim.events, event_time="time", event_status="status", max_epochs=3, progress=False)
    assert list(est.event_coefficients().columns[:4]) == ["alpha[y]", "alpha_slope[y]", "alpha[z]", "alpha_slope[z]"]
    assert est.model_.association_net[-1].weight.abs().sum() > 0  # the neural association is fitted too
    result = est.evaluate_events(visits, sim.events, landmark=2.0, horizon=3.0, grid=3, num_samples=30, seed=0)
    at_risk = sim.events[sim.events.time > 2.0]
    assert result.scores["at_risk"] == len(at_risk) and len(result.risk) == 3 * len(at_risk)
    wide = result.risk.pivot(index="id", columns="horizon", values="risk")
    assert (np.diff(wide.to_numpy(), axis=1) >= 0).all()  # cumulative risk, horizon by horizon
    subjects = result.risk.drop_duplicates("id").set_index("id").loc[wide.index]
    expected = landmark_scores(subjects["time"].to_numpy(), subjects["status"].to_numpy(), wide.to_numpy(),
                               wide.columns.to_numpy(), landmark=2.0)
    assert result.scores == pytest.approx(expected)
    assert result.calibration.predicted == pytest.approx(wide.to_numpy()[:, -1])
    # the visits after the landmark cannot change a score
    future = visits.assign(y=np.where(visits.time > 2.0, visits.y + 5.0, visits.y))
    again = est.evaluate_events(future, sim.events, landmark=2.0, horizon=3.0, grid=3, num_samples=30, seed=0)
    assert again.scores == result.scores
    with pytest.raises(ConfigError, match="cause must be one of"):
        est.evaluate_events(visits, sim.events, landmark=2.0, horizon=3.0, cause="death")
    late = at_risk.id[at_risk.time > 3.5].iloc[0]  # visits at 3 and later remain
    no_history = visits[~((visits.id == late) & (visits.time <= 2.0))]
    with pytest.raises(DataError, match=f"subject {late} is at risk at the landmark 2"):
        est.evaluate_events(no_history, sim.events, landmark=2.0, horizon=3.0)
    with pytest.raises(ConfigError, match="association must name one or more distinct outcomes"):
        JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, association=["y", "w"])


def test_cross_validation_scores_every_fold_on_subjects_it_did_not_fit():
    from pyro_dgmm.event_evaluation import subject_folds
    from pyro_dgmm.joint_estimator import cross_validate_events

    sim = simulate_joint(n_subjects=60, seed=8)
    fitted = []

    def make():
        est = JointMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["x"],
                              latent_dim=2, association_terms=("value", "area"), quadrature_nodes=7)
        fitted.append(est)
        return est

    table = cross_validate_events(make, sim.data, sim.events, landmark=2.0, horizon=3.0, k=2, seed=1, grid=3,
                                  num_samples=30, event_time="time", event_status="status", max_epochs=2,
                                  progress=False)
    assert table["fold"].tolist() == [0, 1, "mean", "pooled"]
    folds = subject_folds(sim.events["id"].to_numpy(), 2, seed=1)
    trained = [est for est in fitted if est.model_ is not None]
    for fold, est in enumerate(trained):  # each fold's model saw the other fold's subjects only
        assert set(est.data_.ids) == set(sim.events["id"][folds != fold])
    assert table.loc[2, "auc"] == pytest.approx(table.loc[:1, "auc"].mean())
    assert table.loc[3, "at_risk"] == (sim.events.time > 2.0).sum()
    assert list(trained[0].event_coefficients().columns[:2]) == ["alpha", "alpha_area"]
