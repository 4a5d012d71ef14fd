"""Issue 19: a learned time basis for the random coefficients, scored on the
development truths of ``default_selection.py`` (tried and rejected; the
table is in docs/fitting.md, "What falls short", truth (d)).

The trial varies the ``time_functions`` path of
:class:`pyro_dgmm.nn.RandomEffectsNet` (``--functions`` m learned functions
of time h(T), a one-hidden-layer net of the time features, 32 units) whose
coefficients depend on b,

.. math:: \\mu_{2,ijk} \\mathrel{+}= \\sum_{m} c_{km}(b_i)\\, h_m(T_{ij}),

with ``c(b) = W b`` (``--coefficients linear``; W or, with ``--start
basis``, h's last layer starting at zero; the first is the library's
``model_options={"time_functions": m}``) or ``c(b)`` a zero-start MLP of b
as wide as the random-effects net (``--coefficients mlp``).  Its
parameters are held with the other nonlinear paths during the linear
warm-up; ``--release-steps`` N further holds its output at zero for the
first N training steps of each fit.  A random amplitude and phase is
linear in the coefficients of sin and cos, which a fixed polynomial basis
cannot carry: the path is written for such shapes.

Everything after ``--`` goes to ``default_selection.py``.  With
``--diagnose TRUTH --diagnose-seeds ...`` the trial is instead fitted (with
defaults otherwise, as ``unseen_truths.py`` fits) to a truth of
``truths.py``, and its RMSE is printed beside the oracle's from the
``unseen_truths.py`` result files given by ``--oracle-results``: a
diagnosis on a reported truth, for after a design was judged on the
development truths, never for choosing one.

Run:  python benchmarks/learned_basis_trial.py --functions 4 --coefficients mlp \\
          -- --truths nonlinear lmm4sin --seeds 0 1 --configs 'trial={}' --output dev_learned_basis
      python benchmarks/learned_basis_trial.py --functions 4 --diagnose periodic --diagnose-seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

import default_selection
import truths
import unseen_truths
from common import rmse, single_thread
import pyro_dgmm.model as model_module
import pyro_dgmm.nn as nn_module

RESULTS = Path(__file__).resolve().parent / "results"


def learned_basis_net(functions: int, coefficients: str, start: str, release_steps: int) -> type:
    """``RandomEffectsNet`` with its ``time_functions`` path built as the trial
    variant asks (see the module docstring); the library's forward pass,
    warm-up hold and saving are used as they are."""

    class LearnedBasisNet(nn_module.RandomEffectsNet):
        def __init__(self, latent_dim, num_time_features, num_outcomes, hidden=(64, 64), activation="tanh",
                     time_functions=0):
            super().__init__(latent_dim, num_time_features, num_outcomes, hidden, activation)
            self.training_steps = 0  # one net per fit
            if not (functions and hidden):  # linear nets stay the linear special case
                return
            self.time_functions = functions
            self.learned_basis = nn_module.MLP(num_time_features, (32,), functions, activation)
            out = num_outcomes * functions
            if coefficients == "mlp":
                self.learned_coefficients = nn_module._zero_last_layer(
                    nn_module.MLP(latent_dim, hidden, out, activation))
                return
            self.learned_coefficients = nn.Linear(latent_dim, out, bias=False)
            if start == "coefficients":  # the library's start
                nn.init.zeros_(self.learned_coefficients.weight)
            else:
                nn_module._zero_last_layer(self.learned_basis)

        def _learned(self, b: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                self.training_steps += 1
            if self.training_steps < release_steps:
                return torch.zeros(())
            return super()._learned(b, time_features)

    return LearnedBasisNet


def diagnose(truth: str, seeds: list[int], oracle_files: list[str]) -> None:
    """Fit the patched default to ``truth`` per seed; print RMSE against the
    truth and as a ratio to the oracle's RMSE of the same seed."""
    from pyro_dgmm import DeepMixedModel
    from pyro_dgmm.selection import selection_loss as _selection_loss

    oracle = {}
    for path in oracle_files:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row.get("truth") == truth and "seed" in row and "oracle" in str(row.get("method", "")).lower():
                oracle[row["seed"]] = row["rmse"]
    for seed in seeds:
        sim = truths.SIMULATORS[truth](seed=seed)
        model = DeepMixedModel(id_col=unseen_truths.ID, time_col=unseen_truths.TIME, outcomes=sim.outcomes,
                               covariates=sim.covariates)
        model.fit(sim.data, progress=False)
        fitted = model.fitted_values()
        for outcome in sim.outcomes:
            error = rmse(unseen_truths.aligned(fitted, sim, outcome), sim.truth[f"{outcome}_mean"])
            ratio = f"{error / oracle[seed]:.3f}" if seed in oracle else "no oracle row"
            print(f"{truth} seed {seed} {outcome}: RMSE {error:.4f}, / oracle {ratio}, "
                  f"held-out loss {_selection_loss(model.result_):.3f}, epochs {model.result_.epochs_run}, "
                  f"activity {[round(v, 3) for v in model.result_.latent_activity]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=4,
                        help="m, the number of learned time functions (0: the default model, for comparison)")
    parser.add_argument("--coefficients", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--start", choices=("coefficients", "basis"), default="coefficients",
                        help="with linear coefficients: which factor starts at zero")
    parser.add_argument("--release-steps", type=int, default=0,
                        help="training steps with the path's output held at zero")
    parser.add_argument("--diagnose", default=None, choices=list(truths.SIMULATORS),
                        help="fit this truth of truths.py instead of running default_selection.py")
    parser.add_argument("--diagnose-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--oracle-results", nargs="+",
                        default=[str(RESULTS / f"unseen_truths_periodic_iwae_oracle_{part}.json") for part in "ab"],
                        help="unseen_truths.py result files holding the oracle rows")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    model_module.RandomEffectsNet = learned_basis_net(args.functions, args.coefficients, args.start,
                                                      args.release_steps)
    if args.diagnose:
        single_thread()
        diagnose(args.diagnose, args.diagnose_seeds, args.oracle_results)
        return
    sys.argv = ["default_selection.py", *argv[split + 1:]]
    default_selection.main()


if __name__ == "__main__":
    main()
