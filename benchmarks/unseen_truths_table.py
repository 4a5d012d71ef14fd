"""Print the docs' table of the unseen truths (issue 19) from the per-truth
result files ``results/unseen_truths_final_<truth>.json`` written by
``unseen_truths.py --truths <truth> --output unseen_truths_final_<truth>``,
or from the result files given (each may hold several truths).

With ``--references FILE ...`` the summary is computed afresh: pyro_dgmm's
rows from the files given, the baselines and oracles from the reference
files (for pyro_dgmm runs with ``--skip-baselines --skip-oracle``; where
several reference files hold an oracle of the same data, the first given
is used).

Run:  python benchmarks/unseen_truths_table.py [results/unseen_truths_A.json ...] [--references results/B.json ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TRUTHS = ["lmm_spline", "logistic_growth", "biexponential", "periodic", "mixed_trio", "sparse_irregular",
          "many_outcomes"]


def cell(row: dict | None, digits: int = 3) -> str:
    if row is None:
        return "—"
    if row["seeds"] == 1:
        return f"{row['median']:.{digits}f} (1 seed)"
    return f"{row['median']:.{digits}f} [{row['min']:.{digits}f}, {row['max']:.{digits}f}]"


def summaries(paths: list[str]) -> dict[str, list[dict]]:
    """The summary rows per truth: of the files given, else of the per-truth final files."""
    if not paths:
        paths = [RESULTS / f"unseen_truths_final_{truth}.json" for truth in TRUTHS]
    found: dict[str, list[dict]] = {}
    for path in map(Path, paths):
        if path.exists():
            for row in json.loads(path.read_text())["rows"]:
                if row.get("quantity"):
                    found.setdefault(row["truth"], []).append(row)
    return found


def recomputed(paths: list[str], references: list[str]) -> dict[str, list[dict]]:
    """Summary rows per truth of pyro_dgmm's rows in ``paths`` against the
    baseline and oracle rows of ``references``."""
    from unseen_truths import ORACLE_KEYS, summary_rows

    dgmm, baselines, oracles = [], [], []
    for path in paths:
        dgmm += [r for r in json.loads(Path(path).read_text())["rows"] if r.get("method") == "pyro_dgmm"]
    for path in references:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row.get("method") not in (None, "pyro_dgmm"):
                (oracles if set(row) == set(ORACLE_KEYS) else baselines).append(row)
    found: dict[str, list[dict]] = {}
    for row in summary_rows(dgmm, baselines, oracles):
        found.setdefault(row["truth"], []).append(row)
    return found


def main(paths: list[str]) -> None:
    references = []
    if "--references" in paths:
        at = paths.index("--references")
        paths, references = paths[:at], paths[at + 1:]
    print("| truth | outcome | seeds | pyro_dgmm RMSE | / best baseline | / oracle | active directions | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    many = None
    found = recomputed(paths, references) if references else summaries(paths)
    for truth in TRUTHS:
        if truth not in found:
            print(f"| {truth} | — | not run | | | | | |")
            continue
        summary = found[truth]
        if truth == "many_outcomes":
            many = summary
            continue
        for outcome in dict.fromkeys(r["outcome"] for r in summary):
            q = {r["quantity"]: r for r in summary if r["outcome"] == outcome}
            print(f"| {truth} | {outcome} | {q['pyro_dgmm rmse']['seeds']} | {cell(q.get('pyro_dgmm rmse'))} | "
                  f"{cell(q.get('rmse / best baseline'))} | {cell(q.get('rmse / oracle'))} | "
                  f"{cell(q.get('active directions'), 0)} | {cell(q.get('pyro_dgmm seconds'), 0)} |")
    if many:
        print("\n| truth (g) | value |\n| --- | --- |")
        for r in many:
            print(f"| {r['quantity']} | {cell(r)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
