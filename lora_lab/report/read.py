"""Reading one sweep back from MLflow (``MlflowClient`` only): its parent run, trial runs and baselines.

What is read is the contract in :mod:`lora_lab.track`: one parent run per sweep (``lora_lab.kind=sweep``,
params ``sweep.*``), one nested run per trial (``lora_lab.kind=trial``, tags ``optuna.state``,
``lora_lab.config_id``, ``lora_lab.overrides``, params ``lora.*`` / ``train.*`` / ``sweep.param.<name>``,
final and step metrics) and baseline runs (``lora_lab.kind=baseline``, ``lora_lab.baseline``).
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from mlflow.entities import Experiment, Run
from mlflow.tracking import MlflowClient

from lora_lab import cli, names
from lora_lab.config import ReportConfig
from lora_lab.errors import ConfigError, LoraLabError

MAXIMIZED_METRICS = {
    "eval_token_accuracy",
    "exact_match",
    "tokens_per_s",
    f"{names.RETAIN_PREFIX}exact_match",
    f"{names.RETAIN_PREFIX}token_accuracy",
}
"""Metrics where larger is better, for a ``metric=`` given without ``direction=`` nor a matching objective."""

STATES = ("COMPLETE", "PRUNED", "FAIL", "KILLED", "EXCLUDED", "RUNNING")
"""What a trial run can be in the report (see trial_state), in the order counts are given."""


STATE_WORDS = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "KILLED": "killed",
    "EXCLUDED": "excluded",
    "RUNNING": "running",
}


class ReportError(LoraLabError):
    """The report cannot be made from what the tracking store holds."""


class UnknownSweepError(ReportError):
    """No experiment (or no trial run) matches the requested study."""


class NoFinishedTrialsError(ReportError):
    """The sweep exists but none of its trials completed with the metric."""


@dataclass
class SweepInfo:
    """What the sweep's parent run(s) say about the study: objectives and search space."""

    study: str
    experiment: Experiment
    parent_run_ids: list[str] = field(default_factory=list)
    objectives: list[dict[str, str]] = field(default_factory=list)
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Declared params (name -> spec such as {'type': 'categorical', 'choices': [...]})."""
    derived: dict[str, str] = field(default_factory=dict)
    """Config fields computed from sampled values; not independent, so left out of importances."""
    sweep: dict[str, str] = field(default_factory=dict)
    """Every ``sweep.*`` param of the first parent run, as logged (sampler, seeds, base_overrides...)."""
    storage: Optional[str] = None
    """The Optuna storage the sweep logged on its parent run (``optuna.storage``, credentials redacted)."""


def tracking_uri(client: Optional[MlflowClient] = None) -> str:
    """The client's tracking URI (else MLflow's current one) with any password removed, for error messages."""
    import mlflow

    return cli.redact_url(str(getattr(client, "tracking_uri", None) or mlflow.get_tracking_uri()))


def store_words(client: Optional[MlflowClient] = None) -> str:
    """The tracking store as the report names it: a server's address, never a local file path."""
    uri = tracking_uri(client)
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        return f"the MLflow tracking server {uri}"
    if scheme in ("", "file"):
        return "a local MLflow file store"
    if scheme == "sqlite":
        return "a local MLflow sqlite store"
    return f"an MLflow {scheme.split('+')[0]} store"


def ui_base(settings_url: Optional[str], client: Optional[MlflowClient] = None) -> Optional[str]:
    """Where run links point: ``ui_url`` when set, else an http(s) tracking URI, else None (no links)."""
    if settings_url:
        return settings_url.rstrip("/")
    uri = tracking_uri(client)
    if urlsplit(uri).scheme in ("http", "https") and "***" not in uri:
        return uri.rstrip("/")
    return None


def experiment_names(client: MlflowClient) -> list[str]:
    """Names of the active experiments in the store, sorted."""
    found: list[str] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found += [e.name for e in page]
        token = page.token
        if not token:
            return sorted(found)


def existing(client: MlflowClient) -> str:
    found = experiment_names(client)
    if not found:
        return "the store holds no experiments at all"
    shown = ", ".join(repr(n) for n in found[:30])
    more = f" and {len(found) - 30} more" if len(found) > 30 else ""
    return f"experiments there: {shown}{more}"


