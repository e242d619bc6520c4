"""Statistics of paired comparisons: the paired bootstrap interval the decisive experiment's
rule reads (:func:`paired_bootstrap`)."""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 10_000  # resamples


def paired_bootstrap(diff: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> dict[str, float]:
    """Mean of the paired differences ``diff`` (NaN entries left out) and its 95 % percentile
    bootstrap interval: ``n`` resamples of its entries with replacement, from ``seed``."""
    diff = diff[~np.isnan(diff)]
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n": len(diff)}
