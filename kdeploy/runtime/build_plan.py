"""BuildPlan: a target's build settings turned into TensorRT builder settings, as plain data.

Nothing here imports TensorRT, nor the pipeline's profile schema: the config layer hands
the runtime a ``BuildSettings`` (``kdeploy.config.settings.build_settings``). The builder
calls (``kdeploy.runtime.trt_build``), the ``trtexec`` command line for users who build on
the device, and the ONNX Runtime TensorRT-EP options are all rendered from one
``BuildPlan``, setting by setting: every ``Setting`` kind has exactly one renderer per
consumer, so the three agree by construction (a test checks that no kind is left without
one).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdeploy.core.devices import caps
from kdeploy.core.errors import ModelError
from kdeploy.runtime.graph import TensorSpec, onnx_inputs

__all__ = ["BuildPlan", "BuildSettings", "AxisRange", "make_plan", "onnx_inputs", "TensorSpec"]

# Networks are strongly typed (TensorRT 10.12+ and 11.x, the only mode TensorRT 11 has):
# every tensor runs in the type the ONNX graph gives it. The precision is written into the
# graph by the quantize stage (INT8 Q/DQ on the GEMMs, FP16 initializers and Casts around
# the ops kept in FP32); no precision BuilderFlag (FP16/INT8/BF16, removed in TensorRT 11)
# is ever set and no calibrator either. What the flags may still ask for:
BUILDER_FLAGS = ("SPARSE_WEIGHTS", "GPU_FALLBACK")

# every kind of Setting a BuildPlan can hold; each consumer renders each kind
SETTING_KINDS = (
    "typing",  # "strong": a strongly typed network (NetworkDefinitionCreationFlag)
    "flag",  # BuilderFlag name (one of BUILDER_FLAGS)
    "workspace_mb",  # MemoryPoolType.WORKSPACE limit
    "optimization_level",  # builder_optimization_level
    "profiling_verbosity",  # ProfilingVerbosity name (DETAILED: the inspector's layer JSON)
    "dla_core",  # default_device_type = DLA, DLA_core = n
    "shape",  # one input's min/opt/max in the (single) optimization profile
    "timing_cache",  # timing cache file (read before, written after the build)
)

ENGINE_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
LAYER_INFO_FILE = "layers.json"


@dataclass(frozen=True)
class AxisRange:
    """min / opt / max of one dynamic axis (batch or sequence)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class BuildSettings:
    """What a TensorRT build needs to know about its target, as plain data."""

    device: str  # a kdeploy.core.devices name
    precision: str  # fp32 | fp16 | int8 | fp8
    batch: AxisRange
    sequence: AxisRange
    sparse: bool = False  # the weights are 2:4: ask for sparse kernels
    workspace_mb: int = 4096
    optimization_level: int = 3
    dla_core: int | None = None
    gpu_fallback: bool = True


@dataclass(frozen=True)
class ShapeRange:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def dims(self, which: str) -> tuple[int, ...]:
        return {"min": self.min, "opt": self.opt, "max": self.max}[which]


@dataclass(frozen=True)
class Setting:
    kind: str
    value: Any


