"""Starting a run: a host run (``kdeploy compress``: preflight, run dir, the run's inputs,
then every stage) or a device run (``kdeploy build``: the stages from ``build`` on, over
a run a host started). Both end in the same scheduling loop (``scheduler.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdeploy import __version__
from kdeploy.config import LoadedProfile, dump_profile, load_profile
from kdeploy.core.errors import DataError, RunDirError, UsageError
from kdeploy.core.fsutil import atomic_write_text, combine_digests, digest_files
from kdeploy.data import data_files, load_task_data, unlabeled_file
from kdeploy.engine.digests import ArtifactIndex, FileHashes
from kdeploy.engine.execute import RunState
from kdeploy.engine.manifest import Manifest, load_manifest
from kdeploy.engine.preflight import (
    check_probe,
    check_profile_fit,
    check_stage_name,
    check_stage_range,
    check_task_fit,
)
from kdeploy.engine.rundir import default_run_dir, locked, prepare_run_dir
from kdeploy.engine.scheduler import Policy, RunResult, check_budgets, schedule
from kdeploy.engine.team import Team, follow, lead
from kdeploy.model_info import ModelInfo, inspect_model
from kdeploy.stages import ORDER
from kdeploy.stages.base import RunOptions, StageEnv

DEVICE_FIRST = "build"  # the first stage that runs on the target


@dataclass
class RunRequest:
    profile: LoadedProfile
    model_dir: Path
    data_dir: Path
    out_dir: Path | None = None
    unlabeled: Path | None = None
    probe: Path | None = None  # labelled classification data for verify's linear probe
    force: bool = False
    from_stage: str | None = None
    until_stage: str | None = None
    options: RunOptions = field(default_factory=RunOptions)


def run_pipeline(req: RunRequest, log: Callable[[str], None] = print) -> RunResult:
    """Run (or resume) every enabled stage of the profile. Raises BudgetMissed at the end
    when verify found a budget missed (all artifacts, report included, are kept).

    Under torchrun this is rank 0's part (the other ranks ``follow_leader``): it alone
    touches the run directory and runs the stages; the training stages it runs with the
    other ranks (``team.py``)."""
    return lead(lambda team: _run_pipeline(req, log, team))


def follow_leader() -> int:
    """A rank > 0 of a torchrun job: train with rank 0 until it ends; its exit code."""
    return follow()


def _run_pipeline(req: RunRequest, log: Callable[[str], None], team: Team | None) -> RunResult:
    t_start = time.perf_counter()
    check_stage_range(req.from_stage, req.until_stage)
    teacher = inspect_model(
        req.model_dir,
        allow_pickle=req.options.allow_pickle,
        trust_remote_code=req.options.trust_remote_code,
        task=req.profile.profile.task,
    )
    data = load_task_data(req.data_dir)
    check_task_fit(teacher, data)
    check_profile_fit(teacher, req.profile, data, req.unlabeled)
    check_probe(teacher, req.profile, req.probe)
    run_dir = req.out_dir or default_run_dir(req.profile.name, req.model_dir)
    prepare_run_dir(run_dir)
    with locked(run_dir):
        state = _host_state(req, teacher, run_dir, log)
        state.team = team
        policy = Policy(
            until=req.until_stage or ORDER[-1], from_stage=req.from_stage, force=req.force
        )
        env = StageEnv(profile=req.profile.profile, options=req.options, run_dir=run_dir, log=log)
        result = schedule(state, env, policy, RunResult(run_dir, state.manifest))
    result.seconds = time.perf_counter() - t_start
    check_budgets(result, req.profile.name, policy.until)
    return result


def _host_state(
    req: RunRequest, teacher: ModelInfo, run_dir: Path, log: Callable[[str], None]
) -> RunState:
    """The run's manifest (a fresh one, or the previous run's to resume) and its inputs
    (teacher, data, unlabeled text) hashed into the artifact index."""
    profile = req.profile.profile
    manifest = load_manifest(run_dir)
    if manifest is not None and manifest.profile.get("name") != profile.name:
        if not req.force:
            raise RunDirError(
                f"{run_dir} holds a run of profile '{manifest.profile.get('name')}', "
                f"not '{profile.name}'",
                where=str(run_dir),
                fix="use another --out, or --force to replace that run",
            )
        manifest = None
    state = RunState(
        run_dir,
        manifest or Manifest.new(profile={}, model={}, data={}),
        ArtifactIndex(),
        FileHashes(),
        log,
    )
    log(f"kdeploy {__version__}: profile {profile.name}, run dir {run_dir}")
    _index_run_inputs(state, req, teacher)
    state.manifest.profile = {
        "name": profile.name,
        "digest": req.profile.digest(),
        "sources": [str(p) for p in req.profile.sources],
        "overrides": req.profile.overrides,
    }
    state.manifest.model = {
        "path": str(teacher.path.resolve()),
        "digest": state.index.digests["teacher_model"],
        "kind": teacher.kind,
        "model_type": teacher.model_type,
        "layers": teacher.num_layers,
    }
    state.manifest.data = {
        "path": str(req.data_dir.resolve()),
        "digest": state.index.digests["dataset"],
        "unlabeled": str(req.unlabeled) if req.unlabeled else None,
        "probe": str(req.probe.resolve()) if req.probe else None,
        "probe_digest": state.index.digests.get("probe_data"),
    }
    atomic_write_text(run_dir / "profile.yaml", dump_profile(profile))
    state.manifest.save(run_dir)
    return state


def _index_run_inputs(state: RunState, req: RunRequest, teacher: ModelInfo) -> None:
    hashes, index = state.hashes, state.index
    teacher_files = digest_files(teacher.path, sha256=hashes.sha256)
    index.set(
        "teacher_model",
        teacher.path,
        combine_digests(teacher_files),
        {teacher.path / rel: sha for rel, sha in teacher_files.items()},
    )
    _index_data_dir(state, "dataset", req.data_dir)
    if req.unlabeled is not None:
        src = unlabeled_file(req.unlabeled)
        sha = hashes.sha256(src)
        index.set("unlabeled_text", req.unlabeled, sha, {src: sha})
    if req.probe is not None:
        _index_data_dir(state, "probe_data", req.probe)


def _index_data_dir(state: RunState, name: str, root: Path) -> str:
    """A GLUE-layout folder as the run input ``name``: the digest of its TSV files."""
    shas = {p: state.hashes.sha256(p) for p in data_files(root)}
    digest = combine_digests({p.name: sha for p, sha in shas.items()})
    state.index.set(name, root, digest, shas)
    return digest


def run_device_stages(
    run_dir: Path,
    *,
    until: str = DEVICE_FIRST,
    data_dir: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run the device stages (build .. until) of a run that a host started, torch-free.

    The host stages are taken as recorded: their outputs' sha256 are checked, not their
    keys (the device has none of their tools). Outputs are recorded in the manifest like
    any stage's. ``data_dir`` replaces the run's data path (same content: its digest must
    match), for when the data sits elsewhere on the device.
    """
    t_start = time.perf_counter()
    check_stage_name("--until", until)
    if ORDER.index(until) < ORDER.index(DEVICE_FIRST):
        raise UsageError(
            f"--until {until} is a host stage",
            where=f"--until {until}",
            fix="give build or a later stage",
        )
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise RunDirError(
            f"{run_dir} is not a kdeploy run directory (no manifest.json)",
            where=str(run_dir),
            fix="start the run on a host with `kdeploy compress --profile <gpu profile>`",
        )
    loaded = load_profile(run_dir / "profile.yaml")
    state = RunState(run_dir, manifest, ArtifactIndex(), FileHashes(), log)
    _index_recorded_outputs(state)
    _index_device_data(state, data_dir)
    policy = Policy(
        until=until, force=force, first=DEVICE_FIRST, hand_off=False, record_skipped=False
    )
    env = StageEnv(
        profile=loaded.profile, options=RunOptions(progress=False), run_dir=run_dir, log=log
    )
    with locked(run_dir):
        result = schedule(state, env, policy, RunResult(run_dir, manifest))
    result.seconds = time.perf_counter() - t_start
    check_budgets(result, loaded.name, until)
    return result


