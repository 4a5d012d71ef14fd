"""Long fits (issue 22): checkpoints, resume, Ctrl-C.

A fit stopped (Ctrl-C, crash) and resumed from its checkpoint must end
with the very parameters of the fit that never stopped; a checkpoint from
another fit, or a damaged one, is refused naming the file and what differs;
Ctrl-C stops after the current step, leaves usable results that warn, and
no signal handler behind; the CLI prints one line and exits 130.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from pyro_dgmm import ConfigError, DeepMixedModel, NotFittedError
from pyro_dgmm.checkpoint import CHECKPOINT_FORMAT
from pyro_dgmm.elbo import MeanFieldELBO
from pyro_dgmm.errors import ConvergenceWarning

from common import OUTCOMES, tiny_frame

ROOT = Path(__file__).resolve().parent.parent
# 27 training subjects in batches of 8: 4 steps an epoch; a short warm-up and
# trend window, so the stopping rule (annealing, best state) acts within the fit
FIT = dict(elbo="meanfield", max_epochs=30, batch_size=8, kl_warmup_epochs=2, linear_warmup_epochs=1, patience=3, eval_every=1,
           progress=False)
STEPS_PER_EPOCH = 4


def estimator(latent_dim=2, validation_fraction=0.1):
    return DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                          latent_dim=latent_dim, validation_fraction=validation_fraction)


@pytest.fixture(scope="module")
def frame():
    return tiny_frame(n_subjects=30)


@pytest.fixture(scope="module")
def uninterrupted(frame):
    """The reference fits that never stopped, by validation fraction."""
    return {fraction: estimator(validation_fraction=fraction).fit(frame, **FIT) for fraction in (0.1, 0.0)}


@pytest.fixture
def fail_at(monkeypatch):
    """``fail_at(call, action)``: run ``action()`` when the training step's
    loss is computed for the ``call``-th time (1-based; 4 calls an epoch)."""
    original = MeanFieldELBO.differentiable_loss

    def install(*calls_and_actions):
        plan = dict(calls_and_actions)
        count = {"n": 0}

        def loss(self, *args, **kwargs):
            count["n"] += 1
            if count["n"] in plan:
                plan[count["n"]]()
            return original(self, *args, **kwargs)

        monkeypatch.setattr(MeanFieldELBO, "differentiable_loss", loss)
    yield install
    monkeypatch.setattr(MeanFieldELBO, "differentiable_loss", original)


def keyboard_interrupt():
    raise KeyboardInterrupt


def crash():
    raise RuntimeError("the machine went away")


def sigint():
    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the handler only takes note


def assert_same_parameters(a: DeepMixedModel, b: DeepMixedModel):
    for module_a, module_b in ((a.model_, b.model_), (a.guide_, b.guide_)):
        state_a, state_b = module_a.state_dict(), module_b.state_dict()
        assert list(state_a) == list(state_b)
        for name in state_a:
            assert torch.equal(state_a[name], state_b[name]), name  # exact: atol = 0


# ------------------------------------------------------ resume == never stopped
@pytest.mark.parametrize("how, call, action, fraction", [
    ("ctrl-c inside an epoch", 23, keyboard_interrupt, 0.1),
    ("ctrl-c at the first step of an epoch", 21, keyboard_interrupt, 0.1),
    ("real SIGINT inside an epoch", 18, sigint, 0.1),
    ("crash after a periodic checkpoint", 23, crash, 0.1),
    ("ctrl-c without held-out subjects", 23, keyboard_interrupt, 0.0),
])
def test_a_stopped_and_resumed_fit_equals_the_uninterrupted_fit(frame, uninterrupted, fail_at, tmp_path, how,
                                                                call, action, fraction):
    path = tmp_path / "fit.ckpt"
    fail_at((call, action))
    if action is crash:  # like SIGKILL: no last checkpoint, the periodic one (epoch 3) stays
        with pytest.raises(RuntimeError, match="the machine went away"):
            estimator(validation_fraction=fraction).fit(frame, checkpoint=path, checkpoint_every=3, **FIT)
    else:
        stopped = estimator(validation_fraction=fraction).fit(frame, checkpoint=path, checkpoint_every=3, **FIT)
        assert stopped.result_.interrupted and not stopped.result_.converged
        assert "interrupted" in stopped.result_.stop_reason and str(path) in stopped.result_.stop_reason
    fail_at()
    resumed = estimator(validation_fraction=fraction).fit(frame, checkpoint=path, resume=True, **FIT)
    reference = uninterrupted[fraction]
    assert_same_parameters(resumed, reference)
    assert resumed.result_.train_loss == reference.result_.train_loss
    assert resumed.result_.validation_loss == reference.result_.validation_loss
    assert (resumed.result_.best_epoch, resumed.result_.annealed_at, resumed.result_.stop_reason) == \
        (reference.result_.best_epoch, reference.result_.annealed_at, reference.result_.stop_reason)
    assert not resumed.result_.interrupted


def test_resuming_a_finished_fit_gives_its_result_without_training(frame, uninterrupted, tmp_path, fail_at):
    path = tmp_path / "fit.ckpt"
    estimator().fit(frame, checkpoint=path, **FIT)
    fail_at((1, crash))  # any training step would fail
    resumed = estimator().fit(frame, resume=str(path), **FIT)
    assert_same_parameters(resumed, uninterrupted[0.1])
    assert resumed.result_.epochs_run == uninterrupted[0.1].result_.epochs_run


def test_checkpoint_loads_safely_and_records_its_fit(frame, tmp_path):
    path = tmp_path / "fit.ckpt"
    estimator().fit(frame, checkpoint=path, checkpoint_every=2, **{**FIT, "max_epochs": 4})
    saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    assert saved["format"] == CHECKPOINT_FORMAT and saved["stage"] == "latent_dim=2"
    state = saved["state"]
    assert state["progress"]["epoch"] == 4 and state["progress"]["finished"]
    assert {"model", "guide", "optimizer", "decay", "generators", "rng", "result"} <= set(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt"]  # written atomically: no temporary left


def test_an_auto_candidate_checkpoint_records_it_and_resumes_with_its_latent_dim(frame, tmp_path, fail_at):
    path = tmp_path / "fit.ckpt"
    options = {**FIT, "max_epochs": 3}  # unconverged: 'auto' stops after its first candidate
    auto = estimator(latent_dim="auto").fit(frame, checkpoint=path, **options)
    stage = torch.load(path, weights_only=True)["stage"]
    assert stage == f"latent_dim={auto.latent_dim_} (a candidate of latent_dim='auto')"
    fail_at((1, crash))
    fixed = estimator(latent_dim=auto.latent_dim_).fit(frame, checkpoint=path, resume=True, **options)
    assert_same_parameters(fixed, auto)


def test_a_fit_off_the_main_thread_checkpoints_and_leaves_sigint_alone(frame, tmp_path):
    before, outcome = signal.getsignal(signal.SIGINT), {}
    worker = threading.Thread(target=lambda: outcome.update(model=estimator().fit(
        frame, checkpoint=tmp_path / "fit.ckpt", **{**FIT, "max_epochs": 2})))
    worker.start()
    worker.join()
    assert outcome["model"].result_.epochs_run == 2 and (tmp_path / "fit.ckpt").is_file()
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------- refused resumes
@pytest.fixture(scope="module")
def checkpoint(frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "fit.ckpt"
    estimator().fit(frame, checkpoint=path, **{**FIT, "max_epochs": 3})
    return path


def _copy(source: Path, target: Path, size: int | None = None) -> Path:
    data = source.read_bytes()
    target.write_bytes(data if size is None else data[:size])
    return target


def _other_data(frame):
    other = frame.copy()
    other.loc[0, "g"] += 1.0
    return other


FAULTS = {
    # name: (estimator, data, fit options) given (checkpoint, tmp folder, frame); words the message must
    # hold (TMP: the tmp folder)
    "other data": (lambda c, t, f: (estimator(), _other_data(f), dict(checkpoint=c, resume=True)),
                   ["fit.ckpt", "training data differ"]),
    "other fit settings": (lambda c, t, f: (estimator(), f, dict(checkpoint=c, resume=True, learning_rate=0.02)),
                           ["fit.ckpt", "learning_rate", "0.01", "0.02"]),
    "other latent_dim": (lambda c, t, f: (estimator(latent_dim=3), f, dict(checkpoint=c, resume=True)),
                         ["fit.ckpt", "architecture"]),
    "other held-out split": (lambda c, t, f: (estimator(validation_fraction=0.0), f,
                                              dict(checkpoint=c, resume=True)),
                             ["fit.ckpt", "held-out data"]),
    "resume without a checkpoint": (lambda c, t, f: (estimator(), f, dict(resume=True)),
                                    ["resume=True", "checkpoint=PATH"]),
    "missing file": (lambda c, t, f: (estimator(), f, dict(resume=str(t / "absent.ckpt"))),
                     ["absent.ckpt", "does not exist"]),
    "truncated file": (lambda c, t, f: (estimator(), f, dict(resume=_copy(c, t / "cut.ckpt", 3000))),
                       ["cut.ckpt", "cannot be read"]),
    "empty file": (lambda c, t, f: (estimator(), f, dict(resume=_copy(c, t / "empty.ckpt", 0))),
                   ["empty.ckpt", "cannot be read"]),
    "not a checkpoint": (lambda c, t, f: (torch.save({"weights": torch.ones(2)}, t / "other.pt"),
                                          (estimator(), f, dict(resume=t / "other.pt")))[1],
                         ["other.pt", "not a pyro_dgmm checkpoint"]),
    "checkpoint is a folder": (lambda c, t, f: (estimator(), f, dict(checkpoint=t)),
                               ["TMP", "is a folder"]),
    "checkpoint folder missing": (lambda c, t, f: (estimator(), f, dict(checkpoint=t / "nowhere" / "a.ckpt")),
                                  ["nowhere", "does not exist"]),
    "checkpoint_every zero": (lambda c, t, f: (estimator(), f, dict(checkpoint=t / "a.ckpt", checkpoint_every=0)),
                              ["checkpoint_every", "positive integer"]),
    "checkpoint_every fractional": (lambda c, t, f: (estimator(), f, dict(checkpoint=t / "a.ckpt",
                                                                        checkpoint_every=2.5)),
                                    ["checkpoint_every", "2.5"]),
    "resume of another type": (lambda c, t, f: (estimator(), f, dict(checkpoint=c, resume=3)),
                               ["resume", "3"]),
    "resume with latent_dim='auto'": (lambda c, t, f: (estimator(latent_dim="auto"), f,
                                                       dict(checkpoint=c, resume=True)),
                                      ["latent_dim='auto'", "fit.ckpt", "latent_dim=2"]),
    "checkpoint with missing='impute'": (lambda c, t, f: (estimator(), f, dict(checkpoint=t / "a.ckpt",
                                                                               missing="impute")),
                                         ["missing='impute'", "a.ckpt"]),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_a_bad_checkpoint_or_resume_is_refused_naming_file_and_cause(case, checkpoint, tmp_path, frame, fail_at):
    build, words = FAULTS[case]
    model, data, options = build(checkpoint, tmp_path, frame)
    fail_at((1, crash))  # refused before any training step
    with pytest.raises(ConfigError) as caught:
        model.fit(data, **{**FIT, **options})
    for word in words:
        word = word.replace("TMP", str(tmp_path))
        assert word in str(caught.value), (word, str(caught.value))


# ------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize("action, steps_done", [(keyboard_interrupt, 1), (sigint, 2)])
def test_ctrl_c_stops_after_the_current_step_and_restores_the_handler(frame, fail_at, action, steps_done):
    before = signal.getsignal(signal.SIGINT)
    fail_at((10, action))  # epoch 2, its second step
    model = estimator().fit(frame, **FIT)
    result = model.result_
    assert result.interrupted and not result.converged and result.epochs_run == 2
    # a KeyboardInterrupt raised inside a step drops that step; SIGINT lets it finish
    assert f"in epoch 2 after {steps_done} of its {STEPS_PER_EPOCH} steps" in result.stop_reason
    assert "no checkpoint" in result.stop_reason
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_aborts_at_once_and_leaves_no_half_fitted_model(frame, fail_at):
    before = signal.getsignal(signal.SIGINT)
    fail_at((10, lambda: (sigint(), sigint())))  # pressed twice within one step
    model = estimator()
    with pytest.raises(KeyboardInterrupt):
        model.fit(frame, **FIT)
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(NotFittedError):
        model.fitted_values()


@pytest.fixture
def interrupted(frame, fail_at, tmp_path):
    fail_at((6, keyboard_interrupt))
    model = estimator().fit(frame, checkpoint=tmp_path / "fit.ckpt", **FIT)  # a Path: saved as a plain str
    fail_at()
    assert model.result_.interrupted
    return model


USES = {
    "fitted_values": lambda m, f, t: m.fitted_values(num_samples=5),
    "predict": lambda m, f, t: m.predict(f[f["pid"] < 102], [6.0], num_samples=5),
    "save": lambda m, f, t: m.save(t / "model.pt"),
    "to_inference_data": lambda m, f, t: m.to_inference_data(num_samples=5),
}


@pytest.mark.parametrize("use", sorted(USES))
def test_results_of_an_interrupted_fit_work_and_warn_once(interrupted, frame, tmp_path, use):
    with pytest.warns(ConvergenceWarning, match="fit was interrupted"):
        USES[use](interrupted, frame, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        USES[use](interrupted, frame, tmp_path)  # once only
    if use == "save":  # the mark survives a save: the loaded model warns too
        loaded = DeepMixedModel.load(tmp_path / "model.pt")
        assert loaded.result_.interrupted
        with pytest.warns(ConvergenceWarning, match="fit was interrupted"):
            loaded.fitted_values(frame, num_samples=5)


# --------------------------------------------------------- real processes
def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def test_sigint_to_a_python_fit_stops_it_cleanly(tmp_path):
    path = tmp_path / "fit.ckpt"
    script = textwrap.dedent(f"""
        import json, signal, torch
        torch.set_num_threads(1)
        from common import OUTCOMES, tiny_frame
        from pyro_dgmm import DeepMixedModel
        model = DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, latent_dim=2)
        model.fit(tiny_frame(n_subjects=30), batch_size=8, max_epochs=2000, checkpoint={str(path)!r},
                  checkpoint_every=1, progress=False)
        print(json.dumps({{"interrupted": model.result_.interrupted, "converged": model.result_.converged,
                          "handler_restored": signal.getsignal(signal.SIGINT) is signal.default_int_handler}}))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(path, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"interrupted": True, "converged": False, "handler_restored": True}


def test_cli_ctrl_c_prints_one_line_exits_130_and_resume_finishes(tmp_path, capsys):
    from pyro_dgmm.cli import main

    csv, path, out = tmp_path / "visits.csv", tmp_path / "fit.ckpt", tmp_path / "out"
    tiny_frame(n_subjects=300).to_csv(csv, index=False)
    args = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--latent-dim", "2",
            "--preset", "fast", "--max-epochs", "30", "--quiet", "--out", str(out), "--checkpoint", str(path),
            "--checkpoint-every", "1"]
    process = subprocess.Popen([sys.executable, "-m", "pyro_dgmm", *args], env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(path, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    interrupted = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert interrupted == [err.strip().splitlines()[-1]]  # one line, the last
    assert str(path) in interrupted[0] and "--resume" in interrupted[0]
    assert not (out / "model.pt").exists()  # no outputs from an unfinished fit

    assert main(args + ["--resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] >= 1 and (out / "model.pt").exists()
    assert main(args[:-4] + ["--resume"]) == 2  # --resume without --checkpoint
    assert "--resume needs --checkpoint" in capsys.readouterr().err
