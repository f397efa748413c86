"""The profile's budgets checked against verify's and bench's numbers, one row each."""

from __future__ import annotations

from kdeploy.config import Budgets


def _row(name: str, limit: float, value: float | None, passed: bool, detail: str) -> dict:
    return {"name": name, "limit": limit, "value": value, "passed": passed, "detail": detail}


def retention_rows(budgets: Budgets, results: dict, model: str) -> list[dict]:
    if budgets.min_retention is None:
        return []
    r = results[model]["retention"]
    return [
        _row(
            "min_retention",
            budgets.min_retention,
            r,
            r >= budgets.min_retention,
            f"{model} metric / teacher_fp32 metric",
        )
    ]


def latency_rows(budgets: Budgets, bench_models: dict, model: str) -> list[dict]:
    lat = budgets.max_latency
    if lat is None:
        return []
    grid = bench_models.get(model, {}).get("latency", [])
    cell = next(
        (g for g in grid if g["batch"] == lat.batch and g["sequence"] == lat.sequence), None
    )
    rows = []
    for pct, limit in (("p50", lat.p50_ms), ("p99", lat.p99_ms)):
        if limit is None:
            continue
        value = cell[f"{pct}_ms"] if cell else None
        rows.append(
            _row(
                f"max_latency_{pct}",
                limit,
                value,
                value is not None and value <= limit,
                f"batch {lat.batch} x sequence {lat.sequence}, ms"
                + ("" if cell else " (not measured by bench)"),
            )
        )
    return rows


def speedup_rows(budgets: Budgets, bench_models: dict, model: str) -> list[dict]:
    sp = budgets.min_speedup
    if sp is None or model == sp.over:  # (the model the speed-up is measured against)
        return []
    mine = bench_models.get(model, {}).get("throughput", {}).get("sentences_per_s")
    ref = bench_models.get(sp.over, {}).get("throughput", {}).get("sentences_per_s")
    value = mine / ref if mine and ref else None
    return [
        _row(
            "min_speedup",
            sp.ratio,
            value,
            value is not None and value >= sp.ratio,
            f"{model} sentences/s / {sp.over} sentences/s",
        )
    ]


def check_budgets(budgets: Budgets, results: dict, bench: dict | None, model: str) -> list[dict]:
    """Every budget of the profile for ``model``: {name, limit, value, passed, detail}."""
    bench_models = (bench or {}).get("models", {})
    return (
        retention_rows(budgets, results, model)
        + latency_rows(budgets, bench_models, model)
        + speedup_rows(budgets, bench_models, model)
    )
