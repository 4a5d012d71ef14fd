"""Compare two settings of ``calibration.py --part pbc`` split by split, from
its result files: the docs' tables for issue 25.

For each landmark and marker, over the splits both settings were run on:
median (range) of the 95% coverage and the RMSE, the medians of the 80% and
50% coverage and the log density, the coverage and RMSE pooled over every
held-out value of those splits, and the candidate's RMSE divided by the
baseline's on each split.  First, each setting's held-out log-likelihood
per split (sum over markers and landmarks of n x mean log density).

Run (in ``benchmarks/``)::

    python calibration_table.py --baseline gaussian \
        --candidate "t for log_bili+protime, poly(1), linear nets, brownian log_bili+protime (4 terms), tau only" \
        --group 5-9 --group 0-9 results/calibration_pbc_default_poly3_a.json ...

A split run more than once for a setting (in two files) is an error: the
comparison would otherwise depend on the order of the files.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

LANDMARKS = (3.0, 5.0)
MARKERS = ("log_bili", "albumin", "protime")


def load(paths: list[str], setting: str) -> dict[tuple[int, float, str], dict]:
    """Rows of one setting keyed by (split, landmark, marker)."""
    rows: dict[tuple[int, float, str], dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row.get("setting") != setting or "split" not in row:
                continue
            key = (row["split"], row["landmark"], row["outcome"])
            if key in rows:
                raise SystemExit(f"{path}: split {key[0]}, landmark {key[1]}, {key[2]} of {setting!r} "
                                 "is in another file too")
            rows[key] = row
    return rows


def split_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def held_out_loglik(rows: dict, splits: list[int]) -> dict[int, float]:
    total: dict[int, float] = defaultdict(float)
    for (split, _, _), row in rows.items():
        if split in splits:
            total[split] += row["n"] * row["log_density"]
    return dict(sorted(total.items()))


def summary(rows: list[dict]) -> str:
    def med(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    def span(key: str) -> str:
        return f"({min(r[key] for r in rows):.3f}-{max(r[key] for r in rows):.3f})"

    n = sum(r["n"] for r in rows)
    pooled_cov = sum(r["n"] * r["coverage_95"] for r in rows) / n
    pooled_rmse = np.sqrt(sum(r["n"] * r["rmse"] ** 2 for r in rows) / n)
    return (f"{med('coverage_95'):.4f} {span('coverage_95')} | {med('coverage_80'):.3f} | {med('coverage_50'):.3f} | "
            f"{med('rmse'):.3f} {span('rmse')} | {med('log_density'):.3f} | {pooled_cov:.4f} | {pooled_rmse:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="calibration_pbc_*.json result files")
    parser.add_argument("--baseline", required=True, help="setting name, e.g. gaussian")
    parser.add_argument("--candidate", required=True, help="setting name")
    parser.add_argument("--group", action="append", default=None,
                        help="a split range to tabulate, e.g. 5-9; repeat for more (default: every split both have)")
    args = parser.parse_args()
    settings = {"baseline": load(args.files, args.baseline), "candidate": load(args.files, args.candidate)}
    common = sorted({k[0] for k in settings["baseline"]} & {k[0] for k in settings["candidate"]})
    if not common:
        raise SystemExit("no split was run with both settings")
    groups = [split_range(g) for g in args.group] if args.group else [common]
    for name, rows in settings.items():
        loglik = held_out_loglik(rows, common)
        print(f"{name} held-out log-likelihood per split:", ", ".join(f"{s}: {v:.1f}" for s, v in loglik.items()))
    for splits in groups:
        missing = [s for s in splits if s not in common]
        if missing:
            raise SystemExit(f"splits {missing} were not run with both settings")
        print(f"\nsplits {splits[0]}-{splits[-1]}: medians (range); pooled over the splits' held-out values")
        print("| landmark | marker | setting | 95% coverage | 80% | 50% | RMSE | log density "
              "| pooled 95% coverage | pooled RMSE |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for landmark in LANDMARKS:
            for marker in MARKERS:
                for name, rows in settings.items():
                    chosen = [rows[(s, landmark, marker)] for s in splits]
                    print(f"| {landmark:g} | {marker} | {name} | {summary(chosen)} |")
                ratios = [settings["candidate"][(s, landmark, marker)]["rmse"]
                          / settings["baseline"][(s, landmark, marker)]["rmse"] for s in splits]
                higher = sum(r > 1 for r in ratios)
                print(f"| | {marker} | RMSE candidate / baseline per split | "
                      + ", ".join(f"{r:.3f}" for r in ratios)
                      + f" (median {np.median(ratios):.3f}; higher on {higher} of {len(ratios)}) | | | | | | |")


if __name__ == "__main__":
    main()
