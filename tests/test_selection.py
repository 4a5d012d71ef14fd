"""Restarts of a fit that leaves structure in its residuals, and the statistic
they read (pyro_dgmm.selection)."""
import math
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_dgmm import ConfigError, DeepMixedModel, FitConfig
from pyro_dgmm.errors import ResidualStructureWarning
from pyro_dgmm.results import FitResult
from pyro_dgmm import selection
from pyro_dgmm.selection import (RESTART_SEED_STEP, Candidate, fit_with_restarts, lag1_autocorrelation,
                                 residual_autocorrelation, structure_warning)


# ------------------------------------------------------------ the statistic
def _ar1(rng, n: int, t: int, rho: float) -> np.ndarray:
    e = rng.standard_normal((n, t))
    x = np.empty((n, t))
    x[:, 0] = e[:, 0]
    for j in range(1, t):
        x[:, j] = rho * x[:, j - 1] + math.sqrt(1 - rho ** 2) * e[:, j]
    return x


def test_lag1_autocorrelation_is_the_documented_sum_over_observed_pairs():
    """Against the formula written out: per outcome, the mean product of
    residuals at consecutive visits both observed over the mean square of the
    observed ones; the mean over outcomes; values at unobserved cells unused."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal((7, 6, 2))
    observed = rng.uniform(size=y.shape) < 0.7
    expected = []
    for k in range(2):
        r = np.where(observed[..., k], y[..., k], 0.0)
        both = observed[:, 1:, k] & observed[:, :-1, k]
        expected.append(((r[:, 1:] * r[:, :-1] * both).sum() / both.sum()) / ((r ** 2).sum() / observed[..., k].sum()))
    y[~observed] = np.nan
    value = lag1_autocorrelation(torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(observed))
    assert value == pytest.approx(np.mean(expected), rel=1e-6)


def test_lag1_autocorrelation_recovers_serial_correlation_and_is_zero_without():
    """AR(1) residuals with rho 0.5 (outcome a) and 0.3 (b) read as their mean
    0.4 (SE about 0.015 with 400 x 12 cells and 15% missing, which do not
    pull it towards 0); independent residuals read near 0; an outcome never
    observed at two consecutive visits is left out."""
    rng = np.random.default_rng(1)
    y = torch.as_tensor(np.stack([_ar1(rng, 400, 12, 0.5), _ar1(rng, 400, 12, 0.3)], -1))
    observed = torch.as_tensor(rng.uniform(size=y.shape) < 0.85)
    assert lag1_autocorrelation(y, observed) == pytest.approx(0.4, abs=0.04)
    assert abs(lag1_autocorrelation(torch.randn(400, 12, 2, generator=torch.Generator().manual_seed(2)),
                                    observed)) < 0.04
    alternate = observed.clone()
    alternate[:, 1::2, 1] = False  # outcome b: no consecutive pair
    assert lag1_autocorrelation(y, alternate) == pytest.approx(0.5, abs=0.04)
    assert math.isnan(lag1_autocorrelation(y, torch.zeros_like(observed)))


def test_residual_autocorrelation_is_negative_for_a_complete_fit_and_positive_for_a_lost_direction():
    """Random intercept and slope (simulate_linear, 200 x 10), the linear
    mixed model: with both random effects the residuals at the posterior
    means are negatively correlated within subjects (sigma^4 V^-1: -0.23
    here); with one direction, the other effect's shape is left in them
    (+0.29).  Computing it leaves torch's generator as it was."""
    from pyro_dgmm.datasets import simulate_linear

    sim = simulate_linear(n_subjects=200, n_visits=10, seed=4)
    values = {}
    for q in (1, 2):
        est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, covariates=["age", "group"],
                             time_basis="poly(1)", latent_dim=q, model_options=dict(fixed_hidden=(), random_hidden=()))
        est.fit(sim.data, progress=False, seed=0, restarts=0)
        state = torch.get_rng_state()
        values[q] = residual_autocorrelation(est.model_, est.guide_, est.data_)
        assert torch.equal(state, torch.get_rng_state())
    assert -0.4 < values[2] < -0.05
    assert values[1] > 0.1


# --------------------------------------------------------------- the rule
def _candidate(seed, loss, rho, *, converged=True, interrupted=False, active=1):
    result = FitResult(config={"seed": seed}, train_loss=[loss], validation_loss=[(3, loss)], best_epoch=3,
                       converged=converged, residual_autocorrelation=rho, interrupted=interrupted,
                       active_directions=active)
    return Candidate(2, f"model{seed}", f"guide{seed}", result, None, [])


