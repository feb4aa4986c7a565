"""Pruning during training: a trial's evaluations reported to Optuna, and training stopped when its pruner says so.

One job: the Trainer callback between transformers and Optuna's pruner, and which evaluation metric
stands in for each objective while a trial trains.
"""

from __future__ import annotations

import math

import optuna
from transformers import TrainerCallback

PRUNING_SIGNAL = {
    "eval_loss": "eval_loss",
    "perplexity": "eval_loss",
    "eval_token_accuracy": "eval_token_accuracy",
    "exact_match": "eval_token_accuracy",
}
"""Objective -> the evaluation metric reported during training that stands in for it when pruning."""


class PruningReporter(TrainerCallback):
    """Reports each evaluation made during training to the Optuna trial, at its optimizer step, and
    stops training when the pruner says so. The evaluation after training (``trainer.evaluate()``
    when the last step was not an evaluation step) is not reported, and a trial that reached its
    last step is never pruned: it is fully trained."""

    def __init__(self, trial: optuna.Trial, signal: str):
        self.trial = trial
        self.signal = signal
        self.training = False
        self.pruned_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.signal)
        if value is None or not self.training:
            return
        self.trial.report(float(value) if math.isfinite(value) else float("inf"), state.global_step)
        if state.global_step < state.max_steps and self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True
