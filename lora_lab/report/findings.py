"""What the report concludes: the recommendation, grid-edge and alpha-versus-rank warnings, the baselines'
recovered gain and the three published findings (rank saturation, all-linear versus q,v, rsLoRA), each
stated with its numbers or as "not measured in this sweep".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from lora_lab import names
from lora_lab.report.read import SweepInfo, number
from lora_lab.report.stats import bootstrap_ci, is_tie, summarize, variance_explained, welch_p
from lora_lab.report.tables import samples_of

NOT_MEASURED = "not measured in this sweep"


def fmt(value: Any, digits: int = 4) -> str:
    """A number for prose and table cells: no exponent, thousands separators for large values, blank for NaN."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if abs(value) >= 10 ** (digits - 1) or (value.is_integer() and abs(value) >= 1000):
            return f"{value:,.0f}"
        if value == 0:
            return "0"
        return np.format_float_positional(value, precision=digits, unique=True, fractional=False, trim="-")
    return str(value)


# -- commands --------------------------------------------------------------------------------------


def _override_value(value: str) -> str:
    """A logged param value as a Hydra override value ('16.0' -> '16'; other strings quoted if needed)."""
    num = number(value)
    if not math.isnan(num):
        return str(int(num)) if num.is_integer() else value
    if value in ("True", "False"):
        return value.lower()
    return value if re.fullmatch(r"[A-Za-z_][\w.\-]*", value) else json.dumps(value)


def train_overrides(run: pd.Series | dict[str, Any], seed: bool = True) -> list[str]:
    """The ``python -m lora_lab.train`` overrides that reproduce a run: its ``lora_lab.overrides`` tag when
    logged, else rebuilt from its sampled config fields (or its lora.* params and seed). ``seed=False``
    drops the seed override (a configuration rather than one of its runs)."""
    run = dict(run)
    overrides = run.get("overrides")
    if isinstance(overrides, str) and overrides.strip():
        parts = overrides.split()
    else:
        fields: dict[str, str] = {}
        prefix = "params." + names.SWEEP_PARAM_PREFIX
        for key, value in run.items():
            if key.startswith(prefix) and isinstance(value, str):
                name = key[len(prefix) :]
                if name.split(".", 1)[0] in names.TRIAL_GROUPS and "." in name:
                    fields[name] = value
        if not fields:
            for name in (
                "lora.r",
                "lora.lora_alpha",
                "lora.lora_dropout",
                "lora.targets",
                "lora.use_rslora",
                "lora.use_dora",
                "train.learning_rate",
                names.SEED_KEY,
            ):
                value = run.get(f"params.{name}")
                if isinstance(value, str):
                    fields[name] = value
        parts = [f"{k}={_override_value(v)}" for k, v in fields.items() if v not in ("None", "null")]
    if not seed:
        parts = [p for p in parts if not p.startswith(names.SEED_KEY + "=")]
    return parts


def best_command(run: pd.Series | dict[str, Any]) -> str:
    """A ``python -m lora_lab.train`` command that reproduces the run (its seed included)."""
    return "python -m lora_lab.train " + " ".join(train_overrides(run))


# -- the recommendation ---------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """The cheapest configuration that cannot be told apart from the best on one metric."""

    metric: str
    direction: str
    best: pd.Series
    chosen: pd.Series
    tied: pd.DataFrame
    """Every configuration that cannot be told apart from the best (the best included)."""
    undecided: int
    """Configurations the rule could not decide (a single seed under the welch rule)."""
    cost: str
    """What 'cheapest' is measured in: trainable_params, else r."""


def recommend(configs: pd.DataFrame, metric: str, direction: str) -> Recommendation:
    """From a config table (best first, with the ``tie`` column of stats.TieRule): the configuration with
    the fewest trainable parameters (else the smallest r) among those that cannot be told apart from the
    best, the better mean breaking equal costs. Undecided configurations are never chosen."""
    cost = "trainable_params" if "trainable_params" in configs and configs["trainable_params"].notna().all() else "r"
    tied = configs[configs["tie"].map(is_tie)]
    tied = tied.assign(_order=range(len(tied))).sort_values([cost, "_order"], kind="stable").drop(columns="_order")
    undecided = int(configs["tie"].isna().sum())
    return Recommendation(metric, direction, configs.iloc[0], tied.iloc[0], tied, undecided, cost)


def recommended_command(runs: pd.DataFrame, rec: Recommendation) -> str:
    """``python -m lora_lab.train`` with the chosen configuration's overrides, seed left to its default."""
    run = runs[runs["run_id"] == rec.chosen["best_run_id"]].iloc[0]
    return "python -m lora_lab.train " + " ".join(train_overrides(run, seed=False))


