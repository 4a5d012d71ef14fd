"""Bad inputs and faults (issue 22), one module in four sections.

Each section starts at a banner line ``# ---- <title>`` (grep for it); the
fault classes covered, in order:

1. ``# ---- files lost or corrupted, security (save format, CLI output folder)``:
   damaged, truncated, foreign or unreadable save files, saves that fail
   part-way, values only numpy can hold, save files naming modules to import
   (nothing is imported or run), the CLI's atomic output folder and a CLI fit
   killed (SIGKILL) at random moments.
2. ``# ---- long fits: checkpoints, resume, Ctrl-C``: a fit stopped (Ctrl-C,
   SIGINT, crash) and resumed equals the fit that never stopped; wrong or
   damaged checkpoints are refused naming the file; Ctrl-C leaves usable
   results that warn; the CLI prints one line and exits 130.
3. ``# ---- silently wrong numerics and time types``: shifted and scaled data
   that float32 would spoil, datetime, tz-aware and timedelta time columns,
   bad training frames and prediction inputs.
4. ``# ---- raw tracebacks: option and CLI validation``: bad options of the
   estimator, FitConfig, ImputationConfig and result methods, and bad command
   lines: one ``error:`` line, exit code 2, no traceback.

Process-count independence (the same fitted values and imputations in one
process as in two) needs two processes and is tested in
``tests/test_parallel.py``.

Every bad-input case asserts the error class and that the message names the
file, option, column or folder.  Each section's helpers and fixtures carry
its own names (e.g. ``storage_model``, ``ckpt_frame``, ``fit_numerics``,
``briefly_fitted``, ``cli_files``), so no section picks up another's.
"""
import fcntl
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from pyro_dgmm import DeepMixedModel, DGMM, FitConfig, register_model_class
from pyro_dgmm import files, storage
from pyro_dgmm.checkpoint import CHECKPOINT_FORMAT
from pyro_dgmm.cli import FIT_OUTPUTS, main, read_csv
from pyro_dgmm.data import DataSchema
from pyro_dgmm.elbo import MeanFieldELBO
from pyro_dgmm.errors import ConfigError, ConvergenceWarning, DataError, NotFittedError, SaveFileError
from pyro_dgmm.impute import ImputationConfig

from common import OUTCOMES, tiny_frame

ROOT = Path(__file__).resolve().parent.parent


# ======================================================================================================================
# ---- files lost or corrupted, security (save format, CLI output folder)
# ======================================================================================================================
# Faults and bad input in saving, loading and the command line's output folder
# (issue 22): damaged or foreign save files, saves that fail part-way, values
# that only numpy can hold, save files naming modules to import, and a CLI fit
# killed at random moments.
#
# Every case asserts the error class and that the message names the file,
# option or folder.

STORAGE_OUTCOMES = {"g": "gaussian", "bin": "bernoulli"}


def fit_small(**options) -> DeepMixedModel:
    """A two-outcome model fitted for two epochs on ``tiny_frame(30)``."""
    frame = options.pop("frame", None)
    settings = dict(id_col="pid", time_col="t", outcomes=STORAGE_OUTCOMES, covariates=["age", "arm"], latent_dim=2,
                    encoder_hidden=(8,))
    settings.update(options)
    return DeepMixedModel(**settings).fit(tiny_frame(n_subjects=30) if frame is None else frame,
                                          max_epochs=2, progress=False)


def same_predictions(a: DeepMixedModel, b: DeepMixedModel) -> None:
    frame = tiny_frame(n_subjects=30)
    pyro.set_rng_seed(3)
    first = a.fitted_values(frame, num_samples=20)
    pyro.set_rng_seed(3)
    pd.testing.assert_frame_equal(first, b.fitted_values(frame, num_samples=20))


@pytest.fixture(scope="module")
def storage_model():
    return fit_small()


@pytest.fixture(scope="module")
def saved_file(storage_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.pt"
    storage_model.save(path)
    return path


# ------------------------------------------------------------ damaged files
def _flip_weight_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest stored tensor (zip entry
    ``.../data/N``, stored uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    header = entry.header_offset
    name_length = int.from_bytes(raw[header + 26:header + 28], "little")
    extra_length = int.from_bytes(raw[header + 28:header + 30], "little")
    position = header + 30 + name_length + extra_length + entry.file_size // 2
    raw[position] ^= 0x10
    path.write_bytes(bytes(raw))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo exploited > /dev/null",))


def _damage(kind: str, good: Path, path: Path) -> Path:
    """Make a bad save file of ``kind`` at (or instead of) ``path``."""
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "flipped weight byte":
        path.write_bytes(good.read_bytes())
        _flip_weight_byte(path)
    elif kind == "csv text":
        path.write_text("pid,t,g\n1,0.0,1.5\n")
    elif kind == "foreign torch file":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "format 1 file":
        torch.save({"format": 1, "model_class": "pyro_dgmm.model:DGMM", "model_state": {}}, path)
    elif kind == "malicious pickle":
        torch.save({"format": "pyro_dgmm", "payload": _Exploit()}, path)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"format": "pyro_dgmm"}))
    elif kind == "zip archive":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a model")
    elif kind == "unreadable":
        path.write_bytes(good.read_bytes())
        path.chmod(0)
    return path


