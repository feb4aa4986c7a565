"""The Optuna side of a sweep: storage, sampler, pruner, and the book of *slots* that makes every
configuration run exactly once across workers, restarts and preemption.

A slot is one configuration with one seed, named ``<config_id>/<train.seed>`` (baselines:
``<name>/<train.seed>``) and carried by an Optuna trial as the user attr ``lora_lab.slot``. What a
study should hold is a plan of slots: a grid's points times the seeds, or, outside a grid, the
configurations a warm start took from an earlier study (planned like a grid's points), then every
configuration the sampler proposed, times the seeds. Missing slots are enqueued as WAITING trials,
which ``study.ask()`` hands to exactly one worker each (Optuna sets a trial RUNNING with a
compare-and-set). A trial that ends FAIL counts as a result only when its configuration itself
failed (``lora_lab.outcome=error``); an interrupted trial, a dead worker's trial, a duplicate or a
surplus trial leaves its slot missing, so the next check enqueues it again.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lora_lab import names, search_space
from lora_lab import storage as storage_module
from lora_lab.cli import redact_url
from lora_lab.config import SweepConfig
from lora_lab.storage import journal_path

DONE, LIVE, VOID = "done", "live", "void"
"""How a trial stands towards its slot: a result (COMPLETE, PRUNED, or FAIL by its own error),
holding it (WAITING, RUNNING), or leaving it missing (any other FAIL)."""


def standing(trial: FrozenTrial) -> str:
    """DONE, LIVE or VOID (see above)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return DONE
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return LIVE
    if trial.state == TrialState.FAIL and trial.user_attrs.get(names.TAG_OUTCOME) == names.OUTCOME_ERROR:
        return DONE
    return VOID


def outcome(trial: FrozenTrial) -> str:
    """A trial's state for counting: COMPLETE, PRUNED, FAIL (its own error), WAITING, RUNNING, or why
    it does not count (INTERRUPTED, WORKER_LOST, DUPLICATE, SURPLUS)."""
    if trial.state != TrialState.FAIL or standing(trial) == DONE:
        return trial.state.name
    return str(trial.user_attrs.get(names.TAG_OUTCOME, names.OUTCOME_WORKER_LOST)).upper()


@dataclass(frozen=True)
class Slot:
    """One configuration with one seed: the unit a sweep runs exactly once."""

    config_id: str
    seed: int
    params: dict[str, Any]
    """The Optuna params to enqueue (the sampled values; derived values follow from them)."""
    baseline: str | None = None

    @property
    def id(self) -> str:
        return f"{self.baseline or self.config_id}/{self.seed}"

    def user_attrs(self) -> dict[str, Any]:
        attrs = {names.TAG_SLOT: self.id, names.TAG_SEED: self.seed, names.TAG_CONFIG_ID: self.config_id}
        if self.baseline is not None:
            attrs[names.TAG_BASELINE] = self.baseline
        return attrs


# -- storage -----------------------------------------------------------------------------------


def storage_url(sweep: SweepConfig) -> str:
    """The study's storage: as given, or a journal file under sweeps/<study>/ (a study started in
    a sqlite file there, ``optuna.db``, stays in it).

    A journal file is the default because its storage calls per trial cost about an order of
    magnitude less than Optuna's sqlite storage's (measured in a sweep on the built-in model) and
    several local workers can share it (a file lock), with a dead worker's trial detected by its
    process id."""
    return sweep.storage or default_storage(sweep.study_name)


def default_storage(study_name: str) -> str:
    """Where lora_lab keeps a study of this name when no storage is given: sweeps/<study>/optuna.journal,
    or sweeps/<study>/optuna.db where the study was begun in sqlite."""
    folder = Path("sweeps") / study_name
    if (folder / "optuna.db").is_file():
        return f"sqlite:///{folder / 'optuna.db'}"
    return str(folder / "optuna.journal")


def warm_start_storage_url(sweep: SweepConfig) -> str:
    """The storage of the study a sweep warm-starts from (``sweep.warm_start``): as given, or where
    lora_lab keeps a study of that name."""
    assert sweep.warm_start.study is not None
    return sweep.warm_start.storage or default_storage(sweep.warm_start.study)


def heartbeat_interval_s() -> int:
    """How often a running trial tells a database storage it is alive ($LORA_LAB_HEARTBEAT_S,
    default 10); after three missed beats (the grace period) another worker fails the trial and
    its slot is enqueued again."""
    return int(os.environ.get("LORA_LAB_HEARTBEAT_S", "10"))


