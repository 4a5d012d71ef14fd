"""The command line's joint models (:class:`~pyro_dgmm.joint_estimator.JointMixedModel`):
the event flags of ``fit`` and ``predict``, kept apart from :mod:`pyro_dgmm.cli`,
whose commands call in here.

``fit`` with ``--events FILE`` (one row per subject: the ``--id`` column,
``--event-time``, ``--event-status``, optionally ``--entry-time``) fits a
joint model; ``--event-causes 1=transplant,2=death`` names the status codes
(competing risks; several codes with one name: a composite event; default:
status 1 the event, 0 censored) and ``--association OUTCOME`` the outcome
whose current value enters the hazard (default the first).  With
``--dataset pbc`` the shipped event records are used when ``--events`` is
omitted.  ``--out`` then also holds ``event_coefficients.csv`` (every
cause's association, covariate and Weibull baseline coefficients with Wald
standard errors and 95% intervals,
:meth:`~pyro_dgmm.joint_estimator.JointMixedModel.event_standard_errors`),
and ``summary.json`` an ``events`` entry (causes, event counts, the same
coefficients).  ``predict`` on a joint model's ``model.pt`` takes
``--landmark T --horizons U ...`` and writes every subject's cumulative
incidence of each cause by each horizon given survival to T (and the
event-free probability) with 95% intervals; ``--trajectory FILE`` adds the
outcomes' predicted means given survival to T::

    python -m pyro_dgmm fit --dataset pbc --event-time futime_years --event-status status \\
        --event-causes 1=transplant,2=death --out outputs/pbc_joint
    python -m pyro_dgmm predict --model outputs/pbc_joint/model.pt --history history.csv \\
        --landmark 5 --horizons 6 7 8 --out risks.csv

Every bad flag is a :class:`~pyro_dgmm.errors.ConfigError` or
:class:`~pyro_dgmm.errors.DataError` naming it (and the column).

Example (the parsed causes):

>>> event_causes("1=transplant,2=death")
{1: 'transplant', 2: 'death'}
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import pandas as pd

from .errors import ConfigError

#: The ``fit`` flags of joint models (any of them asks for one).
EVENT_FLAGS = ("--events", "--event-time", "--event-status", "--event-causes", "--entry-time", "--association")
#: The ``predict`` flags of joint models.
PREDICT_FLAGS = ("--landmark", "--horizons", "--trajectory")


def add_fit_arguments(fit: argparse.ArgumentParser) -> None:
    """The event flags of ``fit``."""
    fit.add_argument("--events", type=Path, metavar="FILE",
                     help="CSV of event records, one row per subject (the --id column, --event-time, --event-status): "
                          "fits a joint model of the outcomes and the time to event (with --dataset pbc: the "
                          "shipped records if omitted)")
    fit.add_argument("--event-time", metavar="COL", help="events column of follow-up times (event or censoring)")
    fit.add_argument("--event-status", metavar="COL", help="events column of status codes: 0 censored, else the event")
    fit.add_argument("--event-causes", type=_causes_argument, metavar="CODE=NAME,...",
                     help="status codes and their causes, e.g. 1=transplant,2=death (competing risks) or "
                          "1=event,2=event (composite); default: 1 is the event")
    fit.add_argument("--entry-time", metavar="COL", help="events column of left-truncation (entry) times")
    fit.add_argument("--association", metavar="OUTCOME",
                     help="the outcome whose current value enters the hazard (default: the first outcome)")


def add_predict_arguments(pred: argparse.ArgumentParser) -> None:
    """The joint-model flags of ``predict``."""
    pred.add_argument("--landmark", type=float, metavar="T",
                      help="joint models: the landmark time; every --history visit is at or before it")
    pred.add_argument("--horizons", type=float, nargs="+", metavar="U",
                      help="joint models: times after --landmark for the event probabilities")
    pred.add_argument("--trajectory", type=Path, metavar="FILE",
                      help="joint models: also write the outcomes' predicted means given survival to --landmark "
                           "(at --times, default 50 points up to the last horizon)")


def event_causes(text: str) -> dict:
    """``--event-causes``: ``CODE=NAME`` pairs separated by commas, codes nonzero numbers.

    :raises ConfigError: a malformed pair (the message shows it).
    """
    causes = {}
    for item in text.split(","):
        code, sep, name = (part.strip() for part in item.partition("="))
        try:
            number = float(code)
        except ValueError:
            number = float("nan")
        if not sep or not name or not number == number or number == 0:
            raise ConfigError(f"--event-causes expects CODE=NAME pairs separated by commas with nonzero numeric "
                              f"codes (0 is censored), e.g. 1=transplant,2=death; got '{item}'")
        causes[int(number) if number.is_integer() else number] = name
    return causes


def _causes_argument(text: str) -> dict:
    """:func:`event_causes` as an argparse type (its error in argparse's form)."""
    try:
        return event_causes(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--event-causes ")) from None


def event_options(args: argparse.Namespace, id_col: str, outcomes: dict) -> dict | None:
    """The joint model's fit arguments from the event flags (None when none is
    given): the events frame (``--events``, or the shipped PBC records) and
    its columns, each named flag checked."""
    from .cli import check_columns, read_csv

    given = [flag for flag in EVENT_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    if not given:
        return None
    if args.event_time is None or args.event_status is None:
        raise ConfigError(f"{given[0]} fits a joint model, which needs --event-time COL and --event-status COL "
                          "(columns of the --events file)")
    if args.partitioned:
        raise ConfigError("--events cannot be used with --partitioned yet: give the visits as --csv")
    if args.association is not None and args.association not in outcomes:
        raise ConfigError(f"--association '{args.association}' is not an outcome (outcomes: {list(outcomes)})")
    if args.events is not None:
        events = read_csv(args.events, "--events", sep=args.sep, encoding=args.encoding)
        source = args.events
    elif args.dataset == "pbc":
        from .datasets import load_pbc_events

        events, source = load_pbc_events(), "the shipped PBC event records (load_pbc_events)"
    else:
        raise ConfigError(f"{given[0]} needs --events FILE, the event records (one row per subject)")
    check_columns(events, source, {"--id": [id_col], "--event-time": [args.event_time],
                                   "--event-status": [args.event_status],
                                   "--entry-time": [args.entry_time] if args.entry_time else []})
    return {"events": events, "event_time": args.event_time, "event_status": args.event_status,
            "event_causes": args.event_causes, "entry_time": args.entry_time}


def joint_facade(association: str | None):
    """The class ``fit`` builds for a joint model: :class:`~pyro_dgmm.joint_estimator.JointMixedModel`
    with ``--association`` bound."""
    from .joint_estimator import JointMixedModel

    return partial(JointMixedModel, association=association)


def write_outputs(model, out, summary: dict, coefficients: pd.DataFrame) -> None:
    """``event_coefficients.csv`` into the run's folder ``out`` and
    ``summary['events']``: the causes, how many subjects had each (and were
    censored), and the coefficients with their SEs."""
    from .cli import CSV_FLOAT_FORMAT

    coefficients.to_csv(out / "event_coefficients.csv", index=False, float_format=CSV_FLOAT_FORMAT)
    status = model.data_.event_status.cpu().numpy()
    summary["files"] = sorted({*summary["files"], "event_coefficients.csv"})
    summary["events"] = {
        "causes": model.causes, "event_time": model.event_spec_.time_col,
        "event_status": model.event_spec_.status_col,
        "association": list(model.association or list(model.outcomes)[:1]),
        "association_terms": list(model.association_terms), "censored": int((status == 0).sum()),
        "events": {cause: int((status == k + 1).sum()) for k, cause in enumerate(model.causes)},
        "coefficients": coefficients.to_dict(orient="records")}


def check_predict_flags(args: argparse.Namespace, joint: bool) -> None:
    """``predict``'s flags fit the saved model: the joint flags only for a
    joint model, which needs ``--landmark`` and ``--horizons``."""
    if joint and (args.landmark is None or args.horizons is None):
        raise ConfigError(f"{args.model} holds a joint model: predict needs --landmark T and --horizons U ... "
                          "(times after T)")
    unused = [flag for flag in PREDICT_FLAGS if getattr(args, flag[2:]) is not None]
    if unused and not joint:
        raise ConfigError(f"{unused[0]} is for joint models; {args.model} holds a model without events")
    if not joint and args.times is None:
        raise ConfigError("predict needs --times (the times to predict at)")


def predict_events(args: argparse.Namespace, levels: list[float]) -> dict:
    """``predict`` for a joint model: event probabilities at ``--horizons``
    given survival to ``--landmark`` (and ``--trajectory``), written atomically."""
    from .cli import CSV_FLOAT_FORMAT, _prediction_times, check_columns, check_output_file, read_csv
    from .files import atomic_path
    from .joint_estimator import JointMixedModel

    if args.relative or levels != [0.95]:
        raise ConfigError(f"{'--relative' if args.relative else '--levels'} is not available for a joint model's "
                          "event predictions (horizons are times on the model's clock; intervals are 95%)")
    if args.trajectory is not None:
        check_output_file(args.trajectory, "--trajectory")
    history = read_csv(args.history, "--history", sep=args.sep, encoding=args.encoding)
    model = JointMixedModel.load(args.model)
    check_columns(history, args.history, {"model's id column": [model.id_col], "model's time column": [model.time_col]})
    times = None if args.times is None else _prediction_times(args.times, history[model.time_col], False)
    start = time.perf_counter()
    prediction = model.predict_events(history, args.landmark, args.horizons, times=times,
                                      num_samples=args.num_samples)
    seconds = time.perf_counter() - start
    for table, path in ((prediction.events, args.out), (prediction.trajectory, args.trajectory)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False, float_format=CSV_FLOAT_FORMAT)
    return {"subjects": int(prediction.events[model.id_col].nunique()), "rows": len(prediction.events),
            "file": str(args.out), "trajectory": None if args.trajectory is None else str(args.trajectory),
            "predict_seconds": round(seconds, 3)}