@pytest.mark.parametrize("kind, says", [
    ("missing", "does not exist"),
    ("directory", "is a directory"),
    ("empty", "is empty"),
    ("truncated", "truncated or damaged"),
    ("flipped weight byte", "SHA-256 digest does not match"),
    ("csv text", "not a PyTorch archive"),
    ("foreign torch file", "not by DeepMixedModel.save"),
    ("format 1 file", "save format 1"),
    ("malicious pickle", "holds objects other than plain values"),
    ("plain pickle", "not a PyTorch archive"),
    ("zip archive", "cannot be read as a pyro_dgmm save file"),
    pytest.param("unreadable", "cannot be read: Permission denied", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root reads any file")),
])
def test_bad_save_file_is_a_clear_error_naming_it(kind, says, saved_file, tmp_path):
    path = _damage(kind, saved_file, tmp_path / "bad.pt")
    with pytest.raises(SaveFileError) as caught:
        DeepMixedModel.load(path)
    message = str(caught.value)
    assert str(path) in message and says in message
    assert "weights_only=False" not in message  # never a hint towards an unsafe reload
    assert isinstance(caught.value, ConfigError)


def test_cli_predict_names_a_damaged_model_file(saved_file, tmp_path, capsys):
    bad = _damage("truncated", saved_file, tmp_path / "model.pt")
    history = tmp_path / "history.csv"
    tiny_frame(n_subjects=2).to_csv(history, index=False)
    assert main(["predict", "--model", str(bad), "--history", str(history), "--times", "1",
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert f"save file {bad} is truncated" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------ saves that fail
def _torch_save_then_fail(obj, target, *args, **kwargs):
    Path(target).write_bytes(b"PK\x03\x04 half a file")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fault", ["unpicklable option", "disk full mid-write", "interrupted mid-write"])
def test_failed_save_leaves_the_previous_file_intact(fault, storage_model, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    storage_model.save(path)
    before = path.read_bytes()
    if fault == "unpicklable option":
        monkeypatch.setitem(storage_model.options.model_options, "callback", lambda x: x)
        with pytest.raises(ConfigError, match=r"\['callback'\] is a function"):
            storage_model.save(path)
    elif fault == "disk full mid-write":
        monkeypatch.setattr(storage.torch, "save", _torch_save_then_fail)
        with pytest.raises(OSError, match="No space left"):
            storage_model.save(path)
    else:
        def interrupt(obj, target, *args, **kwargs):
            Path(target).write_bytes(b"PK\x03\x04")
            raise KeyboardInterrupt
        monkeypatch.setattr(storage.torch, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):
            storage_model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
    monkeypatch.undo()
    same_predictions(storage_model, DeepMixedModel.load(path))


@pytest.mark.parametrize("where, says", [("a folder", "it is a folder"), ("no folder", "does not exist")])
def test_save_to_an_unusable_path_names_it(where, says, storage_model, tmp_path):
    path = tmp_path if where == "a folder" else tmp_path / "missing" / "model.pt"
    with pytest.raises(ConfigError) as caught:
        storage_model.save(path)
    assert f"cannot save to {path}" in str(caught.value) and says in str(caught.value)


# ------------------------------------------------ plain types before saving
@pytest.mark.parametrize("option", ["latent_dim np.int64", "covariates np.array", "encoder_hidden np.array",
                                    "validation_fraction np.float64"])
def test_numpy_options_save_and_load_with_weights_only(option, tmp_path):
    name, kind = option.split()
    value = {"latent_dim": np.int64(4), "covariates": np.array(["age", "arm"]),
             "encoder_hidden": np.array([8, 4]), "validation_fraction": np.float64(0.2)}[name]
    model = fit_small(**{name: value})
    path = tmp_path / "model.pt"
    model.save(path)
    torch.load(path, weights_only=True)  # what load itself does: no UnpicklingError
    loaded = DeepMixedModel.load(path)
    same_predictions(model, loaded)
    assert _builtin(storage.read(path).metadata["init"][name])


def _builtin(value) -> bool:
    """Whether ``value`` is made of Python's own types only."""
    if isinstance(value, (list, tuple)):
        return all(_builtin(item) for item in value)
    return type(value) in (int, float, str, bool)


@pytest.mark.parametrize("value, plain", [
    (np.int64(3), 3), (np.float32(0.5), 0.5), (np.bool_(True), True), (np.str_("a"), "a"),
    (Path("/data/x.csv"), "/data/x.csv"), (np.arange(3), [0, 1, 2]), (torch.tensor([1.5]), [1.5]),
    ({np.str_("k"): (np.int64(1), [np.float64(2.0)])}, {"k": (1, [2.0])}),
])
def test_to_plain_gives_builtin_types(value, plain):
    out = storage.to_plain(value)
    assert out == plain and repr(out) == repr(plain)


@pytest.mark.parametrize("value, where", [
    ({"options": {"f": print}}, "['options']['f']"),
    ({"columns": [1, object()]}, "['columns'][1]"),
    ({"when": pd.Timestamp("2020-01-01")}, "['when']"),
])
def test_to_plain_refuses_what_has_no_plain_form_and_says_where(value, where):
    with pytest.raises(ConfigError) as caught:
        storage.to_plain(value, "init")
    assert f"init{where}" in str(caught.value)


def test_save_load_save_load_predicts_the_same(storage_model, tmp_path):
    storage_model.save(tmp_path / "1.pt")
    once = DeepMixedModel.load(tmp_path / "1.pt")
    once.save(tmp_path / "2.pt")  # a loaded model has no data_: num_visits_ is stored
    twice = DeepMixedModel.load(tmp_path / "2.pt")
    same_predictions(storage_model, twice)
    assert storage.read(tmp_path / "1.pt").metadata == storage.read(tmp_path / "2.pt").metadata


def test_dense_encoder_round_trips_twice(tmp_path):
    model = fit_small(encoder="dense")
    model.save(tmp_path / "1.pt")
    DeepMixedModel.load(tmp_path / "1.pt").save(tmp_path / "2.pt")
    same_predictions(model, DeepMixedModel.load(tmp_path / "2.pt"))


# ------------------------------------------------------- class resolution
def _rewrite(source: Path, target: Path, **changes) -> Path:
    """A copy of ``source`` with metadata entries replaced (digest recomputed:
    a well-formed file a third party could craft)."""
    saved = storage.read(source)
    storage.write(target, {**saved.metadata, **changes}, saved.tensors)
    return target


def test_file_naming_another_module_imports_nothing(saved_file, tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    (tmp_path / "dgmm_marker_module.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\nclass SomeClass: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    crafted = _rewrite(saved_file, tmp_path / "crafted.pt", model_class="dgmm_marker_module:SomeClass")
    with pytest.raises(SaveFileError) as caught:
        DeepMixedModel.load(crafted)
    message = str(caught.value)
    assert str(crafted) in message and "dgmm_marker_module:SomeClass" in message and "model_class=" in message
    assert not marker.exists() and "dgmm_marker_module" not in sys.modules


@pytest.mark.parametrize("name", ["pyro_dgmm.__main__:main", "os:system", "pyro_dgmm.cli:main",
                                  "pyro_dgmm.model:MixedModel.__init__", "pyro_dgmm.estimator:DeepMixedModel",
                                  "pyro_dgmm.not_a_module:DGMM"])
def test_file_naming_a_non_model_is_refused_without_running_it(name, saved_file, tmp_path, monkeypatch):
    assert "pyro_dgmm.__main__" not in sys.modules
    crafted = _rewrite(saved_file, tmp_path / "crafted.pt", model_class=name)
    with pytest.raises(SaveFileError) as caught:
        DeepMixedModel.load(crafted)  # importing pyro_dgmm.__main__ would run the CLI and exit
    assert str(crafted) in str(caught.value) and name in str(caught.value)
    assert "pyro_dgmm.__main__" not in sys.modules and "pyro_dgmm.not_a_module" not in sys.modules


class UserModel(DGMM):
    """A user's variant, as if defined in a script's ``__main__``."""


class OtherShape(DGMM):
    """A variant whose parameters do not fit a DGMM's weights."""

    @classmethod
    def from_schema(cls, schema, latent_dim, **options):
        return DGMM.from_schema(schema, latent_dim + 1, **options)


def test_user_class_reloads_when_passed_or_registered(tmp_path, monkeypatch):
    monkeypatch.setattr(UserModel, "__module__", "__main__")
    model = fit_small(model_class=UserModel)
    path = tmp_path / "user.pt"
    model.save(path)
    with pytest.raises(SaveFileError) as caught:
        DeepMixedModel.load(path)
    assert str(path) in str(caught.value) and "__main__:UserModel" in str(caught.value)
    loaded = DeepMixedModel.load(path, model_class=UserModel)
    assert loaded.model_class is UserModel and type(loaded.model_) is UserModel
    same_predictions(model, loaded)
    monkeypatch.setattr(storage, "_REGISTERED", {})
    assert register_model_class(UserModel) is UserModel
    assert DeepMixedModel.load(path).model_class is UserModel


@pytest.mark.parametrize("model_class, error, says", [
    (dict, ConfigError, "model_class must be a subclass of MixedModel"),
    (OtherShape, SaveFileError, "does not describe a model"),
])
def test_wrong_model_class_is_a_clear_error(model_class, error, says, saved_file):
    with pytest.raises(error) as caught:
        DeepMixedModel.load(saved_file, model_class=model_class)
    assert type(caught.value) is error and says in str(caught.value)
    if error is SaveFileError:
        assert str(saved_file) in str(caught.value)


def test_register_model_class_refuses_a_non_model():
    with pytest.raises(ConfigError, match="register_model_class expects a subclass of MixedModel"):
        register_model_class(dict)


@pytest.mark.parametrize("change, says", [
    ("no schema", "does not describe a model this pyro_dgmm can rebuild as a DGMM: 'schema'"),
    ("model class not a string", "names no model class (it holds [1, 2])"),
    ("unknown option", "does not describe a model this pyro_dgmm can rebuild as a DGMM"),
])
def test_well_formed_file_with_wrong_metadata_names_the_file(change, says, saved_file, tmp_path):
    metadata = dict(storage.read(saved_file).metadata)
    if change == "no schema":
        del metadata["schema"]
    elif change == "model class not a string":
        metadata["model_class"] = [1, 2]
    else:
        metadata["init"] = {**metadata["init"], "max_epoch": 5}
    crafted = tmp_path / "crafted.pt"
    storage.write(crafted, metadata, storage.read(saved_file).tensors)
    with pytest.raises(SaveFileError) as caught:
        DeepMixedModel.load(crafted)
    assert str(crafted) in str(caught.value) and says in str(caught.value)
    if change == "unknown option":
        assert "max_epoch" in str(caught.value)


# ------------------------------------------------------- output folders
def _fake_run(out: Path, text: str) -> None:
    with files.atomic_folder(out, FIT_OUTPUTS) as folder:
        for name in FIT_OUTPUTS:
            (folder / name).write_text(text)


def _contents(out: Path) -> dict:
    return {p.name: p.read_text() for p in out.iterdir()}


@pytest.mark.parametrize("stage", ["while writing", "fsync", "making the link", "switching"])
def test_failure_at_any_stage_keeps_the_previous_folder(stage, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fake_run(out, "previous")
    failing = {"fsync": (files, "_fsync_folder"), "making the link": (files.os, "symlink"),
               "switching": (files.os, "replace")}.get(stage)
    if failing:
        def fail(*args, **kwargs):
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(*failing, fail)
    with pytest.raises(OSError):
        with files.atomic_folder(out, FIT_OUTPUTS) as folder:
            (folder / "fitted.csv").write_text("new")
            if stage == "while writing":
                raise OSError(28, "No space left on device")
    monkeypatch.undo()
    assert _contents(out) == {name: "previous" for name in FIT_OUTPUTS}
    _fake_run(out, "next")  # whatever the failure left is removed by the next run
    assert _contents(out) == {name: "next" for name in FIT_OUTPUTS}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([os.readlink(out), "out"])


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic exchange", "two renames"])
def test_older_plain_output_folder_is_replaced(exchange, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in FIT_OUTPUTS[:3]:
        (out / name).write_text("old version")
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    _fake_run(out, "new")
    assert out.is_symlink() and _contents(out) == {name: "new" for name in FIT_OUTPUTS}
    assert len(list(tmp_path.iterdir())) == 2


def test_leftovers_of_killed_runs_are_removed_and_of_running_ones_kept(tmp_path):
    out = tmp_path / "out"
    _fake_run(out, "previous")
    stale, busy = tmp_path / ".out.run-0123456789ab", tmp_path / ".out.run-ba9876543210"
    for folder in (stale, busy):
        folder.mkdir()
        (folder / "fitted.csv").write_text("half")
        os.utime(folder, (time.time() - 60, time.time() - 60))
    stale_link = tmp_path / ".out.link-0123456789ab"
    stale_link.symlink_to(stale.name)
    held = os.open(busy, os.O_RDONLY)  # a run in progress holds its folder's lock
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        _fake_run(out, "next")
    finally:
        os.close(held)
    assert not stale.exists() and not stale_link.is_symlink() and busy.exists()
    _fake_run(out, "last")  # once its run has ended, it goes too
    assert not busy.exists() and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("setup, says", [
    ("a file", "is a file, not a folder"),
    ("below a file", "is a file, not a folder"),
    ("folder with other files", "holds files that no run wrote (notes.txt)"),
    ("foreign symlink", "symbolic link not made by pyro_dgmm"),
])
def test_cli_refuses_an_unusable_out_before_fitting(setup, says, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    if setup == "a file":
        out.write_text("mine")
    elif setup == "below a file":
        (tmp_path / "file").write_text("mine")
        out = tmp_path / "file" / "out"
    elif setup == "folder with other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "fitted.csv").write_text("mine too")
    else:
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def no_fit(*args, **kwargs):
        raise AssertionError("fit ran before --out was checked")
    monkeypatch.setattr(DeepMixedModel, "fit", no_fit)
    assert main(["fit", "--dataset", "linear", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"output folder {out}" in err and says in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cli_fit_failing_in_the_write_phase_keeps_the_previous_run(tmp_path, capsys, monkeypatch):
    csv, out = tmp_path / "visits.csv", tmp_path / "out"
    tiny_frame(n_subjects=30).to_csv(csv, index=False)
    args = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian",
            "--covariate", "age", "--latent-dim", "2", "--max-epochs", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == set(FIT_OUTPUTS)

    def disk_full(self, path):
        Path(path).write_bytes(b"PK")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(DeepMixedModel, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(args[:-2] + ["--seed", "1", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(list(tmp_path.iterdir())) == 3  # the CSV, --out and its folder: nothing half-written


def test_cli_predict_writes_atomically_and_refuses_a_folder(saved_file, tmp_path, capsys, monkeypatch):
    history, out = tmp_path / "history.csv", tmp_path / "pred.csv"
    tiny_frame(n_subjects=2, seed=4).to_csv(history, index=False)
    args = ["predict", "--model", str(saved_file), "--history", str(history), "--times", "1",
            "--num-samples", "20", "--out"]
    out.write_text("previous predictions\n")

    def half_written(self, path, **kwargs):
        Path(path).write_text("id,time\n1,")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    with pytest.raises(OSError):
        main(args + [str(out)])
    assert out.read_text() == "previous predictions\n" and len(list(tmp_path.iterdir())) == 2
    monkeypatch.undo()
    assert main(args + [str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err


# ------------------------------------------------ SIGKILL at random moments
def _check_complete(out: Path, rows: int) -> tuple:
    """Assert ``out`` is one complete run; return what identifies the run."""
    assert {p.name for p in out.iterdir()} == set(FIT_OUTPUTS)
    fitted = pd.read_csv(out / "fitted.csv")
    assert len(fitted) == rows and fitted["g_fitted"].notna().all()
    summary = json.loads((out / "summary.json").read_text())
    model = DeepMixedModel.load(out / "model.pt")
    assert summary["rows"] == rows and summary["files"] == sorted(set(FIT_OUTPUTS) - {"summary.json"})
    assert summary["fit_seconds"] == round(model.result_.seconds, 2)
    assert summary["epochs_run"] == model.result_.epochs_run and summary["latent_dim"] == model.latent_dim_
    return summary["fit_seconds"], (out / "model.pt").read_bytes()


def _kill_runs(tmp_path: Path, kills: int, seed: int, while_writing: bool = False) -> int:
    """A complete CLI fit, then ``kills`` fits (subprocesses) each killed with
    SIGKILL at a random moment: anywhere in the run (up to 1.1 times a
    complete run's time), or, ``while_writing``, within 0.6 s of the moment
    its output folder appears.  After each kill ``--out`` must be the previous
    complete run or a new complete one.  Returns how many kills landed
    before the run ended."""
    csv, out = tmp_path / "visits.csv", tmp_path / "out"
    frame = tiny_frame(n_subjects=30)
    frame.to_csv(csv, index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}

    def arguments(run: int) -> list[str]:
        return ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--outcome",
                "bin:bernoulli", "--covariate", "age", "--latent-dim", "2", "--preset", "fast", "--max-epochs", "3",
                "--seed", str(run), "--quiet", "--out", str(out)]

    def start(run: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pyro_dgmm", *arguments(run)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    began = time.perf_counter()
    if while_writing:
        assert main(arguments(0)) == 0  # in this process: no start-up time
    else:
        assert start(0).wait(timeout=300) == 0
    duration = time.perf_counter() - began
    previous = _check_complete(out, len(frame))
    rng = random.Random(seed)
    interrupted = 0
    for run in range(1, kills + 1):
        folders = set(tmp_path.glob(".out.run-*"))
        process = start(run)
        if while_writing:  # wait for the run's output folder to appear
            while process.poll() is None and not set(tmp_path.glob(".out.run-*")) - folders:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            launched = time.perf_counter()
            deadline = launched + rng.uniform(0.0, 1.1) * duration
            while process.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.005)
            if process.poll() is not None:  # it ran faster than the first run: aim the next kills earlier
                duration = min(duration, time.perf_counter() - launched)
        interrupted += process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        now = _check_complete(out, len(frame))
        assert now == previous or now[1] != previous[1]  # previous complete run, or a new complete one
        previous = now
    return interrupted


def test_cli_fit_killed_while_writing_its_outputs(tmp_path):
    """Two kills in the write phase, where a mix of two runs could arise."""
    _kill_runs(tmp_path, kills=2, seed=1, while_writing=True)


@pytest.mark.slow
def test_cli_fit_killed_at_random_moments(tmp_path):
    """Twelve kills over the whole run (start-up, fit, write phase, after),
    then a complete run, which removes what the killed ones left."""
    landed = _kill_runs(tmp_path, kills=12, seed=2)
    # kills after the end are complete runs; on a loaded machine run times vary, so ask for a quarter mid-run
    assert landed >= 3, f"only {landed} of 12 kills landed before the run ended"
    _kill_runs(tmp_path, kills=0, seed=0)
    assert len(list(tmp_path.iterdir())) == 3  # the CSV, --out and its folder


# ======================================================================================================================
# ---- long fits: checkpoints, resume, Ctrl-C
# ======================================================================================================================
# Long fits (issue 22): checkpoints, resume, Ctrl-C.
#
# A fit stopped (Ctrl-C, crash) and resumed from its checkpoint must end
# with the very parameters of the fit that never stopped; a checkpoint from
# another fit, or a damaged one, is refused naming the file and what differs;
# Ctrl-C stops after the current step, leaves usable results that warn, and
# no signal handler behind; the CLI prints one line and exits 130.

# 27 training subjects in batches of 8: 4 steps an epoch; a short warm-up and
# trend window, so the stopping rule (annealing, best state) acts within the fit
FIT = dict(elbo="meanfield", max_epochs=30, batch_size=8, kl_warmup_epochs=2, linear_warmup_epochs=1, patience=3, eval_every=1,
           progress=False)
STEPS_PER_EPOCH = 4


def estimator(latent_dim=2, validation_fraction=0.1):
    return DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                          latent_dim=latent_dim, validation_fraction=validation_fraction)


@pytest.fixture(scope="module")
def ckpt_frame():
    return tiny_frame(n_subjects=30)


@pytest.fixture(scope="module")
def uninterrupted(ckpt_frame):
    """The reference fits that never stopped, by validation fraction (one fit
    each: a checkpointed fit runs no restarts, pyro_dgmm.selection)."""
    return {fraction: estimator(validation_fraction=fraction).fit(ckpt_frame, restarts=0, **FIT)
            for fraction in (0.1, 0.0)}


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
def test_a_stopped_and_resumed_fit_equals_the_uninterrupted_fit(ckpt_frame, uninterrupted, fail_at, tmp_path, how,
                                                                call, action, fraction):
    path = tmp_path / "fit.ckpt"
    fail_at((call, action))
    if action is crash:  # like SIGKILL: no last checkpoint, the periodic one (epoch 3) stays
        with pytest.raises(RuntimeError, match="the machine went away"):
            estimator(validation_fraction=fraction).fit(ckpt_frame, checkpoint=path, checkpoint_every=3, **FIT)
    else:
        stopped = estimator(validation_fraction=fraction).fit(ckpt_frame, checkpoint=path, checkpoint_every=3, **FIT)
        assert stopped.result_.interrupted and not stopped.result_.converged
        assert "interrupted" in stopped.result_.stop_reason and str(path) in stopped.result_.stop_reason
    fail_at()
    resumed = estimator(validation_fraction=fraction).fit(ckpt_frame, checkpoint=path, resume=True, **FIT)
    reference = uninterrupted[fraction]
    assert_same_parameters(resumed, reference)
    assert resumed.result_.train_loss == reference.result_.train_loss
    assert resumed.result_.validation_loss == reference.result_.validation_loss
    assert (resumed.result_.best_epoch, resumed.result_.annealed_at, resumed.result_.stop_reason) == \
        (reference.result_.best_epoch, reference.result_.annealed_at, reference.result_.stop_reason)
    assert not resumed.result_.interrupted


def test_resuming_a_finished_fit_gives_its_result_without_training(ckpt_frame, uninterrupted, tmp_path, fail_at):
    path = tmp_path / "fit.ckpt"
    estimator().fit(ckpt_frame, checkpoint=path, **FIT)
    fail_at((1, crash))  # any training step would fail
    resumed = estimator().fit(ckpt_frame, resume=str(path), **FIT)
    assert_same_parameters(resumed, uninterrupted[0.1])
    assert resumed.result_.epochs_run == uninterrupted[0.1].result_.epochs_run


@pytest.mark.parametrize("fraction", [0.1, 0.0])
def test_a_paused_and_continued_fit_equals_the_uninterrupted_fit(ckpt_frame, uninterrupted, fraction):
    """fit_svi's in-memory pause (the time-function race's): held after
    epoch 7, then continued with the same Pause, a fit ends with the
    parameters and losses of the fit that never stopped."""
    from pyro_dgmm.fit import Pause, fit_svi
    from pyro_dgmm.parallel import hold_out

    reference = uninterrupted[fraction]
    est = estimator(validation_fraction=fraction)
    schema, data = DataSchema.fit_transform(ckpt_frame, id_col="pid", time_col="t", outcomes=est.outcomes,
                                            covariates=est.covariates, time_basis=est.time_basis)
    train, validation = hold_out(data, fraction, 0)
    config = FitConfig(restarts=0, **FIT)
    pause = Pause(7)

    def run():
        pyro.set_rng_seed(0)
        est.time_functions_ = 0
        est.model_, est.guide_ = est._build(schema, data.num_visits, 2)
        return fit_svi(est.model_, est.guide_, train, validation, config, pause=pause)

    held = run()
    assert pause.held and held.epochs_run == 7 and held.stop_reason == "paused after epoch 7"
    result = run()
    assert not pause.held
    assert_same_parameters(est, reference)
    assert result.train_loss == reference.result_.train_loss
    assert result.validation_loss == reference.result_.validation_loss


def test_checkpoint_loads_safely_and_records_its_fit(ckpt_frame, tmp_path):
    path = tmp_path / "fit.ckpt"
    estimator().fit(ckpt_frame, checkpoint=path, checkpoint_every=2, **{**FIT, "max_epochs": 4})
    saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    assert saved["format"] == CHECKPOINT_FORMAT and saved["stage"] == "latent_dim=2"
    state = saved["state"]
    assert state["progress"]["epoch"] == 4 and state["progress"]["finished"]
    assert {"model", "guide", "optimizer", "decay", "generators", "rng", "result"} <= set(state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt"]  # written atomically: no temporary left


def test_an_auto_candidate_checkpoint_records_it_and_resumes_with_its_latent_dim(ckpt_frame, tmp_path, fail_at):
    path = tmp_path / "fit.ckpt"
    options = {**FIT, "max_epochs": 3}  # unconverged: 'auto' stops after its first candidate
    auto = estimator(latent_dim="auto").fit(ckpt_frame, checkpoint=path, **options)
    stage = torch.load(path, weights_only=True)["stage"]
    assert stage == f"latent_dim={auto.latent_dim_} (a candidate of latent_dim='auto')"
    fail_at((1, crash))
    fixed = estimator(latent_dim=auto.latent_dim_).fit(ckpt_frame, checkpoint=path, resume=True, **options)
    assert_same_parameters(fixed, auto)


def test_a_fit_off_the_main_thread_checkpoints_and_leaves_sigint_alone(ckpt_frame, tmp_path):
    before, outcome = signal.getsignal(signal.SIGINT), {}
    worker = threading.Thread(target=lambda: outcome.update(model=estimator().fit(
        ckpt_frame, checkpoint=tmp_path / "fit.ckpt", **{**FIT, "max_epochs": 2})))
    worker.start()
    worker.join()
    assert outcome["model"].result_.epochs_run == 2 and (tmp_path / "fit.ckpt").is_file()
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------- refused resumes
@pytest.fixture(scope="module")
def checkpoint(ckpt_frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "fit.ckpt"
    estimator().fit(ckpt_frame, checkpoint=path, **{**FIT, "max_epochs": 3})
    return path


def _copy(source: Path, target: Path, size: int | None = None) -> Path:
    data = source.read_bytes()
    target.write_bytes(data if size is None else data[:size])
    return target


def _other_data(ckpt_frame):
    other = ckpt_frame.copy()
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
def test_a_bad_checkpoint_or_resume_is_refused_naming_file_and_cause(case, checkpoint, tmp_path, ckpt_frame, fail_at):
    build, words = FAULTS[case]
    model, data, options = build(checkpoint, tmp_path, ckpt_frame)
    fail_at((1, crash))  # refused before any training step
    with pytest.raises(ConfigError) as caught:
        model.fit(data, **{**FIT, **options})
    for word in words:
        word = word.replace("TMP", str(tmp_path))
        assert word in str(caught.value), (word, str(caught.value))


# ------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize("action, steps_done", [(keyboard_interrupt, 1), (sigint, 2)])
def test_ctrl_c_stops_after_the_current_step_and_restores_the_handler(ckpt_frame, fail_at, action, steps_done):
    before = signal.getsignal(signal.SIGINT)
    fail_at((10, action))  # epoch 2, its second step
    model = estimator().fit(ckpt_frame, **FIT)
    result = model.result_
    assert result.interrupted and not result.converged and result.epochs_run == 2
    # a KeyboardInterrupt raised inside a step drops that step; SIGINT lets it finish
    assert f"in epoch 2 after {steps_done} of its {STEPS_PER_EPOCH} steps" in result.stop_reason
    assert "no checkpoint" in result.stop_reason
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_aborts_at_once_and_leaves_no_half_fitted_model(ckpt_frame, fail_at):
    before = signal.getsignal(signal.SIGINT)
    fail_at((10, lambda: (sigint(), sigint())))  # pressed twice within one step
    model = estimator()
    with pytest.raises(KeyboardInterrupt):
        model.fit(ckpt_frame, **FIT)
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(NotFittedError):
        model.fitted_values()


@pytest.fixture
def interrupted(ckpt_frame, fail_at, tmp_path):
    fail_at((6, keyboard_interrupt))
    model = estimator().fit(ckpt_frame, checkpoint=tmp_path / "fit.ckpt", **FIT)  # a Path: saved as a plain str
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
def test_results_of_an_interrupted_fit_work_and_warn_once(interrupted, ckpt_frame, tmp_path, use):
    with pytest.warns(ConvergenceWarning, match="fit was interrupted"):
        USES[use](interrupted, ckpt_frame, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        USES[use](interrupted, ckpt_frame, tmp_path)  # once only
    if use == "save":  # the mark survives a save: the loaded model warns too
        loaded = DeepMixedModel.load(tmp_path / "model.pt")
        assert loaded.result_.interrupted
        with pytest.warns(ConvergenceWarning, match="fit was interrupted"):
            loaded.fitted_values(ckpt_frame, num_samples=5)


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


# ======================================================================================================================
# ---- silently wrong numerics and time types
# ======================================================================================================================
# Issue 22, numerics and input types: values that float32 would silently
# spoil, datetime/timedelta time columns, and bad inputs that used to give raw
# tracebacks.  Every bad-input case asserts the error class and that the
# message names the column or option.

TINY = dict(latent_dim=2, encoder_hidden=(8,), model_options=dict(fixed_hidden=(8,), random_hidden=(8,)))
START = pd.Timestamp("2021-03-01")


def small_frame(n: int = 30, visits: int = 6, seed: int = 0) -> pd.DataFrame:
    """Gaussian and Poisson outcomes, irregular numeric times in [0, 6)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n), visits)
    t = np.tile(np.arange(visits, dtype=float), n) + rng.uniform(0, 0.5, ids.size)
    b = rng.normal(size=n)[ids]
    return pd.DataFrame({"id": ids, "t": t, "y": 1 + 0.5 * t + b + rng.normal(0, 0.5, ids.size),
                         "c": rng.poisson(np.exp(0.3 + 0.2 * b)).astype(float)})


def fit_numerics(frame: pd.DataFrame, epochs: int = 20, **options) -> DeepMixedModel:
    est = DeepMixedModel(id_col="id", time_col="t", outcomes={"y": "gaussian", "c": "poisson"}, **TINY, **options)
    return est.fit(frame, max_epochs=epochs, progress=False, seed=0)


def seeded_fitted_values(est: DeepMixedModel, df: pd.DataFrame | None = None) -> pd.DataFrame:
    pyro.set_rng_seed(1)
    return est.fitted_values(df, num_samples=50)


# ------------------------------------------------------- shifted and scaled data
@pytest.fixture(scope="module")
def reference():
    frame = small_frame()
    return frame, seeded_fitted_values(fit_numerics(frame))


@pytest.mark.parametrize("time_shift, outcome_shift, time_scale", [
    (1e9, 0.0, 1.0), (0.0, 1e7, 1.0), (1e9, 1e7, 1.0), (0.0, 0.0, 1e-6), (-1e9, -1e8, 1.0),
], ids=["times+1e9", "outcome+1e7", "both", "times*1e-6", "times-1e9,outcome-1e8"])
def test_shifted_and_scaled_data_give_the_same_fit(reference, time_shift, outcome_shift, time_scale):
    """Before issue 22 these gave errors 3-80x larger than the unshifted data:
    float32 resolves 1e9 + t only to 64 and 1e7 + y only to 1."""
    frame, base = reference
    moved = frame.assign(t=frame.t * time_scale + time_shift, y=frame.y + outcome_shift)
    out = seeded_fitted_values(fit_numerics(moved))
    # the user's ids, times and observed values come back as given (float64 arithmetic only)
    assert out.id.tolist() == base.id.tolist()
    np.testing.assert_allclose(out.t.to_numpy(), base.t.to_numpy() * time_scale + time_shift, rtol=1e-15, atol=1e-6)
    np.testing.assert_allclose(out.y - outcome_shift, base.y, rtol=0, atol=1e-6)
    # the same fit: 1e-3 relative (to the outcome's spread); the float32 error of the old cast was ~1
    spread = base.y.std()
    np.testing.assert_allclose(out.y_fitted - outcome_shift, base.y_fitted, rtol=1e-3, atol=1e-3 * spread)
    np.testing.assert_allclose(out.c_fitted, base.c_fitted, rtol=1e-3)


def test_predictions_and_imputations_carry_the_outcome_shift(reference):
    frame, _ = reference
    est = fit_numerics(frame.assign(y=frame.y + 1e7), epochs=5)
    history = frame[frame.id < 3].assign(y=frame.y + 1e7)
    table = est.predict(history, [2.0, 5.0], num_samples=30).table  # inside the data: a 5-epoch cubic extrapolates far
    y = table[table.outcome == "y"]
    assert y["mean"].between(1e7 - 20, 1e7 + 20).all()
    assert (y["lower_95"] < y["mean"]).all() and (y["mean"] < y["upper_95"]).all()
    completed = est.impute(history.assign(y=history.y.where(history.t > 1)), num_imputations=2,
                           mcmc_steps=2, warmup_steps=2)
    for frame_m in completed:
        assert frame_m["y"].between(1e7 - 20, 1e7 + 20).all()
        observed = ~frame_m["y_imputed"]
        expected = history.sort_values(["id", "t"]).y.to_numpy()[observed.to_numpy()]
        np.testing.assert_allclose(frame_m.loc[observed, "y"], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------ datetime columns
def with_times(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """``frame`` with its times (in weeks) as datetimes, tz-aware datetimes or timedeltas."""
    offsets = pd.to_timedelta(frame.t * 7, unit="D")
    column = {"datetime": START + offsets, "tz": (START + offsets).dt.tz_localize("Europe/Paris"),
              "timedelta": offsets}[kind]
    return frame.assign(t=column)


@pytest.fixture(scope="module", params=["datetime", "tz", "timedelta"])
def time_typed(request):
    frame = with_times(small_frame(n=12, visits=4), request.param)
    return request.param, frame, fit_numerics(frame, epochs=3, time_unit="weeks")


def test_datetime_times_come_back_in_the_users_type(time_typed):
    kind, frame, est = time_typed
    out = seeded_fitted_values(est)
    assert out.t.dtype == frame.t.dtype
    expected = frame.sort_values(["id", "t"]).t.reset_index(drop=True)
    assert (out.t == expected).all()
    # model time: weeks since the earliest training visit
    data = est.data_
    assert float(data.times[data.visit_mask].min()) == 0.0
    np.testing.assert_allclose(data.times[data.visit_mask].max().item(),
                               ((frame.t.max() - frame.t.min()) / pd.Timedelta(weeks=1)), rtol=1e-6)


def test_predict_at_timestamps_and_relative_offsets(time_typed):
    kind, frame, est = time_typed
    history = frame[frame.id < 2]
    when = frame.t.iloc[5]
    table = est.predict(history, [when], num_samples=10).table
    assert (table.t == when).all() and table.t.dtype == frame.t.dtype
    later = est.predict(history, [1.0], relative=True, num_samples=10).table
    last = history.groupby("id").t.max()
    assert (later.t.to_numpy() == (later.id.map(last) + pd.Timedelta(weeks=1)).to_numpy()).all()
    np.testing.assert_allclose(later.horizon, 1.0)
    offsets = est.predict(history, [pd.Timedelta(weeks=2)], relative=True, num_samples=10).table
    np.testing.assert_allclose(offsets.horizon, 2.0)


def test_time_conversion_is_saved_and_replayed(time_typed, tmp_path):
    kind, frame, est = time_typed
    est.save(tmp_path / "model.pt")
    loaded = DeepMixedModel.load(tmp_path / "model.pt")
    assert loaded.time_unit == "weeks" and loaded.schema_.time_kind == est.schema_.time_kind
    a, b = est.transform(frame), loaded.transform(frame)
    assert (a.times == b.times).all() and (a.time_features == b.time_features).all()


# ----------------------------------------------------------------- bad inputs
def frame_with(change) -> pd.DataFrame:
    frame = small_frame(n=6, visits=3)
    return change(frame)


def set_cell(column, value, row=4):
    def change(frame):
        frame = frame.astype({column: object}) if isinstance(value, str) else frame
        frame.loc[row, column] = value
        return frame
    return change


def multiindex(frame):
    frame.columns = pd.MultiIndex.from_product([["a"], frame.columns])
    return frame


BAD_FRAMES = {
    "outcome beyond float32": (set_cell("y", 1e39), "outcome column 'y'", "float32"),
    "count beyond float32": (set_cell("c", 1e39), "outcome column 'c'", "float32"),
    "time beyond float32": (set_cell("t", 1e39), "time column 't'", "float32"),
    "times at both ends of float64": (lambda f: f.assign(t=np.where(f.index == 4, 1.7e308, np.where(
        f.index == 5, -1.7e308, f.t))), "time column 't'", "float32"),
    "covariate beyond float32": (lambda f: f.assign(age=np.where(f.id == 2, -1e39, 40.0)), "covariate column 'age'",
                                 "float32"),
    "all-NaN outcome column": (lambda f: f.assign(z=np.nan), "outcome column 'z'", "no observed value"),
    "MultiIndex columns": (multiindex, "MultiIndex", "flatten"),
    "text in an outcome": (set_cell("y", "high"), "outcome column 'y'", "must be numeric"),
    "duplicated visit": (lambda f: f.assign(t=np.where(f.index < 2, 0.25, f.t)), "duplicated (id, t)", "rows 0, 1"),
    "date strings as times": (lambda f: f.assign(t=(START + pd.to_timedelta(f.t, unit="D")).astype(str)),
                              "time column 't'", "pd.to_datetime"),
    "NaT time": (lambda f: f.assign(t=(START + pd.to_timedelta(f.t, unit="D")).where(f.index != 3)),
                 "time column 't'", "NaT"),
    "NaN time": (set_cell("t", np.nan), "time column 't'", "missing"),
    "inf outcome": (set_cell("y", np.inf), "outcome column 'y'", "infinite"),
    "NaN id": (set_cell("id", np.nan), "id column 'id'", "missing"),
    "negative count": (set_cell("c", -1.0), "outcome column 'c'", "non-negative"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES), ids=list(BAD_FRAMES))
def test_bad_training_frame(case):
    change, column, detail = BAD_FRAMES[case]
    frame = frame_with(change)
    outcomes = {"y": "gaussian", "c": "poisson", **({"z": "gaussian"} if "z" in frame else {})}
    covariates = ["age"] if "age" in frame else []
    with pytest.raises(DataError) as err:
        DeepMixedModel(id_col="id", time_col="t", outcomes=outcomes, covariates=covariates, **TINY).fit(
            frame, max_epochs=1, progress=False)
    assert column in str(err.value) and detail in str(err.value)


@pytest.fixture(scope="module")
def numeric_model():
    return fit_numerics(small_frame(n=8, visits=3), epochs=2)


@pytest.fixture(scope="module")
def datetime_model():
    return fit_numerics(with_times(small_frame(n=8, visits=3), "datetime"), epochs=2)


def history_of(model_frame_kind, change):
    frame = small_frame(n=2, visits=3)
    if model_frame_kind != "numeric":
        frame = with_times(frame, model_frame_kind)
    return change(frame)


BAD_PREDICTIONS = {
    # (model, history kind, change to the history, prediction times, relative, words in the message)
    "numbers at a datetime model": ("datetime", "datetime", lambda f: f, [1.0], False, ["time column 't'", "numbers"]),
    "numeric history at a datetime model": ("datetime", "numeric", lambda f: f, [START], False,
                                            ["time column 't'", "datetimes"]),
    "tz-aware history at a naive model": ("datetime", "tz", lambda f: f, [START], False, ["time column 't'", "tz-"]),
    "timedelta history at a datetime model": ("datetime", "timedelta", lambda f: f, [START], False,
                                              ["time column 't'", "timedeltas"]),
    "timestamps at a numeric model": ("numeric", "numeric", lambda f: f, [START], False, ["time column 't'", "numbers"]),
    "timestamp offsets": ("datetime", "datetime", lambda f: f, [START], True, ["time column 't'", "offsets"]),
    "history time beyond float32": ("numeric", "numeric", set_cell("t", 1e39, row=1), [1.0], False,
                                    ["time column 't'", "float32"]),
    "history outcome beyond float32": ("numeric", "numeric", set_cell("y", -1e39, row=1), [1.0], False,
                                       ["outcome column 'y'", "float32"]),
    "NaN prediction time": ("numeric", "numeric", lambda f: f, [1.0, np.nan], False, ["time column 't'", "finite"]),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS), ids=list(BAD_PREDICTIONS))
def test_bad_prediction_input(case, numeric_model, datetime_model):
    model, kind, change, times, relative, words = BAD_PREDICTIONS[case]
    est = numeric_model if model == "numeric" else datetime_model
    with pytest.raises(DataError) as err:
        est.predict(history_of(kind, change), times, relative=relative, num_samples=5)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("value", ["fortnights", 7, None], ids=["unknown unit", "a number", "None"])
def test_time_unit_must_be_a_known_unit(value):
    with pytest.raises(ConfigError, match="time_unit must be one of"):
        DeepMixedModel(id_col="id", time_col="t", outcomes={"y": "gaussian"}, time_unit=value)
    with pytest.raises(ConfigError, match="time_unit"):
        DataSchema.fit(tiny_frame(), id_col="pid", time_col="t", outcomes=OUTCOMES, time_unit=value)


def test_landmark_evaluation_refuses_datetime_times(datetime_model):
    """Landmarks and horizons are numbers: a datetime column is refused, not compared as nanoseconds."""
    frame = with_times(small_frame(n=4, visits=3), "datetime")
    with pytest.raises(DataError) as err:
        datetime_model.landmark_evaluation(frame, 1.0, num_samples=5)
    assert "'t'" in str(err.value) and "numeric time column" in str(err.value)


@pytest.mark.parametrize("kind", ["datetime", "tz", "timedelta"])
@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_time_values_keep_their_type_and_resolution(kind, unit):
    frame = with_times(small_frame(n=3, visits=3), kind)
    frame["t"] = frame.t.dt.floor("s").astype(str(frame.t.dtype).replace("[ns", f"[{unit}"))
    schema = DataSchema.fit(frame, id_col="id", time_col="t", outcomes={"y": "gaussian"}, time_unit="hours")
    back = DataSchema.from_spec(schema.to_spec()).transform(frame).observed_long()
    assert back.t.dtype == frame.t.dtype
    assert (back.t == frame.sort_values(["id", "t"]).t.reset_index(drop=True)).all()


# ======================================================================================================================
# ---- raw tracebacks: option and CLI validation
# ======================================================================================================================
# Bad options and bad command lines (issue 22): each fails at once with a
# ConfigError/DataError that names the option, column or file (and, for a
# misspelled name, suggests the right one); the CLI prints one ``error:``
# line and exits with 2.  Numpy scalars are accepted and normalised.

BASE = dict(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"}, covariates=["arm"],
            time_basis="poly(1)")


def build_estimator(**changes):
    return DeepMixedModel(**{**BASE, **changes})


@pytest.fixture(scope="module")
def briefly_fitted():
    """A briefly fitted model on 20 subjects (options are checked before any work)."""
    frame = tiny_frame(n_subjects=20, n_visits=4)
    return build_estimator(latent_dim=2).fit(frame, max_epochs=1, progress=False), frame


# ------------------------------------------------------------------ options
CONSTRUCTOR = [
    ({"latent_dim": 2.5}, "latent_dim", "integer"),
    ({"latent_dim": "2"}, "latent_dim", "integer"),
    ({"latent_dim": True}, "latent_dim", "integer"),
    ({"latent_dim": 0}, "latent_dim", "positive"),
    ({"validation_fraction": 1.5}, "validation_fraction", "[0, 1)"),
    ({"validation_fraction": "0.1"}, "validation_fraction", "number"),
    ({"covariates": 3}, "covariates", "list of column names"),
    ({"covariates": "age +* arm"}, "covariates formula", "incorrectly used"),  # a string is a formula
    ({"encoder": "sett"}, "encoder", "did you mean 'set'"),
    ({"covariance": "ful"}, "covariance", "did you mean 'full'"),
    ({"activation": "Tanh"}, "activation", "did you mean 'tanh'"),
    ({"encoder_hidden": (64, 2.5)}, "encoder_hidden[1]", "integer"),
    ({"encoder_hidden": 64}, "encoder_hidden", "sequence"),
    ({"outcomes": {"g": "gausian"}}, "outcome 'g'", "gaussian"),
    ({"outcomes": {}}, "outcomes", "non-empty"),
    ({"id_col": 3}, "id_col", "string"),
]


@pytest.mark.parametrize("changes, option, expected", CONSTRUCTOR, ids=[str(c[0]) for c in CONSTRUCTOR])
def test_constructor_option_is_checked(changes, option, expected):
    with pytest.raises(ConfigError) as error:
        build_estimator(**changes)
    assert option in str(error.value) and expected in str(error.value)


FIT_CONFIG = [
    ({"max_epochs": 2.5}, "max_epochs", "2.5 (float)"),
    ({"max_epochs": "10"}, "max_epochs", "'10' (str)"),
    ({"max_epochs": 0}, "max_epochs", "positive integer"),
    ({"learning_rate": -0.1}, "learning_rate", "> 0"),
    ({"kl_start": 0.0}, "kl_start", "(0, 1]"),
    ({"final_lr_factor": 1.5}, "final_lr_factor", "(0, 1]"),
    ({"batch_size": 0}, "batch_size", "or None"),
    ({"num_particles": True}, "num_particles", "(bool)"),
    ({"progress": "no"}, "progress", "True or False"),
    ({"refine": 1}, "refine", "True or False"),
    ({"seed": -1}, "seed", "non-negative"),
    ({"tolerance": float("nan")}, "tolerance", ">= 0"),
    ({"elbo": "Trace"}, "elbo", "did you mean 'trace'"),
]


@pytest.mark.parametrize("changes, option, expected", FIT_CONFIG, ids=[str(c[0]) for c in FIT_CONFIG])
def test_fit_config_option_is_checked(changes, option, expected):
    with pytest.raises(ConfigError) as error:
        FitConfig(**changes)
    assert option in str(error.value) and expected in str(error.value)


IMPUTATION = [
    ({"rounds": 0}, "rounds"),
    ({"mcmc_steps": 1.5}, "mcmc_steps"),
    ({"burn_in": -1}, "burn_in"),
    ({"sa_exponent": 0.3}, "sa_exponent"),
    ({"kernel": "hmc"}, "kernel"),
]


@pytest.mark.parametrize("changes, option", IMPUTATION, ids=[str(c[0]) for c in IMPUTATION])
def test_imputation_config_option_is_checked(changes, option):
    with pytest.raises(ConfigError, match=option):
        ImputationConfig(**changes)


def test_numpy_scalars_are_normalised_to_python_types():
    """np.int64 / np.float32 where ints and floats are meant: accepted and
    stored as plain Python numbers (so saved files hold no numpy types)."""
    model = build_estimator(latent_dim=np.int64(2), validation_fraction=np.float32(0.25),
                            encoder_hidden=np.array([8, 8]), covariates=np.array(["arm"]), id_col=np.str_("pid"))
    assert type(model.options.latent_dim) is int and type(model.validation_fraction) is float
    assert all(type(width) is int for width in model.options.encoder_hidden)
    assert model.covariates == ["arm"] and type(model.covariates[0]) is str and type(model.id_col) is str
    config = FitConfig(max_epochs=np.int32(3), learning_rate=np.float32(0.02), progress=np.bool_(False))
    assert type(config.max_epochs) is int and type(config.learning_rate) is float and config.progress is False


FIT_CALLS = [
    ({"max_epoch": 5}, "'max_epoch'", "did you mean 'max_epochs'"),
    ({"learning_rte": 0.1}, "'learning_rte'", "did you mean 'learning_rate'"),
    ({"missing": "imputed"}, "missing", "did you mean 'impute'"),
    ({"config": {"max_epochs": 3}}, "config", "FitConfig"),
    ({"imputation": {"rounds": 2}}, "imputation", "ImputationConfig"),
    ({"distributed_input": "yes"}, "distributed_input", "True or False"),
    ({"preset": "quick"}, "preset", "one of"),
]


@pytest.mark.parametrize("options, named, expected", FIT_CALLS, ids=[str(c[0]) for c in FIT_CALLS])
def test_fit_options_are_checked_before_fitting(options, named, expected):
    with pytest.raises(ConfigError) as error:
        build_estimator().fit(tiny_frame(n_subjects=6), progress=False, **options)
    assert named in str(error.value) and expected in str(error.value)


RESULT_CALLS = [
    ("fitted_values", {"num_samples": 0}, "num_samples"),
    ("fitted_values", {"num_samples": -5}, "num_samples"),
    ("fitted_values", {"num_samples": 2.5}, "num_samples"),
    ("fitted_values", {"method": "mcmc"}, "method"),
    ("fitted_values", {"seed": "1"}, "seed"),
    ("impute", {"num_imputations": 0}, "num_imputations"),
    ("impute", {"kernel": "hmc"}, "kernel"),
    ("impute", {"warmup_steps": -1}, "warmup_steps"),
    ("population_mean", {"times": [1.0], "num_samples": 0}, "num_samples"),
    ("to_inference_data", {"num_samples": 0}, "num_samples"),
    ("to_inference_data", {"chains": 0}, "chains"),
    ("predict", {"times": [5.0], "num_samples": 0}, "num_samples"),
    ("predict", {"times": [5.0], "num_sample": 10}, "did you mean 'num_samples'"),
    ("predict", {"times": [5.0], "levels": (1.5,)}, "levels"),
    ("predict", {"times": [5.0], "relative": "yes"}, "relative"),
    ("predict", {"times": [5.0], "adapt_rounds": -1}, "adapt_rounds"),
    ("predict", {"times": [5.0], "method": "nuts"}, "method"),
    ("landmark_evaluation", {"landmark": "3"}, "landmark"),
]


@pytest.mark.parametrize("method, options, named", RESULT_CALLS,
                         ids=[f"{m}-{list(o)[-1]}={o[list(o)[-1]]}" for m, o, _ in RESULT_CALLS])
def test_result_options_are_checked(briefly_fitted, method, options, named):
    model, frame = briefly_fitted
    first = {"predict": (frame,), "landmark_evaluation": (frame,)}.get(method, ())
    with pytest.raises(ConfigError) as error:
        getattr(model, method)(*first, **options)
    assert named in str(error.value)


def test_standard_error_options_are_checked(briefly_fitted):
    from pyro_dgmm.marginal import marginal_log_likelihood
    from pyro_dgmm.wald import standard_errors

    model, frame = briefly_fitted
    data = model.transform(frame)
    with pytest.raises(ConfigError, match="num_samples"):
        marginal_log_likelihood(model.model_, model.guide_, data, 2.5)
    with pytest.raises(ConfigError, match="level"):
        standard_errors(model.model_, model.guide_, data, num_samples=100, level=95)
    with pytest.raises(ConfigError, match="did you mean 'central'"):
        standard_errors(model.model_, model.guide_, data, num_samples=100, method="centra")


# ---------------------------------------------------------------------- CLI
FIT_ARGS = ["--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--max-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Good and bad input files for the CLI."""
    folder = tmp_path_factory.mktemp("cli")
    frame = tiny_frame(n_subjects=8, n_visits=3)
    frame.to_csv(folder / "ok.csv", index=False)
    frame.to_csv(folder / "semicolon.csv", index=False, sep=";")
    frame.to_csv(folder / "tab.csv", index=False, sep="\t")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "header.csv").write_text("pid,t,g\n")
    frame.assign(arm=np.where(frame["arm"] == "a", "caf\xe9", "th\xe9")).to_csv(
        folder / "latin1.csv", index=False, encoding="latin-1")
    (folder / "a_file").write_text("not a folder")
    (folder / "a_folder").mkdir()
    return folder


CLI_CASES = [
    (["--csv", "semicolon.csv"], "--sep ';'"),
    (["--csv", "tab.csv"], "--sep '\\t'"),
    (["--csv", "ok.csv", "--id", "PID"], "--id 'PID'"),
    (["--csv", "ok.csv", "--time", "time"], "--time 'time'"),
    (["--csv", "ok.csv", "--outcome", "gg:gaussian"], "--outcome 'gg'"),
    (["--csv", "ok.csv", "--covariate", "agee"], "did you mean 'age'"),
    (["--csv", "a_folder"], "--csv a_folder is a folder"),
    (["--csv", "missing.csv"], "--csv missing.csv: no such file"),
    (["--csv", "empty.csv"], "--csv empty.csv is empty"),
    (["--csv", "header.csv"], "no rows"),
    (["--csv", "latin1.csv"], "--encoding"),
    (["--csv", "latin1.csv", "--encoding", "klingon"], "--encoding 'klingon'"),
    (["--csv", "ok.csv", "--out", "a_file/out"], "output folder a_file/out cannot be created"),
    (["--csv", "ok.csv", "--out", "a_file"], "output folder a_file is a file"),
    (["--csv", "ok.csv", "--max-epochs", "0"], "max_epochs"),
]


@pytest.mark.parametrize("args, expected", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_fit_refuses_bad_input_in_one_line(cli_files, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(cli_files)
    options = {"--id": "pid", "--time": "t", "--outcome": "g:gaussian", "--max-epochs": "1", "--out": "out",
               **dict(zip(args[::2], args[1::2]))}  # each case replaces one or two of these
    assert main(["fit", *(x for item in options.items() for x in item), "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert not (cli_files / "out").exists()  # nothing written (checked before the fit)


PREDICT_CASES = [
    (["--history", "missing.csv"], "--history missing.csv: no such file"),
    (["--history", "semicolon.csv"], "--sep ';'"),
    (["--model", "a_folder"], "--model a_folder is a folder"),
    (["--out", "a_folder"], "--out a_folder is a folder"),
    (["--num-samples", "0"], "num_samples"),
    (["--levels", "150"], "--levels 150"),  # 95 is read as 95% (test_cli.py)
]


@pytest.mark.parametrize("args, expected", PREDICT_CASES, ids=[" ".join(a) for a, _ in PREDICT_CASES])
def test_cli_predict_refuses_bad_input_in_one_line(cli_files, briefly_fitted, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(cli_files)
    if not (cli_files / "model.pt").exists():
        briefly_fitted[0].save(cli_files / "model.pt")
    options = {"--model": "model.pt", "--history": "ok.csv", "--times": "1", "--out": "predictions.csv",
               **dict(zip(args[::2], args[1::2]))}
    assert main(["predict", *(x for item in options.items() for x in item)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_cli_sep_and_encoding_read_what_they_say(cli_files, capsys, tmp_path):
    """--sep ';' fits the file the default refused; --encoding latin-1 reads
    the text utf-8 could not (values intact)."""
    assert main(["fit", "--csv", str(cli_files / "semicolon.csv"), "--sep", ";", *FIT_ARGS,
                 "--out", str(tmp_path)]) == 0
    assert len(pd.read_csv(tmp_path / "fitted.csv")) == len(pd.read_csv(cli_files / "ok.csv"))
    frame = read_csv(cli_files / "latin1.csv", "--csv", encoding="latin-1")
    assert set(frame["arm"]) == {"caf\xe9", "th\xe9"}
    with pytest.raises(DataError, match="--csv .*tab.csv.*--sep"):
        read_csv(cli_files / "tab.csv", "--csv")


def test_cli_error_in_a_subprocess_is_one_line_without_traceback(cli_files):
    """The real entry point: exit code 2, one stderr line, no traceback."""
    run = subprocess.run([sys.executable, "-m", "pyro_dgmm", "fit", "--csv", str(cli_files / "semicolon.csv"),
                          *FIT_ARGS, "--out", str(cli_files / "never")], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: --csv") and "--sep ';'" in run.stderr
    assert not (cli_files / "never").exists()


def test_numpy_typed_arguments_survive_save_and_load(tmp_path):
    """The arguments are normalised when given, so a model built with numpy
    scalars and arrays saves and loads (weights_only) like any other."""
    frame = tiny_frame(n_subjects=8, n_visits=3)
    model = build_estimator(latent_dim=np.int64(2), covariates=np.array(["arm"]), encoder_hidden=np.array([8]))
    model.fit(frame, max_epochs=np.int64(1), progress=False)
    model.save(tmp_path / "model.pt")
    loaded = DeepMixedModel.load(tmp_path / "model.pt")
    assert loaded.latent_dim_ == 2 and loaded.covariates == ["arm"] and loaded.options.encoder_hidden == (8,)
