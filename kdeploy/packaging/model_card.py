"""README.md of a deliverable folder in the Hugging Face model-card layout: YAML front
matter (library_name, tags, base_model, pipeline_tag, model-index with the task metric),
then the teacher, the recipe, the metrics and retention (verify), the speed against the
teacher (bench) and how to load the folder each way.

Every number comes from the run's report (``package/report.json``, itself made from the
manifest, bench.json and verify.json): nothing here is typed by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdeploy.packaging.hf_folders import ST_DIR, HfFolder

# the id a model card loads its own model with, e.g. SentenceTransformer('org/name')
_SELF_LOAD = re.compile(
    r"(?:SentenceTransformer|CrossEncoder|from_pretrained)\(\s*['\"]([\w.-]+/[\w.-]+)['\"]"
)
_METRIC_NAMES = {
    "spearman": "Spearman correlation of cosine similarities x 100",
    "accuracy": "Accuracy x 100",
}


@dataclass(frozen=True)
class CardContext:
    """Where the card's folder and its run are, as the user addressed them."""

    folder: HfFolder
    display_path: str  # the folder, e.g. runs/cpu-int8-x/package/sentence-transformers
    run_dir: str
    teacher_id: str


def teacher_id(model_path: str) -> str:
    """The teacher's Hub id when the run can tell it: the id its own model card loads it
    with, or a Hugging Face cache path (``models--org--name``); else its directory name."""
    path = Path(model_path)
    for part in path.parts:
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/", 1)
    readme = path / "README.md"
    if readme.is_file():
        found = _SELF_LOAD.search(readme.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found.group(1)
    name = path.name
    return path.parent.name if name in ("model", "models", "") and path.parent.name else name


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _deployed(report: dict[str, Any]) -> dict[str, Any]:
    """The chain row of the model whose graph the folder holds: the deployed one, or, when
    the run deployed another engine's model (OpenVINO IR, which these folders do not
    hold), the last model of the ONNX Runtime chain."""
    chain = report.get("chain") or []
    row = next((r for r in chain if r.get("deploy")), {})
    if row.get("kind") == "engine":
        row = next((r for r in reversed(chain) if r.get("kind") == "chain"), {})
    return row


def front_matter(report: dict[str, Any], ctx: CardContext) -> dict[str, Any]:
    embedding = ctx.folder.layout == ST_DIR
    verify = report.get("verify") or {}
    row = _deployed(report)
    metric = row.get("metric") or "metric"
    data_name = Path(report["data"]["path"]).name
    tags = (
        ["sentence-transformers", "feature-extraction", "sentence-similarity"]
        if embedding
        else ["text-classification", "optimum"]
    )
    tags += ["onnx", "kdeploy", "knowledge-distillation"]
    if row.get("precision") == "int8":
        tags.append("int8")
    meta: dict[str, Any] = {
        "library_name": "sentence-transformers" if embedding else "transformers",
        "pipeline_tag": "sentence-similarity" if embedding else "text-classification",
        "tags": tags,
        "base_model": ctx.teacher_id,
    }
    if row.get("value") is not None:
        meta["model-index"] = [
            {
                "name": model_name(report, ctx),
                "results": [
                    {
                        "task": {
                            "type": "semantic-similarity" if embedding else "text-classification",
                            "name": "Semantic Similarity" if embedding else "Text Classification",
                        },
                        "dataset": {
                            "name": data_name,
                            "type": data_name,
                            "split": verify.get("split"),
                        },
                        "metrics": [
                            {
                                "type": metric,
                                "value": round(float(row["value"]), 4),
                                "name": _METRIC_NAMES.get(metric, metric),
                            }
                        ],
                    }
                ],
            }
        ]
    return meta


def model_name(report: dict[str, Any], ctx: CardContext) -> str:
    return f"{ctx.teacher_id.split('/')[-1]}-kdeploy-{report['profile']['name']}"


def recipe_lines(report: dict[str, Any]) -> list[str]:
    d = report.get("distill") or {}
    q = (report.get("quantize") or {}).get("student") or {}
    s = report.get("sparsify") or {}
    teacher_layers = report["model"].get("layers")
    out = [
        f"- profile: `{report['profile']['name']}` (digest `{report['profile']['digest'][:12]}`)"
    ]
    if d:
        width = f"hidden {d.get('hidden_size')}, feed-forward {d.get('intermediate_size')}"
        out.append(
            f"- student: {len(d.get('kept_layers') or [])} of the teacher's {teacher_layers} "
            f"layers (kept {d.get('kept_layers')}), {width}"
        )
        out.append(
            f"- distillation: {', '.join(d.get('losses') or [])} on {d.get('texts')} texts, "
            f"{d.get('epochs')} epochs ({d.get('steps')} steps)"
        )
    if s:
        out.append(
            f"- 2:4 sparsity ({s.get('method')}): {s.get('sparse_layers')} Linear layers, "
            f"{s.get('linear_weights_zero_fraction')} of their weights zero"
        )
    if q:
        detail = ", ".join(
            f"{k} {q[k]}"
            for k in ("format", "per_channel", "weight_type", "activation_type")
            if q.get(k) is not None
        )
        out.append(f"- quantization: {q.get('method')} INT8 ({detail})")
    return out


def metrics_lines(report: dict[str, Any]) -> list[str]:
    chain = report.get("chain") or []
    verify = report.get("verify") or {}
    if not chain:
        return ["No bench/verify results were recorded for this run."]
    tp = {r["model"]: r.get("sentences_per_s") for r in chain}
    cell = next((r["latency_cell"] for r in chain if r.get("latency_cell")), None)
    lat = f"p50 ms (batch {cell[0]} x {cell[1]})" if cell else "p50 ms"
    metric = next((r["metric"] for r in chain if r.get("metric")), "metric")
    base = "teacher_int8" if tp.get("teacher_int8") else None
    out = [
        f"{metric} on the {verify.get('split')} split of `{Path(report['data']['path']).name}` "
        f"(verify); speed with ONNX Runtime, {report.get('threads')} threads on "
        f"{(report.get('host') or {}).get('cpu')} (bench):",
        "",
        f"| model | precision | layers | {metric} | retention | sentences/s | x teacher fp32 "
        + ("| x teacher INT8 (optimum) " if base else "")
        + f"| {lat} |",
        "|---|---|---|---|---|---|---|" + ("---|" if base else "") + "---|",
    ]
    for r in chain:
        ret = f"{100 * r['retention']:.1f}%" if r.get("retention") is not None else "-"
        sps = r.get("sentences_per_s")
        vs_int8 = _times(sps / tp[base] if base and sps else None)
        own = r["model"] == _deployed(report).get("model")
        name = f"**{r['model']}** (this folder's default)" if own else r["model"]
        out.append(
            f"| {name} | {r.get('precision') or '-'} | {r.get('layers') or '-'} | "
            f"{_num(r.get('value'))} | {ret} | {_num(sps, 0)} | "
            f"{_times(r.get('speedup'))} | "
            + (f"{vs_int8} | " if base else "")
            + f"{_num(r.get('p50_ms'))} |"
        )
    budgets = verify.get("budgets") or []
    if budgets:
        out += ["", "Budgets of the profile:", ""]
        out += [
            f"- {b['name']}: {'pass' if b['passed'] else 'MISSED'} "
            f"(value {_num(b['value'], 3)}, limit {_num(b['limit'], 3)}: {b['detail']})"
            for b in budgets
        ]
    return out


def files_lines(ctx: CardContext) -> list[str]:
    f = ctx.folder
    out = []
    if f.int8_file:
        out.append(
            f"- `{f.int8_file}`: the INT8 model verify measured (the same quantized graph as "
            f"kdeploy's deployed model{', cut before pooling' if f.layout == ST_DIR else ''})"
        )
    if f.fp32_file:
        out.append(f"- `{f.fp32_file}`: the fp32 student")
    if f.layout == ST_DIR:
        out.append(
            "- both graphs end at `last_hidden_state`; pooling and normalisation run in "
            "sentence-transformers (`modules.json`, `1_Pooling/`), as in its own ONNX exports"
        )
    return out


def load_lines(report: dict[str, Any], ctx: CardContext) -> list[str]:
    f, path = ctx.folder, ctx.display_path
    triton = report.get("triton") or {}
    embedding = f.layout == ST_DIR
    out = ["### kdeploy.runtime (numpy, tokenizers, onnxruntime; no torch)", "", "```python"]
    if embedding:
        out += [
            "from kdeploy.runtime import Encoder",
            "",
            f'enc = Encoder("{ctx.run_dir}")  # the run\'s verified deliverable (package/deploy)',
            'vectors = enc.encode(["A man is playing a guitar."])',
        ]
    else:
        out += [
            "from kdeploy.runtime import Classifier",
            "",
            f'clf = Classifier("{ctx.run_dir}")  # the run\'s verified deliverable',
            'labels, probabilities = clf.predict(["a gripping, funny film"])',
        ]
    out += ["```", ""]
    if embedding:
        out += [
            "### sentence-transformers",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            "model = SentenceTransformer(",
            f'    "{path}",',
            '    backend="onnx",',
            f'    model_kwargs={{"file_name": "{f.default_file}"}},',
            ")",
            'vectors = model.encode(["A man is playing a guitar."])',
            "```",
            "",
        ]
    else:
        out += [
            "### optimum",
            "",
            "```python",
            "from optimum.onnxruntime import ORTModelForSequenceClassification",
            "from transformers import AutoTokenizer",
            "",
            f'model = ORTModelForSequenceClassification.from_pretrained("{path}", '
            f'file_name="{f.default_file}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            'logits = model(**tokenizer(["a gripping, funny film"], return_tensors="np")).logits',
            "```",
            "",
        ]
    if triton:
        out += [
            "### Triton",
            "",
            f"`{Path(triton['config']).parent.parent}` is a Triton model repository (model "
            f"`{triton['name']}`, {triton['platform']}); tokenize client-side with "
            "`kdeploy.runtime` (`enc.tokenize(texts)` gives the model's inputs) and read the "
            f"output `{_triton_output(triton)}`.",
            "",
        ]
    return out


def _triton_output(triton: dict[str, Any]) -> str:
    names = [o["name"] for o in triton.get("outputs", [])]
    return next((n for n in names if n in ("sentence_embedding", "logits")), names[-1])


def render_model_card(report: dict[str, Any], ctx: CardContext) -> str:
    """The README.md text of a deliverable folder."""
    meta = yaml.safe_dump(front_matter(report, ctx), sort_keys=False, allow_unicode=True)
    row = _deployed(report)
    kind = "sentence-embedding" if ctx.folder.layout == ST_DIR else "sequence-classification"
    lines = [
        "---",
        meta.rstrip(),
        "---",
        "",
        f"# {model_name(report, ctx)}",
        "",
        f"A {row.get('layers') or '?'}-layer {row.get('precision') or ''} {kind} student of "
        f"`{ctx.teacher_id}`, distilled, compressed and exported to ONNX by kdeploy "
        f"(profile `{report['profile']['name']}`), in the layout "
        f"{'sentence-transformers' if ctx.folder.layout == ST_DIR else 'optimum'} loads. "
        "Generated from the run's report; the figures are the run's own measurements.",
        "",
        "## Teacher",
        "",
        f"`{ctx.teacher_id}` ({report['model'].get('model_type')}, "
        f"{report['model'].get('layers')} layers, {report['model'].get('kind')}), from "
        f"`{report['model']['path']}`.",
        "",
        "## Recipe",
        "",
        *recipe_lines(report),
        "",
        "## Metrics and speed",
        "",
        *metrics_lines(report),
        "",
        "## Files",
        "",
        *files_lines(ctx),
        "",
        "## How to load",
        "",
        *load_lines(report, ctx),
    ]
    return "\n".join(lines).rstrip() + "\n"