def open_storage(url: str, on_stale_trial: Callable | None = None, say: Callable[[str], None] | None = None):
    """An Optuna storage: a journal file (path ending in .journal; a torn last record is moved aside
    first, see ``lora_lab.storage``) or any RDB URL. Database storages get a heartbeat, so the trial
    of a killed worker on any host is failed (and ``on_stale_trial`` called) instead of being left
    RUNNING."""
    return storage_module.open_storage(url, on_stale_trial, say)


def open_for_reading(url: str) -> optuna.storages.BaseStorage | None:
    """A storage to read studies from that creates nothing (``open_storage`` would create an empty
    journal or sqlite file, and Optuna's tables in a database): None when its file does not exist."""
    if url.endswith(".journal"):
        path = Path(journal_path(url))
        if not path.is_file():
            return None
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").expanduser().is_file():
        return None
    return optuna.storages.RDBStorage(url, skip_table_creation=True)


# -- sampler and pruner --------------------------------------------------------------------------


def sampler_seed(base: int, worker: int, n_existing: int) -> int:
    """A sampler seed of its own for every worker, and for every restart: ``base + worker`` on a
    fresh study (so a one-worker sweep is reproducible from ``sweep.sampler.seed``), a seed mixed
    from (base, worker, trials already in the study) on a resumed one, which would otherwise replay
    the proposals it made before the restart."""
    if n_existing == 0:
        return base + worker
    return int(np.random.SeedSequence([base, worker, n_existing]).generate_state(1)[0])


def make_sampler(sweep: SweepConfig, worker: int = 0, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the preset names. For ``grid`` every trial is enqueued with its point
    (see ``Slot``), so the sampler never proposes anything; QMC shares one seed across workers,
    since its low-discrepancy sequence is indexed through the study itself."""
    name, base = sweep.sampler.name, sweep.sampler.seed
    seed = sampler_seed(base, worker, n_existing)
    if name in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=sweep.sampler.n_startup_trials, warn_independent_sampling=False
        )
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(population_size=sweep.sampler.population_size, seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=base, scramble=True, warn_independent_sampling=False)
    # constant_liar: a running trial counts as a bad result, so parallel workers spread out
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=sweep.sampler.n_startup_trials, multivariate=True, constant_liar=True
    )


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner the preset names (pruning needs a single objective). Evaluations are
    reported at their optimizer step, so step counts (n_warmup_steps, min_resource) are steps."""
    p = sweep.pruner
    if p.name == "none" or len(sweep.objectives) > 1:
        return optuna.pruners.NopPruner()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)


# -- which process holds a trial -----------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), or None when it is gone (or a
    zombie) or the system has no /proc: with the pid it tells a live worker from a pid reused by
    another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def worker_identity() -> dict[str, Any]:
    """Trial user attrs naming this process, so another worker can tell when it is gone."""
    return {
        names.ATTR_WORKER_HOST: socket.gethostname(),
        names.ATTR_WORKER_PID: os.getpid(),
        names.ATTR_WORKER_START: process_start(os.getpid()),
    }


