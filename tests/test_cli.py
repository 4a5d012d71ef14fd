"""The command line's interface: --version, examples in --help that parse,
--levels as fractions or percents, summary.json's convergence and
log-likelihood, one float format in every CSV, --covariate-formula,
--networks, --time-functions and --serial-outcome, --outcome with --dataset (and the CSV
options it refuses), joint
models (--events and its flags, event_coefficients.csv, predict --landmark).

(The fit and predict commands' inputs and outputs are tested in
test_estimator.py and test_faults.py.)"""
import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import pyro_dgmm
from pyro_dgmm import DeepMixedModel
from pyro_dgmm.cli import (CSV_FLOAT_FORMAT, EXAMPLES, FIT_EXAMPLES, PREDICT_EXAMPLES, build_parser,
                           interval_levels, main)
from pyro_dgmm.cli_data import parse_outcomes, shipped
from pyro_dgmm.datasets import PBC_COVARIATES, PBC_ID, PBC_OUTCOMES, PBC_TIME
from pyro_dgmm.errors import ConfigError
from pyro_dgmm.diagnostics import InferenceWarning
from pyro_dgmm.datasets.joint import simulate_joint
from pyro_dgmm.joint_estimator import JointMixedModel
from pyro_dgmm.marginal import marginal_log_likelihood

from common import tiny_frame


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro_dgmm {pyro_dgmm.__version__}"


def examples(text: str) -> list[list[str]]:
    """The ``python -m pyro_dgmm`` commands of an examples block, continuation
    lines joined, comments dropped, as argument lists."""
    joined = re.sub(r"\\\n\s*", "", text)
    commands = []
    for line in joined.splitlines():
        line = line.split("#")[0].strip()
        if line.startswith(("python", "torchrun")) and "-m pyro_dgmm " in line:
            commands.append(line.split("-m pyro_dgmm ", 1)[1].replace("'", "").split())
    return commands


@pytest.mark.parametrize("command", [None, "fit", "predict"])
def test_help_shows_examples_that_parse(command, capsys):
    with pytest.raises(SystemExit):
        main(["--help"] if command is None else [command, "--help"])
    shown = capsys.readouterr().out
    block = {None: EXAMPLES, "fit": FIT_EXAMPLES, "predict": PREDICT_EXAMPLES}[command]
    assert block.splitlines()[1] in shown  # the epilog is shown as written
    commands = examples(block)
    assert len(commands) >= 2
    for argv in commands:
        args = build_parser().parse_args(argv)  # every example is a valid command line
        assert args.command in ("fit", "predict")


@pytest.mark.parametrize("given, levels", [([0.95], [0.95]), ([95], [0.95]), ([80, 0.9], [0.8, 0.9]),
                                           ([99.5], [0.995]), ([1.5], [0.015])])
def test_levels_take_fractions_or_percents(given, levels):
    assert interval_levels(given) == pytest.approx(levels)


@pytest.mark.parametrize("bad", [0, 1, 100, 150, -0.5])
def test_levels_out_of_range_are_refused(bad):
    with pytest.raises(ConfigError, match=f"--levels {bad:g}: give a level between 0 and 1"):
        interval_levels([0.9, bad])


def test_levels_help_says_percents_are_accepted(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "0.95 or 95" in capsys.readouterr().out


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory):
    """A two-epoch CLI fit of a CSV with --log-likelihood (few samples): the
    folder, the CSV and the frame."""
    folder = tmp_path_factory.mktemp("cli")
    frame = tiny_frame(n_subjects=16, seed=4)
    frame["t"] = frame["t"] / 3  # times like 0.1000... whose float64 text is long
    csv = folder / "visits.csv"
    frame.to_csv(csv, index=False)
    argv = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--outcome",
            "bin:bernoulli", "--covariate", "age", "--latent-dim", "2", "--max-epochs", "3", "--seed", "2",
            "--quiet", "--log-likelihood", "--log-likelihood-samples", "60", "--restarts", "1", "--out", str(folder / "o")]
    with pytest.warns(pyro_dgmm.errors.ConvergenceWarning), warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceWarning)  # 60 samples after 3 epochs: some k-hat > 0.7
        assert main(argv) == 0
    return folder, csv, frame