def find_experiment(client: MlflowClient, name: str) -> Experiment:
    """The named experiment, or an error that lists the experiments that do exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise UnknownSweepError(
            f"no MLflow experiment named {name!r} at tracking URI {tracking_uri(client)} ({existing(client)}). "
            f"Pass study=<study name> (the experiment a sweep logs to) or experiment=<name>, and check "
            f"MLFLOW_TRACKING_URI points at the store the sweep used."
        )
    return experiment


def search_all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every active run of the experiment, page after page."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def parse_structured(text: Any) -> Any:
    """A param logged as JSON (or, from older writers, as a Python literal); None when neither."""
    if not isinstance(text, str):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def load_sweep_info(
    client: MlflowClient, experiment: Experiment, study: str, runs: Optional[list[Run]] = None
) -> SweepInfo:
    """Objectives, search space and derived fields from the study's parent run(s), where logged.

    Tolerant: a sweep without a parent run, or with params in an unexpected shape, gives an info with
    empty fields and the report falls back to defaults (eval_loss, minimize, every sampled param)."""
    runs = runs if runs is not None else search_all_runs(client, experiment.experiment_id)
    info = SweepInfo(study=study, experiment=experiment)
    parents = [
        r
        for r in runs
        if r.data.tags.get(names.TAG_KIND) == names.KIND_SWEEP and r.data.tags.get(names.TAG_STUDY, study) == study
    ]
    parents.sort(key=lambda r: r.info.start_time or 0)
    info.parent_run_ids = [r.info.run_id for r in parents]
    for parent in parents:
        data = {**parent.data.tags, **parent.data.params}
        if not info.sweep:
            info.sweep = {k: v for k, v in parent.data.params.items() if k.startswith("sweep.")}
        info.storage = info.storage or parent.data.tags.get(names.TAG_OPTUNA_STORAGE)
        objectives = parse_structured(data.get("sweep.objectives"))
        if isinstance(objectives, dict):
            objectives = [objectives]
        if isinstance(objectives, list) and not info.objectives:
            info.objectives = [o for o in objectives if isinstance(o, dict) and o.get("metric")]
        space = parse_structured(data.get("sweep.params"))
        if isinstance(space, dict) and not info.space:
            info.space = {str(k): v if isinstance(v, dict) else {} for k, v in space.items()}
        derived = parse_structured(data.get("sweep.derived"))
        if isinstance(derived, dict) and not info.derived:
            info.derived = {str(k): str(v) for k, v in derived.items()}
    return info


def trial_state(tags: dict[str, str], status: str) -> str:
    """COMPLETE, PRUNED, FAIL, KILLED (interrupted, or pruned by a writer without the tag), EXCLUDED
    (tagged ``lora_lab.outcome`` other than 'error': interrupted, worker lost, duplicate) or RUNNING.

    The ``optuna.state`` tag decides when it says PRUNED or FAIL; the MLflow status otherwise, and a run
    whose status is not FINISHED never counts as complete whatever its tag says."""
    # names.OUTCOME_ERROR is a result (the configuration itself failed): such a run counts as FAIL; every
    # other outcome (interrupted, worker_lost, duplicate, surplus) excludes the run.
    if tags.get(names.TAG_OUTCOME) not in (None, "", names.OUTCOME_ERROR):
        return "EXCLUDED"
    tag = tags.get(names.TAG_OPTUNA_STATE, "")
    if tag in ("PRUNED", "FAIL"):
        return tag
    if status == "FAILED":
        return "FAIL"
    if status == "KILLED":
        return "KILLED"
    if status == "FINISHED" and tag in ("COMPLETE", ""):
        return "COMPLETE"
    return "RUNNING"


def number(value: Any) -> float:
    """A param string as a float, NaN when it is not a number (booleans are not numbers here)."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if text.lower() in ("true", "false", "none", "null", ""):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _is_missing(value: Any) -> bool:
    return value is None or value in ("None", "null", "") or (isinstance(value, float) and math.isnan(value))


