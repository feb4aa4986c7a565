"""Names that several modules share: MLflow tags, Optuna attributes, metric names and config groups.

Each is written here once; the sweep writes them, the report and the tests read them.
"""

from __future__ import annotations

# -- config groups ---------------------------------------------------------------------------
TRIAL_GROUPS: tuple[str, ...] = ("model", "lora", "quant", "train", "data")
"""The Hydra config groups one trial is composed from (``tracking`` is logged but never searched)."""

ADAPTER_TRIAL_FILE = "lora_lab_trial.json"
"""Saved beside a trial's adapter: the trial's model and quant settings, so ``lora_lab.export`` knows
the base to merge into."""

TARGET_SETS: tuple[str, ...] = ("qv", "attn", "mlp", "all_linear")
"""The named target-module sets (lora.targets), resolved per architecture by lora_lab.model.targets."""

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
"""Hash of a trial's whole config but its seed (its searched values and its study's definition, see
lora_lab.definition): runs with one config_id are seeds of one configuration."""
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

# -- sweep bookkeeping (Optuna trial user attrs and MLflow tags written by lora_lab.sweep) -------
TAG_OUTCOME = "lora_lab.outcome"
"""Why a trial ended FAIL in Optuna (also a tag on its MLflow run): one of OUTCOME_* below. Only
OUTCOME_ERROR counts as a finished configuration; the others leave its slot to be run again. The
report never averages a run that carries it (interrupted, worker_lost runs are listed apart)."""
OUTCOME_ERROR = "error"
"""The configuration itself failed (exception, NaN loss, out of memory): a result, not re-run."""
OUTCOME_ENVIRONMENT = "environment"
"""The environment failed the trial (a missing file, a model or service out of reach, no space left,
no permission; see lora_lab.faults): not the configuration's result, so its slot stays open and the
sweep stops."""
OUTCOME_RETRIED = "retried"
"""How the counts show a configuration's failure that ``sweep.retry_failed=true`` runs again."""
OUTCOME_INTERRUPTED = "interrupted"
"""Ctrl-C or SIGTERM (e.g. SLURM preemption) during the trial."""
OUTCOME_WORKER_LOST = "worker_lost"
"""The worker died (killed outright, node lost) and another worker or a restart found it."""
OUTCOME_DUPLICATE = "duplicate"
"""Another trial already holds the same configuration and seed: never trained."""
OUTCOME_SURPLUS = "surplus"
"""Beyond what the study asks for (n_trials reached, or the slot left the plan): never trained."""
TAG_CONFIRM = "lora_lab.confirm"
"""'true' on the runs of a non-grid sweep's confirm stage: the top configurations re-run with fresh
seeds (sweep.confirm_top_k)."""
TAG_SLOT = "lora_lab.slot"
"""'<config_id>/<train.seed>' (baselines: '<name>/<train.seed>'): the unit a sweep runs exactly once."""
TAG_SEED = "lora_lab.seed"
ATTR_PLAN = "lora_lab.plan"
"""Study user attr: what the study was asked to hold (grid points, seeds, n_trials, objectives)."""
ATTR_DEFINITION = "lora_lab.definition"
"""Study user attr: the sweep's definition (search space, objectives, the trial config but its searched
fields and seed), stored when the study is created; a rerun that differs is refused (lora_lab.definition)."""
ATTR_WARM_START = "lora_lab.warm_start"
"""Study user attr: the configurations taken from an earlier study (sweep.warm_start), kept so that
every worker and every restart runs the same ones; also the parent run's MLflow tag holding the line
the sweep printed about them."""
ATTR_MLFLOW_RUN = "mlflow_run_id"
ATTR_WORKER_HOST = "worker_host"
ATTR_WORKER_PID = "worker_pid"
ATTR_WORKER_START = "worker_start"
"""The worker process's start time (Linux clock ticks since boot): a reused pid is not the worker."""
ATTR_OVERRIDES = "overrides"
ATTR_PARENT_RUN = "mlflow_parent_run_id"
BASELINE_STUDY_SUFFIX = ".baselines"
CONFIRM_STUDY_SUFFIX = ".confirm"
"""Sibling Optuna studies of a sweep: baselines and confirmations never feed the sampler."""

# -- MLflow UI: what `mlflow ui` opens on (lora_lab.track) -------------------------------------
TAG_GIT_DIRTY = "lora_lab.git_dirty"
"""'true' when tracked files of the code that ran differed from the commit in ``mlflow.source.git.commit``."""
TAG_VERSION = "lora_lab.version"
"""The installed lora_lab package version (the code version where there is no git checkout)."""
TAG_RUN_VIEW = "lora_lab.runs_view"
"""On the experiment: the id of the saved runs view lora_lab's links open (``mlflow.sharedViewState.<id>``)."""
TAG_CONFIG_LABEL = "lora_lab.config"
"""A sweep run's configuration as it reads (``r=8 α=16 all_linear``, a baseline's name): its run name
without the trial number and seed. With ``lora_lab.config_id`` it names the groups of the
configurations view."""

EFFECTIVE_RANK_METRIC = "effective_rank_mean"
"""The adapter's mean effective rank over its modules: logged by every trial, usable as a sweep objective."""
TASK_A_METRICS: tuple[str, ...] = (
    f"{RETAIN_PREFIX}eval_loss",
    f"{RETAIN_PREFIX}token_accuracy",
    f"{RETAIN_PREFIX}exact_match",
)
"""The task A metrics a trial on a family's task B logs (see RETAIN_PREFIX)."""
FORGET_METRICS: tuple[str, ...] = (f"{FORGET_PREFIX}eval_loss", f"{FORGET_PREFIX}exact_match")
"""The forgetting metrics (see FORGET_PREFIX): positive means worse on task A than the base was."""

# -- thread policy (lora_lab.threads), tags on every trial's MLflow run --------------------------
TAG_THREADS = "lora_lab.threads"
"""torch's intra-op thread count during the run."""
TAG_THREADS_SET_BY = "lora_lab.threads_set_by"
"""What decided it: lora_lab's policy (and the cores it counted), sweep.cpu_threads, or OMP_NUM_THREADS."""
TAG_OMP_WAIT_POLICY = "lora_lab.omp_wait_policy"
"""OMP_WAIT_POLICY when torch loaded, and whether lora_lab's policy or the user set it."""
