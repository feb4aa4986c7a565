"""The report's plots (matplotlib, object API on the Agg canvas) and Optuna's own views of the study.

Error bars and bands are t confidence intervals over the seeds of one configuration, drawn only where it
has two or more seeds; a single seed is labelled "1 seed" instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lora_lab.report.decide import MARKS
from lora_lab.report.document import png_bytes
from lora_lab.report.findings import fmt
from lora_lab.report.read import number


def figure(width: float = 6.4, height: float = 4.4) -> tuple[Figure, Any]:
    """A figure on the Agg canvas (no pyplot, no display, no global state)."""
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def axis_order(values: Iterable[Any], choices: Optional[list[Any]] = None) -> list[Any]:
    """Axis values in a natural order: numeric ascending, else the declared choices' order, else sorted."""
    values = list(dict.fromkeys(values))
    if all(not math.isnan(number(v)) for v in values):
        return sorted(values, key=number)
    if choices:
        order = {str(c): i for i, c in enumerate(choices)}
        return sorted(values, key=lambda v: (order.get(str(v), len(order)), str(v)))
    return sorted(values, key=str)


def gap_norm(gaps: np.ndarray) -> tuple[LogNorm, float]:
    """A log colour scale over the gaps to the best cell, so cells a hair from the best stay distinct from
    it and from each other; the best cell (gap 0) is drawn at the floor (half the smallest positive gap)."""
    positive = gaps[np.isfinite(gaps) & (gaps > 0)]
    floor = float(positive.min()) / 2 if len(positive) else 1e-6
    top = float(positive.max()) if len(positive) else floor * 10
    return LogNorm(vmin=floor, vmax=max(top, floor * 1.01)), floor


def plot_grid(table: pd.DataFrame, row: str, col: str, metric: str, col_choices: Optional[list[Any]] = None) -> Figure:
    """Heatmap of a grid table coloured by each cell's gap to the best on a log scale (dark = near the
    best), annotated with mean ± interval half-width (or '1 seed'); best cell outlined, ties marked ≈."""
    rows = axis_order(table[row])
    cols = axis_order(table[col], col_choices)
    best = float(table.loc[table["best"], "mean"].iloc[0]) if table["best"].any() else float(table["mean"].iloc[0])
    gaps = np.full((len(rows), len(cols)), np.nan)
    for _, cell in table.iterrows():
        gaps[rows.index(cell[row]), cols.index(cell[col])] = abs(cell["mean"] - best)
    norm, floor = gap_norm(gaps)
    fig, ax = figure(1.8 + 1.3 * len(cols), 1.4 + 0.8 * len(rows))
    cmap = colormaps["viridis"]
    image = ax.imshow(np.ma.masked_invalid(np.maximum(gaps, floor)), cmap=cmap, norm=norm, aspect="auto")
    fig.colorbar(image, ax=ax, label=f"|{metric} − best| (log scale)")
    for _, cell in table.iterrows():
        i, j = rows.index(cell[row]), cols.index(cell[col])
        spread = (
            "1 seed"
            if math.isnan(cell["ci_low"])
            else f"[{fmt(cell['ci_low'], 2)}, {fmt(cell['ci_high'], 2)}] n={int(cell['n'])}"
        )
        mark = (
            " " + MARKS["best" if cell["best"] else cell["decision"]]
            if (cell["best"] or cell["decision"] in MARKS)
            else ""
        )
        red, green, blue, _ = cmap(norm(max(abs(cell["mean"] - best), floor)))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
        ax.text(
            j,
            i,
            f"{fmt(cell['mean'], 4)}{mark}\n{spread}",
            ha="center",
            va="center",
            fontsize=7.5,
            color="white" if dark else "black",
            fontweight="bold" if cell["best"] else "normal",
        )
        if cell["best"]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(len(cols)), [fmt(c) for c in cols])
    ax.set_yticks(range(len(rows)), [fmt(r) for r in rows])
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    ax.set_title(f"{metric}: ★ best, ≈ equivalent, ✗ worse, ? undecided", fontsize=10)
    return fig


OFFSETS = ((6, 6), (6, -12), (-14, 6), (-14, -12))
"""Where successive point numbers go around their points (points of offset), so neighbours do not overlap."""


