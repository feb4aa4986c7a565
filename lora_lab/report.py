"""``python -m lora_lab.report study=<name>``: one sweep's results, read back from MLflow, as a report.

The report is built from the MLflow tracking store alone (``MLFLOW_TRACKING_URI`` or MLflow's default),
never from the Optuna storage or local trial folders, so the runs of every worker and machine that logged
into the same store end up in one report. What is read is the contract in :mod:`lora_lab.track`: one
parent run per sweep (``lora_lab.kind=sweep``, params ``sweep.*``) and one nested run per trial
(``lora_lab.kind=trial``, tags ``optuna.state`` / ``lora_lab.config_id`` / ``lora_lab.overrides``,
params ``lora.*`` / ``train.*`` / ``sweep.param.<name>``, final and step metrics).

It writes ``<output_dir>/<study>/``: ``report.md``, ``report.html`` (the same content, plots embedded as
relative ``<img>``), one CSV per table and one PNG per plot. Everything is written into a temporary
folder beside the target and renamed over it at the end, so an interrupted run never leaves a report that
looks complete.

Statistics: the runs of one configuration (every ``sweep.param.*`` but the seed) are its seeds; tables give
mean, sample standard deviation (ddof=1, blank for a single seed) and n. Only COMPLETE trials that logged
the metric are averaged; pruned, failed, killed and still-running trials are counted and listed apart.

Only pandas, matplotlib, MLflow and Optuna are needed here: no model code, so a report is quick to make
on a machine without a GPU.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import hydra
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from mlflow.entities import Experiment, Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lora_lab import cli
from lora_lab.config import LLAMA_TARGET_SETS, ReportConfig, register_configs
from lora_lab.errors import ConfigError, LoraLabError

SEED_KEY = "train.seed"
"""The sampled value that tells the seeds of one configuration apart (``search_space.SEED_PARAM``)."""

SWEEP_PARAM = "sweep.param."
"""Prefix of the params holding a trial's sampled (and derived) values."""

MAXIMIZED_METRICS = {"eval_token_accuracy", "exact_match", "tokens_per_s"}
"""Metrics where larger is better, for a ``metric=`` given without ``direction=`` nor a matching objective."""

COST_AXES = (("trainable_params", "minimize", "trainable parameters"),
             ("peak_memory_mb", "minimize", "peak memory (MiB)"),
             ("tokens_per_s", "maximize", "tokens per second"))
"""Costs the quality is traded against in the Pareto section: metric, its better direction, axis label."""

MIN_IMPORTANCE_TRIALS = 4
"""Fewer complete trials than this give importances that mean nothing; the report says so instead."""

MAX_AXIS_VALUES = 8
"""A numeric table axis with more distinct values (a float search) is binned to the nearest power of 2."""

STATES = ("COMPLETE", "PRUNED", "FAIL", "KILLED", "RUNNING")
"""What a trial run can be in the report (see trial_state), in the order counts are given."""


class ReportError(LoraLabError):
    """The report cannot be made from what the tracking store holds."""


class UnknownSweepError(ReportError):
    """No experiment (or no trial run) matches the requested study."""


class NoFinishedTrialsError(ReportError):
    """The sweep exists but none of its trials completed with the metric."""


# -- reading MLflow ------------------------------------------------------------------------------

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


def tracking_uri(client: Optional[MlflowClient] = None) -> str:
    """The client's tracking URI (else MLflow's current one) with any password removed, for printing."""
    import mlflow

    uri = str(getattr(client, "tracking_uri", None) or mlflow.get_tracking_uri())
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def experiment_names(client: MlflowClient) -> list[str]:
    """Names of the active experiments in the store, sorted."""
    names: list[str] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        names += [e.name for e in page]
        token = page.token
        if not token:
            return sorted(names)


def _existing(client: MlflowClient) -> str:
    names = experiment_names(client)
    if not names:
        return "the store holds no experiments at all"
    shown = ", ".join(repr(n) for n in names[:30])
    more = f" and {len(names) - 30} more" if len(names) > 30 else ""
    return f"experiments there: {shown}{more}"


