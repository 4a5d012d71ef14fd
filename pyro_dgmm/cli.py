"""Command line: ``python -m pyro_dgmm fit ...`` (also installed as ``pyro-dgmm``).

Fits a DGMM to a CSV file or a shipped data set and writes, into ``--out``
(replaced as a whole, see below):

* ``fitted.csv``  -- observed values and fitted subject-specific means per visit
* ``subjects.png`` -- a few subjects' observed values and fitted curves
* ``loss.png``    -- training and held-out loss per epoch
* ``model.pt``    -- the fitted model (``DeepMixedModel.load``)
* ``summary.json`` -- fit settings, epochs, stop reason and convergence
  (``convergence``: converged, stop reason, epochs, kept epoch, final
  training loss, held-out negative ELBO per subject at the kept epoch, or
  at the last epoch measured before one was kept), latent directions in use
  (and, with ``latent_dim='auto'``, the dimensions tried: ``latent_dim_search``),
  the residuals' lag-1 autocorrelation and the fits run (``starts``: the
  first and any restarts, :mod:`pyro_dgmm.selection`), the learned time
  functions and the race that chose them (``time_functions``,
  ``time_functions_race``), time,
  dispersion estimates, the maximum-likelihood refinements (``refinement``,
  ``serial_refinement``) and the serial-process scales (``serial_tau``, with
  ``--serial-outcome``), and the marginal log-likelihood when
  ``--log-likelihood`` is given (an importance-sampling estimate with its
  Monte Carlo SD and Pareto k-hat: minutes for hundreds of subjects, so
  not computed by default; ``null`` then)

Every CSV the command line writes (``fitted.csv``, ``predict``'s table)
formats floats the same way, :data:`CSV_FLOAT_FORMAT` (10 significant
digits).  ``--levels`` takes interval levels as fractions or percents
(``0.9 0.95`` or ``90 95``).

``--out`` never holds a mix of two runs: the files are written into a new
hidden folder beside it (``.<name>.run-<hex>``) and ``--out``, a
symbolic link to the current run's folder, is switched to it in one atomic
step (:func:`~pyro_dgmm.files.atomic_folder`).  Whenever a run is killed,
``--out`` is the previous complete run or the new complete one; the next run
removes what a killed one left.  An ``--out`` folder written by an older
version (a plain folder holding only the files above) is replaced the same
way; one holding other files is refused before fitting, as is an ``--out``
that cannot be created.  Remove a run with ``rm -r out .out.run-*``.

Joint models of the outcomes and a time to event (``--events FILE
--event-time COL --event-status COL``; ``predict --landmark T --horizons U ...``):
:mod:`pyro_dgmm.cli_joint`.

Dynamic predictions from a saved model (writes a tidy CSV, atomically)::

    python -m pyro_dgmm predict --model outputs/pbc/model.pt --history history.csv \\
        --times 0.5 1 2 --relative --out predictions.csv

Data-parallel over processes (see :mod:`pyro_dgmm.parallel`; ``predict`` too)::

    torchrun --standalone --nproc_per_node=2 -m pyro_dgmm fit --dataset app --out outputs/app

Input too large for one process: a directory of CSV/Parquet part files (or
one big CSV), each process reading only its subjects (see
:mod:`pyro_dgmm.partitioned`)::

    torchrun --standalone --nproc_per_node=4 -m pyro_dgmm fit --partitioned parts/ --id patient \\
        --time years --outcome albumin:gaussian --out outputs/big

Long fits: ``--checkpoint PATH`` writes the fit's full state every
``--checkpoint-every`` epochs (and when it stops); after a crash or Ctrl-C
the same command with ``--resume`` continues where it stopped and ends as
the uninterrupted fit would have.  Ctrl-C stops the fit after the current
step, prints one line (``interrupted: ...``), writes no outputs and exits
with code 130::

    python -m pyro_dgmm fit --dataset pbc --out outputs/pbc --latent-dim 4 --checkpoint pbc.ckpt
    python -m pyro_dgmm fit --dataset pbc --out outputs/pbc --latent-dim 4 --checkpoint pbc.ckpt --resume

Dates: a time column of dates (``2024-05-01``, ``2024-05-01 08:30``) or
durations (``3 days``) is read as such and measured in ``--time-unit``
(default days) since the earliest visit; ``fitted.csv`` gives the dates
back, and ``predict --times`` then takes dates::

    python -m pyro_dgmm fit --csv visits.csv --id pid --time date --outcome y:gaussian --time-unit weeks --out o
    python -m pyro_dgmm predict --model o/model.pt --history visits.csv --times 2024-06-01 --out pred.csv

Input is checked before any fitting: the CSV file (it exists, is a file,
is not empty, decodes with ``--encoding``, default utf-8; a file read as a
single column whose header holds ``;``, a tab or ``|`` suggests ``--sep``),
every column named by ``--id``, ``--time``, ``--outcome`` and
``--covariate`` (the message lists the file's columns and the closest
name), and ``--out`` (a folder that can be created and written).  Each
failure prints one line ``error: ...`` on stderr and exits with code 2.

Examples::

    python -m pyro_dgmm fit --dataset pbc --out outputs/pbc
    python -m pyro_dgmm fit --csv visits_de.csv --sep ';' --encoding latin-1 --id patient --time years \\
        --outcome albumin:gaussian --out outputs/de
    python -m pyro_dgmm fit --csv visits.csv --id patient --time years \\
        --outcome albumin:gaussian --outcome ascites:bernoulli --covariate age --out outputs/mine

Example (the parser behind ``pyro-dgmm``; ``main(argv)`` runs a command):

>>> args = build_parser().parse_args(["fit", "--dataset", "pbc", "--max-epochs", "2", "--out", "out"])
>>> args.command, args.dataset, args.max_epochs
('fit', 'pbc', 2)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from . import cli_joint
from .cli_data import SHIPPED, parse_outcomes, refuse_csv_options, shipped
from .cli_summary import fit_summary, log_likelihood_summary
from .bases import DEFAULT_TIME_BASIS
from .covariates import parse_covariate_formula
from .errors import ConfigError, DataError, DgmmError
from .files import atomic_folder, atomic_path, check_folder_target, write_text_atomic
from .fit import PRESETS
from .guide import ENCODERS
from .model import DISPERSION_MODELS
from .options import suggestion
from .persistence import saved_facade
from .times import TIME_UNITS

log = logging.getLogger("pyro_dgmm")

#: One float format for every CSV the command line writes (``fitted.csv``,
#: predictions): 10 significant digits, enough for float32 model outputs and
#: float64 times, without binary noise such as ``0.30000000000000004``.
CSV_FLOAT_FORMAT = "%.10g"

EXAMPLES = """examples:
  python -m pyro_dgmm fit --dataset pbc --out outputs/pbc
  python -m pyro_dgmm fit --csv visits.csv --id patient --time years --outcome albumin:gaussian \\
      --outcome ascites:bernoulli --covariate age --covariate sex --out outputs/mine
  python -m pyro_dgmm predict --model outputs/pbc/model.pt --history history.csv \\
      --times 0.5 1 2 --relative --levels 0.8 0.95 --out predictions.csv
  torchrun --standalone --nproc_per_node=2 -m pyro_dgmm fit --dataset app --out outputs/app