def plot_pareto(front: pd.DataFrame, metric: str, cost: str, label: str) -> Figure:
    """Configurations' mean quality against a deterministic cost: Pareto-optimal points numbered (the
    numbers index the table beside the plot) and joined; error bars are t intervals where n >= 2."""
    fig, ax = figure()
    for pareto, color, name in ((False, "tab:gray", "dominated"), (True, "tab:red", "Pareto-optimal")):
        part = front[front["pareto"] == pareto]
        many = part[part["n"] >= 2]
        one = part[part["n"] < 2]
        if len(many):
            ax.errorbar(
                many[cost],
                many["mean"],
                yerr=[(many["mean"] - many["ci_low"]).clip(lower=0), (many["ci_high"] - many["mean"]).clip(lower=0)],
                fmt="o",
                color=color,
                capsize=2,
                alpha=1 if pareto else 0.6,
                label=name,
            )
        if len(one):
            ax.plot(
                one[cost],
                one["mean"],
                "o" if not len(many) else "s",
                color=color,
                alpha=1 if pareto else 0.6,
                label=f"{name} (1 seed, no error bar)",
            )
    line = front[front["pareto"]].sort_values(cost)
    ax.plot(line[cost], line["mean"], "-", color="tab:red", alpha=0.4)
    for k, (_, point) in enumerate(line.iterrows()):
        dx, dy = OFFSETS[k % len(OFFSETS)]
        ax.annotate(
            str(k + 1),
            (point[cost], point["mean"]),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=8,
            color="tab:red",
            fontweight="bold",
        )
    positive = front[cost][front[cost] > 0]
    if len(positive) == len(front) and len(positive) and positive.max() / positive.min() > 20:
        ax.set_xscale("log")
    if (front["mean"] > 0).all():
        ax.set_yscale("log")  # a loss: ratios read as distances, and intervals stay above zero
    ax.set_xlabel(label)
    ax.set_ylabel(
        f"{metric} (geometric mean over seeds)" if (front["mean"] > 0).all() else f"{metric} (mean over seeds)"
    )
    ax.set_title(f"{metric} against {label} (numbers: table rows)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_effective_rank(table: pd.DataFrame) -> Figure:
    """Each configuration's mean effective rank against its allotted rank, and the r = r line."""
    fig, ax = figure()
    many = table[table["n"] >= 2]
    one = table[table["n"] < 2]
    if len(many):
        ax.errorbar(
            many["r"],
            many["mean"],
            yerr=many["ci_half"],
            fmt="o",
            color="tab:blue",
            capsize=2,
            alpha=0.7,
            label="configuration (mean, 95% CI over seeds)",
        )
    if len(one):
        ax.plot(one["r"], one["mean"], "s", color="tab:blue", alpha=0.7, label="configuration (1 seed)")
    ranks = sorted(table["r"].unique())
    ax.plot(ranks, ranks, "--", color="tab:gray", label="full use (effective = allotted)")
    if len(ranks) > 1 and ranks[0] > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [fmt(r) for r in ranks])
    ax.set_xlabel("allotted rank r")
    ax.set_ylabel("effective rank (mean over adapted modules)")
    ax.set_title("Rank allotted against rank used, per configuration")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = (None, "o", "s", "^", "v", "D", "x")


def plot_learning_curves(means: pd.DataFrame, metric: str = "eval_loss") -> Figure:
    """One curve per configuration (geometric mean over its seeds, band: its interval on the log scale
    where n >= 2): colour by r, line style by alpha/r, and a marker per configuration that shares both
    (another searched value, such as the learning rate), so no two configurations look alike."""
    fig, ax = figure(7.6, 4.8)
    ranks = sorted(means["r"].dropna().unique())
    scales = sorted(means["scale"].dropna().unique())
    cmap = colormaps["viridis"]
    color = {r: cmap(0.85 * i / max(len(ranks) - 1, 1)) for i, r in enumerate(ranks)}  # no pale yellow
    style = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(scales)}
    shared = means.groupby(["r", "scale"], dropna=False)["group"].nunique().max() > 1
    seen: dict[tuple, int] = {}
    for _, curve in means.groupby("group", sort=False):
        curve = curve.sort_values("step")
        r, s = curve["r"].iloc[0], curve["scale"].iloc[0]
        marker = MARKERS[seen.get((r, s), 0) % len(MARKERS)]
        seen[(r, s)] = seen.get((r, s), 0) + 1
        c = color.get(r, "tab:gray")
        ax.plot(
            curve["step"],
            curve["mean"],
            linestyle=style.get(s, "-"),
            marker=marker,
            markersize=3,
            color=c,
            linewidth=1.3,
            alpha=0.9,
            label=short_label(curve["config"].iloc[0]) if shared else None,  # several share r and alpha/r
        )
        band = curve[curve["n"] >= 2]
        if len(band):
            ax.fill_between(band["step"], band["ci_low"], band["ci_high"], color=c, alpha=0.10, linewidth=0)
    if not shared:
        for r in ranks:
            ax.plot([], [], "-", color=color[r], label=f"r={fmt(r)}")
        if len(scales) > 1:
            for s in scales:
                ax.plot([], [], linestyle=style[s], color="black", label=f"alpha/r={fmt(s)}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{metric} (geometric mean over seeds)")
    ax.set_title(f"{metric} during training, one line per configuration", fontsize=10)
    positive = means["mean"][means["mean"] > 0]
    if len(positive) == len(means) and len(positive) and positive.max() / positive.min() > 20:
        ax.set_yscale("log")
    ax.legend(fontsize=6 if shared else 7, ncol=3 if shared else 2)
    ax.grid(alpha=0.3)
    return fig


