"""The padded tensors of a longitudinal data set.

:class:`LongitudinalData` holds the tensors (``N`` subjects, ``T`` visit
slots, ``K`` outcomes, ``F`` time features, ``P`` covariate columns) that
:class:`~pyro_dgmm.data.DataSchema` builds from a long DataFrame:

=================  ===========  ==============================================
name               shape        meaning
=================  ===========  ==============================================
``y``              (N, T, K)    outcomes minus the schema's ``outcome_shift``
                                (float64 subtraction before the cast);
                                unobserved cells hold a valid filler
``mask``           (N, T, K)    True where the outcome was observed
``visit_mask``     (N, T)       True where the subject has a row (a visit)
``times``          (N, T)       visit times relative to the schema's time origin
                                (float64 subtraction before the cast); padding
                                repeats the last time
``time_features``  (N, T, F)    time basis at ``times`` (the talk's T_i)
``encoder_y``      (N, T, K)    standardised outcomes, 0 where unobserved
``encoder_mask``   (N, T, K)    optional: cells the encoder treats as observed
                                (imputation fills); None means ``mask``
``covariates``     (N, P)       standardised numerics, category contrasts
=================  ===========  ==============================================

Every output on the outcome scale adds the training shift back in float64
(:meth:`LongitudinalData.response_values`; :mod:`pyro_dgmm.data` says why).
The usual import is ``from pyro_dgmm.data import LongitudinalData``.

>>> import pandas as pd
>>> from pyro_dgmm.data import DataSchema
>>> df = pd.DataFrame({"id": [1, 1, 2], "time": [0.0, 1.0, 0.0], "y": [0.5, 1.5, 2.0]})
>>> data = DataSchema.fit_transform(df, id_col="id", time_col="time", outcomes={"y": "gaussian"})[1]
>>> data.num_subjects, data.num_visits
(2, 2)
>>> data.observed_long()["y"].round(6).tolist()
[0.5, 1.5, 2.0]
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Iterator, Mapping

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class LongitudinalData:
    """Padded tensors for ``N`` subjects (see the module docstring for shapes).

    Subjects are sorted by id, visits by time.  Build it with
    :meth:`DataSchema.transform` (or the estimator); index it
    with :meth:`subset`; go back to long format with :meth:`to_long`.
    """

    #: The per-subject tensors that :meth:`minibatch` indexes and :meth:`to`
    #: moves (a subclass with more per-subject tensors extends it).
    tensor_fields: ClassVar[tuple[str, ...]] = ("y", "mask", "visit_mask", "times", "time_features", "encoder_y",
                                                "covariates")

    y: torch.Tensor
    mask: torch.Tensor
    visit_mask: torch.Tensor
    times: torch.Tensor
    time_features: torch.Tensor
    encoder_y: torch.Tensor
    covariates: torch.Tensor
    ids: np.ndarray
    outcomes: list[str]
    id_col: str = "id"
    time_col: str = "time"
    encoder_mask: torch.Tensor | None = None  # what the encoder treats as observed; None: ``mask``
    # (N, T) the user's times (float64, datetime64 in UTC or timedelta64), for ``to_long``
    time_values: np.ndarray | None = None
    time_zone: str | None = None  # of tz-aware datetime times, restored by ``to_long``
    outcome_shift: np.ndarray | None = None  # (K,) float64 added back by ``response_values``; None: zeros
    time_origin: float = 0.0  # numeric times: ``times + time_origin`` are the user's (model time otherwise)

    @property
    def num_subjects(self) -> int:
        return self.y.shape[0]

    def response_values(self, values: torch.Tensor | np.ndarray) -> np.ndarray:
        """Values on the outcome scale of ``y`` (last axis: the K outcomes,
        e.g. fitted means or draws) back on the user's scale: float64, with
        ``outcome_shift`` added in float64 (module docstring)."""
        values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        values = values.astype(np.float64)
        return values if self.outcome_shift is None else values + self.outcome_shift

    @property
    def num_visits(self) -> int:
        return self.y.shape[1]

    @property
    def device(self) -> torch.device:
        return self.y.device

    def subset(self, index) -> "LongitudinalData":
        """The subjects at positions ``index`` (a slice, integer array or tensor)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        pos = np.arange(self.num_subjects)[index]
        return replace(self.minibatch(torch.as_tensor(pos, device=self.device)), ids=self.ids[pos],
                       time_values=None if self.time_values is None else self.time_values[pos])

    def chunks(self, size: int) -> Iterator["LongitudinalData"]:
        """Consecutive subsets of at most ``size`` subjects, in order."""
        for start in range(0, self.num_subjects, size):
            yield self.subset(slice(start, start + size))

    def minibatch(self, index: torch.Tensor) -> "LongitudinalData":
        """The subjects at ``index``, a tensor of positions on :attr:`device`,
        for a training step: the tensors are indexed where they live, with
        no round trip through host memory (on a GPU such a round trip waits
        for every queued kernel, each step).  The batch carries no ``ids``
        or ``time_values`` (empty and None): a step does not read them."""
        return replace(
            self,
            **{name: getattr(self, name)[index] for name in self.tensor_fields},
            ids=self.ids[:0],
            time_values=None,
            encoder_mask=None if self.encoder_mask is None else self.encoder_mask[index],
        )

    def pad(self, num_visits: int) -> "LongitudinalData":
        """The same subjects with ``num_visits`` (>= :attr:`num_visits`) visit
        slots; the new slots are padding (no visit, nothing observed, the
        last slot's time), e.g. to give every process of a partitioned fit
        the same record length."""
        extra = num_visits - self.num_visits
        if extra < 0:
            raise ValueError(f"cannot pad {self.num_visits} visit slots down to {num_visits}")
        if extra == 0:
            return self

        def grow(x, blank: bool):
            last = x[:, -1:].expand(-1, extra, *x.shape[2:])
            return torch.cat([x, torch.zeros_like(last) if blank else last], dim=1)

        return replace(
            self, y=grow(self.y, False), mask=grow(self.mask, True), visit_mask=grow(self.visit_mask, True),
            times=grow(self.times, False), time_features=grow(self.time_features, False),
            encoder_y=grow(self.encoder_y, True),
            encoder_mask=None if self.encoder_mask is None else grow(self.encoder_mask, True),
            time_values=None if self.time_values is None else np.concatenate(
                [self.time_values, np.repeat(self.time_values[:, -1:], extra, axis=1)], axis=1),
        )

    def to(self, device=None, dtype=None) -> "LongitudinalData":
        """Move tensors to ``device``; floating tensors also to ``dtype`` if given."""

        def move(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device) if device is not None else x
            return x.to(dtype) if dtype is not None and x.is_floating_point() else x

        return replace(self, **{name: move(getattr(self, name)) for name in self.tensor_fields},
                       encoder_mask=None if self.encoder_mask is None else move(self.encoder_mask))

    def to_long(self, values: Mapping[str, torch.Tensor | np.ndarray], *, all_slots: bool = False) -> pd.DataFrame:
        """Long DataFrame of per-cell ``values`` with the user's ids and times.

        ``values`` maps column names to arrays of shape (N, T); one row per
        visit (padding slots dropped unless ``all_slots``), sorted by subject
        and time, with columns ``id_col``, ``time_col`` and the given names.
        """
        keep = np.ones(self.visit_mask.shape, bool) if all_slots else self.visit_mask.cpu().numpy()
        subject, slot = np.nonzero(keep)
        times = (self.times.cpu().numpy() if self.time_values is None else self.time_values)[subject, slot]
        if self.time_zone is not None:
            times = pd.DatetimeIndex(times).tz_localize("UTC").tz_convert(self.time_zone)
        out = {self.id_col: self.ids[subject], self.time_col: times}
        for name, array in values.items():
            array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
            if array.shape != keep.shape:
                raise ValueError(f"values['{name}'] has shape {array.shape}, expected {keep.shape}")
            out[name] = array[subject, slot]
        return pd.DataFrame(out)

    def observed_long(self) -> pd.DataFrame:
        """The outcomes back in long format (NaN where unobserved)."""
        y = np.where(self.mask.cpu().numpy(), self.response_values(self.y), np.nan)
        return self.to_long({name: y[..., k] for k, name in enumerate(self.outcomes)})


