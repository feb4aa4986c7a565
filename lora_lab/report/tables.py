"""The report's tables, computed from the runs read by :mod:`lora_lab.report.read`.

"n" always counts the seeds of one configuration (runs sharing ``lora_lab.config_id``): a grid cell that
holds several configurations (other searched values vary too) shows the best of them, never a pool.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lora_lab import names
from lora_lab.report.decide import Rule, centre, decide, metric_scale
from lora_lab.report.read import SweepInfo, number, sampled_keys
from lora_lab.report.stats import summarize

EXTRA_METRICS = (
    "trainable_params",
    "total_params",
    "peak_memory_mb",
    "tokens_per_s",
    "effective_rank_mean",
    "eval_loss",
    "exact_match",
)
"""Metrics averaged into every configuration's row beside the ranked one."""

MAX_AXIS_VALUES = 8
"""A numeric table axis with more distinct values (a float search) is binned to the nearest power of 2."""

MIN_IMPORTANCE_TRIALS = 4
"""Fewer complete trials than this give importances that mean nothing; the report says so instead."""


def better_first(direction: str) -> bool:
    """True when smaller is better (sort ascending)."""
    return direction == "minimize"


def forgetting_metrics(runs: pd.DataFrame) -> list[str]:
    """The logged task-A (retain) and forgetting metrics, retain first."""
    logged = [c[len("metrics.") :] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()]
    return [m for m in sorted(logged) if m.startswith(names.RETAIN_PREFIX)] + [
        m for m in sorted(logged) if m.startswith(names.FORGET_PREFIX)
    ]


def prompts_scored(members: pd.DataFrame) -> Optional[int]:
    """Held-out prompts scored by generation per run (exact match): train.eval_generate, capped by the
    held-out split's size (data.n_eval) where logged; None when not logged."""
    found = []
    for key in ("params.train.eval_generate", "params.data.n_eval"):
        if key in members:
            values = members[key].map(number).dropna()
            if len(values):
                found.append(int(values.min()))
    return min(found) if found and min(found) > 0 else None


def config_table(
    runs: pd.DataFrame,
    metric: str,
    direction: str,
    info: Optional[SweepInfo] = None,
    rule: Optional[Rule] = None,
) -> pd.DataFrame:
    """One row per configuration (group), the best first, then by centre: its searched values, the
    metric's centre and interval on its scale (:mod:`lora_lab.report.decide`: geometric mean for a loss,
    pooled share for a proportion), std and n over its seeds, prompts scored, the seeds, the best seed's
    run, mean costs and other metrics, and its ``decision`` against the best (best / equivalent / worse /
    undecided) with the comparison's estimate, interval and corrected p-values."""
    column = f"metrics.{metric}"
    if runs.empty or column not in runs:
        return pd.DataFrame()
    rule = rule or Rule()
    keys = sampled_keys(runs, info)
    extras = [m for m in EXTRA_METRICS if m != metric] + forgetting_metrics(runs)
    rows, samples, prompts = [], {}, {}
    for group, members in runs.groupby("group", sort=False):
        values = pd.to_numeric(members[column], errors="coerce")
        if values.notna().sum() == 0:
            continue
        best_idx = values.idxmin() if better_first(direction) else values.idxmax()
        row: dict[str, Any] = {"config": members["config"].iloc[0], "group": group}
        for key in keys:
            row[key] = members[f"params.{names.SWEEP_PARAM_PREFIX}{key}"].iloc[0]
        for key in ("r", "lora_alpha", "alpha_over_r", "targets", "use_rslora", "kind", "baseline"):
            if key in members:
                row[key] = members[key].iloc[0]
        row["seeds"] = ",".join(f"{s:g}" for s in sorted(members["seed"].dropna().unique()))
        for extra in extras:
            col = f"metrics.{extra}"
            if col in members and members[col].notna().any():
                row[extra] = float(pd.to_numeric(members[col], errors="coerce").mean())
        row["best_run_id"] = members.loc[best_idx, "run_id"]
        row["best_trial"] = members.loc[best_idx, "trial"]
        rows.append(row)
        samples[group] = values.dropna().to_numpy(float)
        prompts[group] = prompts_scored(members)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    scale = metric_scale(metric, np.concatenate(list(samples.values())))
    decided = decide(samples, direction, scale, rule, prompts)
    table = decided.merge(table, on="group", how="left")
    table["ci_half"] = (table["ci_high"] - table["ci_low"]) / 2
    table.attrs.update(scale=scale, compared=len(table) - 1, prompts=prompts_of(prompts))
    return table


