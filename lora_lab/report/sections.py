"""The report's sections, in order, and :func:`build_report` that reads a sweep and writes them.

Each section adds blocks to the document (:class:`~lora_lab.report.document.Doc`) and files (CSV tables,
text) to the report folder; plots go through ``doc.image`` so the HTML page embeds them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from mlflow.tracking import MlflowClient

from lora_lab import names
from lora_lab.config import ReportConfig
from lora_lab.report import findings, plots, tables
from lora_lab.report.decide import BEST, BEST_RULE, MARKS, Rule, centre
from lora_lab.report.document import Doc, write_atomically
from lora_lab.report.findings import NOT_MEASURED, Recommendation, fmt
from lora_lab.report.read import STATE_WORDS, SweepData, count_text, learning_curves, number, read_sweep, store_words

Files = dict[str, Any]
"""File name -> text, bytes or DataFrame (CSV), as write_atomically takes them."""

COST_LABELS = {"trainable_params": "trainable parameters", "peak_memory_mb": "peak GPU memory (MiB)"}


def rule_of(settings: ReportConfig) -> Rule:
    """The decision rule the report's settings describe."""
    return Rule(
        alpha=settings.alpha,
        ratio_margin=settings.ratio_margin,
        proportion_margin=settings.proportion_margin,
        difference_margin=settings.difference_margin,
        correction=settings.correction,
        confidence=settings.confidence,
    )


def spread(mean: float, low: float, high: float, n: int) -> str:
    """'0.0014 [0.0012, 0.0017]' (the configuration's interval) or '0.0014 (1 seed)'."""
    if math.isnan(low) or math.isnan(high):
        return f"{fmt(mean)} (1 seed)" if n < 2 else fmt(mean)
    return f"{fmt(mean)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def row_spread(row: pd.Series) -> str:
    return spread(row["mean"], row["ci_low"], row["ci_high"], row["n"])


def mark(row: pd.Series, first: bool = False) -> str:
    """' ★' best, ' ≈' equivalent, ' ✗' worse, ' ?' undecided."""
    decision = BEST if first else row.get("decision")
    return f" {MARKS[decision]}" if decision in MARKS else ""


CENTRE_WORDS = {
    "ratio": "the geometric mean over the seeds of one configuration, with its {level:.0%} t interval computed on "
    "the log scale (so it never reaches zero)",
    "proportion": "the share of the prompts scored, pooled over the seeds of one configuration, with its "
    "{level:.0%} Wilson interval (inside [0, 1])",
    "difference": "the mean over the seeds of one configuration, with its {level:.0%} t interval",
}


