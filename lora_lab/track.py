"""MLflow tracking: one run per trial (nested under a sweep's parent run when in a sweep).

Everything goes through ``MlflowClient`` with explicit run ids rather than MLflow's global active
run, so several trials, workers or threads never write into each other's runs. The tracking URI is
MLflow's own (``MLFLOW_TRACKING_URI`` or its default), so a plain ``mlflow ui`` shows the runs.

What is logged (the contract ``lora_lab.report`` reads):

* Sweep: one experiment named after the study; one parent run named after the study with tags
  ``lora_lab.kind=sweep``, ``lora_lab.study``; params ``sweep.*``; artifacts ``sweep_config.yaml``
  and ``search_space.json``; at the end metrics ``best_<objective metric>`` and tags
  ``best_trial_number``, ``best_run_id``, ``best_overrides``.
* Trial and baseline (single ``lora_lab.train`` runs too): params = every config field the trial
  reads, flattened (``lora.r``, ``lora.lora_alpha``, ``lora.targets``, ``train.seed``, ...; a
  baseline, lora.method none or full, has lora.method alone of the lora group); in a sweep also the
  sampled values as ``sweep.param.<name>`` (free variables such as ``alpha_over_r`` included).
  Tags: ``lora_lab.kind`` (train: a single run; trial: a sweep's search or confirmation trial,
  ``lora_lab.confirm=true`` on the latter; baseline: a sweep's baseline, its name in
  ``lora_lab.baseline``), and in a sweep ``mlflow.parentRunId``, ``lora_lab.study``,
  ``optuna.trial_number``, ``optuna.state`` (COMPLETE | PRUNED | FAIL), ``lora_lab.config_id``
  (same value for the seeds of one configuration) and ``lora_lab.config`` (the same, readable),
  ``lora_lab.overrides`` (the ``python -m lora_lab.train`` overrides that reproduce the trial),
  ``target_modules``.
  Step metrics (step = optimizer step): ``train_loss``, ``learning_rate``, ``grad_norm``,
  ``eval_loss``, ``eval_token_accuracy``. Final metrics: ``eval_loss``, ``eval_token_accuracy``,
  ``perplexity``, ``exact_match``, ``trainable_params``, ``total_params``, ``trainable_pct``,
  ``wall_time_s``, ``train_time_s``, ``tokens_per_s``, ``peak_memory_mb``,
  ``effective_rank_mean|min|max``, logged at step 0 (the final eval_loss and eval_token_accuracy
  are the last step's). Artifacts: ``config.yaml``, ``effective_rank.json``, ``adapter/``. Status:
  FINISHED (complete), KILLED (pruned or interrupted), FAILED (error).
* Every run: a name that says what it is, its source and code version, and the experiment's kind,
  description and saved runs views: the trials, and in a sweep the configurations with each
  metric's mean over their seeds (``lora_lab.mlflow_ui``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from lora_lab import names, threads
from lora_lab.config import DataConfig, TrialConfig, logged_fields
from lora_lab.data import TaskData
from lora_lab.evaluate import effective_ranks
from lora_lab.mlflow_ui import (  # noqa: F401  (re-exported: the sweep and train call them as track.*)
    browse_hints,
    code_version,
    config_label,
    dashboard_command,
    ensure_experiment,
    experiment_note,
    log_report,
    log_sweep_summary,
    run_name,
    run_url,
    runs_url,
    source_tags,
    sweep_views,
    trial_run_name,
    trial_view,
)

STEP_METRICS = {
    "loss": "train_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "eval_loss": "eval_loss",
    "eval_token_accuracy": "eval_token_accuracy",
}
"""Trainer log keys recorded per step, and the metric names they are logged under."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class StepLogger(TrainerCallback):
    """Logs training and evaluation metrics at each Trainer log step to one MLflow run.

    Step metrics are buffered and written once ``FLUSH_S`` seconds passed since the last write (so
    ``mlflow ui`` follows a long trial live, at most half a minute behind) and at the end of the run
    (``TrialRun.finish`` writes what is left together with the final metrics, whatever happens): each
    database write has a fixed cost that is a visible share of a short CPU trial, so a short trial
    writes its step metrics once."""

    FLUSH_S = 30.0

    def __init__(self, client: MlflowClient, run_id: str, writes: list[Future]):
        self.client = client
        self.run_id = run_id
        self.writes = writes
        """The run's background writes (``TrialRun.writes``), which its ``finish`` waits for."""
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = int(time.time() * 1000)
        self.pending.extend(
            Metric(STEP_METRICS[key], float(value), now, state.global_step)
            for key, value in (logs or {}).items()
            if key in STEP_METRICS and _finite(value)
        )
        if time.monotonic() - self.last_flush >= self.FLUSH_S:
            self.flush()

    def take(self) -> list[Metric]:
        """The buffered metrics, handed over to be written by the caller."""
        pending, self.pending = self.pending, []
        return pending

    def flush(self) -> None:
        """Hand the buffered metrics to the background writer now."""
        self.writes.append(in_background(_log_batch, self.client, self.run_id, metrics=self.take()))
        self.last_flush = time.monotonic()


