"""Percentile summaries the benchmarks report (one run's timings on a shared, noisy machine)."""

from __future__ import annotations

import numpy as np


def percentiles(values, points: tuple[int, ...] = (50, 95)) -> dict:
    """{"n", "p<point>" for each point, "max"} of `values`, rounded to 0.1; None values are skipped."""
    kept = [value for value in values if value is not None]
    if not kept:
        return {"n": 0}
    array = np.asarray(kept)
    summary: dict = {"n": len(kept)}
    for point in points:
        summary[f"p{point}"] = round(float(np.percentile(array, point)), 1)
    summary["max"] = round(float(array.max()), 1)
    return summary
