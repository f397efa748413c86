"""report.json -> report.md. The JSON holds every number; the Markdown is a view of it."""

from __future__ import annotations

import platform
from typing import Any

from kdeploy import __version__
from kdeploy.deps import version_of

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
        "summary": rows,
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


def _budget_limits(budgets: Any) -> dict[str, Any]:
    if budgets is None:
        return {}
    return {k: v for k, v in budgets.model_dump(mode="json").items() if v is not None}


def _producers(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Model name in tables -> the stage whose artifact it is."""
    from kdeploy.stages.bench import VARIANTS

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
    from kdeploy.stages.verify import check_budgets

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
        made_by = producers.get(name)
        if name == "student_sparse" and made_by == "export":
            made_by = "sparsify+export"
        elif role == "student" and made_by == "export" and "distill" in manifest["stages"]:
            made_by = "distill+export"
        kind = (
            "reference" if name == "teacher_fp32" else "baseline" if role == "teacher" else "chain"
        )
        g = None
        if cell:
            g = next((x for x in b.get("latency", []) if (x["batch"], x["sequence"]) == cell), None)
        tp = b.get("throughput", {})
        budget_rows = []
        if (
            budgets is not None
            and kind != "reference"
            and name in v_models
            and v.get("retention") is not None
        ):
            budget_rows = check_budgets(budgets, v_models, bench, name)
        rows.append(
            {
                "model": name,
                "kind": kind,
                "made_by": made_by,
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
                "latency_cell": list(cell) if cell else None,
                "p50_ms": g["p50_ms"] if g else None,
                "p99_ms": g["p99_ms"] if g else None,
                "sentences_per_s": tp.get("sentences_per_s"),
                "throughput_batch": tp.get("batch_size"),
                "speedup": tp["sentences_per_s"] / ref_tp
                if ref_tp and tp.get("sentences_per_s")
                else None,
                "budgets": {r["name"]: r["passed"] for r in budget_rows},
                "passed": all(r["passed"] for r in budget_rows) if budget_rows else None,
            }
        )
    return rows


def layer_rows(model_stats: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per GEMM layer of the students: in x out and, per model of the chain, how it
    runs ("2:4 int8", "dense fp32", ...). From each model's ONNX graph (onnx_layers)."""
    from kdeploy.onnx_layers import module_of

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


def layers_table(r: dict[str, Any]) -> list[str]:
    rows = r.get("layers") or []
    if not rows:
        return []
    models = [k for k in rows[0] if k not in ("layer", "in", "out")]
    for row in rows[1:]:
        models += [k for k in row if k not in ("layer", "in", "out") and k not in models]
    out = [
        "| layer | in x out | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for row in rows:
        out.append(
            f"| {row['layer']} | {row['in']} x {row['out']} | "
            + " | ".join(row.get(m, "-") for m in models)
            + " |"
        )
    sp = r.get("sparsify") or {}
    if sp.get("dense_layers"):
        kept = ", ".join(f"{k} ({v})" for k, v in sp["dense_layers"].items())
        out += ["", f"Kept dense by sparsify: {kept}."]
    return out


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def render_markdown(r: dict[str, Any]) -> str:
    p = r["profile"]
    out = [f"# kdeploy report: {p['name']}", ""]
    verdict = {True: "**PASSED**", False: "**FAILED**", None: "not verified"}[r.get("passed")]
    out += [
        f"Budgets: {verdict}  ",
        f"Teacher: `{r['model']['path']}` "
        f"({r['model'].get('model_type')}, {r['model'].get('layers')} layers, "
        f"{r['model'].get('kind')})  ",
        f"Data: `{r['data']['path']}`  ",
    ]
    if r.get("host"):
        h = r["host"]
        out.append(
            f"Host: {h.get('cpu')}, {h.get('cores')} cores, ONNX Runtime "
            f"{h.get('onnxruntime')}, {r.get('threads')} threads  "
        )
        if h.get("gpu"):
            out.append(f"GPU: {h['gpu']}  ")
    if r.get("deploy_dir"):
        out.append(f"Deployable model: `{r['deploy_dir']}`  ")
    out.append(f"Profile digest: `{p.get('digest', '')[:16]}`")
    if r.get("chain"):
        out += ["", "## Compression chain", ""] + chain_table(r)
    else:
        out += ["", "## Models", ""] + models_table(r)
    if r.get("layers"):
        out += ["", "## Layers", ""] + layers_table(r)
    plots = r.get("plots") or {}
    if plots.get("files"):
        out += ["", "## Plots", ""]
        titles = {"pareto": "accuracy vs throughput", "latency": "latency vs batch and sequence"}
        for key, rel in plots["files"].items():
            out.append(f"![{titles.get(key, key)}]({rel})")
            out.append("")
    elif plots.get("skipped"):
        out += ["", "## Plots", "", f"Plots skipped: {plots['skipped']}"]
    if (r.get("verify") or {}).get("budgets"):
        out += ["", "## Budgets", ""] + budgets_table(r["verify"])
    bench = r.get("bench") or {}
    if bench.get("models"):
        out += ["", "## Latency grid (ms, p50 / p99)", ""]
        names = list(bench["models"])
        cells = [
            (g["batch"], g["sequence"]) for g in next(iter(bench["models"].values()))["latency"]
        ]
        out.append("| batch x seq | " + " | ".join(names) + " |")
        out.append("|---|" + "---|" * len(names))
        for b, s in cells:
            vals = []
            for n in names:
                g = next(
                    (
                        x
                        for x in bench["models"][n]["latency"]
                        if x["batch"] == b and x["sequence"] == s
                    ),
                    None,
                )
                vals.append(f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f}" if g else "-")
            out.append(f"| {b} x {s} | " + " | ".join(vals) + " |")
    d = r.get("distill")
    if d:
        out += [
            "",
            "## Distillation",
            "",
            f"Kept teacher layers {d.get('kept_layers')}, {d.get('texts')} training texts, "
            f"{d.get('epochs')} epochs ({d.get('steps')} steps) in "
            f"{_fmt(d.get('train_seconds'), 0)}s on {d.get('device')}; final loss "
            f"{_fmt(d.get('final_loss'), 5)}.",
        ]
    e = r.get("export")
    if e:
        out += ["", "## Export validation (torch vs ONNX Runtime, real sentences)", ""]
        for role, m in e.items():
            val = m["validation"]
            out.append(
                f"- {role}: max |diff| {val['max_abs_diff']:.2e}, min cosine "
                f"{val['min_cosine']:.6f} over {val['texts']} texts"
            )
    q = r.get("quantize")
    if q:
        out += ["", "## Quantization", ""]
        for role, m in q.items():
            desc = ", ".join(f"{k}={v}" for k, v in m.items() if not k.startswith("bytes"))
            out.append(f"- {role}: {desc}")
    out += build_lines(r.get("build"))
    out += triton_section(r)
    out += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    for name, s in r["stages"].items():
        out.append(f"| {name} | {s['seconds']:.1f} |")
    if r.get("skipped_stages"):
        out.append(f"\nSkipped (disabled by the profile): {', '.join(r['skipped_stages'])}")
    out += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v)]
    return "\n".join(out) + "\n"