def worker_gone(trial: FrozenTrial) -> bool:
    """Whether the process that ran this RUNNING trial is gone (known only for this host)."""
    host, pid = trial.user_attrs.get(names.ATTR_WORKER_HOST), trial.user_attrs.get(names.ATTR_WORKER_PID)
    if host != socket.gethostname() or not pid:
        return False
    if int(pid) == os.getpid():
        return False
    if not Path("/proc").is_dir():
        return not _pid_alive(int(pid))
    started = process_start(int(pid))
    recorded = trial.user_attrs.get(names.ATTR_WORKER_START)
    return started is None or (recorded is not None and started != recorded)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """While a trial runs, beat for it in a database storage (Optuna's ask-and-tell interface does
    not): another worker fails the trial once the beats stop. A no-op on a journal file, where
    the worker's host and process id stand in for it."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, number: int):
        self.storage, self.study_name, self.number = storage, study_name, number
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        storage = self.storage
        if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(self.study_name), self.number
            )
            storage.record_heartbeat(trial_id)
            interval = storage.get_heartbeat_interval()

            def beat() -> None:
                while not self.stop.wait(interval):
                    try:
                        storage.record_heartbeat(trial_id)
                    except Exception:
                        pass  # a missed beat; the next one retries

            self.thread = threading.Thread(target=beat, name="lora_lab-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


# -- the book of slots ------------------------------------------------------------------------


class SlotBook:
    """One Optuna study seen as slots: which are done, held or missing, and who may run which."""

    def __init__(self, study: optuna.Study, heartbeat: bool = False, retry_failed: bool = False):
        self.study = study
        self.heartbeat = heartbeat
        """Whether the storage fails a trial whose worker stopped beating (database storages)."""
        self.retry_below: int | None = len(study.get_trials(deepcopy=False)) if retry_failed else None
        """With ``sweep.retry_failed``: the configurations' own failures among the trials older than
        this (those of earlier runs) leave their slots open, so they run once more."""

    def standing(self, trial: FrozenTrial) -> str:
        """DONE, LIVE or VOID (see ``standing``), an earlier failure being VOID under ``sweep.retry_failed``."""
        stand = standing(trial)
        if (
            stand == DONE
            and trial.state == TrialState.FAIL
            and self.retry_below is not None
            and trial.number < self.retry_below
        ):
            return VOID
        return stand

    def outcome(self, trial: FrozenTrial) -> str:
        """``outcome``, with an earlier failure run again under ``sweep.retry_failed`` as RETRIED."""
        if standing(trial) == DONE and self.standing(trial) == VOID:
            return names.OUTCOME_RETRIED.upper()
        return outcome(trial)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def held(self) -> set[str]:
        """Slots with a result or a trial waiting or running for them."""
        return {
            t.user_attrs[names.TAG_SLOT]
            for t in self.trials()
            if names.TAG_SLOT in t.user_attrs and self.standing(t) in (DONE, LIVE)
        }

    def enqueue_missing(self, planned: list[Slot]) -> list[Slot]:
        """Enqueue the planned slots that no trial holds; returns them."""
        held = self.held()
        missing = [slot for slot in planned if slot.id not in held]
        for slot in missing:
            self.study.enqueue_trial(slot.params, user_attrs=slot.user_attrs())
        return missing

    def waiting(self) -> bool:
        return any(t.state == TrialState.WAITING for t in self.trials())

    def live(self) -> bool:
        return any(standing(t) == LIVE for t in self.trials())

    def running(self) -> bool:
        return any(t.state == TrialState.RUNNING for t in self.trials())

    def duplicate_of(self, number: int, slot_id: str) -> FrozenTrial | None:
        """Another trial that holds the slot before this one: one with a result, or one waiting or
        running with a smaller number (of two trials racing for a slot the older one runs; both
        see each other, so exactly one of them goes on)."""
        for t in self.trials():
            if t.number == number or t.user_attrs.get(names.TAG_SLOT) != slot_id:
                continue
            stand = self.standing(t)
            if stand == DONE or (stand == LIVE and t.number < number):
                return t
        return None

    def configs_before(self, number: int) -> set[str]:
        """Configurations the study holds through trials older than ``number`` (a configuration
        still being sampled by a running trial counts as one): who is within ``n_trials``."""
        configs: set[str] = set()
        for t in self.trials():
            if t.number >= number:
                continue
            why = t.user_attrs.get(names.TAG_OUTCOME)
            if why in (names.OUTCOME_DUPLICATE, names.OUTCOME_SURPLUS):
                continue
            if names.TAG_CONFIG_ID in t.user_attrs:
                configs.add(t.user_attrs[names.TAG_CONFIG_ID])
            elif t.state == TrialState.RUNNING:
                configs.add(f"sampling:{t.number}")
        return configs

    def sampled_configs(self) -> dict[str, dict[str, Any]]:
        """config_id -> params of every configuration the sampler proposed and the study kept (its
        trials may have been interrupted: the configuration stays planned)."""
        out: dict[str, dict[str, Any]] = {}
        for t in sorted(self.trials(), key=lambda t: t.number):
            cid = t.user_attrs.get(names.TAG_CONFIG_ID)
            if cid is None or cid in out or not t.params:  # a WAITING trial has no params yet
                continue
            if t.user_attrs.get(names.TAG_OUTCOME) in (names.OUTCOME_DUPLICATE, names.OUTCOME_SURPLUS):
                continue
            out[cid] = dict(t.params)
        return out

    def changed_choices(self, distributions: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(name, choices the study began with, choices now) of every categorical parameter whose
        choices changed since the study began: Optuna refuses another value space for a parameter
        within one study."""
        seen: dict[str, Any] = {}
        for t in self.trials():
            for name, dist in t.distributions.items():
                seen.setdefault(name, dist)
        out = []
        for name, dist in distributions.items():
            old = seen.get(name)
            if isinstance(old, CategoricalDistribution) and isinstance(dist, CategoricalDistribution):
                if tuple(old.choices) != tuple(dist.choices):
                    out.append((name, list(old.choices), list(dist.choices)))
        return out

    def watchable_others(self) -> bool:
        """Whether other processes run trials whose death this worker would notice: on this host
        (by process id), or anywhere when the storage has a heartbeat. A trial on another host in a
        journal file is not waited for, since nothing here could tell that its worker died."""
        me = os.getpid()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (
                t.user_attrs.get(names.ATTR_WORKER_PID) == me
                and t.user_attrs.get(names.ATTR_WORKER_HOST) == socket.gethostname()
            ):
                continue
            if self.heartbeat or t.user_attrs.get(names.ATTR_WORKER_HOST) == socket.gethostname():
                return True
        return False

    def dead_trials(self) -> list[FrozenTrial]:
        """RUNNING trials whose worker process is gone (this host only; database storages also fail
        other hosts' trials by heartbeat)."""
        return [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if worker_gone(t)]


