"""Shared pieces of the benchmark scripts: reference fits, metrics, tables.

Reference models are statsmodels ``MixedLM`` fits (maximum likelihood) with
random intercept and slope in time, and fixed effects either linear in time
or a natural cubic spline of time (the same basis pyro_dgmm uses), plus the
simulator's covariates.  Subject-specific means are X beta + Z b_hat (BLUPs)
at every planned cell, observed or not.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_dgmm.evaluation import auc  # noqa: F401  (re-exported for the scripts)


def single_thread() -> None:
    """One torch thread: the machines are shared and 2-core (see README)."""
    import torch

    torch.set_num_threads(1)


def covariate_design(df: pd.DataFrame, covariates: list[str]) -> np.ndarray:
    """Numeric covariates as they are, categoricals as treatment dummies."""
    parts = []
    for col in covariates:
        if pd.api.types.is_numeric_dtype(df[col]) and not isinstance(df[col].dtype, pd.CategoricalDtype):
            parts.append(df[col].to_numpy(float)[:, None])
        else:
            dummies = pd.get_dummies(df[col].astype(str), drop_first=True, dtype=float)
            parts.append(dummies.to_numpy())
    return np.hstack(parts) if parts else np.zeros((len(df), 0))


def mixedlm_design(df: pd.DataFrame, covariates: list[str], basis=None,
                   time_col: str = "time") -> tuple[np.ndarray, np.ndarray]:
    """MixedLM's design matrices for the rows of ``df``: fixed effects
    X = [1, time part, covariates], the time part the columns of a fitted
    ``NaturalSpline`` ``basis`` (or time itself for None), and random
    effects Z = [1, time]."""
    t = df[time_col].to_numpy(float, copy=True)  # writable: torch.as_tensor warns on a read-only view
    if basis is None:
        time_part = t[:, None]
    else:
        import torch

        time_part = basis.transform(torch.as_tensor(t)).numpy()
    return (np.column_stack([np.ones(len(df)), time_part, covariate_design(df, covariates)]),
            np.column_stack([np.ones(len(df)), t]))


def fit_mixedlm(df: pd.DataFrame, outcome: str, covariates: list[str], *, spline_df: int | None = None,
                id_col: str = "id", time_col: str = "time") -> tuple[np.ndarray, float]:
    """Fit MixedLM on the observed rows of ``df``; return subject-specific means
    for every row of ``df`` and the fit's wall time in seconds."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    from pyro_dgmm.bases import NaturalSpline

    observed_times = df.loc[df[outcome].notna(), time_col].to_numpy(float)
    basis = NaturalSpline(df=spline_df).fit(observed_times) if spline_df else None
    X, Z = mixedlm_design(df, covariates, basis, time_col)
    obs = df[outcome].notna().to_numpy()
    groups = df[id_col].to_numpy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = MixedLM(df[outcome].to_numpy()[obs], X[obs], groups=groups[obs], exog_re=Z[obs]).fit(reml=False)
    seconds = time.perf_counter() - start
    blup = result.random_effects
    b = np.vstack([np.asarray(blup[g]) for g in groups])
    return X @ np.asarray(result.fe_params) + (Z * b).sum(1), seconds


def best_mixedlm(sim) -> tuple[float, float]:
    """(RMSE against the truth, fit seconds) of the better of MixedLM's two
    fixed-effects designs (linear time, spline(4) time) on a simulator's
    Gaussian outcome ``y``: the reference of issue 6's accuracy targets."""
    truth = sim.truth["y_mean"].to_numpy()
    fits = [fit_mixedlm(sim.data, "y", sim.covariates, spline_df=df) for df in (None, 4)]
    return min((rmse(means, truth), seconds) for means, seconds in fits)


def peak_resident_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB.  Unlike
    ``getrusage(...).ru_maxrss`` it is not inherited from the parent across
    ``exec``, so fresh-process measurements are honest."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(script: str, *args: str, timeout: float | None = None) -> dict:
    """Run ``script`` with ``args`` in a fresh single-thread process; return its
    last JSON line.  Its stderr (progress bars, errors) goes to ours as it
    runs.  Past ``timeout`` seconds the child is killed and
    ``subprocess.TimeoutExpired`` raised."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, script, *args], stdout=subprocess.PIPE, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path})
    if out.returncode:
        raise RuntimeError(f"child {args} failed (exit {out.returncode}); its error is printed above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def brier(prob: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean((np.asarray(prob) - np.asarray(label)) ** 2))


def print_table(rows: list[dict], title: str) -> None:
    """Print rows (dicts with the same keys) as a fixed-width table."""
    frame = pd.DataFrame(rows)
    print(f"\n{title}\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def report(rows: list[dict], title: str, totals: list[dict], totals_title: str, name: str) -> None:
    """Print per-fit ``rows`` and their ``totals`` as tables; write both to ``results/<name>.json``."""
    print_table(rows, title)
    print_table(totals, totals_title)
    write_json(rows + totals, name)


def source_commit() -> str:
    """The checkout's commit (with ``+changes`` if files differ from it), or
    ``'unknown'`` outside a git checkout: which code produced a result."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "pyro_dgmm", "benchmarks",
                                ":!benchmarks/results"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def write_json(rows: list[dict], name: str, device: str = "cpu") -> Path:
    """Write rows to benchmarks/results/<name>.json (with machine facts)."""
    import platform

    import torch

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "device": device, "commit": source_commit()}
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return path
