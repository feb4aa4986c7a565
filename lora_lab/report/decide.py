"""Decisions against the best configuration, each of three kinds: equivalent, worse or undecided.

A configuration is compared with the best on the scale its metric lives on:

* ``ratio``: a positive metric such as a loss. Seeds are compared on the log scale (Welch's t on log
  values), so the difference is a ratio of geometric means and its interval never reaches zero.
* ``proportion``: exact match or token accuracy, a share of the held-out prompts scored. The prompts of
  every seed are pooled (count and number scored): a configuration's interval is Wilson's, the tests are
  score tests of two independent proportions and the difference's interval is Newcomb's, so intervals
  stay in [0, 1] (and [-1, 1] for a difference). Pooling counts prompt-to-prompt noise, not the spread
  between seeds beyond it.
* ``difference``: any other metric, compared as a difference of means (Welch's t).

"Equivalent" means the equivalence test (TOST: two one-sided tests, from statsmodels) shows the
difference lies inside the margin; "worse" means a one-sided test shows it lies beyond the margin on the
bad side; everything else is "undecided". The p-values of each kind are corrected for the number of
comparisons with Holm's method (``statsmodels.stats.multitest.multipletests``).

The best configuration is chosen so that one lucky seed cannot make a noisy configuration the reference:
among configurations with at least two seeds, the one whose confidence interval's pessimistic end
(the upper end for a metric to minimise) is best; with no such configuration, the best centre.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
    tost_proportions_2indep,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind, ttost_ind

from lora_lab import names

SCALES = ("ratio", "proportion", "difference")
CORRECTIONS = ("holm", "none")

BEST, EQUIVALENT, WORSE, UNDECIDED = "best", "equivalent", "worse", "undecided"
DECISIONS = (BEST, EQUIVALENT, WORSE, UNDECIDED)
MARKS = {BEST: "★", EQUIVALENT: "≈", WORSE: "✗", UNDECIDED: "?"}
"""How each decision is marked in tables and plots."""

PROPORTION_METRICS = {
    "exact_match",
    "eval_token_accuracy",
    f"{names.RETAIN_PREFIX}exact_match",
    f"{names.RETAIN_PREFIX}token_accuracy",
}
"""Metrics that are a share of held-out prompts scored (compared as proportions)."""


def metric_scale(metric: str, values: Optional[np.ndarray] = None) -> str:
    """The scale a metric is compared on: proportion for the shares of prompts, ratio for a metric that
    is positive in every run (losses), difference otherwise."""
    if metric in PROPORTION_METRICS:
        return "proportion"
    if values is not None and len(values) and bool(np.all(np.asarray(values, float) > 0)):
        return "ratio"
    return "difference"


@dataclass(frozen=True)
class Rule:
    """The margins and error rate of the decisions (the report's settings)."""

    alpha: float = 0.05
    """Error rate of each one-sided test; an interval at 1 - 2 alpha matches the TOST decision."""
    ratio_margin: float = 1.25
    """Equivalent: within this factor of the best on a ratio scale (1.25: at most 25% worse)."""
    proportion_margin: float = 0.02
    """Equivalent: within this many points (a share, 0.02 = 2 points) of the best proportion."""
    difference_margin: float = 0.01
    """Equivalent: within this difference of the best mean, in the metric's units."""
    correction: str = "holm"
    """holm: p-values corrected for the number of comparisons; none: each comparison on its own."""
    confidence: float = 0.95
    """Level of each configuration's own interval."""

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction {self.correction!r}: one of {', '.join(CORRECTIONS)}")

    def margin(self, scale: str) -> float:
        """The margin on the scale the test runs on (log of the ratio margin for ratios)."""
        if scale == "ratio":
            return math.log(self.ratio_margin)
        return self.proportion_margin if scale == "proportion" else self.difference_margin

    def margin_words(self, scale: str) -> str:
        if scale == "ratio":
            return f"within {self.ratio_margin:g}× of the best"
        if scale == "proportion":
            return f"within {self.proportion_margin:g} (absolute share) of the best"
        return f"within {self.difference_margin:g} (metric units) of the best"

    def describe(self, scale: str, compared: int, prompts: Optional[int] = None) -> str:
        """The rule in words, for the report's header and the recommendation."""
        how = {
            "ratio": "ratio of geometric means over seeds (Welch's t on log values)",
            "proportion": (
                "difference of proportions, every seed's prompts pooled"
                + (f" ({prompts} prompts scored per seed)" if prompts else "")
                + " (score tests of two independent proportions, Newcomb interval of the difference)"
            ),
            "difference": "difference of means over seeds (Welch's t)",
        }[scale]
        correction = (
            f"Holm-corrected for the {compared} comparisons with the best (statsmodels multipletests)"
            if self.correction == "holm"
            else f"not corrected for the {compared} comparisons with the best (correction=none)"
        )
        level = 1 - 2 * self.alpha
        return (
            f"compared with the best as a {how}: **equivalent** when the equivalence test (TOST) shows the "
            f"difference {self.margin_words(scale)} (margin), **worse** when a one-sided test shows it beyond "
            f"the margin, otherwise **undecided**; each test at α = {self.alpha:g}, {correction}; the interval "
            f"shown for a comparison is the {level:.0%} interval that matches the uncorrected TOST"
        )


def _finite(values) -> np.ndarray:
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    return array[np.isfinite(array)]


def _counts(values: np.ndarray, prompts: Optional[int]) -> tuple[int, int]:
    """(prompts answered right, prompts scored) over every seed; without a known prompt count each seed
    counts as one prompt (the widest interval)."""
    per_seed = prompts or 1
    return int(round(float(np.sum(values)) * per_seed)), per_seed * len(values)


def centre(values, scale: str, confidence: float = 0.95, prompts: Optional[int] = None) -> dict[str, float]:
    """A configuration's value on its scale: mean (geometric for ratios, pooled share for proportions,
    arithmetic otherwise), its confidence interval (inside the metric's range), std and n seeds."""
    x = _finite(values)
    n = len(x)
    out = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "std": math.nan, "n": n, "nobs": math.nan}
    if not n:
        return out
    out["std"] = float(np.std(x, ddof=1)) if n >= 2 else math.nan
    if scale == "proportion":
        count, nobs = _counts(np.clip(x, 0.0, 1.0), prompts)
        low, high = proportion_confint(count, nobs, alpha=1 - confidence, method="wilson")
        low, high = (0.0 if low < 1e-12 else float(low)), (1.0 if high > 1 - 1e-12 else float(high))  # rounding
        out.update(mean=count / nobs, ci_low=low, ci_high=high, nobs=nobs)
        return out
    data = np.log(x) if scale == "ratio" else x
    mean = float(np.mean(data))
    if n >= 2:
        sem = float(stats.sem(data))
        low, high = (mean, mean) if sem == 0 else stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    else:
        low = high = math.nan
    back = np.exp if scale == "ratio" else (lambda v: v)
    out.update(mean=float(back(mean)), ci_low=float(back(low)), ci_high=float(back(high)))
    return out


