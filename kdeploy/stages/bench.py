"""bench: latency over a batch x sequence grid and throughput on real sentences.

Every model of the run (teacher fp32 / INT8 baseline, student fp32 / INT8) is measured in
the same process and thread setting, round-robin, so their ratios are fair even when the
machine's absolute speed drifts. Torch-free: runs on the device.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from kdeploy.data import load_task_data
from kdeploy.deps import version_of
from kdeploy.profiles import BenchConfig, Profile
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.runners import Runner, make_runner
from kdeploy.runtime.text import TextEncoder
from kdeploy.runtime.timing import time_calls
from kdeploy.stages import StageContext, StageResult

CONSUMES = (
    "teacher_onnx",
    "teacher_int8?",
    "student_onnx",
    "sparse_onnx?",
    "student_int8?",
    "student_trt?",
    "dataset",
)
PRODUCES = ("bench",)
TOOLS = ("onnxruntime", "tokenizers", "numpy")

# artifact name -> name in tables, in display order
VARIANTS = {
    "teacher_onnx": "teacher_fp32",
    "teacher_int8": "teacher_int8",
    "student_onnx": "student_fp32",
    "sparse_onnx": "student_sparse",
    "student_int8": "student_int8",
    "student_trt": "student_trt",
}


def enabled(profile: Profile) -> bool:
    return True


def config(profile: Profile) -> dict:
    return {
        "bench": profile.bench.model_dump(mode="json"),
        "threads": profile.target.threads,
        "device": profile.target.device,
        "providers": profile.target.providers(),
    }


def host_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "gpu": _gpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": version_of("onnxruntime"),
    }


def _gpu_name() -> str | None:
    """The GPU(s) nvidia-smi reports, when there is one (no CUDA library needed)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return "; ".join(out.stdout.strip().splitlines()) or None


def _synthetic_feeds(batch: int, seq: int, vocab: int, rng: np.random.Generator) -> dict:
    # Ordinary word pieces (past the special tokens at the start of BERT vocabularies).
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, seq), dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }


def _throughput(runner: Runner, enc: TextEncoder, texts: list[str], batch_size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        runner.infer(enc.encode(texts[i : i + batch_size]))
    return len(texts) / (time.perf_counter() - t0)


def bench_models(
    models: dict[str, Path],
    cfg: BenchConfig,
    *,
    threads: int | None,
    texts: list[str] | None,
    log=print,
    profile: Profile | None = None,
) -> dict:
    """Measure each model dir; returns {"host", "threads", "models": {name: {...}}}.

    ``profile`` picks the providers (GPU targets: ONNX Runtime CUDA/TensorRT EPs with IO
    binding, TensorRT engines); without one every model runs on ONNX Runtime's CPU EP.
    """
    rng = np.random.default_rng(0)
    opened: dict[str, tuple[Runner, TextEncoder, ModelCard]] = {}
    results: dict[str, dict] = {}
    try:
        for name, mdir in models.items():
            card = ModelCard.load(mdir)
            enc = TextEncoder(mdir / card.tokenizer_file, card.max_seq_length)
            runner = make_runner(
                mdir, card, threads=threads, profile=profile, name=name
            ).__enter__()
            opened[name] = (runner, enc, card)
            vocab = enc.tokenizer.get_vocab_size()
            grid = []
            for b in cfg.batch_sizes:
                for s in cfg.sequence_lengths:
                    feeds = _synthetic_feeds(b, s, vocab, rng)
                    feeds = {k: v for k, v in feeds.items() if k in runner.input_names}
                    stats = time_calls(
                        runner.bench_fn(feeds),
                        warmup=cfg.warmup,
                        iterations=cfg.iterations,
                    )
                    grid.append({"batch": b, "sequence": s, **stats})
            results[name] = {
                "model": str(mdir),
                "precision": card.precision,
                "role": card.role,
                "layers": card.extra.get("layers"),
                "onnx_bytes": (mdir / card.model_file).stat().st_size,
                "model_file": card.model_file,
                "io": getattr(runner, "io_mode", "host"),
                "latency": grid,
            }
            p50 = ", ".join(f"b{g['batch']}s{g['sequence']}={g['p50_ms']:.2f}ms" for g in grid)
            log(f"{name}: p50 {p50}")
        if texts:
            runs: dict[str, list[float]] = {n: [] for n in opened}
            for runner, enc, _ in opened.values():  # warm-up pass, not timed
                _throughput(
                    runner, enc, texts[: cfg.throughput_batch_size * 2], cfg.throughput_batch_size
                )
            for _ in range(cfg.throughput_repeats):
                for name, (runner, enc, _) in opened.items():
                    runs[name].append(_throughput(runner, enc, texts, cfg.throughput_batch_size))
            for name, values in runs.items():
                results[name]["throughput"] = {
                    "batch_size": cfg.throughput_batch_size,
                    "texts": len(texts),
                    "sentences_per_s": float(np.median(values)),
                    "runs": values,
                }
                log(
                    f"{name}: {np.median(values):.1f} sentences/s "
                    f"(batch {cfg.throughput_batch_size}, {len(texts)} real texts)"
                )
    finally:
        for runner, _, _ in opened.values():
            runner.__exit__(None, None, None)
    return {"host": host_info(), "threads": threads, "models": results}


def throughput_texts(data_dir: Path, cfg: BenchConfig) -> list[str]:
    split = load_task_data(data_dir, need_train=False).bench_split()
    texts = split.texts()
    return texts[: cfg.throughput_texts] if cfg.throughput_texts else texts


def run_models(inputs: dict[str, Path]) -> dict[str, Path]:
    return {VARIANTS[k]: inputs[k] for k in VARIANTS if k in inputs}


def run(ctx: StageContext) -> StageResult:
    from kdeploy.fsutil import atomic_write_json

    cfg = ctx.profile.bench
    texts = throughput_texts(ctx.input("dataset"), cfg)
    result = bench_models(
        run_models(ctx.inputs),
        cfg,
        threads=ctx.profile.target.threads,
        texts=texts,
        log=ctx.log,
        profile=ctx.profile,
    )
    path = ctx.work_dir / "bench.json"
    atomic_write_json(path, result)
    return StageResult(outputs={"bench": path}, metrics=result)