def test_summary_carries_convergence_and_held_out_loss(cli_fit):
    folder, _, _ = cli_fit
    summary = json.loads((folder / "o" / "summary.json").read_text())
    model = DeepMixedModel.load(folder / "o" / "model.pt")
    convergence = summary["convergence"]
    result = model.result_
    assert convergence["converged"] is False and convergence["stop_reason"] == result.stop_reason
    assert convergence["epochs_run"] == 3 and convergence["max_epochs"] == 3
    assert convergence["final_train_loss"] == pytest.approx(result.train_loss[-1])
    assert result.best_epoch == -1  # three epochs, all annealing: no kept epoch yet, so the last measured
    epoch, loss = result.validation_loss[-1]
    assert convergence["held_out_loss"] == pytest.approx(loss) and convergence["held_out_loss_epoch"] == epoch
    # the fits run (one: an unconverged fit is not restarted) and the residuals' autocorrelation, as saved
    assert summary["starts"] == result.starts and len(summary["starts"]) == 1 and summary["starts"][0]["seed"] == 2
    assert summary["residual_autocorrelation"] == pytest.approx(result.residual_autocorrelation)
    assert result.config["restarts"] == 1  # --restarts reached the fit's settings
    assert summary["latent_dim_search"] is None  # --latent-dim 2 was given: no search

@pytest.mark.filterwarnings("ignore::pyro_dgmm.diagnostics.InferenceWarning")
def test_summary_log_likelihood_is_the_importance_sampling_estimate(cli_fit):
    """The reported value is the estimate on the training data at the fitted
    parameters: recomputed here from the saved model with the same seed."""
    folder, _, frame = cli_fit
    reported = json.loads((folder / "o" / "summary.json").read_text())["log_likelihood"]
    model = DeepMixedModel.load(folder / "o" / "model.pt")
    estimate = marginal_log_likelihood(model.model_, model.guide_, model.transform(frame), 60, seed=2)
    assert reported["num_samples"] == 60 and math.isfinite(reported["total"]) and reported["mc_sd"] >= 0
    assert reported["total"] == pytest.approx(estimate.total, rel=1e-6)
    assert reported["max_pareto_k"] == pytest.approx(float(estimate.pareto_k.max()))
    assert reported["subjects_pareto_k_above_0.7"] == int((estimate.pareto_k > 0.7).sum())
    assert reported["total"] < 0  # Gaussian and Bernoulli outcomes of 16 subjects at unit-ish scale


