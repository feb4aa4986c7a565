"""The statistics of a report: t confidence intervals, Welch's test for "cannot be told apart", bootstrap
intervals of ratios and the share of variance a searched value explains.

Every interval and test comes from ``scipy.stats``; this module only decides what is compared with what.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

TIE_RULES = ("welch", "relative", "absolute")


def _values(values: Sequence[float] | pd.Series) -> np.ndarray:
    array = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)
    return array[np.isfinite(array)]


def summarize(values: Sequence[float] | pd.Series, confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation, n and the t confidence interval of the mean.

    The interval is ``scipy.stats.t.interval`` with n - 1 degrees of freedom around the mean, scaled by
    the standard error (``scipy.stats.sem``); std, interval and half-width are NaN for fewer than two
    values, and the interval collapses to the mean when every value is equal."""
    x = _values(values)
    n = int(len(x))
    out = {
        "mean": float(np.mean(x)) if n else math.nan,
        "std": math.nan,
        "n": n,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "ci_half": math.nan,
    }
    if n >= 2:
        out["std"] = float(np.std(x, ddof=1))
        sem = float(stats.sem(x))
        if sem == 0.0:
            low = high = out["mean"]
        else:
            low, high = stats.t.interval(confidence, n - 1, loc=out["mean"], scale=sem)
        out.update(ci_low=float(low), ci_high=float(high), ci_half=float(high - out["mean"]))
    return out


def welch_p(a: Sequence[float] | pd.Series, b: Sequence[float] | pd.Series) -> float:
    """Two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) between two
    samples; NaN when either has fewer than two values.

    When both samples have zero spread the test is undefined: equal means give 1.0 (nothing tells them
    apart), different means 0.0 (every seed of one beats every seed of the other, without noise)."""
    x, y = _values(a), _values(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return 1.0 if x[0] == y[0] else 0.0
    with warnings.catch_warnings():  # a sample of equal values (exact match 1.0 on every seed) is fine here
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def is_tie(value: object) -> bool:
    """A ``tie`` cell of a config table read as a yes/no: True (Python's or numpy's) is a tie; False,
    None and NaN (undecided) are not."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and bool(value)


@dataclass(frozen=True)
class TieRule:
    """How 'cannot be told apart from the best' is decided, stated in words for the report."""

    rule: str = "welch"
    alpha: float = 0.05
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.rule not in TIE_RULES:
            raise ValueError(f"tie rule {self.rule!r}: one of {', '.join(TIE_RULES)}")

    def describe(self, confidence: float | None = None) -> str:
        if self.rule == "welch":
            return (
                f"Welch's t-test between its seeds and the best configuration's seeds gives p ≥ {self.alpha:g} "
                f"(two-sided; needs at least 2 seeds on each side)"
            )
        if self.rule == "relative":
            return f"its mean lies within {self.tolerance:.3g} × |best mean| ({self.tolerance * 100:.3g}%) of the best mean"
        return f"its mean lies within {self.tolerance:g} of the best mean"

    def tie(
        self, values: pd.Series | Sequence[float], best: pd.Series | Sequence[float]
    ) -> tuple[Optional[bool], float]:
        """(True when the sample cannot be told apart from the best's, the p-value or gap behind it).

        The welch rule answers None (undecided) when a side has a single seed; the tolerance rules compare
        means and decide whatever the number of seeds."""
        x, y = _values(values), _values(best)
        if not len(x) or not len(y):
            return None, math.nan
        if self.rule == "welch":
            p = welch_p(x, y)
            return (None if math.isnan(p) else bool(p >= self.alpha)), p
        gap = abs(float(np.mean(x)) - float(np.mean(y)))
        limit = self.tolerance * abs(float(np.mean(y))) if self.rule == "relative" else self.tolerance
        return bool(gap <= limit + 1e-12), gap


def bootstrap_ci(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` with each sample resampled on its own
    (``scipy.stats.bootstrap``, independent samples); (NaN, NaN) when a sample has fewer than two values
    or the statistic is undefined on the resamples."""
    data = [_values(s) for s in samples]
    if any(len(d) < 2 for d in data):
        return math.nan, math.nan
    try:
        result = stats.bootstrap(
            data,
            statistic,
            paired=False,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return math.nan, math.nan
    low, high = result.confidence_interval
    return float(low), float(high)


def variance_explained(frame: pd.DataFrame, factor: str, value: str) -> float:
    """Share of the variance of ``value`` across runs that the groups of ``factor`` explain (eta squared:
    between-group sum of squares over total sum of squares); NaN with one group or no spread at all."""
    data = frame[[factor, value]].dropna()
    data = data.assign(**{value: pd.to_numeric(data[value], errors="coerce")}).dropna()
    if data[factor].nunique() < 2:
        return math.nan
    total = float(((data[value] - data[value].mean()) ** 2).sum())
    if total == 0.0:
        return math.nan
    means = data.groupby(factor)[value].transform("mean")
    return float(((means - data[value].mean()) ** 2).sum()) / total


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``); NaN for fewer than three pairs."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    return float(stats.spearmanr(a[keep], b[keep]).statistic)
