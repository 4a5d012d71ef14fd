"""What the command line's ``fit`` writes into ``summary.json``
(:mod:`pyro_dgmm.cli`): the fit's settings, convergence and estimates, and
the marginal log-likelihood when asked for.

Example (a constant residual SD is reported as a number):

>>> from pyro_dgmm import DeepMixedModel
>>> from pyro_dgmm.datasets import simulate_linear
>>> sim = simulate_linear(n_subjects=12, n_visits=4, seed=0)
>>> est = DeepMixedModel(id_col="id", time_col="time", outcomes={"y": "gaussian"}, latent_dim=2)
>>> est = est.fit(sim.data, max_epochs=2, progress=False)
>>> isinstance(dispersion_summary(est.model_, "y"), float)
True
"""
from __future__ import annotations

import argparse


def log_likelihood_summary(model, args: argparse.Namespace) -> dict:
    """The importance-sampling estimate of the marginal log-likelihood of the
    training data at the fitted parameters
    (:func:`~pyro_dgmm.marginal.marginal_log_likelihood`, adaptive proposal),
    with its Monte Carlo SD and the Pareto k-hat diagnostics."""
    from .marginal import marginal_log_likelihood

    estimate = marginal_log_likelihood(model.model_, model.guide_, model._encoder_view(model.data_),
                                       args.log_likelihood_samples, seed=args.seed,
                                       num_shards=args.num_shards, distributed_input=bool(args.partitioned))
    k_hat = [float(k) for k in estimate.pareto_k]
    return {"total": float(estimate.total), "mc_sd": float(estimate.total_mc_sd),
            "num_samples": int(estimate.num_samples), "max_pareto_k": max(k_hat),
            "subjects_pareto_k_above_0.7": sum(k > 0.7 for k in k_hat)}


def fit_summary(model, rows: int, subjects: int, outcomes: dict, files: list[str], log_likelihood: dict | None = None) -> dict:
    """What ``summary.json`` holds (the :mod:`pyro_dgmm.cli` docstring lists it)."""
    result = model.result_
    # held-out negative ELBO per subject at the kept epoch; before one is kept (a fit stopped during
    # annealing), the last one measured; None without held-out subjects
    losses = dict(result.validation_loss)
    held_out_epoch = result.best_epoch if result.best_epoch in losses else max(losses, default=None)
    summary = {
        "rows": int(rows), "subjects": int(subjects), "outcomes": outcomes,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "annealed_at_epoch": result.annealed_at,
        "stop_reason": result.stop_reason, "converged": result.converged,
        "latent_dim": model.latent_dim_, "active_directions": result.active_directions,
        "latent_dim_search": result.latent_dim_search,
        "latent_activity": [round(v, 4) for v in result.latent_activity],
        "residual_autocorrelation": result.residual_autocorrelation, "starts": result.starts,
        "time_functions": model.time_functions_,
        "time_functions_race": result.time_functions_race,
        "refinement": result.refinement,
        "serial_refinement": result.serial_refinement,
        "serial_tau": model.model_.serial_tau() or None,
        "fit_seconds": round(result.seconds, 2),
        "convergence": {
            "converged": result.converged, "stop_reason": result.stop_reason, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "max_epochs": result.config.get("max_epochs"),
            "final_train_loss": float(result.train_loss[-1]) if result.train_loss else None,
            "held_out_loss": None if held_out_epoch is None else float(losses[held_out_epoch]),
            "held_out_loss_epoch": held_out_epoch,
        },
        "log_likelihood": log_likelihood,
        "dispersion": {name: dispersion_summary(model.model_, name)
                       for name in outcomes if model.model_.dispersion_coefficients(name) is not None},
        "shape": {name: {key: float(value.detach()) for key, value in model.model_.shape_parameters(name).items()}
                  for name in outcomes if model.model_.shape_parameters(name)},
        "files": files,
    }
    return summary


def dispersion_summary(model, name: str):
    """A constant dispersion's value, or the log-linear coefficients (a, slopes) of a linear one."""
    coefficients = model.dispersion_coefficients(name).detach()
    if coefficients.numel() == 1:
        return float(coefficients.exp())
    return {"log_coefficients": [round(float(v), 6) for v in coefficients]}
