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
from lora_lab.report.decide import (
    EQUIVALENT,
    MARKS,
    PROPORTION_METRICS,
    UNDECIDED,
    WORSE,
    Rule,
    acceptable,
    centre,
    compare,
    decide,
    metric_scale,
    pairwise,
)
from lora_lab.report.read import SweepInfo, number
from lora_lab.report.stats import bootstrap_ci, two_way_anova
from lora_lab.report.tables import prompts_scored, samples_of

NOT_MEASURED = "not measured in this sweep"
INCONCLUSIVE = "inconclusive"


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
    """The cheapest configuration shown equivalent to the best on one metric (the best itself when none
    cheaper is)."""

    metric: str
    direction: str
    best: pd.Series
    chosen: pd.Series
    tied: pd.DataFrame
    """The best and every configuration shown equivalent to it, cheapest first."""
    undecided: int
    """Configurations neither shown equivalent nor shown worse."""
    cost: str
    """What 'cheapest' is measured in: trainable_params, else r."""
    open_cheaper: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Undecided configurations cheaper than the chosen one: more seeds for them (and the best) would
    decide whether one of them is the recommendation."""


def recommend(configs: pd.DataFrame, metric: str, direction: str) -> Recommendation:
    """From a config table (best first, with the ``decision`` column of :mod:`lora_lab.report.decide`):
    the configuration with the fewest trainable parameters (else the smallest r) among the best and those
    shown equivalent to it, the better centre breaking equal costs. Undecided configurations are never
    chosen; those cheaper than the choice are listed as what more seeds would decide."""
    cost = "trainable_params" if "trainable_params" in configs and configs["trainable_params"].notna().all() else "r"
    tied = configs[configs["decision"].map(acceptable)]
    tied = tied.assign(_order=range(len(tied))).sort_values([cost, "_order"], kind="stable").drop(columns="_order")
    chosen = tied.iloc[0]
    open_ = configs[configs["decision"] == UNDECIDED]
    cheaper = open_[open_[cost] < chosen[cost]] if cost in open_ else open_.iloc[0:0]
    return Recommendation(
        metric, direction, configs.iloc[0], chosen, tied, len(open_), cost, cheaper.sort_values(cost, kind="stable")
    )


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
class ScaleAnalysis:
    """Rank against scale: a two-way analysis of variance of the log metric with r and alpha/r as factors."""

    table: pd.DataFrame
    """One row per term: sum_sq, df, F, PR(>F), share of the total sum of squares."""
    text: str
    """What it shows, in words."""


def scale_analysis(runs: pd.DataFrame, metric: str, keys: list[str], alpha: float = 0.05) -> ScaleAnalysis:
    """Two-way analysis of variance of the metric (on the log scale when positive: a loss) over the runs,
    with r and the scale alpha/r (lora_alpha / r) as factors and the other searched values as further
    factors, so an effect of one is not blamed on the other; statsmodels' anova_lm (type 2)."""
    column = f"metrics.{metric}"
    values = pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(dtype=float)
    if values.dropna().empty or "r" not in runs:
        return ScaleAnalysis(pd.DataFrame(), f"r and alpha/r: {NOT_MEASURED}.")
    log = bool((values.dropna() > 0).all())
    data = pd.DataFrame(
        {"y": np.log(values) if log else values, "r": runs["r"], "alpha/r": runs["lora_alpha"] / runs["r"]}
    )
    others = []
    for key in keys:
        column = f"params.{names.SWEEP_PARAM_PREFIX}{key}"
        if key in ("lora.r", "alpha_over_r", "lora.lora_alpha") or column not in runs:
            continue
        data[key] = runs[column].astype(str)
        others.append(key)
    factors, lead = ["r", "alpha/r", *others], ""
    pairs = data[["r", "alpha/r"]].dropna().drop_duplicates()
    if data["r"].nunique() > 1 and len(pairs) == data["r"].nunique() == data["alpha/r"].nunique():
        factors.remove("alpha/r")  # one alpha/r per r: the two cannot be separated, r carries both
        lead = "alpha/r took one value per r here (a fixed lora_alpha), so r and alpha/r are confounded: the r term is their joint effect. "
    table, note = two_way_anova(data, "y", factors)
    note = lead + note
    scale = f"log {metric}" if log else metric
    if table.empty:
        return ScaleAnalysis(table, f"Two-way analysis of {scale} with r and alpha/r as factors: {note}".strip())
    effects = table[table["term"] != "Residual"]
    shown = "; ".join(
        f"{row['term']}: {row['share']:.0%} of the sum of squares (F = {fmt(row['F'], 3)}, p = {row['PR(>F)']:.2g})"
        for _, row in effects.iterrows()
    )
    significant = effects[effects["PR(>F)"] < alpha].sort_values("sum_sq", ascending=False)
    if significant.empty:
        verdict = f"no factor has an effect shown at p < {alpha:g}"
    else:
        verdict = "the effects shown at p < {:g}, largest first: {}".format(alpha, ", ".join(significant["term"]))
    return ScaleAnalysis(
        table,
        f"Two-way analysis of variance of {scale} over {len(data.dropna())} runs (statsmodels anova_lm, type 2): "
        f"{shown}. {note}So: {verdict}.",
    )


