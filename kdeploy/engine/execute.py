"""Executing and committing one stage.

The stage runs in ``<run>/<stage>.tmp/`` and is renamed to ``<run>/<stage>/`` only when it
succeeded; then the manifest is replaced atomically, both under deferred Ctrl-C, so a stage
is either finished and recorded or not there at all. A failed or interrupted stage leaves
nothing behind but a resumable stage's checkpoints.
"""

from __future__ import annotations

import errno
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdeploy.core import fsutil
from kdeploy.core.errors import Interrupted, KdeployError, RunDirError, StageError
from kdeploy.core.fsutil import deferred_sigint, digest_files
from kdeploy.engine.digests import ArtifactIndex, FileHashes
from kdeploy.engine.manifest import Manifest, StageRecord, make_artifact, utcnow
from kdeploy.stages.base import Stage, StageInputs, StageResult

if TYPE_CHECKING:
    from kdeploy.engine.team import Team

KEY_FILE = ".kdeploy-key"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass
class RunState:
    """The mutable state of one run that every stage execution touches."""

    run_dir: Path
    manifest: Manifest
    index: ArtifactIndex
    hashes: FileHashes
    log: Callable[[str], None]
    team: Team | None = None  # under torchrun: the other ranks, who train with rank 0


@dataclass(frozen=True)
class StagePlan:
    """A stage about to run: its key, what it consumes (artifact -> digest), tool versions."""

    stage: Stage
    key: str
    consumed: dict[str, str]
    versions: dict[str, str | None]
    inputs: StageInputs


def execute(state: RunState, plan: StagePlan) -> StageRecord:
    """Check a stage's inputs, run it, record it in the manifest, publish its outputs."""
    name = plan.stage.name
    state.index.verify(name, list(plan.consumed), state.hashes)
    work = state.run_dir / f"{name}.tmp"
    resumable = plan.stage.resumable()
    started, t0 = utcnow(), time.perf_counter()
    with _FailureGuard(state.run_dir, name, work, resumable):
        _prepare_work_dir(work, plan.key, resumable, state.log, name)
        team = state.team if plan.stage.distributed() else None
        if team is not None:
            team.announce(plan.stage, plan.inputs)
        result = plan.stage.run(plan.inputs, work)
        if team is not None:
            team.stage_done()
    seconds = time.perf_counter() - t0
    record = _commit(state, plan, result, work, resumable, started, seconds)
    state.index.publish(record, state.run_dir)
    state.log(f"[{name}] done in {record.seconds:.1f}s")
    return record


def _holds_only_key(work: Path) -> bool:
    try:
        return {p.name for p in work.iterdir()} <= {KEY_FILE}
    except OSError:
        return False


def _cleanup(work: Path, resumable: bool) -> None:
    """A failed stage leaves nothing behind but a resumable stage's checkpoints."""
    if not resumable or _holds_only_key(work):
        shutil.rmtree(work, ignore_errors=True)


def _prepare_work_dir(
    work: Path, key: str, resumable: bool, log: Callable[[str], None], name: str
) -> None:
    """A fresh work dir, or the interrupted one when the stage resumes with the same key."""
    try:
        if work.exists():
            key_file = work / KEY_FILE
            same = key_file.is_file() and key_file.read_text().strip() == key
            if resumable and same:
                log(f"[{name}] resuming from {work}")
            else:
                shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write_text(work / KEY_FILE, key)
    except OSError as exc:
        raise RunDirError(
            f"cannot create {work}: {exc.strerror}",
            where=str(work),
            fix="check the run directory's permissions and free space, then rerun",
        ) from None