def find_experiment(client: MlflowClient, name: str) -> Experiment:
    """The named experiment, or an error that lists the experiments that do exist."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise UnknownSweepError(
            f"no MLflow experiment named {name!r} at tracking URI {tracking_uri(client)} ({_existing(client)}). "
            f"Pass study=<study name> (the experiment a sweep logs to) or experiment=<name>, and check "
            f"MLFLOW_TRACKING_URI points at the store the sweep used.")
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


def _parse_structured(text: Any) -> Any:
    """A param logged as JSON (or, from older writers, as a Python literal); None when neither."""
    if not isinstance(text, str):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
    return None


def load_sweep_info(client: MlflowClient, experiment: Experiment, study: str,
                    runs: Optional[list[Run]] = None) -> SweepInfo:
    """Objectives, search space and derived fields from the study's parent run(s), where logged.

    Tolerant: a sweep without a parent run, or with params in an unexpected shape, gives an info with
    empty fields and the report falls back to defaults (eval_loss, minimize, every sampled param)."""
    runs = runs if runs is not None else search_all_runs(client, experiment.experiment_id)
    info = SweepInfo(study=study, experiment=experiment)
    parents = [r for r in runs if r.data.tags.get("lora_lab.kind") == "sweep"
               and r.data.tags.get("lora_lab.study", study) == study]
    parents.sort(key=lambda r: r.info.start_time or 0)
    info.parent_run_ids = [r.info.run_id for r in parents]
    for parent in parents:
        data = {**parent.data.tags, **parent.data.params}
        objectives = _parse_structured(data.get("sweep.objectives"))
        if isinstance(objectives, dict):
            objectives = [objectives]
        if isinstance(objectives, list) and not info.objectives:
            info.objectives = [o for o in objectives if isinstance(o, dict) and o.get("metric")]
        space = _parse_structured(data.get("sweep.params"))
        if isinstance(space, dict) and not info.space:
            info.space = {str(k): v if isinstance(v, dict) else {} for k, v in space.items()}
        derived = _parse_structured(data.get("sweep.derived"))
        if isinstance(derived, dict) and not info.derived:
            info.derived = {str(k): str(v) for k, v in derived.items()}
    return info


def trial_state(tags: dict[str, str], status: str) -> str:
    """COMPLETE, PRUNED, FAIL, KILLED (interrupted, or pruned by a writer without the tag) or RUNNING.

    The ``optuna.state`` tag decides when it says PRUNED or FAIL; the MLflow status otherwise, and a run
    whose status is FAILED or KILLED never counts as complete whatever its tag says."""
    tag = tags.get("optuna.state", "")
    if tag in ("PRUNED", "FAIL"):
        return tag
    if status == "FAILED":
        return "FAIL"
    if status == "KILLED":
        return "KILLED"
    if status == "FINISHED" and tag in ("COMPLETE", ""):
        return "COMPLETE"
    return "RUNNING"


def _number(value: Any) -> float:
    """A param string as a float, NaN when it is not a number (booleans are not numbers here)."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if text.lower() in ("true", "false", "none", "null", ""):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def load_runs(client: MlflowClient, experiment: Experiment, study: Optional[str] = None,
              runs: Optional[list[Run]] = None) -> pd.DataFrame:
    """One row per trial run of the experiment (of ``study`` when given), in MLflow's column style.

    Trial runs are those tagged ``lora_lab.kind=trial`` (or nested under a sweep parent run). Columns:
    run_id, run_name, status, state (see :func:`trial_state`), trial, study, config_id, overrides, error,
    worker, start_time, then ``params.<key>``, ``metrics.<key>`` (final values) and the convenience
    columns r, lora_alpha, alpha_over_r, targets and seed (numbers where numeric)."""
    runs = runs if runs is not None else search_all_runs(client, experiment.experiment_id)
    parent_ids = {r.info.run_id for r in runs if r.data.tags.get("lora_lab.kind") == "sweep"}
    rows = []
    for run in runs:
        tags = run.data.tags
        kind = tags.get("lora_lab.kind")
        if kind != "trial" and not (kind is None and tags.get("mlflow.parentRunId") in parent_ids):
            continue
        if study is not None and tags.get("lora_lab.study", study) != study:
            continue
        trial = _number(tags.get("optuna.trial_number"))
        row: dict[str, Any] = {
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "state": trial_state(tags, run.info.status), "trial": trial,
            "study": tags.get("lora_lab.study"), "config_id": tags.get("lora_lab.config_id"),
            "overrides": tags.get("lora_lab.overrides"), "error": tags.get("lora_lab.error"),
            "worker": tags.get("lora_lab.worker"), "peak_memory_kind": tags.get("peak_memory_kind"),
            "start_time": run.info.start_time}
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame

    def column(key: str) -> pd.Series:
        return frame[key] if key in frame else pd.Series([None] * len(frame), index=frame.index)

    frame["r"] = column("params.lora.r").map(_number)
    frame["lora_alpha"] = column("params.lora.lora_alpha").map(_number)
    frame["alpha_over_r"] = column(f"params.{SWEEP_PARAM}alpha_over_r").map(_number)
    explicit = column("params.lora.target_modules")
    targets = column("params.lora.targets")
    frame["targets"] = [t if e in (None, "None", "null") or (isinstance(e, float) and math.isnan(e)) else e
                        for t, e in zip(targets, explicit)]
    seed = column(f"params.{SWEEP_PARAM}{SEED_KEY}").map(_number)
    frame["seed"] = seed.fillna(column(f"params.{SEED_KEY}").map(_number))
    return frame.sort_values(["trial", "start_time"], na_position="last").reset_index(drop=True)


def sampled_keys(runs: pd.DataFrame, info: Optional[SweepInfo] = None, derived: bool = True) -> list[str]:
    """The sampled names (``sweep.param.<name>`` without the prefix), seed excluded, in declaration order.

    ``derived=False`` also leaves out derived config fields (functions of the others)."""
    present = [c[len("params." + SWEEP_PARAM):] for c in runs.columns if c.startswith("params." + SWEEP_PARAM)]
    present = [k for k in present if k != SEED_KEY]
    declared = list(info.space) + list(info.derived) if info else []
    ordered = [k for k in declared if k in present] + sorted(k for k in present if k not in declared)
    if not derived and info:
        ordered = [k for k in ordered if k not in info.derived]
    return ordered


def assign_configs(runs: pd.DataFrame, info: Optional[SweepInfo] = None) -> pd.DataFrame:
    """Add a 'config' column: the label shared by the seeds of one configuration.

    The label lists the sampled values except the seed and derived fields ('alpha_over_r=2, lora.r=8');
    a run that logged no sampled values falls back to its ``lora_lab.config_id`` tag, then to its run id."""
    runs = runs.copy()
    keys = sampled_keys(runs, info, derived=False)
    labels = []
    for _, row in runs.iterrows():
        parts = [f"{k}={row[f'params.{SWEEP_PARAM}{k}']}" for k in keys
                 if isinstance(row.get(f"params.{SWEEP_PARAM}{k}"), str)]
        if parts:
            labels.append(", ".join(parts))
        elif isinstance(row.get("config_id"), str) and row["config_id"]:
            labels.append(f"config {row['config_id']}")
        else:
            labels.append(f"run {row['run_id']}")
    runs["config"] = labels
    return runs


# -- objective -----------------------------------------------------------------------------------

def resolve_objective(metric: Optional[str], direction: Optional[str],
                      info: Optional[SweepInfo] = None) -> tuple[str, str, str]:
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
        direction = str(match[0]["direction"]) if match else (
            "maximize" if metric in MAXIMIZED_METRICS else "minimize")
    if direction not in ("minimize", "maximize"):
        direction = "minimize"
    return metric, direction, source


def completed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The runs averaged into the tables: state COMPLETE with a finite value of the metric."""
    column = f"metrics.{metric}"
    if runs.empty or column not in runs:
        return runs.iloc[0:0]
    values = pd.to_numeric(runs[column], errors="coerce")
    return runs[(runs["state"] == "COMPLETE") & np.isfinite(values)].copy()


def _better(direction: str) -> bool:
    """True when smaller is better (sort ascending)."""
    return direction == "minimize"


# -- tables --------------------------------------------------------------------------------------

def summarize(values: pd.Series) -> dict[str, float]:
    """Mean, sample standard deviation (NaN for one value) and count."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    return {"mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "n": int(len(values))}


