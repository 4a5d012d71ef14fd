"""Issue 19: what the time-function race costs, in one process: default fits
of one data set without the race (``race_epochs=0``), with it, and without
it again (one torch thread, after a one-epoch warm-up), and for the raced
fit the seconds of each part: each structure's first ``race_epochs`` epochs
and the kept structure's continuation.

Run:  python benchmarks/race_cost.py --truth nonlinear --seed 4
"""
from __future__ import annotations

import argparse
import time
import warnings

import truths
from common import print_table, single_thread, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truth", default="nonlinear", choices=["nonlinear", *truths.SIMULATORS])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--output", default="race_cost")
    args = parser.parse_args()
    single_thread()
    from pyro_dgmm import DeepMixedModel, selection
    from pyro_dgmm.datasets import simulate_nonlinear

    sim = simulate_nonlinear(seed=args.seed) if args.truth == "nonlinear" else truths.SIMULATORS[args.truth](
        seed=args.seed)
    parts = []
    race_init = selection.TimeFunctionRace.__init__

    def timed_race(self, fit_once):
        def timed(*positional, **keywords):
            pause = keywords.get("pause")
            part = "continued" if pause is not None and pause.held else "to the pause" if pause else "fit"
            start = time.perf_counter()
            candidate = fit_once(*positional, **keywords)
            parts.append({"time_functions": keywords.get("time_functions"), "part": part,
                          "seconds": time.perf_counter() - start,
                          "epochs_after": candidate.result.epochs_run})
            return candidate
        race_init(self, timed)

    selection.TimeFunctionRace.__init__ = timed_race
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates).fit(
            sim.data.head(300), max_epochs=1, progress=False)
        for options in ({"race_epochs": 0}, {}, {"race_epochs": 0}):
            parts.clear()
            model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
            start = time.perf_counter()
            model.fit(sim.data, progress=False, seed=args.seed, **options)
            rows.append({"race": "race_epochs" not in options, "seconds": time.perf_counter() - start,
                         "kept_fit_seconds": model.result_.seconds, "epochs": model.result_.epochs_run,
                         "time_functions": model.model_.random_effects.time_functions,
                         "parts": [dict(p) for p in parts]})
            print(rows[-1], flush=True)
    print_table([{k: v for k, v in r.items() if k != "parts"} for r in rows],
                f"{args.truth} seed {args.seed}: default fits without, with and without the race")
    write_json([{"truth": args.truth, "seed": args.seed, **r} for r in rows], args.output)


if __name__ == "__main__":
    main()