def load_runs(
    client: MlflowClient, experiment: Experiment, study: Optional[str] = None, runs: Optional[list[Run]] = None
) -> pd.DataFrame:
    """One row per trial or baseline run of the experiment (of ``study`` when given), in MLflow's column style.

    Trial runs are those tagged ``lora_lab.kind=trial`` (or untagged and nested under a sweep parent run);
    baseline runs those tagged ``lora_lab.kind=baseline``. Columns: run_id, run_name, kind, baseline,
    confirm, outcome, status, state (see :func:`trial_state`), trial, study, config_id, overrides, error,
    worker, start_time, then ``params.<key>``, ``metrics.<key>`` (final values) and the convenience
    columns r, lora_alpha, alpha_over_r, targets, use_rslora and seed (numbers where numeric)."""
    runs = runs if runs is not None else search_all_runs(client, experiment.experiment_id)
    parent_ids = {r.info.run_id for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SWEEP}
    rows = []
    for run in runs:
        tags = run.data.tags
        kind = tags.get(names.TAG_KIND)
        if kind is None and tags.get("mlflow.parentRunId") in parent_ids:
            kind = names.KIND_TRIAL
        if kind not in (names.KIND_TRIAL, names.KIND_BASELINE):
            continue
        if study is not None and tags.get(names.TAG_STUDY, study) != study:
            continue
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "kind": kind,
            "baseline": tags.get(names.TAG_BASELINE) if kind == names.KIND_BASELINE else None,
            "confirm": str(tags.get(names.TAG_CONFIRM, "")).lower() == "true",
            "outcome": tags.get(names.TAG_OUTCOME),
            "status": run.info.status,
            "state": trial_state(tags, run.info.status),
            "trial": number(tags.get(names.TAG_OPTUNA_TRIAL)),
            "study": tags.get(names.TAG_STUDY),
            "config_id": tags.get(names.TAG_CONFIG_ID),
            "overrides": tags.get(names.TAG_OVERRIDES),
            "error": tags.get(names.TAG_ERROR),
            "worker": tags.get(names.TAG_WORKER),
            "peak_memory_kind": tags.get("peak_memory_kind"),
            "start_time": run.info.start_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame

    def column(key: str) -> pd.Series:
        return frame[key] if key in frame else pd.Series([None] * len(frame), index=frame.index)

    frame["r"] = column("params.lora.r").map(number)
    frame["lora_alpha"] = column("params.lora.lora_alpha").map(number)
    frame["alpha_over_r"] = column(f"params.{names.SWEEP_PARAM_PREFIX}alpha_over_r").map(number)
    explicit = column("params.lora.target_modules")
    targets = column("params.lora.targets")
    frame["targets"] = [t if _is_missing(e) else e for t, e in zip(targets, explicit, strict=True)]
    frame["use_rslora"] = column("params.lora.use_rslora").map(lambda v: str(v).lower() == "true")
    seed = column(f"params.{names.SWEEP_PARAM_PREFIX}{names.SEED_KEY}").map(number)
    frame["seed"] = seed.fillna(column(f"params.{names.SEED_KEY}").map(number))
    frame.loc[frame["kind"] == names.KIND_BASELINE, ["r", "lora_alpha", "alpha_over_r"]] = math.nan
    return frame.sort_values(["trial", "start_time"], na_position="last").reset_index(drop=True)


def sampled_keys(runs: pd.DataFrame, info: Optional[SweepInfo] = None, derived: bool = True) -> list[str]:
    """The sampled names (``sweep.param.<name>`` without the prefix), seed excluded, in declaration order.

    ``derived=False`` also leaves out derived config fields (functions of the others)."""
    prefix = "params." + names.SWEEP_PARAM_PREFIX
    present = [c[len(prefix) :] for c in runs.columns if c.startswith(prefix)]
    present = [k for k in present if k != names.SEED_KEY and runs[prefix + k].notna().any()]
    declared = list(info.space) + list(info.derived) if info else []
    ordered = [k for k in declared if k in present] + sorted(k for k in present if k not in declared)
    if not derived and info:
        ordered = [k for k in ordered if k not in info.derived]
    return ordered


BASELINE_LABELS = {
    names.BASELINE_ZERO_SHOT: "baseline: zero-shot (base model untrained)",
    names.BASELINE_FULL_FT: "baseline: full fine-tuning",
}