class _FailureGuard:
    """One guard from the first byte the stage writes: a Ctrl-C or an error anywhere in it
    cleans up and becomes the error of its kind (Interrupted, RunDirError, StageError)."""

    def __init__(self, run_dir: Path, name: str, work: Path, resumable: bool) -> None:
        self.run_dir, self.name, self.work, self.resumable = run_dir, name, work, resumable

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if not isinstance(exc, KeyboardInterrupt | Exception):
            return False  # SystemExit and the like pass through untouched
        _cleanup(self.work, self.resumable)
        name, work = self.name, self.work
        if isinstance(exc, KeyboardInterrupt):
            kept = work.exists()
            raise Interrupted(
                f"stopped during stage {name}; finished stages are kept"
                + (f" and {name} resumes from its checkpoint" if kept else ""),
                where=str(self.run_dir),
                fix="rerun the same command to resume",
            ) from None
        if isinstance(exc, KdeployError):
            return False
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise RunDirError(
                f"no space left on device during stage {name}"
                + (f" (writing {exc.filename})" if exc.filename else ""),
                where=str(work),
                fix="free disk space, then rerun the same command: finished stages are kept"
                + (f" and {name} resumes from its last checkpoint" if work.exists() else ""),
            ) from None
        raise stage_failure(name, exc, self.run_dir) from None


def _commit(
    state: RunState,
    plan: StagePlan,
    result: StageResult,
    work: Path,
    resumable: bool,
    started: str,
    seconds: float,
) -> StageRecord:
    """Hash the outputs, move the work dir into place and record the stage, atomically."""
    name, run_dir = plan.stage.name, state.run_dir
    missing = [p for p in plan.stage.outputs_expected() if p not in result.outputs]
    if missing:
        _cleanup(work, resumable)
        raise StageError(
            f"stage {name} did not produce {missing}",
            where=f"kdeploy/stages/{name}.py",
            fix="a kdeploy bug: please report it",
        )
    final = run_dir / name
    outputs = _hash_outputs(run_dir, name, result, work, resumable)
    artifacts = {
        n: make_artifact(run_dir, final / rel, files) for n, (rel, files) in outputs.items()
    }
    record = StageRecord(
        key=plan.key,
        inputs=plan.consumed,
        outputs=artifacts,
        metrics=result.metrics,
        versions=plan.versions,
        started=started,
        finished=utcnow(),
        seconds=round(seconds, 3),
    )
    # Moving the stage into place and recording it in the manifest is one step as far as
    # Ctrl-C is concerned: a stage dir the manifest does not know would be redone.
    with deferred_sigint():
        fsutil.replace_dir(work, final)
        state.manifest.stages[name] = record
        state.manifest.save(run_dir)
    for art in artifacts.values():
        for path, sha in art.file_paths(run_dir).items():
            state.hashes.remember(path, sha)
    return record


def _hash_outputs(
    run_dir: Path, name: str, result: StageResult, work: Path, resumable: bool
) -> dict[str, tuple[Path, dict[str, str]]]:
    """{output: (path in the work dir, its files' digests)}, and metrics.json written. A
    Ctrl-C or a run-dir error here removes the work dir (keeping a resumable stage's
    checkpoints)."""
    try:
        outputs = {
            out_name: (
                Path(path).resolve().relative_to(work.resolve()),
                digest_files(Path(path), sha256=fsutil.sha256_file),
            )
            for out_name, path in result.outputs.items()
        }
        fsutil.atomic_write_json(work / "metrics.json", result.metrics)
    except KeyboardInterrupt:
        _cleanup(work, resumable)
        raise Interrupted(
            f"stopped while stage {name} was being saved; finished stages are kept",
            where=str(run_dir),
            fix="rerun the same command to resume",
        ) from None
    except RunDirError:
        _cleanup(work, resumable)
        raise
    return outputs


def _write_error_log(path: Path, text: str) -> str | None:
    """The traceback for the user, if the disk lets us write it."""
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return str(path)
    except OSError:
        return None


def stage_failure(name: str, exc: BaseException, run_dir: Path) -> StageError:
    """A stage's unexpected exception as exit 7, its traceback in ``logs/<stage>.error.log``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log_path = _write_error_log(run_dir / "logs" / f"{name}.error.log", text)
    return StageError(
        f"stage {name} failed: {type(exc).__name__}: {exc}",
        where=log_path or str(run_dir / name),
        fix=(
            "the traceback is in that log; "
            if log_path
            else "(the traceback could not be written: is the disk full?) "
        )
        + "rerun resumes from this stage",
    )