def compare(
    candidate,
    best,
    scale: str,
    direction: str,
    rule: Rule,
    prompts: tuple[Optional[int], Optional[int]] = (None, None),
) -> dict[str, float]:
    """One configuration against the best: the estimate (ratio candidate / best, or difference), its
    1 - 2 alpha interval, and the uncorrected p-values of equivalence (TOST) and of being worse than the
    margin. NaN p-values when either side has fewer than two seeds (a proportion needs one)."""
    x, y = _finite(candidate), _finite(best)
    m = rule.margin(scale)
    out = {
        "estimate": math.nan,
        "est_low": math.nan,
        "est_high": math.nan,
        "p_equivalent": math.nan,
        "p_worse": math.nan,
    }
    if not len(x) or not len(y):
        return out
    if scale == "proportion":
        (cx, nx), (cy, ny) = _counts(np.clip(x, 0, 1), prompts[0]), _counts(np.clip(y, 0, 1), prompts[1])
        worse_side = ("smaller", -m) if direction == "maximize" else ("larger", m)
        with warnings.catch_warnings():  # 64/64 against 64/64: an odds ratio of 0/0 along the way
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = confint_proportions_2indep(
                cx, nx, cy, ny, method="newcomb", compare="diff", alpha=2 * rule.alpha
            )
            p_eq = tost_proportions_2indep(cx, nx, cy, ny, -m, m, method="score", compare="diff").pvalue
            p_worse = test_proportions_2indep(
                cx, nx, cy, ny, value=worse_side[1], method="score", compare="diff", alternative=worse_side[0]
            ).pvalue
        out.update(estimate=cx / nx - cy / ny, est_low=float(low), est_high=float(high))
        out.update(p_equivalent=float(p_eq), p_worse=float(p_worse))
        return out
    lx, ly = (np.log(x), np.log(y)) if scale == "ratio" else (x, y)
    diff = float(np.mean(lx) - np.mean(ly))
    back = np.exp if scale == "ratio" else (lambda v: v)
    out["estimate"] = float(back(diff))
    if len(lx) < 2 or len(ly) < 2:
        return out
    sign = 1.0 if direction == "minimize" else -1.0
    if np.ptp(lx) == 0 and np.ptp(ly) == 0:  # no noise on either side: the difference is known exactly
        out.update(est_low=out["estimate"], est_high=out["estimate"])
        out.update(p_equivalent=0.0 if abs(diff) < m else 1.0, p_worse=0.0 if sign * diff > m else 1.0)
        return out
    low, high = CompareMeans(DescrStatsW(lx), DescrStatsW(ly)).tconfint_diff(alpha=2 * rule.alpha, usevar="unequal")
    p_eq = ttost_ind(lx, ly, -m, m, usevar="unequal")[0]
    p_worse = ttest_ind(sign * lx, sign * ly, alternative="larger", usevar="unequal", value=m)[1]
    out.update(est_low=float(back(low)), est_high=float(back(high)), p_equivalent=float(p_eq), p_worse=float(p_worse))
    return out


