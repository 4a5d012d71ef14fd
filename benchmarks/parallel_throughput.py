"""Issue 8 benchmark: fitting throughput with 1 and 2 processes (gloo, CPU).

Fits the app-like simulator (or another shipped data set) for a fixed number
of epochs through the command line, once in one process and once under
``torchrun --nproc_per_node=2`` with the same global batch, and prints
subjects processed per second and the scaling efficiency
(throughput_2 / (2 * throughput_1)).  Each process uses one thread; on a
2-core machine the ideal is 2x.  Repeats are interleaved and medians reported.

Run:  python benchmarks/parallel_throughput.py [--dataset app] [--epochs 5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import print_table, write_json

ROOT = Path(__file__).resolve().parent.parent


def run(processes: int, dataset: str, epochs: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cli = ["-m", "pyro_dgmm", "fit", "--dataset", dataset, "--max-epochs", str(epochs), "--quiet",
           "--num-shards", "2", "--out", str(out)]
    if processes == 1:
        command = [sys.executable, *cli]
    else:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
                   f"--nproc_per_node={processes}", *cli]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="app")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = {1: [], 2: []}
    subjects = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for processes in (1, 2):
                summary = run(processes, args.dataset, args.epochs, Path(tmp) / f"{processes}_{r}")
                seconds[processes].append(summary["fit_seconds"] / summary["epochs_run"])
                subjects = summary["subjects"]
    rows = []
    for processes, values in seconds.items():
        per_epoch = statistics.median(values)
        rows.append({"processes": processes, "backend": "gloo" if processes > 1 else "-", "device": "cpu",
                     "seconds_per_epoch": per_epoch, "subjects_per_second": subjects / per_epoch})
    efficiency = rows[1]["subjects_per_second"] / (2 * rows[0]["subjects_per_second"])
    rows[1]["scaling_efficiency"] = efficiency
    print_table(rows, f"Fitting throughput, {args.dataset} ({subjects} subjects), median of {args.repeats}")
    write_json(rows, "parallel_throughput")


if __name__ == "__main__":
    main()
