"""Bad options and bad command lines (issue 22): each fails at once with a
ConfigError/DataError that names the option, column or file (and, for a
misspelled name, suggests the right one); the CLI prints one ``error:``
line and exits with 2.  Numpy scalars are accepted and normalised."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pyro_dgmm import DeepMixedModel, FitConfig
from pyro_dgmm.cli import main, read_csv
from pyro_dgmm.errors import ConfigError, DataError
from pyro_dgmm.impute import ImputationConfig

from common import tiny_frame

ROOT = Path(__file__).resolve().parent.parent
BASE = dict(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"}, covariates=["arm"],
            time_basis="poly(1)")


def build(**changes):
    return DeepMixedModel(**{**BASE, **changes})


@pytest.fixture(scope="module")
def fitted():
    """A briefly fitted model on 20 subjects (options are checked before any work)."""
    frame = tiny_frame(n_subjects=20, n_visits=4)
    return build(latent_dim=2).fit(frame, max_epochs=1, progress=False), frame


# ------------------------------------------------------------------ options
CONSTRUCTOR = [
    ({"latent_dim": 2.5}, "latent_dim", "integer"),
    ({"latent_dim": "2"}, "latent_dim", "integer"),
    ({"latent_dim": True}, "latent_dim", "integer"),
    ({"latent_dim": 0}, "latent_dim", "positive"),
    ({"validation_fraction": 1.5}, "validation_fraction", "[0, 1)"),
    ({"validation_fraction": "0.1"}, "validation_fraction", "number"),
    ({"covariates": "arm"}, "covariates", "list of column names"),
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
        build(**changes)
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
    model = build(latent_dim=np.int64(2), validation_fraction=np.float32(0.25), encoder_hidden=np.array([8, 8]),
                  covariates=np.array(["arm"]), id_col=np.str_("pid"))
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
        build().fit(tiny_frame(n_subjects=6), progress=False, **options)
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
    ("to_inference_data", {"cell_log_likelihood": "yes"}, "cell_log_likelihood"),
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
def test_result_options_are_checked(fitted, method, options, named):
    model, frame = fitted
    first = {"predict": (frame,), "landmark_evaluation": (frame,)}.get(method, ())
    with pytest.raises(ConfigError) as error:
        getattr(model, method)(*first, **options)
    assert named in str(error.value)


def test_standard_error_options_are_checked(fitted):
    from pyro_dgmm.variance import marginal_log_likelihood, standard_errors

    model, frame = fitted
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
def files(tmp_path_factory):
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
    (["--csv", "ok.csv", "--out", "a_file/out"], "--out a_file/out"),
    (["--csv", "ok.csv", "--out", "a_file"], "--out a_file is a file"),
    (["--csv", "ok.csv", "--max-epochs", "0"], "max_epochs"),
]


@pytest.mark.parametrize("args, expected", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_fit_refuses_bad_input_in_one_line(files, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(files)
    options = {"--id": "pid", "--time": "t", "--outcome": "g:gaussian", "--max-epochs": "1", "--out": "out",
               **dict(zip(args[::2], args[1::2]))}  # each case replaces one or two of these
    assert main(["fit", *(x for item in options.items() for x in item), "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert not (files / "out").exists()  # nothing written (checked before the fit)


PREDICT_CASES = [
    (["--history", "missing.csv"], "--history missing.csv: no such file"),
    (["--history", "semicolon.csv"], "--sep ';'"),
    (["--model", "a_folder"], "--model a_folder is a folder"),
    (["--out", "a_folder"], "--out a_folder is a folder"),
    (["--num-samples", "0"], "num_samples"),
    (["--levels", "95"], "levels"),
]


@pytest.mark.parametrize("args, expected", PREDICT_CASES, ids=[" ".join(a) for a, _ in PREDICT_CASES])
def test_cli_predict_refuses_bad_input_in_one_line(files, fitted, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(files)
    if not (files / "model.pt").exists():
        fitted[0].save(files / "model.pt")
    options = {"--model": "model.pt", "--history": "ok.csv", "--times": "1", "--out": "predictions.csv",
               **dict(zip(args[::2], args[1::2]))}
    assert main(["predict", *(x for item in options.items() for x in item)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_cli_sep_and_encoding_read_what_they_say(files, capsys, tmp_path):
    """--sep ';' fits the file the default refused; --encoding latin-1 reads
    the text utf-8 could not (values intact)."""
    assert main(["fit", "--csv", str(files / "semicolon.csv"), "--sep", ";", *FIT_ARGS, "--out", str(tmp_path)]) == 0
    assert len(pd.read_csv(tmp_path / "fitted.csv")) == len(pd.read_csv(files / "ok.csv"))
    frame = read_csv(files / "latin1.csv", "--csv", encoding="latin-1")
    assert set(frame["arm"]) == {"caf\xe9", "th\xe9"}
    with pytest.raises(DataError, match="--csv .*tab.csv.*--sep"):
        read_csv(files / "tab.csv", "--csv")


def test_cli_error_in_a_subprocess_is_one_line_without_traceback(files):
    """The real entry point: exit code 2, one stderr line, no traceback."""
    run = subprocess.run([sys.executable, "-m", "pyro_dgmm", "fit", "--csv", str(files / "semicolon.csv"),
                          *FIT_ARGS, "--out", str(files / "never")], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: --csv") and "--sep ';'" in run.stderr
    assert not (files / "never").exists()


def test_numpy_typed_arguments_survive_save_and_load(tmp_path):
    """The arguments are normalised when given, so a model built with numpy
    scalars and arrays saves and loads (weights_only) like any other."""
    frame = tiny_frame(n_subjects=8, n_visits=3)
    model = build(latent_dim=np.int64(2), covariates=np.array(["arm"]), encoder_hidden=np.array([8]))
    model.fit(frame, max_epochs=np.int64(1), progress=False)
    model.save(tmp_path / "model.pt")
    loaded = DeepMixedModel.load(tmp_path / "model.pt")
    assert loaded.latent_dim_ == 2 and loaded.covariates == ["arm"] and loaded.options.encoder_hidden == (8,)
