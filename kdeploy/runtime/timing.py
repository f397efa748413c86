"""Latency statistics."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(fn: Callable[[], object], *, warmup: int, iterations: int) -> dict[str, float]:
    """Run ``fn`` warmup + iterations times; latency percentiles in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        t0 = time.perf_counter()
        fn()
        samples[i] = (time.perf_counter() - t0) * 1e3
    return {
        "p50_ms": float(np.percentile(samples, 50)),
        "p90_ms": float(np.percentile(samples, 90)),
        "p99_ms": float(np.percentile(samples, 99)),
        "mean_ms": float(samples.mean()),
        "min_ms": float(samples.min()),
        "iterations": iterations,
    }