# -- warm start: the best configurations of an earlier study ---------------------------------------


@dataclass(frozen=True)
class WarmConfig:
    """One configuration taken from an earlier study to run first."""

    config_id: str
    """Its id in this sweep (the hash of ``params``), so its seeds are slots like any configuration's."""
    params: dict[str, Any]
    """Its values in this search space's own terms (the space's choice objects, ints, floats)."""
    value: float
    """The mean of the earlier study's first objective over its COMPLETE trials."""
    trials: list[int]
    """The numbers of those trials in the earlier study."""


@dataclass
class WarmStart:
    """What a sweep takes from an earlier study (``sweep.warm_start``), as read from it and as kept in
    the sweep's study (user attr ``lora_lab.warm_start``)."""

    study: str
    storage: str
    """The earlier study's storage as shown (a password replaced by ``***``)."""
    top_k: int
    space: dict[str, str]
    """This sweep's search space (each distribution's repr) when the configurations were chosen."""
    metric: str
    """Name of the earlier study's first objective, the one its configurations are ranked by."""
    direction: str
    configs: list[WarmConfig]
    """The best ``top_k`` configurations that fit this space, best first."""
    skipped: list[str]
    """Why each better-ranked configuration that does not fit this space was left out."""

    def key(self) -> dict[str, Any]:
        """What the choice depends on besides the earlier study's trials: a study keeps its choice
        while this stays the same, whatever that study ran since."""
        # redacted: the choice is kept in the study's user attrs, and a PostgreSQL URL may carry a password
        return {"study": self.study, "storage": redact_url(self.storage), "top_k": self.top_k, "space": self.space}

    def to_attr(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "configs"}
        out["storage"] = redact_url(self.storage)
        out["configs"] = [dict(c.__dict__) for c in self.configs]
        out["key"] = self.key()
        return out

    @classmethod
    def from_attr(cls, attr: dict[str, Any]) -> WarmStart:
        fields = {k: v for k, v in attr.items() if k not in ("configs", "key")}
        return cls(**fields, configs=[WarmConfig(**c) for c in attr["configs"]])

    def line(self, planned: list[WarmConfig], n_configs: int) -> str:
        """The one line the sweep prints about it (and keeps on its MLflow parent run)."""
        source = f"study '{self.study}'"
        if planned:
            values = ", ".join(f"{c.value:.4g}" for c in planned)
            plural = "s" if len(planned) != 1 else ""
            text = (
                f"warm start: {len(planned)} configuration{plural} from {source} ({self.metric} {values}, best first)"
            )
        else:
            text = f"warm start: no configuration from {source}"
        if len(planned) < len(self.configs):
            text += (
                f"; {len(self.configs) - len(planned)} more left out: the study holds sweep.n_trials={n_configs} "
                "configurations in all"
            )
        if self.skipped:
            shown = "; ".join(self.skipped[:3]) + ("; ..." if len(self.skipped) > 3 else "")
            text += f"; {len(self.skipped)} skipped: outside this space ({shown})"
        return text