'python -m pyro_dgmm COMMAND --help' describes each command's options."""

#: What ``fit`` writes into ``--out`` (an older plain ``--out`` folder holding only these is replaced).
FIT_OUTPUTS = ("fitted.csv", "subjects.png", "loss.png", "model.pt", "summary.json")


FIT_EXAMPLES = """examples:
  python -m pyro_dgmm fit --dataset pbc --out outputs/pbc
  python -m pyro_dgmm fit --dataset pbc --preset fast --max-epochs 50 --out outputs/quick
  python -m pyro_dgmm fit --csv visits.csv --id patient --time years --outcome albumin:gaussian \\
      --outcome ascites:bernoulli --covariate age --basis 'spline(4)' --out outputs/mine
  python -m pyro_dgmm fit --dataset pbc --latent-dim 4 --checkpoint pbc.ckpt --out outputs/pbc   # then --resume
  python -m pyro_dgmm fit --dataset pbc --log-likelihood --out outputs/pbc
  python -m pyro_dgmm fit --dataset pbc --outcome log_bili:student_t \\
      --outcome protime:student_t --basis 'poly(1)' --networks linear --latent-dim 6 \\
      --serial-outcome log_bili --serial-outcome protime --serial-terms 4 --out outputs/calibrated
  python -m pyro_dgmm fit --dataset pbc --event-time futime_years --event-status status --out outputs/joint"""

