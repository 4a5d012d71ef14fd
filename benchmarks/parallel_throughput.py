"""Issue 8 benchmark: fitting and prediction throughput with 1 and 2 processes (gloo, CPU).

Fits the app-like simulator (or another shipped data set) for a fixed number
of epochs through the command line, once in one process and once under
``torchrun --nproc_per_node=2`` with the same global batch, then predicts
every subject one and two time units after its last visit from the saved
model (``pyro_dgmm predict``, sharded over the processes), and prints
subjects processed per second and the scaling efficiency
(throughput_2 / (2 * throughput_1)) of both.  Each process uses one thread;
on a 2-core machine the ideal is 2x.  Repeats are interleaved and medians reported.

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

from pyro_dgmm.cli import _shipped

ROOT = Path(__file__).resolve().parent.parent


def launch(processes: int, cli: list[str]) -> str:
    """Run ``python -m pyro_dgmm CLI`` in ``processes`` processes; rank 0's stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        command = [sys.executable, "-m", "pyro_dgmm", *cli]
    else:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
                   f"--nproc_per_node={processes}", "-m", "pyro_dgmm", *cli]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


def run(processes: int, dataset: str, epochs: int, out: Path, device: str) -> dict:
    launch(processes, ["fit", "--dataset", dataset, "--max-epochs", str(epochs), "--quiet", "--num-shards", "2",
                       "--device", device, "--out", str(out)])
    return json.loads((out / "summary.json").read_text())


def run_predict(processes: int, model: Path, history: Path, samples: int, out: Path) -> dict:
    stdout = launch(processes, ["predict", "--model", str(model), "--history", str(history), "--times", "1", "2",
                                "--relative", "--num-samples", str(samples), "--out", str(out)])
    return json.loads(stdout[stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="app")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-samples", type=int, default=200, help="draws per subject when predicting")
    parser.add_argument("--device", default="cpu",
                        help="device of the fits: 'cuda' runs one GPU per process (NCCL; needs 2 GPUs)")
    args = parser.parse_args()
    seconds = {("fit", 1): [], ("fit", 2): [], ("predict", 1): [], ("predict", 2): []}
    subjects = None
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "history.csv"
        _shipped(args.dataset, 0)[0].to_csv(history, index=False)  # the fit's data (seed 0)
        for r in range(args.repeats):
            for processes in (1, 2):
                out = Path(tmp) / f"{processes}_{r}"
                summary = run(processes, args.dataset, args.epochs, out, args.device)
                seconds["fit", processes].append(summary["fit_seconds"] / summary["epochs_run"])
                subjects = summary["subjects"]
            for processes in (1, 2):
                predicted = run_predict(processes, Path(tmp) / f"1_{r}" / "model.pt", history,
                                        args.predict_samples, Path(tmp) / f"predict_{processes}_{r}.csv")
                seconds["predict", processes].append(predicted["predict_seconds"])
    rows = []
    for (task, processes), values in seconds.items():
        per_pass = statistics.median(values)
        device = args.device if task == "fit" else "cpu"
        backend = "-" if processes == 1 else ("nccl" if device.startswith("cuda") else "gloo")
        rows.append({"task": task, "processes": processes, "backend": backend, "device": device, "seconds_per_pass": per_pass, "subjects_per_second": subjects / per_pass})
    for single, double in ((rows[0], rows[1]), (rows[2], rows[3])):
        double["scaling_efficiency"] = double["subjects_per_second"] / (2 * single["subjects_per_second"])
    print_table(rows, f"Throughput per epoch (fit) and per pass over all subjects (predict), {args.dataset} "
                      f"({subjects} subjects), median of {args.repeats}")
    write_json(rows, "parallel_throughput", device=args.device)


if __name__ == "__main__":
    main()