def config_table(done: pd.DataFrame, metric: str, direction: str,
                 info: Optional[SweepInfo] = None) -> pd.DataFrame:
    """One row per configuration, best first: its sampled values, mean/std/n of the metric over its
    seeds, the best seed's run, and mean cost metrics (trainable params, memory, speed, effective rank)."""
    keys = sampled_keys(done, info)
    rows = []
    for config, group in done.groupby("config", sort=False):
        values = pd.to_numeric(group[f"metrics.{metric}"], errors="coerce")
        best_idx = values.idxmin() if _better(direction) else values.idxmax()
        row: dict[str, Any] = {"config": config}
        for key in keys:
            row[key] = group[f"params.{SWEEP_PARAM}{key}"].iloc[0]
        row.update({"r": group["r"].iloc[0], "lora_alpha": group["lora_alpha"].iloc[0],
                    "targets": group["targets"].iloc[0]})
        row.update(summarize(values))
        row["seeds"] = ",".join(f"{s:g}" for s in sorted(group["seed"].dropna().unique()))
        for extra in ("trainable_params", "peak_memory_mb", "tokens_per_s", "effective_rank_mean"):
            column = f"metrics.{extra}"
            if column in group and group[column].notna().any():
                row[extra] = float(pd.to_numeric(group[column], errors="coerce").mean())
        row["best_run_id"] = group.loc[best_idx, "run_id"]
        row["best_trial"] = group.loc[best_idx, "trial"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # best mean first; among equal means the one measured on more seeds
    table = table.sort_values(["mean", "n"], ascending=[_better(direction), False], kind="stable")
    return table.reset_index(drop=True)


def _binned(values: pd.Series) -> tuple[pd.Series, bool]:
    """Values of a numeric axis with many distinct values (a float search), rounded to the nearest power
    of 2 so the table stays readable; categorical axes are returned as they are."""
    numeric = pd.to_numeric(values, errors="coerce")
    if values.nunique() <= MAX_AXIS_VALUES or numeric.isna().any() or (numeric <= 0).any():
        return values, False
    return numeric.map(lambda v: float(2 ** round(math.log2(v)))), True


def grid_table(done: pd.DataFrame, metric: str, direction: str, row: str, col: str) -> pd.DataFrame:
    """The metric over a two-way grid (e.g. rank x alpha/r): mean, std, n per cell and the best cell.

    A cell holds every complete run with that pair of values; 'configs' counts the configurations among
    them (more than one when other searched values vary too, in which case mean and std are over all of
    them). Numeric axes with more than MAX_AXIS_VALUES values are binned to powers of 2."""
    data = done[[row, col, "config", f"metrics.{metric}"]].dropna(subset=[row, col]).copy()
    if data.empty:
        return pd.DataFrame(columns=[row, col, "mean", "std", "n", "configs", "best"])
    data[row], _ = _binned(data[row])
    data[col], _ = _binned(data[col])
    rows = []
    for (a, b), group in data.groupby([row, col], sort=True):
        rows.append({row: a, col: b, **summarize(group[f"metrics.{metric}"]),
                     "configs": int(group["config"].nunique())})
    table = pd.DataFrame(rows)
    best = table["mean"].idxmin() if _better(direction) else table["mean"].idxmax()
    table["best"] = table.index == best
    return table


def rank_alpha_table(done: pd.DataFrame, metric: str, direction: str) -> pd.DataFrame:
    """Rank against scale: rows r, columns alpha/r when the sweep sampled 'alpha_over_r', else lora_alpha."""
    col = "alpha_over_r" if done["alpha_over_r"].notna().any() else "lora_alpha"
    return grid_table(done, metric, direction, "r", col)


def rank_targets_table(done: pd.DataFrame, metric: str, direction: str) -> pd.DataFrame:
    """Rank against the target-module set (lora.targets, or the explicit module list when one was set)."""
    return grid_table(done, metric, direction, "r", "targets")


def pareto_front(table: pd.DataFrame, quality: str, cost: str, direction: str,
                 cost_direction: str = "minimize") -> pd.DataFrame:
    """``table`` with a boolean 'pareto' column: no other row is at least as good on both quality and cost
    and strictly better on one. Rows missing either value are dropped. Sorted by cost, cheapest first."""
    data = table.dropna(subset=[quality, cost]).copy()
    q = data[quality].to_numpy(float) * (1 if direction == "minimize" else -1)
    c = data[cost].to_numpy(float) * (1 if cost_direction == "minimize" else -1)
    dominated = [bool(np.any((q <= q[i]) & (c <= c[i]) & ((q < q[i]) | (c < c[i])))) for i in range(len(data))]
    data["pareto"] = [not d for d in dominated]
    data["_c"] = c
    return data.sort_values(["_c", quality], ascending=[True, direction == "minimize"]).drop(
        columns="_c").reset_index(drop=True)


def effective_rank_table(done: pd.DataFrame) -> pd.DataFrame:
    """Allotted rank r against the effective rank the trained adapters use (effective_rank_mean):
    mean, std and n over runs per r, and the share of the rank used (mean effective rank / r)."""
    column = "metrics.effective_rank_mean"
    if column not in done:
        return pd.DataFrame(columns=["r", "mean", "std", "n", "used"])
    data = done.dropna(subset=["r", column])
    rows = [{"r": r, **summarize(group[column])} for r, group in data.groupby("r", sort=True)]
    table = pd.DataFrame(rows, columns=["r", "mean", "std", "n"])
    table["used"] = table["mean"] / table["r"]
    return table


def learning_curves(client: MlflowClient, runs: pd.DataFrame, metric: str = "eval_loss") -> pd.DataFrame:
    """Every step of ``metric`` of each run (MlflowClient.get_metric_history), one row per (run, step).

    The final metric shares the key and is logged at the last step, so a step logged twice keeps its
    latest value."""
    rows = []
    for _, run in runs.iterrows():
        history = sorted(client.get_metric_history(run["run_id"], metric), key=lambda m: (m.step, m.timestamp))
        latest = {m.step: m.value for m in history}
        rows += [{"run_id": run["run_id"], "trial": run["trial"], "state": run["state"], "config": run.get("config"),
                  "r": run["r"], "step": step, metric: value} for step, value in latest.items()]
    return pd.DataFrame(rows, columns=["run_id", "trial", "state", "config", "r", "step", metric])


def curves_by_rank(curves: pd.DataFrame, metric: str = "eval_loss") -> pd.DataFrame:
    """Mean of the complete runs' curves per rank and step (n = runs at that step)."""
    data = curves[curves["state"] == "COMPLETE"].dropna(subset=["r"])
    if data.empty:
        return pd.DataFrame(columns=["r", "step", "mean", "std", "n"])
    rows = [{"r": r, "step": step, **summarize(group[metric])}
            for (r, step), group in data.groupby(["r", "step"], sort=True)]
    return pd.DataFrame(rows)


def param_importance(done: pd.DataFrame, metric: str, info: Optional[SweepInfo] = None,
                     seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Importance of each sampled value for the metric, by Optuna's fANOVA evaluator over the complete runs.

    The MLflow runs are turned back into an in-memory Optuna study (``create_trial`` + ``add_trials``):
    numeric values get a float distribution over their observed range, the others a categorical one.
    Values taken by fewer than 2 distinct settings, the seed and derived fields are left out. Returns the
    table (param, importance) and notes explaining anything skipped; too few trials give only a note."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    notes: list[str] = []
    keys = sampled_keys(done, info, derived=False) if not done.empty else []
    empty = pd.DataFrame(columns=["param", "importance"])
    if len(done) < MIN_IMPORTANCE_TRIALS:
        notes.append(f"Parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; "
                     f"this sweep has {len(done)}.")
        return empty, notes
    distributions: dict[str, Any] = {}
    converted: dict[str, pd.Series] = {}
    for key in keys:
        raw = done[f"params.{SWEEP_PARAM}{key}"]
        if raw.isna().any():
            notes.append(f"'{key}' was not logged by every complete trial; left out.")
            continue
        if raw.nunique() < 2:
            notes.append(f"'{key}' took a single value ({raw.iloc[0]}); left out.")
            continue
        numeric = raw.map(_number)
        if numeric.notna().all():
            log = bool(info and info.space.get(key, {}).get("log")) and (numeric > 0).all()
            distributions[key] = FloatDistribution(float(numeric.min()), float(numeric.max()), log=log)
            converted[key] = numeric.astype(float)
        else:
            distributions[key] = CategoricalDistribution(sorted(raw.astype(str).unique()))
            converted[key] = raw.astype(str)
    if not distributions:
        notes.append("No sampled value varied across the complete trials, so there is nothing to rank.")
        return empty, notes
    trials = [optuna.trial.create_trial(
        params={k: converted[k].loc[i] for k in distributions}, distributions=distributions,
        value=float(done.loc[i, f"metrics.{metric}"])) for i in done.index]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study()
        study.add_trials(trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except ImportError as exc:  # fANOVA fits scikit-learn forests (installed with mlflow)
        notes.append(f"Optuna's fANOVA evaluator needs scikit-learn, which is missing here ({exc}).")
        return empty, notes
    except (ValueError, RuntimeError) as exc:
        notes.append(f"Optuna could not compute importances: {exc}")
        return empty, notes
    finally:
        optuna.logging.set_verbosity(verbosity)
    if len(distributions) == 1:
        notes.append("Only one sampled value varied, so it carries all the importance by construction.")
    table = pd.DataFrame({"param": list(scores), "importance": [float(v) for v in scores.values()]})
    return table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True), notes


def _override_value(value: str) -> str:
    """A logged param value as a Hydra override value ('16.0' -> '16'; other strings quoted if needed)."""
    number = _number(value)
    if not math.isnan(number):
        return str(int(number)) if number.is_integer() else value
    if value in ("True", "False"):
        return value.lower()
    return value if re.fullmatch(r"[A-Za-z_][\w.\-]*", value) else json.dumps(value)


def best_command(run: pd.Series | dict[str, Any]) -> str:
    """A ``python -m lora_lab.train`` command that reproduces the run: its ``lora_lab.overrides`` tag when
    logged, else overrides rebuilt from its sampled config fields (or its lora.* params and seed)."""
    run = dict(run)
    overrides = run.get("overrides")
    if isinstance(overrides, str) and overrides.strip():
        return f"python -m lora_lab.train {overrides.strip()}"
    fields = {}
    for key, value in run.items():
        if key.startswith("params." + SWEEP_PARAM) and isinstance(value, str):
            name = key[len("params." + SWEEP_PARAM):]
            if name.split(".", 1)[0] in ("model", "lora", "quant", "train", "data") and "." in name:
                fields[name] = value
    if not fields:
        for name in ("lora.r", "lora.lora_alpha", "lora.lora_dropout", "lora.targets", "lora.use_rslora",
                     "lora.use_dora", "train.learning_rate", "train.seed"):
            value = run.get(f"params.{name}")
            if isinstance(value, str):
                fields[name] = value
    parts = [f"{k}={_override_value(v)}" for k, v in fields.items() if v not in ("None", "null")]
    return "python -m lora_lab.train " + " ".join(parts)


def unfinished_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Trials not averaged into the tables: pruned, failed, killed, still running, and complete runs that
    did not log the metric; with their sampled values and the logged error."""
    done_ids = set(completed(runs, metric)["run_id"])
    rest = runs[~runs["run_id"].isin(done_ids)]
    column = f"metrics.{metric}"
    table = pd.DataFrame({
        "trial": rest["trial"], "run_id": rest["run_id"],
        "state": [s if s != "COMPLETE" else f"COMPLETE (no {metric})" for s in rest["state"]],
        "status": rest["status"], "config": rest["config"],
        f"last {metric}": pd.to_numeric(rest[column], errors="coerce") if column in rest else math.nan,
        "error": rest["error"].fillna("")})
    return table.reset_index(drop=True)


# -- plots ---------------------------------------------------------------------------------------

def _figure(width: float = 6.4, height: float = 4.4) -> tuple[Figure, Any]:
    """A figure on the Agg canvas (no pyplot, no display, no global state)."""
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell: blank for NaN, thousands separators for large integers."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, float, np.integer, np.floating)):
        if math.isnan(value):
            return ""
        if float(value).is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _cell(mean: float, std: float, n: int) -> str:
    spread = f" ± {_fmt(std, 2)}" if not math.isnan(std) else ""
    return f"{_fmt(mean)}{spread} (n={n})"


def _axis_order(values: Iterable[Any], choices: Optional[list[Any]] = None) -> list[Any]:
    """Axis values in a natural order: numeric ascending, else the declared choices' order, else sorted."""
    values = list(dict.fromkeys(values))
    if all(not math.isnan(_number(v)) for v in values):
        return sorted(values, key=_number)
    if choices:
        order = {str(c): i for i, c in enumerate(choices)}
        return sorted(values, key=lambda v: (order.get(str(v), len(order)), str(v)))
    return sorted(values, key=str)


def plot_grid(table: pd.DataFrame, row: str, col: str, metric: str, direction: str,
              col_choices: Optional[list[Any]] = None) -> Figure:
    """Heatmap of a grid table (green = better), each cell annotated with mean ± std and n, best outlined."""
    rows = _axis_order(table[row], None)
    cols = _axis_order(table[col], col_choices)
    matrix = np.full((len(rows), len(cols)), np.nan)
    for _, cell in table.iterrows():
        matrix[rows.index(cell[row]), cols.index(cell[col])] = cell["mean"]
    fig, ax = _figure(1.6 + 1.25 * len(cols), 1.4 + 0.8 * len(rows))
    cmap = "RdYlGn_r" if direction == "minimize" else "RdYlGn"
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=f"{metric} (mean)")
    for _, cell in table.iterrows():
        i, j = rows.index(cell[row]), cols.index(cell[col])
        std = "" if math.isnan(cell["std"]) else f"\n±{_fmt(cell['std'], 2)}"
        red, green, blue, _ = image.cmap(image.norm(cell["mean"]))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
        ax.text(j, i, f"{_fmt(cell['mean'], 3)}{std}\nn={cell['n']}", ha="center", va="center", fontsize=8,
                color="white" if dark else "black", fontweight="bold" if cell["best"] else "normal")
        if cell["best"]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
    ax.set_xticks(range(len(cols)), [_fmt(c) for c in cols])
    ax.set_yticks(range(len(rows)), [_fmt(r) for r in rows])
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    ax.set_title(f"{metric} ({direction}), best cell outlined")
    return fig


def _short(config: str) -> str:
    """A compact label for plots: 'alpha_over_r=2, lora.r=8' -> 'alpha_over_r=2 r=8'."""
    return " ".join(part.split("=", 1)[0].split(".")[-1] + "=" + part.split("=", 1)[1]
                    if "=" in part else part for part in config.split(", "))


def plot_pareto(front: pd.DataFrame, metric: str, cost: str, label: str) -> Figure:
    """Configurations' mean quality against a cost (error bars: std over seeds), Pareto set joined up."""
    fig, ax = _figure()
    rest = front[~front["pareto"]]
    best = front[front["pareto"]]
    ax.errorbar(rest[cost], rest["mean"], yerr=rest["std"].fillna(0), fmt="o", color="tab:gray", alpha=0.6,
                label="dominated", capsize=2)
    ax.errorbar(best[cost], best["mean"], yerr=best["std"].fillna(0), fmt="o", color="tab:red",
                label="Pareto-optimal", capsize=2)
    line = best.sort_values(cost)
    ax.plot(line[cost], line["mean"], "-", color="tab:red", alpha=0.4)
    order = best[cost].rank(method="first")
    for i, point in best.iterrows():
        right_half = order[i] > len(best) / 2  # label towards the middle so it stays inside the axes
        ax.annotate(_short(point["config"]), (point[cost], point["mean"]), fontsize=7,
                    xytext=(-4 if right_half else 4, 4), textcoords="offset points",
                    ha="right" if right_half else "left")
    positive = front[cost][front[cost] > 0]
    if len(positive) == len(front) and len(positive) and positive.max() / positive.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title(f"{metric} against {label}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_effective_rank(done: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Every run's effective rank against its allotted rank, the per-rank mean, and the r = r line."""
    fig, ax = _figure()
    data = done.dropna(subset=["r", "metrics.effective_rank_mean"])
    ax.scatter(data["r"], data["metrics.effective_rank_mean"], alpha=0.4, color="tab:blue", label="runs")
    ax.plot(table["r"], table["mean"], "D-", color="tab:blue", markersize=7, label="mean per rank")
    ranks = sorted(table["r"])
    ax.plot(ranks, ranks, "--", color="tab:gray", label="full use (effective = allotted)")
    if len(ranks) > 1 and ranks[0] > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [_fmt(r) for r in ranks])
    ax.set_xlabel("allotted rank r")
    ax.set_ylabel("effective rank (mean over adapted modules)")
    ax.set_title("Rank allotted against rank used")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_learning_curves(curves: pd.DataFrame, means: pd.DataFrame, metric: str = "eval_loss") -> Figure:
    """eval_loss against step: thin lines per complete run, thick mean per rank, pruned runs dotted."""
    fig, ax = _figure()
    ranks = sorted(means["r"].unique())
    colors = {r: f"C{i % 10}" for i, r in enumerate(ranks)}
    for (run_id, state), run in curves.groupby(["run_id", "state"], sort=False):
        r = run["r"].iloc[0]
        if state == "COMPLETE" and r in colors:
            ax.plot(run["step"], run[metric], color=colors[r], alpha=0.2, linewidth=0.8)
        elif state != "COMPLETE":
            ax.plot(run["step"], run[metric], ":", color="tab:gray", alpha=0.7, linewidth=1)
    for r in ranks:
        mean = means[means["r"] == r]
        n = int(curves[(curves["r"] == r) & (curves["state"] == "COMPLETE")]["run_id"].nunique())
        ax.plot(mean["step"], mean["mean"], "o-", color=colors[r], linewidth=2, markersize=3,
                label=f"r={_fmt(r)} (n={n})")
    if (curves["state"] != "COMPLETE").any():
        ax.plot([], [], ":", color="tab:gray", label="pruned or killed runs")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training, mean per rank")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_importance(table: pd.DataFrame, metric: str) -> Figure:
    """Horizontal bars of the fANOVA importances, largest on top."""
    fig, ax = _figure(6.4, 1.4 + 0.45 * len(table))
    ordered = table.iloc[::-1]
    ax.barh(ordered["param"], ordered["importance"], color="tab:blue")
    for y, value in enumerate(ordered["importance"]):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, float(table["importance"].max()) * 1.15))
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    ax.set_title("Parameter importance")
    return fig