def _scripted(outcomes: dict):
    """fit_once returning, per seed, the candidate in ``outcomes``, and recording the calls."""
    calls = []

    def fit_once(latent_dim, config):
        calls.append(config.seed)
        return outcomes[config.seed]
    return fit_once, calls


def test_a_fit_that_leaves_structure_is_refitted_until_one_does_not_and_the_best_is_kept():
    s1, s2 = 5 + RESTART_SEED_STEP, 5 + 2 * RESTART_SEED_STEP
    fit_once, calls = _scripted({5: _candidate(5, 17.3, 0.07), s1: _candidate(s1, 14.1, -0.09),
                                 s2: _candidate(s2, 13.0, -0.10)})
    kept = fit_with_restarts(fit_once, 2, FitConfig(seed=5))
    assert calls == [5, s1]  # the second fit is complete: no third
    assert kept.model == f"model{s1}"
    assert [s["seed"] for s in kept.result.starts] == [5, s1]
    assert [s["kept"] for s in kept.result.starts] == [False, True]
    assert kept.result.starts[0]["heldout_loss"] == 17.3


def test_restarts_stop_at_the_cap_and_keep_the_lowest_held_out_loss():
    seeds = [0, RESTART_SEED_STEP, 2 * RESTART_SEED_STEP]
    fit_once, calls = _scripted({s: _candidate(s, loss, 0.2) for s, loss in zip(seeds, [9.0, 8.0, 8.5])})
    kept = fit_with_restarts(fit_once, 2, FitConfig(restarts=2))
    assert calls == seeds and kept.model == f"model{seeds[1]}"
    with pytest.warns(ResidualStructureWarning, match=r"best by held-out loss of 3 fits from seeds \[0, 7919, 15838\]"):
        structure_warning(kept)


def _saturated(latent_dim, loss, warned):
    """A converged fit of ``latent_dim`` directions, all in use, holding back
    the fit's own 'all directions in use' warning."""
    result = FitResult(config={"seed": 0}, train_loss=[loss], validation_loss=[(3, loss)], best_epoch=3,
                       converged=True, residual_autocorrelation=0.08, active_directions=latent_dim)
    return Candidate(latent_dim, f"model{latent_dim}", "guide", result, None, [warned])


def _held_warning(message, category):
    return warnings.WarningMessage(message, category, "fit.py", 1)


