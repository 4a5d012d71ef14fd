"""Command line: ``python -m pyro_dgmm fit ...`` (also installed as ``pyro-dgmm``).

Fits a DGMM to a CSV file or a shipped data set and writes, into ``--out``:

* ``fitted.csv``  -- observed values and fitted subject-specific means per visit
* ``subjects.png`` -- a few subjects' observed values and fitted curves
* ``loss.png``    -- training and held-out loss per epoch
* ``model.pt``    -- the fitted model (``DeepMixedModel.load``)
* ``summary.json`` -- fit settings, epochs, stop reason and convergence, latent
  directions in use, time, dispersion estimates

Dynamic predictions from a saved model (writes a tidy CSV)::

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

Examples::

    python -m pyro_dgmm fit --dataset pbc --out outputs/pbc
    python -m pyro_dgmm fit --csv visits.csv --id patient --time years \\
        --outcome albumin:gaussian --outcome ascites:bernoulli --covariate age --out outputs/mine
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from .bases import DEFAULT_TIME_BASIS
from .errors import ConfigError, DgmmError
from .fit import PRESETS
from .model import DISPERSION_MODELS

log = logging.getLogger("pyro_dgmm")

SHIPPED = ("pbc", "linear", "nonlinear", "dropout", "app")


def _shipped(name: str, seed: int):
    """(frame, id, time, outcomes, covariates) of a shipped data set."""
    from . import datasets

    if name == "pbc":
        return (datasets.load_pbc(), datasets.PBC_ID, datasets.PBC_TIME, dict(datasets.PBC_OUTCOMES),
                list(datasets.PBC_COVARIATES))
    sim = datasets.SIMULATORS[name](seed=seed)
    return sim.data, sim.id_col, sim.time_col, dict(sim.outcomes), list(sim.covariates)


def _parse_outcomes(items: list[str]) -> dict[str, str]:
    outcomes = {}
    for item in items:
        name, sep, family = item.rpartition(":")
        if not sep or not name:
            raise ConfigError(f"--outcome expects NAME:FAMILY (e.g. y:gaussian), got '{item}'")
        outcomes[name] = family
    return outcomes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro_dgmm", description="Deep Generalized Mixed Models on Pyro")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a DGMM and write fitted trajectories, plots and the model")
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=SHIPPED, help="a shipped data set")
    source.add_argument("--csv", type=Path, help="a long-format CSV file (one row per visit)")
    source.add_argument("--partitioned", type=Path, metavar="PATH",
                        help="a directory of CSV/Parquet part files, or one big CSV: each process reads "
                             "only its subjects (see pyro_dgmm.partitioned)")
    fit.add_argument("--id", help="subject id column (CSV input)")
    fit.add_argument("--time", help="time column (CSV input)")
    fit.add_argument("--outcome", action="append", default=[], metavar="NAME:FAMILY",
                     help="outcome column and family (gaussian, student_t, bernoulli, poisson, bounded(LOW,HIGH)); "
                          "repeat")
    fit.add_argument("--covariate", action="append", default=[], help="baseline covariate column; repeat")
    fit.add_argument("--basis", default=DEFAULT_TIME_BASIS,
                     help=f"time basis (default {DEFAULT_TIME_BASIS}), e.g. 'spline(4)+fourier(7)'")
    fit.add_argument("--dispersion-model", choices=DISPERSION_MODELS, default="constant",
                     help="'constant' (default): one dispersion per outcome; 'linear': log dispersion linear "
                          "in the time features and covariates; 'linear+random': and in the random effects")
    fit.add_argument("--latent-dim", type=_latent_dim, default="auto",
                     help="dimension of the random effects b, or 'auto' (default: grows while all are in use)")
    fit.add_argument("--preset", choices=sorted(PRESETS), default="accurate",
                     help="'accurate' (default): fit until converged; 'fast': a quick look, less accurate")
    fit.add_argument("--refine", action="store_true",
                     help="after SVI, maximise the marginal likelihood over the linear parts and dispersions")
    fit.add_argument("--max-epochs", type=int, default=None, help="cap on the epochs (default: the preset's)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    fit.add_argument("--num-shards", type=int, default=None,
                     help="subject shards (default: number of torchrun processes); see pyro_dgmm.parallel")
    fit.add_argument("--split", choices=("hash", "file"), default="hash",
                     help="--partitioned: subjects to processes by id hash, or part files to processes")
    fit.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--checkpoint", type=Path, metavar="PATH",
                     help="write the fit's full state to PATH every --checkpoint-every epochs and when it stops "
                          "(also on Ctrl-C), so that --resume can continue it")
    fit.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="epochs between checkpoints (default 10)")
    fit.add_argument("--resume", action="store_true",
                     help="continue from --checkpoint (same data and options; needs a fixed --latent-dim)")
    pred = sub.add_parser("predict", help="dynamic predictions from a saved model and a history CSV")
    pred.add_argument("--model", type=Path, required=True, help="model.pt written by 'fit'")
    pred.add_argument("--history", type=Path, required=True,
                      help="CSV with the training columns: each subject's visits so far (outcomes may be empty)")
    pred.add_argument("--times", type=float, nargs="+", required=True, help="times to predict at")
    pred.add_argument("--relative", action="store_true", help="times are offsets from each subject's last visit")
    pred.add_argument("--levels", type=float, nargs="+", default=[0.95], help="interval levels")
    pred.add_argument("--num-samples", type=int, default=1000)
    pred.add_argument("--out", type=Path, required=True, help="CSV of tidy predictions")
    return parser


def _latent_dim(text: str) -> int | str:
    """--latent-dim: a positive integer or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got '{text}'")
    return value