# -- the document: one block list rendered as markdown and as HTML --------------------------------

@dataclass
class Doc:
    """A report as a list of blocks, so the markdown and the HTML page show exactly the same content."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        """A paragraph; **bold**, `code` and [text](link) are understood in both renderings."""
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        """A table of display strings (format numbers first; '**x**' cells are shown bold)."""
        self.blocks.append(("table", frame.astype(str)))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("image", (path, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                out += ["#" * value[0] + " " + value[1], ""]
            elif kind == "para":
                out += [value, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                def row(cells: Iterable[str]) -> str:
                    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
                out += [row(value.columns), row("---" for _ in value.columns)]
                out += [row(r) for r in value.itertuples(index=False)] + [""]
            elif kind == "image":
                out += [f"![{value[1]}]({value[0]})", ""]
            elif kind == "code":
                out += ["```bash", value, "```", ""]
        return "\n".join(out)

    @staticmethod
    def _inline(text: str) -> str:
        text = html.escape(str(text), quote=False)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)

    def html(self) -> str:
        body = [f"<h1>{self._inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{self._inline(value[1])}</h{value[0]}>")
            elif kind == "para":
                body.append(f"<p>{self._inline(value)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{self._inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{self._inline(c)}</th>" for c in value.columns)
                rows = "".join("<tr>" + "".join(f"<td>{self._inline(c)}</td>" for c in r) + "</tr>"
                               for r in value.itertuples(index=False))
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "image":
                body.append(f'<p><img src="{html.escape(value[0])}" alt="{html.escape(value[1])}"></p>')
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(value)}</code></pre>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
                 "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
                 "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
                 "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
                 "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}code{font-size:13px}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{style}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _grid_display(table: pd.DataFrame, row: str, col: str, col_choices: Optional[list[Any]] = None) -> pd.DataFrame:
    """A grid table pivoted for reading: rows x columns of 'mean ± std (n=k)', best cell bold with a star."""
    rows = _axis_order(table[row])
    cols = _axis_order(table[col], col_choices)
    cells = {(c[row], c[col]): _cell(c["mean"], c["std"], c["n"]) + (f" [{c['configs']} configs]"
                                                                     if c["configs"] > 1 else "")
             for _, c in table.iterrows()}
    best = table[table["best"]].iloc[0]
    cells[(best[row], best[col])] = f"**{cells[(best[row], best[col])]}** ★"
    data = [[f"{row}={_fmt(r)}"] + [cells.get((r, c), "") for c in cols] for r in rows]
    return pd.DataFrame(data, columns=[f"{row} \\ {col}"] + [_fmt(c) for c in cols])


def _display(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Selected columns of a table, renamed and formatted for the report."""
    present = {k: v for k, v in columns.items() if k in frame}
    return pd.DataFrame({v: [_fmt(x, 2 if k == "std" else 4) for x in frame[k]] for k, v in present.items()})