# -- baselines ---------------------------------------------------------------------------------------

RECOVERY_METRIC = "eval_loss"


def baseline_rows(baselines: pd.DataFrame, metrics: list[str], rule: Rule) -> pd.DataFrame:
    """One row per baseline kind: each loss's and proportion's centre and interval on its scale (geometric
    mean for a loss, pooled share for a proportion; see :func:`lora_lab.report.decide.centre`), the mean
    of other metrics (counts, costs), and n runs."""
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
                values = pd.to_numeric(members[col], errors="coerce").dropna().to_numpy(float)
                if metric in PROPORTION_METRICS or "loss" in metric:
                    s = centre(values, metric_scale(metric, values), rule.confidence, prompts_scored(members))
                else:  # a count or a cost: its mean, no interval
                    s = {"mean": float(np.mean(values)), "ci_low": math.nan, "ci_high": math.nan}
                row[metric] = s["mean"]
                row[f"{metric} low"] = s["ci_low"]
                row[f"{metric} high"] = s["ci_high"]
        rows.append(row)
    order = {names.BASELINE_ZERO_SHOT: 0, names.BASELINE_FULL_FT: 1}
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("baseline", key=lambda s: s.map(lambda b: order.get(b, 2))).reset_index(drop=True)


def full_ft_baselines(baselines: pd.DataFrame) -> pd.DataFrame:
    """The full fine-tuning baseline runs: named full_ft, or full_ft_<anything> (one per learning rate)."""
    if baselines.empty:
        return baselines
    kinds = baselines["baseline"].astype(str)
    return baselines[(kinds == names.BASELINE_FULL_FT) | kinds.str.startswith(names.BASELINE_FULL_FT + "_")]


def best_full_ft(baselines: pd.DataFrame, metric: str) -> np.ndarray:
    """The positive values of the full fine-tuning baseline with the lowest geometric mean (the best of its
    learning rates when several were run); empty when there is none."""
    column = f"metrics.{metric}"
    full = full_ft_baselines(baselines)
    if full.empty or column not in full:
        return np.array([])
    best = np.array([])
    for _, members in full.groupby("baseline"):
        values = pd.to_numeric(members[column], errors="coerce").dropna().to_numpy(float)
        values = values[values > 0]
        if len(values) and (not len(best) or np.mean(np.log(values)) < np.mean(np.log(best))):
            best = values
    return best


def _log_share(zero: float, lora, full) -> float:
    """Share of full fine-tuning's gain over zero-shot in log loss, clipped to [0, 1]."""
    share = (zero - float(np.mean(lora))) / (zero - float(np.mean(full)))
    return min(1.0, max(0.0, share))