def models_table(r: dict[str, Any]) -> list[str]:
    """Markdown rows: one line per model of the run (metric, speed, size)."""
    v = r.get("verify") or {}
    metric = next((row["metric"] for row in r["summary"] if row["metric"]), "metric")
    seq = next((row["b1_sequence"] for row in r["summary"] if row["b1_sequence"]), "?")
    out = [
        f"| model | layers | precision | ONNX MB | {metric} ({v.get('split', '?')}) | "
        f"retention | sentences/s | p50 ms (b1, s{seq}) | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["summary"]:
        ret = f"{100 * row['retention']:.1f}%" if row["retention"] is not None else "-"
        out.append(
            f"| {row['model']} | {_fmt(row['layers'])} | {_fmt(row['precision'])} | "
            f"{_fmt(row['onnx_mb'], 1)} | {_fmt(row['value'])} | {ret} | "
            f"{_fmt(row['sentences_per_s'], 1)} | {_fmt(row['p50_ms_b1'])} | "
            f"{_fmt(row['p99_ms_b1'])} |"
        )
    return out


def budgets_table(verify: dict[str, Any]) -> list[str]:
    out = ["| budget | value | limit | result | what |", "|---|---|---|---|---|"]
    for b in verify.get("budgets", []):
        out.append(
            f"| {b['name']} | {_fmt(b['value'], 3)} | {_fmt(b['limit'], 3)} | "
            f"{'pass' if b['passed'] else '**MISSED**'} | {b['detail']} |"
        )
    return out


def build_lines(b: dict[str, Any] | None) -> list[str]:
    """The TensorRT engine section: what was asked, what TensorRT picked, the trtexec line."""
    if not b:
        return []
    from kdeploy.runtime.layer_report import report_lines

    plan = b["plan"]
    shapes = plan["shapes"][0] if plan["shapes"] else None
    out = [
        "",
        "## TensorRT engine",
        "",
        f"TensorRT {b.get('tensorrt')} for {plan['device']} ({plan['compute_capability']}), "
        f"precision {plan['precision']}, builder flags {', '.join(plan['flags']) or 'none'}, "
        f"workspace {plan['workspace_mb']} MiB"
        + (f", DLA core {plan['dla_core']}" if plan["dla_core"] is not None else "")
        + (
            f"; shapes min/opt/max {shapes['min']} / {shapes['opt']} / {shapes['max']}"
            if shapes
            else ""
        )
        + f"; built in {_fmt(b.get('build_seconds'), 1)}s.",
        "",
        *report_lines(b["layers"]),
        "",
        "The same build on the device, from the run directory:",
        "",
        "```",
        b["trtexec"],
        "```",
    ]
    return out


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def chain_table(r: dict[str, Any]) -> list[str]:
    """The chain, one row per model: size, accuracy, speed and the profile's budgets."""
    rows = r["chain"]
    v = r.get("verify") or {}
    metric = next((x["metric"] for x in rows if x["metric"]), "metric")
    cell = next((x["latency_cell"] for x in rows if x["latency_cell"]), None)
    at = f"b{cell[0]} x s{cell[1]}" if cell else "?"
    tb = next((x["throughput_batch"] for x in rows if x["throughput_batch"]), "?")
    out = [
        f"| model | kind | made by | params | size MB | zero weights | {metric} "
        f"({v.get('split', '?')}) | retention | p50 ms ({at}) | p99 ms | sentences/s "
        f"(b{tb}) | speed-up | budgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        ret = f"{100 * x['retention']:.1f}%" if x["retention"] is not None else "-"
        zeros = f"{100 * x['zero_weights']:.1f}%" if x["zero_weights"] is not None else "-"
        speed = f"{x['speedup']:.2f}x" if x["speedup"] is not None else "-"
        if x["passed"] is None:
            verdict = "-"
        elif x["passed"]:
            verdict = "pass"
        else:
            verdict = "missed: " + ", ".join(k for k, ok in x["budgets"].items() if not ok)
        name = f"**{x['model']}** (deployed)" if x["deploy"] else x["model"]
        out.append(
            f"| {name} | {x['kind']} | {x['made_by'] or '-'} | {_params(x['params'])} | "
            f"{_fmt(x['size_mb'], 1)} | {zeros} | {_fmt(x['value'])} | {ret} | "
            f"{_fmt(x['p50_ms'])} | {_fmt(x['p99_ms'])} | {_fmt(x['sentences_per_s'], 1)} | "
            f"{speed} | {verdict} |"
        )
    chain = [x["model"] for x in rows if x["kind"] != "baseline"]
    base = [x["model"] for x in rows if x["kind"] == "baseline"]
    out += [
        "",
        "Chain: " + " -> ".join(chain) + (f"; baseline: {', '.join(base)}" if base else "") + ".",
    ]
    if r.get("not_in_profile"):
        out.append(f"Not part of this profile (disabled): {', '.join(r['not_in_profile'])}.")
    out.append(
        "Budgets are checked for every model against the profile's limits; only the deployed "
        "model's verdict decides the run. Params count the graph's weights (INT8 included, "
        "quantization scales excluded); size is the model file on disk."
    )
    return out


def triton_section(r: dict[str, Any]) -> list[str]:
    t = r.get("triton")
    ref = r.get("reference")
    out: list[str] = []
    if t:
        out += [
            "",
            "## Serving: Triton model repository",
            "",
            f"`{t['config']}` ({t['platform']}, validated by parsing it into "
            f"{t['validated_with']} and matching its tensors against the graph).",
            "",
            f"- max_batch_size {t['max_batch_size']}, dynamic batching with preferred sizes "
            f"{t['preferred_batch_sizes'] or 'none'} and max queue delay "
            f"{t['max_queue_delay_us']} us; {t['instances']} x {t['instance_kind']}",
            f"- tokenization: {t['tokenization']}",
            "",
            "| tensor | name | type | shape (graph) |",
            "|---|---|---|---|",
        ]
        for kind in ("inputs", "outputs"):
            for x in t[kind]:
                shape = ", ".join("?" if d is None else str(d) for d in x["shape"])
                out.append(f"| {kind[:-1]} | {x['name']} | {x['dtype']} | [{shape}] |")
        out.append("")
        out.append("`?` is a dynamic dimension; the first one is the batch.")
    if ref:
        out += [
            "",
            f"Reference outputs: {ref['count']} real {ref['split']} sentences and the deployed "
            f"model's outputs in `{ref['dir']}`; `kdeploy serve-check RUN_DIR` replays them "
            f"(min cosine {ref['tolerance']['min_cosine']} for embeddings, max |delta p| "
            f"{ref['tolerance']['max_prob_diff']} for classifiers: dynamic INT8 outputs depend "
            "slightly on the batch a sentence shares).",
        ]
    return out