# -- writing -------------------------------------------------------------------------------------

def write_atomically(target: Path, files: dict[str, Any]) -> None:
    """Write the report's files into a fresh temporary folder beside ``target`` and swap it in.

    ``files`` maps a file name to text, a DataFrame (written as CSV) or a Figure (written as PNG). The old
    report, if any, is moved aside only once the new one is complete, and removed after the swap."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # not mkdtemp: its 0700 mode would stick to the finished report
    try:
        for name, content in files.items():
            path = staging / name
            if isinstance(content, pd.DataFrame):
                content.to_csv(path, index=False)
            elif isinstance(content, Figure):
                content.savefig(path)
            else:
                path.write_text(content, encoding="utf-8")
        previous = None
        if target.exists():
            previous = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            target.rename(previous)
        staging.rename(target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- putting it together -------------------------------------------------------------------------

STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "KILLED": "killed",
               "RUNNING": "running"}


def _counts(runs: pd.DataFrame) -> dict[str, int]:
    """Trial runs per state, in a fixed order."""
    counts = runs["state"].value_counts().to_dict() if not runs.empty else {}
    return {state: int(counts[state]) for state in STATES if state in counts}


def _count_text(runs: pd.DataFrame) -> str:
    return ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in _counts(runs).items())


def _no_finished_error(client: MlflowClient, runs: pd.DataFrame, info: SweepInfo, metric: str) -> ReportError:
    """The clearest error for a sweep that has nothing to average."""
    if runs.empty:
        return UnknownSweepError(
            f"experiment {info.experiment.name!r} holds no trial runs of study {info.study!r} "
            f"(runs tagged lora_lab.kind=trial; {len(info.parent_run_ids)} sweep parent run(s) found). "
            f"Has the sweep started? Other {_existing(client)}.")
    complete = runs[runs["state"] == "COMPLETE"]
    if len(complete):
        logged = sorted({c[len("metrics."):] for c in complete.columns
                         if c.startswith("metrics.") and complete[c].notna().any()})
        return NoFinishedTrialsError(
            f"no complete trial of study {info.study!r} logged the metric {metric!r} ({_count_text(runs)}); "
            f"metrics they logged: {', '.join(logged) or 'none'}. Choose one with metric=<name>.")
    errors = [e for e in runs["error"].dropna() if e]
    first = f" The first error: {errors[0]}" if errors else ""
    return NoFinishedTrialsError(
        f"study {info.study!r} has no finished trial yet ({_count_text(runs)}), so there is nothing to "
        f"average; pruned and failed trials are never averaged in.{first}")


@dataclass
class SweepData:
    """Everything read from MLflow for one report, and the choices made about it."""

    client: MlflowClient
    info: SweepInfo
    runs: pd.DataFrame
    """Every trial run of the study (any state), with a 'config' column."""
    done: pd.DataFrame
    """The complete runs with the metric: the only ones averaged."""
    metric: str
    direction: str
    source: str
    """Where metric and direction came from, in words."""
    configs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def choices(self, name: str) -> Optional[list[Any]]:
        """The declared choices of a searched value (for a natural column order), if known; target sets
        default to the built-in order, smallest first (qv, attn, mlp, all_linear)."""
        declared = self.info.space.get(name, {}).get("choices")
        return declared or (list(LLAMA_TARGET_SETS) if name == "lora.targets" else None)


def read_sweep(settings: ReportConfig, client: MlflowClient) -> SweepData:
    """Find the study's experiment, read its parent and trial runs, settle metric and direction."""
    study = settings.study
    experiment = find_experiment(client, settings.experiment or study)
    all_runs = search_all_runs(client, experiment.experiment_id)
    info = load_sweep_info(client, experiment, study, all_runs)
    runs = load_runs(client, experiment, study, all_runs)
    metric, direction, source = resolve_objective(settings.metric, settings.direction, info)
    if runs.empty:
        raise _no_finished_error(client, runs, info, metric)
    runs = assign_configs(runs, info)
    done = completed(runs, metric)
    if done.empty:
        raise _no_finished_error(client, runs, info, metric)
    data = SweepData(client, info, runs, done, metric, direction, source)
    data.configs = config_table(done, metric, direction, info)
    return data