def short_label(config: str) -> str:
    """'lora.r=8, train.learning_rate=0.01' -> 'r=8 learning_rate=0.01'."""
    return " ".join(
        p.split("=", 1)[0].split(".")[-1] + "=" + p.split("=", 1)[1] for p in config.split(", ") if "=" in p
    )


def plot_importance(table: pd.DataFrame, metric: str) -> Figure:
    """Horizontal bars of the fANOVA importances, largest on top."""
    fig, ax = figure(6.4, 1.4 + 0.45 * len(table))
    ordered = table.iloc[::-1]
    ax.barh(ordered["param"], ordered["importance"], color="tab:blue")
    for y, value in enumerate(ordered["importance"]):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, float(table["importance"].max()) * 1.15))
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    ax.set_title("Parameter importance (depends on how the space is parameterised)")
    return fig


OPTUNA_VIEWS = (
    ("optuna_history.png", "plot_optimization_history", "optimization history"),
    ("optuna_slice.png", "plot_slice", "slice plot"),
    ("optuna_parallel.png", "plot_parallel_coordinate", "parallel coordinates"),
)
"""File name, ``optuna.visualization.matplotlib`` function and caption of each Optuna view. No contour plot:
it interpolates a surface over values that never ran; the slice plot shows every trial where it ran."""


def optuna_views(study, target_name: str) -> tuple[dict[str, tuple[str, bytes]], list[str]]:
    """Optuna's own matplotlib views of the study: file name -> (caption, PNG bytes), and notes on any view
    Optuna could not draw. A multi-objective study is shown on its first objective. Each figure is closed
    once rendered (these functions use pyplot)."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as views

    out: dict[str, tuple[str, bytes]] = {}
    notes: list[str] = []
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    for name, function, caption in OPTUNA_VIEWS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, and plots of constant values
                axes = getattr(views, function)(study, target=target, target_name=target_name)
        except (ValueError, RuntimeError, TypeError, ImportError) as exc:
            notes.append(f"Optuna could not draw its {caption}: {exc}")
            continue
        first = axes.flat[0] if isinstance(axes, np.ndarray) else axes
        fig = first.figure
        if isinstance(axes, np.ndarray):  # one panel per searched value (pair): room for their labels
            rows, cols = axes.shape if axes.ndim == 2 else (1, axes.size)
            fig.set_size_inches(max(6.4, 3.0 * cols), max(4.0, 2.8 * rows))
        try:
            out[name] = (caption, png_bytes(fig, dpi=100, bbox_inches="tight"))
        finally:
            plt.close(fig)
    return out, notes


def plot_learning_rate(grid: pd.DataFrame, full: pd.DataFrame, metric: str) -> Figure:
    """The metric against the learning rate on log-log axes: one line per rank (mean over seeds with its
    interval as error bars) and full fine-tuning's line; marks follow the three-way decision."""
    fig, ax = figure(6.8, 4.4)
    ranks = sorted(grid["r"].dropna().unique())
    cmap = colormaps["viridis"]
    for i, r in enumerate(ranks):
        line = grid[grid["r"] == r].sort_values("rate")
        color = cmap(0.85 * i / max(len(ranks) - 1, 1))
        low = (line["mean"] - line["ci_low"]).fillna(0).clip(lower=0)
        high = (line["ci_high"] - line["mean"]).fillna(0).clip(lower=0)
        ax.errorbar(
            line["rate"], line["mean"], yerr=[low, high], fmt="o-", color=color, capsize=2, label=f"LoRA r={fmt(r)}"
        )
    if len(full):
        full = full.sort_values("rate")
        low = (full["mean"] - full["ci_low"]).fillna(0).clip(lower=0)
        high = (full["ci_high"] - full["mean"]).fillna(0).clip(lower=0)
        ax.errorbar(
            full["rate"], full["mean"], yerr=[low, high], fmt="s--", color="black", capsize=2, label="full fine-tuning"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{metric} (geometric mean over seeds)")
    ax.set_title(f"{metric} against learning rate (bars: 95% interval)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig
