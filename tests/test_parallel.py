"""Data-parallel fitting: two gloo processes under torchrun reproduce a
single-process fit with the same shards, batch and seed."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.parallel import Shards

from common import tiny_frame

OPTIONS = ["--id", "pid", "--time", "t", "--outcome", "g:gaussian", "--outcome", "bin:bernoulli",
           "--covariate", "arm", "--basis", "poly(1)", "--max-epochs", "4", "--seed", "3", "--quiet"]


def test_shards_partition_subjects():
    shards = Shards(3, (0, 1, 2))
    positions = sorted(p for s in range(3) for p in shards.positions(10, s))
    assert positions == list(range(10))
    assert Shards.current(3) == shards  # one process owns every shard


def test_two_gloo_processes_match_one_process(tmp_path):
    frame = tiny_frame(n_subjects=24, n_visits=5)
    csv = tmp_path / "visits.csv"
    frame.to_csv(csv, index=False)
    single = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"},
                            covariates=["arm"], time_basis="poly(1)")
    single.fit(pd.read_csv(csv), max_epochs=4, seed=3, num_shards=2, progress=False)

    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    torchrun = Path(sys.executable).with_name("torchrun")
    run = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pyro_dgmm", "fit",
                          "--csv", str(csv), *OPTIONS, "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    distributed = DeepMixedModel.load(out / "model.pt")
    for (name, a), b in zip(single.model_.state_dict().items(), distributed.model_.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    for (name, a), b in zip(single.guide_.state_dict().items(), distributed.guide_.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    assert distributed.result_.train_loss == pytest.approx(single.result_.train_loss, rel=1e-5)
    fitted = pd.read_csv(out / "fitted.csv")  # written by rank 0, gathered from both ranks
    assert len(fitted) == len(frame) and fitted["pid"].nunique() == 24
    assert fitted["g_fitted"].notna().all()
