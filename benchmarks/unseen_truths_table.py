"""Print the docs' table of the unseen truths (issue 19) from the per-truth
result files ``results/unseen_truths_final_<truth>.json`` written by
``unseen_truths.py --truths <truth> --output unseen_truths_final_<truth>``.

Run:  python benchmarks/unseen_truths_table.py
"""
from __future__ import annotations

import json
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


def main() -> None:
    print("| truth | outcome | seeds | pyro_dgmm RMSE | / best baseline | / oracle | active directions | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    many = None
    for truth in TRUTHS:
        path = RESULTS / f"unseen_truths_final_{truth}.json"
        if not path.exists():
            print(f"| {truth} | — | not run | | | | | |")
            continue
        summary = [r for r in json.loads(path.read_text())["rows"] if r.get("quantity")]
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
    main()
