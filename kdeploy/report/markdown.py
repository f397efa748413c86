"""report.json -> report.md: the Markdown is a view of the JSON, one function per section."""

from __future__ import annotations

from typing import Any

from kdeploy.report.transfer import transfer_lines


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


def header_lines(r: dict[str, Any]) -> list[str]:
    p = r["profile"]
    verdict = {True: "**PASSED**", False: "**FAILED**", None: "not verified"}[r.get("passed")]
    out = [
        f"# kdeploy report: {p['name']}",
        "",
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
    return out


def plots_lines(r: dict[str, Any]) -> list[str]:
    plots = r.get("plots") or {}
    if plots.get("files"):
        out = ["", "## Plots", ""]
        titles = {"pareto": "accuracy vs throughput", "latency": "latency vs batch and sequence"}
        for key, rel in plots["files"].items():
            out += [f"![{titles.get(key, key)}]({rel})", ""]
        return out
    if plots.get("skipped"):
        return ["", "## Plots", "", f"Plots skipped: {plots['skipped']}"]
    return []


def latency_grid_lines(bench: dict[str, Any] | None) -> list[str]:
    """p50 / p99 per (batch, sequence) cell, one column per model."""
    models = (bench or {}).get("models") or {}
    if not models:
        return []
    names = list(models)
    cells = [(g["batch"], g["sequence"]) for g in next(iter(models.values()))["latency"]]
    out = ["", "## Latency grid (ms, p50 / p99)", ""]
    out.append("| batch x seq | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for b, s in cells:
        vals = []
        for n in names:
            g = next(
                (x for x in models[n]["latency"] if (x["batch"], x["sequence"]) == (b, s)), None
            )
            vals.append(f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f}" if g else "-")
        out.append(f"| {b} x {s} | " + " | ".join(vals) + " |")
    return out


def distill_lines(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return []
    return [
        "",
        "## Distillation",
        "",
        f"Kept teacher layers {d.get('kept_layers')}, {d.get('texts')} training texts, "
        f"{d.get('epochs')} epochs ({d.get('steps')} steps) in "
        f"{_fmt(d.get('train_seconds'), 0)}s on {d.get('device')}; final loss "
        f"{_fmt(d.get('final_loss'), 5)}.",
        *global_attention_line(d),
    ]


def global_attention_line(d: dict[str, Any]) -> list[str]:
    """ModernBERT students: which layers attend globally (the others use the window)."""
    layers = d.get("global_attention_layers")
    if not layers:
        return []
    kept = d.get("kept_layers") or []
    teacher = [kept[i] for i in layers if i < len(kept)]
    return [
        "",
        f"Global attention: student layers {layers} (teacher layers {teacher}); the others "
        "attend through the sliding window, as in the teacher.",
    ]


def export_lines(e: dict[str, Any] | None) -> list[str]:
    if not e:
        return []
    out = ["", "## Export validation (torch vs ONNX Runtime, real sentences)", ""]
    for role, m in e.items():
        val = m["validation"]
        out.append(
            f"- {role}: max |diff| {val['max_abs_diff']:.2e}, min cosine "
            f"{val['min_cosine']:.6f} over {val['texts']} texts"
        )
    return out


# quantize metrics with a section of their own (strongly_typed_lines)
_TYPED_KEYS = ("fp16", "fp16_check", "qdq_lint")


def quantize_lines(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    out = ["", "## Quantization", ""]
    for role, m in q.items():
        if role in _TYPED_KEYS:
            continue
        desc = ", ".join(f"{k}={v}" for k, v in m.items() if not k.startswith("bytes"))
        out.append(f"- {role}: {desc}")
    return out + strongly_typed_lines(q)


def strongly_typed_lines(q: dict[str, Any]) -> list[str]:
    """The FP16 (+ INT8) graph of a TensorRT target: the lint, the ops kept FP32 by rule,
    the GEMM FLOPs by precision and the CPU check against the budget."""
    lint, cast, check = q.get("qdq_lint"), q.get("fp16"), q.get("fp16_check")
    if not (lint or cast or check):
        return []
    out = ["", "## TensorRT graph (strongly typed: the engine runs these types)", ""]
    if lint:
        out.append(f"- Q/DQ lint: {lint['summary']}")
        for rule, nodes in (lint.get("fp32_kept") or {}).items():
            shown = ", ".join(nodes[:4]) + (f" (+{len(nodes) - 4})" if len(nodes) > 4 else "")
            out.append(f"- kept FP32 by rule `{rule}`: {len(nodes)} node(s): {shown or '-'}")
    if cast:
        share = cast["gemm_share"]
        out.append(
            f"- FP16 cast ({cast['tool']}): {cast['fp16_nodes']} of {cast['nodes']} nodes "
            f"FP16, opset {cast['opset']}; GEMM FLOPs at batch {share['batch']} x "
            f"{share['sequence']}: "
            + ", ".join(f"{k.upper()} {v:.1%}" for k, v in share["share"].items())
        )
    if check:
        out.append(
            f"- CPU check ({check['runner']}): min cosine {check['min_cosine']:.5f} vs the "
            f"source model on {check['texts']} texts (budget {check['budget_min_cosine']}); "
            f"{check['metric']} {check['fp16_value']:.2f} vs {check['fp32_value']:.2f} for the "
            f"FP32 graph on {check['split']} ({check['examples']} examples), retention "
            f"{check['retention']:.4f} (budget {check['budget_min_retention']}): "
            + ("passed" if check["passed"] else "FAILED")
        )
    return out


def stages_lines(r: dict[str, Any]) -> list[str]:
    out = ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    for name, s in r["stages"].items():
        out.append(f"| {name} | {s['seconds']:.1f} |")
    if r.get("skipped_stages"):
        out.append(f"\nSkipped (disabled by the profile): {', '.join(r['skipped_stages'])}")
    out += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v)]
    return out


def render_markdown(r: dict[str, Any]) -> str:
    out = header_lines(r)
    if r.get("chain"):
        out += ["", "## Compression chain", ""] + chain_table(r)
    else:
        out += ["", "## Models", ""] + models_table(r)
    if r.get("layers"):
        out += ["", "## Layers", ""] + layers_table(r)
    out += plots_lines(r)
    if (r.get("verify") or {}).get("budgets"):
        out += ["", "## Budgets", ""] + budgets_table(r["verify"])
    out += engines_lines(r.get("verify"))
    out += transfer_lines(r.get("verify"))
    out += latency_grid_lines(r.get("bench"))
    out += distill_lines(r.get("distill"))
    out += export_lines(r.get("export"))
    out += quantize_lines(r.get("quantize"))
    out += build_lines(r.get("build"))
    out += triton_section(r)
    out += stages_lines(r)
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


def engines_lines(verify: dict[str, Any] | None) -> list[str]:
    """Which engine the run deploys and by how much it won (profiles with several)."""
    engines = (verify or {}).get("engines") or []
    if len(engines) < 2:
        return []
    out = [
        "",
        "## Engines (picked by measurement)",
        "",
        f"The run {verify.get('deploy_reason', '')}.",
        "",
        "| model | engine | sentences/s | budgets | deployed |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        missed = [b["name"] for b in e["budgets"] if not b["passed"]]
        verdict = "all met" if not missed else "missed: " + ", ".join(missed)
        out.append(
            f"| {e['model']} | {e['engine']} | {_fmt(e['sentences_per_s'], 1)} | {verdict} | "
            f"{'**yes**' if e['model'] == verify.get('deploy') else 'no'} |"
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
    chain = [x["model"] for x in rows if x["kind"] in ("reference", "chain")]
    base = [x["model"] for x in rows if x["kind"] == "baseline"]
    other = [x["model"] for x in rows if x["kind"] == "engine"]
    out += [
        "",
        "Chain: "
        + " -> ".join(chain)
        + (f"; other engine: {', '.join(other)} (from the same student)" if other else "")
        + (f"; baseline: {', '.join(base)}" if base else "")
        + ".",
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
