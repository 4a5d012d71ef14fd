r"""Adam over parameters packed into one contiguous buffer.

A DGMM has a few dozen small parameter tensors.  At the batch sizes that
suit small data, a training step costs per operation rather than per
number, and ``torch.optim.Adam``, gradient clipping, the ridge term and
``zero_grad`` each run at least one operation per tensor (the fused Adam
kernel still keeps one step counter per tensor).  Constructing a
``torch.optim`` optimizer also imports ``torch._dynamo`` (about 1.6 s
in a fresh process on the benchmark machine, once per process).

:class:`PackedAdam` moves the parameters into one flat buffer and makes
each ``Parameter`` a view of its slice, with its ``.grad`` a view of the
same slice of a flat gradient buffer (autograd accumulates into an
existing ``.grad`` in place).  Each of those per-step operations is then
one or two operations on the whole buffer, and a multi-process fit sums
one tensor.  The parameters stay the modules' own ``Parameter`` objects,
so ``state_dict``, ``load_state_dict`` and PyroModule work as before.

The update is Adam (Kingma & Ba, 2015) as ``torch.optim.Adam`` computes it
without weight decay: with gradient :math:`g_t` at step :math:`t`,

.. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
    \theta_t = \theta_{t-1} - \eta_t\, \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

where :math:`\eta_t` is a number or a per-element tensor (per-parameter
learning rates, e.g. 0 for parameters held fixed for a while).

Example (minimising :math:`(w - 3)^2`):

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(1))
>>> adam = PackedAdam([w])
>>> for _ in range(300):
...     adam.zero_grad()
...     (w - 3).pow(2).sum().backward()
...     adam.step(0.05)
>>> round(w.item(), 2)
3.0
"""
from __future__ import annotations

from typing import Iterable

import torch

from .errors import ConfigError


class PackedAdam:
    """Adam on ``params`` packed into one buffer (see the module docstring).

    :param params: the parameters to optimise (duplicates are ignored);
        all of one dtype and on one device.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        unique = {id(p): p for p in params}
        self.params = list(unique.values())
        if not self.params:
            raise ConfigError("PackedAdam needs at least one parameter")
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) > 1:
            raise ConfigError(f"PackedAdam needs parameters of one dtype and device, got {sorted(map(str, kinds))}")
        self.betas, self.eps, self.steps = betas, eps, 0
        self.data = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.data)
        self.exp_avg = torch.zeros_like(self.data)
        self.exp_avg_sq = torch.zeros_like(self.data)
        self._slices: dict[int, slice] = {}
        offset = 0
        for p in self.params:
            part = self._slices[id(p)] = slice(offset, offset + p.numel())
            p.data = self.data[part].view_as(p)
            p.grad = self.grad[part].view_as(p)
            offset = part.stop

    def mask(self, params: Iterable[torch.nn.Parameter], value: float = 1.0, other: float = 0.0) -> torch.Tensor:
        """A flat tensor that holds ``value`` at the elements of ``params`` and
        ``other`` elsewhere (for per-parameter scales: learning rates, ridge)."""
        out = torch.full_like(self.data, other)
        for p in params:
            if id(p) not in self._slices:
                raise ConfigError("mask() was given a parameter this optimizer does not hold")
            out[self._slices[id(p)]] = value
        return out

    def zero_grad(self) -> None:
        """Zero every gradient (one fill; the ``.grad`` views stay in place)."""
        self.grad.zero_()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradient so its Euclidean norm is at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does; returns the norm before."""
        norm = torch.linalg.vector_norm(self.grad)
        self.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm

    def step(self, lr: float | torch.Tensor) -> None:
        """One Adam step with learning rate ``lr`` (a number or a flat tensor
        of per-element rates, see :meth:`mask`)."""
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        denom = (self.exp_avg_sq / (1 - beta2 ** self.steps)).sqrt_().add_(self.eps)
        update = self.exp_avg / denom
        if isinstance(lr, torch.Tensor):
            update.mul_(lr)
            lr = 1.0
        self.data.add_(update, alpha=-lr / (1 - beta1 ** self.steps))

    def release(self) -> None:
        """Drop the gradients (``.grad = None``), e.g. when the fit is done; the
        parameters keep their values (still views of :attr:`data`)."""
        for p in self.params:
            p.grad = None