def recovered(
    runs: pd.DataFrame, baselines: pd.DataFrame, configs: pd.DataFrame, rule: Optional[Rule] = None
) -> pd.DataFrame:
    """Each configuration against full fine-tuning on eval loss: the ratio of its loss to full fine-tuning's
    (geometric means, log-scale interval at 1 - 2 alpha) with the three-way decision against full
    fine-tuning as the reference (equivalent / worse / undecided, or 'better' when full fine-tuning is
    shown worse than it), and the share of full fine-tuning's gain over zero-shot it recovers, measured
    in log loss (so the zero-shot's large loss does not dominate) and clipped to [0, 1], with a bootstrap
    interval (scipy.stats.bootstrap, both sides' seeds resampled) where both have >= 2 seeds. Empty when
    either baseline is missing or full fine-tuning did not improve on the base."""
    rule = rule or Rule()
    column = f"metrics.{RECOVERY_METRIC}"
    cols = [
        "config",
        "ratio",
        "ratio_low",
        "ratio_high",
        "versus_full_ft",
        "recovered",
        "recovered_low",
        "recovered_high",
        "n",
    ]
    if baselines.empty or column not in baselines:
        return pd.DataFrame(columns=cols)

    def losses(kind: str) -> np.ndarray:
        values = pd.to_numeric(baselines.loc[baselines["baseline"] == kind, column], errors="coerce").dropna()
        return values[values > 0].to_numpy(float)

    zero, full = losses(names.BASELINE_ZERO_SHOT), best_full_ft(baselines, RECOVERY_METRIC)
    if not len(zero) or not len(full) or not np.mean(np.log(zero)) > np.mean(np.log(full)):
        return pd.DataFrame(columns=cols)
    z, log_full = float(np.mean(np.log(zero))), np.log(full)
    samples = samples_of(runs, RECOVERY_METRIC)
    rows = []
    for _, config in configs.iterrows():
        values = samples.get(config["group"], np.array([]))
        values = values[values > 0]
        if not len(values):
            continue
        against = compare(values, full, "ratio", "minimize", rule)
        reverse = compare(full, values, "ratio", "minimize", rule)
        if against["p_equivalent"] < rule.alpha:
            versus = EQUIVALENT
        elif against["p_worse"] < rule.alpha:
            versus = WORSE
        elif reverse["p_worse"] < rule.alpha:
            versus = "better"
        else:
            versus = UNDECIDED
        low, high = bootstrap_ci([np.log(values), log_full], lambda a, b: _log_share(z, a, b), rule.confidence)
        rows.append(
            {
                "config": config["config"],
                "ratio": against["estimate"],
                "ratio_low": against["est_low"],
                "ratio_high": against["est_high"],
                "versus_full_ft": versus,
                "recovered": _log_share(z, np.log(values), log_full),
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
    """Quality saturates in r: along the best configuration's other values, the smallest r from which every
    larger r searched is shown equivalent to the best. Inconclusive when the best sits at the largest r
    searched (a larger one may be better still) or a larger r is undecided; does not hold when a larger r
    than the best is shown worse."""
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
        + (f" [{fmt(row['ci_low'], 2)}, {fmt(row['ci_high'], 2)}]" if not math.isnan(row["ci_low"]) else " (1 seed)")
        + f" {MARKS.get(row['decision'], '')}"
        for _, row in line.iterrows()
    )
    designed = f" The task's designed change touches data.swaps = {fmt(swaps)} letter pairs." if swaps else ""
    above = line[line["r"] > best["r"]]
    if above.empty:
        return Finding(
            name,
            INCONCLUSIVE,
            f"at {where}: {values}. The best is at the largest r searched ({fmt(best['r'])}): a larger r may be "
            f"better still (grid edge); extend lora.r upward.{designed}",
        )
    worse = above[above["decision"] == WORSE]
    if len(worse):
        return Finding(
            name,
            "does not hold",
            f"at {where}: {values}; r = {', '.join(fmt(r) for r in worse['r'])}, above the best r = "
            f"{fmt(best['r'])}, is shown worse than the best.{designed}",
        )
    if (above["decision"] != EQUIVALENT).any():
        open_ = above[above["decision"] != EQUIVALENT]
        return Finding(
            name,
            INCONCLUSIVE,
            f"at {where}: {values}; r = {', '.join(fmt(r) for r in open_['r'])} above the best is undecided "
            f"(too few seeds for the margin): more seeds for these ranks would decide.{designed}",
        )
    ok = line["decision"].map(acceptable).to_numpy()
    start = len(ok)
    while start > 0 and ok[start - 1]:
        start -= 1
    r_sat = line["r"].iloc[start]
    relation = f" Saturation starts at r = {fmt(r_sat)}, r/swaps = {fmt(r_sat / swaps, 3)}." if swaps else ""
    return Finding(
        name,
        "holds",
        f"from r = {fmt(r_sat)} on, every rank searched is shown equivalent to the best at {where}: "
        f"{values}.{designed}{relation}",
    )


def _targets_name(value: Any) -> str:
    return str(value).replace(" ", "")


def _pair_words(result: dict[str, Any], scale: str) -> str:
    what = "ratio" if scale == "ratio" else "difference"
    interval = (
        ""
        if math.isnan(result.get("est_low", math.nan))
        else f" [{fmt(result['est_low'], 3)}, {fmt(result['est_high'], 3)}]"
    )
    return f"{what} {fmt(result['estimate'], 3)}{interval}: {result['decision']}"


def targets_comparison(
    configs: pd.DataFrame, runs: pd.DataFrame, metric: str, direction: str, keys: list[str], rule: Optional[Rule] = None
) -> Finding:
    """All linear layers against q,v at equal r (other values equal): q,v compared with all_linear as the
    reference by the three-way rule (Holm over the ranks). Holds when q,v is shown worse at every rank;
    does not hold when at some rank it is shown equivalent or better; inconclusive otherwise. Pairs at
    nearly equal trainable parameters are listed beside."""
    rule = rule or Rule()
    name = "All linear layers beat q,v"
    if "lora.targets" not in keys:
        return Finding(name, NOT_MEASURED, "the sweep did not vary lora.targets (run +sweep=targets).")
    qv = configs[configs["targets"].map(_targets_name) == "qv"]
    al = configs[configs["targets"].map(_targets_name) == "all_linear"]
    if qv.empty or al.empty:
        return Finding(name, NOT_MEASURED, "the sweep did not run both 'qv' and 'all_linear'.")
    samples = samples_of(runs, metric)
    scale = metric_scale(metric, np.concatenate(list(samples.values())))
    pairs, labels = [], []
    for _, a in al.sort_values("r").iterrows():
        match = _slice(qv, a, keys, ("lora.targets",))
        if match.empty:
            continue
        q = match.iloc[0]
        pairs.append((samples[q["group"]], samples[a["group"]]))
        labels.append(f"r={fmt(a['r'])}: q,v {fmt(q['mean'])} vs all_linear {fmt(a['mean'])}")
    if not pairs:
        return Finding(name, NOT_MEASURED, "no rank was run with both target sets and the same other values.")
    results = pairwise(pairs, scale, direction, rule)
    decisions = [r["decision"] for r in results]
    lines = [f"{label} (q,v / all_linear {_pair_words(r, scale)})" for label, r in zip(labels, results, strict=True)]
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
                params.append(
                    f"{fmt(a['trainable_params'])} params: all_linear r={fmt(a['r'])} {fmt(a['mean'])} "
                    f"vs q,v r={fmt(q['r'])} {fmt(q['mean'])}"
                )
    if all(d == WORSE for d in decisions):
        verdict = "holds"
    elif any(d in (EQUIVALENT, "better") for d in decisions):
        verdict = "does not hold"
    else:
        verdict = INCONCLUSIVE
    equal = (
        ("; at equal trainable parameters (within 25%): " + "; ".join(params))
        if params
        else "; equal trainable parameters: no pair within 25% of each other"
    )
    open_ = decisions.count(UNDECIDED)
    why = (
        f" {open_} of {len(decisions)} ranks undecided: more seeds would decide."
        if open_ and verdict == INCONCLUSIVE
        else ""
    )
    return Finding(
        name,
        verdict,
        f"at equal r, q,v is shown worse than all_linear beyond the margin ({rule.margin_words(scale)}, Holm over "
        f"{len(decisions)} ranks) in {decisions.count(WORSE)} of {len(decisions)}: "
        + "; ".join(lines)
        + equal
        + "."
        + why,
    )


def rslora_pairs(configs: pd.DataFrame, keys: list[str]) -> list[tuple[pd.Series, pd.Series, float]]:
    """(rsLoRA configuration, alpha/r configuration, effective scale) pairs at one rank whose effective
    scales meet: lora_alpha / sqrt(r) for rsLoRA equals lora_alpha / r for the other, within 1%; the other
    searched values equal."""
    rs = configs[configs["use_rslora"].astype(bool)]
    plain = configs[~configs["use_rslora"].astype(bool)]
    out = []
    for _, a in rs.iterrows():
        scale = a["lora_alpha"] / math.sqrt(a["r"])
        match = _slice(plain, a, keys, ("lora.use_rslora", "alpha_over_r", "lora.lora_alpha"))
        match = match[(match["r"] == a["r"]) & (np.abs(match["lora_alpha"] / match["r"] / scale - 1) < 0.01)]
        if len(match):
            out.append((a, match.iloc[0], scale))
    return sorted(out, key=lambda p: -p[0]["r"])


def rslora_comparison(
    configs: pd.DataFrame,
    runs: pd.DataFrame,
    all_runs: pd.DataFrame,
    metric: str,
    keys: list[str],
    rule: Optional[Rule] = None,
    direction: str = "minimize",
) -> Finding:
    """rsLoRA (alpha/sqrt(r)) against alpha/r at matched effective scale (the pair's scales meet), the
    three-way rule with alpha/r as the reference, Holm over the pairs: holds when rsLoRA is shown better at
    the largest rank matched, does not hold when shown equivalent or worse, inconclusive when undecided.
    Without a matched pair: not tested, as at equal alpha the two differ in scale (sqrt(r) times)."""
    rule = rule or Rule()
    name = "rsLoRA trains better than alpha/r at large r"
    if "lora.use_rslora" not in keys or configs["use_rslora"].nunique() < 2:
        return Finding(name, NOT_MEASURED, "the sweep did not vary lora.use_rslora.")
    pairs = rslora_pairs(configs, keys)
    if not pairs:
        top = configs["r"].max()
        return Finding(
            name,
            NOT_MEASURED,
            f"not tested: confounded by scale. No rsLoRA configuration has an alpha/r partner at the same effective "
            f"scale; at equal alpha rsLoRA's scale alpha/√r is √r times alpha/r's ({fmt(math.sqrt(top), 3)}× at "
            f"r={fmt(top)}), so a difference would be the scale's, not the scaling rule's.",
        )
    samples = samples_of(runs, metric)
    scale = metric_scale(metric, np.concatenate(list(samples.values())))
    results = pairwise([(samples[a["group"]], samples[b["group"]]) for a, b, _ in pairs], scale, direction, rule)
    lines = []
    for (a, b, s), result in zip(pairs, results, strict=True):
        failed = all_runs[all_runs["group"].isin([a["group"], b["group"]]) & all_runs["state"].isin(["FAIL", "PRUNED"])]
        lines.append(
            f"r={fmt(a['r'])} at scale {fmt(s, 3)}: rsLoRA (lora_alpha={fmt(a['lora_alpha'])}) {fmt(a['mean'])} vs "
            f"alpha/r (lora_alpha={fmt(b['lora_alpha'])}) {fmt(b['mean'])}, rsLoRA / alpha/r {_pair_words(result, scale)}"
            + (f", {len(failed)} failed or pruned" if len(failed) else "")
        )
    top = results[0]["decision"]
    verdict = {"better": "holds", EQUIVALENT: "does not hold", WORSE: "does not hold"}.get(top, INCONCLUSIVE)
    why = " More seeds would decide." if verdict == INCONCLUSIVE else ""
    same = (
        " At a matched scale the two are the same model (rsLoRA only changes the scale factor), so equivalence "
        "is what to expect."
        if top == EQUIVALENT
        else ""
    )
    return Finding(name, verdict, "at matched effective scale: " + "; ".join(lines) + "." + same + why)


# -- the learning rate (LoRA Without Regret, Schulman et al., Thinking Machines 2025) --------------------

LR_KEY = "train.learning_rate"
TEN_X_BAND = (10**0.5, 10**1.5)
"""'About 10x': a ratio between 3.2x and 32x (half a decade either side of 10)."""


def lr_optimum(cells: dict[float, np.ndarray]) -> tuple[float, bool]:
    """(log10 of the best learning rate, whether it sits at the grid's edge): the vertex of the parabola
    through the mean log loss at the best learning rate searched and its two neighbours (numpy.polyfit
    in log10 learning rate), kept between those neighbours; the edge value itself when the best is the
    smallest or largest rate searched."""
    rates = sorted(cells)
    x = np.log10(rates)
    y = np.array([float(np.mean(np.log(cells[r]))) for r in rates])
    i = int(np.argmin(y))
    if i == 0 or i == len(rates) - 1:
        return float(x[i]), True
    a, b, _ = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    vertex = -b / (2 * a) if a > 0 else x[i]
    return float(np.clip(vertex, x[i - 1], x[i + 1])), False


def _lr_cells(line: pd.DataFrame, samples: dict[str, np.ndarray]) -> dict[float, np.ndarray]:
    cells = {}
    for _, row in line.iterrows():
        values = samples.get(row["group"], np.array([]))
        values = values[values > 0]
        if len(values):
            cells[number(row[LR_KEY])] = values
    return cells


def _lines_by_r(configs: pd.DataFrame, keys: list[str]) -> dict[float, pd.DataFrame]:
    """Per rank, the configurations that differ from the best one's other values only in learning rate."""
    best = configs.iloc[0]
    out = {}
    for r, at_r in configs.groupby("r"):
        line = _slice(at_r, best, keys, ("lora.r", LR_KEY, "lora.lora_alpha"))
        if len(line) >= 3:
            out[float(r)] = line
    return out


def full_ft_cells(baselines: pd.DataFrame, metric: str) -> dict[float, np.ndarray]:
    """Full fine-tuning's positive values by learning rate (params.train.learning_rate of its runs)."""
    column = f"metrics.{metric}"
    full = full_ft_baselines(baselines)
    if full.empty or column not in full or f"params.{LR_KEY}" not in full:
        return {}
    cells: dict[float, np.ndarray] = {}
    for rate, members in full.groupby(full[f"params.{LR_KEY}"].map(number)):
        values = pd.to_numeric(members[column], errors="coerce").dropna().to_numpy(float)
        if len(values[values > 0]) and not math.isnan(rate):
            cells[float(rate)] = values[values > 0]
    return cells


def lr_stable_in_r(
    configs: pd.DataFrame, runs: pd.DataFrame, metric: str, direction: str, keys: list[str], rule: Optional[Rule] = None
) -> Finding:
    """The best learning rate barely moves with r at a fixed alpha: per rank, the learning rates are
    compared with that rank's best by the three-way rule. Does not hold when one rank's best learning
    rate is shown worse at another rank; holds when every rank's best is the best or shown equivalent at
    every other rank; inconclusive at a grid edge or with undecided cells."""
    rule = rule or Rule()
    name = "The best learning rate barely moves with r at a fixed alpha"
    if LR_KEY not in keys or "lora.r" not in keys:
        return Finding(
            name, NOT_MEASURED, "the sweep did not vary both lora.r and train.learning_rate (run +sweep=lr_rank)."
        )
    if configs["lora_alpha"].dropna().nunique() > 1:
        return Finding(
            name, NOT_MEASURED, "lora_alpha varied across the configurations; the finding is about a fixed alpha."
        )
    lines = _lines_by_r(configs, keys)
    if len(lines) < 2:
        return Finding(name, NOT_MEASURED, "fewer than two ranks were run with three or more learning rates.")
    samples = samples_of(runs, metric)
    decided, best_rate, words, edge = {}, {}, [], []
    for r, line in lines.items():
        cells = _lr_cells(line, samples)
        table = decide({f"{k:g}": v for k, v in cells.items()}, direction, "ratio", rule)
        decided[r] = dict(zip(table["group"].map(float), table["decision"], strict=True))
        best_rate[r] = float(table["group"].iloc[0])
        if best_rate[r] in (min(cells), max(cells)):
            edge.append(r)
        near = [k for k, d in decided[r].items() if d == EQUIVALENT]
        words.append(
            f"r={fmt(r)}: best {fmt(best_rate[r])}"
            + (f" (≈ at {', '.join(fmt(k) for k in sorted(near))})" if near else "")
        )
    spread = max(best_rate.values()) / min(best_rate.values())
    moved = [(r, q) for r in lines for q in lines if r != q and decided[q].get(best_rate[r]) == WORSE]
    open_ = [(r, q) for r in lines for q in lines if r != q and decided[q].get(best_rate[r]) == UNDECIDED]
    text = "best rate per rank: " + "; ".join(words) + f"; the best rates span {fmt(spread, 3)}×"
    if moved:
        r, q = moved[0]
        return Finding(
            name, "does not hold", f"{text}. r={fmt(r)}'s best rate {fmt(best_rate[r])} is shown worse at r={fmt(q)}."
        )
    if edge:
        return Finding(
            name,
            INCONCLUSIVE,
            f"{text}. The best rate of r = {', '.join(fmt(r) for r in edge)} is at the edge of the rates searched: "
            f"extend the grid.",
        )
    if open_:
        return Finding(
            name, INCONCLUSIVE, f"{text}. Some ranks' best rates are undecided at other ranks: more seeds would decide."
        )
    return Finding(
        name, "holds", f"{text}. Every rank's best rate is also the best or shown equivalent at every other rank."
    )


def lora_over_full_lr(
    configs: pd.DataFrame,
    runs: pd.DataFrame,
    baselines: pd.DataFrame,
    metric: str,
    keys: list[str],
    rule: Optional[Rule] = None,
) -> Finding:
    """LoRA's best learning rate is about 10x full fine-tuning's: the ratio of the two optima (each the
    vertex of a parabola in log learning rate, :func:`lr_optimum`) at the best configuration's rank, with
    a percentile bootstrap interval (scipy.stats.bootstrap, every cell's seeds resampled). Holds when the
    interval lies inside 3.2x-32x, does not hold when it lies outside, inconclusive when it straddles an
    end or an optimum sits at the edge of its grid."""
    rule = rule or Rule()
    name = "LoRA's best learning rate is about 10x full fine-tuning's"
    full = full_ft_cells(baselines, metric)
    if LR_KEY not in keys or len(full) < 3:
        return Finding(
            name,
            NOT_MEASURED,
            "needs train.learning_rate searched and full fine-tuning baselines at 3 or more learning rates (run +sweep=lr_rank).",
        )
    lines = _lines_by_r(configs, keys)
    if not lines:
        return Finding(name, NOT_MEASURED, "no rank was run with three or more learning rates.")
    samples = samples_of(runs, metric)
    full_opt, full_edge = lr_optimum(full)
    per_r = []
    for r, line in lines.items():
        opt, edge = lr_optimum(_lr_cells(line, samples))
        per_r.append(
            f"r={fmt(r)} {fmt(10**opt, 3)}"
            + (" (grid edge)" if edge else "")
            + f", ratio {fmt(10 ** (opt - full_opt), 3)}"
        )
    r = float(configs["r"].iloc[0])
    cells = _lr_cells(lines.get(r, next(iter(lines.values()))), samples)
    lora_opt, lora_edge = lr_optimum(cells)
    ratio = 10 ** (lora_opt - full_opt)
    data = [*cells.values(), *full.values()]
    k = len(cells)

    def statistic(*resampled):
        lora = dict(zip(cells, resampled[:k], strict=True))
        base = dict(zip(full, resampled[k:], strict=True))
        return lr_optimum(lora)[0] - lr_optimum(base)[0]

    low, high = bootstrap_ci(data, statistic, rule.confidence, n_resamples=999)
    low, high = 10**low, 10**high
    text = (
        f"best learning rate (parabola through the best rate searched and its neighbours, in log rate): full "
        f"fine-tuning {fmt(10**full_opt, 3)}" + (" (grid edge)" if full_edge else "") + f"; LoRA {'; '.join(per_r)}. "
        f"At the best configuration's r={fmt(r)}: ratio {fmt(ratio, 3)}, {rule.confidence:.0%} bootstrap interval "
        f"[{fmt(low, 3)}, {fmt(high, 3)}] (about 10x: within {fmt(TEN_X_BAND[0], 2)}–{fmt(TEN_X_BAND[1], 2)}x)"
    )
    if full_edge or lora_edge:
        return Finding(
            name, INCONCLUSIVE, text + ". An optimum sits at the edge of its grid: extend the rates searched."
        )
    if math.isnan(low):
        return Finding(name, INCONCLUSIVE, text + ". No interval: every cell needs 2 or more seeds.")
    if TEN_X_BAND[0] <= low and high <= TEN_X_BAND[1]:
        return Finding(name, "holds", text + ".")
    if high < TEN_X_BAND[0] or low > TEN_X_BAND[1]:
        return Finding(name, "does not hold", text + ".")
    return Finding(
        name,
        INCONCLUSIVE,
        text + ". The interval reaches across an end of the band: more seeds or a finer grid would decide.",
    )