def assign_configs(runs: pd.DataFrame, info: Optional[SweepInfo] = None) -> pd.DataFrame:
    """Add 'config' (a readable label) and 'group' (what tells configurations apart) columns.

    Seeds of one configuration share the ``lora_lab.config_id`` tag, which is the group; a run without
    the tag is grouped by its label. The label lists the sampled values except the seed and derived
    fields ('lora.r=8, alpha_over_r=2'); baselines are labelled by kind."""
    runs = runs.copy()
    keys = sampled_keys(runs[runs["kind"] == names.KIND_TRIAL], info, derived=False)
    labels, groups = [], []
    for _, row in runs.iterrows():
        if row["kind"] == names.KIND_BASELINE:
            label = BASELINE_LABELS.get(row.get("baseline"), f"baseline: {row.get('baseline')}")
            labels.append(label)
            groups.append(label)
            continue
        parts = [
            f"{k}={row[f'params.{names.SWEEP_PARAM_PREFIX}{k}']}"
            for k in keys
            if isinstance(row.get(f"params.{names.SWEEP_PARAM_PREFIX}{k}"), str)
        ]
        if parts:
            label = ", ".join(parts)
        elif isinstance(row.get("config_id"), str) and row["config_id"]:
            label = f"config {row['config_id']}"
        else:
            label = f"run {row['run_id']}"
        labels.append(label)
        config_id = row.get("config_id")
        groups.append(config_id if isinstance(config_id, str) and config_id else label)
    runs["config"] = labels
    runs["group"] = groups
    return runs


def resolve_objective(
    metric: Optional[str], direction: Optional[str], info: Optional[SweepInfo] = None
) -> tuple[str, str, str]:
    """The metric and direction of the tables, and where they came from.

    Explicit settings win; otherwise the sweep's first objective; otherwise eval_loss / minimize. A metric
    given without a direction takes the direction of the matching objective, else a per-metric default."""
    objectives = info.objectives if info else []
    if direction is not None and direction not in ("minimize", "maximize"):
        raise ConfigError("direction", direction, "'minimize' or 'maximize' (or null for the sweep's)")
    if metric is None:
        if objectives:
            first = objectives[0]
            metric, source = str(first["metric"]), "the sweep's first objective"
            if direction is None:
                direction = str(first.get("direction") or "minimize")
        else:
            metric, source = "eval_loss", "the default, as the sweep's objectives were not found in MLflow"
    else:
        source = "the report's settings"
    if direction is None:
        match = [o for o in objectives if o.get("metric") == metric and o.get("direction")]
        direction = str(match[0]["direction"]) if match else default_direction(metric)
    if direction not in ("minimize", "maximize"):
        direction = "minimize"
    return metric, direction, source


def default_direction(metric: str) -> str:
    return "maximize" if metric in MAXIMIZED_METRICS else "minimize"


