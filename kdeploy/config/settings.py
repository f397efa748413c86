"""A profile turned into the plain settings the torch-free runtime takes: the runtime ships
without the pipeline's schema (``kdeploy.runtime`` imports nothing outside itself and core)."""

from __future__ import annotations

from kdeploy.config.schema import Profile
from kdeploy.config.sections import MinOptMax
from kdeploy.runtime.build_plan import AxisRange, BuildSettings
from kdeploy.runtime.openvino_runner import OpenVinoOptions
from kdeploy.runtime.runners import RunnerSettings


def _axis(r: MinOptMax) -> AxisRange:
    return AxisRange(r.min, r.opt, r.max)


def build_settings(profile: Profile) -> BuildSettings:
    """What a TensorRT build of this profile's student needs (kdeploy build, the TensorRT EP)."""
    t = profile.target
    return BuildSettings(
        device=t.device,
        precision=t.precision,
        batch=_axis(profile.export.shapes.batch),
        sequence=_axis(profile.export.shapes.sequence),
        sparse=profile.sparsify.enabled,
        workspace_mb=t.workspace_mb,
        optimization_level=t.builder_optimization_level,
        dla_core=t.dla_core,
        gpu_fallback=t.gpu_fallback,
    )


def openvino_options(profile: Profile) -> OpenVinoOptions:
    """How this profile's OpenVINO models compile (bounded by the export ranges)."""
    ov = profile.target.openvino
    shapes = profile.export.shapes
    return OpenVinoOptions(
        performance_hint=ov.performance_hint,
        bounded_shapes=ov.bounded_shapes,
        max_batch=shapes.batch.max,
        max_sequence=shapes.sequence.max,
        cache_dir=ov.cache_dir,
    )


def runner_settings(profile: Profile) -> RunnerSettings:
    """Where this profile's models run: its target's ONNX Runtime providers for ONNX
    models, its OpenVINO options for OpenVINO ones."""
    providers = tuple(profile.target.providers())
    build = build_settings(profile) if "tensorrt" in providers else None
    return RunnerSettings(providers=providers, build=build, openvino=openvino_options(profile))