def test_auto_keeps_a_saturated_fit_over_a_worse_larger_one_and_says_so(monkeypatch):
    """latent_dim='auto' fits 8 directions (all in use), then 16 (12 in use,
    worse held-out loss), and keeps 8.  The user is told what was tried
    instead of being told to try more directions or 'auto' (the kept fit's
    own warning), and the residual warning does not suggest a larger
    latent_dim either; result.latent_dim_search lists both fits."""
    from pyro_dgmm.errors import LatentDimensionWarning

    own = _held_warning(LatentDimensionWarning("all 8 latent directions are in use ...; try a larger latent_dim "
                                               "or latent_dim='auto'"), LatentDimensionWarning)
    other = _held_warning(UserWarning("something else the fit said"), UserWarning)
    eight = _saturated(8, 29.25, own)
    eight.warnings.append(other)
    sixteen = _saturated(16, 29.71, own)
    sixteen.result.active_directions = 12
    fits = {8: eight, 16: sixteen}
    kept = selection.choose_latent_dim(lambda latent_dim, config: fits[latent_dim], 8, FitConfig(restarts=0))
    assert kept is eight
    assert kept.result.latent_dim_search == [
        {"latent_dim": 8, "heldout_loss": 29.25, "active_directions": 8, "fits": 1, "kept": True},
        {"latent_dim": 16, "heldout_loss": 29.71, "active_directions": 12, "fits": 1, "kept": False}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selection.replay_warnings(kept)
        structure_warning(kept)
    messages = [str(w.message) for w in caught]
    assert "something else the fit said" in messages
    latent = [m for m in messages if "latent directions are in use;" in m]
    assert len(latent) == 1 and "try a larger latent_dim" not in " ".join(messages)
    assert "also fitted 16 (12 directions in use, held-out loss 29.71 against 29.25" in latent[0]
    assert "latent_dim=16 fits the larger model" in latent[0]
    residual = [m for m in messages if "positively correlated" in m]
    assert len(residual) == 1 and "the fit with 16 directions had a worse held-out loss" in residual[0]
    assert "a larger latent_dim, not another seed" not in residual[0]
    # a saturated fit that 'auto' did not try to grow (a given latent_dim) keeps its own advice
    alone = _saturated(8, 29.25, own)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selection.replay_warnings(alone)
        structure_warning(alone)
    messages = [str(w.message) for w in caught]
    assert any("try a larger latent_dim or latent_dim='auto'" in m for m in messages)
    assert any("a larger latent_dim, not another seed, may recover the shape" in m for m in messages)


@pytest.mark.parametrize("case", ["unconverged", "interrupted", "restarts=0", "checkpoint", "complete", "saturated"])
def test_no_restart_for_an_unconverged_interrupted_complete_saturated_or_checkpointed_fit(case, tmp_path):
    """No restart where another seed cannot help or was not asked for; the
    kept fit warns when its residuals keep structure, saying why nothing
    more was tried (a saturated fit: more directions, not another seed)."""
    first = _candidate(0, 9.0, -0.1 if case == "complete" else 0.2, converged=case not in ("unconverged", "interrupted"),
                       interrupted=case == "interrupted", active=2 if case == "saturated" else 1)
    fit_once, calls = _scripted({0: first, RESTART_SEED_STEP: _candidate(RESTART_SEED_STEP, 1.0, -0.1)})
    config = {"restarts=0": FitConfig(restarts=0),
              "checkpoint": FitConfig(checkpoint=str(tmp_path / "fit.ckpt"))}.get(case, FitConfig())
    assert fit_with_restarts(fit_once, 2, config).model == "model0" and calls == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if case in ("restarts=0", "checkpoint", "saturated"):
            reason = "a larger latent_dim, not another seed" if case == "saturated" else "restarts=0 or a checkpoint"
            with pytest.warns(ResidualStructureWarning, match=reason):
                structure_warning(first)
        else:  # unconverged (ConvergenceWarning says so), interrupted, complete: nothing to add
            structure_warning(first)


def test_restarts_setting_is_checked_and_the_fast_preset_has_none():
    with pytest.raises(ConfigError, match="restarts"):
        FitConfig(restarts=-1)
    assert FitConfig().restarts == 2 and FitConfig.from_preset("fast").restarts == 0


# ------------------------------------------------------- in the estimator
def _linear(**kwargs):
    return DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, covariates=["age"],
                          time_basis="poly(1)", latent_dim=2, **kwargs)


