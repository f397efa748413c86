"""Which 2:4 masks, before any fine-tuning? A distilled student's task metric with its
Linear weights pruned 2:4 (sparsify's eligible layers) by each method, one shot:

- magnitude: modelopt's ``sparse_magnitude`` (the 2 largest of every 4);
- modelopt sparsegpt: modelopt's ``sparsegpt`` mode, which computes SparseGPT's mask and
  keeps only the mask (the weights stay the dense ones, masked);
- kdeploy sparsegpt: ``kdeploy/train/sparsegpt.py``, the mask *and* the weight update.

    python benchmarks/sparse_oneshot.py --model runs/obs5/distill/student [--write]

Scored on the data's dev split (dev only; test is never used for choices), calibration on
``--calibration-texts`` train texts seeded as the sparsify stage seeds them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
from pathlib import Path

from results import add_write_options, argv_of, write_block

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, required=True, help="a distilled student dir")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--calibration-texts", type=int, default=512)
    ap.add_argument("--min-features", type=int, default=64, help="sparsify.min_features")
    ap.add_argument("--seed", type=int, default=42)
    add_write_options(ap)
    return ap


def modelopt_sparsegpt_masks(model, sparse: list[str], batches) -> dict:
    """modelopt's own sparsegpt mode, on a copy: its masks (its weights are not used)."""
    import modelopt.torch.sparsity as mts

    from kdeploy.train.batching import forward_loop

    work = copy.deepcopy(model).eval()
    rules: dict[str, dict | None] = {"*": None}
    rules.update({name: {} for name in sparse})
    with contextlib.redirect_stdout(io.StringIO()):
        mts.sparsify(
            work,
            mode=[("sparsegpt", {"nn.Linear": rules})],
            config={"forward_loop": forward_loop(batches)},
        )
    modules = dict(work.named_modules())
    return {name: modules[name]._weight_mask.detach().bool().cpu() for name in sparse}


def main(argv: list[str] | None = None) -> None:
    import torch

    from kdeploy.config import SparsifyConfig
    from kdeploy.data import calibration_texts, load_task_data
    from kdeploy.model_info import inspect_model
    from kdeploy.train.batching import tokenized_batches
    from kdeploy.train.evaluate import score
    from kdeploy.train.loading import load_hf_model, load_tokenizer
    from kdeploy.train.sparsify import apply_masks, choose_layers, compute_masks, load_weights

    args = build_parser().parse_args(argv)
    info = inspect_model(args.model)
    tok = load_tokenizer(info.path)
    split = load_task_data(args.data).splits[args.split]
    dense = load_hf_model(info)
    max_len = min(128, info.max_seq_length)

    def evaluate(model) -> float:
        return score(model, tok, info, split, max_len, torch.device("cpu"))

    texts = calibration_texts(args.data, args.calibration_texts, args.seed)
    batches = tokenized_batches(tok, texts, max_len, 16, torch.device("cpu"))
    rows = [("dense (no masks)", evaluate(dense))]
    for method in ("magnitude", "modelopt sparsegpt", "sparsegpt"):
        cfg = SparsifyConfig(
            enabled=True,
            method="magnitude" if method == "magnitude" else "sparsegpt",
            min_features=args.min_features,
            calibration_texts=args.calibration_texts,
        )
        layers = choose_layers(dense, cfg)
        sparse = [x.name for x in layers if x.sparse]
        model = copy.deepcopy(dense)
        if method == "modelopt sparsegpt":
            masks = modelopt_sparsegpt_masks(dense, sparse, batches)
        else:
            masks, weights = compute_masks(dense, layers, cfg, batches)
            load_weights(model, weights)
        apply_masks(model, masks)
        label = {"sparsegpt": "kdeploy sparsegpt (mask + update)"}.get(method, method)
        rows.append((f"{label}, {len(sparse)} layers", evaluate(model)))
        print(rows[-1], flush=True)
    lines = [
        f"Student `{info.path}` ({info.num_layers} layers), {args.data.name} {args.split} "
        f"{'Spearman' if info.kind == 'embedding' else 'accuracy'} x100, one shot (no "
        f"fine-tuning), calibration on {len(texts)} train texts.",
        "",
        "| 2:4 masks | metric |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_block(
            f"sparse_oneshot:{args.model.parent.parent.name}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="2:4 masks before fine-tuning",
            results=args.results,
        )


if __name__ == "__main__":
    main()
