"""``python -m lora_lab.sweep +sweep=<preset>``: an Optuna study over LoRA settings, tracked in MLflow.

Each Optuna trial samples values from the preset's search space, turns them into Hydra overrides
composed onto the sweep's own config (so ``python -m lora_lab.train <those overrides>`` reproduces
it exactly) and runs ``lora_lab.train.run_trial`` on a base model and dataset built once per
process. The study lives in an Optuna storage, so running the command again resumes it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState
from transformers import TrainerCallback

from lora_lab import cli, search_space, track
from lora_lab.config import SweepConfig, TrialConfig, register_configs, to_trial_config
from lora_lab.errors import ConfigError, LoraLabError
from lora_lab.progress import SweepProgress
from lora_lab.train import ResourceCache, TrialResult, run_trial

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
"""Trials that count towards ``sweep.n_trials`` (a failed configuration is a result too)."""

PRUNING_SIGNAL = {"eval_loss": "eval_loss", "perplexity": "eval_loss",
                  "eval_token_accuracy": "eval_token_accuracy", "exact_match": "eval_token_accuracy"}
"""Objective -> the evaluation metric reported during training that stands in for it when pruning."""


PARENT_WAIT_S = 120.0
"""How long a worker other than 0 waits for worker 0 to create the study's parent run."""


class SweepFailedError(LoraLabError):
    """The sweep could not produce a single usable trial."""


def to_sweep_config(cfg: DictConfig) -> SweepConfig:
    """The typed sweep section of a composed config, with its checks run."""
    if cfg.get("sweep") is None:
        presets = sorted(p.stem for p in (Path(cli.CONFIG_DIR) / "sweep").glob("*.yaml"))
        raise ConfigError("sweep", None, "a preset chosen with sweep=<name>, one of: " + ", ".join(presets))
    sweep = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepConfig), cfg.sweep))
    assert isinstance(sweep, SweepConfig)
    for name in sweep.derived:
        if not search_space.is_config_field(name):
            raise ConfigError(f"sweep.derived.{name}", name, "a config field such as lora.lora_alpha")
    return sweep


def storage_url(sweep: SweepConfig) -> str:
    """The study's storage: as given, or a journal file under sweeps/<study>/ (a study started in
    a sqlite file there, ``optuna.db``, stays in it).

    A journal file is the default because it is an order of magnitude cheaper per trial than
    Optuna's sqlite storage (~9 ms against ~80 ms of storage calls per trial, measured in a sweep of
    150-step trials on the built-in model: ~1.5 % of each trial) and several local workers can share
    it (a file lock), with a dead worker's trial detected by its process id."""
    if sweep.storage:
        return sweep.storage
    folder = Path("sweeps") / sweep.study_name
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "optuna.db").is_file():
        return f"sqlite:///{folder / 'optuna.db'}"
    return str(folder / "optuna.journal")


def heartbeat_interval_s() -> int:
    """How often a running trial tells a database storage it is alive ($LORA_LAB_HEARTBEAT_S,
    default 10); after three missed beats (the grace period) another worker fails the trial and
    queues its configuration again."""
    return int(os.environ.get("LORA_LAB_HEARTBEAT_S", "10"))


def open_storage(url: str, on_stale_trial=None) -> optuna.storages.BaseStorage:
    """An Optuna storage: a journal file (path ending in .journal) or any RDB URL. Database
    storages get a heartbeat, so the trial of a killed worker is failed (and ``on_stale_trial``
    called) instead of being left RUNNING."""
    if url.endswith(".journal"):
        path = url.removeprefix("journal:///").removeprefix("journal://")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval_s(),
                                      grace_period=3 * heartbeat_interval_s(),
                                      heartbeat_stale_trial_callback=on_stale_trial,
                                      engine_kwargs={"pool_pre_ping": True})


def make_sampler(sweep: SweepConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the preset names."""
    name, seed = sweep.sampler.name, sweep.sampler.seed
    if name == "grid":
        return optuna.samplers.GridSampler(search_space.grid(sweep), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=sweep.sampler.n_startup_trials)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.sampler.n_startup_trials,
                                      multivariate=True)


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner the preset names (pruning needs a single objective)."""
    p = sweep.pruner
    if p.name == "none" or len(sweep.objectives) > 1:
        return optuna.pruners.NopPruner()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)


def target_trials(sweep: SweepConfig) -> int:
    """How many finished trials the study should hold."""
    if sweep.n_trials is not None:
        return sweep.n_trials
    if sweep.sampler.name == "grid":
        return search_space.grid_size(sweep)
    raise ConfigError("sweep.n_trials", None, "a number of trials (only a grid sweep can leave it null)")


