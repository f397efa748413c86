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


def transfer_rows(budgets: Budgets, transfer: dict | None, model: str) -> list[dict]:
    """The neighbour-recall and probe budgets; none for classifiers (nothing to transfer:
    a classifier's logits are its task). A budget whose figure was not measured fails."""
    if transfer is not None and not transfer.get("applicable", False):
        return []
    rows_of = (transfer or {}).get("models", {})
    mine = rows_of.get(model, {})
    rows = []
    nb = budgets.min_neighbour_recall
    if nb is not None:
        value = mine.get("neighbour_recall")
        ref = rows_of.get(nb.over, {}).get("neighbour_recall")
        limit = None if ref is None else nb.ratio * ref
        rows.append(
            _row(
                "min_neighbour_recall",
                nb.ratio if limit is None else round(limit, 6),
                value,
                value is not None and limit is not None and value >= limit,
                f"{model} recall@k of teacher_fp32's neighbours >= {nb.ratio} x {nb.over}'s"
                + ("" if limit is not None and value is not None else " (not measured)"),
            )
        )
    if budgets.min_probe_retention is not None:
        value = mine.get("probe_retention")
        rows.append(
            _row(
                "min_probe_retention",
                budgets.min_probe_retention,
                value,
                value is not None and value >= budgets.min_probe_retention,
                f"{model} linear-probe accuracy / teacher_fp32's"
                + ("" if value is not None else " (not measured: the run has no --probe data)"),
            )
        )
    return rows


def check_budgets(
    budgets: Budgets,
    results: dict,
    bench: dict | None,
    model: str,
    transfer: dict | None = None,
) -> list[dict]:
    """Every budget of the profile for ``model``: {name, limit, value, passed, detail}."""
    bench_models = (bench or {}).get("models", {})
    return (
        retention_rows(budgets, results, model)
        + latency_rows(budgets, bench_models, model)
        + speedup_rows(budgets, bench_models, model)
        + transfer_rows(budgets, transfer, model)
    )
