"""Partitioned input in one process: the id-hash split, reading part files
and chunks, the errors, the shared schema and a fit with distributed_input."""
import importlib.util
import zlib

import numpy as np
import pandas as pd
import pytest

from pyro_dgmm import DeepMixedModel
from pyro_dgmm.data import DataSchema
from pyro_dgmm.errors import ConfigError, DataError
from pyro_dgmm.partitioned import fit_schema, read_subjects, subject_ranks

from common import tiny_frame

SCHEMA = dict(id_col="pid", time_col="t", outcomes={"g": "gaussian", "bin": "bernoulli"},
              covariates=["age", "arm"], time_basis="spline(3)")


@pytest.fixture
def parts(tmp_path):
    frame = tiny_frame(n_subjects=20, n_visits=4)
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):  # subjects span files
        frame.iloc[rows].to_csv(folder / f"part{k}.csv", index=False)
    return frame, folder


def test_subject_ranks_are_a_stable_crc32_hash():
    assert subject_ranks([100, "100", "abc"], 7).tolist() == [zlib.crc32(b"100") % 7] * 2 + [zlib.crc32(b"abc") % 7]
    assert set(subject_ranks(range(200), 3)) == {0, 1, 2}


@pytest.mark.parametrize("layout", ["directory", "one csv"])
def test_ranks_read_disjoint_subjects_that_make_up_the_data(parts, layout, tmp_path):
    frame, folder = parts
    path = folder
    if layout == "one csv":
        path = tmp_path / "visits.csv"
        frame.to_csv(path, index=False)
    pieces = [read_subjects(path, "pid", rank=r, world_size=3, chunksize=7) for r in range(3)]
    for rank, piece in enumerate(pieces):
        assert (subject_ranks(piece["pid"], 3) == rank).all() and len(piece)
    union = pd.concat(pieces).sort_values(["pid", "t"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(union, frame.sort_values(["pid", "t"]).reset_index(drop=True))


def test_split_by_file_deals_files_to_ranks(parts):
    frame, folder = parts
    files = sorted(folder.glob("*.csv"))
    piece = read_subjects(folder, "pid", rank=1, world_size=2, split="file", columns=["t", "g"])
    assert list(piece.columns) == ["pid", "t", "g"]
    assert len(piece) == len(pd.read_csv(files[1]))


def test_read_errors_name_the_file_and_column(parts, tmp_path):
    frame, folder = parts
    pd.read_csv(folder / "part2.csv").drop(columns="arm").to_csv(folder / "part2.csv", index=False)
    with pytest.raises(DataError, match=r"part2\.csv has no column 'arm'"):
        read_subjects(folder, "pid", rank=0, world_size=2)
    with pytest.raises(DataError, match=r"part0\.csv has no column 'patient'"):
        read_subjects(folder, "patient", rank=0, world_size=2, columns=["t"])
    with pytest.raises(DataError, match="does not exist"):
        read_subjects(tmp_path / "nowhere", "pid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv or .parquet part files"):
        read_subjects(tmp_path / "empty", "pid")
    with pytest.raises(ConfigError, match="split must be one of"):
        read_subjects(folder, "pid", split="round-robin")
    with pytest.raises(ConfigError, match="rank < world_size"):
        read_subjects(folder, "pid", rank=2, world_size=2)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_parts_need_pyarrow(tmp_path):
    (tmp_path / "part0.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"pyro_dgmm\[parquet\]"):
        read_subjects(tmp_path, "pid")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
def test_parquet_parts_are_read_like_csv(parts, tmp_path):
    frame, _ = parts
    folder = tmp_path / "parquet"
    folder.mkdir()
    for k, rows in enumerate(np.array_split(np.arange(len(frame)), 2)):
        frame.iloc[rows].to_parquet(folder / f"part{k}.parquet", index=False)
    union = pd.concat([read_subjects(folder, "pid", rank=r, world_size=2) for r in range(2)])
    assert len(union) == len(frame) and union["pid"].nunique() == 20


def test_fit_schema_in_one_process_is_the_full_schema():
    frame = tiny_frame(n_subjects=20, n_visits=4)
    shared, full = fit_schema(frame, **SCHEMA).to_spec(), DataSchema.fit(frame, **SCHEMA).to_spec()
    assert shared["covariate_encoder"] == full["covariate_encoder"]
    assert shared["time_basis"] == full["time_basis"]
    for key in ("encoder_center", "encoder_scale", "filler", "initial_offset", "initial_scale"):
        assert np.allclose(shared[key], full[key]), key


def test_fit_schema_sample_keeps_every_level_and_the_time_range():
    frame = tiny_frame(n_subjects=40, n_visits=4)
    frame.loc[frame["pid"] == 117, "arm"] = "rare"
    schema = fit_schema(frame, **SCHEMA, max_subjects=3)
    assert schema.covariate_encoder.categorical["arm"] == ["a", "b", "rare"]
    basis = schema.time_basis
    assert schema.time_origin == frame["t"].min()  # the basis sees times from the earliest one
    assert basis.t_min == 0.0 and basis.t_max == frame["t"].max() - frame["t"].min()


def test_fit_schema_reports_invalid_local_data():
    frame = tiny_frame(n_subjects=10).drop(columns="arm")
    with pytest.raises(DataError, match="column 'arm'"):
        fit_schema(frame, **SCHEMA)


def test_fit_with_distributed_input_in_one_process(parts):
    frame, folder = parts
    local = read_subjects(folder, "pid")  # one process: every subject
    model = DeepMixedModel(id_col="pid", time_col="t", outcomes={"g": "gaussian"}, covariates=["arm"],
                           time_basis="poly(1)", encoder="dense")
    model.fit(local, distributed_input=True, max_epochs=2, num_shards=2, progress=False)
    assert model.result_.validation_loss  # every shard held out subjects
    fitted = model.fitted_values(num_samples=20)
    assert len(fitted) == len(frame) and fitted["pid"].is_monotonic_increasing


def test_pad_adds_empty_visit_slots():
    data = DataSchema.fit(tiny_frame(n_subjects=4), **SCHEMA).transform(tiny_frame(n_subjects=4))
    padded = data.pad(data.num_visits + 2)
    assert padded.num_visits == data.num_visits + 2
    assert not padded.visit_mask[:, -2:].any() and not padded.mask[:, -2:].any()
    pd.testing.assert_frame_equal(padded.observed_long(), data.observed_long())