PREDICT_EXAMPLES = """examples:
  python -m pyro_dgmm predict --model outputs/pbc/model.pt --history history.csv --times 1 2 5 \\
      --out predictions.csv
  python -m pyro_dgmm predict --model outputs/pbc/model.pt --history history.csv --times 0.5 1 \\
      --relative --levels 80 95 --out predictions.csv
  python -m pyro_dgmm predict --model outputs/joint/model.pt --history h.csv --landmark 5 --horizons 6 8 --out r.csv"""

def build_parser() -> argparse.ArgumentParser:
    """The ``pyro_dgmm`` argument parser: commands ``fit`` and ``predict``,
    ``--version``, examples in ``--help``."""
    from . import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="pyro_dgmm", description="Deep Generalized Mixed Models on Pyro",
                                     epilog=EXAMPLES, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a DGMM and write fitted trajectories, plots and the model",
                         formatter_class=raw, epilog=FIT_EXAMPLES)
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=SHIPPED, help="a shipped data set")
    source.add_argument("--csv", type=Path, help="a long-format CSV file (one row per visit)")
    source.add_argument("--partitioned", type=Path, metavar="PATH",
                        help="a directory of CSV/Parquet part files, or one big CSV: each process reads "
                             "only its subjects (see pyro_dgmm.partitioned)")
    _add_csv_options(fit)
    fit.add_argument("--id", help="subject id column (CSV input)")
    fit.add_argument("--time", help="time column (CSV input)")
    fit.add_argument("--outcome", action="append", default=[], metavar="NAME:FAMILY",
                     help="outcome column and family (gaussian, student_t, bernoulli, poisson, bounded(LOW,HIGH)); "
                          "repeat; with --dataset, changes the family of one of its outcomes")
    fit.add_argument("--covariate", action="append", default=[], help="baseline covariate column; repeat")
    fit.add_argument("--covariate-formula", metavar="FORMULA",
                     help="the covariates as a formula instead of --covariate (CSV input), e.g. "
                          "'age * sex + C(trt)': interactions, contrasts and transforms "
                          "(pyro_dgmm.covariates.FormulaEncoder)")
    fit.add_argument("--time-unit", choices=sorted(TIME_UNITS), default="days",
                     help="unit of model time when --time holds dates or durations (default days): dates "
                          "count from the earliest visit")
    fit.add_argument("--basis", default=DEFAULT_TIME_BASIS,
                     help=f"time basis (default {DEFAULT_TIME_BASIS}), e.g. 'spline(4)+fourier(7)'")
    fit.add_argument("--dispersion-model", choices=DISPERSION_MODELS, default="constant",
                     help="'constant' (default): one dispersion per outcome; 'linear': log dispersion linear "
                          "in the time features and covariates; 'linear+random': and in the random effects")
    fit.add_argument("--networks", choices=("dense", "linear"), default="dense",
                     help="'dense' (default): the DGMM's networks of time and covariates (fixed) and of b "
                          "(random); 'linear': none, a linear mixed model on --basis (with --basis 'poly(1)', "
                          "lme4's random intercept and slope per outcome, sharing b)")
    fit.add_argument("--serial-outcome", action="append", default=[], metavar="NAME",
                     help="add a Brownian drift to this outcome's linear predictor, so that intervals widen with "
                          "the gap from the last visit (pyro_dgmm.serial; its scale is refined by maximum "
                          "likelihood after the fit unless --refine no); repeat")
    fit.add_argument("--serial-terms", type=int, default=None, metavar="J",
                     help="basis functions per --serial-outcome (default 8; more resolve shorter time scales)")
    fit.add_argument("--time-functions", type=_time_functions, default="auto", metavar="M",
                     help="random coefficients of M learned functions of time (e.g. a random amplitude and phase; "
                          "docs/model.md); 'auto' (default): 0 or 4, chosen by a race on the held-out loss "
                          "(docs/fitting.md)")
    fit.add_argument("--encoder", choices=ENCODERS, default="set",
                     help="the guide's encoder: 'set' (default; pools over visits), 'dense' (the talk's flat "
                          "record) or 'sequence' (attention over the visits in time)")
    fit.add_argument("--latent-dim", type=_latent_dim, default="auto",
                     help="dimension of the random effects b, or 'auto' (default: grows while all are in use)")
    fit.add_argument("--preset", choices=sorted(PRESETS), default="accurate",
                     help="'accurate' (default): fit until converged; 'fast': a quick look, less accurate")
    fit.add_argument("--refine", nargs="?", const="yes", choices=["auto", "yes", "no"], default="auto",
                     help="after SVI, maximise the marginal likelihood over the linear parts and dispersions: "
                          "'auto' (default) where it has a closed form (linear mixed models), 'yes' (or bare --refine) "
                          "always, 'no' never")
    fit.add_argument("--max-epochs", type=int, default=None, help="cap on the epochs (default: the preset's)")
    fit.add_argument("--restarts", type=int, default=None,
                     help="refits from other seeds when a fit leaves structure in its residuals (default: the preset's)")
    fit.add_argument("--race-epochs", type=int, default=None,
                     help="epochs of the race that chooses --time-functions auto (0: none; default: the preset's)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    fit.add_argument("--num-shards", type=int, default=None,
                     help="subject shards (default: number of torchrun processes); see pyro_dgmm.parallel")
    fit.add_argument("--split", choices=("hash", "file"), default="hash",
                     help="--partitioned: subjects to processes by id hash, or part files to processes")
    cli_joint.add_fit_arguments(fit)
    fit.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--checkpoint", type=Path, metavar="PATH",
                     help="write the fit's full state to PATH every --checkpoint-every epochs and when it stops "
                          "(also on Ctrl-C), so that --resume can continue it")
    fit.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="epochs between checkpoints (default 10)")
    fit.add_argument("--resume", action="store_true",
                     help="continue from --checkpoint (same data and options; needs a fixed --latent-dim)")
    fit.add_argument("--log-likelihood", action="store_true",
                     help="estimate the marginal log-likelihood by importance sampling after the fit and put "
                          "it in summary.json (minutes for hundreds of subjects)")
    fit.add_argument("--log-likelihood-samples", type=int, default=500, metavar="S",
                     help="importance samples per subject for --log-likelihood (default 500)")
    pred = sub.add_parser("predict", help="dynamic predictions from a saved model and a history CSV",
                          formatter_class=raw, epilog=PREDICT_EXAMPLES)
    pred.add_argument("--model", type=Path, required=True, help="model.pt written by 'fit'")
    pred.add_argument("--history", type=Path, required=True,
                      help="CSV with the training columns: each subject's visits so far (outcomes may be empty)")
    _add_csv_options(pred)
    pred.add_argument("--times", nargs="+", help="times to predict at: numbers, or dates (e.g. 2024-05-01) for a "
                      "model fitted on dates; for a joint model those of --trajectory")
    cli_joint.add_predict_arguments(pred)
    pred.add_argument("--relative", action="store_true", help="times are offsets from each subject's last visit")
    pred.add_argument("--levels", type=float, nargs="+", default=[0.95],
                      help="interval levels, as fractions or percents: 0.95 or 95 (default 0.95); several "
                           "give several intervals, e.g. --levels 0.8 0.95")
    pred.add_argument("--num-samples", type=int, default=1000)
    pred.add_argument("--out", type=Path, required=True, help="CSV of tidy predictions")
    return parser


