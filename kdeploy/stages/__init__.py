"""Pipeline stages. Each module has one entry point, ``run(ctx) -> StageResult``.

A stage reads only the artifacts named in ``ctx.inputs`` and writes only into
``ctx.work_dir`` (the pipeline renames it into place on success). Stage modules import
nothing heavy at module level, so listing them never pulls torch in.

Module attributes the pipeline reads:
- ``CONSUMES``: artifact names it reads; ``"a|b"`` takes the first present, ``"x?"`` is optional
- ``PRODUCES``: artifact names it writes
- ``TOOLS``: distributions whose versions enter the stage key
- ``enabled(profile) -> bool`` and ``config(profile) -> dict`` (the profile part it uses)
- ``RESUMABLE`` (optional): keep the work dir after an interruption so ``run`` can resume;
  or ``resumable(profile) -> bool`` when that depends on the profile
- ``unavailable() -> str | None`` (optional): why the stage cannot run on this machine; the
  pipeline then stops before it with a hand-off (exit 11) instead of failing
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from kdeploy.profiles import Profile

ORDER = (
    "distill",
    "sparsify",
    "export",
    "quantize",
    "build",
    "bench",
    "verify",
    "package",
)


@dataclass
class RunOptions:
    """Choices from the command line that are not part of the profile."""

    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True


@dataclass
class StageContext:
    name: str
    profile: Profile
    run_dir: Path
    work_dir: Path
    inputs: dict[str, Path]
    options: RunOptions
    log: Callable[[str], None] = print
    state: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> Path:
        return self.inputs[name]


@dataclass
class StageResult:
    outputs: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)


def load_stage(name: str) -> ModuleType:
    return importlib.import_module(f"kdeploy.stages.{name}")


def all_stages() -> list[tuple[str, ModuleType]]:
    return [(n, load_stage(n)) for n in ORDER]
