"""``python -m lora_lab.sweep +sweep=<preset>``: an Optuna study over LoRA settings, tracked in MLflow.

The recipe, with a life cycle like a torchtune recipe's: ``Sweep(cfg)`` only reads the config;
``setup()`` checks the inputs, opens the study (and its sibling studies for baselines and
confirmations), the MLflow experiment and the parent run, and enqueues what the study is missing;
``run()`` is an ask/tell loop in which each trial goes through four named steps: *sample* (its
configuration and seed), *claim* (is it the one trial to run this slot?), *train* (its MLflow run,
``lora_lab.train.run_trial``) and *record* (tell Optuna, end the MLflow run); ``finish()`` logs the
best trial and ends the parent run. Each trial's values become Hydra overrides composed onto the
sweep's own config (``lora_lab.compose``), so ``python -m lora_lab.train <those overrides>``
reproduces it. What each phase holds is planned in ``lora_lab.plan``; how every configuration runs
exactly once is in ``lora_lab.study``; signals in ``lora_lab.interrupts``; pruning in
``lora_lab.pruning``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import FrozenTrial, TrialState
from transformers import TrainerCallback

from lora_lab import base_scores, cli, definition, faults, grid_order, names, preflight, search_space, threads, track
from lora_lab.compose import TrialComposer
from lora_lab.config import BaselineConfig, SweepConfig, TrialConfig, register_configs, to_trial_config
from lora_lab.errors import ConfigError, LoraLabError
from lora_lab.interrupts import INTERRUPTS
from lora_lab.model.base import claim_gpu
from lora_lab.plan import BaselinePhase, ConfirmPhase, Phase, SearchPhase, SeedPlan
from lora_lab.progress import SweepProgress
from lora_lab.pruning import PRUNING_SIGNAL, PruningReporter
from lora_lab.storage import check_writable, journal_path, release_space, repair_journal, reserve_space
from lora_lab.study import (
    DONE,
    Heartbeat,
    Slot,
    SlotBook,
    WarmConfig,
    WarmStart,
    make_pruner,
    make_sampler,
    open_storage,
    standing,
    storage_url,
    worker_identity,
)
from lora_lab.train import ResourceCache, TrialResult, run_trial

__all__ = [
    "Sweep",
    "SweepSummary",
    "SweepFailedError",
    "to_sweep_config",
    "storage_url",
    "open_storage",
    "make_sampler",
    "make_pruner",
    "main",
]

PARENT_WAIT_S = 120.0
"""How long a worker other than 0 waits for worker 0 to create the study's parent run."""

MAX_UNUSED_PROPOSALS = 25
"""A sampler that proposes this many configurations in a row that the study already holds has
exhausted the space (or is stuck): the worker stops searching instead of spinning."""

WATCH_S = 2.0
"""A worker with nothing left to start checks this often, while other workers' trials run, whether
one of them died (its slot is then enqueued again and taken over)."""

FAILURES_WITHOUT_SUCCESS = 3
"""Without ``sweep.max_failures``: stop once this many trials failed and none succeeded (the set-up
is broken, not the samples)."""


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


def target_configs(sweep: SweepConfig) -> int:
    """How many configurations the search should hold (each with ``sweep.seeds`` seeds): the grid's
    points, or ``n_trials`` (capped at the size of a finite search space)."""
    if sweep.sampler.name == "grid":
        size = search_space.grid_size(sweep)
        return size if sweep.n_trials is None else min(sweep.n_trials, size)
    if sweep.n_trials is None:
        raise ConfigError("sweep.n_trials", None, "a number of configurations (only a grid sweep can leave it null)")
    size = search_space.space_size(sweep)
    return sweep.n_trials if size is None else min(sweep.n_trials, size)


@dataclass
class SweepSummary:
    """What a finished (or resumed-and-finished) sweep holds."""

    study_name: str
    storage: str
    parent_run_id: str
    counts: dict[str, int]
    best: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, int] = field(default_factory=dict)
    confirmations: dict[str, int] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    """What of the plan did not complete (failed or never ran), one phrase per phase: the command
    then exits non-zero."""


@dataclass
class Attempt:
    """What one trial has got so far (its slot, values, MLflow run), for its error handling."""

    number: int
    slot: Slot | None = None
    values: dict[str, Any] = field(default_factory=dict)
    run: track.TrialRun | None = None
    started: float = field(default_factory=time.perf_counter)