def test_estimator_keeps_the_restart_with_the_lower_held_out_loss_and_only_its_warnings(monkeypatch):
    """The first fit is declared to leave structure with a direction to spare
    (the rule is patched: a tiny fit converges on no schedule); the estimator refits from the next
    seed on the same held-out subjects, keeps the fit with the lower held-out
    loss as a whole (modules, result, dimension) and raises that fit's
    warnings once; summary lists both fits."""
    from common import tiny_frame

    monkeypatch.setattr(selection, "leaves_structure", lambda result: result.config["seed"] == 0)
    monkeypatch.setattr(selection, "has_spare_directions", lambda candidate: True)
    frame = tiny_frame(n_subjects=40, n_visits=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = _linear().fit(frame, max_epochs=6, progress=False, seed=0)
    starts = est.result_.starts
    assert [s["seed"] for s in starts] == [0, RESTART_SEED_STEP]
    losses = [s["heldout_loss"] for s in starts]
    kept = int(np.argmin(losses))
    assert [s["kept"] for s in starts] == [k == kept for k in range(2)]
    assert est.result_.config["seed"] == starts[kept]["seed"]
    assert selection.selection_loss(est.result_) == losses[kept]
    assert all(math.isfinite(s["residual_autocorrelation"]) for s in starts)
    # the kept modules are the kept fit's: refitting that seed alone gives the same parameters
    monkeypatch.undo()
    alone = _linear().fit(frame, max_epochs=6, progress=False, seed=0, restarts=0)
    same = kept == 0
    close = [torch.allclose(a, b) for a, b in zip(est.model_.state_dict().values(), alone.model_.state_dict().values())]
    assert all(close) == same
    convergence = [w for w in caught if "did not converge" in str(w.message)]
    assert len(convergence) == 1  # the kept fit's, once (each 6-epoch fit stops during annealing)


def test_every_fit_records_its_residual_autocorrelation_and_its_start():
    from common import tiny_frame

    est = _linear().fit(tiny_frame(n_subjects=30, n_visits=6), max_epochs=4, progress=False, seed=1)
    assert est.result_.starts == [{"seed": 1, "heldout_loss": est.result_.starts[0]["heldout_loss"],
                                   "residual_autocorrelation": est.result_.residual_autocorrelation, "kept": True}]
    assert -1 < est.result_.residual_autocorrelation < 1


@pytest.mark.slow
def test_a_collapsed_fit_is_refitted_and_recovers_the_lost_direction():
    """A random level and random sine and cosine amplitudes (period 4) for
    300 subjects x 12 visits: from seed 0 the default fit converges with two
    active directions and RMSE 0.77 against the true curves, and its
    residuals are positively correlated at lag 1 (0.08); the restart from the
    next seed finds all three (RMSE 0.29) and is kept, without a warning
    (benchmarks/default_selection.py, truth 'oscillation', data seed 2).
    Without learned time functions (``time_functions=0``): with the default
    race the fit keeps them here and finds all three directions at once."""
    rng = np.random.default_rng([19, 10, 2])
    n, j = 300, 12
    grid = np.linspace(0, 10, j)
    jitter = rng.uniform(-0.2, 0.2, (n, j))
    jitter[:, 0] = 0
    t = np.sort(np.clip(grid + jitter, 0, 10), axis=1)
    b = rng.standard_normal((n, 3)) * np.array([1.0, 0.8, 0.8])
    mean = 1 + 0.03 * t + b[:, :1] + b[:, 1:2] * np.sin(np.pi * t / 2) + b[:, 2:3] * np.cos(np.pi * t / 2)
    y = mean + 0.5 * rng.standard_normal(mean.shape)
    frame = pd.DataFrame({"id": np.repeat(np.arange(n), j), "time": t.ravel(), "y": y.ravel()})
    for options in ({"time_functions": 0}, {}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResidualStructureWarning)
            est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"},
                                 model_options=options).fit(frame, progress=False)
        starts = est.result_.starts
        if options:
            assert len(starts) == 2 and starts[0]["residual_autocorrelation"] > 0 and starts[1]["kept"]
        else:
            assert len(starts) == 1 and est.time_functions_ == selection.LEARNED_TIME_FUNCTIONS
        assert est.result_.active_directions == 3
        fitted = est.fitted_values()["y_fitted"].to_numpy()
        assert np.sqrt(np.mean((fitted - mean.ravel()) ** 2)) < 0.35


# ------------------------------------------------- the time-function race
def test_race_loss_is_the_mean_over_the_last_half_of_the_race():
    result = FitResult(config={}, validation_loss=[(1, 9.0), (3, 8.0), (5, 6.0), (7, 5.0), (9, 4.0), (11, 1.0)],
                       train_loss=[10.0 - e for e in range(12)])
    assert selection.race_loss(result, 10) == pytest.approx((6.0 + 5.0 + 4.0) / 3)  # epochs 5-9 of 0-9
    unheld = FitResult(config={}, train_loss=[10.0 - e for e in range(12)])
    assert selection.race_loss(unheld, 4) == pytest.approx((8.0 + 7.0) / 2)  # nobody held out: training loss
    assert selection.race_loss(FitResult(config={}), 4) == math.inf


def _racer(losses: dict, *, holds: bool = True, interrupted: int | None = None, ends_early: int | None = None):
    """fit_once for TimeFunctionRace: a fit with M learned time functions has
    held-out loss ``losses[M]`` over the race; it is held at the pause (if
    ``holds``, unless it is ``interrupted`` or ``ends_early``) and continued
    when given the held pause; calls are recorded."""
    calls = []

    def fit_once(latent_dim, config, time_functions=None, pause=None):
        continued = pause is not None and pause.held
        calls.append((time_functions, "continue" if continued else "pause" if pause is not None else "fit"))
        if continued:
            pause.state = None
        elif pause is not None and holds and time_functions not in (interrupted, ends_early):
            pause.state = {"held": True}
        result = FitResult(config={"seed": config.seed}, validation_loss=[(e, losses[time_functions])
                                                                          for e in range(1, 12, 2)],
                           interrupted=time_functions == interrupted)
        return Candidate(latent_dim, f"model{time_functions}", "guide", result, None, [])
    return fit_once, calls


