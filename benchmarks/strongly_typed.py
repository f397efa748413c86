"""The strongly typed graph TensorRT 10.12+/11.x gets, measured on CPU (issue 20's figures).

    python benchmarks/strongly_typed.py --run RUN_DIR [--data DIR] [--examples N] [--write]

``RUN_DIR`` is a TensorRT profile's run whose quantize stage ran (``a100-int8`` stops
before build on a machine without TensorRT): ``quantize/student_fp32`` is the FP32 Q/DQ
graph modelopt exported, ``quantize/student`` the FP16 + INT8 graph the stage wrote from
it. ``--model-dir`` instead: any FP32 kdeploy model dir (with or without Q/DQ).

Three tables:

1. The dev-split metric of the FP32 graph (ONNX Runtime, CPU: the fake-quantized torch
   model's numbers, within the export check's tolerance) and of the FP16 graph cast with
   the shipped FP32 rules and with each rule left out, every FP16 graph run by ONNX's
   reference evaluator in its own types (``kdeploy.runtime.reference``); with the minimum
   and median cosine of each FP16 graph's embeddings to the FP32 graph's on the dev
   sentences. Which rules ship is decided by this table.
2. The GEMM FLOPs of one forward pass (batch 1 x 128 tokens) by the precision they run in.
3. The TensorRT API-name check: every TensorRT name kdeploy's build and runner code uses,
   looked up in the pybind11 sources of each supported TensorRT tag
   (``tests/data/tensorrt_api``, read by ``tools/trt_api_names.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import add_write_options, argv_of, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a TensorRT profile's run dir (quantize ran)")
    src.add_argument("--model-dir", type=Path, help="an FP32 kdeploy model dir")
    ap.add_argument("--data", type=Path, default=DATA / "stsb", help="the task's data dir")
    ap.add_argument("--split", default="dev", help="the split evaluated (default: dev)")
    ap.add_argument("--examples", type=int, default=None, help="first N examples (default all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--no-ablation", action="store_true", help="only the shipped rules, no rule left out"
    )
    ap.add_argument("--tag", default="", help="a second block: strongly_typed:TAG")
    add_write_options(ap)
    return ap


def _graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.node


def variants(no_ablation: bool) -> list[tuple[str, tuple[str, ...]]]:
    from kdeploy.onnxtools.precision import DEFAULT_KEEP

    out = [("FP16 graph, shipped rules (" + ", ".join(DEFAULT_KEEP) + ")", DEFAULT_KEEP)]
    if not no_ablation:
        for rule in DEFAULT_KEEP:
            out.append((f"... without {rule}", tuple(r for r in DEFAULT_KEEP if r != rule)))
        out.append(("... nothing kept FP32", ()))
    return out


def _embed_pairs(model_dir: Path, split, n: int, batch_size: int, settings) -> np.ndarray:
    from kdeploy.runtime.model import open_model

    with open_model(model_dir, batch_size=batch_size, settings=settings) as m:
        texts = split.texts_a[:n] + (split.texts_b[:n] if split.texts_b else [])
        return m.outputs(texts)


def _metric(outputs: np.ndarray, split, n: int) -> float:
    from kdeploy.runtime.metrics import accuracy, cosine_rows, spearman

    gold = np.asarray(split.labels[:n])
    if split.texts_b is not None:  # STS: embeddings of both sides
        return 100 * spearman(cosine_rows(outputs[:n], outputs[n:]), gold)
    return 100 * accuracy(outputs.argmax(axis=1), gold)


def measure(fp32_dir: Path, data: Path, split_name: str, examples, batch_size, no_ablation):
    import shutil

    from kdeploy.data import load_task_data
    from kdeploy.evaluation.cast_check import REFERENCE, gemm_share
    from kdeploy.onnxtools.precision import cast_fp16
    from kdeploy.runtime.card import ModelCard
    from kdeploy.runtime.metrics import cosine_rows

    split = load_task_data(data, need_train=False).eval_split(split_name)
    n = min(len(split), examples) if examples else len(split)
    card = ModelCard.load(fp32_dir)
    t0 = time.perf_counter()
    base = _embed_pairs(fp32_dir, split, n, batch_size, None)
    qdq = any(n.op_type == "QuantizeLinear" for n in _graph(fp32_dir / card.model_file))
    rows = [
        {
            "graph": "FP32 Q/DQ (as exported; ONNX Runtime)" if qdq else "FP32 (ONNX Runtime)",
            "value": _metric(base, split, n),
            "min_cos": 1.0,
            "median_cos": 1.0,
            "seconds": time.perf_counter() - t0,
        }
    ]
    share = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, keep in variants(no_ablation):
            d = Path(tmp) / f"keep-{'-'.join(keep) or 'none'}"
            shutil.copytree(fp32_dir, d)
            cast_fp16(fp32_dir / card.model_file, d / card.model_file, keep)
            if share is None:
                share = gemm_share(d / card.model_file)
            t0 = time.perf_counter()
            out = _embed_pairs(d, split, n, batch_size, REFERENCE)
            cos = cosine_rows(base.astype(np.float32), out.astype(np.float32))
            cos = np.nan_to_num(cos, nan=-1.0)
            rows.append(
                {
                    "graph": label,
                    "value": _metric(np.nan_to_num(out), split, n),
                    "min_cos": float(cos.min()),
                    "median_cos": float(np.median(cos)),
                    "seconds": time.perf_counter() - t0,
                    "finite": bool(np.isfinite(out).all()),
                }
            )
    info = {"split": split.name, "examples": n, "task": "STS" if split.texts_b else "cls"}
    return rows, share, info


def api_rows() -> list[dict]:
    """Per supported TensorRT tag: names used by kdeploy's TensorRT code, and the missing."""
    sys.path.insert(0, str(ROOT))
    from tests.unit.test_trt_api_names import MODULES, SUPPORTED, Api, check

    out = []
    for tag in SUPPORTED:
        api = Api.load(tag)
        used, problems = set(), []
        for module in MODULES:
            c = check(module, api)
            used |= c.used
            problems += c.problems
        out.append({"tag": tag, "used": len(used), "missing": problems})
    return out


