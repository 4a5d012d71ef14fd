"""Issue 6 benchmark: what the optimiser costs per training step.

The fit loop's optimiser, :class:`pyro_dgmm.optim.PackedAdam` (every
parameter a view of one flat buffer), against what the loop used before:
``torch.optim.Adam`` with its fused kernel and two parameter groups, a
``LambdaLR`` schedule, ``clip_grad_norm_(foreach=True)`` and the ridge
gradient added weight by weight.  Both run on copies of the same fitted
model and guide, on the same minibatches, interleaved, for each batch
size.  Printed: median milliseconds of the update alone (ridge gradient,
clipping, Adam step) and of the whole step (zero gradients, Pyro loss,
backward, update).  One torch thread.

Run:  python benchmarks/optimizer_step.py [--batch-sizes 64 512] [--repeats 7]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

from common import print_table, single_thread, write_json

RIDGE, CLIP, RATE = 1e-4, 10.0, 1e-4


def torch_optim_update(model, guide):
    """(zero_grad, update) with torch.optim as the fit loop had it."""
    import torch

    from pyro_dgmm.fit import ridge_weights

    params = list(model.parameters()) + list(guide.parameters())
    weights = ridge_weights(model, guide)
    residual = {id(p) for p in model.residual_parameters()}
    adam = torch.optim.Adam([{"params": [p for p in params if id(p) not in residual]},
                             {"params": [p for p in params if id(p) in residual]}], lr=RATE, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(adam, [lambda step: 1.0, lambda step: 1.0])

    def update():
        for w in weights:
            w.grad.add_(w.detach(), alpha=2 * RIDGE)
        torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=True)
        adam.step()
        schedule.step()

    return adam.zero_grad, update


def packed_update(model, guide):
    """(zero_grad, update) with PackedAdam as the fit loop runs it."""
    from pyro_dgmm.fit import ridge_weights
    from pyro_dgmm.optim import PackedAdam

    optimizer = PackedAdam(list(model.parameters()) + list(guide.parameters()))
    ridge_gradient = optimizer.mask(ridge_weights(model, guide), 2 * RIDGE)

    def update():
        optimizer.grad.addcmul_(optimizer.data, ridge_gradient)
        optimizer.clip_grad_norm_(CLIP)
        optimizer.step(RATE)

    return optimizer.zero_grad, update


def batch_rows(batch_size: int, repeats: int, steps: int = 12) -> list[dict]:
    import torch

    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.datasets import simulate_nonlinear
    from pyro_dgmm.fit import ELBOS, pyro_checks

    sim = simulate_nonlinear(n_subjects=max(800, batch_size * 2), seed=0)
    est = DeepMixedModel(id_col=sim.id_col, time_col=sim.time_col, outcomes=sim.outcomes, covariates=sim.covariates)
    est.fit(sim.data, max_epochs=1, progress=False)
    data, n = est.data_, est.data_.num_subjects
    batches = [data.subset(torch.arange(i * batch_size, (i + 1) * batch_size) % n) for i in range(steps)]
    elbo = ELBOS["meanfield"](max_plate_nesting=2, vectorize_particles=True)
    variants = {}
    for name, build in (("torch.optim Adam (fused)", torch_optim_update), ("PackedAdam", packed_update)):
        model, guide = copy.deepcopy(est.model_), copy.deepcopy(est.guide_)
        variants[name] = (model, guide, *build(model, guide))
    timings = {name: {"update": [], "step": []} for name in variants}
    for _ in range(repeats):
        for name, (model, guide, zero_grad, update) in variants.items():
            update_seconds = 0.0
            start = time.perf_counter()
            for batch in batches:
                zero_grad()
                with pyro_checks(False):
                    loss = elbo.differentiable_loss(model, guide, batch, num_subjects=n)
                (loss / n).backward()
                tick = time.perf_counter()
                update()
                update_seconds += time.perf_counter() - tick
            timings[name]["step"].append((time.perf_counter() - start) / steps)
            timings[name]["update"].append(update_seconds / steps)
    return [{"batch_subjects": batch_size, "optimiser": name,
             "update_ms": 1e3 * statistics.median(t["update"]), "step_ms": 1e3 * statistics.median(t["step"]),
             "device": "cpu"} for name, t in timings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    single_thread()
    rows = [row for b in args.batch_sizes for row in batch_rows(b, args.repeats)]
    print_table(rows, "Optimiser cost per step (nonlinear simulator, one CPU thread, medians)")
    write_json(rows, "optimizer_step")


if __name__ == "__main__":
    main()
