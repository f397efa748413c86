"""Overhead of kdeploy.runtime's Encoder over a hand-written onnxruntime loop.

    python benchmarks/runtime_overhead.py RUN_OR_MODEL_DIR [--data ../shared/data/stsb] [--write]

Same model file, same real sentences, same batch size, same tokenization (the `tokenizers`
fast batch encoder, truncation to the card's max length, padding to each batch's longest),
same ONNX Runtime session options and threads. Three ways, interleaved and rotated in every
repeat so a drifting shared CPU hits them alike; medians over the repeats:

- hand:      Tokenizer.encode_batch + np.array + InferenceSession.run, batch by batch
- runtime:   Encoder(bucketing=False).embed: the very same batches -> the wrapper's overhead
- bucketed:  Encoder(bucketing=True).embed (the default): sorted by length, less padding

The per-repeat ratio runtime/hand (paired, same minute of CPU) is the overhead figure.
It also prints how far the two batch layouts move the outputs (min and median cosine of
each sentence's fixed-order vs bucketed output): zero for fp32, small for dynamic INT8,
whose activation scales are picked per batch.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import add_write_options, argv_of, write_block  # noqa: E402

from kdeploy.runtime import Encoder  # noqa: E402
from kdeploy.runtime.card import ModelCard, resolve_model_dir  # noqa: E402
from kdeploy.runtime.metrics import cosine_rows  # noqa: E402


def load_texts(data: Path, n: int) -> list[str]:
    with open(data / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    cols = [i for i, h in enumerate(header) if h in ("sentence1", "sentence2", "sentence")]
    texts = [r[i] for i in cols for r in body if len(r) > i]
    return texts[:n]


class HandLoop:
    """What a user writes by hand with onnxruntime and tokenizers."""

    def __init__(self, model_dir: Path, threads: int | None, batch_size: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        card = ModelCard.load(model_dir)
        self.tok = Tokenizer.from_file(str(model_dir / card.tokenizer_file))
        self.tok.enable_truncation(max_length=card.max_seq_length)
        pad = self.tok.padding or {}
        self.tok.enable_padding(
            pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]")
        )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(
            str(model_dir / card.model_file), so, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.sess.get_inputs()}
        self.output = card.output
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        outs = []
        for i in range(0, len(texts), self.batch_size):
            encs = self.tok.encode_batch(texts[i : i + self.batch_size])
            feeds = {
                "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
            }
            feeds = {k: v for k, v in feeds.items() if k in self.inputs}
            outs.append(self.sess.run([self.output], feeds)[0])
        return np.concatenate(outs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="run dir (its packaged model) or model dir")
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb",
    )
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    add_write_options(ap)
    return ap


def interleaved_rates(ways: dict, texts: list[str], repeats: int) -> dict[str, list[float]]:
    """Sentences/s of each way per repeat, the order rotated every repeat."""
    rates: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            ways[k](texts)
            rates[k].append(len(texts) / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    texts = load_texts(args.data, args.texts)
    hand = HandLoop(model_dir, args.threads, args.batch_size)
    fixed = Encoder(model_dir, threads=args.threads, batch_size=args.batch_size, bucketing=False)
    bucketed = Encoder(model_dir, threads=args.threads, batch_size=args.batch_size)
    ways = {"hand": hand.embed, "runtime": fixed.embed, "bucketed": bucketed.embed}

    # same batches, same numbers: the comparison is of equal work
    ref = hand.embed(texts)
    same = np.array_equal(ref, fixed.embed(texts))
    layout_cos = cosine_rows(fixed.embed(texts), bucketed.embed(texts))
    for fn in ways.values():  # warm-up
        fn(texts[: args.batch_size * 2])
    rates = interleaved_rates(ways, texts, args.repeats)
    ratio_fixed = np.median(np.array(rates["runtime"]) / np.array(rates["hand"]))
    ratio_bucket = np.median(np.array(rates["bucketed"]) / np.array(rates["hand"]))
    card = ModelCard.load(model_dir)
    lines = [
        f"Model `{model_dir}` ({card.precision}, {card.extra.get('layers')} layers), "
        f"{len(texts)} real sentences from {args.data.name}, batch {args.batch_size}, "
        f"{args.threads} threads, {args.repeats} interleaved repeats; runtime output == "
        f"hand output: {same}; fixed-order vs bucketed outputs: cosine min "
        f"{layout_cos.min():.4f}, median {np.median(layout_cos):.4f}.",
        "",
        "| way | sentences/s (median) | min | max | vs hand (median of paired ratios) |",
        "|---|---|---|---|---|",
    ]
    for k, ratio in (("hand", 1.0), ("runtime", ratio_fixed), ("bucketed", ratio_bucket)):
        v = rates[k]
        lines.append(
            f"| {k} | {np.median(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
            f"{ratio:.3f} ({100 * (ratio - 1):+.1f}%) |"
        )
    fixed.close()
    bucketed.close()
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_block(
            f"runtime_overhead:{card.precision}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="Runtime overhead",
            results=args.results,
        )


if __name__ == "__main__":
    main()
