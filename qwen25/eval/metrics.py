"""Aggregate metrics as the reference harnesses compute them."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error with the sample (n - 1) standard deviation, as lm-eval's `mean_stderr`."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with `correct` passing (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= correct <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= correct <= n and 1 <= k <= n, got n={n}, correct={correct}, k={k}")
    if n - correct < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - correct + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first on ties (numpy's argmax, which lm-eval uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