def _add_csv_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sep", default=",", type=_separator,
                        help="CSV field separator: one character (default ','), e.g. ';', or '\\t' for tabs")
    parser.add_argument("--encoding", default="utf-8", help="CSV text encoding (default utf-8), e.g. latin-1")


def _separator(text: str) -> str:
    """--sep: one character; the two characters ``\\t`` mean a tab."""
    text = "\t" if text == "\\t" else text
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"must be one character (or '\\t' for tabs), got '{text}'")
    return text


def read_csv(path: Path, option: str, *, sep: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """Read the CSV file given as ``option`` (e.g. ``--csv``), or raise an
    error naming the option and the file: a missing file, a folder, an
    empty file, text that is not ``encoding`` (suggests ``--encoding``), a
    file that does not parse, or one read as a single column whose header
    holds another separator (suggests ``--sep``)."""
    if not path.exists():
        raise ConfigError(f"{option} {path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder, not a CSV file")
    if path.stat().st_size == 0:
        raise DataError(f"{option} {path} is empty (0 bytes)")
    try:
        df = pd.read_csv(path, sep=sep, encoding=encoding)
    except LookupError:
        raise ConfigError(f"--encoding '{encoding}' is not a known text encoding (e.g. utf-8, latin-1)") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{option} {path} is not {encoding} text (byte {error.start}: {error.reason}); "
                        "pass its encoding, e.g. --encoding latin-1") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{option} {path} has no columns (blank lines only)") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise DataError(f"{option} {path} cannot be read as CSV with --sep '{sep}': "
                        f"{str(error).strip().splitlines()[-1]}") from None
    except OSError as error:
        raise ConfigError(f"{option} {path} cannot be read: {error.strerror or error}") from None
    if df.shape[1] == 1:
        header = str(df.columns[0])
        for other, name, flag in ((";", "';'", "--sep ';'"), ("\t", "tabs", "--sep '\\t'"), ("|", "'|'", "--sep '|'")):
            if other != sep and other in header:
                raise DataError(f"{option} {path} was read as one column '{header[:60]}': its fields look "
                                f"separated by {name}, not {sep!r}; pass {flag}")
    if df.empty:
        raise DataError(f"{option} {path} has a header but no rows")
    return df