def display(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Selected columns of a table, renamed and formatted for people."""
    present = {k: v for k, v in columns.items() if k in frame}
    return pd.DataFrame({v: [fmt(x) for x in frame[k]] for k, v in present.items()})


def short(config: str) -> str:
    """A compact label: 'lora.r=8, alpha_over_r=2' -> 'r=8 alpha_over_r=2'."""
    return " ".join(
        part.split("=", 1)[0].split(".")[-1] + "=" + part.split("=", 1)[1] if "=" in part else part
        for part in config.split(", ")
    )


def seeds_words(configs: pd.DataFrame) -> str:
    low, high = int(configs["n"].min()), int(configs["n"].max())
    if high == 1:
        return "1 seed each"
    return f"{low} seeds each" if low == high else f"{low}–{high} seeds each"


def _values(runs: pd.DataFrame, key: str) -> list[float]:
    column = f"params.{key}"
    if column not in runs:
        return []
    return sorted({v for v in runs[column].map(number) if not math.isnan(v)})


def _listed(values: list[float]) -> str:
    if len(values) <= 3:
        return " / ".join(fmt(v) for v in values)
    return f"{fmt(values[0])} to {fmt(values[-1])} ({len(values)} values)"


def budget(data: SweepData) -> str:
    """The training budget every ranking holds for: steps, learning rate (or its range), batch size and
    how lora_alpha was set."""
    runs = data.ranked
    parts = []
    steps = _values(runs, "train.max_steps")
    parts.append(f"{_listed(steps)} optimizer steps" if steps else "train.max_steps not logged")
    rates = _values(runs, "train.learning_rate")
    if rates:
        searched = len(rates) > 1
        parts.append(f"learning rate {'searched over ' if searched else ''}{_listed(rates)}")
    batch = _values(runs, "train.batch_size")
    if batch:
        parts.append(f"batch size {_listed(batch)}")
    if "lora.lora_alpha" in data.info.derived:
        parts.append(f"lora_alpha = {data.info.derived['lora.lora_alpha']}")
    elif "lora.lora_alpha" in data.info.space:
        parts.append("lora_alpha searched")
    else:
        alphas = sorted(set(runs["lora_alpha"].dropna()))
        if len(alphas) == 1:
            parts.append(f"lora_alpha fixed at {fmt(alphas[0])} for every r (scale alpha/r = {fmt(alphas[0])}/r)")
        elif alphas:
            parts.append(f"lora_alpha {_listed(alphas)}")
    if runs["use_rslora"].any():
        parts.append("rsLoRA runs scale by alpha/√r")
    return ", ".join(parts)


# -- sections --------------------------------------------------------------------------------------------


def section_header(data: SweepData, doc: Doc, files: Files) -> None:
    """What was read, which metric, the budget every ranking holds for, how intervals and decisions are made."""
    arrow = "lower" if data.direction == "minimize" else "higher"
    stage = (
        " Runs of the confirm stage (top configurations re-run with fresh seeds) decide the ranking."
        if data.confirmed
        else ""
    )
    rule = rule_of(data.settings)
    scale = data.configs.attrs.get("scale", "ratio")
    compared = len(data.configs) - 1
    prompts = data.configs.attrs.get("prompts")
    level = rule.confidence
    doc.para(
        f"Experiment `{data.info.experiment.name}` in {store_words(data.client)}, read "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Metric **{data.metric}** ({data.direction}: {arrow} is better; "
        f'from {data.source}). "n" counts seeds of one configuration.{stage}'
    )
    doc.bullets(
        [
            f"**Budget** every ranking below holds for: {budget(data)}. A different budget (more steps, another "
            f"learning rate) can rank the configurations differently.",
            f"**Values**: {CENTRE_WORDS[scale].format(level=level)}.",
            f"**Best**: {BEST_RULE.format(level=level)}. Choosing the best from {len(data.configs)} noisy "
            f"configurations favours a lucky one; the comparisons below do not correct for that choice.",
            f"**Decisions** (marks ★ best, ≈ equivalent, ✗ worse, ? undecided): each of the {compared} other "
            f"configurations is {rule.describe(scale, compared, prompts)}.",
        ]
    )


def _seeds(n: float) -> str:
    return "" if n < 2 else f" (n={int(n)})"


def _names(frame: pd.DataFrame, limit: int = 6) -> str:
    shown = [f"`{c}`" for c in frame["config"].head(limit)]
    more = f" and {len(frame) - limit} more" if len(frame) > limit else ""
    return ", ".join(shown) + more


def _recommendation_text(data: SweepData, rec: Recommendation, rule: Rule, scale: str) -> str:
    """One bullet: the chosen configuration on one metric, against the best, and what the rule left open."""
    chosen, best = rec.chosen, rec.best
    cost = "trainable parameters" if rec.cost == "trainable_params" else "rank r"
    params = f", {fmt(chosen['trainable_params'])} trainable parameters" if rec.cost == "trainable_params" else ""
    margin = rule.margin_words(scale)
    text = f"**{rec.metric}**: use `{chosen['config']}`, {row_spread(chosen)}{_seeds(chosen['n'])}{params}. "
    if chosen["group"] == best["group"]:
        shown = len(rec.tied) - 1
        text += (
            f"It is the best; {shown} other configuration(s) are shown equivalent to it ({margin}), none with "
            f"fewer {cost}."
            if shown
            else f"It is the best, and no other configuration is shown equivalent to it ({margin})."
        )
    else:
        ratio = (
            f"; ratio to the best {fmt(chosen['estimate'], 3)} [{fmt(chosen['est_low'], 3)}, {fmt(chosen['est_high'], 3)}]"
            if scale == "ratio"
            else f"; difference to the best {fmt(chosen['estimate'], 3)} [{fmt(chosen['est_low'], 3)}, {fmt(chosen['est_high'], 3)}]"
        )
        text += (
            f"It is shown equivalent to the best, `{best['config']}` ({row_spread(best)}"
            + (f", {fmt(best['trainable_params'])} trainable parameters" if rec.cost == "trainable_params" else "")
            + f"), {margin}{ratio}; of the {len(rec.tied)} configurations shown equivalent (the best included) "
            f"it has the fewest {cost}."
        )
    if len(rec.open_cheaper):
        text += (
            f" Undecided: {len(rec.open_cheaper)} configuration(s) with fewer {cost} could be neither shown "
            f"equivalent nor shown worse ({_names(rec.open_cheaper)}); more seeds for them and for the best "
            f"would decide whether one of them should be used instead."
        )
    return text


def section_recommendation(data: SweepData, doc: Doc, files: Files) -> None:
    """Which configuration to use: the cheapest shown equivalent to the best, on the objective and on
    exact match, with the command; a warning at the grid's edge."""
    doc.heading("Recommendation")
    rule = rule_of(data.settings)
    doc.para(
        f"The cheapest configuration (fewest trainable parameters) shown equivalent to the best, over "
        f"{len(data.configs)} configurations with {seeds_words(data.configs)}; the best itself when no cheaper "
        f"one is shown equivalent."
    )
    rec = findings.recommend(data.configs, data.metric, data.direction)
    items = [_recommendation_text(data, rec, rule, data.configs.attrs.get("scale", "ratio"))]
    command = findings.recommended_command(data.ranked, rec)
    recs = [(rec, command)]
    em = "exact_match"
    if data.metric != em and f"metrics.{em}" in data.ranked and data.ranked[f"metrics.{em}"].notna().any():
        em_runs = data.ranked[pd.to_numeric(data.ranked[f"metrics.{em}"], errors="coerce").notna()]
        em_configs = tables.config_table(em_runs, em, "maximize", data.info, rule)
        em_rec = findings.recommend(em_configs, em, "maximize")
        items.append(_recommendation_text(data, em_rec, rule, em_configs.attrs.get("scale", "proportion")))
        recs.append((em_rec, findings.recommended_command(em_runs, em_rec)))
        files["recommendation_exact_match.csv"] = em_configs
    doc.bullets(items)
    doc.para(
        "Ready to run (the seed left at its default), then merged into its base for use (python -m lora_lab.export):"
    )
    steps: dict[str, list[str]] = {}  # each distinct command once, with the run directory of its first metric
    for r, c in recs:
        steps.setdefault(c, findings.with_merge(c, data.ranked, r, f"outputs/{data.settings.study}-{r.metric}"))
    doc.code("\n".join(line for lines in steps.values() for line in lines))
    files["recommended_command.txt"] = "\n".join(f"# {r.metric}: {r.chosen['config']}\n{c}" for r, c in recs) + "\n"
    keys = [k for k in tables.sampled_keys(data.ranked, data.info, derived=False)]
    warnings = findings.grid_edges(data.info, data.configs, keys)
    if int(data.configs["n"].max()) < 2:
        warnings.append(
            "Every configuration ran 1 seed: no interval exists and no configuration can be shown equivalent "
            "or worse. Rerun with sweep.seeds=3 before trusting the ranking."
        )
    doc.bullets([f"**Warning:** {w}" for w in warnings])


def section_summary(data: SweepData, doc: Doc, files: Files) -> None:
    """Counts of runs and configurations, and the best seed's command."""
    best = data.configs.iloc[0]
    trials = data.runs[data.runs["kind"] == names.KIND_TRIAL]
    run = data.ranked[data.ranked["run_id"] == best["best_run_id"]].iloc[0]
    command = findings.best_command(run)
    files["best_command.txt"] = command + "\n"
    doc.heading("Summary")
    stage = (
        f" Ranked by the confirm stage: {len(data.ranked)} confirm runs of {len(data.configs)} "
        f"configurations; the search stage's {len(data.done) - len(data.ranked)} runs are listed apart."
        if data.confirmed
        else ""
    )
    doc.bullets(
        [
            f"Trial runs: {len(trials)} ({count_text(trials)}); {len(data.done)} averaged.{stage}",
            f"Configurations: {len(data.configs)}, with {seeds_words(data.configs)}.",
            f"Best: `{best['config']}`, {data.metric} {row_spread(best)}"
            f"{_seeds(best['n'])}; its best seed is run {data.run_link(run['run_id'])}, reproduced by "
            f"[best_command.txt](best_command.txt).",
            f"Baseline runs: {len(data.baselines)}." if len(data.baselines) else "Baseline runs: none in this sweep.",
            "Sweep parent run(s): "
            + (", ".join(data.run_link(p) for p in data.info.parent_run_ids) or "none found")
            + ".",
        ]
    )


def section_baselines(data: SweepData, doc: Doc, files: Files) -> None:
    """Zero-shot and full fine-tuning rows, the share of full fine-tuning's gain each configuration
    recovers, and task-A retention / forgetting columns."""
    doc.heading("Baselines and forgetting")
    retain = tables.forgetting_metrics(pd.concat([data.ranked, data.baselines]))
    metrics = list(dict.fromkeys([data.metric, "eval_loss", "exact_match", "trainable_params", *retain]))
    rule = rule_of(data.settings)
    base = findings.baseline_rows(data.baselines, metrics, rule)
    files["baselines.csv"] = base
    if base.empty:
        doc.para(
            "No baseline runs (lora_lab.kind=baseline) in this sweep: zero-shot and full fine-tuning "
            f"are {NOT_MEASURED}."
        )
    else:
        shown = pd.DataFrame({"baseline": base["config"], "n": base["n"].astype(int)})
        for m in metrics:
            if m in base:
                shown[m] = [
                    spread(v, lo, hi, n)
                    for v, lo, hi, n in zip(base[m], base[f"{m} low"], base[f"{m} high"], base["n"], strict=True)
                ]
        doc.para(
            "Each baseline's value with its interval (geometric mean and log-scale interval for a loss, the "
            "pooled share of prompts with a Wilson interval for exact match)."
        )
        doc.table(shown)
    gains = findings.recovered(data.ranked, data.baselines, data.configs, rule)
    files["recovered.csv"] = gains
    if len(gains):
        level = 1 - 2 * rule.alpha
        doc.para(
            f"Each configuration against full fine-tuning on eval_loss: the ratio of its loss to full fine-tuning's "
            f"(geometric means; {level:.0%} log-scale interval) and the three-way decision with full fine-tuning "
            f"as the reference (equivalent: within {rule.ratio_margin:g}× of full fine-tuning; 'better': full "
            f"fine-tuning shown worse than it; not corrected for the number of configurations, as no choice rests "
            f"on it); "
            f"'recovered' is the share of full fine-tuning's gain over zero-shot measured in log loss "
            f"((log zero-shot − log LoRA) / (log zero-shot − log full FT), clipped to [0, 1]; bootstrap "
            f"interval over the seeds where both sides have ≥ 2)."
        )
        shown = pd.DataFrame(
            {
                "configuration": gains["config"],
                "loss / full FT": [
                    fmt(v, 3) + ("" if math.isnan(lo) else f" [{fmt(lo, 3)}, {fmt(hi, 3)}]")
                    for v, lo, hi in zip(gains["ratio"], gains["ratio_low"], gains["ratio_high"], strict=True)
                ],
                "against full FT": gains["versus_full_ft"],
                "recovered (log loss)": [f"{v:.0%}" for v in gains["recovered"]],
                "interval": [
                    "" if math.isnan(lo) else f"{lo:.0%} – {hi:.0%}"
                    for lo, hi in zip(gains["recovered_low"], gains["recovered_high"], strict=True)
                ],
                "n": gains["n"].astype(int),
            }
        )
        doc.table(shown)
    elif not base.empty:
        doc.para(
            "The comparison with full fine-tuning needs both baselines with eval_loss, and full fine-tuning "
            "better than zero-shot; not available here."
        )
    if retain:
        doc.para(
            "Task-A metrics (the base's pretraining task, held out) after adaptation: "
            f"{', '.join(retain)}; forget_* is how much worse than the base. Per configuration:"
        )
        cols = {"config": "configuration"}
        cols.update({m: m for m in retain if m in data.configs})
        doc.table(display(data.configs, cols))
    else:
        doc.para(f"Forgetting (task-A metrics, {names.RETAIN_PREFIX}* / {names.FORGET_PREFIX}*): {NOT_MEASURED}.")


def section_findings(data: SweepData, doc: Doc, files: Files) -> None:
    """Whether three published findings hold here, with numbers."""
    keys = tables.sampled_keys(data.ranked, data.info, derived=False)
    swaps_col = "params.data.swaps"
    swaps = None
    if swaps_col in data.ranked:
        values = data.ranked[swaps_col].map(findings.number).dropna().unique()
        swaps = float(values[0]) if len(values) == 1 else None
    rule = rule_of(data.settings)
    found = [
        findings.saturation(data.configs, keys, swaps),
        findings.targets_comparison(data.configs, data.ranked, data.metric, data.direction, keys, rule),
        findings.rslora_comparison(data.configs, data.ranked, data.runs, data.metric, keys, rule, data.direction),
        findings.lr_stable_in_r(data.configs, data.ranked, data.metric, data.direction, keys, rule),
        findings.lora_over_full_lr(data.configs, data.ranked, data.baselines, data.metric, keys, rule),
    ]
    files["findings.csv"] = pd.DataFrame(
        [{"finding": f.name, "verdict": f.verdict, "evidence": f.evidence} for f in found]
    )
    doc.heading("Findings")
    doc.para(
        f"Published findings checked on this sweep's {data.metric}, each with one of four outcomes: holds, does not "
        f"hold, inconclusive (and why) or not measured. Comparisons use the decision rule of the header "
        f"({rule.margin_words(data.configs.attrs.get('scale', 'ratio'))}); marks ★ ≈ ✗ ? as there."
    )
    doc.bullets([f"**{f.name}**: {f.verdict}. {f.evidence[0].upper() + f.evidence[1:]}" for f in found])
    analysis = findings.scale_analysis(data.ranked, data.metric, keys, rule.alpha)
    files["scale_anova.csv"] = analysis.table
    doc.heading("Rank against scale", level=3)
    doc.para(
        "Whether r or the scale alpha/r moves the metric, with both as factors of one analysis (and the other "
        "searched values as further factors), so an effect of one is not blamed on the other. "
        + analysis.text
        + (" [scale_anova.csv](scale_anova.csv)" if len(analysis.table) else "")
    )


def section_learning_rate(data: SweepData, doc: Doc, files: Files) -> None:
    """Rank × learning rate, with full fine-tuning at its own learning rates, as a table and a plot."""
    key = findings.LR_KEY
    if key not in data.configs or data.configs[key].nunique() < 2:
        return
    rule = rule_of(data.settings)
    grid = tables.grid_table(data.configs, "r", key)
    grid["rate"] = grid[key].map(number)
    full_rows = []
    for rate, values in sorted(findings.full_ft_cells(data.baselines, data.metric).items()):
        full_rows.append({"rate": rate, "n": len(values), **centre(values, "ratio", rule.confidence)})
    full = pd.DataFrame(full_rows, columns=["rate", "n", "mean", "ci_low", "ci_high"])
    files["rank_learning_rate.csv"] = grid
    files["full_ft_learning_rate.csv"] = full
    doc.heading("Rank × learning rate")
    doc.para(
        f"{data.metric} per rank r (rows) and learning rate (columns), marks as in the header; full fine-tuning "
        f"(its baselines, one per learning rate) in the last row. [rank_learning_rate.csv](rank_learning_rate.csv)"
    )
    shown = _grid_display(grid, "r", key)
    if len(full):
        cells = {
            fmt(r): spread(m, lo, hi, n)
            for r, m, lo, hi, n in full[["rate", "mean", "ci_low", "ci_high", "n"]].itertuples(index=False)
        }
        row = ["full fine-tuning"] + [cells.pop(c, "") for c in shown.columns[1:]]
        extra = {c: v for c, v in cells.items()}
        shown = pd.concat([shown, pd.DataFrame([row], columns=shown.columns)], ignore_index=True)
        for column, value in extra.items():  # full fine-tuning's own rates outside the LoRA grid
            shown[column] = [""] * (len(shown) - 1) + [value]
        order = sorted(shown.columns[1:], key=number)
        shown = shown[[shown.columns[0], *order]]
    doc.table(shown)
    doc.image(
        "learning_rate.png", f"{data.metric} against learning rate", plots.plot_learning_rate(grid, full, data.metric)
    )


def _grid_display(table: pd.DataFrame, row: str, col: str, col_choices: Optional[list[Any]] = None) -> pd.DataFrame:
    """A grid table pivoted for reading: mean ± half-width per cell, best bold with ★, ties with ≈."""
    rows = plots.axis_order(table[row])
    cols = plots.axis_order(table[col], col_choices)
    cells = {}
    for _, c in table.iterrows():
        text = row_spread(c) + mark(c, bool(c["best"]))
        if c["configs"] > 1:
            text += f" (best of {c['configs']})"
        cells[(c[row], c[col])] = f"**{text}**" if c["best"] else text
    data = [[f"{row}={fmt(r)}"] + [cells.get((r, c), "") for c in cols] for r in rows]
    return pd.DataFrame(data, columns=[f"{row} \\ {col}"] + [fmt(c) for c in cols])


def section_grids(data: SweepData, doc: Doc, files: Files) -> None:
    """Rank × alpha/r beside rank × lora_alpha (the fixed-alpha view), and rank × target-module set."""
    configs, metric = data.configs, data.metric
    views = [("alpha_over_r", "rank_alpha", "alpha/r")] if configs["alpha_over_r"].notna().any() else []
    views.append(("lora_alpha", "rank_lora_alpha", "lora_alpha (fixed alpha)"))
    for col, stem, words in views:
        grid = tables.grid_table(configs, "r", col)
        if grid.empty:
            continue
        files[f"{stem}.csv"] = grid
        doc.heading(f"Rank × {words}")
        doc.para(
            f"{metric} per rank r (rows) and {col} (columns): value [interval] as in the header; ★ best, ≈ shown "
            f"equivalent, ✗ shown worse, ? undecided; '(best of k)': the cell's best configuration among k that "
            f"differ in other searched values. Colour: distance to the best on a log scale. [{stem}.csv]({stem}.csv)"
        )
        doc.table(_grid_display(grid, "r", col))
        doc.image(f"{stem}.png", f"{metric} by rank and {col}", plots.plot_grid(grid, "r", col, metric))
    grid = tables.grid_table(configs, "r", "targets")
    files["rank_targets.csv"] = grid
    doc.heading("Rank × target modules")
    if grid.empty or grid["targets"].nunique() < 2:
        sets = ", ".join(map(str, configs["targets"].dropna().unique())) or "unknown"
        doc.para(f"Every configuration adapted the same modules ({sets}).")
        return
    choices = data.choices("lora.targets")
    doc.para(f"{metric} per rank r and target-module set (lora.targets). [rank_targets.csv](rank_targets.csv)")
    doc.table(_grid_display(grid, "r", "targets", choices))
    doc.image(
        "rank_targets.png",
        f"{metric} by rank and target modules",
        plots.plot_grid(grid, "r", "targets", metric, choices),
    )


def section_pareto(data: SweepData, doc: Doc, files: Files) -> None:
    """Quality against trainable parameters (deterministic), Pareto-optimal configurations numbered."""
    configs, metric = data.configs, data.metric
    doc.heading("Quality against trainable parameters")
    costs = ["trainable_params"]
    kinds = set(data.done["peak_memory_kind"].dropna().astype(str))
    if kinds and not any("rss" in k for k in kinds):
        costs.append("peak_memory_mb")
    doc.para(
        "Process memory (RSS) on a CPU and single-shot tokens/s vary with trial order and machine load "
        "more than with the configuration, so no front is drawn over them; their means are in "
        "[configs.csv](configs.csv)."
    )
    for cost in costs:
        if cost not in configs or configs[cost].isna().all():
            doc.para(f"No configuration logged {cost}.")
            continue
        front = tables.pareto_front(configs, "mean", cost, data.direction)
        optimal = front[front["pareto"]].sort_values(cost).reset_index(drop=True)
        files[f"pareto_{cost}.csv"] = front
        label = COST_LABELS[cost]
        doc.para(
            f"{len(optimal)} of {len(front)} configurations are Pareto-optimal for {metric} against {label} "
            f"(no other is as good on both and better on one). [pareto_{cost}.csv](pareto_{cost}.csv)"
        )
        shown = pd.DataFrame(
            {
                "#": range(1, len(optimal) + 1),
                "configuration": optimal["config"],
                label: [fmt(v) for v in optimal[cost]],
                metric: [row_spread(row) for _, row in optimal.iterrows()],
                "n": optimal["n"].astype(int),
            }
        )
        doc.table(shown)
        doc.image(f"pareto_{cost}.png", f"{metric} against {label}", plots.plot_pareto(front, metric, cost, label))


def section_learning_curves(data: SweepData, doc: Doc, files: Files) -> None:
    """eval_loss against step, one curve per configuration (mean over its seeds)."""
    runs = data.runs[(data.runs["kind"] == names.KIND_TRIAL) & data.runs["run_id"].isin(data.ranked["run_id"])]
    curves = learning_curves(data.client, runs)
    means = tables.curves_by_config(curves, confidence=data.settings.confidence)
    files["learning_curves.csv"] = curves
    files["learning_curves_by_config.csv"] = means
    doc.heading("Learning curves")
    if means.empty:
        doc.para("No eval_loss history was logged by the complete trials.")
        return
    steps = means.groupby("group")["step"].nunique()
    doc.para(
        f"eval_loss at each evaluation ({int(steps.min())}–{int(steps.max())} evaluations a run): one line "
        f"per configuration (colour: r; line style: alpha/r; markers tell apart configurations that share both), "
        f"the geometric mean over its seeds, shaded by its 95% interval on the log scale where it has ≥ 2 seeds. "
        f"[learning_curves_by_config.csv](learning_curves_by_config.csv)"
    )
    early, last, rho = tables.step_rank_correlation(curves)
    if not math.isnan(rho):
        doc.para(
            f"The configurations' ranking at step {fmt(early)} already correlates {rho:.2f} (Spearman) "
            f"with their ranking at step {fmt(last)}: "
            + (
                "the sweep largely ranks how fast each configuration learns."
                if rho > 0.9
                else "the ranking still changes during training."
            )
        )
    doc.image("learning_curves.png", "eval_loss against step per configuration", plots.plot_learning_curves(means))


def section_effective_rank(data: SweepData, doc: Doc, files: Files) -> None:
    """How much of the allotted rank the trained adapters use, per configuration."""
    ranks = tables.effective_rank_table(data.ranked, data.settings.confidence)
    files["effective_rank.csv"] = ranks
    doc.heading("Effective rank")
    if ranks.empty:
        doc.para("No complete trial logged effective_rank_mean.")
        return
    doc.para(
        "Allotted rank r against the effective rank of the trained adapters (effective_rank_mean) per "
        "configuration; 'used' is effective / allotted. [effective_rank.csv](effective_rank.csv)"
    )
    doc.image("effective_rank.png", "effective rank against allotted rank", plots.plot_effective_rank(ranks))


def section_importance(data: SweepData, doc: Doc, files: Files) -> None:
    """Optuna's fANOVA importances and Optuna's own views of the study rebuilt from the MLflow runs."""
    importance, notes = tables.param_importance(data.ranked, data.metric, data.direction, data.info)
    files["importance.csv"] = importance
    doc.heading("Parameter importance and Optuna's views")
    doc.para(
        "Importance depends on how the space is parameterised: searching alpha/r instead of lora_alpha, "
        "or r on a log scale, moves importance between the values; read it as a property of this search, "
        "not of LoRA."
    )
    if len(importance):
        doc.para(
            f"Share of the variance of {data.metric} explained by each searched value (Optuna's fANOVA "
            f"evaluator over the {len(data.ranked)} complete runs). [importance.csv](importance.csv)"
        )
        doc.table(display(importance, {"param": "parameter", "importance": "importance"}))
        doc.image("importance.png", "parameter importance", plots.plot_importance(importance, data.metric))
    name = data.info.sweep.get("sweep.study_name") or data.info.study
    study, study_notes = tables.stored_study(data.info.storage, name), []
    source = "the sweep's own Optuna study, opened from its storage"
    target = data.info.objectives[0]["metric"] if data.info.objectives else data.metric
    if study is None:
        study, study_notes = tables.rebuild_study(data.ranked, data.metric, data.direction, data.info)
        source = "the study rebuilt from the MLflow runs (each seed a trial, in trial order), as its storage is not reachable from here"
        target = data.metric
    if study is not None:
        views, view_notes = plots.optuna_views(study, target)
        doc.para(f"Optuna's own views (optuna.visualization.matplotlib) of {source}.")
        for name, (caption, png) in views.items():
            doc.image(name, caption, png)
        notes += view_notes
    for note in dict.fromkeys(notes + study_notes):
        doc.para(note)


def section_configs(data: SweepData, doc: Doc, files: Files) -> None:
    """Every configuration, best first, with run links."""
    configs = data.configs
    files["configs.csv"] = configs
    doc.heading("All configurations")
    scale = configs.attrs.get("scale", "ratio")
    against = "ratio to the best" if scale == "ratio" else "difference to the best"
    level = 1 - 2 * data.settings.alpha
    doc.para(
        f"The best first, then by {data.metric}; ★ best, ≈ shown equivalent, ✗ shown worse, ? undecided (see "
        f"the header). '{against}' is the comparison's estimate with its {level:.0%} interval; p-values are "
        f"corrected ({data.settings.correction}). [configs.csv](configs.csv)"
    )
    compare = [
        ""
        if i == 0 or math.isnan(row["estimate"])
        else fmt(row["estimate"], 3)
        + (
            ""
            if math.isnan(row.get("est_low", math.nan))
            else f" [{fmt(row['est_low'], 3)}, {fmt(row['est_high'], 3)}]"
        )
        for i, (_, row) in enumerate(configs.iterrows())
    ]
    shown = pd.DataFrame(
        {
            "configuration": [
                c + mark(row, i == 0)
                for i, (c, (_, row)) in enumerate(zip(configs["config"], configs.iterrows(), strict=True))
            ],
            data.metric: [row_spread(row) for _, row in configs.iterrows()],
            "n": configs["n"].astype(int),
            "decision": configs["decision"],
            against: compare,
            "p equivalent": [fmt(p, 2) for p in configs["p_equivalent"]],
            "p worse": [fmt(p, 2) for p in configs["p_worse"]],
        }
    )
    for col, label in (
        ("exact_match", "exact match"),
        ("trainable_params", "trainable params"),
        ("effective_rank_mean", "effective rank"),
    ):
        if col in configs and col != data.metric:
            shown[label] = [fmt(v) for v in configs[col]]
    shown["best seed's run"] = [data.run_link(r) for r in configs["best_run_id"]]
    doc.table(shown)
    if data.confirmed:
        search = data.done[~data.done["confirm"]]
        if len(search):
            table = tables.config_table(search, data.metric, data.direction, data.info, rule_of(data.settings))
            files["search_stage.csv"] = table
            doc.para(
                f"The search stage's own means ({len(search)} runs, {len(table)} configurations) are biased "
                f"toward lucky seeds by the selection; they are in [search_stage.csv](search_stage.csv)."
            )


def section_unfinished(data: SweepData, doc: Doc, files: Files) -> None:
    """Pruned, failed, killed, excluded and running runs: counted and listed, never averaged."""
    done_ids = set(data.done["run_id"])
    rest = tables.unfinished_table(data.runs, done_ids, data.metric)
    files["unfinished.csv"] = rest
    files["runs.csv"] = data.runs
    doc.heading("Runs not averaged")
    if rest.empty:
        doc.para("None: every run completed.")
        return
    by_state = ", ".join(
        f"{n} {STATE_WORDS.get(s.split(' ')[0], s)}"
        for s, n in rest["state"].map(lambda s: s.split(" (")[0]).value_counts().items()
    )
    doc.para(
        f"{len(rest)} run(s) were not averaged: {by_state}. Runs tagged {names.TAG_OUTCOME} (interrupted, "
        f"worker lost, duplicate) are excluded whatever their status. [unfinished.csv](unfinished.csv)"
    )
    shown = display(
        rest,
        {
            "trial": "trial",
            "state": "state",
            "status": "MLflow status",
            "config": "configuration",
            f"last {data.metric}": f"last {data.metric}",
            "error": "error",
        },
    )
    shown["run"] = [data.run_link(r) for r in rest["run_id"]]
    doc.table(shown)


SECTIONS = (
    section_header,
    section_recommendation,
    section_summary,
    section_baselines,
    section_findings,
    section_learning_rate,
    section_grids,
    section_pareto,
    section_learning_curves,
    section_effective_rank,
    section_importance,
    section_configs,
    section_unfinished,
)
"""The report's sections, in order; each adds blocks to the document and files to the folder."""


def build_report(settings: ReportConfig, client: Optional[MlflowClient] = None) -> Path:
    """Read the sweep from MLflow, compute every table and plot, and write ``<output_dir>/<study>/``.

    Returns the report folder. Raises UnknownSweepError / NoFinishedTrialsError when there is nothing to
    report on (both LoraLabError, so the CLI prints one paragraph and exits with code 2)."""
    data = read_sweep(settings, client or MlflowClient())
    data.configs = tables.config_table(data.ranked, data.metric, data.direction, data.info, rule_of(settings))
    doc, files = Doc(f"LoRA sweep report: {settings.study}"), {}
    for section in SECTIONS:
        section(data, doc, files)
    doc.heading("Files")
    doc.bullets([f"[{name}]({name})" for name in sorted(files)])
    files.update(doc.images)
    files["report.md"] = doc.markdown()
    files["report.html"] = doc.html()
    target = Path(settings.output_dir) / settings.study
    write_atomically(target, files)
    return target


def decision_lines(study: str, client: Optional[MlflowClient] = None, experiment: Optional[str] = None) -> list[str]:
    """The report's decision in two or three lines, for the end of a sweep: the best configuration's value
    with its interval, and the recommendation (the cheapest shown equivalent) or what would decide it.
    Default report settings; raises ReportError when there is nothing to decide on."""
    settings = ReportConfig(study=study, experiment=experiment)
    data = read_sweep(settings, client or MlflowClient())
    rule = rule_of(settings)
    configs = tables.config_table(data.ranked, data.metric, data.direction, data.info, rule)
    scale = configs.attrs.get("scale", "ratio")
    rec = findings.recommend(configs, data.metric, data.direction)
    best, chosen = rec.best, rec.chosen
    level = f"{rule.confidence:.0%}"
    centre = {"ratio": "geometric mean", "proportion": "share", "difference": "mean"}[scale]
    lines = [
        f"best configuration: {best['config']}, {data.metric} {row_spread(best)} ({centre} over {int(best['n'])} "
        f"seed(s), {level} interval)"
    ]
    command = findings.recommended_command(data.ranked, rec)
    if chosen["group"] != best["group"]:
        lines.append(f"recommended (cheapest shown equivalent, {rule.margin_words(scale)}): {command}")
    else:
        lines.append(f"recommended: the best itself, no cheaper configuration is shown equivalent: {command}")
    if len(rec.open_cheaper):
        lines.append(
            f"undecided: {len(rec.open_cheaper)} cheaper configuration(s) ({'; '.join(rec.open_cheaper['config'].head(4))}"
            f"{' ...' if len(rec.open_cheaper) > 4 else ''}); more seeds for them would decide"
        )
    return lines
