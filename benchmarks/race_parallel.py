"""Issue 19: the race's two structures trained at once (``parallel_race=True``,
the default: the learned structure in a forked process) against one after
the other (``parallel_race=False``), in one process with one torch thread:
default fits of the same data alternated ``--repeats`` times (the machine's
speed drifts within minutes, so each parallel fit is compared with the
serial fit next to it), with a check that both give the same parameters.

Run:  python benchmarks/race_parallel.py --truths periodic lmm4sin --seeds 3 --repeats 2
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import default_selection
import truths
from common import print_table, single_thread, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    simulators = {**default_selection.TRUTHS, **truths.SIMULATORS}
    parser.add_argument("--truths", nargs="+", default=["periodic"], choices=sorted(simulators))
    parser.add_argument("--seeds", type=int, nargs="+", default=[3])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="race_parallel")
    args = parser.parse_args()
    single_thread()
    import torch
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.forked import fork_helps

    rows, pairs = [], []
    for name in args.truths:
        for seed in args.seeds:
            sim = simulators[name](seed=seed)

            def fit(**options):
                model = DeepMixedModel(id_col="id", time_col="time", outcomes=sim.outcomes, covariates=sim.covariates)
                start = time.perf_counter()
                model.fit(sim.data, progress=False, seed=seed, **options)
                return model, time.perf_counter() - start

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit(max_epochs=1)  # one-time imports and allocations
                for repeat in range(args.repeats):
                    (parallel, t_parallel), (serial, t_serial) = fit(), fit(parallel_race=False)
                    same = all(torch.equal(a, b) for a, b in zip(parallel.model_.state_dict().values(),
                                                                  serial.model_.state_dict().values()))
                    pairs.append(t_parallel / t_serial)
                    rows.append({"truth": name, "seed": seed, "repeat": repeat, "forked": fork_helps(),
                                 "parallel_seconds": t_parallel, "serial_seconds": t_serial,
                                 "ratio": t_parallel / t_serial, "same_parameters": same,
                                 "epochs": parallel.result_.epochs_run,
                                 "chosen": parallel.result_.time_functions_race["chosen"]})
                    print(rows[-1], flush=True)
    print_table(rows, "Default fits, race in parallel vs one after the other (one torch thread)")
    print(f"\nparallel / serial seconds: median {statistics.median(pairs):.3f} "
          f"[{min(pairs):.3f}, {max(pairs):.3f}] over {len(pairs)} pairs")
    write_json(rows, args.output)


if __name__ == "__main__":
    main()