class PruningReporter(TrainerCallback):
    """Reports each evaluation to the Optuna trial and stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, signal: str):
        self.trial = trial
        self.signal = signal
        self.evaluations = 0
        self.pruned_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.signal)
        if value is None:
            return
        self.evaluations += 1
        self.trial.report(float(value) if math.isfinite(value) else float("inf"), self.evaluations)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True


@dataclass
class SweepSummary:
    """What a finished (or resumed-and-finished) sweep holds."""

    study_name: str
    storage: str
    parent_run_id: str
    counts: dict[str, int]
    best: list[dict[str, Any]] = field(default_factory=list)


class Sweep:
    """One study's run: samples trials, trains them, logs them, and keeps the parent run current."""

    def __init__(self, cfg: DictConfig, base_overrides: list[str], console_progress: bool = True,
                 trial_callbacks: list[TrainerCallback] | None = None):
        """``trial_callbacks`` are added to every trial's Trainer (early stopping, custom logging,
        fault injection in tests)."""
        self.cfg = cfg
        self.trial_callbacks = list(trial_callbacks or [])
        self.sweep = to_sweep_config(cfg)
        self.base_overrides = [o for o in base_overrides if not _is_sweep_override(o)]
        self._base_composed: DictConfig | None = None
        self.objectives = self.sweep.objectives
        self.storage = storage_url(self.sweep)
        self.client = MlflowClient()
        self.study = optuna.create_study(
            study_name=self.sweep.study_name, storage=open_storage(self.storage, self._on_stale_trial),
            sampler=make_sampler(self.sweep), pruner=make_pruner(self.sweep),
            directions=[o.direction for o in self.objectives], load_if_exists=True)
        self.experiment_id = track.ensure_experiment(self.client, self.sweep.experiment or self.sweep.study_name)
        self.resources = ResourceCache()
        self.target = target_trials(self.sweep)
        self.progress = SweepProgress(self.sweep.study_name, self.target, enabled=console_progress)
        self.parent_run_id = self._parent_run()
        signal = PRUNING_SIGNAL.get(self.objectives[0].metric)
        self.pruning_signal = signal if len(self.objectives) == 1 and self.sweep.pruner.name != "none" else None
        self.trial_root = Path("sweeps") / self.sweep.study_name / "trials"

    # -- MLflow parent run ---------------------------------------------------------------
    def _parent_run(self) -> str:
        """The study's parent run: found again on resume or by another worker, else created by
        worker 0 (the other workers wait for it, so a study never gets two parent runs)."""
        deadline = time.monotonic() + PARENT_WAIT_S
        while True:
            stored = self.study.user_attrs.get("mlflow_parent_run_id")
            if stored:
                try:
                    self.client.update_run(stored, status="RUNNING")
                    return stored
                except Exception:
                    break  # the tracking store changed since: start a new parent run there
            if self.sweep.worker == 0 or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        run = self.client.create_run(self.experiment_id, run_name=self.sweep.study_name, tags={
            "lora_lab.kind": "sweep", "lora_lab.study": self.sweep.study_name,
            "optuna.storage": _redact(self.storage)})
        run_id = run.info.run_id
        sweep_node = OmegaConf.to_container(self.cfg.sweep, resolve=True)
        params = [Param(f"sweep.{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v))
                  for k, v in sweep_node.items()]
        params.append(Param("sweep.base_overrides", " ".join(self.base_overrides)))
        self.client.log_batch(run_id, params=[Param(p.key, p.value[:6000]) for p in params])
        self.client.log_text(run_id, OmegaConf.to_yaml(self.cfg), "sweep_config.yaml")
        space = {name: repr(dist) for name, dist in search_space.distributions(self.sweep).items()}
        self.client.log_dict(run_id, {"params": space, "derived": dict(self.sweep.derived)}, "search_space.json")
        self.study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id

    def _log_best(self) -> list[dict[str, Any]]:
        """Record the best trial (or the Pareto set) on the parent run."""
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not complete:
            return []
        best_trials = self.study.best_trials if len(self.objectives) > 1 else [self.study.best_trial]
        best = [{"number": t.number, "values": t.values, "params": t.params,
                 "run_id": t.user_attrs.get("mlflow_run_id"), "overrides": t.user_attrs.get("overrides")}
                for t in best_trials]
        now = int(time.time() * 1000)
        lead = best_trials[0]
        metrics = [Metric(f"best_{o.metric}", float(v), now, 0) for o, v in zip(self.objectives, lead.values)]
        tags = [RunTag("best_trial_number", str(lead.number)),
                RunTag("best_run_id", str(lead.user_attrs.get("mlflow_run_id"))),
                RunTag("best_overrides", str(lead.user_attrs.get("overrides")))]
        if len(self.objectives) > 1:
            tags.append(RunTag("pareto_trial_numbers", ",".join(str(t.number) for t in best_trials)))
        self.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)
        self.client.log_dict(self.parent_run_id, best, "best_trials.json")
        return best

    # -- one trial -------------------------------------------------------------------------
    def compose_trial(self, values: dict[str, Any]) -> tuple[TrialConfig, DictConfig, list[str]]:
        """The trial's config, composed exactly as ``python -m lora_lab.train`` would from its overrides."""
        trial_overrides = search_space.to_overrides(values)
        overrides = self.base_overrides + trial_overrides
        composed = self._apply_value_overrides(trial_overrides)
        if composed is None:
            composed = compose(config_name="config", overrides=overrides)
        return to_trial_config(composed), composed, overrides

    def _apply_value_overrides(self, trial_overrides: list[str]) -> DictConfig | None:
        """The sweep's config with the trial's plain ``group.field=value`` overrides applied the way
        Hydra's own composition applies them, or None when one of them selects a config group, adds
        or deletes a key, or fails (the caller then composes from scratch and reports Hydra's error).

        A full Hydra compose re-reads and re-merges every config file: 0.2-0.5 s a trial on a CPU,
        3-8 % of a 150-step trial on the built-in model; the same values set on a copy of the
        already composed config take a few milliseconds (a test checks both give the same config)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides(trial_overrides)
            if any(o.package is not None or o.is_add() or o.is_force_add() or o.is_delete()
                   or "." not in o.key_or_group or "/" in o.key_or_group for o in parsed):
                return None
            if self._base_composed is None:
                self._base_composed = compose(config_name="config", overrides=self.base_overrides)
            composed = copy.deepcopy(self._base_composed)
            ConfigLoaderImpl._apply_overrides_to_config(parsed, composed)
            return composed
        except Exception:
            return None

    def objective(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """Train and evaluate one sampled configuration; its MLflow run ends with the matching status."""
        sampled = search_space.suggest(trial, self.sweep)
        if self.sweep.sampler.name != "grid" and self.sweep.seeds > 1:
            sampled[search_space.SEED_PARAM] = int(trial.user_attrs.get("seed_index", 0))
        values = search_space.resolve(self.sweep, sampled)
        cfg_id = search_space.config_id(values)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number:04d}", tags={
            "mlflow.parentRunId": self.parent_run_id, "lora_lab.kind": "trial",
            "lora_lab.study": self.sweep.study_name, "optuna.trial_number": str(trial.number),
            "optuna.state": "RUNNING", "lora_lab.config_id": cfg_id, "lora_lab.worker": str(self.sweep.worker)})
        trial_run = track.TrialRun(self.client, run.info.run_id)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        trial.set_user_attr("worker_host", socket.gethostname())
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("config_id", cfg_id)
        self.progress.start_trial(trial.number, values)
        state, error = "FAIL", None
        sampled_params = {f"sweep.param.{k}": v for k, v in values.items()}
        try:
            try:
                trial_cfg, composed, overrides = self.compose_trial(values)
            except BaseException:
                self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sampled_params.items()])
                raise
            trial.set_user_attr("overrides", " ".join(overrides))
            trial_run.log_config(trial_cfg, composed, params=sampled_params,
                                 tags={"lora_lab.overrides": " ".join(overrides)})
            resources = self.resources.get(trial_cfg)
            trial_run.log_dataset(resources.task, trial_cfg.data)
            callbacks = [*trial_run.callbacks(), self.progress.trainer_callback(), *self.trial_callbacks]
            pruning = PruningReporter(trial, self.pruning_signal) if self.pruning_signal else None
            if pruning:
                callbacks.append(pruning)
            result = run_trial(trial_cfg, self.trial_root / f"{trial.number:04d}", resources,
                               callbacks=callbacks, show_progress=False, on_adapter_ready=trial_run.on_adapter_ready,
                               pruned=(lambda: pruning.pruned_at is not None) if pruning else None)
            trial_run.log_result(result, log_adapter=trial_cfg.tracking.log_adapter)
            if pruning and pruning.pruned_at is not None:
                state = "PRUNED"
                raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
            values_out = self._objective_values(result, trial_run)
            state = "COMPLETE"
            self._enqueue_seed_repeats(trial)
            return values_out[0] if len(values_out) == 1 else tuple(values_out)
        except BaseException as exc:
            error = exc
            if isinstance(exc, optuna.TrialPruned):
                state = "PRUNED"
            raise
        finally:
            tags = {"optuna.state": state}
            if error is not None and state == "FAIL":
                tags["lora_lab.error"] = f"{type(error).__name__}: {error}"
            status = "KILLED" if state == "PRUNED" else track.status_for(error if state == "FAIL" else None)
            trial_run.finish(status, tags=tags)
            self.progress.end_trial(trial.number, state, error)

    def _objective_values(self, result: TrialResult, trial_run: track.TrialRun) -> list[float]:
        metrics = result.metrics()
        if trial_run.effective_rank:
            metrics["effective_rank_mean"] = sum(trial_run.effective_rank.values()) / len(trial_run.effective_rank)
        out = []
        for objective in self.objectives:
            if objective.metric not in metrics:
                raise ConfigError("sweep.objectives.metric", objective.metric, "one of " + ", ".join(metrics))
            value = metrics[objective.metric]
            if not math.isfinite(value):
                raise ValueError(f"objective {objective.metric} is {value}")
            out.append(value)
        return out

    def _enqueue_seed_repeats(self, trial: optuna.Trial) -> None:
        """Outside a grid, a newly sampled configuration is queued again once per extra seed."""
        if self.sweep.seeds <= 1 or self.sweep.sampler.name == "grid" or "seed_index" in trial.user_attrs:
            return
        for index in range(1, self.sweep.seeds):
            self.study.enqueue_trial(trial.params, user_attrs={"seed_index": index})

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose worker died (no heartbeat): end its MLflow run as KILLED and queue its
        configuration again, so a restarted sweep loses nothing."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                self.client.set_tag(run_id, "optuna.state", "FAIL")
                self.client.set_tag(run_id, "lora_lab.error", "worker stopped sending heartbeats (killed?)")
                self.client.set_terminated(run_id, "KILLED")
            except Exception:
                pass  # the run is gone from the tracking store: nothing to end
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=False)(study, trial)

    def fail_dead_trials(self) -> None:
        """Fail the RUNNING trials whose worker is gone: by heartbeat on database storages (Optuna's
        own check), and on a journal file, which has no heartbeat, by the worker's process id when
        it ran on this host. Each is queued again by ``_on_stale_trial``."""
        storage = self.study._storage
        optuna.storages.fail_stale_trials(self.study)
        if not isinstance(storage, optuna.storages.JournalStorage):
            return
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            host, pid = trial.user_attrs.get("worker_host"), trial.user_attrs.get("worker_pid")
            if host == socket.gethostname() and pid and not _process_alive(int(pid)):
                if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    self._on_stale_trial(self.study, self.study._storage.get_trial(trial._trial_id))

    # -- the loop ------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Trials of the study by state."""
        out: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def remaining(self, count_running: bool = False) -> int:
        """Trials still to run before the study holds ``target`` finished trials. A trial failed
        for lost heartbeats does not count: its queued retry stands in for it. With
        ``count_running``, trials running on any worker count as done: the number still to start."""
        states = DONE_STATES + ((TrialState.RUNNING,) if count_running else ())
        trials = self.study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        done = sum(1 for t in trials if t.state in states and t.number not in retried)
        return max(self.target - done, 0)

    def run(self) -> SweepSummary:
        """Enqueue baselines (once), run the missing trials, record the best on the parent run."""
        if self.sweep.worker == 0 and not self.study.user_attrs.get("baselines_enqueued"):
            for baseline in self.sweep.baselines:
                self.study.enqueue_trial(dict(baseline), skip_if_exists=True)
            self.study.set_user_attr("baselines_enqueued", True)
        self.fail_dead_trials()
        error: BaseException | None = None
        try:
            with self.progress:
                self.progress.set_done(self.target - self.remaining(), self._best_value())
                if self.remaining(count_running=True) > 0:
                    self.study.optimize(
                        self.objective, timeout=self.sweep.timeout_s, catch=(Exception,),
                        callbacks=[self._after_trial])
        except BaseException as exc:
            error = exc
            raise
        finally:
            best = self._log_best()
            counts = self.counts()
            all_failed = not counts.get("COMPLETE") and bool(counts.get("FAIL"))
            status = track.status_for(error) if error is not None else ("FAILED" if all_failed else "FINISHED")
            self.client.set_terminated(self.parent_run_id, status)
        if all_failed:
            first = next(t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.FAIL)
            raise SweepFailedError(
                f"every trial of study {self.sweep.study_name!r} failed ({counts['FAIL']}); the first, trial "
                f"{first.number}, with: {first.system_attrs.get('fail_reason', 'see its MLflow run')}")
        return SweepSummary(self.sweep.study_name, self.storage, self.parent_run_id, counts, best)

    def _best_value(self) -> float | None:
        if len(self.objectives) > 1:
            return None
        try:
            return self.study.best_value
        except ValueError:
            return None

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.progress.set_done(self.target - self.remaining(), self._best_value())
        if self.remaining(count_running=True) == 0:
            study.stop()  # nothing left to start: trials running on other workers finish there
            return
        if self.sweep.max_failures:
            recent = [t for t in study.get_trials(deepcopy=False, states=DONE_STATES)][-self.sweep.max_failures:]
            if len(recent) == self.sweep.max_failures and all(t.state == TrialState.FAIL for t in recent):
                study.stop()
        elif all(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False, states=DONE_STATES)) \
                and len(study.get_trials(deepcopy=False, states=DONE_STATES)) >= 3:
            study.stop()  # three failures and not one success: the setup is broken, not the sample