Files = dict[str, Any]
"""File name -> text, DataFrame (CSV) or Figure (PNG), as write_atomically takes them."""


def section_summary(data: SweepData, doc: Doc, files: Files) -> None:
    """What was read, which metric, and the headline numbers."""
    best, configs, metric = data.configs.iloc[0], data.configs, data.metric
    arrow = "lower" if data.direction == "minimize" else "higher"
    doc.para(f"Experiment `{data.info.experiment.name}` at `{tracking_uri(data.client)}`, read "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Metric **{metric}** ({data.direction}: {arrow} is better; "
             f"from {data.source}). Means and sample standard deviations are over the seeds of each "
             f"configuration; only complete trials are averaged.")
    doc.heading("Summary")
    low, high = configs["n"].min(), configs["n"].max()
    seeds = f"{low} seed(s) each" if low == high else f"{low}–{high} seeds each"
    doc.bullets([
        f"Trial runs: {len(data.runs)} ({_count_text(data.runs)}); {len(data.done)} averaged.",
        f"Configurations: {len(configs)}, with {seeds}.",
        f"Best configuration: `{best['config']}`: {metric} {_cell(best['mean'], best['std'], best['n'])}.",
        f"Sweep parent run(s): {', '.join(f'`{p}`' for p in data.info.parent_run_ids) or 'none found'}."])


def section_best(data: SweepData, doc: Doc, files: Files) -> None:
    """The best configuration by mean, and the command that reproduces its best seed."""
    best, metric = data.configs.iloc[0], data.metric
    run = data.done[data.done["run_id"] == best["best_run_id"]].iloc[0]
    command = best_command(run)
    doc.heading("Best configuration")
    doc.para(f"`{best['config']}` has the best mean {metric}, {_cell(best['mean'], best['std'], best['n'])}. "
             f"Its best seed is trial {_fmt(run['trial'])} (run `{run['run_id']}`, "
             f"{metric} = {_fmt(run[f'metrics.{metric}'])}); this command reproduces it:")
    doc.code(command)
    if best["n"] < 2:
        doc.para("Measured on a single seed: rerun with more seeds before trusting the ranking.")
    files["best_command.txt"] = command + "\n"


def section_grids(data: SweepData, doc: Doc, files: Files) -> None:
    """Rank x alpha (alpha/r when sampled) and rank x target-module set."""
    metric, direction, done = data.metric, data.direction, data.done
    alpha = rank_alpha_table(done, metric, direction)
    col = alpha.columns[1]
    scale = "alpha/r" if col == "alpha_over_r" else "lora_alpha"
    doc.heading(f"Rank × {scale}")
    doc.para(f"{metric} per LoRA rank r (rows) and {scale} (columns): mean ± std (n runs); the best cell is "
             f"bold with ★. [rank_alpha.csv](rank_alpha.csv)")
    if _binned(done[col].dropna())[1] or _binned(done["r"].dropna())[1]:
        doc.para("Many distinct values were sampled, so numeric axes are rounded to the nearest power of 2.")
    if (alpha["configs"] > 1).any():
        doc.para("Cells marked [k configs] pool several configurations that differ in other searched values.")
    doc.table(_grid_display(alpha, "r", col))
    files["rank_alpha.csv"] = alpha
    files["rank_alpha.png"] = plot_grid(alpha, "r", col, metric, direction)
    doc.image("rank_alpha.png", f"{metric} by rank and {scale}")

    targets = rank_targets_table(done, metric, direction)
    files["rank_targets.csv"] = targets
    doc.heading("Rank × target modules")
    if targets["targets"].nunique() < 2:
        sets = ", ".join(map(str, targets["targets"].unique())) or "unknown"
        doc.para(f"Every complete trial adapted the same modules ({sets}); see [rank_targets.csv](rank_targets.csv).")
        return
    choices = data.choices("lora.targets")
    doc.para(f"{metric} per rank r and target-module set (lora.targets). [rank_targets.csv](rank_targets.csv)")
    doc.table(_grid_display(targets, "r", "targets", choices))
    files["rank_targets.png"] = plot_grid(targets, "r", "targets", metric, direction, choices)
    doc.image("rank_targets.png", f"{metric} by rank and target modules")


def section_pareto(data: SweepData, doc: Doc, files: Files) -> None:
    """Quality against each logged cost, Pareto-optimal configurations listed and plotted."""
    metric, configs = data.metric, data.configs
    doc.heading("Quality against cost (Pareto front)")
    doc.para(f"Each configuration's mean {metric} against its mean cost; a configuration is Pareto-optimal "
             f"when no other is at least as good on both and better on one.")
    logged = [axis for axis in COST_AXES if axis[0] in configs and configs[axis[0]].notna().any()]
    if not logged:
        doc.para("No complete trial logged trainable_params, peak_memory_mb or tokens_per_s.")
    for cost, cost_direction, label in logged:
        front = pareto_front(configs, "mean", cost, data.direction, cost_direction)
        optimal = front[front["pareto"]]
        files[f"pareto_{cost}.csv"] = front
        files[f"pareto_{cost}.png"] = plot_pareto(front, metric, cost, label)
        doc.heading(f"{metric} against {label}", 3)
        verb = "is" if len(optimal) == 1 else "are"
        doc.para(f"{len(optimal)} of {len(front)} configurations {verb} Pareto-optimal "
                 f"({'lower' if cost_direction == 'minimize' else 'higher'} {label} is better). "
                 f"[pareto_{cost}.csv](pareto_{cost}.csv)")
        kinds = set(data.done["peak_memory_kind"].dropna())
        if cost == "peak_memory_mb" and any("rss" in str(kind) for kind in kinds):
            doc.para("Peak memory was measured as the process's maximum resident set size (no CUDA device), "
                     "which only grows while one process runs many trials: it reflects trial order more "
                     "than the configuration.")
        doc.table(_display(optimal, {"config": "configuration", cost: label, "mean": f"{metric} mean",
                                     "std": "std", "n": "n"}))
        doc.image(f"pareto_{cost}.png", f"{metric} against {label}")


def section_effective_rank(data: SweepData, doc: Doc, files: Files) -> None:
    """How much of the allotted rank the trained adapters use."""
    ranks = effective_rank_table(data.done)
    files["effective_rank.csv"] = ranks
    doc.heading("Effective rank")
    if ranks.empty:
        doc.para("No complete trial logged effective_rank_mean.")
        return
    doc.para("Allotted rank r against the effective rank of the trained adapters (effective_rank_mean, "
             "averaged over runs); 'used' is effective / allotted. [effective_rank.csv](effective_rank.csv)")
    doc.table(_display(ranks, {"r": "r", "mean": "effective rank mean", "std": "std", "n": "n", "used": "used"}))
    files["effective_rank.png"] = plot_effective_rank(data.done, ranks)
    doc.image("effective_rank.png", "effective rank against allotted rank")


def section_learning_curves(data: SweepData, doc: Doc, files: Files) -> None:
    """eval_loss against step per rank, from each run's metric history."""
    runs = data.runs[data.runs["state"].isin(["COMPLETE", "PRUNED", "KILLED"])]
    curves = learning_curves(data.client, runs)
    means = curves_by_rank(curves)
    files["learning_curves.csv"] = curves
    files["learning_curves_by_rank.csv"] = means
    doc.heading("Learning curves")
    if means.empty:
        doc.para("No eval_loss history was logged by the complete trials.")
        return
    doc.para("eval_loss at each evaluation step; thick lines are the mean over the complete runs of each rank, "
             "thin lines single runs, dotted grey lines pruned runs. [learning_curves.csv](learning_curves.csv), "
             "[learning_curves_by_rank.csv](learning_curves_by_rank.csv)")
    if means["step"].nunique() <= 12:
        pivot = means.pivot(index="r", columns="step", values="mean")
        shown = pd.DataFrame({"r": [_fmt(r) for r in pivot.index]})
        for step in pivot.columns:
            shown[f"step {_fmt(step)}"] = [_fmt(v) for v in pivot[step]]
        doc.table(shown)
    files["learning_curves.png"] = plot_learning_curves(curves, means)
    doc.image("learning_curves.png", "eval_loss against step by rank")


def section_importance(data: SweepData, doc: Doc, files: Files) -> None:
    """Optuna's fANOVA importances of the sampled values, or why there are none."""
    importance, notes = param_importance(data.done, data.metric, data.info)
    files["importance.csv"] = importance
    doc.heading("Parameter importance")
    if len(importance):
        doc.para(f"Share of the variance of {data.metric} explained by each sampled value (Optuna's fANOVA "
                 f"evaluator over the {len(data.done)} complete trials, seeds as separate trials). "
                 f"[importance.csv](importance.csv)")
        doc.table(_display(importance, {"param": "parameter", "importance": "importance"}))
        files["importance.png"] = plot_importance(importance, data.metric)
        doc.image("importance.png", "parameter importance")
    for note in notes:
        doc.para(note)


def section_configs(data: SweepData, doc: Doc, files: Files) -> None:
    """Every configuration, best first."""
    files["configs.csv"] = data.configs
    doc.heading("All configurations")
    doc.para(f"Best first by mean {data.metric}. [configs.csv](configs.csv)")
    doc.table(_display(data.configs, {
        "config": "configuration", "mean": f"{data.metric} mean", "std": "std", "n": "n", "seeds": "seeds",
        "trainable_params": "trainable params", "peak_memory_mb": "peak MiB", "tokens_per_s": "tokens/s",
        "effective_rank_mean": "effective rank"}))


def section_unfinished(data: SweepData, doc: Doc, files: Files) -> None:
    """Pruned, failed, killed and running trials: counted and listed, never averaged."""
    rest = unfinished_table(data.runs, data.metric)
    files["unfinished.csv"] = rest
    files["runs.csv"] = data.runs
    doc.heading("Pruned and failed trials")
    if rest.empty:
        doc.para("None: every trial run completed.")
        return
    by_state = ", ".join(f"{n} {STATE_WORDS.get(s, s)}" for s, n in rest["state"].value_counts().items())
    doc.para(f"{len(rest)} trial run(s) were not averaged: {by_state}. [unfinished.csv](unfinished.csv)")
    doc.table(_display(rest, {"trial": "trial", "state": "state", "status": "MLflow status",
                              "config": "configuration", f"last {data.metric}": f"last {data.metric}",
                              "error": "error"}))


SECTIONS = (section_summary, section_best, section_grids, section_pareto, section_effective_rank,
            section_learning_curves, section_importance, section_configs, section_unfinished)
"""The report's sections, in order; each adds blocks to the document and files to the folder."""


def build_report(settings: ReportConfig, client: Optional[MlflowClient] = None) -> Path:
    """Read the sweep from MLflow, compute every table and plot, and write ``<output_dir>/<study>/``.

    Returns the report folder. Raises UnknownSweepError / NoFinishedTrialsError when there is nothing to
    report on (both LoraLabError, so the CLI prints one paragraph and exits with code 2)."""
    data = read_sweep(settings, client or MlflowClient())
    doc, files = Doc(f"LoRA sweep report: {settings.study}"), {}
    for section in SECTIONS:
        section(data, doc, files)
    doc.heading("Files")
    doc.bullets([f"[{name}]({name})" for name in sorted(files) if not name.endswith(".png")])
    files["report.md"] = doc.markdown()
    files["report.html"] = doc.html()
    target = Path(settings.output_dir) / settings.study
    write_atomically(target, files)
    return target


def _quiet() -> None:
    """Keep MLflow's and Optuna's chatter out of the output (without importing model libraries)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


register_configs()


@hydra.main(version_base=None, config_path=cli.CONFIG_DIR, config_name="report")
@cli.reports_errors
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m lora_lab.report study=<name> [metric=..] [direction=..] [output_dir=..]``."""
    settings = OmegaConf.to_object(cfg)
    assert isinstance(settings, ReportConfig)
    _quiet()
    target = build_report(settings)
    print(f"report: {target / 'report.md'} (and report.html, CSVs, plots in {target}{os.sep})")


if __name__ == "__main__":
    main()
