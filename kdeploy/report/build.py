"""report.json: every number of a run (the Markdown in ``markdown.py`` is a view of it)."""

from __future__ import annotations

import platform
from typing import Any

from kdeploy import __version__
from kdeploy.core.deps import version_of
from kdeploy.evaluation.budgets import check_budgets
from kdeploy.evaluation.variants import VARIANTS, engine_of
from kdeploy.onnxtools.layers import module_of

TOOL_DISTS = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "sentence-transformers",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "numpy",
    "pydantic",
)


def tool_versions() -> dict[str, str | None]:
    return {
        "kdeploy": __version__,
        "python": platform.python_version(),
        **{d: version_of(d) for d in TOOL_DISTS},
    }


def build_report(
    manifest: dict[str, Any],
    bench: dict | None,
    verify: dict | None,
    deploy_dir: str | None,
    *,
    budgets: Any = None,
    model_stats: dict[str, dict] | None = None,
    triton: dict | None = None,
    reference: dict | None = None,
) -> dict[str, Any]:
    """Every number of the run. ``budgets`` is the profile's Budgets (to check each model
    of the chain against them); ``model_stats`` {model: {params, bytes, ...}}."""
    stages = {
        name: {"seconds": rec["seconds"], "finished": rec["finished"], "key": rec["key"]}
        for name, rec in manifest["stages"].items()
    }
    return {
        "kdeploy_version": __version__,
        "profile": manifest["profile"],
        "model": manifest["model"],
        "data": manifest["data"],
        "host": (bench or {}).get("host"),
        "threads": (bench or {}).get("threads"),
        "versions": tool_versions(),
        "stages": stages,
        "skipped_stages": manifest.get("skipped", []),
        "distill": manifest["stages"].get("distill", {}).get("metrics"),
        "sparsify": manifest["stages"].get("sparsify", {}).get("metrics"),
        "export": manifest["stages"].get("export", {}).get("metrics"),
        "quantize": manifest["stages"].get("quantize", {}).get("metrics"),
        "build": manifest["stages"].get("build", {}).get("metrics"),
        "summary": summary_rows(bench, verify),
        "bench": bench,
        "verify": verify,
        "deploy_dir": deploy_dir,
        "passed": (verify or {}).get("passed"),
        "chain": chain_rows(manifest, bench, verify, budgets, model_stats or {}),
        "layers": layer_rows(model_stats or {}),
        "budget_limits": _budget_limits(budgets),
        "not_in_profile": list(manifest.get("skipped", [])),
        "triton": triton,
        "reference": reference,
        "plots": None,
    }


def summary_rows(bench: dict | None, verify: dict | None) -> list[dict[str, Any]]:
    """One row per benchmarked or verified model: size, metric and batch-1 latency."""
    rows = []
    models = (verify or {}).get("models", {})
    bench_models = (bench or {}).get("models", {})
    for name in dict.fromkeys([*bench_models, *models]):
        b = bench_models.get(name, {})
        v = models.get(name, {})
        b1 = next((g for g in b.get("latency", []) if g["batch"] == 1), None)
        rows.append(
            {
                "model": name,
                "layers": b.get("layers"),
                "precision": b.get("precision"),
                "onnx_mb": round(b["onnx_bytes"] / 1e6, 2) if "onnx_bytes" in b else None,
                "metric": v.get("metric"),
                "value": v.get("value"),
                "retention": v.get("retention"),
                "sentences_per_s": b.get("throughput", {}).get("sentences_per_s"),
                "p50_ms_b1": b1["p50_ms"] if b1 else None,
                "p99_ms_b1": b1["p99_ms"] if b1 else None,
                "b1_sequence": b1["sequence"] if b1 else None,
            }
        )
    return rows


def _budget_limits(budgets: Any) -> dict[str, Any]:
    if budgets is None:
        return {}
    return {k: v for k, v in budgets.model_dump(mode="json").items() if v is not None}