def test_the_race_continues_the_structure_with_the_lower_held_out_loss_and_keeps_it():
    fit_once, calls = _racer({0: 9.5, 4: 9.0})
    race = selection.TimeFunctionRace(fit_once)
    kept = race(3, FitConfig(race_epochs=10, parallel_race=False))
    assert calls == [(0, "pause"), (4, "pause"), (4, "continue")]
    assert kept.model == "model4" and race.chosen == 4
    assert kept.result.time_functions_race == {
        "epochs": 10, "chosen": 4,
        "candidates": [{"time_functions": 0, "heldout_loss": 9.5}, {"time_functions": 4, "heldout_loss": 9.0}]}
    later = race(6, FitConfig(race_epochs=10, seed=3, parallel_race=False))  # a restart or more directions: the chosen structure
    assert calls[-1] == (4, "fit") and len(calls) == 4
    assert later.result.time_functions_race == kept.result.time_functions_race  # the race that chose it
    fit_once, calls = _racer({0: 9.0, 4: 9.5})
    assert selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10, parallel_race=False)).model == "model0"
    assert calls == [(0, "pause"), (4, "pause"), (0, "continue")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the race forks on Linux only")
def test_in_parallel_the_learned_structure_races_in_a_child_and_continues_here(monkeypatch):
    """The calls this process makes: the plain structure to the pause, then
    the learned one continued from the state the child sent back (its race
    fit ran in the child, so it is not recorded here).  The fork is forced:
    whether this test process has a free core and no other thread depends
    on the tests before it (fork_helps is tested in tests/test_forked.py)."""
    monkeypatch.setattr(selection, "fork_helps", lambda device: True)
    fit_once, calls = _racer({0: 9.5, 4: 9.0})
    kept = selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10))
    assert calls == [(0, "pause"), (4, "continue")] and kept.model == "model4"
    assert kept.result.time_functions_race["candidates"][1] == {"time_functions": 4, "heldout_loss": 9.0}
    fit_once, calls = _racer({0: 9.5, 4: 9.0}, ends_early=4)  # the child's fit ended before the pause and won
    kept = selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10))
    assert calls == [(0, "pause")] and kept.model == "model4" and kept.result.config["progress"]
    fit_once, calls = _racer({0: 9.5, 4: 9.0}, interrupted=4)  # Ctrl-C stopped the child's fit: returned as is
    kept = selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10))
    assert calls == [(0, "pause")] and kept.model == "model4" and kept.result.interrupted
    monkeypatch.setattr(selection.ForkedCall, "result", lambda self: None)  # a child that failed: fitted here
    fit_once, calls = _racer({0: 9.5, 4: 9.0})
    assert selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10)).model == "model4"
    assert calls == [(0, "pause"), (4, "pause"), (4, "continue")]


@pytest.mark.parametrize("learned_loss", [9.0, 9.9])
def test_a_structure_that_ends_before_the_pause_is_compared_and_kept_as_it_is(learned_loss):
    """The learned structure converged before the pause (a short trend
    window): its losses so far still race; if it wins it is kept as it
    ended, else the held plain fit continues."""
    fit_once, calls = _racer({0: 9.5, 4: learned_loss}, ends_early=4)
    kept = selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10, parallel_race=False))
    if learned_loss < 9.5:
        assert calls == [(0, "pause"), (4, "pause")] and kept.model == "model4"
    else:
        assert calls == [(0, "pause"), (4, "pause"), (0, "continue")] and kept.model == "model0"
    assert kept.result.time_functions_race["chosen"] == (4 if learned_loss < 9.5 else 0)


@pytest.mark.parametrize("case", ["short", "interrupted first", "interrupted second"])
def test_no_race_for_a_fit_shorter_than_the_race_or_stopped_by_ctrl_c(case):
    """A first fit that ends before the pause is kept as it is, without a
    second structure (nothing to compare); a fit Ctrl-C stopped is returned
    at once, no other fit started."""
    fit_once, calls = _racer({0: 9.5, 4: 9.0}, holds=case != "short",
                             interrupted={"interrupted first": 0, "interrupted second": 4}.get(case))
    kept = selection.TimeFunctionRace(fit_once)(3, FitConfig(race_epochs=10, parallel_race=False))
    expected = {"short": [(0, "pause")], "interrupted first": [(0, "pause")],
                "interrupted second": [(0, "pause"), (4, "pause")]}[case]
    assert calls == expected and kept.result.time_functions_race is None
    assert kept.model == ("model4" if case == "interrupted second" else "model0")


def test_race_setting_is_checked_and_the_fast_preset_has_none():
    with pytest.raises(ConfigError, match="race_epochs"):
        FitConfig(race_epochs=-1)
    with pytest.raises(ConfigError, match="parallel_race"):
        FitConfig(parallel_race="yes")
    assert FitConfig().race_epochs > 0 and FitConfig.from_preset("fast").race_epochs == 0


