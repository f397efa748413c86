"""The run summary printed after `compress` and `build`: the report's tables."""

from __future__ import annotations

import json
from pathlib import Path

import click


def print_summary(run_dir: Path) -> None:
    """The models (or chain) table and the budgets of a packaged run; nothing before the
    package stage has written report.json."""
    from kdeploy.report.markdown import budgets_table, chain_table, models_table

    report_path = run_dir / "package" / "report.json"
    if not report_path.is_file():
        return
    report = json.loads(report_path.read_text())
    table = chain_table(report) if report.get("chain") else models_table(report)
    click.echo("\n".join(["", *table]))
    if (report.get("verify") or {}).get("budgets"):
        click.echo("\n".join(["", *budgets_table(report["verify"])]))
    click.echo(f"\nreport: {run_dir / 'package' / 'report.md'}")