def parse_time_column(df: pd.DataFrame, column: str, source) -> pd.DataFrame:
    """``df`` with a text time column read as dates (ISO 8601 and the like)
    or, failing that, durations (``'3 days'``, ``'04:30:00'``); numbers are
    left as they are.  A text column that is neither is a
    :class:`~pyro_dgmm.errors.DataError` naming the column, a bad value and
    its row."""
    series = df[column]
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return df
    for parse in (lambda x: pd.to_datetime(x, format="mixed"), pd.to_timedelta):
        try:
            parsed = parse(series)
        except (ValueError, TypeError, OverflowError):
            continue
        return df.assign(**{column: parsed})
    numbers = pd.to_numeric(series, errors="coerce")
    bad = series.notna() & numbers.isna()
    row = bad.idxmax() if bad.any() else series.index[0]
    raise DataError(f"time column '{column}' of {source} holds text that is neither a number, a date nor a "
                    f"duration (e.g. {series[row]!r} in row {row})")


def _prediction_times(values: list[str], history_times: pd.Series, relative: bool) -> list:
    """--times as numbers, or as dates when the model's time column holds dates."""
    try:
        return [float(v) for v in values]
    except ValueError:
        pass
    if relative or not pd.api.types.is_datetime64_any_dtype(history_times):
        raise ConfigError(f"--times must be numbers for this model{' with --relative' if relative else ''}, "
                          f"got {values}")
    try:
        times = pd.to_datetime(pd.Series(values), format="mixed")
    except (ValueError, TypeError) as error:
        raise ConfigError(f"--times: {values} are not all dates ({error})") from None
    if history_times.dt.tz is not None and times.dt.tz is None:
        times = times.dt.tz_localize(history_times.dt.tz)
    return list(times)


def check_columns(df: pd.DataFrame, source: str, columns: dict[str, list[str]]) -> None:
    """Every column named on the command line (``columns``: option ->
    names) is in ``df`` (read from ``source``); otherwise a
    :class:`~pyro_dgmm.errors.DataError` naming the option, the column, the
    closest existing one and the columns there are."""
    available = [str(c) for c in df.columns]
    for option, names in columns.items():
        for name in names:
            if name not in available:
                more = f" (and {len(available) - 30} more)" if len(available) > 30 else ""
                listed = ", ".join(available[:30]) + more
                raise DataError(f"{option} '{name}' is not a column of {source} (its columns: {listed})"
                                f"{suggestion(name, available)}")


def check_output_file(path: Path, option: str = "--out") -> None:
    """Fail before any work if the output file ``path`` cannot be written:
    it is a folder, something above it is a regular file, or the nearest
    existing folder above it is not writable.  (Output folders are checked
    by :func:`~pyro_dgmm.files.check_folder_target`.)"""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, so nothing can be written below it")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path}: no permission to write there")


def interval_levels(values: list[float]) -> list[float]:
    """--levels as fractions: a level in (0, 1) as it is, a percent in
    (1, 100) divided by 100 (``95`` is 0.95); anything else is a
    :class:`~pyro_dgmm.errors.ConfigError`.

    >>> interval_levels([0.8, 95])
    [0.8, 0.95]
    """
    levels = []
    for value in values:
        level = value / 100 if 1 < value < 100 else value
        if not 0 < level < 1:
            raise ConfigError(f"--levels {value:g}: give a level between 0 and 1 (e.g. 0.95) or a percent "
                              "between 1 and 100 (e.g. 95)")
        levels.append(level)
    return levels


