"""Names that several modules share: MLflow tags, Optuna attributes, metric names and config groups.

Each is written here once; the sweep writes them, the report and the tests read them.
"""

from __future__ import annotations

# -- config groups ---------------------------------------------------------------------------
TRIAL_GROUPS: tuple[str, ...] = ("model", "lora", "quant", "train", "data")
"""The Hydra config groups one trial is composed from (``tracking`` is logged but never searched)."""

SWEEP_PARAM_PREFIX = "sweep.param."
"""MLflow param prefix of the values a sweep sampled for a trial (``sweep.param.lora.r``)."""

SEED_KEY = "train.seed"
"""The config field that tells seeds of one configuration apart."""

# -- MLflow tags -----------------------------------------------------------------------------
TAG_KIND = "lora_lab.kind"
"""What a run is: one of KIND_* below."""
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
KIND_BASELINE = "baseline"

TAG_STUDY = "lora_lab.study"
TAG_CONFIG_ID = "lora_lab.config_id"
"""Hash of a trial's searched values without the seed: runs with one config_id are seeds of one configuration."""
TAG_OVERRIDES = "lora_lab.overrides"
TAG_ERROR = "lora_lab.error"
TAG_WORKER = "lora_lab.worker"
TAG_BASELINE = "lora_lab.baseline"
"""On baseline runs: which baseline, one of BASELINE_* below."""
BASELINE_ZERO_SHOT = "zero_shot"
"""The base model evaluated as it is, untrained on the task."""
BASELINE_FULL_FT = "full_ft"
"""Every weight of the same base trainable, the same steps, its own learning rate."""

TAG_OPTUNA_STATE = "optuna.state"
TAG_OPTUNA_TRIAL = "optuna.trial_number"
TAG_OPTUNA_STORAGE = "optuna.storage"

# -- metrics ---------------------------------------------------------------------------------
RETAIN_PREFIX = "taskA_"
"""Metrics of the adapted model on held-out examples of the base's pretraining task (task A):
``taskA_eval_loss``, ``taskA_token_accuracy``, ``taskA_exact_match``."""
FORGET_PREFIX = "forget_"
"""How much worse the adapted model is on task A than the base was:
``forget_eval_loss`` (after minus before) and ``forget_exact_match`` (before minus after)."""

# -- confirm stage and excluded runs ---------------------------------------------------------
TAG_CONFIRM = "lora_lab.confirm"
"""'true' on the runs of a non-grid sweep's confirm stage (top configurations re-run with fresh seeds)."""
TAG_OUTCOME = "lora_lab.outcome"
"""Set on a run that must not be averaged (interrupted, worker_lost, duplicate); the report lists it apart."""
