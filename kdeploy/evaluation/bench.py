"""Latency over a batch x sequence grid and throughput on real sentences.

Every model is measured in the same process and thread setting, round-robin, so their
ratios are fair even when the machine's absolute speed drifts. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.config import BenchConfig
from kdeploy.core.host import host_info
from kdeploy.data import load_task_data
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.runners import Runner, RunnerSettings, make_runner
from kdeploy.runtime.text import TextEncoder
from kdeploy.runtime.timing import time_calls


@dataclass
class _Opened:
    runner: Runner
    text: TextEncoder
    card: ModelCard
    model_dir: Path


def synthetic_feeds(batch: int, seq: int, vocab: int, rng: np.random.Generator) -> dict:
    """Token tensors of ordinary word pieces (past the special tokens at the start of
    BERT vocabularies), every position attended."""
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, seq), dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }


def _throughput(m: _Opened, texts: list[str], batch_size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        m.runner.infer(m.text.encode(texts[i : i + batch_size]))
    return len(texts) / (time.perf_counter() - t0)


def latency_grid(m: _Opened, cfg: BenchConfig, rng: np.random.Generator) -> list[dict]:
    """p50/p90/p99 per (batch, sequence) cell of the profile's grid."""
    vocab = m.text.tokenizer.get_vocab_size()
    grid = []
    for b in cfg.batch_sizes:
        for s in cfg.sequence_lengths:
            feeds = synthetic_feeds(b, s, vocab, rng)
            feeds = {k: v for k, v in feeds.items() if k in m.runner.input_names}
            stats = time_calls(
                m.runner.bench_fn(feeds), warmup=cfg.warmup, iterations=cfg.iterations
            )
            grid.append({"batch": b, "sequence": s, **stats})
    return grid


def throughputs(opened: dict[str, _Opened], texts: list[str], cfg: BenchConfig) -> dict:
    """Sentences/s of every model on the same real texts, models interleaved per repeat."""
    batch = cfg.throughput_batch_size
    runs: dict[str, list[float]] = {n: [] for n in opened}
    for m in opened.values():  # warm-up pass, not timed
        _throughput(m, texts[: batch * 2], batch)
    for _ in range(cfg.throughput_repeats):
        for name, m in opened.items():
            runs[name].append(_throughput(m, texts, batch))
    return {
        name: {
            "batch_size": batch,
            "texts": len(texts),
            "sentences_per_s": float(np.median(values)),
            "runs": values,
        }
        for name, values in runs.items()
    }


def model_bytes(model_file: Path) -> int:
    """Size of a model file on disk (an OpenVINO model.xml with its model.bin)."""
    files = (
        [model_file, model_file.with_suffix(".bin")]
        if model_file.suffix == ".xml"
        else [model_file]
    )
    return sum(f.stat().st_size for f in files if f.is_file())


def _describe(m: _Opened, grid: list[dict]) -> dict:
    return {
        "model": str(m.model_dir),
        "precision": m.card.precision,
        "role": m.card.role,
        "layers": m.card.extra.get("layers"),
        "onnx_bytes": model_bytes(m.model_dir / m.card.model_file),
        "model_file": m.card.model_file,
        "io": getattr(m.runner, "io_mode", "host"),
        "latency": grid,
    }


def bench_models(
    models: dict[str, Path],
    cfg: BenchConfig,
    *,
    threads: int | None,
    texts: list[str] | None,
    log: Callable[[str], None] = print,
    settings: RunnerSettings | None = None,
) -> dict:
    """Measure each model dir; returns {"host", "threads", "models": {name: {...}}}.

    ``settings`` picks the providers (GPU targets: ONNX Runtime CUDA/TensorRT EPs with IO
    binding; engines always run on TensorRT); without them every ONNX model runs on
    ONNX Runtime's CPU EP.
    """
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        opened: dict[str, _Opened] = {}
        for name, mdir in models.items():
            card = ModelCard.load(mdir)
            text = TextEncoder(mdir / card.tokenizer_file, card.max_seq_length)
            runner = make_runner(mdir, card, threads=threads, settings=settings, name=name)
            opened[name] = m = _Opened(stack.enter_context(runner), text, card, mdir)
            results[name] = _describe(m, latency_grid(m, cfg, rng))
            p50 = ", ".join(
                f"b{g['batch']}s{g['sequence']}={g['p50_ms']:.2f}ms"
                for g in results[name]["latency"]
            )
            log(f"{name}: p50 {p50}")
        if texts:
            for name, tp in throughputs(opened, texts, cfg).items():
                results[name]["throughput"] = tp
                log(
                    f"{name}: {tp['sentences_per_s']:.1f} sentences/s "
                    f"(batch {tp['batch_size']}, {len(texts)} real texts)"
                )
    return {"host": host_info(), "threads": threads, "models": results}


def throughput_texts(data_dir: Path, cfg: BenchConfig) -> list[str]:
    """The real sentences throughput is measured on (the bench split's, capped)."""
    split = load_task_data(data_dir, need_train=False).bench_split()
    texts = split.texts()
    return texts[: cfg.throughput_texts] if cfg.throughput_texts else texts
