"""manifest.json: what each stage of a run consumed and produced, with sha256 digests.

Only the pipeline writes it (atomically). A stage record is trusted on a rerun only when its
key matches and every file it lists still has the recorded digest.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdeploy import __version__
from kdeploy.core.errors import RunDirError
from kdeploy.core.fsutil import atomic_write_json, combine_digests, read_json, sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class Artifact(BaseModel):
    """A file or directory a stage produced, relative to the run directory."""

    model_config = ConfigDict(extra="forbid")

    path: str
    files: dict[str, str] = Field(description="relative file path -> sha256")
    digest: str

    def abspath(self, run_dir: Path) -> Path:
        return run_dir / self.path

    def file_paths(self, run_dir: Path) -> dict[Path, str]:
        """{absolute file path: recorded sha256}."""
        root = self.abspath(run_dir)
        return {
            (root if root.is_file() and rel == root.name else root / rel): want
            for rel, want in self.files.items()
        }

    def check(self, run_dir: Path, sha256: Callable[[Path], str] | None = None) -> list[str]:
        """Problems found (missing or changed files); empty when intact."""
        sha = sha256 or sha256_file
        problems = []
        for f, want in self.file_paths(run_dir).items():
            if not f.is_file():
                problems.append(f"{f} is missing")
            elif sha(f) != want:
                problems.append(f"{f} does not match its sha256 in the manifest")
        return problems


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    status: str = "done"
    inputs: dict[str, str] = Field(default_factory=dict, description="artifact -> digest")
    outputs: dict[str, Artifact] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    started: str
    finished: str
    seconds: float


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kdeploy_version: str = __version__
    created: str
    updated: str
    profile: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    skipped: list[str] = Field(default_factory=list)

    @classmethod
    def new(
        cls, *, profile: dict[str, Any], model: dict[str, Any], data: dict[str, Any]
    ) -> Manifest:
        now = utcnow()
        return cls(created=now, updated=now, profile=profile, model=model, data=data)

    def save(self, run_dir: Path) -> None:
        self.updated = utcnow()
        atomic_write_json(run_dir / MANIFEST_NAME, self.model_dump(mode="json"))


def load_manifest(run_dir: Path) -> Manifest | None:
    path = run_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return Manifest.model_validate(read_json(path))
    except (ValueError, ValidationError) as exc:
        raise RunDirError(
            f"{path} is corrupted or from an incompatible kdeploy ({str(exc).splitlines()[0]})",
            where=str(path),
            fix="rerun with --force to start this run directory afresh, or use another --out",
        ) from None


def make_artifact(run_dir: Path, path: Path, files: dict[str, str]) -> Artifact:
    return Artifact(
        path=path.relative_to(run_dir).as_posix(), files=files, digest=combine_digests(files)
    )


def utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
