"""The statistics of a report beside the decisions (:mod:`lora_lab.report.decide`): t confidence intervals,
bootstrap intervals, rank correlation and the analysis of variance of rank against scale.

Every interval and test comes from ``scipy.stats`` or ``statsmodels``; this module only decides what is
compared with what.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats


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


def two_way_anova(data: pd.DataFrame, value: str, factors: list[str]) -> tuple[pd.DataFrame, str]:
    """Analysis of variance of ``value`` with each of ``factors`` as a categorical factor (an ordinary
    least-squares fit, ``statsmodels.stats.anova.anova_lm`` type 2 sums of squares), the interaction of
    the first two added when every pair of their levels was run with replicates to spare.

    Returns (table, note): one row per term (and the residual) with sum_sq, df, F, PR(>F) and share
    (sum of squares over the total), and a note when no analysis was possible: a factor with one level
    is dropped; factors whose levels always go together (the fit's design is rank deficient) cannot be
    separated, and the table is empty."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    frame = data[[value, *factors]].dropna()
    kept = [f for f in factors if frame[f].nunique() > 1]
    dropped = [f for f in factors if f not in kept]
    note = f"{', '.join(dropped)} took a single value here. " if dropped else ""
    if not kept or len(frame) <= sum(frame[f].nunique() for f in kept):
        return pd.DataFrame(), note + "Too few runs for an analysis of variance."
    names = {f: f"f{i}" for i, f in enumerate(kept)}
    renamed = frame.rename(columns={value: "y", **names}).astype({n: str for n in names.values()})
    terms = [f"C({names[f]})" for f in kept]
    formula = "y ~ " + " + ".join(terms)
    with warnings.catch_warnings():  # a rank-deficient design is the confounded case, answered below
        warnings.simplefilter("ignore")
        main = smf.ols(formula, renamed).fit()
    if np.linalg.matrix_rank(main.model.exog) < main.model.exog.shape[1]:
        return pd.DataFrame(), note + (
            f"{' and '.join(kept)} are confounded in this grid (each level of one ran with a single level of the "
            f"other), so their effects cannot be told apart."
        )
    if len(kept) >= 2:
        a, b = names[kept[0]], names[kept[1]]
        cells = renamed.groupby([a, b]).size()
        full = len(cells) == renamed[a].nunique() * renamed[b].nunique()
        interaction = smf.ols(formula + f" + C({a}):C({b})", renamed).fit() if full and cells.min() >= 2 else None
        if interaction is not None and interaction.df_resid > 0:
            main = interaction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = anova_lm(main, typ=2)
    back = {f"C({n})": f for f, n in names.items()}
    table.index = [":".join(back.get(part, part) for part in str(i).split(":")) for i in table.index]
    table["share"] = table["sum_sq"] / table["sum_sq"].sum()
    return table.reset_index(names="term"), note


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``); NaN for fewer than three pairs."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    return float(stats.spearmanr(a[keep], b[keep]).statistic)
