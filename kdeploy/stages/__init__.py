"""Pipeline stages, in order. Each is a ``Stage`` subclass (``base.py``): what it consumes
and produces, the profile part its key hashes, and one ``run(inputs, out_dir)``; a thin
adapter over library code (train, evaluation, packaging, report)."""

from kdeploy.stages.base import RunOptions, Stage, StageEnv, StageInputs, StageResult
from kdeploy.stages.bench import Bench
from kdeploy.stages.build import Build
from kdeploy.stages.distill import Distill
from kdeploy.stages.export import Export
from kdeploy.stages.package import Package
from kdeploy.stages.quantize import Quantize
from kdeploy.stages.sparsify import Sparsify
from kdeploy.stages.verify import Verify

STAGES: tuple[type[Stage], ...] = (
    Distill,
    Sparsify,
    Export,
    Quantize,
    Build,
    Bench,
    Verify,
    Package,
)
ORDER = tuple(s.name for s in STAGES)

__all__ = [
    "ORDER",
    "STAGES",
    "RunOptions",
    "Stage",
    "StageEnv",
    "StageInputs",
    "StageResult",
]