def _index_recorded_outputs(state: RunState) -> None:
    """Every intact output the run recorded; a damaged host artifact is an error (the
    device cannot rebuild it), a damaged device artifact is simply rebuilt."""
    first = ORDER.index(DEVICE_FIRST)
    for rec_name, rec in state.manifest.stages.items():
        for out_name, art in rec.outputs.items():
            problems = art.check(state.run_dir, state.hashes.sha256)
            if problems and ORDER.index(rec_name) < first:
                raise RunDirError(
                    f"artifact {out_name} of {state.run_dir} is damaged: {problems[0]}",
                    where=str(art.abspath(state.run_dir)),
                    fix="copy the run directory again from the host",
                )
            if not problems:
                state.index.set(
                    out_name,
                    art.abspath(state.run_dir),
                    art.digest,
                    art.file_paths(state.run_dir),
                )


def _index_device_data(state: RunState, data_dir: Path | None) -> None:
    """The run's data on this machine: the recorded path or ``--data``, same digest."""
    data = data_dir or Path(state.manifest.data["path"])
    if not data.is_dir():
        raise DataError(
            f"the run's data directory {data} is not on this machine",
            where=str(data),
            fix="pass --data DIR with the same data",
        )
    digest = _index_data_dir(state, "dataset", data)
    if state.manifest.data.get("digest") and digest != state.manifest.data["digest"]:
        raise DataError(
            f"{data} does not hold the data the run was started with (digest differs)",
            where=str(data),
            fix="pass --data with the run's data directory",
        )
    probe = state.manifest.data.get("probe")
    # the host's probe data where it is also on this machine (same path, same digest);
    # else verify measures no probe and says so
    if (
        probe
        and Path(probe).is_dir()
        and _index_data_dir(state, "probe_data", Path(probe))
        != state.manifest.data.get("probe_digest")
    ):
        state.index.drop("probe_data")