def _is_sweep_override(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "sweep" or key.startswith(("sweep.", "sweep/", "hydra"))


def _redact(url: str) -> str:
    """A storage URL with any password removed, fit for logging."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def print_summary(summary: SweepSummary) -> None:
    """Where the results are and which trial won."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.counts.items()))
    print(f"study {summary.study_name}: {counts}")
    print(f"optuna storage: {_redact(summary.storage)}")
    print(f"mlflow parent run: {summary.parent_run_id} (browse with `mlflow ui`)")
    for best in summary.best:
        values = ", ".join(f"{v:.4g}" for v in best["values"])
        print(f"best trial {best['number']} ({values}): python -m lora_lab.train {best['overrides']}")
    print(f"report: python -m lora_lab.report study={summary.study_name}")


class PrepareSweep(Callback):
    """Hydra callback: before a multirun launches its workers, create the tracking store, the
    Optuna study and the MLflow parent run once, so the workers attach to them instead of racing
    to create them (two workers migrating one sqlite store at once fail)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("sweep") is None:
            return
        cli.quiet_libraries()
        overrides = list(config.hydra.overrides.task)
        with open_dict(config):  # the launcher process acts as worker 0 for the set-up alone
            config.sweep.worker = 0
        Sweep(config, overrides, console_progress=False)  # its parent run stays RUNNING for the workers


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def claim_gpu(worker: int) -> None:
    """Pin this worker to one GPU: SLURM (or the user) may already have set CUDA_VISIBLE_DEVICES;
    otherwise, on a multi-GPU box, worker i takes GPU i mod the GPU count."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        del os.environ["CUDA_VISIBLE_DEVICES"]  # submitit's local executor sets it empty when it assigns none
    if "CUDA_VISIBLE_DEVICES" in os.environ or os.environ.get("SLURM_STEP_GPUS"):
        return
    gpus = Path("/proc/driver/nvidia/gpus")  # counted without initialising CUDA, which would fix the choice
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    if count > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(worker % count)


register_configs()


@hydra.main(version_base=None, config_path=cli.CONFIG_DIR, config_name="config")
@cli.reports_errors
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m lora_lab.sweep +sweep=<preset> [overrides]``."""
    cli.quiet_libraries()
    signal.signal(signal.SIGTERM, _interrupt)  # SLURM preemption / `kill`: end the trial cleanly
    sweep_cfg = to_sweep_config(cfg)
    claim_gpu(sweep_cfg.worker)
    if sweep_cfg.cpu_threads:
        import torch

        torch.set_num_threads(sweep_cfg.cpu_threads)
    sweep = Sweep(cfg, list(HydraConfig.get().overrides.task), console_progress=True)
    try:
        summary = sweep.run()
    except KeyboardInterrupt:
        cli.fail("interrupted: the running trial was recorded as failed in Optuna and KILLED in MLflow; "
                 "run the same command again to resume the study.", code=130)
    print_summary(summary)


if __name__ == "__main__":
    sys.argv[1:] = cli.hydra_argv(sys.argv[1:])
    cli.check_overrides(sys.argv[1:])
    main()
