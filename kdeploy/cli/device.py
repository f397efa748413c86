"""The device-side commands, none of which needs torch: `bench`, `verify`, `build` (the
TensorRT engine on the target GPU) and `serve-check` (a packaged run)."""

from __future__ import annotations

from pathlib import Path

import click

from kdeploy.cli.summary import print_summary
from kdeploy.core.errors import BudgetError


@click.command()
@click.argument("target", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data dir for the throughput texts (default: the run's).",
)
@click.option(
    "--profile",
    "profile_ref",
    default=None,
    help="Profile for the grid and threads (default: the run's, or cpu-int8).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the results as JSON.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a profile value, e.g. a budget (repeatable).",
)
def bench(target, data_dir, profile_ref, overrides, json_out) -> None:
    """Latency grid and throughput of a run dir's models or of one ONNX model (no torch)."""
    from kdeploy import api

    result = api.bench(
        target,
        data_dir=data_dir,
        profile_ref=profile_ref,
        overrides=list(overrides),
        log=lambda m: click.echo(m, err=True),
    )
    click.echo("| model | batch x seq | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, m in result["models"].items():
        for g in m["latency"]:
            click.echo(
                f"| {name} | {g['batch']} x {g['sequence']} | {g['p50_ms']:.2f} | "
                f"{g['p99_ms']:.2f} |"
            )
    if any("throughput" in m for m in result["models"].values()):
        click.echo("\n| model | sentences/s |\n|---|---|")
        for name, m in result["models"].items():
            click.echo(f"| {name} | {m['throughput']['sentences_per_s']:.1f} |")
    if json_out:
        from kdeploy.core.fsutil import atomic_write_json

        atomic_write_json(json_out, result)


@click.command()
@click.argument("target", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data dir with the eval split (default: the run's).",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Teacher ONNX model dir for retention (when TARGET is a model).",
)
@click.option(
    "--profile",
    "profile_ref",
    default=None,
    help="Profile with the budgets (default: the run's, or cpu-int8).",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a profile value, e.g. a budget (repeatable).",
)
def verify(target, data_dir, reference, profile_ref, overrides, json_out) -> None:
    """Task metric, retention and budgets of a run dir or an ONNX model (no torch)."""
    from kdeploy import api
    from kdeploy.report.markdown import budgets_table

    result = api.verify(
        target,
        data_dir=data_dir,
        reference=reference,
        profile_ref=profile_ref,
        overrides=list(overrides),
        log=lambda m: click.echo(m, err=True),
    )
    click.echo("| model | metric | value | retention |\n|---|---|---|---|")
    for name, m in result["models"].items():
        click.echo(f"| {name} | {m['metric']} | {m['value']:.2f} | {100 * m['retention']:.1f}% |")
    if result["budgets"]:
        click.echo("\n" + "\n".join(budgets_table(result)))
    if json_out:
        from kdeploy.core.fsutil import atomic_write_json

        atomic_write_json(json_out, result)
    if not result["passed"]:
        failed = [b["name"] for b in result["budgets"] if not b["passed"]]
        raise BudgetError(
            f"budget(s) missed: {', '.join(failed)}",
            where=str(json_out or target),
            fix="see the budget table above",
        )


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--until",
    default="build",
    show_default=True,
    metavar="STAGE",
    help="Go on after the build: bench, verify or package (records them in the run).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The run's data dir, when it sits elsewhere on this machine.",
)
@click.option("--force", is_flag=True, help="Rebuild even when the engine is up to date.")
def build(run_dir, until, data_dir, force) -> None:
    """Build the TensorRT engine of a run on the target GPU (no torch), then optionally
    bench, verify and package it (--until package)."""
    from kdeploy.api import BudgetMissed, run_device_stages
    from kdeploy.core.fsutil import read_json
    from kdeploy.runtime.layer_report import report_lines

    try:
        result = run_device_stages(
            run_dir,
            until=until,
            data_dir=data_dir,
            force=force,
            log=lambda m: click.echo(m, err=True),
        )
    except BudgetMissed:
        print_summary(run_dir)
        raise
    rec = result.manifest.stages.get("build")
    if rec is not None:
        click.echo(f"engine: {rec.outputs['student_trt'].abspath(run_dir)}")
        click.echo("\n".join(report_lines(rec.metrics["layers"])))
        click.echo(f"trtexec equivalent (from {run_dir}):\n  {rec.metrics['trtexec']}")
    elif "build" in result.skipped:
        click.echo(
            f"profile {read_json(run_dir / 'manifest.json')['profile']['name']} "
            "has no TensorRT build (runtime is not trt)"
        )
    print_summary(run_dir)


@click.command("serve-check")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def serve_check_cmd(run_dir, json_out) -> None:
    """Check a packaged run: Triton config vs graph, runtime and Triton model vs the stored
    reference outputs (no torch; needs kdeploy[triton] for the config)."""
    from kdeploy.api import serve_check
    from kdeploy.core.errors import ModelError

    result = serve_check(run_dir, log=lambda m: click.echo(m, err=True))
    click.echo("| check | result | detail |\n|---|---|---|")
    for c in result["checks"]:
        click.echo(f"| {c['check']} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |")
    if json_out:
        from kdeploy.core.fsutil import atomic_write_json

        atomic_write_json(json_out, result)
    if not result["passed"]:
        failed = [c["check"] for c in result["checks"] if not c["passed"]]
        raise ModelError(
            f"serve-check failed: {', '.join(failed)}",
            where=str(run_dir / "package"),
            fix="the packaged model no longer matches its reference outputs or its Triton "
            "config; rerun `kdeploy compress --from package` (see the table above)",
        )