@dataclass(frozen=True)
class BuildPlan:
    """What the TensorRT builder is asked to do. Paths are relative to the run directory."""

    device: str
    compute_capability: str
    precision: str
    flags: tuple[str, ...]
    shapes: tuple[ShapeRange, ...]
    workspace_mb: int
    optimization_level: int
    dla_core: int | None
    onnx: str
    engine: str
    timing_cache: str
    layer_info: str
    sparse_requested: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    network_typing: str = "strong"

    def settings(self) -> list[Setting]:
        out = [Setting("typing", self.network_typing)]
        out += [Setting("flag", f) for f in self.flags]
        out.append(Setting("workspace_mb", self.workspace_mb))
        out.append(Setting("optimization_level", self.optimization_level))
        out.append(Setting("profiling_verbosity", "DETAILED"))
        if self.dla_core is not None:
            out.append(Setting("dla_core", self.dla_core))
        out += [Setting("shape", s) for s in self.shapes]
        out.append(Setting("timing_cache", self.timing_cache))
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BuildPlan:
        d = dict(data)
        d["flags"] = tuple(d["flags"])
        d["notes"] = tuple(d.get("notes", ()))
        d["shapes"] = tuple(
            ShapeRange(s["name"], tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
            for s in d["shapes"]
        )
        return cls(**d)


# ------------------------------------------------------------------------- shapes


def shape_ranges(
    inputs: list[TensorSpec], batch: AxisRange, sequence: AxisRange, where: str
) -> tuple[ShapeRange, ...]:
    """One min/opt/max range per input from the profile's batch x sequence ranges.

    Every input of a BERT-family model is (batch, sequence). A static dimension is only
    accepted when the profile pins that axis to the same value (min = opt = max = dim).
    """
    axes = (("batch", batch), ("sequence", sequence))
    out = []
    if not inputs:
        raise ModelError(f"{where} declares no inputs", where=where)
    for spec in inputs:
        if len(spec.shape) != 2:
            raise ModelError(
                f"input '{spec.name}' of {where} has shape {list(spec.shape)}; TensorRT "
                "profiles are built for (batch, sequence) inputs",
                where=where,
                fix="export the model with kdeploy (dynamic batch and sequence axes)",
            )
        for dim, (axis, rng) in zip(spec.shape, axes, strict=True):
            if isinstance(dim, int) and dim > 0 and not rng.min == rng.opt == rng.max == dim:
                raise ModelError(
                    f"input '{spec.name}' of {where} has a static {axis} dimension {dim}, but "
                    f"the profile asks for {axis} {rng.min}..{rng.max} (opt {rng.opt})",
                    where=where,
                    fix=f"export with a dynamic {axis} axis, or set export.shapes.{axis} to "
                    f"{{min: {dim}, opt: {dim}, max: {dim}}}",
                )
        out.append(
            ShapeRange(
                spec.name,
                (batch.min, sequence.min),
                (batch.opt, sequence.opt),
                (batch.max, sequence.max),
            )
        )
    return tuple(out)


def shape_spec(shapes: tuple[ShapeRange, ...], which: str) -> str:
    """``input_ids:1x1,attention_mask:1x1``: the syntax of trtexec's --minShapes and of
    ONNX Runtime's trt_profile_min_shapes alike."""
    return ",".join(f"{s.name}:{'x'.join(str(d) for d in s.dims(which))}" for s in shapes)


# ------------------------------------------------------------------------- the plan


def make_plan(
    t: BuildSettings, inputs: list[TensorSpec], *, onnx: str, out_dir: str = "build/student"
) -> BuildPlan:
    """The build these settings ask for, for an ONNX model with these inputs."""
    dev = caps(t.device)
    flags = []
    notes = ["strongly typed: each tensor runs in the type the ONNX graph gives it"]
    if t.sparse:
        flags.append("SPARSE_WEIGHTS")
    if t.dla_core is not None and t.gpu_fallback:
        flags.append("GPU_FALLBACK")
    if t.precision == "int8":
        notes.append("INT8 scales come from the model's explicit Q/DQ nodes; no calibrator")
    return BuildPlan(
        device=t.device,
        compute_capability=dev.sm_str,
        precision=t.precision,
        flags=tuple(flags),
        shapes=shape_ranges(inputs, t.batch, t.sequence, onnx),
        workspace_mb=t.workspace_mb,
        optimization_level=t.optimization_level,
        dla_core=t.dla_core,
        onnx=onnx,
        engine=f"{out_dir}/{ENGINE_FILE}",
        timing_cache=f"{out_dir}/{TIMING_CACHE_FILE}",
        layer_info=f"{out_dir}/{LAYER_INFO_FILE}",
        sparse_requested=t.sparse,
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------- trtexec

_TRTEXEC_FLAG = {
    "SPARSE_WEIGHTS": "--sparsity=enable",
    "GPU_FALLBACK": "--allowGPUFallback",
}


def _trtexec_shape(plan: BuildPlan, s: ShapeRange) -> list[str]:
    # trtexec takes all inputs in one flag; render once, at the first input
    if s is not plan.shapes[0]:
        return []
    return [f"--{w}Shapes={shape_spec(plan.shapes, w)}" for w in ("min", "opt", "max")]


TRTEXEC_RENDER = {
    # trtexec 10.12+: --stronglyTyped; 11.x accepts it as a no-op (strong typing is the
    # only mode). --fp16/--int8/--best are gone from 11.x and never written.
    "typing": lambda plan, v: ["--stronglyTyped"],
    "flag": lambda plan, v: [_TRTEXEC_FLAG[v]],
    # TensorRT 10 trtexec: pool sizes are MiB when no unit suffix is given
    "workspace_mb": lambda plan, v: [f"--memPoolSize=workspace:{v}"],
    "optimization_level": lambda plan, v: [f"--builderOptimizationLevel={v}"],
    "profiling_verbosity": lambda plan, v: [f"--profilingVerbosity={v.lower()}"],
    "dla_core": lambda plan, v: [f"--useDLACore={v}"],
    "shape": _trtexec_shape,
    "timing_cache": lambda plan, v: [f"--timingCacheFile={v}"],
}


def trtexec_argv(plan: BuildPlan) -> list[str]:
    """The same build as a trtexec (TensorRT 10.12+ or 11.x) command, run from the run
    directory."""
    argv = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}"]
    for s in plan.settings():
        argv += TRTEXEC_RENDER[s.kind](plan, s.value)
    argv += [f"--exportLayerInfo={plan.layer_info}", "--skipInference"]
    return argv


def trtexec_command(plan: BuildPlan) -> str:
    return shlex.join(trtexec_argv(plan))


# ------------------------------------------------------------------------- ONNX Runtime

_ORT_FLAG = {
    "SPARSE_WEIGHTS": "trt_sparsity_enable",
}


def _ort_typing(plan: BuildPlan, v: str) -> dict[str, str]:
    """ONNX Runtime's TensorRT EP creates a strongly typed network exactly when neither of
    its weak-typing precision options is on (microsoft/onnxruntime#24298): both are
    written off explicitly, so an EP default can never turn weak typing back on."""
    return {"trt_fp16_enable": "0", "trt_int8_enable": "0"}


def _ort_flag(plan: BuildPlan, v: str) -> dict[str, str]:
    if v == "GPU_FALLBACK":
        return {}  # the TensorRT EP always falls back (to the next execution provider)
    return {_ORT_FLAG[v]: "1"}


def _ort_shape(plan: BuildPlan, s: ShapeRange) -> dict[str, str]:
    if s is not plan.shapes[0]:
        return {}
    return {f"trt_profile_{w}_shapes": shape_spec(plan.shapes, w) for w in ("min", "opt", "max")}


ORT_TRT_RENDER = {
    "typing": _ort_typing,
    "flag": _ort_flag,
    "workspace_mb": lambda plan, v: {"trt_max_workspace_size": str(v * 1024 * 1024)},
    "optimization_level": lambda plan, v: {"trt_builder_optimization_level": str(v)},
    "profiling_verbosity": lambda plan, v: {"trt_detailed_build_log": "1"},
    "dla_core": lambda plan, v: {"trt_dla_enable": "1", "trt_dla_core": str(v)},
    "shape": _ort_shape,
    # the EP keeps its own timing cache next to its engine cache (see ort_trt_options)
    "timing_cache": lambda plan, v: {"trt_timing_cache_enable": "1"},
}


def ort_trt_options(plan: BuildPlan, cache_dir: Path, device_id: int = 0) -> dict[str, str]:
    """Provider options of ONNX Runtime's TensorrtExecutionProvider for the same build."""
    opts = {"device_id": str(device_id)}
    for s in plan.settings():
        opts.update(ORT_TRT_RENDER[s.kind](plan, s.value))
    opts.update(
        {
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(cache_dir / "engines"),
            "trt_timing_cache_path": str(cache_dir / "timing"),
        }
    )
    return opts
