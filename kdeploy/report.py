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
    manifest: dict[str, Any], bench: dict | None, verify: dict | None, deploy_dir: str | None
) -> dict[str, Any]:
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
        "export": manifest["stages"].get("export", {}).get("metrics"),
        "quantize": manifest["stages"].get("quantize", {}).get("metrics"),
        "build": manifest["stages"].get("build", {}).get("metrics"),
        "summary": rows,
        "bench": bench,
        "verify": verify,
        "deploy_dir": deploy_dir,
        "passed": (verify or {}).get("passed"),
    }


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
    out += ["", "## Models", ""]
    out += models_table(r)
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