def test_the_estimator_races_only_a_dgmm_whose_time_functions_are_left_to_it(tmp_path):
    from pyro_dgmm.model import MixedModel

    class Variant(MixedModel):
        pass

    def races(model_class=None, model_options=None, missing="mask", **config):
        est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"},
                             **({"model_class": model_class} if model_class else {}), model_options=model_options)
        est.missing = missing
        return est._races_time_functions(FitConfig(**config))

    assert races() and races(model_options={"time_functions": "auto"})
    assert not races(model_options={"time_functions": 0})
    assert not races(model_options={"time_functions": 4})
    assert not races(model_options={"fixed_hidden": (), "random_hidden": ()})  # the linear mixed model
    assert not races(model_class=Variant)
    assert not races(race_epochs=0) and not races(**FitConfig.from_preset("fast").__dict__)
    assert not races(checkpoint=str(tmp_path / "fit.ckpt"))
    assert not races(missing="impute")


@pytest.mark.filterwarnings("ignore::pyro_dgmm.diagnostics.InferenceWarning")  # 30 epochs, 50 draws: some k-hat > 0.7
def test_a_raced_fit_keeps_the_chosen_structure_through_summary_save_and_load(tmp_path, monkeypatch):
    """A short race on a small data set: both structures trained to the
    pause, the one with the lower held-out loss over its second half kept
    (its modules have the learned path exactly when it was chosen), and the
    choice survives save/load (same fitted values) and K-fold's refits."""
    from common import tiny_frame

    frame = tiny_frame(n_subjects=40, n_visits=6)
    children = []  # whether each forked race fit sent its value back

    class RecordingCall(selection.ForkedCall):
        def result(self):
            value = super().result()
            children.append(value is not None)
            return value

    if sys.platform.startswith("linux"):  # the default's parallel race, forced (see the test above)
        monkeypatch.setattr(selection, "fork_helps", lambda device: True)
        monkeypatch.setattr(selection, "ForkedCall", RecordingCall)
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, covariates=["age"], latent_dim=2)
    est.fit(frame, max_epochs=30, race_epochs=20, progress=False, seed=0, restarts=0)
    assert children == ([True] if sys.platform.startswith("linux") else [])
    race = est.result_.time_functions_race
    losses = {c["time_functions"]: c["heldout_loss"] for c in race["candidates"]}
    assert set(losses) == {0, selection.LEARNED_TIME_FUNCTIONS} and race["epochs"] == 20
    assert est.time_functions_ == race["chosen"] == min(losses, key=losses.get)
    assert (est.model_.random_effects.learned_basis is not None) == (est.time_functions_ > 0)
    assert est.result_.epochs_run == 30  # the kept fit ran on after the pause, to max_epochs
    serial = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, covariates=["age"], latent_dim=2)
    serial.fit(frame, max_epochs=30, race_epochs=20, progress=False, seed=0, restarts=0, parallel_race=False)
    assert serial.result_.time_functions_race == race  # the fit above raced in a forked child (on Linux)
    assert all(torch.equal(a, b) for a, b in zip(est.model_.state_dict().values(),
                                                  serial.model_.state_dict().values()))
    if est.time_functions_ == 0:  # the kept fit is the one a fit without learned functions gives
        alone = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, covariates=["age"],
                               latent_dim=2, model_options={"time_functions": 0})
        alone.fit(frame, max_epochs=30, progress=False, seed=0, restarts=0)
        assert all(torch.equal(a, b) for a, b in zip(est.model_.state_dict().values(),
                                                      alone.model_.state_dict().values()))
    est.save(tmp_path / "m.pt")
    loaded = DeepMixedModel.load(tmp_path / "m.pt")
    assert loaded.time_functions_ == est.time_functions_
    assert loaded.result_.time_functions_race == race
    pd.testing.assert_frame_equal(loaded.fitted_values(frame, seed=1), est.fitted_values(frame, seed=1))
    assert "Learned time functions" in str(est.summary(num_samples=50))
    # K-fold refits the chosen structure, as it fixes latent_dim: no race per fold
    refits = []
    original = DeepMixedModel.fit

    def recording_fit(self, df, config=None, **options):
        refits.append((self.options.model_options.get("time_functions"), self.options.latent_dim))
        return original(self, df, config, **options)

    monkeypatch.setattr(DeepMixedModel, "fit", recording_fit)
    est.kfold(frame, k=2, num_samples=50, max_epochs=2)
    assert refits == [(est.time_functions_, 2)] * 2
