"""The cpu-int8 student beyond the benchmark it was tuned on (issue 19's figures).

    python benchmarks/transfer.py [--write]

Runs (or reuses, by the pipeline's stage keys) two real `kdeploy compress` runs of the
README's main job, both with `--probe ../shared/data/sst2`:

- shipped: `--profile cpu-int8 --data stsb --unlabeled sst2`, in the main job's own run
  dir, so the figures are those of the student the README's command leaves;
- cross-domain: the same with `--set distill.text_sources=[unlabeled]`: distilled on SST-2's
  sentences only, judged on STS-B, whose sentences it never saw.

For optimum's INT8 teacher and each student, from the runs' verify.json: the STS-B
Spearman and its retention, the SST-2 linear-probe accuracy and its retention, recall@10 of
the teacher's nearest neighbours among the distinct STS-B test sentences and the similarity
Spearman; and how many of the evaluated texts each student was trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import add_write_options, argv_of, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CROSS = "distill.text_sources=[unlabeled]"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=None, help="teacher (default: MiniLM)")
    ap.add_argument("--data", type=Path, default=DATA / "stsb")
    ap.add_argument("--unlabeled", type=Path, default=DATA / "sst2")
    ap.add_argument("--probe", type=Path, default=DATA / "sst2")
    ap.add_argument("--profile", default="cpu-int8")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the shipped run's dir (default: the main job's, runs/<profile>-<model>)",
    )
    ap.add_argument(
        "--cross-out",
        type=Path,
        default=None,
        help="the cross-domain run's dir (default: the shipped run's dir + '-xdomain')",
    )
    ap.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="extra profile override for both runs",
    )
    ap.add_argument("--no-cross", action="store_true", help="only the shipped run")
    ap.add_argument("--verbose", action="store_true", help="the pipeline's log and bars")
    add_write_options(ap)
    return ap


def run_one(args: argparse.Namespace, out: Path, extra: list[str]) -> dict:
    """The run's verify.json (a missed budget is reported in the table, not raised)."""
    from kdeploy.api import BudgetMissed, RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.model_info import default_model_dir
    from kdeploy.stages import RunOptions

    def log(m: str) -> None:
        if args.verbose:
            print(f"{time.strftime('%H:%M:%S')} [{out.name}] {m}", flush=True)

    req = RunRequest(
        profile=load_profile(args.profile, [*args.extra, *extra]),
        model_dir=args.model or default_model_dir(),
        data_dir=args.data,
        out_dir=out,
        unlabeled=args.unlabeled,
        probe=args.probe,
        options=RunOptions(progress=args.verbose),
    )
    with contextlib.suppress(BudgetMissed):  # the table says which budgets were missed
        run_pipeline(req, log=log)
    return json.loads((out / "verify" / "verify.json").read_text())


def rows_of(label: str, verify: dict, names: tuple[str, ...]) -> list[dict]:
    t = verify.get("transfer") or {}
    seen = t.get("texts_seen") or {}
    missed = [b["name"] for b in verify["budgets"] if not b["passed"]]
    out = []
    for name in names:
        m, tr = verify["models"][name], t.get("models", {}).get(name, {})
        student = name.startswith("student")
        out.append(
            {
                "run": label,
                "model": name,
                "metric": m["value"],
                "retention": m["retention"],
                "probe": tr.get("probe_accuracy"),
                "probe_retention": tr.get("probe_retention"),
                "recall": tr.get("neighbour_recall"),
                "rank_spearman": tr.get("neighbour_rank_spearman"),
                "eval_seen": f"{seen['eval']['seen']}/{seen['eval']['texts']}"
                if student and "eval" in seen
                else "-",
                "probe_seen": f"{seen['probe_train']['seen']}/{seen['probe_train']['texts']}"
                if student and "probe_train" in seen
                else "-",
                "budgets": "-"
                if not student
                else ("missed: " + ", ".join(missed) if missed else "all passed"),
            }
        )
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table(rows: list[dict], k: int) -> str:
    lines = [
        "| run | model | STS-B Spearman | retention | SST-2 probe acc. | probe retention | "
        f"recall@{k} | similarity Spearman | STS-B texts trained on | probe-fit texts "
        "trained on | budgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['model']} | {_num(r['metric'])} | {_pct(r['retention'])} | "
            f"{_num(r['probe'])} | {_pct(r['probe_retention'])} | {_pct(r['recall'])} | "
            f"{_num(r['rank_spearman'], 4)} | {r['eval_seen']} | {r['probe_seen']} | "
            f"{r['budgets']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from kdeploy.engine.rundir import default_run_dir
    from kdeploy.model_info import default_model_dir

    out = args.out or default_run_dir(args.profile, args.model or default_model_dir())
    shipped = run_one(args, out, [])
    rows = rows_of("shipped", shipped, ("teacher_fp32", "teacher_int8", "student_int8"))
    if not args.no_cross:
        cross_out = args.cross_out or out.with_name(out.name + "-xdomain")
        cross = run_one(args, cross_out, [CROSS])
        rows += rows_of("cross-domain", cross, ("student_int8",))
    k = ((shipped.get("transfer") or {}).get("neighbours") or {}).get("k", 10)
    text = table(rows, k)
    print(text)
    if args.write:
        write_block(
            "transfer",
            text,
            script=__file__,
            argv=argv_of(argv),
            title="Beyond STS-B: transfer of the cpu-int8 student (issue 19)",
            results=args.results,
        )


if __name__ == "__main__":
    main()