def describe(dist: BaseDistribution) -> str:
    """A distribution as a user reads it: 'the choices [1, 2, 4]', '[0.0001, 0.03] (log)', '[2, 10] step 2'."""
    if isinstance(dist, CategoricalDistribution):
        return f"the choices {list(dist.choices)}"
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    text = f"[{dist.low}, {dist.high}]"
    if dist.step not in (None, 1) or (isinstance(dist, FloatDistribution) and dist.step is not None):
        text += f" step {dist.step}"
    return text + (" (log)" if dist.log else "")


_OUTSIDE = object()


def _same_choice(value: Any, choice: Any) -> bool:
    if isinstance(value, bool) or isinstance(choice, bool):  # True == 1 in Python, not in a search space
        return isinstance(value, bool) and isinstance(choice, bool) and value == choice
    return type(value) is type(choice) or (isinstance(value, (int, float)) and isinstance(choice, (int, float)))


def _in_distribution(value: Any, dist: BaseDistribution) -> Any:
    """The value as the distribution gives it back (the choice object itself, an int, a float), or
    _OUTSIDE: a categorical value among the choices, a number within [low, high] on the step grid."""
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if _same_choice(value, choice) and value == choice:
                return choice
        return _OUTSIDE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return _OUTSIDE
    if not dist.low <= value <= dist.high:
        return _OUTSIDE
    if isinstance(dist, IntDistribution):
        if float(value) != int(value) or (int(value) - dist.low) % dist.step:
            return _OUTSIDE
        return int(value)
    if dist.step is not None:
        steps = (value - dist.low) / dist.step
        if not math.isclose(steps, round(steps), abs_tol=1e-8):
            return _OUTSIDE
    return float(value)


def fit_params(params: dict[str, Any], distributions: dict[str, BaseDistribution]) -> tuple[dict[str, Any] | None, str]:
    """An earlier study's configuration as values of this search space, or (None, why it does not
    fit): it must name the same params, each value inside this space's distribution."""
    missing = [n for n in distributions if n not in params]
    extra = [n for n in params if n not in distributions]
    if missing or extra:
        parts = [
            f"no value for {', '.join(missing)}" if missing else "",
            f"{', '.join(extra)} not searched here" if extra else "",
        ]
        return None, "; ".join(p for p in parts if p)
    fitted: dict[str, Any] = {}
    for name, dist in distributions.items():
        value = _in_distribution(params[name], dist)
        if value is _OUTSIDE:
            return None, f"{name}={params[name]!r} not in {describe(dist)}"
        fitted[name] = value
    return fitted, ""


def rank_configurations(study: optuna.Study) -> list[tuple[dict[str, Any], float, list[int]]]:
    """The study's configurations with a COMPLETE trial, best first: (params, mean of the first
    objective over their COMPLETE trials, those trials' numbers). Seeds of one configuration share
    its params; their mean, not the luckiest seed, ranks it (as the confirm stage does); ties go to
    the configuration that ran first."""
    by_config: dict[str, list[FrozenTrial]] = {}
    for trial in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        by_config.setdefault(search_space.config_id(trial.params), []).append(trial)
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    ranked = [
        (dict(trials[0].params), sum(t.values[0] for t in trials) / len(trials), [t.number for t in trials])
        for trials in by_config.values()
    ]
    return sorted(ranked, key=lambda r: (sign * r[1], r[2][0]))


def select_warm_start(
    ranked: list[tuple[dict[str, Any], float, list[int]]], distributions: dict[str, BaseDistribution], top_k: int
) -> tuple[list[WarmConfig], list[str]]:
    """The best ``top_k`` ranked configurations that fit the search space, and why each better-ranked
    one that does not fit was skipped (all of them when too few fit)."""
    taken: list[WarmConfig] = []
    skipped: list[str] = []
    for params, value, trials in ranked:
        if len(taken) == top_k:
            break
        fitted, why = fit_params(params, distributions)
        if fitted is None:
            skipped.append(why)
            continue
        cid = search_space.config_id(fitted)
        if cid not in {c.config_id for c in taken}:
            taken.append(WarmConfig(cid, fitted, value, trials))
    return taken, skipped


def objective_name(study: optuna.Study) -> str:
    """The name of a study's first objective: from the plan a lora_lab sweep keeps in it, else
    Optuna's metric names, else 'objective'."""
    plan = study.user_attrs.get(names.ATTR_PLAN) or {}
    objectives = plan.get("objectives") if isinstance(plan, dict) else None
    if objectives:
        return str(objectives[0])
    return (study.metric_names or ["objective"])[0]
