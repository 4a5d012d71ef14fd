"""Run by tests/test_parallel.py under ``torchrun --nproc_per_node=2``:
``python parallel_worker.py FOLDER``.  FOLDER holds ``visits.csv`` and
``parts/``; rank 0 writes what the test compares with one process.

Settings shared with the test live here, so both sides use the same.
"""
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from pyro_dgmm import DeepMixedModel  # noqa: E402
from pyro_dgmm.errors import DataError  # noqa: E402
from pyro_dgmm.impute import ImputationConfig  # noqa: E402
from pyro_dgmm.parallel import (end_process_group, gather_objects, init_from_environment,  # noqa: E402
                                is_main_process, world)
from pyro_dgmm.partitioned import fit_schema, read_subjects  # noqa: E402
from pyro_dgmm.marginal import marginal_log_likelihood  # noqa: E402
from pyro_dgmm.wald import standard_errors  # noqa: E402
import pyro_dgmm.parallel  # noqa: E402

FIT = dict(max_epochs=2, kl_warmup_epochs=1, linear_warmup_epochs=1, seed=5, num_shards=2, progress=False)
IMPUTATION = ImputationConfig(rounds=2, epochs_per_round=1, mcmc_steps=3, burn_in=1)
TIMES = [5.0, 6.5]
SAMPLES = 60
#: blocks of 8 subjects (default 256), so the 24 subjects' post-fit draws span 3 blocks on the 2 processes
#: (tests/test_parallel.py uses the same in one process)
BLOCK_SIZE = 8
CLI = ["--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--outcome", "bin:bernoulli",
       "--covariate", "arm", "--basis", "poly(1)", "--max-epochs", "3", "--seed", "3", "--quiet"]


def model() -> DeepMixedModel:
    return DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"},
                          covariates=["arm"], time_basis="poly(1)", latent_dim=2)


def main(folder: Path) -> None:
    import pandas as pd

    from pyro_dgmm.cli import main as cli

    init_from_environment()
    pyro_dgmm.parallel.MIN_BLOCK_SIZE = BLOCK_SIZE
    frame = pd.read_csv(folder / "visits.csv")
    fitted = model().fit(frame, missing="impute", imputation=IMPUTATION, **FIT)
    data = fitted.transform(frame)
    prediction = fitted.predict(frame, TIMES, num_samples=SAMPLES)
    values = fitted.fitted_values(frame, num_samples=SAMPLES)  # draws seeded per block of subjects
    imputations = fitted.impute(frame, 2, mcmc_steps=2, warmup_steps=3)
    marginal = marginal_log_likelihood(fitted.model_, fitted.guide_, data, SAMPLES)
    errors = standard_errors(fitted.model_, fitted.guide_, data, num_samples=SAMPLES)
    local = read_subjects(folder / "parts", "pid")
    ranks = gather_objects(sorted(local["pid"].unique().tolist()))
    rows = gather_objects(len(local))
    specs = gather_objects(fit_schema(local, id_col="pid", time_col="t", outcomes={"g": "gaussian"},
                                      covariates=["arm", "age"], time_basis="spline(3)", max_subjects=6).to_spec())
    try:  # part1.csv (rank 1) and part2.csv (rank 0) share a subject
        read_subjects(folder / "parts", "pid", split="file")
        split_error = None
    except DataError as error:
        split_error = str(error)
    split_errors = gather_objects(split_error)
    assert cli(["fit", "--partitioned", str(folder / "parts"), *CLI, "--out", str(folder / "partitioned")]) == 0
    torch.distributed.barrier()  # rank 0 has written model.pt
    assert cli(["predict", "--model", str(folder / "partitioned" / "model.pt"), "--history", str(folder / "visits.csv"),
                "--times", "1", "--relative", "--num-samples", "20", "--out", str(folder / "predictions.csv")]) == 0
    if is_main_process():
        fitted.save(folder / "impute.pt")
        torch.save({"trace": fitted.imputation_trace_, "table": prediction.table, "draws": prediction.draws,
                    "fitted": values, "imputations": imputations,
                    "marginal": marginal.to_frame(), "se": errors.summary()}, folder / "results.pt")
        (folder / "ranks.json").write_text(json.dumps({"ids": ranks, "rows": rows, "world": world()[1],
                                                        "split_errors": split_errors,
                                                        "same_schema": specs[0] == specs[1]}))
    end_process_group()  # a rank exiting with the group alive can abort in gloo's threads (CI, 2026-12-03)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