def prompts_of(prompts: dict[str, Optional[int]]) -> Optional[int]:
    """The number of prompts scored per seed when every configuration scored the same number, else None."""
    found = {p for p in prompts.values() if p}
    return found.pop() if len(found) == 1 else None


def samples_of(runs: pd.DataFrame, metric: str) -> dict[str, np.ndarray]:
    """The metric's values per configuration group."""
    column = f"metrics.{metric}"
    return (
        {
            g: pd.to_numeric(m[column], errors="coerce").dropna().to_numpy(float)
            for g, m in runs.groupby("group", sort=False)
        }
        if column in runs
        else {}
    )


def binned(values: pd.Series) -> tuple[pd.Series, bool]:
    """Values of a numeric axis with many distinct values (a float search), rounded to the nearest power
    of 2 so the table stays readable; categorical axes are returned as they are."""
    numeric = pd.to_numeric(values, errors="coerce")
    if values.nunique() <= MAX_AXIS_VALUES or numeric.isna().any() or (numeric <= 0).any():
        return values, False
    return numeric.map(lambda v: float(2 ** round(math.log2(v)))), True


def grid_table(configs: pd.DataFrame, row: str, col: str) -> pd.DataFrame:
    """A configuration table laid on a two-way grid (rank x alpha/r, rank x targets...).

    Each cell is the best configuration with that pair of values (configs is best first), with its own
    mean, interval, n and decision; 'configs' counts the configurations that share the cell. Numeric axes
    with more than MAX_AXIS_VALUES values are binned to powers of 2."""
    columns = [row, col, "config", "mean", "std", "n", "ci_low", "ci_high", "ci_half", "decision", "configs", "best"]
    data = configs.dropna(subset=[row, col]).copy() if row in configs and col in configs else pd.DataFrame()
    if data.empty:
        return pd.DataFrame(columns=columns)
    data[row], _ = binned(data[row])
    data[col], _ = binned(data[col])
    data["_order"] = range(len(data))
    rows = []
    for (a, b), cell in data.groupby([row, col], sort=True):
        top = cell.sort_values("_order").iloc[0]
        rows.append(
            {
                row: a,
                col: b,
                **{k: top[k] for k in columns[2:10]},
                "configs": len(cell),
                "best": bool(top["_order"] == 0),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def pareto_front(
    table: pd.DataFrame, quality: str, cost: str, direction: str, cost_direction: str = "minimize"
) -> pd.DataFrame:
    """``table`` with a boolean 'pareto' column: no other row is at least as good on both quality and cost
    and strictly better on one. Rows missing either value are dropped. Sorted by cost, cheapest first."""
    data = table.dropna(subset=[quality, cost]).copy()
    q = data[quality].to_numpy(float) * (1 if direction == "minimize" else -1)
    c = data[cost].to_numpy(float) * (1 if cost_direction == "minimize" else -1)
    dominated = [bool(np.any((q <= q[i]) & (c <= c[i]) & ((q < q[i]) | (c < c[i])))) for i in range(len(data))]
    data["pareto"] = [not d for d in dominated]
    data["_c"] = c
    return (
        data.sort_values(["_c", quality], ascending=[True, direction == "minimize"])
        .drop(columns="_c")
        .reset_index(drop=True)
    )


def effective_rank_table(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Allotted rank against the effective rank the trained adapters use (effective_rank_mean), one row
    per configuration: mean and interval over its seeds, n, and the share of the rank used."""
    column = "metrics.effective_rank_mean"
    out = ["config", "r", "mean", "ci_half", "n", "used"]
    if column not in runs:
        return pd.DataFrame(columns=out)
    data = runs.dropna(subset=["r", column])
    rows = [
        {"config": m["config"].iloc[0], "r": m["r"].iloc[0], **summarize(m[column], confidence)}
        for _, m in data.groupby("group", sort=False)
    ]
    table = pd.DataFrame(rows, columns=["config", "r", "mean", "std", "n", "ci_low", "ci_high", "ci_half"])
    table["used"] = table["mean"] / table["r"]
    return table.sort_values(["r", "config"], kind="stable")[out].reset_index(drop=True)


def curves_by_config(curves: pd.DataFrame, metric: str = "eval_loss", confidence: float = 0.95) -> pd.DataFrame:
    """Mean learning curve of each configuration from its complete runs: per step the geometric mean with
    its interval on the log scale (positive values, so a band never falls to the axis floor; the
    arithmetic mean and t interval otherwise) and n (seeds at that step), with the configuration's style
    fields (r, scale = lora_alpha / r, label)."""
    data = curves[curves["state"] == "COMPLETE"]
    out = ["group", "config", "r", "scale", "step", "mean", "ci_low", "ci_high", "n"]
    if data.empty:
        return pd.DataFrame(columns=out)
    scale = "ratio" if (pd.to_numeric(data[metric], errors="coerce") > 0).all() else "difference"
    rows = [
        {
            "group": g,
            "config": m["config"].iloc[0],
            "r": m["r"].iloc[0],
            "scale": m["lora_alpha"].iloc[0] / m["r"].iloc[0] if "lora_alpha" in m else math.nan,
            "step": step,
            **centre(m[metric], scale, confidence),
        }
        for (g, step), m in data.groupby(["group", "step"], sort=True)
    ]
    return pd.DataFrame(rows)[out]


def step_rank_correlation(curves: pd.DataFrame, metric: str = "eval_loss") -> tuple[float, float, float]:
    """(first step at or past a third of training, last step, Spearman correlation of the configurations'
    mean metric at the two): how early the final ranking is already settled."""
    from lora_lab.report.stats import spearman

    data = curves[curves["state"] == "COMPLETE"]
    if data.empty or data["group"].nunique() < 3:
        return math.nan, math.nan, math.nan
    means = data.groupby(["group", "step"])[metric].mean().unstack("step")
    steps = [s for s in means.columns if means[s].notna().all()]
    if len(steps) < 2:
        return math.nan, math.nan, math.nan
    last = steps[-1]
    early = next(s for s in steps if s >= last / 3)
    if early == last:
        return math.nan, math.nan, math.nan
    return float(early), float(last), spearman(means[early], means[last])


def unfinished_table(runs: pd.DataFrame, done_ids: set[str], metric: str) -> pd.DataFrame:
    """Runs not averaged into the tables: pruned, failed, killed, excluded (``lora_lab.outcome``), still
    running, and complete runs that did not log the metric; with their values and the logged error."""
    rest = runs[
        ~runs["run_id"].isin(done_ids) & ~((runs["kind"] == names.KIND_BASELINE) & (runs["state"] == "COMPLETE"))
    ]
    column = f"metrics.{metric}"
    state = [s if s != "COMPLETE" else f"COMPLETE (no {metric})" for s in rest["state"]]
    state = [f"{s} ({o})" if isinstance(o, str) and o else s for s, o in zip(state, rest["outcome"], strict=True)]
    table = pd.DataFrame(
        {
            "trial": rest["trial"],
            "run_id": rest["run_id"],
            "state": state,
            "status": rest["status"],
            "config": rest["config"],
            f"last {metric}": pd.to_numeric(rest[column], errors="coerce") if column in rest else math.nan,
            "error": rest["error"].fillna(""),
        }
    )
    return table.reset_index(drop=True)


def rebuild_study(runs: pd.DataFrame, metric: str, direction: str, info: Optional[SweepInfo] = None):
    """The complete trial runs as an in-memory Optuna study (``create_trial`` + ``add_trials``), so Optuna's
    own importance evaluators and plots read the MLflow data; returns (study or None, notes).

    Numeric values get a float distribution over their observed range, the others a categorical one.
    Values with a single setting, the seed and derived fields are left out."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    notes: list[str] = []
    keys = sampled_keys(runs, info, derived=False) if not runs.empty else []
    distributions: dict[str, Any] = {}
    converted: dict[str, pd.Series] = {}
    for key in keys:
        raw = runs[f"params.{names.SWEEP_PARAM_PREFIX}{key}"]
        if raw.isna().any():
            notes.append(f"'{key}' was not logged by every complete trial; left out.")
            continue
        if raw.nunique() < 2:
            notes.append(f"'{key}' took a single value ({raw.iloc[0]}); left out.")
            continue
        numeric = raw.map(number)
        if numeric.notna().all():
            log = bool(info and info.space.get(key, {}).get("log")) and (numeric > 0).all()
            distributions[key] = FloatDistribution(float(numeric.min()), float(numeric.max()), log=log)
            converted[key] = numeric.astype(float)
        else:
            distributions[key] = CategoricalDistribution(sorted(raw.astype(str).unique()))
            converted[key] = raw.astype(str)
    if not distributions:
        notes.append("No sampled value varied across the complete trials, so there is nothing to show.")
        return None, notes
    order = runs.sort_values(["trial", "start_time"], na_position="last")
    trials = [
        optuna.trial.create_trial(
            params={k: converted[k].loc[i] for k in distributions},
            distributions=distributions,
            value=float(order.loc[i, f"metrics.{metric}"]),
        )
        for i in order.index
    ]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study(direction=direction)
        study.add_trials(trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study, notes


def stored_study(storage: Optional[str], study_name: str):
    """The sweep's own Optuna study, when the storage it logged (the parent run's ``optuna.storage`` tag)
    opens from here: a journal or sqlite file that exists, or a database that answers within 5 s. None
    otherwise (a redacted URL, another machine's file); nothing is ever created."""
    import optuna

    if not storage or "***" in storage:
        return None
    try:
        if storage.endswith(".journal"):
            path = Path(storage.removeprefix("journal:///").removeprefix("journal://"))
            if not path.is_file():
                return None
            opened = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        elif storage.startswith("sqlite:///"):
            if not Path(storage.removeprefix("sqlite:///")).is_file():
                return None
            opened = optuna.storages.RDBStorage(storage, skip_table_creation=True)
        elif storage.startswith("postgresql"):
            opened = optuna.storages.RDBStorage(
                storage, skip_table_creation=True, engine_kwargs={"connect_args": {"connect_timeout": 5}}
            )
        else:
            return None
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=study_name, storage=opened)
        finally:
            optuna.logging.set_verbosity(verbosity)
    except Exception:  # any failure to open means: not available here (the report falls back)
        return None
    return study if study.get_trials(deepcopy=False) else None


def param_importance(
    runs: pd.DataFrame, metric: str, direction: str = "minimize", info: Optional[SweepInfo] = None, seed: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """Importance of each sampled value for the metric, by Optuna's fANOVA evaluator over the complete runs
    (seeds as separate trials). Returns the table (param, importance) and notes explaining anything
    skipped; too few trials give only a note."""
    import optuna

    empty = pd.DataFrame(columns=["param", "importance"])
    if len(runs) < MIN_IMPORTANCE_TRIALS:
        return empty, [
            f"Parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; this sweep has {len(runs)}."
        ]
    study, notes = rebuild_study(runs, metric, direction, info)
    if study is None:
        return empty, notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
            )
    except ImportError as exc:  # fANOVA fits scikit-learn forests
        notes.append(f"Optuna's fANOVA evaluator needs scikit-learn, which is missing here ({exc}).")
        return empty, notes
    except (ValueError, RuntimeError) as exc:
        notes.append(f"Optuna could not compute importances: {exc}")
        return empty, notes
    if len(scores) == 1:
        notes.append("Only one sampled value varied, so it carries all the importance by construction.")
    table = pd.DataFrame({"param": list(scores), "importance": [float(v) for v in scores.values()]})
    return table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True), notes
