"""Artifact digests: files hashed at most once per run, and the index of what the run's
stages produced so far (name -> path, digest, the sha256 each file must still have)."""

from __future__ import annotations

from pathlib import Path

from kdeploy.core import fsutil
from kdeploy.core.errors import RunDirError, StageError
from kdeploy.engine.manifest import StageRecord
from kdeploy.stages.base import Consume, StageInputs


class FileHashes:
    """sha256 of files, each hashed at most once per pipeline run.

    A digest is remembered with the file's (size, mtime_ns, inode); looking at the same
    file again costs one ``stat`` unless it changed, and then it is hashed again. This is
    what lets every stage check its inputs right before it runs without hashing the
    ~100 MB of a teacher or an ONNX model twice (make and rsync trust the same signature).
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def sha256(self, path: Path) -> str:
        sig = self._signature(path)
        hit = self._known.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        digest = fsutil.sha256_file(path)
        self._known[path] = (sig, digest)
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """A file hashed under another name (a stage's work dir before the rename)."""
        self._known[path] = (self._signature(path), digest)


class ArtifactIndex:
    """Artifact name -> (path, digest, {file: sha256 it must have})."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}
        self.digests: dict[str, str] = {}
        self.files: dict[str, dict[Path, str]] = {}

    def set(self, name: str, path: Path, digest: str, files: dict[Path, str]) -> None:
        self.paths[name] = path
        self.digests[name] = digest
        self.files[name] = files

    def drop(self, name: str) -> None:
        """Forget ``name`` (stages that may consume it then run without it)."""
        for table in (self.paths, self.digests, self.files):
            table.pop(name, None)

    def publish(self, record: StageRecord, run_dir: Path) -> None:
        """Make a finished stage's outputs available to the stages after it."""
        for out_name, art in record.outputs.items():
            self.set(out_name, art.abspath(run_dir), art.digest, art.file_paths(run_dir))

    def resolve(self, consume: Consume) -> str | None:
        """The artifact that fills ``consume`` (the first alternative present)."""
        for alt in consume.artifacts:
            if alt in self.paths:
                return alt
        if consume.optional:
            return None
        raise StageError(
            f"no stage produced any of {'|'.join(consume.artifacts)}",
            where="the stage order in kdeploy/stages",
            fix="a kdeploy bug: please report it",
        )

    def inputs_for(self, consumes: tuple[Consume, ...]) -> StageInputs:
        """A stage's inputs, each alternative resolved once."""
        paths, sources = {}, {}
        for c in consumes:
            got = self.resolve(c)
            if got is not None:
                paths[c.role], sources[c.role] = self.paths[got], got
        return StageInputs(paths=paths, sources=sources)

    def verify(self, stage: str, names: list[str], hashes: FileHashes) -> None:
        """Refuse to start ``stage`` if a file it consumes no longer has its digest.

        Every file was hashed earlier in this pipeline run (outside inputs at the start,
        a reused stage's outputs when it was checked, a new stage's outputs when it was
        committed), so an unchanged file costs a ``stat``. A mismatch here means the file
        changed *while kdeploy was running*: the run stops instead of building on it, and
        the rerun rebuilds the damaged stage (its outputs fail the reuse check).
        """
        for name in names:
            for path, want in self.files[name].items():
                try:
                    got = hashes.sha256(path)
                except FileNotFoundError:
                    got = None
                if got != want:
                    state = "was deleted" if got is None else "changed"
                    raise RunDirError(
                        f"{path} ({name}, an input of stage {stage}) {state} while kdeploy "
                        "was running: its sha256 no longer matches the one recorded",
                        where=str(path),
                        fix="make sure nothing else writes into the run directory or the "
                        "input files during a run, then rerun the same command (damaged "
                        "stages are rebuilt)",
                    )