def with_merge(command: str, runs: pd.DataFrame, rec: Recommendation, run_dir: str) -> list[str]:
    """``command`` with its run directory fixed, then the ``python -m lora_lab.export`` that merges the
    adapter it trains into its base for use (``dequantize=true`` where the base was quantized)."""
    run = runs[runs["run_id"] == rec.chosen["best_run_id"]].iloc[0]
    quantized = str(run.get("params.quant.method", "none")) not in ("none", "nan", "None")
    merge = f"python -m lora_lab.export adapter={run_dir}/adapter output_dir={run_dir}/merged"
    return [f"{command} hydra.run.dir={run_dir}", merge + (" dequantize=true" if quantized else "")]


# -- warnings about the search ----------------------------------------------------------------------


def searched_values(info: SweepInfo, configs: pd.DataFrame, key: str) -> list[float]:
    """The numeric values a searched parameter could take: its declared choices or range, else those seen."""
    spec = info.space.get(key, {})
    if spec.get("choices"):
        values = [number(v) for v in spec["choices"]]
    elif spec.get("low") is not None and spec.get("high") is not None:
        values = [number(spec["low"]), number(spec["high"])]
    else:
        values = [number(v) for v in configs[key].dropna()] if key in configs else []
    return sorted({v for v in values if not math.isnan(v)})


def grid_edges(info: SweepInfo, configs: pd.DataFrame, keys: list[str]) -> list[str]:
    """Warnings for each numeric searched value whose best configuration sits at the smallest or largest
    value searched: the optimum may lie outside the grid."""
    best = configs.iloc[0]
    out = []
    for key in keys:
        values = searched_values(info, configs, key)
        value = number(best.get(key))
        if len(values) < 2 or math.isnan(value):
            continue
        if value <= values[0]:
            out.append(
                f"The best configuration uses the smallest {key} searched ({fmt(value)}); a smaller "
                f"value may be as good or better: extend the grid below it."
            )
        elif value >= values[-1]:
            out.append(
                f"The best configuration uses the largest {key} searched ({fmt(value)}); the optimum "
                f"may lie beyond it: extend the grid above it."
            )
    return out


@dataclass
class AlphaView:
    """How much of the variance of the metric across runs each scale knob explains."""

    shares: dict[str, float] = field(default_factory=dict)
    """factor -> eta squared (r, lora_alpha, alpha_over_r, targets where they vary)."""
    alpha_explains: bool = False
    """lora_alpha explains clearly more than r (and alpha and r both varied)."""


def alpha_view(runs: pd.DataFrame, metric: str) -> AlphaView:
    """eta squared of r, lora_alpha and alpha/r (and targets) on the runs' metric: when alpha explains
    clearly more than r, the differences come from the scale, not the rank."""
    view = AlphaView()
    for factor in ("r", "lora_alpha", "alpha_over_r", "targets"):
        if factor in runs and runs[factor].nunique() > 1:
            share = variance_explained(runs, factor, f"metrics.{metric}")
            if not math.isnan(share):
                view.shares[factor] = share
    r, alpha = view.shares.get("r"), view.shares.get("lora_alpha")
    view.alpha_explains = r is not None and alpha is not None and alpha > r + 0.1
    return view


# -- baselines ---------------------------------------------------------------------------------------

RECOVERY_METRIC = "eval_loss"


def baseline_rows(baselines: pd.DataFrame, metrics: list[str], confidence: float) -> pd.DataFrame:
    """One row per baseline kind: mean, interval and n of each metric over its runs."""
    rows = []
    for kind, members in baselines.groupby("baseline", sort=False):
        row: dict[str, Any] = {
            "baseline": kind,
            "config": members["config"].iloc[0],
            "n": len(members),
            "run_id": members["run_id"].iloc[0],
        }
        for metric in metrics:
            col = f"metrics.{metric}"
            if col in members and members[col].notna().any():
                s = summarize(members[col], confidence)
                row[metric] = s["mean"]
                row[f"{metric} ±"] = s["ci_half"]
        rows.append(row)
    order = {names.BASELINE_ZERO_SHOT: 0, names.BASELINE_FULL_FT: 1}
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("baseline", key=lambda s: s.map(lambda b: order.get(b, 2))).reset_index(drop=True)