def tables(rows, share, info, api) -> str:
    base = rows[0]["value"]
    metric = "Spearman x100" if info["task"] == "STS" else "accuracy %"
    lines = [
        f"{info['split']} split, {info['examples']} examples; FP16 graphs run by ONNX's "
        "reference evaluator (CPU, each op in the graph's types, GEMMs accumulating in FP32)",
        "",
        f"| graph | {metric} | retention vs the FP32 graph | min / median cosine to the FP32 "
        "graph | eval s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        finite = "" if r.get("finite", True) else " (non-finite outputs)"
        lines.append(
            f"| {r['graph']} | {r['value']:.2f}{finite} | {r['value'] / base:.2%} | "
            f"{r['min_cos']:.5f} / {r['median_cos']:.6f} | {r['seconds']:.0f} |"
        )
    if share is not None:
        lines += [
            "",
            f"GEMM FLOPs of one forward pass (batch {share.batch} x {share.sequence} tokens), "
            "FP16 graph with the shipped rules:",
            "",
            "| INT8 | FP16 | FP32 | GEMMs (INT8 / FP16 / FP32) |",
            "|---|---|---|---|",
        ]
        counts = {p: sum(g["precision"] == p for g in share.gemms) for p in share.flops}
        lines.append(
            f"| {share.share['int8']:.1%} | {share.share['fp16']:.1%} | "
            f"{share.share['fp32']:.1%} | {counts['int8']} / {counts['fp16']} / "
            f"{counts['fp32']} |"
        )
    lines += [
        "",
        "TensorRT names used by kdeploy's TensorRT code (trt_build, trt_runner, triton_io), "
        "looked up in each tag's Python bindings source:",
        "",
        "| TensorRT tag | names checked | missing |",
        "|---|---|---|",
    ]
    for a in api:
        lines.append(f"| {a['tag']} | {a['used']} | {'; '.join(a['missing']) or 'none'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    fp32_dir = args.model_dir or args.run / "quantize" / "student_fp32"
    if not fp32_dir.is_dir():
        raise SystemExit(f"{fp32_dir} is not a model dir: did the run's quantize stage run?")
    rows, share, info = measure(
        fp32_dir, args.data, args.split, args.examples, args.batch_size, args.no_ablation
    )
    text = tables(rows, share, info, api_rows())
    print(text)
    if args.write:
        write_block(
            "strongly_typed" + (f":{args.tag}" if args.tag else ""),
            text,
            script=__file__,
            argv=argv_of(argv),
            title="Strongly typed TensorRT graphs (FP16 + INT8), checked on CPU"
            + (f" ({args.tag})" if args.tag else ""),
            results=args.results,
        )


if __name__ == "__main__":
    main()
