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
from lora_lab.report.document import Doc, write_atomically
from lora_lab.report.findings import NOT_MEASURED, Recommendation, fmt
from lora_lab.report.read import STATE_WORDS, SweepData, count_text, learning_curves, read_sweep, store_words
from lora_lab.report.stats import TieRule, is_tie

Files = dict[str, Any]
"""File name -> text, bytes or DataFrame (CSV), as write_atomically takes them."""

COST_LABELS = {"trainable_params": "trainable parameters", "peak_memory_mb": "peak GPU memory (MiB)"}


def tie_rule(settings: ReportConfig) -> TieRule:
    return TieRule(settings.tie_rule, settings.tie_alpha, settings.tolerance)


def spread(mean: float, half: float, n: int) -> str:
    """'0.2437 ± 0.0012' (half-width of the interval) or '0.2437 (1 seed)'."""
    if n < 2 or math.isnan(half):
        return f"{fmt(mean)} (1 seed)"
    return f"{fmt(mean)} ± {fmt(half, 2)}"


def mark(row: pd.Series, first: bool) -> str:
    return " ★" if first else (" ≈" if is_tie(row.get("tie")) else "")


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


# -- sections --------------------------------------------------------------------------------------------


def section_header(data: SweepData, doc: Doc, files: Files) -> None:
    """What was read, which metric, how intervals and ties are decided."""
    arrow = "lower" if data.direction == "minimize" else "higher"
    stage = (
        " Runs of the confirm stage (top configurations re-run with fresh seeds) decide the ranking."
        if data.confirmed
        else ""
    )
    doc.para(
        f"Experiment `{data.info.experiment.name}` in {store_words(data.client)}, read "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Metric **{data.metric}** ({data.direction}: {arrow} is better; "
        f"from {data.source}). Values are means over the seeds of one configuration; ± is the half-width of "
        f'the {data.settings.confidence:.0%} t confidence interval (scipy.stats); "n" counts seeds of one '
        f"configuration. A configuration cannot be told apart from the best (marked ≈) when "
        f"{tie_rule(data.settings).describe()}.{stage}"
    )


def _seeds(n: float) -> str:
    return "" if n < 2 else f" (n={int(n)})"


def _recommendation_text(data: SweepData, rec: Recommendation) -> str:
    """One bullet: the chosen configuration on one metric, against the best, and what the rule left open."""
    chosen, best = rec.chosen, rec.best
    cost = "trainable parameters" if rec.cost == "trainable_params" else "rank r"
    params = f", {fmt(chosen['trainable_params'])} trainable parameters" if rec.cost == "trainable_params" else ""
    text = f"**{rec.metric}**: use `{chosen['config']}`, {spread(chosen['mean'], chosen['ci_half'], chosen['n'])}{_seeds(chosen['n'])}{params}. "
    if chosen["group"] == best["group"]:
        text += (
            f"It is also the best mean; {len(rec.tied) - 1} other configuration(s) cannot be told apart from "
            f"it, none with fewer {cost}."
        )
    else:
        text += (
            f"The best mean is `{best['config']}`, {spread(best['mean'], best['ci_half'], best['n'])}"
            + (f" with {fmt(best['trainable_params'])} trainable parameters" if rec.cost == "trainable_params" else "")
            + f"; {len(rec.tied)} configuration(s) including it cannot be told apart from it, and this one has "
            f"the fewest {cost}."
        )
    if rec.undecided:
        text += (
            f" {rec.undecided} configuration(s) have a single seed on one side, so the welch rule cannot "
            f"compare them with the best; they are never recommended (raise sweep.seeds, or set "
            f"tie_rule=relative)."
        )
    return text


def section_recommendation(data: SweepData, doc: Doc, files: Files) -> None:
    """Which configuration to use: the cheapest that cannot be told apart from the best, on the objective
    and on exact match, with the command; warnings about the grid edge and about alpha against r."""
    doc.heading("Recommendation")
    doc.para(
        f"The cheapest configuration (fewest trainable parameters) that cannot be told apart from the best, "
        f"over {len(data.configs)} configurations with {seeds_words(data.configs)}."
    )
    rec = findings.recommend(data.configs, data.metric, data.direction)
    items = [_recommendation_text(data, rec)]
    command = findings.recommended_command(data.ranked, rec)
    recs = [(rec, command)]
    em = "exact_match"
    if data.metric != em and f"metrics.{em}" in data.ranked and data.ranked[f"metrics.{em}"].notna().any():
        em_runs = data.ranked[pd.to_numeric(data.ranked[f"metrics.{em}"], errors="coerce").notna()]
        em_configs = tables.config_table(
            em_runs, em, "maximize", data.info, data.settings.confidence, tie_rule(data.settings)
        )
        em_rec = findings.recommend(em_configs, em, "maximize")
        items.append(_recommendation_text(data, em_rec))
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
    view = findings.alpha_view(data.ranked, data.metric)
    if view.shares:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(view.shares.items(), key=lambda kv: -kv[1]))
        if view.alpha_explains:
            warnings.append(
                f"Alpha, not r, explains the differences: share of the variance of {data.metric} "
                f"across runs explained by each value alone: {shares}. Compare the fixed-alpha view "
                f"(rank × lora_alpha) with the fixed-alpha/r view below."
            )
        else:
            warnings.append(
                f"Share of the variance of {data.metric} across runs explained by each value alone: {shares}."
            )
    if int(data.configs["n"].max()) < 2:
        warnings.append(
            "Every configuration ran 1 seed: no interval exists and no rule can tell configurations "
            "apart. Rerun with sweep.seeds=3 before trusting the ranking."
        )
    if warnings:
        doc.bullets(
            [
                f"**Warning:** {w}" if "extend the grid" in w or "Alpha, not r" in w or "1 seed" in w else w
                for w in warnings
            ]
        )


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
            f"Best mean: `{best['config']}`, {data.metric} {spread(best['mean'], best['ci_half'], best['n'])}"
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
    base = findings.baseline_rows(data.baselines, metrics, data.settings.confidence)
    files["baselines.csv"] = base
    if base.empty:
        doc.para(
            "No baseline runs (lora_lab.kind=baseline) in this sweep: zero-shot and full fine-tuning "
            f"are {NOT_MEASURED}."
        )
    else:
        shown = {"config": "baseline", "n": "n"}
        shown.update({m: m for m in metrics if m in base})
        doc.table(display(base, shown))
    gains = findings.recovered(data.ranked, data.baselines, data.configs, data.settings.confidence)
    files["recovered.csv"] = gains
    if len(gains):
        doc.para(
            "Share of full fine-tuning's gain each configuration recovers on eval_loss: (zero-shot − LoRA) / "
            "(zero-shot − full fine-tuning); 1 = as good as full fine-tuning. Interval: bootstrap "
            "(scipy.stats.bootstrap) over the seeds, where both sides have ≥ 2."
        )
        shown = pd.DataFrame(
            {
                "configuration": gains["config"],
                "recovered": [f"{v:.0%}" for v in gains["recovered"]],
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
            "The recovered share needs both baselines with eval_loss, and full fine-tuning better than "
            "zero-shot; not available here."
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
    found = [
        findings.saturation(data.configs, keys, swaps),
        findings.targets_comparison(
            data.configs, data.ranked, data.metric, data.direction, keys, data.settings.tie_alpha
        ),
        findings.rslora_comparison(data.configs, data.ranked, data.runs, data.metric, keys),
    ]
    files["findings.csv"] = pd.DataFrame(
        [{"finding": f.name, "verdict": f.verdict, "evidence": f.evidence} for f in found]
    )
    doc.heading("Findings")
    doc.para(f"Published findings checked on this sweep's {data.metric} (± as above; Welch p two-sided).")
    doc.bullets([f"**{f.name}**: {f.verdict}. {f.evidence[0].upper() + f.evidence[1:]}" for f in found])


def _grid_display(table: pd.DataFrame, row: str, col: str, col_choices: Optional[list[Any]] = None) -> pd.DataFrame:
    """A grid table pivoted for reading: mean ± half-width per cell, best bold with ★, ties with ≈."""
    rows = plots.axis_order(table[row])
    cols = plots.axis_order(table[col], col_choices)
    cells = {}
    for _, c in table.iterrows():
        text = spread(c["mean"], c["ci_half"], c["n"]) + mark(c, bool(c["best"]))
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
            f"{metric} per rank r (rows) and {col} (columns): mean ± CI half-width; ★ best, ≈ cannot be "
            f"told apart from it; '(best of k)': the cell's best configuration among k that differ in "
            f"other searched values. Colour: distance to the best on a log scale. [{stem}.csv]({stem}.csv)"
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
                metric: [
                    spread(m, h, n) for m, h, n in zip(optimal["mean"], optimal["ci_half"], optimal["n"], strict=True)
                ],
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
        f"per configuration, the mean over its seeds, shaded by the 95% CI where it has ≥ 2 seeds. "
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
    doc.para(f"Best first by mean {data.metric}; ★ best, ≈ cannot be told apart from it. [configs.csv](configs.csv)")
    shown = pd.DataFrame(
        {
            "configuration": [
                c + mark(row, i == 0)
                for i, (c, (_, row)) in enumerate(zip(configs["config"], configs.iterrows(), strict=True))
            ],
            data.metric: [
                spread(m, h, n) for m, h, n in zip(configs["mean"], configs["ci_half"], configs["n"], strict=True)
            ],
            "n": configs["n"].astype(int),
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
            table = tables.config_table(search, data.metric, data.direction, data.info, data.settings.confidence)
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
    data.configs = tables.config_table(
        data.ranked, data.metric, data.direction, data.info, settings.confidence, tie_rule(settings)
    )
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
