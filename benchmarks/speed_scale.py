"""Issue 6 benchmark: cost of fitting, and how it grows with the number of subjects.

Parts (``--parts``, default all but ``converge``):

``fit``
    n=800 x 20 visits (the talk's size), linear and nonlinear simulators:
    the default fit in a fresh process (wall time including one-time lazy
    imports, and the fit loop alone), the default
    long fit (``max_epochs=200``) on the same data, and statsmodels MixedLM
    (random intercept and slope; linear-time and spline(4)-time fixed
    effects).  RMSE of subject-specific means against the simulation truth.
``overhead``
    milliseconds per optimisation step (loss, backward, Adam) of the DGMM
    objective through Pyro, exactly as the fit loop runs it, against the
    same objective written in plain torch on the same modules and batches,
    interleaved in the same run, for several batch sizes.  Medians.
``scaling``
    seconds per epoch and peak resident memory (``VmHWM``, the process's own
    high-water mark) of the nonlinear simulator with 800, 8,000 and 80,000
    subjects (20 visits), each in a fresh process.
``converge``
    a fit to convergence (default stopping rule) at each size in
    ``--converge-sizes`` on ``--device`` (for the GPU targets: 1,000,000
    subjects, and ``--app-scale 100`` for the app-like simulator at
    117,400 subjects x 105 days x 3 outcomes), with the seconds, epochs,
    peak device memory, and one epoch's cost against plain torch measured
    in the same process.

``compile``
    milliseconds per training step through Pyro with the three networks
    (fixed effects, random effects, encoder) as they are and compiled with
    ``torch.compile``, on copies of the same fitted model, and the seconds
    the first compiled step takes (compilation), per batch size: whether
    compiling pays on ``--device``.

CPU figures use one torch thread.  Every row names its device.

Run:  python benchmarks/speed_scale.py [--parts fit overhead scaling converge compile]
      [--seeds 0 1] [--sizes 800 8000 80000] [--device cpu]
      [--converge-sizes 1000000] [--app-scale 100]
      (``bash benchmarks/gpu_run.sh`` runs the GPU parts; results of a run on
      another device than the CPU go to ``<name>_cuda.json``, say)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from common import best_mixedlm, peak_resident_mb, print_table, rmse, run_child, single_thread, write_json


# ---------------------------------------------------------------- helpers
def result_name(name: str, device: str) -> str:
    """``results/<name>.json`` on the CPU, ``<name>_cuda.json`` (say) elsewhere:
    a GPU run never overwrites the CPU figures."""
    return name if device == "cpu" else f"{name}_{device.split(':')[0]}"


def estimator(sim, **options):
    from pyro_dgmm import DeepMixedModel

    return DeepMixedModel(id_col=sim.id_col, time_col=sim.time_col, outcomes=sim.outcomes,
                          covariates=sim.covariates, **options)


def plain_torch_loss(model, guide, batch, num_subjects: int):
    """The meanfield negative ELBO of the model, written without Pyro: one
    reparameterised draw of b, the masked log-likelihood, closed-form KL."""
    import torch

    from pyro_dgmm.likelihood import observed_log_likelihood

    q = guide.posterior(batch)
    b = q.rsample()
    loglik = observed_log_likelihood(model, b, batch)
    kl = 0.5 * (q.scale_tril.pow(2).sum((-1, -2)) + q.loc.pow(2).sum(-1) - q.loc.shape[-1]
                - 2 * torch.log(torch.diagonal(q.scale_tril, dim1=-2, dim2=-1)).sum(-1))
    return -(num_subjects / batch.num_subjects) * (loglik - kl).sum()


def step_costs(model, guide, data, batch_size: int, steps: int, repeats: int) -> tuple[float, float]:
    """Median seconds per training step (loss, backward, clipping, Adam) through
    Pyro -- as :func:`pyro_dgmm.fit.fit_svi` runs it -- and in plain torch, on the
    same batches, interleaved, both with the fit loop's optimiser
    (:class:`~pyro_dgmm.optim.PackedAdam`).  Parameters are restored afterwards."""
    import copy

    import torch

    from pyro_dgmm.fit import ELBOS, pyro_checks
    from pyro_dgmm.optim import PackedAdam

    device = data.device
    elbo = ELBOS["meanfield"](max_plate_nesting=2, vectorize_particles=True)  # the fit loop's default
    saved = copy.deepcopy((model.state_dict(), guide.state_dict()))
    optimizer = PackedAdam(list(model.parameters()) + list(guide.parameters()))
    n = data.num_subjects
    batches = [data.subset(torch.arange(i * batch_size, (i + 1) * batch_size, device=device) % n)
               for i in range(steps)]

    def pyro_loss(batch):
        with pyro_checks(False):
            return elbo.differentiable_loss(model, guide, batch, num_subjects=n)

    losses = {"pyro": pyro_loss, "plain torch": lambda batch: plain_torch_loss(model, guide, batch, n)}
    timings = {name: [] for name in losses}
    for _ in range(repeats):
        for name, loss_fn in losses.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch in batches:
                optimizer.zero_grad()
                (loss_fn(batch) / n).backward()
                optimizer.clip_grad_norm_(10.0)
                optimizer.step(1e-4)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[name].append((time.perf_counter() - start) / steps)
    optimizer.release()
    model.load_state_dict(saved[0]), guide.load_state_dict(saved[1])
    return statistics.median(timings["pyro"]), statistics.median(timings["plain torch"])


# ---------------------------------------------------------------- part 1: n=800
def fit_child(sim_name: str, seed: int, device: str) -> None:
    """Fresh process: the default fit first (its time includes one-time imports), then the
    fast and long fits (warm)."""
    single_thread()
    from pyro_dgmm.datasets import SIMULATORS

    sim = SIMULATORS[sim_name](n_subjects=800, n_visits=20, seed=seed)
    truth = sim.truth["y_mean"].to_numpy()
    out = {"simulator": sim_name, "seed": seed, "device": device}
    configurations = {
        "default": ({}, {}),  # the stopping rule decides (max_epochs=200 is a cap)
        "fast": ({}, {"max_epochs": 40}),  # a 40-epoch cosine
        "long": ({"validation_fraction": 0.0}, {"max_epochs": 200}),  # all 200 epochs, no stopping rule
    }
    for label, (model_options, fit_options) in configurations.items():
        est = estimator(sim, **model_options)
        start = time.perf_counter()
        est.fit(sim.data, progress=False, device=device, **fit_options)
        out[f"{label}_seconds"] = time.perf_counter() - start
        out[f"{label}_loop_seconds"] = est.result_.seconds
        out[f"{label}_epochs"] = est.result_.epochs_run
        out[f"{label}_rmse"] = rmse(est.fitted_values()["y_fitted"], truth)
    print(json.dumps(out))


def fit_rows(seeds: list[int], device: str) -> list[dict]:
    from pyro_dgmm.datasets import SIMULATORS

    rows = []
    for sim_name in ("linear", "nonlinear"):
        for seed in seeds:
            row = run_child(__file__, "--child-fit", sim_name, str(seed), "--device", device)
            sim = SIMULATORS[sim_name](n_subjects=800, n_visits=20, seed=seed)
            mixedlm_rmse, mixedlm_seconds = best_mixedlm(sim)
            row.update({"mixedlm_best_rmse": mixedlm_rmse, "mixedlm_seconds": mixedlm_seconds})
            for label in ("default", "fast"):
                row[f"{label}_vs_long"] = row[f"{label}_rmse"] / row["long_rmse"]
                row[f"{label}_vs_mixedlm"] = row[f"{label}_rmse"] / row["mixedlm_best_rmse"]
            rows.append(row)
    return rows


# ---------------------------------------------------------------- part 2: overhead
def overhead_rows(device: str, batch_sizes=(64, 512, 4096), steps: int = 20, repeats: int = 5) -> list[dict]:
    from pyro_dgmm.datasets import simulate_nonlinear

    sim = simulate_nonlinear(n_subjects=4096, seed=0)
    est = estimator(sim)
    est.fit(sim.data, max_epochs=1, progress=False, device=device)
    est.model_.to(device), est.guide_.to(device)  # fit() hands them back on the CPU
    data = est.data_.to(device)
    rows = []
    for batch_size in batch_sizes:
        pyro_s, torch_s = step_costs(est.model_, est.guide_, data, batch_size, steps, repeats)
        rows.append({"batch_subjects": batch_size, "pyro_ms_per_step": 1e3 * pyro_s,
                     "plain_torch_ms_per_step": 1e3 * torch_s, "ratio_pyro_to_torch": pyro_s / torch_s,
                     "device": device})
    return rows


def compile_rows(device: str, batch_sizes=(64, 4096), steps: int = 20, repeats: int = 3) -> list[dict]:
    """Step cost with the networks eager and ``torch.compile``d (copies of one fitted model)."""
    import copy

    import torch

    from pyro_dgmm.datasets import simulate_nonlinear

    sim = simulate_nonlinear(n_subjects=4096, seed=0)
    est = estimator(sim)
    est.fit(sim.data, max_epochs=1, progress=False, device=device)
    model, guide = est.model_.to(device), est.guide_.to(device)  # fit() hands them back on the CPU
    compiled_model, compiled_guide = copy.deepcopy(model), copy.deepcopy(guide)
    for module, name in ((compiled_model, "fixed_effects"), (compiled_model, "random_effects"),
                         (compiled_guide, "encoder")):
        setattr(module, name, torch.compile(getattr(module, name)))
    data = est.data_.to(device)
    rows = []
    for batch_size in batch_sizes:
        start = time.perf_counter()
        step_costs(compiled_model, compiled_guide, data, batch_size, steps=1, repeats=1)  # compiles
        first_s = time.perf_counter() - start
        eager_s = step_costs(model, guide, data, batch_size, steps, repeats)[0]
        compiled_s = step_costs(compiled_model, compiled_guide, data, batch_size, steps, repeats)[0]
        rows.append({"batch_subjects": batch_size, "eager_ms_per_step": 1e3 * eager_s,
                     "compiled_ms_per_step": 1e3 * compiled_s, "ratio_compiled_to_eager": compiled_s / eager_s,
                     "first_compiled_call_seconds": first_s, "device": device})
    return rows


# ---------------------------------------------------------------- part 3: scaling
def scaling_child(n_subjects: int, epochs: int, device: str) -> None:
    """Fresh process: fit for ``epochs`` epochs, print JSON.  A one-epoch fit on
    64 subjects first pays the one-time lazy imports (constructing the first
    ``MultivariateNormal`` imports sympy, about 0.7 s), which would otherwise
    land in the timed epochs of the smallest size."""
    single_thread()
    from pyro_dgmm.datasets import simulate_nonlinear

    start = time.perf_counter()
    sim = simulate_nonlinear(n_subjects=n_subjects, seed=0)
    simulate_s = time.perf_counter() - start
    warm = simulate_nonlinear(n_subjects=64, seed=1)
    estimator(warm).fit(warm.data, max_epochs=1, progress=False, device=device)
    before_fit_mb = peak_resident_mb()
    est = estimator(sim)
    est.fit(sim.data, max_epochs=epochs, progress=False, device=device, kl_warmup_epochs=1,
            linear_warmup_epochs=0)
    row = {"subjects": n_subjects, "rows": len(sim.data), "epochs": est.result_.epochs_run,
           "seconds_per_epoch": est.result_.seconds / est.result_.epochs_run,
           "simulate_seconds": simulate_s, "peak_rss_before_fit_mb": before_fit_mb,
           "peak_rss_mb": peak_resident_mb(), "device": device}
    if device.startswith("cuda"):
        import torch

        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(row))


def scaling_rows(sizes: list[int], epochs: int, device: str) -> list[dict]:
    rows = []
    for n in sizes:
        row = run_child(__file__, "--child-scaling", str(n), "--epochs", str(epochs), "--device", device)
        row["microseconds_per_subject_epoch"] = 1e6 * row["seconds_per_epoch"] / n
        rows.append(row)
    return rows


# ---------------------------------------------------------------- part 4: convergence at scale
def converge_child(kind: str, size: int, device: str) -> None:
    """Fresh process: default fit to convergence at scale; peak memory; epoch cost vs plain torch."""
    import numpy as np
    import torch

    single_thread()
    from pyro_dgmm.datasets import simulate_app, simulate_nonlinear
    from pyro_dgmm.fit import default_batch_size

    start = time.perf_counter()
    sim = simulate_nonlinear(n_subjects=size, seed=0) if kind == "nonlinear" else \
        simulate_app(n_subjects=size, seed=0)
    simulate_s = time.perf_counter() - start
    est = estimator(sim)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    est.fit(sim.data, progress=True, device=device)  # the bar on stderr: a long fit shows where it is
    call_s = time.perf_counter() - start
    result = est.result_
    row = {"simulator": kind, "subjects": est.data_.num_subjects, "rows": len(sim.data),
           "outcomes": len(sim.outcomes), "fit_call_seconds": call_s, "fit_loop_seconds": result.seconds,
           "epochs": result.epochs_run,
           "stop": result.stop_reason, "simulate_seconds": simulate_s, "device": device,
           "peak_rss_mb": peak_resident_mb()}
    if device.startswith("cuda"):
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    est.model_.to(device), est.guide_.to(device)  # fit() hands them back on the CPU
    data = est.data_.to(device)
    batch = result.config["batch_size"] or default_batch_size(data.num_subjects)
    pyro_s, torch_s = step_costs(est.model_, est.guide_, data, batch, steps=10, repeats=3)
    steps_per_epoch = -(-data.num_subjects // batch)
    row.update({"epoch_seconds_in_fit": result.seconds / result.epochs_run,
                "epoch_seconds_pyro": pyro_s * steps_per_epoch, "epoch_seconds_plain_torch": torch_s * steps_per_epoch,
                "epoch_ratio_pyro_to_torch": pyro_s / torch_s})
    est.model_.cpu(), est.guide_.cpu()
    if kind == "nonlinear":
        keep = sim.data[sim.id_col].isin(np.unique(sim.data[sim.id_col])[:2000]).to_numpy()
        fitted = est.fitted_values(sim.data[keep])["y_fitted"].to_numpy()
        row["rmse_first_2000_subjects"] = rmse(fitted, sim.truth["y_mean"].to_numpy()[keep])
    print(json.dumps(row))


def converge_rows(sizes: list[int], app_scale: int | None, device: str) -> list[dict]:
    rows = [run_child(__file__, "--child-converge", "nonlinear", str(n), "--device", device) for n in sizes]
    if app_scale:
        rows.append(run_child(__file__, "--child-converge", "app", str(1174 * app_scale), "--device", device))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["fit", "overhead", "scaling"],
                        choices=["fit", "overhead", "scaling", "converge", "compile"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 8000, 80000])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--converge-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--app-scale", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child-fit", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-scaling", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-converge", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_fit:
        return fit_child(args.child_fit[0], int(args.child_fit[1]), args.device)
    if args.child_scaling:
        return scaling_child(args.child_scaling, args.epochs, args.device)
    if args.child_converge:
        return converge_child(args.child_converge[0], int(args.child_converge[1]), args.device)
    single_thread()
    if "fit" in args.parts:
        rows = fit_rows(args.seeds, args.device)
        print_table(rows, "n=800 x 20: default fit (fresh process), fast (40 epochs), long (200 epochs, no stopping) vs MixedLM")
        write_json(rows, result_name("speed_default_fit", args.device), device=args.device)
    if "overhead" in args.parts:
        rows = overhead_rows(args.device)
        print_table(rows, "Milliseconds per training step: Pyro ELBO (as the fit loop runs it) vs plain torch")
        write_json(rows, result_name("speed_pyro_overhead", args.device), device=args.device)
    if "scaling" in args.parts:
        rows = scaling_rows(args.sizes, args.epochs, args.device)
        print_table(rows, f"Scaling in subjects ({args.epochs} epochs each, fresh process)")
        write_json(rows, result_name("speed_scaling", args.device), device=args.device)
    if "compile" in args.parts:
        rows = compile_rows(args.device)
        print_table(rows, "Milliseconds per training step: networks eager vs torch.compile (and the compiling call)")
        write_json(rows, result_name("speed_compile", args.device), device=args.device)
    if "converge" in args.parts:
        rows = converge_rows(args.converge_sizes, args.app_scale, args.device)
        print_table(rows, "Fit to convergence at scale")
        write_json(rows, result_name("speed_converge", args.device), device=args.device)


if __name__ == "__main__":
    main()