class Sweep:
    """One study's run: plans its slots, samples, trains and logs trials, keeps the parent run current."""

    def __init__(
        self,
        cfg: DictConfig,
        base_overrides: list[str],
        console_progress: bool = True,
        trial_callbacks: list[TrainerCallback] | None = None,
    ):
        """Reads the config only. ``trial_callbacks`` are added to every trial's Trainer (early
        stopping, custom logging, fault injection in tests)."""
        self.cfg = cfg
        self.sweep = to_sweep_config(cfg)
        self.base_overrides = [o for o in base_overrides if not _is_sweep_override(o)]
        self.composer = TrialComposer(self.base_overrides)
        self.objectives = self.sweep.objectives
        self.storage = storage_url(self.sweep)
        self.console_progress = console_progress
        self.trial_callbacks = list(trial_callbacks or [])
        self.interrupts = INTERRUPTS
        self.trial_root = Path("sweeps") / self.sweep.study_name / "trials"
        signal_metric = PRUNING_SIGNAL.get(self.objectives[0].metric)
        self.pruning_signal = signal_metric if len(self.objectives) == 1 and self.sweep.pruner.name != "none" else None
        self.is_grid = self.sweep.sampler.name == "grid"
        self.warm: WarmStart | None = None
        """What ``sweep.warm_start`` takes from the earlier study, as preflight read it."""
        self.warm_configs: list[WarmConfig] = []
        """The warm-start configurations this search runs first (see ``_warm_start``)."""
        self.ready = False
        """Whether ``setup()`` ran."""
        self.stopped = False
        """Set when the search stops early (too many failures): no later phase starts."""
        # what check_inputs() (the first step of setup()) finds
        self.n_configs = 0
        """How many configurations the search holds once complete (see ``target_configs``)."""
        self.definition: dict[str, Any] = {}
        """This run's study definition (see lora_lab.definition)."""
        self.study_exists = False
        self.definition_stored = False
        self.config_basis = ""
        """What every configuration id of this study adds to its searched values (see lora_lab.definition)."""
        # what run() and finish() record
        self.started = 0.0
        """``time.monotonic()`` when run() began: ``sweep.timeout_s`` counts from here, across all phases."""
        self.started_wall = 0.0
        """``time.time()`` when run() began: trials started from here on are this run's."""
        self.best: list[dict[str, Any]] = []
        """The best search trials, as logged on the parent run by finish()."""
        self.all_failed = False
        """Whether every finished search trial failed (finish() then ends the parent run FAILED)."""

    # == setup ================================================================================
    def check_inputs(self) -> None:
        """Refuse bad input before anything is created: a clear ConfigError naming the field."""
        # storage, servers, device, objectives, search space, the study to warm-start from
        self.warm = preflight.check_sweep(self.cfg, self.sweep, self._baseline_configs())
        self.n_configs = target_configs(self.sweep)
        check_writable(self.storage)
        if self.storage.endswith(".journal"):  # a torn last record moved aside first: the study is read next
            note = repair_journal(journal_path(self.storage))
            if note:
                self._say(note)
        self.definition = definition.build(self.sweep, to_trial_config(self.cfg))
        self.study_exists, stored = definition.check_stored(self.sweep, self.storage, self.definition)
        self.definition_stored = stored is not None
        self.config_basis = (
            stored.get("basis", "") if stored else ("" if self.study_exists else self.definition["basis"])
        )
        if self.sweep.sampler.name == "cmaes":
            try:
                import cmaes  # noqa: F401  (Optuna's CMA-ES sampler needs it)
            except ImportError:
                raise ConfigError(
                    "sweep.sampler.name",
                    "cmaes",
                    "cmaes once the 'cmaes' package is installed "
                    "(pip install cmaes), or tpe, random, grid, nsgaii, qmc",
                ) from None

    def setup(self) -> None:
        """Open the studies, the experiment and the parent run; enqueue the missing slots."""
        self.check_inputs()
        self.client = MlflowClient()
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # links printed once, at the end
        self.raw_storage = open_storage(self.storage, self._on_stale_trial, say=self._say)
        name = self.sweep.study_name
        directions = [o.direction for o in self.objectives]
        first = optuna.create_study(
            study_name=name, storage=self.raw_storage, directions=directions, load_if_exists=True
        )
        sampler = make_sampler(self.sweep, self.sweep.worker, len(first.get_trials(deepcopy=False)))
        self.study = optuna.load_study(
            study_name=name, storage=self.raw_storage, sampler=sampler, pruner=make_pruner(self.sweep)
        )
        self.search = SearchPhase(
            self.study, SlotBook(self.study, self._has_heartbeat(), self.sweep.retry_failed), samples=not self.is_grid
        )
        if not self.definition_stored:
            self.study.set_user_attr(names.ATTR_DEFINITION, {**self.definition, "basis": self.config_basis})
            if self.study_exists:
                self._say(
                    f"study '{name}' was made before lora_lab kept a study's definition: this run's settings are "
                    "stored in it now, and later runs under this name are checked against them"
                )
        self.seeds = SeedPlan(int(self.composer.base().train.seed), self.sweep.seeds, self.sweep.confirm_seeds)
        self.baselines = BaselinePhase(*self._side_study(names.BASELINE_STUDY_SUFFIX)) if self.sweep.baselines else None
        self.confirm = (
            ConfirmPhase(*self._side_study(names.CONFIRM_STUDY_SUFFIX), self.sweep.confirm_top_k, self.seeds)
            if self.sweep.confirm_top_k and not self.is_grid
            else None
        )
        goals = [(o.metric, o.direction) for o in self.objectives]
        self.experiment_id = track.ensure_experiment(
            self.client,
            self.sweep.experiment or name,
            note=track.experiment_note(name, goals),
            view=track.sweep_views(goals, [*self.sweep.params, *self.sweep.derived]),
        )
        self.resources = ResourceCache(self.trial_root.parent / base_scores.DIRECTORY_NAME)  # beside the storage
        reserve_space(self.trial_root.parent)  # given back if the disk fills up (see lora_lab.storage)
        self.parent_run_id = self._parent_run()
        self.warm_configs = self._warm_start()
        self._plan()
        self.progress = SweepProgress(name, sum(p.size for p in self._phases()), enabled=self.console_progress)
        self.ready = True

    def _baseline_configs(self) -> list[TrialConfig]:
        """Each baseline's trial config, composed as its trials will be: a baseline that cannot run
        (``quant=nf4`` with full fine-tuning) is refused before anything is created."""
        configs = []
        for baseline in self.sweep.baselines:
            try:
                configs.append(self.composer.compose([*baseline.overrides, f"{names.SEED_KEY}=0"])[0])
            except (LoraLabError, OmegaConfBaseException, HydraException) as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise LoraLabError(
                    f"sweep.baselines: the baseline {baseline.name!r} (overrides {list(baseline.overrides)}) gives "
                    f"an invalid trial config with this sweep's settings. {detail} Change its overrides, or leave "
                    "it out with sweep.baselines=[]."
                ) from None
        return configs

    def _config_id(self, values: dict[str, Any]) -> str:
        """The id of the configuration with these searched values (or a baseline's name and overrides)."""
        return search_space.config_id(values, self.config_basis)

    def _has_heartbeat(self) -> bool:
        return isinstance(self.raw_storage, optuna.storages.RDBStorage)

    def _side_study(self, suffix: str) -> tuple[optuna.Study, SlotBook]:
        study = optuna.create_study(
            study_name=self.sweep.study_name + suffix,
            storage=self.raw_storage,
            directions=[o.direction for o in self.objectives],
            load_if_exists=True,
        )
        return study, SlotBook(study, self._has_heartbeat(), self.sweep.retry_failed)

    def _plan(self) -> None:
        """The fixed plans (baselines, grid) and a record of what the study is asked to hold;
        missing slots are enqueued (again after an interruption)."""
        if self.baselines is not None:
            self.baselines.plan(self.sweep.baselines, self.seeds, self._config_id)
        if self.is_grid:  # spread: any first trials cover every searched value (see lora_lab.grid_order)
            points = grid_order.spread_order(search_space.grid(self.sweep), self.sweep.sampler.seed)[: self.n_configs]
            self.search.plan_grid(points, self.seeds, self._config_id)
        else:  # a sampled search starts with the warm-start configurations (none without sweep.warm_start)
            self.search.plan_sampled(self.warm_configs, self.n_configs, self.seeds)
        self.study.set_user_attr(
            names.ATTR_PLAN,
            {
                "sampler": self.sweep.sampler.name,
                "configurations": self.n_configs,
                "seeds": self.seeds.search,
                "slots": self.search.size,
                "objectives": [o.metric for o in self.objectives],
                "warm_start": [c.config_id for c in self.warm_configs],
            },
        )
        for phase in self._phases():
            self._reconcile(phase)

    def _warm_start(self) -> list[WarmConfig]:
        """The configurations taken from an earlier study (``sweep.warm_start``) that this search runs
        first, best first. The choice kept in the study stands while it was made from the same study,
        storage, top_k and search space, so every worker and every restart plans the same ones,
        whatever the earlier study ran since; otherwise the one preflight just read is kept. They
        count toward ``n_trials``: those the study holds already stay, and others join while the
        study holds fewer configurations than that. One line says what was taken (also a tag of the
        parent run)."""
        if self.warm is None:
            return []
        stored = self.study.user_attrs.get(names.ATTR_WARM_START)
        if isinstance(stored, dict) and stored.get("key") == self.warm.key():
            chosen = WarmStart.from_attr(stored)
        else:
            chosen = self.warm
            self.study.set_user_attr(names.ATTR_WARM_START, chosen.to_attr())
        held = self.search.book.configs_before(sys.maxsize)
        free = self.n_configs - len(held)
        planned = []
        for config in (dataclasses.replace(c, config_id=self._config_id(c.params)) for c in chosen.configs):
            if config.config_id in held:
                planned.append(config)
            elif free > 0:
                planned.append(config)
                free -= 1
        line = chosen.line(planned, self.n_configs)
        self._say(line)
        self.client.set_tag(self.parent_run_id, names.ATTR_WARM_START, line[:5000])
        return planned

    def _phases(self) -> list[Phase]:
        return [p for p in (self.baselines, self.search, self.confirm) if p is not None]

    def _parent_run(self) -> str:
        """The study's parent run: found again on resume or by another worker, else created by
        worker 0 (the other workers wait for it, so a study never gets two parent runs)."""
        deadline = time.monotonic() + PARENT_WAIT_S
        while True:
            stored = self.study.user_attrs.get(names.ATTR_PARENT_RUN)
            if stored:
                try:
                    self.client.update_run(stored, status="RUNNING")
                    return stored
                except Exception:
                    break  # the tracking store changed since: start a new parent run there
            if self.sweep.worker == 0 or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.sweep.study_name,
            tags={
                names.TAG_KIND: names.KIND_SWEEP,
                names.TAG_STUDY: self.sweep.study_name,
                names.TAG_OPTUNA_STORAGE: cli.redact_url(self.storage),
                **track.source_tags(),
            },
        )
        run_id = run.info.run_id
        sweep_node = _redacted_storages(OmegaConf.to_container(self.cfg.sweep, resolve=True))
        params = [
            Param(f"sweep.{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in sweep_node.items()
        ]
        params.append(Param("sweep.base_overrides", " ".join(self.base_overrides)))
        self.client.log_batch(run_id, params=[Param(p.key, p.value[:6000]) for p in params])
        shown = OmegaConf.to_container(self.cfg, resolve=False)
        shown["sweep"] = sweep_node  # a database password must not reach the tracking store
        self.client.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(shown)), "sweep_config.yaml")
        space = {name: repr(dist) for name, dist in search_space.distributions(self.sweep).items()}
        self.client.log_dict(run_id, {"params": space, "derived": dict(self.sweep.derived)}, "search_space.json")
        self.study.set_user_attr(names.ATTR_PARENT_RUN, run_id)
        return run_id

    # == run ==================================================================================
    def run(self) -> SweepSummary:
        """Baselines, then the search, then (outside a grid, when asked) the confirmations; record
        the best trial on the parent run."""
        if not self.ready:
            self.setup()
        self.started = time.monotonic()
        self.started_wall = time.time()
        error: BaseException | None = None
        try:
            with self.progress:
                self._show_done()
                for phase in self._phases():
                    if phase is self.confirm and not self._plan_confirmations():
                        continue
                    self._run_phase(phase)
                    if self.stopped:
                        break
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.finish(error)
        return self._summary_or_raise()

    def _run_phase(self, phase: Phase) -> None:
        """Ask/tell until this phase has nothing left to start (trials running on other workers
        finish there)."""
        unused = 0
        while not self.stopped:
            self.interrupts.checkpoint()
            if self.sweep.timeout_s is not None and time.monotonic() - self.started > self.sweep.timeout_s:
                break
            self._reap(phase)
            self._reconcile(phase)
            if not self._wants_trial(phase):
                if not phase.book.watchable_others():
                    break
                time.sleep(WATCH_S)  # take over a trial whose worker dies before it ends
                continue
            if phase.stops_on_failures and self._too_many_failures(phase):
                self.stopped = True
                break
            verdict = self._one_trial(phase, phase.study.ask())
            unused = unused + 1 if verdict in (names.OUTCOME_DUPLICATE, names.OUTCOME_SURPLUS) else 0
            if unused >= MAX_UNUSED_PROPOSALS:
                self._say(
                    f"{phase.kind}: the sampler proposed {unused} configurations in a row that the study "
                    "already holds; stopping (is the search space exhausted?)"
                )
                break
            self._show_done()

    def _reconcile(self, phase: Phase) -> None:
        """Enqueue the slots of this phase's plan that no trial holds."""
        phase.book.enqueue_missing(phase.planned())

    def _wants_trial(self, phase: Phase) -> bool:
        if phase.book.waiting():
            return True
        return phase.samples and len(phase.book.configs_before(sys.maxsize)) < self.n_configs

    def _too_many_failures(self, phase: Phase) -> bool:
        """Whether the trials finished since this run began (by any worker) are failures only (or,
        with ``sweep.max_failures``, end in that many failures): the set-up is broken. Failures of an
        earlier run do not count, so a fixed set-up resumes."""
        done = sorted(
            (t for t in phase.book.trials() if phase.book.standing(t) == DONE and _started_since(t, self.started_wall)),
            key=lambda t: t.number,
        )
        errors = [t.state == TrialState.FAIL for t in done]
        if self.sweep.max_failures:
            recent = errors[-self.sweep.max_failures :]
            return len(recent) == self.sweep.max_failures and all(recent)
        return len(errors) >= FAILURES_WITHOUT_SUCCESS and all(errors)

    # -- one trial: sample -> claim -> train -> record ---------------------------------------
    def _one_trial(self, phase: Phase, trial: optuna.Trial) -> str:
        """Run one asked trial through its steps; returns its outcome (COMPLETE, PRUNED, or why not)."""
        state = Attempt(trial.number)
        try:
            for key, value in worker_identity().items():  # first: a dead worker's trial must be recognisable
                trial.set_user_attr(key, value)
            with Heartbeat(self.raw_storage, phase.study.study_name, trial.number):
                sampled = self._sample(phase, trial, state)
                verdict = self._claim(phase, trial, state, sampled)
                if verdict is not None:
                    trial.set_user_attr(names.TAG_OUTCOME, verdict)
                    phase.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    return verdict
                if sampled:
                    self._reconcile(phase)  # the configuration's other seeds, for any worker to take
                result, pruning = self._train(phase, trial, state)
                return self._record(phase, trial, state, result, pruning)
        except KeyboardInterrupt as exc:
            self.interrupts.pending = None  # handled here
            self._fail(phase, trial, state, names.OUTCOME_INTERRUPTED, exc)
            raise
        except Exception as exc:
            cause = faults.environment_cause(exc)
            if cause is None:
                self._fail(phase, trial, state, names.OUTCOME_ERROR, exc)
                return names.OUTCOME_ERROR
            self._fail(phase, trial, state, names.OUTCOME_ENVIRONMENT, exc)
            slot = f" ({state.slot.id})" if state.slot is not None else ""
            raise faults.EnvironmentFailure(
                f"{phase.kind} trial {trial.number}{slot} could not run: {cause} ({_first_line(exc)}). "
                "This is a failure of the environment, not a result of the configuration: the trial is "
                "not counted and its slot stays open, so the sweep stopped here. Fix the cause and run the "
                "same command again: it runs this trial and the rest of the study (see docs/faults.md)."
            ) from exc

    def _sample(self, phase: Phase, trial: optuna.Trial, state: Attempt) -> bool:
        """The trial's slot and values: the enqueued ones, or (a non-grid search) a configuration the
        sampler proposes now, run first with the first seed. Returns whether it was sampled. A trial
        of a fixed plan that was not enqueued gets no slot (the claim finds it surplus)."""
        attrs = trial.user_attrs
        if names.TAG_SLOT not in attrs and not phase.samples:
            return False  # asked when the last waiting trial was just taken by another worker: no slot
        enqueued = names.TAG_SLOT in attrs or not phase.searched
        if enqueued:
            state.slot = phase.enqueued_slot(attrs)
            if not phase.searched:
                return False  # a baseline: its own overrides, nothing searched
            if state.slot.id not in {s.id for s in phase.planned()}:
                return False  # left the plan since it was enqueued: the claim finds it surplus, nothing suggested
        sampled = search_space.suggest(trial, self.sweep)  # an enqueued trial gets its fixed values back
        if enqueued:
            state.slot = Slot(attrs[names.TAG_CONFIG_ID], int(attrs[names.TAG_SEED]), sampled)
        else:
            state.slot = Slot(self._config_id(sampled), self.seeds.search[0], sampled)
            for key, value in state.slot.user_attrs().items():
                trial.set_user_attr(key, value)
        state.values = search_space.resolve(self.sweep, sampled)  # derived values: may fail, after the slot is known
        return not enqueued

    def _claim(self, phase: Phase, trial: optuna.Trial, state: Attempt, sampled: bool) -> str | None:
        """None when this trial is the one to run its slot; else why not (duplicate, surplus)."""
        slot = state.slot
        if slot is None:
            return names.OUTCOME_SURPLUS
        if phase.book.duplicate_of(trial.number, slot.id) is not None:
            return names.OUTCOME_DUPLICATE
        if sampled:
            before = phase.book.configs_before(trial.number)
            if slot.config_id not in before and len(before) >= self.n_configs:
                return names.OUTCOME_SURPLUS
            return None
        if slot.id not in {s.id for s in phase.planned()}:
            return names.OUTCOME_SURPLUS  # the plan shrank (fewer seeds, a narrower grid) since it was enqueued
        return None

    def _train(self, phase: Phase, trial: optuna.Trial, state: Attempt) -> tuple[TrialResult, PruningReporter | None]:
        """Create the trial's MLflow run, compose its config and train it."""
        slot = state.slot
        assert slot is not None
        extra = search_space.to_overrides(state.values)
        if slot.baseline is not None:
            baseline = self._baseline(slot.baseline)
            extra = list(baseline.overrides)
        extra.append(f"{names.SEED_KEY}={slot.seed}")
        state.run = self._start_run(phase, trial, state)
        trial_cfg, composed, overrides = self.composer.compose(extra)
        trial.set_user_attr(names.ATTR_OVERRIDES, " ".join(overrides))
        state.run.log_config(
            trial_cfg,
            composed,
            params={f"{names.SWEEP_PARAM_PREFIX}{k}": v for k, v in state.values.items()},
            tags={
                names.TAG_OVERRIDES: " ".join(overrides),
                names.TAG_CONFIG_LABEL: track.config_label(trial_cfg, state.values, baseline=slot.baseline),
            },
            run_name=track.trial_run_name(
                trial.number,
                trial_cfg,
                state.values,
                baseline=slot.baseline,
                show_seed=self.sweep.seeds > 1 or phase.shows_seed,
                prefix=phase.prefix,
            ),
        )
        callbacks = [
            *state.run.callbacks(),
            self.progress.trainer_callback(),
            self.interrupts.trainer_callback(),
            *self.trial_callbacks,
        ]
        pruning = PruningReporter(trial, self.pruning_signal) if self.pruning_signal and phase.prunes else None
        if pruning:
            callbacks.append(pruning)
        self.progress.start_trial(trial.number, state.values or {"baseline": slot.baseline, "seed": slot.seed})
        with self.interrupts.allowed():
            resources = self.resources.get(trial_cfg)
            state.run.log_dataset(resources.task, trial_cfg.data)
            result = run_trial(
                trial_cfg,
                self.trial_root / f"{phase.kind}-{trial.number:04d}",
                resources,
                callbacks=callbacks,
                show_progress=False,
                on_adapter_ready=state.run.on_adapter_ready,
                pruned=(lambda: pruning.pruned_at is not None) if pruning else None,
            )
        state.run.log_result(result, log_adapter=trial_cfg.tracking.log_adapter)
        return result, pruning

    def _record(
        self, phase: Phase, trial: optuna.Trial, state: Attempt, result: TrialResult, pruning: PruningReporter | None
    ) -> str:
        """End the MLflow run and tell Optuna: COMPLETE with the objective values, or PRUNED."""
        assert state.run is not None
        if pruning is not None and pruning.pruned_at is not None:
            state.run.finish("KILLED", tags={names.TAG_OPTUNA_STATE: "PRUNED"})
            phase.study.tell(trial, state=TrialState.PRUNED)
            self.progress.end_trial(trial.number, "PRUNED", None)
            return "PRUNED"
        values = self._objective_values(result, state.run)
        state.run.finish("FINISHED", tags={names.TAG_OPTUNA_STATE: "COMPLETE"})
        phase.study.tell(trial, values)
        self.progress.end_trial(trial.number, "COMPLETE", None)
        return "COMPLETE"

    def _fail(self, phase: Phase, trial: optuna.Trial, state: Attempt, why: str, exc: BaseException) -> None:
        """A trial that raised: its cause goes to Optuna (user attrs), its MLflow run (created now if
        the error came before it, e.g. while resolving a derived value) and the console."""
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tags = {names.TAG_OPTUNA_STATE: "FAIL", names.TAG_OUTCOME: why, names.TAG_ERROR: cause}
        try:
            trial.set_user_attr(names.TAG_OUTCOME, why)
            trial.set_user_attr(names.TAG_ERROR, cause[:2000])
        except Exception:
            pass  # already finished (failed by another worker as lost): its record stands
        try:
            if state.run is None and why == names.OUTCOME_ERROR:
                state.run = self._start_run(phase, trial, state)
            if state.run is not None:
                state.run.finish(track.status_for(exc), tags=tags)
        except Exception as mlflow_error:
            self._say(f"trial {trial.number}: could not record its end in MLflow: {mlflow_error}")
        if why == names.OUTCOME_ENVIRONMENT:
            shutil.rmtree(self.trial_root / f"{phase.kind}-{trial.number:04d}", ignore_errors=True)  # no result
            if faults.disk_full(exc):
                release_space(self.trial_root.parent)  # room for the records below and the runs' ends
            if self.storage.endswith(".journal"):
                with contextlib.suppress(Exception):  # a record the full disk cut short goes aside first
                    repair_journal(journal_path(self.storage))
        with contextlib.suppress(Exception):
            phase.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        self.progress.end_trial(trial.number, "FAIL" if why == names.OUTCOME_ERROR else why.upper(), exc)
        if not self.progress.enabled and why == names.OUTCOME_ERROR:
            print(f"lora_lab: trial {trial.number} failed: {cause.splitlines()[0][:500]}", file=sys.stderr)

    def _start_run(self, phase: Phase, trial: optuna.Trial, state: Attempt) -> track.TrialRun:
        slot = state.slot
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            names.TAG_STUDY: self.sweep.study_name,
            **phase.tags(),
            names.TAG_OPTUNA_TRIAL: str(trial.number),
            names.TAG_OPTUNA_STATE: "RUNNING",
            names.TAG_WORKER: str(self.sweep.worker),
        }
        if slot is not None:
            tags.update({names.TAG_CONFIG_ID: slot.config_id, names.TAG_SLOT: slot.id, names.TAG_SEED: str(slot.seed)})
            if slot.baseline is not None:
                tags[names.TAG_BASELINE] = slot.baseline
        run = self.client.create_run(self.experiment_id, run_name=phase.run_name(trial.number, slot), tags=tags)
        trial.set_user_attr(names.ATTR_MLFLOW_RUN, run.info.run_id)
        return track.TrialRun(self.client, run.info.run_id, self.experiment_id)

    def _baseline(self, name: str) -> BaselineConfig:
        for baseline in self.sweep.baselines:
            if baseline.name == name:
                return baseline
        raise ConfigError("sweep.baselines", name, "a baseline named in sweep.baselines")

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

    # == the end: best trial, parent run, summary =========================================
    def _plan_confirmations(self) -> bool:
        """Outside a grid, once the search holds every result: the top-k configurations (mean of
        the first objective over their seeds), planned once in the confirm study."""
        assert self.confirm is not None
        plan = self.confirm.study.user_attrs.get(names.ATTR_PLAN)
        if plan is None:
            if self.search.book.running():
                return False  # trials still run on other workers; the last worker to finish confirms
            complete = [
                t
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if names.TAG_CONFIG_ID in t.user_attrs
            ]
            by_config: dict[str, list[FrozenTrial]] = {}
            for t in complete:
                by_config.setdefault(t.user_attrs[names.TAG_CONFIG_ID], []).append(t)
            sign = 1.0 if self.objectives[0].direction == "minimize" else -1.0
            ranked = sorted(
                by_config.items(), key=lambda kv: (sign * sum(t.values[0] for t in kv[1]) / len(kv[1]), kv[0])
            )
            plan = [
                {"config_id": cid, "params": dict(trials[0].params)}
                for cid, trials in ranked[: self.sweep.confirm_top_k]
            ]
            self.confirm.study.set_user_attr(names.ATTR_PLAN, plan)
        self.confirm.plan(plan, self.seeds)
        return True

    def _show_done(self) -> None:
        done = sum(1 for phase in self._phases() for t in phase.book.trials() if phase.book.standing(t) == DONE)
        self.progress.set_done(done, self._best_value())

    def _best_value(self) -> float | None:
        if len(self.objectives) > 1:
            return None
        try:
            return self.study.best_value
        except ValueError:
            return None

    def best_trials(self) -> list[FrozenTrial]:
        """The best search trial first: with one objective Optuna's best trial; with several, the
        Pareto set ordered by the first objective (then the next ones), so its first member, the
        one ``best_*`` reports, is the Pareto member best on the first objective."""
        if not self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return []
        if len(self.objectives) == 1:
            return [self.study.best_trial]
        signs = [1.0 if o.direction == "minimize" else -1.0 for o in self.objectives]
        return sorted(
            self.study.best_trials, key=lambda t: ([s * v for s, v in zip(signs, t.values, strict=True)], t.number)
        )

    def _log_best(self) -> list[dict[str, Any]]:
        """Record the best trial (and the Pareto set) on the parent run."""
        best_trials = self.best_trials()
        if not best_trials:
            return []
        best = [
            {
                "number": t.number,
                "values": t.values,
                "params": t.params,
                "run_id": t.user_attrs.get(names.ATTR_MLFLOW_RUN),
                "overrides": t.user_attrs.get(names.ATTR_OVERRIDES),
            }
            for t in best_trials
        ]
        now = int(time.time() * 1000)
        lead = best_trials[0]
        metrics = [
            Metric(f"best_{o.metric}", float(v), now, 0) for o, v in zip(self.objectives, lead.values, strict=True)
        ]
        tags = [
            RunTag("best_trial_number", str(lead.number)),
            RunTag("best_run_id", str(lead.user_attrs.get(names.ATTR_MLFLOW_RUN))),
            RunTag("best_overrides", str(lead.user_attrs.get(names.ATTR_OVERRIDES))),
        ]
        if len(self.objectives) > 1:
            tags.append(RunTag("pareto_trial_numbers", ",".join(str(t.number) for t in best_trials)))
            tags.append(RunTag("best_rule", f"Pareto member best on {self.objectives[0].metric}"))
        self.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)
        self.client.log_dict(self.parent_run_id, best, "best_trials.json")
        track.log_sweep_summary(
            self.client,
            self.experiment_id,
            self.parent_run_id,
            self.sweep.study_name,
            [(o.metric, o.direction) for o in self.objectives],
            best,
            self.counts(),
            cli.redact_url(self.storage),
        )
        return best

    def counts(self, phase: Phase | None = None) -> dict[str, int]:
        """Trials of a phase's study (the search by default) by outcome (see ``study.outcome``)."""
        out: dict[str, int] = {}
        book = (phase or self.search).book
        for t in book.trials():
            key = book.outcome(t)
            out[key] = out.get(key, 0) + 1
        return out

    def finish(self, error: BaseException | None = None) -> None:
        """Best trial on the parent run; the parent run ends FINISHED once nothing is left to run
        (trials still running on other workers keep it RUNNING), FAILED when every trial failed,
        KILLED on an interruption."""
        logging_error: Exception | None = None
        try:
            self.best = self._log_best()
        except Exception as exc:  # the parent run must still end: nothing is left RUNNING
            self.best, logging_error = [], exc
        counts = self.counts()
        self.all_failed = not counts.get("COMPLETE") and not counts.get("PRUNED") and bool(counts.get("FAIL"))
        if error is not None:
            status = track.status_for(error)
        elif logging_error is not None:
            status = "FAILED"
        elif self.all_failed:
            status = "FAILED"
        elif any(phase.book.running() for phase in self._phases()):
            return  # other workers still run trials: the last one ends the parent run
        else:
            status = "FINISHED"
        try:
            self.client.set_terminated(self.parent_run_id, status)
        except Exception as exc:
            logging_error = logging_error or exc
        if logging_error is not None and error is None:
            raise SweepFailedError(
                f"the study's trials are recorded in Optuna, but MLflow could not record the sweep's end "
                f"({_first_line(logging_error)}); its parent run {self.parent_run_id} was ended as "
                f"{status} where the tracking store allowed it. Check the tracking store "
                "(MLFLOW_TRACKING_URI) and run the same command again: it runs nothing twice and logs the end."
            ) from logging_error

    def _summary_or_raise(self) -> SweepSummary:
        counts = self.counts()
        if self.all_failed:
            first = min(
                (t for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if standing(t) == DONE),
                key=lambda t: t.number,
            )
            raise SweepFailedError(
                f"every trial of study {self.sweep.study_name!r} failed ({counts['FAIL']}); the first, trial "
                f"{first.number}, with: {first.user_attrs.get(names.TAG_ERROR, 'see its MLflow run')}"
            )
        return SweepSummary(
            self.sweep.study_name,
            self.storage,
            self.parent_run_id,
            counts,
            self.best,
            self.counts(self.baselines) if self.baselines else {},
            self.counts(self.confirm) if self.confirm else {},
            self._unfinished(),
        )

    def _unfinished(self) -> list[str]:
        """What of each phase's plan did not complete: failed trials (the configuration's own error)
        and planned slots that no trial holds (a timeout, too many failures), unless other workers
        still run trials of that phase."""
        out = []
        for phase in self._phases():
            if phase.book.live():
                continue
            failed = sum(
                1 for t in phase.book.trials() if phase.book.standing(t) == DONE and t.state == TrialState.FAIL
            )
            held = phase.book.held()
            missing = sum(1 for slot in phase.planned() if slot.id not in held)
            if phase.samples:
                missing += max(0, self.n_configs - len(phase.book.configs_before(sys.maxsize))) * self.sweep.seeds
            parts = [f"{failed} failed" if failed else "", f"{missing} not run" if missing else ""]
            if any(parts):
                out.append(f"{phase.kind}: " + " and ".join(p for p in parts if p))
        return out

    # -- workers that died ------------------------------------------------------------------------
    def _reap(self, phase: Phase) -> None:
        """Fail the RUNNING trials whose worker is gone, before each trial: by heartbeat on database
        storages (Optuna's own check, which calls ``_on_stale_trial``), and by process id for
        workers on this host (any storage). Their slots are enqueued again by the next plan check."""
        optuna.storages.fail_stale_trials(phase.study)
        for trial in phase.book.dead_trials():
            with contextlib.suppress(Exception):  # another worker may be failing it right now
                phase.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                self._end_lost_run(trial)

    def _on_stale_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._end_lost_run(trial)

    def _end_lost_run(self, trial: FrozenTrial) -> None:
        """End a dead worker's MLflow run as KILLED, tagged ``lora_lab.outcome=worker_lost``."""
        run_id = trial.user_attrs.get(names.ATTR_MLFLOW_RUN)
        if not run_id:
            return
        try:
            self.client.log_batch(
                run_id,
                tags=[
                    RunTag(names.TAG_OPTUNA_STATE, "FAIL"),
                    RunTag(names.TAG_OUTCOME, names.OUTCOME_WORKER_LOST),
                    RunTag(names.TAG_ERROR, "its worker stopped (killed, or its node was lost)"),
                ],
            )
            self.client.set_terminated(run_id, "KILLED")
        except Exception:
            pass  # the run is gone from the tracking store: nothing to end

    def _say(self, message: str) -> None:
        print(f"lora_lab: {message}", file=sys.stderr)


