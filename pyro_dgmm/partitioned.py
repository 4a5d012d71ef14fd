r"""Input larger than one process's memory: each process reads its own subjects.

A *partitioned* input is a directory of part files (``*.csv``, and
``*.parquet`` when the optional ``pyarrow`` is installed: ``pip install
'pyro_dgmm[parquet]'``), read in name order, or one CSV file read in chunks.
:func:`read_subjects` keeps the rows of the subjects of one rank:

``split='hash'`` (default)
    subject ``i`` belongs to rank :math:`\mathrm{crc32}(\mathrm{str}(id_i))
    \bmod W` for ``W`` processes (a stable hash: Python's ``hash`` is
    salted per process).  Every process scans every file but holds only
    about :math:`1/W` of the rows; a subject's rows may span files.
``split='file'``
    part file ``k`` (in name order) belongs to rank :math:`k \bmod W`; each
    process reads only its files.  Every subject's rows must then lie in
    one process's files, which is checked (the ids are gathered, not the rows).

The data schema (outcome offsets, scales and dispersions, covariate scalers
and category levels, time-basis knots, encoder standardisation) must be the
same on every process although each holds different subjects.
:func:`fit_schema` fits it on every process from the same gathered sample:
at most ``max_subjects`` subjects drawn at random from all processes in
proportion to their counts, plus each process's subjects with the earliest
and latest times (so the time basis covers the whole range), with the
exact union of every categorical covariate's levels.  The scalers and
starting values are therefore estimates from the sample (any consistent
choice is valid: they only standardise inputs and start the fit).

Pass the local frame to :meth:`DeepMixedModel.fit(df, distributed_input=True)
<pyro_dgmm.estimator.DeepMixedModel.fit>`, or use the command line's
``--partitioned PATH`` under ``torchrun``.

Example (which process reads which subject, the same in every run):

>>> subject_ranks([101, 102, 103, 104, 101], world_size=3).tolist()
[2, 0, 0, 0, 2]
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .bases import DEFAULT_TIME_BASIS, TimeBasis
from .covariates import levels_of
from .data import DataSchema, _validate_frame
from .errors import ConfigError, DataError
from .families import Family, get_family
from .frames import visit_order
from .parallel import agree, all_reduce_max, all_reduce_sum, gather_objects, world

SPLITS = ("hash", "file")


def subject_ranks(ids, world_size: int) -> np.ndarray:
    r"""The rank of each id: :math:`\mathrm{crc32}(\mathrm{str}(id)) \bmod` ``world_size``
    (the same in every process and every run)."""
    ids = pd.Series(np.asarray(ids, dtype=object))
    unique = pd.unique(ids)
    ranks = {value: zlib.crc32(str(value).encode("utf-8")) % world_size for value in unique}
    return ids.map(ranks).to_numpy(dtype=np.int64)


def part_files(path: str | Path) -> list[Path]:
    """The part files of ``path``: the file itself, or a directory's ``.csv``
    and ``.parquet`` files in name order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"partitioned input {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".csv", ".parquet"))
    if not files:
        raise DataError(f"directory {path} holds no .csv or .parquet part files")
    unknown = [p for p in files if p.suffix not in (".csv", ".parquet")]
    if unknown:
        raise DataError(f"{unknown[0]} is neither a .csv nor a .parquet file")
    if any(p.suffix == ".parquet" for p in files):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("reading .parquet part files needs pyarrow: pip install 'pyro_dgmm[parquet]'") from None
    return files


def _columns_of(file: Path) -> list[str]:
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(file).schema_arrow.names)
    return [str(c) for c in pd.read_csv(file, nrows=0).columns]


def _chunks(file: Path, columns: list[str], chunksize: int) -> Iterator[pd.DataFrame]:
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(file).iter_batches(batch_size=chunksize, columns=columns):
            yield batch.to_pandas()
    else:
        yield from pd.read_csv(file, usecols=columns, chunksize=chunksize)


def _check_columns(files: list[Path], id_col: str, columns: Sequence[str] | None) -> list[str]:
    """The columns to read; a DataError names the first file that lacks one."""
    first = _columns_of(files[0])
    wanted = list(dict.fromkeys([id_col, *(columns if columns is not None else first)]))
    for file in files:
        present = _columns_of(file)
        missing = [c for c in wanted if c not in present]
        if missing:
            raise DataError(f"part file {file} has no column {', '.join(map(repr, missing))}; "
                            f"its columns are {present}")
    return wanted


def read_subjects(path: str | Path, id_col: str, *, rank: int | None = None, world_size: int | None = None,
                  split: str = "hash", columns: Sequence[str] | None = None,
                  chunksize: int = 100_000) -> pd.DataFrame:
    """The rows of this rank's subjects from a partitioned input (module docstring).

    :param path: a directory of ``.csv``/``.parquet`` part files, or one CSV
        (or Parquet) file.
    :param id_col: the subject id column.
    :param rank: default this process's ``torch.distributed`` rank (0
        without a process group).
    :param world_size: default the ``torch.distributed`` world size (1
        without a process group).
    :param split: ``'hash'`` or ``'file'``.
    :param columns: columns to keep (the id column is always kept);
        default: the first file's columns.  Every file must have them.
    :param chunksize: rows read at a time.
    :returns: a DataFrame (fresh index) with this rank's subjects' rows,
        in file order; possibly empty.
    """
    current_rank, current_size = world()
    rank = current_rank if rank is None else int(rank)
    world_size = current_size if world_size is None else int(world_size)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    files = agree(lambda: part_files(path))
    wanted = agree(lambda: _check_columns(files, id_col, columns))
    mine = files[rank::world_size] if split == "file" else files
    frames, sources = [], []
    for file in mine:
        for chunk in _chunks(file, wanted, chunksize):
            if split == "hash":
                chunk = chunk[subject_ranks(chunk[id_col], world_size) == rank]
            frames.append(chunk)
            sources.append((file, pd.unique(chunk[id_col]).tolist()))
    if split == "file" and (rank, world_size) == (current_rank, current_size):
        _check_file_split(sources, id_col)
    if not frames:
        return pd.DataFrame(columns=wanted)
    return pd.concat(frames, ignore_index=True)