def _latent_dim(text: str, minimum: int = 1) -> int | str:
    """--latent-dim: a positive integer or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else "an integer >= 0"
        raise argparse.ArgumentTypeError(f"must be {kind} or 'auto', got '{text}'")
    return value


def _time_functions(text: str) -> int | str:
    """--time-functions: an integer >= 0 or 'auto'."""
    return _latent_dim(text, minimum=0)


def run_predict(args: argparse.Namespace) -> dict | None:
    """Load a saved model, predict, write the tidy table; under ``torchrun``
    every process predicts its shards' subjects and rank 0 alone writes
    (returns None on the other ranks)."""
    import time

    from .estimator import DeepMixedModel
    from .parallel import init_from_environment, is_main_process

    init_from_environment()
    if not args.model.is_file():
        raise ConfigError(f"--model {args.model}: no such file" if not args.model.exists()
                          else f"--model {args.model} is a folder, not a saved model")
    check_output_file(args.out)
    levels = interval_levels(args.levels)
    joint = saved_facade(args.model) == "JointMixedModel"
    cli_joint.check_predict_flags(args, joint)
    if joint:
        return cli_joint.predict_events(args, levels)
    history = read_csv(args.history, "--history", sep=args.sep, encoding=args.encoding)
    model = DeepMixedModel.load(args.model)
    check_columns(history, args.history, {"model's id column": [model.id_col], "model's time column": [model.time_col]})
    history = parse_time_column(history, model.time_col, args.history)
    times = _prediction_times(args.times, history[model.time_col], args.relative)
    start = time.perf_counter()
    table = model.predict(history, times, relative=args.relative, levels=levels,
                          num_samples=args.num_samples).table
    seconds = time.perf_counter() - start
    if not is_main_process():
        return None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format=CSV_FLOAT_FORMAT)
    return {"subjects": int(table[model.id_col].nunique()), "rows": len(table), "file": str(args.out),
            "predict_seconds": round(seconds, 3)}


def _model_options(args: argparse.Namespace, outcomes: dict) -> dict:
    """The model options of ``--dispersion-model``, ``--networks``, ``--time-functions`` and ``--serial-outcome``."""
    options = {"dispersion_model": args.dispersion_model}
    if args.networks == "linear":
        options.update(fixed_hidden=(), random_hidden=())
    unknown = [name for name in args.serial_outcome if name not in outcomes]
    if unknown:
        raise ConfigError(f"--serial-outcome {', '.join(unknown)}: not an outcome of the fit "
                          f"({', '.join(outcomes)})")
    if args.serial_terms is not None and not args.serial_outcome:
        raise ConfigError("--serial-terms needs --serial-outcome (the outcomes that carry the process)")
    if args.serial_outcome:
        options.update(serial_process="brownian", serial_outcomes=list(args.serial_outcome))
    if args.serial_terms is not None:  # else the model's default
        options["serial_terms"] = args.serial_terms
    if args.time_functions != "auto":
        options["time_functions"] = args.time_functions
    return options


def run_fit(args: argparse.Namespace) -> dict | None:
    """Fit and write the outputs; under ``torchrun`` every process fits its
    shards and rank 0 alone writes (returns None on the other ranks).
    ``--out`` is checked before the fit and switched to the new outputs in
    one atomic step after it (module docstring)."""
    from .estimator import DeepMixedModel
    import torch

    from .parallel import agree, all_reduce_sum, init_from_environment, is_main_process
    from .partitioned import read_subjects
    from .plotting import plot_loss, plot_subjects

    init_from_environment(args.device)
    # before reading or fitting, not after an hour's fit
    agree(lambda: check_folder_target(args.out, FIT_OUTPUTS) if is_main_process() else None)
    if args.dataset:
        refuse_csv_options(args)
        df, id_col, time_col, outcomes, covariates = shipped(args.dataset, args.seed, parse_outcomes(args.outcome))
    else:
        if not (args.id and args.time and args.outcome):
            raise ConfigError("CSV input needs --id, --time and at least one --outcome NAME:FAMILY")
        id_col, time_col, covariates = args.id, args.time, list(args.covariate)
        columns = {"--covariate": covariates}
        if args.covariate_formula is not None:
            if covariates:
                raise ConfigError("give the covariates either as --covariate columns or as --covariate-formula, "
                                  "not both")
            covariates, variables = parse_covariate_formula(args.covariate_formula)
            columns = {"--covariate-formula": variables}
        outcomes = parse_outcomes(args.outcome)
        if args.partitioned:
            if args.covariate_formula is not None:
                raise ConfigError("--covariate-formula cannot be used with --partitioned yet: use --covariate")
            df = read_subjects(args.partitioned, id_col, split=args.split,
                               columns=[id_col, time_col, *outcomes, *covariates])
        else:
            df = read_csv(args.csv, "--csv", sep=args.sep, encoding=args.encoding)
            check_columns(df, args.csv, {"--id": [id_col], "--time": [time_col], "--outcome": list(outcomes),
                                         **columns})
        df = parse_time_column(df, time_col, args.csv or args.partitioned)
    events = cli_joint.event_options(args, id_col, outcomes)
    facade = DeepMixedModel if events is None else cli_joint.joint_facade(args.association)
    model = facade(id_col=id_col, time_col=time_col, outcomes=outcomes, covariates=covariates,
                   time_basis=args.basis, latent_dim=args.latent_dim, time_unit=args.time_unit,
                   encoder=args.encoder, model_options=_model_options(args, outcomes))
    overrides = {"seed": args.seed, "progress": not args.quiet, "num_shards": args.num_shards,
                 "device": None if args.device == "auto" else args.device}
    for name in ("max_epochs", "restarts", "race_epochs"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides["refine"] = {"auto": "auto", "yes": True, "no": False}[args.refine]
    if args.resume and args.checkpoint is None:
        raise ConfigError("--resume needs --checkpoint PATH (the checkpoint to continue from)")
    if args.checkpoint is not None:
        overrides.update(checkpoint=args.checkpoint, resume=args.resume)
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    rows, subjects = len(df), df[id_col].nunique()
    if args.partitioned:  # each process holds its own subjects
        rows, subjects = all_reduce_sum(torch.tensor([rows, subjects], dtype=torch.int64)).tolist()
    log.info("fitting %d rows, %d subjects, outcomes %s", rows, subjects, list(outcomes))
    model.fit(df, preset=args.preset, **(events or {"distributed_input": bool(args.partitioned)}), **overrides)
    if model.result_.interrupted:  # Ctrl-C: no outputs from a fit that did not finish
        raise KeyboardInterrupt(f"fit stopped in epoch {model.result_.epochs_run}; "
                                + (f"checkpoint at {args.checkpoint} (rerun with --resume to continue)"
                                   if args.checkpoint else "no checkpoint (use --checkpoint PATH to be able to resume)"))
    fitted = model.fitted_values()  # sharded over processes, gathered everywhere
    likelihood = log_likelihood_summary(model, args) if args.log_likelihood else None
    coefficients = None if events is None else model.event_standard_errors(seed=args.seed)
    if not is_main_process():
        return None
    with atomic_folder(args.out, FIT_OUTPUTS) as out:
        fitted.to_csv(out / "fitted.csv", index=False, float_format=CSV_FLOAT_FORMAT)
        plot_subjects(fitted, list(outcomes), id_col=id_col, time_col=time_col, seed=args.seed,
                      families=model.schema_.families).savefig(
            out / "subjects.png", dpi=110)
        plot_loss(model.result_).savefig(out / "loss.png", dpi=110)
        model.save(out / "model.pt")
        summary = fit_summary(model, rows, subjects, outcomes, files=sorted(p.name for p in out.iterdir()),
                           log_likelihood=likelihood)
        if coefficients is not None:
            cli_joint.write_outputs(model, out, summary, coefficients)
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns
    the exit code: 0, 2 for a bad input or option (one ``error:`` line on
    stderr), 130 after Ctrl-C."""
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(message)s")
    args = build_parser().parse_args(argv)
    from torch import distributed

    owns_group = not (distributed.is_available() and distributed.is_initialized())  # else the caller's
    try:
        summary = run_fit(args) if args.command == "fit" else run_predict(args)
    except DgmmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2  # no teardown: a barrier would wait for processes that did not fail
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, no traceback, the shell's code for SIGINT
        print(f"interrupted: {interrupt or 'stopped before the outputs were written'}", file=sys.stderr)
        return 130
    if owns_group:
        from .parallel import end_process_group

        end_process_group()
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return 0