def _redacted_storages(sweep_node: dict) -> dict:
    """The sweep section with its storage URLs (the study's and a warm start's) redacted: the parent
    run logs it as params and YAML, and a PostgreSQL URL may carry a password."""
    node = dict(sweep_node)
    if isinstance(node.get("storage"), str):
        node["storage"] = cli.redact_url(node["storage"])
    warm = node.get("warm_start")
    if isinstance(warm, dict) and isinstance(warm.get("storage"), str):
        node["warm_start"] = {**warm, "storage": cli.redact_url(warm["storage"])}
    return node


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _started_since(trial: FrozenTrial, wall: float) -> bool:
    """Whether a trial started at or after ``wall`` (epoch seconds; Optuna's storages keep naive
    local or aware UTC datetimes, both of which ``timestamp()`` reads right)."""
    return trial.datetime_start is not None and trial.datetime_start.timestamp() >= wall - 1.0


def _is_sweep_override(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "sweep" or key.startswith(("sweep.", "sweep/", "hydra"))


def print_summary(summary: SweepSummary) -> None:
    """Where the results are and which trial won."""

    def line(counts: dict[str, int]) -> str:
        return ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))

    print(f"study {summary.study_name}: {line(summary.counts)}")
    if summary.baselines:
        print(f"baselines: {line(summary.baselines)}")
    if summary.confirmations:
        print(f"confirmations: {line(summary.confirmations)}")
    print(f"optuna storage: {cli.redact_url(summary.storage)}")
    for hint in track.browse_hints(MlflowClient(), summary.parent_run_id, cli.redact_url(summary.storage)):
        print(hint)
    print("\n".join(_decision(summary)))
    print(f"report: python -m lora_lab.report study={summary.study_name}")


