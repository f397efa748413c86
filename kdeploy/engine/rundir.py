"""The run directory: where a run goes by default, the lock that keeps two processes out,
the write check before anything is written, and the read-only view of a finished run that
the device-side commands use (no torch): its models, profile and data."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kdeploy.config import LoadedProfile, load_profile
from kdeploy.core.errors import RunDirError
from kdeploy.engine.manifest import MANIFEST_NAME, Manifest, load_manifest
from kdeploy.evaluation.variants import VARIANTS


def default_run_dir(profile_name: str, model_dir: Path) -> Path:
    name = model_dir.name
    if name in ("model", "models", "") and model_dir.parent.name:
        name = model_dir.parent.name
    return Path("runs") / f"{profile_name}-{name}"


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (another kdeploy process on it is an error)."""
    lock_path = run_dir / ".lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"another kdeploy process is using {run_dir}",
                where=str(run_dir),
                fix="wait for it to finish, or use another --out",
            ) from None
        yield
    finally:
        os.close(fd)


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and prove it is writable, before any stage starts."""
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_text("ok")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise RunDirError(
            f"cannot write to the output directory {run_dir}: {exc.strerror}",
            where=str(run_dir),
            fix="choose a writable directory with --out",
        ) from None


@dataclass
class RunView:
    run_dir: Path
    manifest: Manifest
    profile: LoadedProfile
    models: dict[str, Path]  # table name (teacher_fp32, ...) -> model dir
    data_dir: Path

    def artifact(self, name: str) -> Path:
        """The path of an artifact of the run, after checking its files' sha256."""
        for rec in self.manifest.stages.values():
            art = rec.outputs.get(name)
            if art is not None:
                _check(self.run_dir, name, art)
                return art.abspath(self.run_dir)
        raise RunDirError(
            f"{self.run_dir} has no artifact '{name}' (its stage has not finished)",
            where=str(self.run_dir),
            fix="rerun `kdeploy compress` with the same arguments to finish the run",
        )

    def run_data(self) -> Path:
        """The run's data dir, after checking it still holds the data the run used."""
        from kdeploy.data import data_digest

        want = self.manifest.data.get("digest")
        if not self.data_dir.is_dir():
            raise RunDirError(
                f"the run's data dir {self.data_dir} is gone",
                where=str(self.data_dir),
                fix="pass --data DIR",
            )
        if want and data_digest(self.data_dir) != want:
            raise RunDirError(
                f"the data in {self.data_dir} changed since the run used it (its sha256 "
                "differs from the manifest's)",
                where=str(self.data_dir),
                fix="pass --data DIR explicitly to measure on these files, or rerun "
                "`kdeploy compress` so that the run matches them",
            )
        return self.data_dir


def _check(run_dir: Path, name: str, art, *, packaged: bool = False) -> None:
    """Every file of an artifact against its sha256 in the manifest (exit 6 naming the
    first damaged file)."""
    problems = art.check(run_dir)
    if problems:
        bad = next(
            (f for f, want in art.file_paths(run_dir).items() if str(f) in problems[0]),
            art.abspath(run_dir),
        )
        what = "packaged artifact" if packaged else "artifact"
        raise RunDirError(
            f"{what} {name} of {run_dir} is damaged: {problems[0]}",
            where=str(bad),
            fix="rerun `kdeploy compress` with the same arguments (it rebuilds damaged stages)",
        )


def check_deliverables(run_dir: Path, manifest: Manifest) -> None:
    """What the package stage delivered (the deployable dir, the Triton repository, the
    reference outputs, the sentence-transformers / optimum folders, the report), file by
    file against the manifest; then that each model file it copied still has the sha256 of
    the model it was copied from (the one bench and verify measured): the deliverable is
    what was verified. Nothing to check before the package stage ran."""
    rec = manifest.stages.get("package")
    if rec is None:
        return
    for name, art in rec.outputs.items():
        _check(run_dir, name, art, packaged=True)
    recorded = {
        f.resolve(): sha
        for stage in manifest.stages.values()
        for art in stage.outputs.values()
        for f, sha in art.file_paths(run_dir).items()
    }
    for dest, src in rec.metrics.get("copied_from", {}).items():
        got, want = (
            recorded.get((run_dir / dest).resolve()),
            recorded.get((run_dir / src).resolve()),
        )
        if got is None or got != want:
            raise RunDirError(
                f"{run_dir / dest} is not the model bench and verify measured: the manifest "
                f"records {'no such file' if got is None else 'another sha256'} for it than "
                f"for {run_dir / src}, which it was packaged from",
                where=str(run_dir / dest),
                fix="rerun `kdeploy compress` with the same arguments (package is redone)",
            )


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def open_run(
    run_dir: Path, *, need: tuple[str, ...] = ("export",), check_digests: bool = True
) -> RunView:
    """The models of a run, after checking the stages they come from are finished and intact
    (``check_digests``: every model file and every packaged file against the manifest)."""
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise RunDirError(
            f"{run_dir} is not a kdeploy run directory (no {MANIFEST_NAME})",
            where=str(run_dir),
            fix="run `kdeploy compress` first, or pass an ONNX model dir",
        )
    missing = [s for s in need if s not in manifest.stages]
    if missing:
        raise RunDirError(
            f"{run_dir} is incomplete: stage(s) {', '.join(missing)} have not finished",
            where=str(run_dir),
            fix="rerun `kdeploy compress` with the same arguments to finish the run",
        )
    artifacts = {}
    for rec in manifest.stages.values():
        for name, art in rec.outputs.items():
            artifacts[name] = art
    models: dict[str, Path] = {}
    for art_name, table_name in VARIANTS.items():
        art = artifacts.get(art_name)
        if art is None:
            continue
        if check_digests:
            _check(run_dir, art_name, art)
        models[table_name] = art.abspath(run_dir)
    if check_digests:
        check_deliverables(run_dir, manifest)
    profile_path = run_dir / "profile.yaml"
    if not profile_path.is_file():
        raise RunDirError(
            f"{run_dir} has no profile.yaml",
            where=str(run_dir),
            fix="rerun `kdeploy compress` to restore it",
        )
    profile = load_profile(profile_path)
    return RunView(
        run_dir=run_dir,
        manifest=manifest,
        profile=profile,
        models=models,
        data_dir=Path(manifest.data["path"]),
    )