_writer: ThreadPoolExecutor | None = None


def _forget_writer() -> None:
    """A forked child has no copy of the parent's writer thread: it starts its own when it writes."""
    global _writer
    _writer = None


os.register_at_fork(after_in_child=_forget_writer)


def in_background(write, *args, **kwargs) -> Future:
    """Run an MLflow write on lora_lab's one background writer thread (in submission order).

    A trial's first writes (every config param, config.yaml, the dataset input) then overlap its
    training instead of delaying it; ``TrialRun.finish`` waits for them
    before it ends the run, so a finished run is complete. MLflow's own async logging
    (``log_batch(synchronous=False)``) does not fit: every ``set_terminated`` shuts its queue down
    and waits for its thread, at every trial."""
    global _writer
    if _writer is None:
        _writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora_lab-mlflow")
    return _writer.submit(write, *args, **kwargs)


def _log_batch(
    client: MlflowClient, run_id: str, metrics: list[Metric] = (), params: list[Param] = (), tags: list[RunTag] = ()
) -> None:
    """One ``log_batch`` call when it fits MLflow's limits (1000 entries, of them at most 100 params
    and 100 tags), as many as needed otherwise."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        p, params = params[:100], params[100:]
        t, tags = tags[:100], tags[100:]
        room = 1000 - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=m, params=p, tags=t)


class TrialRun:
    """The MLflow run of one trial: config as params, step metrics, final metrics, artifacts."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str | None = None):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        """The run's experiment (looked up when not given): its name is logged as ``tracking.experiment``."""
        self.effective_rank: dict[str, float] = {}
        self.step_loggers: list[StepLogger] = []
        self.final_metrics: list[Metric] = []
        self.final_tags: list[RunTag] = []
        self.writes: list[Future] = []
        """Writes handed to the background writer; ``finish`` waits for them before ending the run."""

    def callbacks(self) -> list[TrainerCallback]:
        """Trainer callbacks that stream this trial's step metrics into the run."""
        self.step_loggers.append(StepLogger(self.client, self.run_id, self.writes))
        return [self.step_loggers[-1]]

    def log_config(
        self,
        cfg: TrialConfig,
        config: DictConfig | str,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> None:
        """Every config field the trial reads as a flat param (``config.logged_fields``: a baseline has
        no lora.r), plus the caller's ``params`` and ``tags``, the run's
        source and code version, and ``run_name`` when given, in the same write), the composed config
        as the ``config.yaml`` artifact; written in the background while the trial trains (``config``
        is not to be changed afterwards). ``tracking.experiment`` says the experiment the run is in."""
        tags = {
            **source_tags(),
            **threads.tags(),
            **(tags or {}),
            **({"mlflow.runName": run_name} if run_name else {}),
        }
        self.writes.append(in_background(self._log_config, logged_fields(cfg), params or {}, tags, config))

    def _log_config(
        self, flat: dict[str, Any], params: dict[str, Any], tags: dict[str, str], config: DictConfig | str
    ) -> None:
        experiment = _experiment_name(
            self.client, self.experiment_id or self.client.get_run(self.run_id).info.experiment_id
        )
        flat = {**flat, "tracking.experiment": experiment, **params}
        _log_batch(
            self.client,
            self.run_id,
            params=[Param(key, str(value)[:6000]) for key, value in flat.items()],
            tags=[RunTag(key, str(value)[:5000]) for key, value in tags.items()],
        )
        if isinstance(config, DictConfig) and OmegaConf.select(config, "tracking.experiment") != experiment:
            config = copy.deepcopy(config)  # the trial's own config stays as composed
            config.tracking.experiment = experiment
        text = config if isinstance(config, str) else OmegaConf.to_yaml(config)  # here: off the trial's path
        self.client.log_text(self.run_id, text, "config.yaml")

    def log_dataset(self, task: TaskData, data_cfg: DataConfig) -> None:
        """Record the training data (name, content digest, sizes, source) as the run's dataset input
        (in the background, like ``log_config``)."""
        profile = json.dumps({"num_rows": {"train": len(task.train), "eval": len(task.eval)}})
        source = {"jsonl": data_cfg.path, "hf": data_cfg.hf_name}.get(data_cfg.task, f"lora_lab.data:{data_cfg.task}")
        dataset = Dataset(
            name=task.name,
            digest=task.digest,
            source_type={"jsonl": "local", "hf": "hugging_face"}.get(data_cfg.task, "code"),
            source=json.dumps({"uri": source}),
            profile=profile,
        )
        self.writes.append(
            in_background(
                self.client.log_inputs,
                self.run_id,
                datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])],
            )
        )

    def on_adapter_ready(self, peft_model) -> None:
        """Measure the trained adapter's effective rank while it is still attached."""
        self.effective_rank = effective_ranks(peft_model)

    def log_result(self, result, log_adapter: bool = True) -> None:
        """Final metrics, effective rank, the target modules and (optionally) the adapter files. The
        metrics and tags are written by ``finish``, in the same database write that ends the step
        metrics."""
        now = int(time.time() * 1000)
        # eval_loss / eval_token_accuracy at the final step already came in through StepLogger
        # (the final evaluation is a Trainer evaluation too): logging them again would duplicate it.
        # A trial that never trained (the zero-shot baseline, steps 0) had no Trainer evaluation to log them.
        metrics = {k: v for k, v in result.metrics().items() if result.steps == 0 or k not in STEP_METRICS.values()}
        ranks = self.effective_rank
        if ranks:
            values = list(ranks.values())
            metrics["effective_rank_mean"] = sum(values) / len(values)
            metrics["effective_rank_min"] = min(values)
            metrics["effective_rank_max"] = max(values)
            self.client.log_dict(self.run_id, ranks, "effective_rank.json")
        # step 0, not the last step: MLflow's charts draw a metric whose every value sits at step 0 as a
        # bar per run (comparable across runs), one at a later step as a lone dot on a step axis
        self.final_metrics += [Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite(v)]
        self.final_tags += [
            RunTag("target_modules", ",".join(result.target_modules)),
            RunTag("peak_memory_kind", result.peak_memory_kind),
        ]
        if log_adapter and result.adapter_dir and Path(result.adapter_dir).is_dir():
            self.client.log_artifacts(self.run_id, result.adapter_dir, "adapter")

    def finish(self, status: str, tags: dict[str, str] | None = None) -> None:
        """End the run with FINISHED, FAILED or KILLED, once its background writes are done and
        whatever is still buffered (step metrics, final metrics and tags, plus the caller's
        ``tags``) is written in one go. A write that failed fails a finished run."""
        metrics = [m for logger in self.step_loggers for m in logger.take()] + self.final_metrics
        all_tags = self.final_tags + [RunTag(key, str(value)[:5000]) for key, value in (tags or {}).items()]
        self.final_metrics, self.final_tags = [], []
        try:
            writes = list(self.writes)
            self.writes.clear()  # the same list the step loggers add to
            for write in writes:
                write.result()  # raises what the write raised
            _log_batch(self.client, self.run_id, metrics=metrics, tags=all_tags)
        except Exception:
            # the run must end all the same; a finished run whose results could not be written failed
            self.client.set_terminated(self.run_id, "FAILED" if status == "FINISHED" else status)
            if status == "FINISHED":
                raise
            return
        self.client.set_terminated(self.run_id, status)