def _decision(summary: SweepSummary) -> list[str]:
    """The report's decision (best configuration over its seeds, recommendation), not the luckiest trial."""
    from lora_lab.report import ReportError, decision_lines  # pandas/statsmodels: only once the sweep is done

    client = MlflowClient()
    try:
        experiment = client.get_experiment(client.get_run(summary.parent_run_id).info.experiment_id).name
        return decision_lines(summary.study_name, client, experiment)
    except ReportError as exc:
        return [f"no decision: {exc}"]


register_configs()


@hydra.main(version_base=None, config_path=cli.CONFIG_DIR, config_name="config")
@cli.reports_errors
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m lora_lab.sweep +sweep=<preset> [overrides]``."""
    cli.quiet_libraries()
    INTERRUPTS.install()  # Ctrl-C, SLURM preemption, `kill`: end the running trial cleanly
    sweep = Sweep(cfg, list(HydraConfig.get().overrides.task), console_progress=True)
    claim_gpu(sweep.sweep.worker)
    threads.apply(sweep.sweep.cpu_threads)
    try:
        sweep.setup()
        summary = sweep.run()
    except KeyboardInterrupt:
        cli.fail(
            "interrupted: the running trial was ended (KILLED in MLflow, not counted in Optuna); "
            "run the same command again to run it and the rest of the study.",
            code=130,
        )
    print_summary(summary)
    if summary.unfinished:
        cli.fail(
            f"study {summary.study_name!r} is not complete ({'; '.join(summary.unfinished)}). A configuration's "
            "own failure (NaN loss, a value the model refuses, out of memory) is kept as its result; run "
            "again with sweep.retry_failed=true to retry those, or the same command to run what was not run "
            "(see docs/faults.md).",
            code=1,
        )


if __name__ == "__main__":
    sys.argv[1:] = cli.hydra_argv(sys.argv[1:])
    cli.check_overrides(sys.argv[1:])
    main()
