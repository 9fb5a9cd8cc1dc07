"""Uncertainty the paper does not report: bootstrap intervals and paired tests between teachers."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def accuracy_with_ci(correct, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy in percent with a percentile-bootstrap interval over examples."""
    x = np.asarray(correct, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return 100 * x.mean(), 100 * float(lo), 100 * float(hi)


def paired_bootstrap(a, b, n_boot: int = 10000, seed: int = 0) -> dict:
    """Difference of accuracy (a - b, points) on the same questions, its 95% interval and a two-sided p."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired test needs two equally long, non-empty vectors")
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    observed = d.mean()
    # p: how often a resample centred on no difference is at least as extreme as the observed one
    centred = boots - observed
    p = float((np.abs(centred) >= abs(observed) - 1e-12).mean()) if observed != 0 else 1.0
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"diff": 100 * observed, "ci_low": 100 * float(lo), "ci_high": 100 * float(hi), "p_bootstrap": p}


def binomial_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided binomial p of k successes in n trials at p = 1/2 (scipy's binomtest(k, n).pvalue):
    twice the smaller tail, capped at 1. Integer arithmetic: exact for any n, and no scipy import
    (~0.8 s of every report)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")
    if n == 0 or 2 * k == n:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, float(Fraction(2 * tail, 2 ** n)))


def mcnemar(a, b) -> dict:
    """Exact McNemar test on the discordant pairs (a right b wrong vs. a wrong b right)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    return {"only_a": only_a, "only_b": only_b, "p_mcnemar": binomial_two_sided_half(only_a, only_a + only_b)}


def accuracy_metrics(correct, variant: str = "") -> dict[str, float]:
    """`accuracy`, its interval and `n_correct` as metrics, named for a scoring variant
    (`accuracy_answer_line`, `accuracy_answer_line_ci_low`, `n_correct_answer_line`, ...)."""
    suffix = f"_{variant}" if variant else ""
    acc, lo, hi = accuracy_with_ci(correct)
    return {f"accuracy{suffix}": acc, f"accuracy{suffix}_ci_low": lo, f"accuracy{suffix}_ci_high": hi,
            f"n_correct{suffix}": sum(correct)}