def test_summary_log_likelihood_is_null_unless_asked(tmp_path):
    frame = tiny_frame(n_subjects=8)
    frame.to_csv(tmp_path / "v.csv", index=False)
    assert main(["fit", "--csv", str(tmp_path / "v.csv"), "--id", "pid", "--time", "t", "--outcome", "g:gaussian",
                 "--latent-dim", "2", "--max-epochs", "1", "--quiet", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["log_likelihood"] is None


def float_fields(path) -> list[str]:
    """The text of every non-integer numeric field of a CSV file."""
    fields = [f for line in path.read_text().splitlines()[1:] for f in line.split(",")]
    return [f for f in fields if re.fullmatch(r"-?\d*\.\d+(e[-+]\d+)?|-?\d+e[-+]\d+", f)]


def test_every_csv_uses_one_float_format(cli_fit, capsys):
    """fitted.csv and the predictions hold floats as CSV_FLOAT_FORMAT writes
    them: at most 10 significant digits, and the values survive the round trip
    to that precision."""
    folder, csv, frame = cli_fit
    out = folder / "pred.csv"
    assert main(["predict", "--model", str(folder / "o" / "model.pt"), "--history", str(csv), "--times", "1",
                 "2", "--levels", "90", "--num-samples", "20", "--out", str(out)]) == 0
    assert {"lower_90", "upper_90"} <= set(pd.read_csv(out).columns)  # '90' read as 0.90
    for path in (folder / "o" / "fitted.csv", out):
        fields = float_fields(path)
        assert fields
        digits = [len(re.sub(r"e.*|[-.]", "", f).lstrip("0")) for f in fields]
        assert max(digits) <= 10, path.name
        assert max(digits) > 6, path.name  # not rounded coarser than the format
        assert all(f == CSV_FLOAT_FORMAT % float(f) for f in fields), path.name
    fitted = pd.read_csv(folder / "o" / "fitted.csv")
    np.testing.assert_allclose(np.sort(fitted["t"].to_numpy()), np.sort(frame["t"].to_numpy()), rtol=1e-9)


def test_covariate_formula(tmp_path, capsys):
    frame = tiny_frame(n_subjects=10)
    csv = tmp_path / "v.csv"
    frame.to_csv(csv, index=False)
    base = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--latent-dim",
            "2", "--max-epochs", "1", "--quiet"]
    assert main(base + ["--covariate-formula", "age * arm", "--out", str(tmp_path / "o")]) == 0
    model = DeepMixedModel.load(tmp_path / "o" / "model.pt")
    assert model.schema_.covariate_encoder.columns == ["age", "age:arm[T.b]", "arm[T.b]"]
    assert main(base + ["--covariate-formula", "age * weight", "--out", str(tmp_path / "o2")]) == 2
    assert "--covariate-formula 'weight' is not a column" in capsys.readouterr().err
    assert main(base + ["--covariate", "age", "--covariate-formula", "age", "--out", str(tmp_path / "o3")]) == 2
    assert "not both" in capsys.readouterr().err


def test_linear_networks_and_a_serial_process_from_the_command_line(tmp_path, capsys):
    """--networks linear --serial-outcome g --serial-terms 3 build the linear
    model with the process on g; the fit (Gaussian and Bernoulli: no closed
    form) refines tau alone, and summary.json reports it; a --serial-outcome
    that is not an outcome, and --serial-terms without one, are refused."""
    frame = tiny_frame(n_subjects=12, seed=1)
    csv = tmp_path / "v.csv"
    frame.to_csv(csv, index=False)
    base = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--outcome",
            "bin:bernoulli", "--latent-dim", "2", "--max-epochs", "2", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a two-epoch fit does not converge
        code = main(base + ["--networks", "linear", "--serial-outcome", "g", "--serial-terms", "3",
                            "--out", str(tmp_path / "o")])
    assert code == 0
    model = DeepMixedModel.load(tmp_path / "o" / "model.pt")
    core = model.model_
    assert core.serial_outcomes == ["g"] and core.serial_terms == 3 and core.latent_dim == 2 + 3
    networks = [name for name, _ in core.named_parameters() if ".net." in name or ".coefficients." in name
                or ".joint." in name]
    assert networks == [] and "fixed_effects.time_skip.weight" in dict(core.named_parameters())
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["serial_tau"] == pytest.approx(core.serial_tau())
    assert summary["serial_refinement"]["serial_tau"] == pytest.approx(core.serial_tau())
    assert summary["refinement"] is None
    assert main(base + ["--serial-outcome", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "--serial-outcome nope: not an outcome of the fit (g, bin)" in capsys.readouterr().err
    assert main(base + ["--serial-terms", "3", "--out", str(tmp_path / "o3")]) == 2
    assert "--serial-terms needs --serial-outcome" in capsys.readouterr().err


def test_time_functions_from_the_command_line(tmp_path, capsys):
    """--time-functions 2 builds the learned-time-functions path (no race);
    with --networks linear it is refused, naming the option, and so is a
    negative count; 'auto' (the default) races for --race-epochs and
    summary.json records the race."""
    frame = tiny_frame(n_subjects=12, seed=2)
    csv = tmp_path / "v.csv"
    frame.to_csv(csv, index=False)
    base = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--latent-dim", "2",
            "--max-epochs", "2", "--quiet", "--time-functions", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a two-epoch fit does not converge
        assert main(base + ["--out", str(tmp_path / "o")]) == 0
    assert DeepMixedModel.load(tmp_path / "o" / "model.pt").model_.random_effects.time_functions == 2
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["time_functions"] == 2 and summary["time_functions_race"] is None  # given: no race
    assert main(base + ["--networks", "linear", "--out", str(tmp_path / "o2")]) == 2
    assert "time_functions needs the dense random-effects net" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base[:-1] + ["-1", "--out", str(tmp_path / "o3")])
    assert "--time-functions: must be an integer >= 0 or 'auto', got '-1'" in capsys.readouterr().err
    raced = ["fit", "--csv", str(csv), "--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--latent-dim", "2",
             "--max-epochs", "6", "--quiet", "--race-epochs", "4", "--out", str(tmp_path / "o4")]  # auto: a race
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(raced) == 0
    summary = json.loads((tmp_path / "o4" / "summary.json").read_text())
    race = summary["time_functions_race"]
    assert race["epochs"] == 4 and summary["time_functions"] == race["chosen"] in (0, 4)


def test_dataset_outcome_changes_a_shipped_family():
    """--dataset pbc --outcome protime:student_t keeps PBC's other outcomes
    and their families and changes protime's; a name that is not one of its
    outcomes is refused with the data set's outcomes listed."""
    frame, id_col, time_col, outcomes, covariates = shipped("pbc", 0, parse_outcomes(["protime:student_t"]))
    assert outcomes == {**PBC_OUTCOMES, "protime": "student_t"} and list(outcomes) == list(PBC_OUTCOMES)
    assert (id_col, time_col, covariates) == (PBC_ID, PBC_TIME, list(PBC_COVARIATES)) and len(frame) > 1000
    assert shipped("linear", 0, {})[3] == {"y": "gaussian"}
    with pytest.raises(ConfigError, match=r"--outcome nope: not an outcome of the linear data set.*\['y'\]"):
        shipped("linear", 0, {"nope": "gaussian"})


@pytest.mark.parametrize("flags, message", [
    (["--outcome", "nope:gaussian"], "--outcome nope: not an outcome of the pbc data set"),
    (["--id", "id"], "--id is for CSV input: the pbc data set's columns are fixed"),
    (["--time", "years"], "--time is for CSV input"),
    (["--covariate", "age"], "--covariate is for CSV input"),
    (["--covariate-formula", "age + sex"], "--covariate-formula is for CSV input"),
])
def test_dataset_refuses_what_it_would_ignore(flags, message, tmp_path, capsys):
    assert main(["fit", "--dataset", "pbc", *flags, "--max-epochs", "1", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_summary_held_out_loss_is_the_kept_epochs(cli_fit):
    """With a kept epoch, the held-out loss is that epoch's, not the last one's."""
    from pyro_dgmm.cli_summary import fit_summary

    folder, _, _ = cli_fit
    model = DeepMixedModel.load(folder / "o" / "model.pt")
    model.result_.validation_loss = [(4, 30.0), (5, 25.0), (6, 27.0)]
    model.result_.best_epoch = 5
    convergence = fit_summary(model, 1, 1, {"g": "gaussian"}, files=[])["convergence"]
    assert convergence["held_out_loss"] == 25.0 and convergence["held_out_loss_epoch"] == 5


@pytest.fixture(scope="module")
def joint_cli(tmp_path_factory):
    """A two-epoch CLI fit of a joint model with two competing causes: the folder and the frames."""
    folder = tmp_path_factory.mktemp("joint")
    sim = simulate_joint(n_subjects=24, seed=8)
    events = sim.events.assign(status=sim.events.status * np.where(sim.events.id % 2 == 0, 1, 2))
    sim.data.to_csv(folder / "visits.csv", index=False)
    events.to_csv(folder / "events.csv", index=False)
    argv = ["fit", "--csv", str(folder / "visits.csv"), "--id", "id", "--time", "time", "--outcome", "y:gaussian",
            "--covariate", "x", "--latent-dim", "2", "--max-epochs", "2", "--quiet", "--events",
            str(folder / "events.csv"), "--event-time", "time", "--event-status", "status",
            "--event-causes", "1=transplant,2=death", "--association", "y", "--out", str(folder / "o")]
    with pytest.warns(pyro_dgmm.errors.ConvergenceWarning), warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceWarning)  # Wald SEs after two epochs: not at a maximum
        assert main(argv) == 0
    return folder, sim.data, events


def test_joint_fit_writes_event_coefficients_and_summary(joint_cli):
    folder, _, events = joint_cli
    model = JointMixedModel.load(folder / "o" / "model.pt")
    table = pd.read_csv(folder / "o" / "event_coefficients.csv")
    assert list(table.columns[:4]) == ["cause", "term", "estimate", "se"]
    coefficients = model.event_coefficients()
    assert len(table) == coefficients.size == 8 and np.isfinite(table.se).all()
    for row in table.itertuples():  # the saved model's coefficients, with 10 significant digits
        assert row.estimate == pytest.approx(coefficients.loc[row.cause, row.term], rel=1e-8, abs=1e-9)
    summary = json.loads((folder / "o" / "summary.json").read_text())["events"]
    assert summary["causes"] == ["transplant", "death"] and summary["association"] == ["y"]
    counts = events.status.value_counts()
    assert summary["events"] == {"transplant": int(counts[1]), "death": int(counts[2])}
    assert summary["censored"] == int((events.status == 0).sum())
    assert [r["term"] for r in summary["coefficients"]] == table.term.tolist()


def test_joint_predict_writes_event_probabilities(joint_cli, capsys):
    folder, visits, _ = joint_cli
    history = visits[visits.id.isin([0, 1]) & (visits.time <= 1.0)]
    history.to_csv(folder / "history.csv", index=False)
    out, trajectory = folder / "risks.csv", folder / "trajectory.csv"
    assert main(["predict", "--model", str(folder / "o" / "model.pt"), "--history", str(folder / "history.csv"),
                 "--landmark", "1", "--horizons", "3", "2", "--num-samples", "30", "--trajectory", str(trajectory),
                 "--times", "0", "1", "2", "--out", str(out)]) == 0
    risks = pd.read_csv(out)
    assert set(risks.cause) == {"transplant", "death", "event-free"} and sorted(risks.horizon.unique()) == [2, 3]
    np.testing.assert_allclose(risks.groupby(["id", "horizon"]).probability.sum(), 1.0, atol=1e-4)
    assert sorted(pd.read_csv(trajectory).time.unique()) == [0, 1, 2]
    assert json.loads(capsys.readouterr().out)["rows"] == len(risks) == 2 * 2 * 3


@pytest.mark.parametrize("flags, message", [
    (["--events", "E", "--event-time", "time"], "--events fits a joint model, which needs --event-time COL and "
                                                "--event-status COL"),
    (["--events", "E", "--event-time", "futime", "--event-status", "status"], "--event-time 'futime' is not a column"),
    (["--events", "E", "--event-time", "time", "--event-status", "status", "--entry-time", "start"],
     "--entry-time 'start' is not a column"),
    (["--events", "E", "--event-time", "time", "--event-status", "status", "--association", "z"],
     "--association 'z' is not an outcome"),
    (["--event-time", "time", "--event-status", "status"], "--event-time needs --events FILE"),
    (["--events", "E", "--event-time", "time", "--event-status", "status", "--event-causes", "1=a"],
     "events column 'status' has status 2 for subject"),
    (["--events", "E", "--event-time", "time", "--event-status", "status", "--event-causes", "1:death"],
     "argument --event-causes: expects CODE=NAME pairs"),
])
def test_bad_event_flags_are_named(joint_cli, tmp_path, capsys, flags, message):
    folder, _, _ = joint_cli
    flags = [str(folder / "events.csv") if flag == "E" else flag for flag in flags]
    argv = ["fit", "--csv", str(folder / "visits.csv"), "--id", "id", "--time", "time", "--outcome", "y:gaussian",
            "--latent-dim", "2", "--max-epochs", "1", "--quiet", *flags, "--out", str(tmp_path / "o")]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own check of the flag's value
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_predict_flags_must_fit_the_saved_model(joint_cli, cli_fit, capsys):
    folder, _, _ = joint_cli
    base = ["predict", "--history", str(folder / "visits.csv"), "--out", str(folder / "p.csv")]
    assert main(base + ["--model", str(folder / "o" / "model.pt"), "--horizons", "2"]) == 2
    assert "holds a joint model: predict needs --landmark T and --horizons" in capsys.readouterr().err
    assert main(base + ["--model", str(folder / "o" / "model.pt"), "--landmark", "1", "--horizons", "2",
                        "--levels", "90"]) == 2
    assert "--levels is not available for a joint model" in capsys.readouterr().err
    assert main(base + ["--model", str(cli_fit[0] / "o" / "model.pt"), "--landmark", "1", "--times", "1"]) == 2
    assert "--landmark is for joint models" in capsys.readouterr().err
