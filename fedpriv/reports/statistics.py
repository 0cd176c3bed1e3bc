"""Summaries of measured values: mean, sample standard deviation, Student-t 95% interval, n."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof 1; NaN for n = 1), 95% confidence interval of the mean (NaN for n = 1), n."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int

    def text(self, digits: int = 2) -> str:
        """``mean ± std`` (or just the mean for one value)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def ci_text(self, digits: int = 2) -> str:
        """``[low, high]``, or ``-`` for one value."""
        if self.n < 2:
            return "-"
        return f"[{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def summarise(values: list[float]) -> Summary:
    """Summarise at least one value.

    Raises
    ------
    ValueError
        For an empty list.
    """
    if not values:
        raise ValueError("cannot summarise no values")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Summary(mean, math.nan, math.nan, math.nan, n)
    std = statistics.stdev(values)
    half = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


def digits_for(metric: str) -> int:
    """Decimals to print for a metric (dB and percent: 2; errors on [0,1] and radians: 4)."""
    return 4 if metric in ("mse", "mae", "angle_error", "angle_error_mod_pi", "property_error", "label_accuracy",
                           "accuracy", "accuracy_plain", "class_accuracy", "ssim", "ssim_defended") else 2