def status_for(exc: BaseException | None) -> str:
    """MLflow status for how a trial ended: KILLED on Ctrl-C or a kill signal, FAILED on an error."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "KILLED"
    return "FAILED"


@functools.lru_cache(maxsize=64)
def _experiment_name(client: MlflowClient, experiment_id: str) -> str:
    return client.get_experiment(experiment_id).name


TRAIN_NOTE = (
    "Single `python -m lora_lab.train` runs, named after their settings (`tiny_llama r=8 α=16 all_linear s0`). "
    "Open **Views → lora_lab: trials by eval_loss** for r, alpha and the metrics as columns, best first."
)


@contextmanager
def single_run(cfg: TrialConfig, config_yaml: str, client: MlflowClient | None = None) -> Iterator[TrialRun]:
    """An MLflow run for one ``python -m lora_lab.train`` trial, ended with the matching status
    (``client``: one already opened, else MLflow's default)."""
    client = client or MlflowClient()
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, note=TRAIN_NOTE, view=trial_view())
    run = client.create_run(
        experiment_id, run_name=cfg.tracking.run_name or run_name(cfg), tags={names.TAG_KIND: "train"}
    )
    trial_run = TrialRun(client, run.info.run_id, experiment_id)
    try:
        trial_run.log_config(cfg, config_yaml)
        yield trial_run
    except BaseException as exc:
        trial_run.finish(status_for(exc))
        raise
    trial_run.finish("FINISHED")