def recovered(
    runs: pd.DataFrame, baselines: pd.DataFrame, configs: pd.DataFrame, confidence: float = 0.95
) -> pd.DataFrame:
    """Share of full fine-tuning's gain over the zero-shot base each configuration recovers on eval loss:
    (zero_shot - lora) / (zero_shot - full_ft), with a bootstrap interval (scipy.stats.bootstrap, the
    configuration's and full fine-tuning's seeds resampled independently) where both have >= 2 seeds.
    Empty when either baseline is missing or full fine-tuning did not improve on the base."""
    column = f"metrics.{RECOVERY_METRIC}"
    cols = ["config", "recovered", "recovered_low", "recovered_high", "n"]
    if baselines.empty or column not in baselines:
        return pd.DataFrame(columns=cols)
    zero = pd.to_numeric(
        baselines.loc[baselines["baseline"] == names.BASELINE_ZERO_SHOT, column], errors="coerce"
    ).dropna()
    full = pd.to_numeric(
        baselines.loc[baselines["baseline"] == names.BASELINE_FULL_FT, column], errors="coerce"
    ).dropna()
    if zero.empty or full.empty or not zero.mean() > full.mean():
        return pd.DataFrame(columns=cols)
    z = float(zero.mean())
    samples = samples_of(runs, RECOVERY_METRIC)
    rows = []
    for _, config in configs.iterrows():
        values = samples.get(config["group"], np.array([]))
        if not len(values):
            continue
        point = (z - values.mean()) / (z - full.mean())
        low, high = bootstrap_ci(
            [values, full.to_numpy(float)], lambda a, b: (z - np.mean(a)) / (z - np.mean(b)), confidence
        )
        rows.append(
            {
                "config": config["config"],
                "recovered": point,
                "recovered_low": low,
                "recovered_high": high,
                "n": len(values),
            }
        )
    return pd.DataFrame(rows, columns=cols)


# -- the published findings --------------------------------------------------------------------------


@dataclass
class Finding:
    name: str
    verdict: str
    """holds | does not hold | inconclusive | not measured in this sweep"""
    evidence: str


def _slice(configs: pd.DataFrame, anchor: pd.Series, keys: list[str], free: tuple[str, ...]) -> pd.DataFrame:
    """The configurations equal to ``anchor`` on every key but the ``free`` ones."""
    mask = pd.Series(True, index=configs.index)
    for key in keys:
        if key in free or key not in configs:
            continue
        mask &= configs[key].astype(str) == str(anchor.get(key))
    return configs[mask]


def saturation(configs: pd.DataFrame, keys: list[str], swaps: Optional[float]) -> Finding:
    """Quality saturates in r: from some r on, every rank (the best configuration's other values held fixed)
    cannot be told apart from the best."""
    name = "Quality saturates in r"
    if "lora.r" not in keys or configs["r"].nunique() < 2:
        return Finding(name, NOT_MEASURED, "the sweep did not vary lora.r.")
    best = configs.iloc[0]
    line = _slice(configs, best, keys, ("lora.r",)).sort_values("r")
    if len(line) < 2:
        return Finding(name, NOT_MEASURED, "no two ranks share the best configuration's other values.")
    where = ", ".join(f"{k}={best[k]}" for k in keys if k != "lora.r" and k in best) or "the only setting"
    values = "; ".join(
        f"r={fmt(row['r'])}: {fmt(row['mean'])}"
        + (f" ± {fmt(row['ci_half'], 2)}" if not math.isnan(row["ci_half"]) else "")
        for _, row in line.iterrows()
    )
    if line["tie"].isna().any():
        return Finding(
            name,
            "inconclusive",
            f"at {where}: {values}; some ranks have a single seed, so the tie rule cannot decide (raise sweep.seeds).",
        )
    ties = line["tie"].astype(bool).to_numpy()
    start = len(ties)
    while start > 0 and ties[start - 1]:
        start -= 1
    designed = f" The task's designed change touches data.swaps = {fmt(swaps)} letter pairs." if swaps else ""
    if start == len(ties):  # the best rank itself is below the largest: the largest differs from the best
        return Finding(
            name, "does not hold", f"at {where}: {values}; the largest rank is worse than the best.{designed}"
        )
    r_sat = line["r"].iloc[start]
    relation = f" Saturation starts at r = {fmt(r_sat)}, r/swaps = {fmt(r_sat / swaps, 3)}." if swaps else ""
    if start == 0:
        return Finding(name, "holds", f"flat over every rank searched at {where}: {values}.{designed}{relation}")
    return Finding(
        name,
        "holds",
        f"from r = {fmt(r_sat)} on every rank is within noise of the best at {where}: {values}.{designed}{relation}",
    )


def _targets_name(value: Any) -> str:
    return str(value).replace(" ", "")