def run_predict(args: argparse.Namespace) -> dict | None:
    """Load a saved model, predict, write the tidy table; under ``torchrun``
    every process predicts its shards' subjects and rank 0 alone writes
    (returns None on the other ranks)."""
    import time

    from .estimator import DeepMixedModel
    from .parallel import init_from_environment, is_main_process

    init_from_environment()
    for path in (args.model, args.history):
        if not path.exists():
            raise ConfigError(f"file {path} does not exist")
    model = DeepMixedModel.load(args.model)
    history = pd.read_csv(args.history)
    start = time.perf_counter()
    table = model.predict(history, args.times, relative=args.relative, levels=args.levels,
                          num_samples=args.num_samples).table
    seconds = time.perf_counter() - start
    if not is_main_process():
        return None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    return {"subjects": int(table[model.id_col].nunique()), "rows": len(table), "file": str(args.out),
            "predict_seconds": round(seconds, 3)}


def run_fit(args: argparse.Namespace) -> dict | None:
    """Fit and write the outputs; under ``torchrun`` every process fits its
    shards and rank 0 alone writes (returns None on the other ranks)."""
    from .estimator import DeepMixedModel
    import torch

    from .parallel import all_reduce_sum, init_from_environment, is_main_process
    from .partitioned import read_subjects
    from .plotting import plot_loss, plot_subjects

    init_from_environment(args.device)

    if args.dataset:
        df, id_col, time_col, outcomes, covariates = _shipped(args.dataset, args.seed)
    else:
        if not (args.id and args.time and args.outcome):
            raise ConfigError("CSV input needs --id, --time and at least one --outcome NAME:FAMILY")
        id_col, time_col, covariates = args.id, args.time, list(args.covariate)
        outcomes = _parse_outcomes(args.outcome)
        if args.partitioned:
            df = read_subjects(args.partitioned, id_col, split=args.split,
                               columns=[id_col, time_col, *outcomes, *covariates])
        elif not args.csv.exists():
            raise ConfigError(f"CSV file {args.csv} does not exist")
        else:
            df = pd.read_csv(args.csv)
    model = DeepMixedModel(id_col=id_col, time_col=time_col, outcomes=outcomes, covariates=covariates,
                           time_basis=args.basis, latent_dim=args.latent_dim,
                           model_options={"dispersion_model": args.dispersion_model})
    overrides = {"seed": args.seed, "progress": not args.quiet, "num_shards": args.num_shards,
                 "device": None if args.device == "auto" else args.device}
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    if args.refine:
        overrides["refine"] = True
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
    model.fit(df, preset=args.preset, distributed_input=bool(args.partitioned), **overrides)
    if model.result_.interrupted:  # Ctrl-C: no outputs from a fit that did not finish
        raise KeyboardInterrupt(f"fit stopped in epoch {model.result_.epochs_run}; "
                                + (f"checkpoint at {args.checkpoint} (rerun with --resume to continue)"
                                   if args.checkpoint else "no checkpoint (use --checkpoint PATH to be able to resume)"))
    fitted = model.fitted_values()  # sharded over processes, gathered everywhere
    if not is_main_process():
        return None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fitted.to_csv(out / "fitted.csv", index=False)
    plot_subjects(fitted, list(outcomes), id_col=id_col, time_col=time_col, seed=args.seed).savefig(
        out / "subjects.png", dpi=110)
    plot_loss(model.result_).savefig(out / "loss.png", dpi=110)
    model.save(out / "model.pt")
    result = model.result_
    summary = {
        "rows": int(rows), "subjects": int(subjects), "outcomes": outcomes,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "annealed_at_epoch": result.annealed_at,
        "stop_reason": result.stop_reason, "converged": result.converged,
        "latent_dim": model.latent_dim_, "active_directions": result.active_directions,
        "latent_activity": [round(v, 4) for v in result.latent_activity],
        "refinement": result.refinement,
        "fit_seconds": round(result.seconds, 2),
        "dispersion": {name: _dispersion_summary(model.model_, name)
                       for name in outcomes if model.model_.dispersion_coefficients(name) is not None},
        "shape": {name: {key: float(value.detach()) for key, value in model.model_.shape_parameters(name).items()}
                  for name in outcomes if model.model_.shape_parameters(name)},
        "files": sorted(p.name for p in out.iterdir()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _dispersion_summary(model, name: str):
    """A constant dispersion's value, or the log-linear coefficients (a, slopes) of a linear one."""
    coefficients = model.dispersion_coefficients(name).detach()
    if coefficients.numel() == 1:
        return float(coefficients.exp())
    return {"log_coefficients": [round(float(v), 6) for v in coefficients]}


def main(argv: list[str] | None = None) -> int:
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