def _check_file_split(sources: list[tuple[Path, list]], id_col: str) -> None:
    """With ``split='file'``: no subject may have rows in two processes' files."""
    owners: dict = {}
    for rank, part in enumerate(gather_objects(sources)):
        for file, ids in part:
            for value in ids:
                first = owners.setdefault(value, (rank, file))
                if first[0] != rank:
                    raise DataError(
                        f"subject {id_col}={value!r} has rows in {first[1]} (rank {first[0]}) and in {file} "
                        f"(rank {rank}): with split='file' each subject's rows must lie in the files of one "
                        "process; use split='hash' instead"
                    )


def fit_schema(df: pd.DataFrame, *, id_col: str, time_col: str, outcomes: Mapping[str, str | Family],
               covariates: Sequence[str] = (), time_basis: str | TimeBasis = DEFAULT_TIME_BASIS,
               time_unit: str = "days", max_subjects: int = 5000, seed: int = 0) -> DataSchema:
    """The same :class:`~pyro_dgmm.data.DataSchema` on every process from
    each process's own subjects ``df`` (module docstring).  Every process
    must call it; a DataError on any process (the local frame is validated
    first) is raised on all of them.

    :param max_subjects: subjects in the gathered sample (besides those
        with extreme times).
    :param seed: seeds each process's draw of its sample.
    """
    families = {str(name): get_family(spec) for name, spec in outcomes.items()}
    agree(lambda: _validate_frame(df, id_col, time_col, families, list(covariates), require_observed=True))
    rank = world()[0]
    ids = pd.unique(df[id_col])
    total = int(all_reduce_sum(torch.tensor(len(ids), dtype=torch.int64)))
    take = min(len(ids), math.ceil(max_subjects * len(ids) / total))
    times = pd.to_numeric(df[time_col])
    extremes = df.loc[[times.idxmin(), times.idxmax()], id_col]
    chosen = np.random.default_rng([seed, rank]).choice(len(ids), size=take, replace=False)
    sample = df[df[id_col].isin(ids[chosen]) | df[id_col].isin(extremes)]
    kinds = {col: _is_categorical(df[col]) for col in covariates}
    levels = {col: levels_of(df[col]) for col, categorical in kinds.items() if categorical}
    gathered = gather_objects((sample, kinds, levels))
    for col in covariates:
        if len({part[1][col] for part in gathered}) > 1:
            raise DataError(f"covariate column '{col}' is numeric on some processes and categorical on others; "
                            "give it the same type in every part file")
    sample = pd.concat([part[0] for part in gathered], ignore_index=True)
    sample = sample.iloc[visit_order(pd.factorize(sample[id_col], sort=True)[0],
                                     pd.to_numeric(sample[time_col]).to_numpy(float))].reset_index(drop=True)
    schema = DataSchema.fit(sample, id_col=id_col, time_col=time_col, outcomes=families,
                            covariates=list(covariates), time_basis=time_basis, time_unit=time_unit)
    for col in schema.covariate_encoder.categorical:  # every process's levels; the reference as levels_of puts it
        union = list(dict.fromkeys(level for part in gathered for level in part[2][col]))
        ordered = isinstance(df[col].dtype, pd.CategoricalDtype)
        schema.covariate_encoder.categorical[col] = union if ordered else sorted(union)
    return schema


def prepare_partitioned(df: pd.DataFrame, schema_options: Mapping, seed: int):
    """What a fit with ``distributed_input=True`` needs from this process's
    subjects ``df``: the common schema (:func:`fit_schema`), this process's
    data padded to the longest record of any process (so that every
    process builds the same dense encoder), and every process's baseline
    rows (id and covariates), gathered in id order.  Every process must call it.

    :param schema_options: ``id_col``, ``time_col``, ``outcomes``,
        ``covariates``, ``time_basis``, ``time_unit``.
    :returns: (schema, data, baseline).
    """
    schema = fit_schema(df, **schema_options, seed=seed)
    data = agree(lambda: schema.transform(df))
    data = data.pad(int(all_reduce_max(torch.tensor(data.num_visits))))
    id_col, covariates = schema_options["id_col"], list(schema_options.get("covariates", ()))
    local = df.groupby(id_col, sort=True)[covariates].first().reset_index()
    baseline = pd.concat(gather_objects(local), ignore_index=True)
    baseline = baseline.iloc[np.argsort(pd.factorize(baseline[id_col], sort=True)[0], kind="stable")]
    return schema, data, baseline.reset_index(drop=True)


def _is_categorical(series: pd.Series) -> bool:
    """As :class:`~pyro_dgmm.covariates.CovariateEncoder` decides."""
    return bool(pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series))