def _producers(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Model name in tables -> the stage whose artifact it is."""
    stage_of = {
        out: stage for stage, rec in manifest["stages"].items() for out in rec.get("outputs", {})
    }
    return {name: stage_of.get(art) for art, name in VARIANTS.items()}


def latency_cell(budgets: Any, bench: dict | None) -> tuple[int, int] | None:
    """(batch, sequence) the chain table quotes: the latency budget's, else batch 1 at the
    longest benchmarked sequence."""
    lat = getattr(budgets, "max_latency", None) if budgets is not None else None
    if lat is not None:
        return lat.batch, lat.sequence
    grids = [m["latency"] for m in (bench or {}).get("models", {}).values() if m.get("latency")]
    if not grids:
        return None
    batch = min(g["batch"] for g in grids[0])
    return batch, max(g["sequence"] for g in grids[0] if g["batch"] == batch)


def chain_rows(
    manifest: dict[str, Any],
    bench: dict | None,
    verify: dict | None,
    budgets: Any,
    model_stats: dict[str, dict],
) -> list[dict[str, Any]]:
    """One row per model the run produced (teacher -> ... -> deployed), data-driven from the
    bench and verify results: whatever stages ran, their models show up here."""
    bench_models = (bench or {}).get("models", {})
    v_models = (verify or {}).get("models", {})
    deploy = (verify or {}).get("deploy")
    producers = _producers(manifest)
    cell = latency_cell(budgets, bench)
    ref_tp = bench_models.get("teacher_fp32", {}).get("throughput", {}).get("sentences_per_s")
    rows = []
    for name in dict.fromkeys([*bench_models, *v_models, *model_stats]):
        b, v, st = bench_models.get(name, {}), v_models.get(name, {}), model_stats.get(name, {})
        role = b.get("role") or st.get("role")
        kind = (
            "reference"
            if name == "teacher_fp32"
            else "baseline"
            if role == "teacher"
            else "engine"  # another engine's model of the same student, beside the chain
            if engine_of(name) == "openvino"
            else "chain"
        )
        budget_rows = []
        if (
            budgets is not None
            and kind != "reference"
            and name in v_models
            and v.get("retention") is not None
        ):
            budget_rows = check_budgets(
                budgets, v_models, bench, name, (verify or {}).get("transfer")
            )
        rows.append(
            {
                "model": name,
                "kind": kind,
                "made_by": _made_by(name, role, producers.get(name), manifest),
                "deploy": name == deploy,
                "role": role,
                "precision": b.get("precision") or st.get("precision"),
                "layers": b.get("layers") or st.get("layers"),
                "params": st.get("params"),
                "size_mb": round(st["bytes"] / 1e6, 2) if st.get("bytes") else None,
                "zero_weights": st.get("zero_weights"),
                "metric": v.get("metric"),
                "value": v.get("value"),
                "retention": v.get("retention"),
                **_speed_cells(b, cell, ref_tp),
                "budgets": {r["name"]: r["passed"] for r in budget_rows},
                "passed": all(r["passed"] for r in budget_rows) if budget_rows else None,
            }
        )
    return rows


def _made_by(
    name: str, role: str | None, producer: str | None, manifest: dict[str, Any]
) -> str | None:
    """The stage(s) that made a model: its artifact's producer, with the stage before the
    export named for the students it exported."""
    if name == "student_sparse" and producer == "export":
        return "sparsify+export"
    if role == "student" and producer == "export" and "distill" in manifest["stages"]:
        return "distill+export"
    return producer


def _speed_cells(
    b: dict[str, Any], cell: tuple[int, int] | None, ref_tp: float | None
) -> dict[str, Any]:
    """A chain row's latency at ``cell``, throughput and speedup over the FP32 teacher."""
    g = None
    if cell:
        g = next((x for x in b.get("latency", []) if (x["batch"], x["sequence"]) == cell), None)
    tp = b.get("throughput", {})
    return {
        "latency_cell": list(cell) if cell else None,
        "p50_ms": g["p50_ms"] if g else None,
        "p99_ms": g["p99_ms"] if g else None,
        "sentences_per_s": tp.get("sentences_per_s"),
        "throughput_batch": tp.get("batch_size"),
        "speedup": tp["sentences_per_s"] / ref_tp if ref_tp and tp.get("sentences_per_s") else None,
    }


def layer_rows(model_stats: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per GEMM layer of the students: in x out and, per model of the chain, how it
    runs ("2:4 int8", "dense fp32", ...). From each model's ONNX graph (onnx_layers)."""
    students = [
        (name, st["gemm_layers"])
        for name, st in model_stats.items()
        if st.get("role") == "student" and st.get("gemm_layers")
    ]
    rows: dict[str, dict[str, Any]] = {}
    for name, layers in students:
        for g in layers:
            key = module_of(g["node"])
            row = rows.setdefault(
                key, {"layer": key, "in": g["in_features"], "out": g["out_features"]}
            )
            bits = g["weight_bits"]
            kind = "2:4" if g["is_2to4"] else "dense"
            row[name] = f"{kind} {'int' if bits == 8 else 'fp'}{bits}"
    return list(rows.values())
