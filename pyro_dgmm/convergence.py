r"""The stopping rule of a fit: a trend test on the monitored loss and a
cosine learning-rate schedule that a plateau cuts short.

:func:`~pyro_dgmm.fit.fit_svi` evaluates the held-out loss every
``eval_every`` epochs; :func:`trend_test` says whether the last
``patience`` of them are still falling, and :class:`CosineDecay` is the
learning-rate factor, decayed to its floor early at the first plateau
(the fit module's docstring gives the whole rule).

>>> trend_test([(e, 10.0 - 0.5 * e) for e in range(10)], tolerance=1e-4)
True
>>> decay = CosineDecay(total_steps=100, floor=0.1)
>>> decay(0), decay(100)
(1.0, 0.1)
>>> decay.shorten(step=10, steps=20), decay.end
(True, 30)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def trend_test(history: Sequence[tuple[int, float]], tolerance: float) -> bool:
    r"""Whether the losses ``history`` ((epoch, loss) pairs) are still falling.

    The least-squares line :math:`\hat L(e) = a + s e` through them predicts
    an improvement :math:`g = -s\,\Delta` over as many epochs again
    (:math:`\Delta` = the span of ``history``), with standard error
    :math:`\mathrm{se}(g) = \mathrm{se}(s)\,\Delta` from the residuals.
    Still falling means :math:`g > 2\,\mathrm{se}(g)` (a real trend, not
    noise) and :math:`g >` ``tolerance`` (one worth waiting for).
    """
    epochs = torch.tensor([e for e, _ in history], dtype=torch.float64)
    losses = torch.tensor([v for _, v in history], dtype=torch.float64)
    x = epochs - epochs.mean()
    slope = float((x * (losses - losses.mean())).sum() / x.square().sum())
    residuals = losses - losses.mean() - slope * x
    slope_se = math.sqrt(float(residuals.square().sum()) / (len(history) - 2) / float(x.square().sum()))
    span = float(epochs[-1] - epochs[0]) + 1
    gain, gain_se = -slope * span, slope_se * span
    return gain > 2 * gain_se and gain > tolerance


class CosineDecay:
    r"""Learning-rate factor: a cosine from 1 to ``floor`` over ``total_steps``,
    which a plateau of the held-out loss can cut short.

    :meth:`shorten` at step :math:`s_0` restarts the cosine from the current
    factor :math:`f_0` and lets it reach ``floor`` after ``steps`` more steps:

    .. math:: f(s) = \mathrm{floor} + (f_0 - \mathrm{floor})\,\tfrac12
              \big(1 + \cos(\pi \min(s - s_0, L) / L)\big)

    A plateau at a high learning rate is the noise floor of that rate, not
    convergence: decaying it there gains what a long schedule gains, in a
    fraction of the steps.
    """

    def __init__(self, total_steps: int, floor: float):
        self.floor = floor
        self.start, self.length, self.top = 0, max(1, total_steps), 1.0
        self.shortened = False

    def __call__(self, step: int) -> float:
        done = min(max(step - self.start, 0), self.length)
        return self.floor + (self.top - self.floor) * 0.5 * (1 + math.cos(math.pi * done / self.length))

    @property
    def end(self) -> int:
        """The step at which the factor reaches ``floor``."""
        return self.start + self.length

    def shorten(self, step: int, steps: int) -> bool:
        """Reach the floor ``steps`` after ``step`` instead (if that is sooner);
        True if the schedule changed."""
        if step + steps >= self.end:
            return False
        self.top, self.start, self.length, self.shortened = self(step), step, max(1, steps), True
        return True