def choose_best(summary: pd.DataFrame, direction: str) -> str:
    """The reference configuration: best pessimistic interval end among those with >= 2 seeds (so a noisy
    configuration cannot lead by one lucky seed), else the best centre."""
    minimize = direction == "minimize"
    ranked = summary[(summary["n"] >= 2) & summary["ci_low"].notna()]
    if ranked.empty:
        ranked, key = summary, "mean"
    else:
        key = "ci_high" if minimize else "ci_low"
    order = ranked.sort_values([key, "mean"], ascending=[minimize, minimize], kind="stable")
    return str(order["group"].iloc[0])


BEST_RULE = (
    "the configuration whose {level:.0%} interval has the best pessimistic end (the upper end for a metric to "
    "minimise) among those with at least 2 seeds, so no configuration leads by one lucky seed"
)


def _adjust(p_values: list[float], rule: Rule) -> list[float]:
    """Holm-corrected p-values (NaN stays NaN and does not count as a comparison)."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), np.nan)
    keep = np.isfinite(p)
    if keep.any():
        out[keep] = multipletests(p[keep], alpha=rule.alpha, method="holm")[1] if rule.correction == "holm" else p[keep]
    return out.tolist()


def decide(
    samples: dict[str, np.ndarray],
    direction: str,
    scale: str,
    rule: Rule,
    prompts: Optional[dict[str, Optional[int]]] = None,
) -> pd.DataFrame:
    """Every configuration's centre and interval, and its decision against the best, one row each:
    group, mean, ci_low, ci_high, std, n, nobs, decision, estimate, est_low, est_high, p_equivalent,
    p_worse (corrected). The best comes first, the others by centre."""
    prompts = prompts or {}
    rows = [{"group": g, **centre(v, scale, rule.confidence, prompts.get(g))} for g, v in samples.items()]
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    best = choose_best(summary, direction)
    compared = []
    for group in summary["group"]:
        if group == best:
            compared.append({"estimate": 1.0 if scale == "ratio" else 0.0})
            continue
        compared.append(
            compare(samples[group], samples[best], scale, direction, rule, (prompts.get(group), prompts.get(best)))
        )
    table = pd.concat([summary, pd.DataFrame(compared)], axis=1)
    others = table["group"] != best
    for column in ("p_equivalent", "p_worse"):
        if column not in table:
            table[column] = math.nan
        table.loc[others, column] = _adjust(table.loc[others, column].tolist(), rule)
    decisions = []
    for _, row in table.iterrows():
        if row["group"] == best:
            decisions.append(BEST)
        elif row["p_equivalent"] < rule.alpha:
            decisions.append(EQUIVALENT)
        elif row["p_worse"] < rule.alpha:
            decisions.append(WORSE)
        else:
            decisions.append(UNDECIDED)
    table["decision"] = decisions
    table["_best"] = ~others
    table = table.sort_values(["_best", "mean"], ascending=[False, direction == "minimize"], kind="stable")
    return table.drop(columns="_best").reset_index(drop=True)


def pairwise(
    pairs: list[tuple[np.ndarray, np.ndarray]], scale: str, direction: str, rule: Rule
) -> list[dict[str, object]]:
    """Several (candidate, reference) comparisons that together make one finding, each decided as
    equivalent / worse / better (the reference shown worse than the candidate) / undecided, with Holm's
    correction over the pairs (each kind of test apart). Each result is :func:`compare`'s dict plus
    'p_better' and 'decision'."""
    results = [compare(c, r, scale, direction, rule) for c, r in pairs]
    reverse = [compare(r, c, scale, direction, rule)["p_worse"] for c, r in pairs]
    p_eq = _adjust([r["p_equivalent"] for r in results], rule)
    p_worse = _adjust([r["p_worse"] for r in results], rule)
    p_better = _adjust(reverse, rule)
    out = []
    for result, eq, worse, better in zip(results, p_eq, p_worse, p_better, strict=True):
        if eq < rule.alpha:
            decision = EQUIVALENT
        elif worse < rule.alpha:
            decision = WORSE
        elif better < rule.alpha:
            decision = "better"
        else:
            decision = UNDECIDED
        out.append({**result, "p_equivalent": eq, "p_worse": worse, "p_better": better, "decision": decision})
    return out


def acceptable(decision: object) -> bool:
    """True for the best and the configurations shown equivalent to it."""
    return decision in (BEST, EQUIVALENT)