def targets_comparison(
    configs: pd.DataFrame, runs: pd.DataFrame, metric: str, direction: str, keys: list[str], alpha: float = 0.05
) -> Finding:
    """All linear layers against q,v at equal r and at (nearly) equal trainable parameters: holds when
    all_linear is better with Welch p < alpha at every rank run with both."""
    name = "All linear layers beat q,v"
    if "lora.targets" not in keys:
        return Finding(name, NOT_MEASURED, "the sweep did not vary lora.targets (run +sweep=targets).")
    qv = configs[configs["targets"].map(_targets_name) == "qv"]
    al = configs[configs["targets"].map(_targets_name) == "all_linear"]
    if qv.empty or al.empty:
        return Finding(name, NOT_MEASURED, "the sweep did not run both 'qv' and 'all_linear'.")
    samples = samples_of(runs, metric)
    sign = 1 if direction == "minimize" else -1
    lines, wins, undecided, total = [], 0, 0, 0
    for _, a in al.iterrows():
        match = _slice(qv, a, keys, ("lora.targets",))
        if match.empty:
            continue
        q = match.iloc[0]
        p = welch_p(samples[a["group"]], samples[q["group"]])
        better = sign * (q["mean"] - a["mean"]) > 0
        total += 1
        undecided += math.isnan(p)
        wins += bool(better and not math.isnan(p) and p < alpha)
        lines.append(
            f"r={fmt(a['r'])}: all_linear {fmt(a['mean'])} vs qv {fmt(q['mean'])} (Welch p = {fmt(p, 2) or 'n/a'})"
        )
    params = []
    if "trainable_params" in configs:
        for _, a in al.iterrows():
            # q,v configurations that differ only in r (and targets): the same scale, dropout...
            pool = _slice(qv, a, keys, ("lora.targets", "lora.r")).dropna(subset=["trainable_params"])
            if pool.empty or math.isnan(a.get("trainable_params", math.nan)):
                continue
            ratio = pool["trainable_params"] / a["trainable_params"]
            q = pool.loc[(np.log(ratio)).abs().idxmin()]
            if abs(math.log(q["trainable_params"] / a["trainable_params"])) <= math.log(1.25):
                p = welch_p(samples[a["group"]], samples[q["group"]])
                params.append(
                    f"{fmt(a['trainable_params'])} params: all_linear r={fmt(a['r'])} {fmt(a['mean'])} "
                    f"vs qv r={fmt(q['r'])} {fmt(q['mean'])} (Welch p = {fmt(p, 2) or 'n/a'})"
                )
    if not lines:
        return Finding(name, NOT_MEASURED, "no rank was run with both target sets and the same other values.")
    verdict = "holds" if wins == total else ("does not hold" if wins == 0 and not undecided else "inconclusive")
    equal = (
        ("; at equal trainable parameters (within 25%): " + "; ".join(params))
        if params
        else ("; equal trainable parameters: no pair within 25% of each other")
    )
    return Finding(
        name,
        verdict,
        f"at equal r, all_linear is better with Welch p < {alpha:g} in {wins} of {total}: "
        + "; ".join(lines)
        + equal
        + ".",
    )


def rslora_comparison(
    configs: pd.DataFrame, runs: pd.DataFrame, all_runs: pd.DataFrame, metric: str, keys: list[str]
) -> Finding:
    """rsLoRA (alpha/sqrt(r)) against alpha/r at the largest rank and scale both were run with: mean, spread
    over seeds and failed runs."""
    name = "rsLoRA trains more stably than alpha/r at large r"
    if "lora.use_rslora" not in keys or configs["use_rslora"].nunique() < 2:
        return Finding(name, NOT_MEASURED, "the sweep did not vary lora.use_rslora.")
    both = configs.groupby("r")["use_rslora"].nunique()
    ranks = both[both == 2].index
    if not len(ranks):
        return Finding(name, NOT_MEASURED, "no rank was run both with and without rsLoRA.")
    r = max(ranks)
    at_r = configs[configs["r"] == r]
    scale = "alpha_over_r" if at_r["alpha_over_r"].notna().any() else "lora_alpha"
    if at_r[scale].notna().any():
        common = at_r.groupby(scale)["use_rslora"].nunique()
        top = max(common[common == 2].index) if (common == 2).any() else None
        if top is None:
            return Finding(name, NOT_MEASURED, f"at r={fmt(r)} no scale was run both with and without rsLoRA.")
        pair = at_r[at_r[scale] == top]
        where = f"r={fmt(r)}, {scale}={fmt(top)}"
    else:
        pair, where = at_r, f"r={fmt(r)}"
    samples = samples_of(runs, metric)
    parts, stds = [], {}
    for flag, label in ((True, "rsLoRA"), (False, "alpha/r")):
        row = pair[pair["use_rslora"] == flag].iloc[0]
        values = samples[row["group"]]
        failed = all_runs[(all_runs["group"] == row["group"]) & all_runs["state"].isin(["FAIL", "PRUNED"])]
        stds[flag] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        parts.append(
            f"{label}: mean {fmt(row['mean'])}, seed std {fmt(stds[flag], 2) or 'n/a'} over "
            f"{len(values)} seeds, {len(failed)} failed or pruned"
        )
    if any(math.isnan(s) for s in stds.values()):
        return Finding(name, "inconclusive", f"at {where}: " + "; ".join(parts) + " (needs >= 2 seeds).")
    verdict = "holds" if stds[True] < stds[False] else "does not hold"
    return Finding(name, verdict, f"at {where}: " + "; ".join(parts) + ".")