def completed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The runs averaged into the tables: state COMPLETE with a finite value of the metric."""
    column = f"metrics.{metric}"
    if runs.empty or column not in runs:
        return runs.iloc[0:0]
    values = pd.to_numeric(runs[column], errors="coerce")
    return runs[(runs["state"] == "COMPLETE") & np.isfinite(values)].copy()


def learning_curves(client: MlflowClient, runs: pd.DataFrame, metric: str = "eval_loss") -> pd.DataFrame:
    """Every step of ``metric`` of each run (MlflowClient.get_metric_history), one row per (run, step).

    The final metric shares the key and is logged at the last step, so a step logged twice keeps its
    latest value."""
    rows = []
    for _, run in runs.iterrows():
        history = sorted(client.get_metric_history(run["run_id"], metric), key=lambda m: (m.step, m.timestamp))
        latest = {m.step: m.value for m in history}
        rows += [
            {
                "run_id": run["run_id"],
                "trial": run["trial"],
                "state": run["state"],
                "group": run.get("group"),
                "config": run.get("config"),
                "r": run["r"],
                "lora_alpha": run["lora_alpha"],
                "step": step,
                metric: value,
            }
            for step, value in latest.items()
        ]
    return pd.DataFrame(
        rows, columns=["run_id", "trial", "state", "group", "config", "r", "lora_alpha", "step", metric]
    )


def counts(runs: pd.DataFrame) -> dict[str, int]:
    """Runs per state, in a fixed order."""
    found = runs["state"].value_counts().to_dict() if not runs.empty else {}
    return {state: int(found[state]) for state in STATES if state in found}


def count_text(runs: pd.DataFrame) -> str:
    return ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in counts(runs).items())


def no_finished_error(client: MlflowClient, runs: pd.DataFrame, info: SweepInfo, metric: str) -> ReportError:
    """The clearest error for a sweep that has nothing to average."""
    if runs.empty:
        return UnknownSweepError(
            f"experiment {info.experiment.name!r} holds no trial runs of study {info.study!r} "
            f"(runs tagged lora_lab.kind=trial; {len(info.parent_run_ids)} sweep parent run(s) found). "
            f"Has the sweep started? Other {existing(client)}."
        )
    complete = runs[runs["state"] == "COMPLETE"]
    if len(complete):
        logged = sorted(
            {c[len("metrics.") :] for c in complete.columns if c.startswith("metrics.") and complete[c].notna().any()}
        )
        return NoFinishedTrialsError(
            f"no complete trial of study {info.study!r} logged the metric {metric!r} ({count_text(runs)}); "
            f"metrics they logged: {', '.join(logged) or 'none'}. Choose one with metric=<name>."
        )
    errors = [e for e in runs["error"].dropna() if e]
    first = f" The first error: {errors[0]}" if errors else ""
    return NoFinishedTrialsError(
        f"study {info.study!r} has no finished trial yet ({count_text(runs)}), so there is nothing to "
        f"average; pruned and failed trials are never averaged in.{first}"
    )


@dataclass
class SweepData:
    """Everything read from MLflow for one report, and the choices made about it."""

    client: MlflowClient
    settings: ReportConfig
    info: SweepInfo
    runs: pd.DataFrame
    """Every trial and baseline run of the study (any state), with 'config' and 'group' columns."""
    done: pd.DataFrame
    """The complete LoRA trial runs with the metric (both stages): the only trial runs averaged."""
    ranked: pd.DataFrame
    """The runs the ranking is made from: the confirm stage's runs when there are any, else ``done``."""
    baselines: pd.DataFrame
    """The complete baseline runs (any metric)."""
    metric: str
    direction: str
    source: str
    """Where metric and direction came from, in words."""
    ui: Optional[str] = None
    """MLflow UI address for run links, or None."""
    configs: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Filled by the report: one row per configuration, best first (stats.config_table)."""

    @property
    def confirmed(self) -> bool:
        return bool(self.done["confirm"].any())

    def choices(self, name: str) -> Optional[list[Any]]:
        """The declared choices of a searched value (for a natural column order), if known; target sets
        default to the built-in order, smallest first (qv, attn, mlp, all_linear)."""
        declared = self.info.space.get(name, {}).get("choices")
        return declared or (list(names.TARGET_SETS) if name == "lora.targets" else None)

    def run_link(self, run_id: str, text: Optional[str] = None) -> str:
        """A run id as markdown: a link into the MLflow UI when its address is known, else code."""
        label = text or run_id[:8]
        if not self.ui:
            return f"`{run_id}`"
        return f"[{label}]({self.ui}/#/experiments/{self.info.experiment.experiment_id}/runs/{run_id})"


def read_sweep(settings: ReportConfig, client: MlflowClient) -> SweepData:
    """Find the study's experiment, read its parent, trial and baseline runs, settle metric and direction."""
    study = settings.study
    experiment = find_experiment(client, settings.experiment or study)
    all_runs = search_all_runs(client, experiment.experiment_id)
    info = load_sweep_info(client, experiment, study, all_runs)
    runs = load_runs(client, experiment, study, all_runs)
    metric, direction, source = resolve_objective(settings.metric, settings.direction, info)
    trials = runs[runs["kind"] == names.KIND_TRIAL] if not runs.empty else runs
    if trials.empty:
        raise no_finished_error(client, trials, info, metric)
    runs = assign_configs(runs, info)
    trials = runs[runs["kind"] == names.KIND_TRIAL]
    done = completed(trials, metric)
    if done.empty:
        raise no_finished_error(client, trials, info, metric)
    ranked = done[done["confirm"]] if done["confirm"].any() else done
    baselines = runs[(runs["kind"] == names.KIND_BASELINE) & (runs["state"] == "COMPLETE")]
    return SweepData(
        client,
        settings,
        info,
        runs,
        done,
        ranked.copy(),
        baselines.copy(),
        metric,
        direction,
        source,
        ui_base(settings.ui_url, client),
    )
