"""Build a TensorRT engine from a BuildPlan with the TensorRT Python API (10.12+ or 11.x).

Device side: needs ``kdeploy[trt]`` (tensorrt) and a CUDA GPU, never torch. ``tensorrt``
is imported inside the functions, so this module imports anywhere. The builder settings are
applied by ``TRT_APPLY``, one function per ``Setting`` kind of the plan; ``trtexec_argv``
renders the same settings as a command line.

Outputs in ``out_dir``: the serialized engine, the timing cache after the build, and the
engine inspector's layer JSON (ProfilingVerbosity.DETAILED).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdeploy.core.deps import require
from kdeploy.core.errors import DependencyError, ModelError, StageError
from kdeploy.runtime.build_plan import (
    ENGINE_FILE,
    LAYER_INFO_FILE,
    TIMING_CACHE_FILE,
    BuildPlan,
    ShapeRange,
)
from kdeploy.runtime.layer_report import sparsity_from_log

# Strongly typed networks, the precision written in the ONNX graph: TensorRT 10.12 is the
# first release where weak typing is deprecated and strong typing is complete for Q/DQ +
# FP16 graphs; TensorRT 11 has no other mode. Same code path for both.
MIN_VERSION = (10, 12)
MAX_MAJOR = 11


def _version_tuple(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def check_trt_version(version: str) -> None:
    """kdeploy builds strongly typed networks with TensorRT 10.12+ or 11.x; an older
    TensorRT would need the weak-typing builder flags kdeploy no longer sets, a newer
    major release is untested."""
    v = _version_tuple(version)
    if v is None or v < MIN_VERSION or v[0] > MAX_MAJOR:
        raise DependencyError(
            f"TensorRT {version} is installed; kdeploy builds strongly typed engines with "
            f"TensorRT {MIN_VERSION[0]}.{MIN_VERSION[1]} to {MAX_MAJOR}.x (the precision is "
            "in the ONNX graph, no FP16/INT8 builder flags)",
            fix="pip install 'tensorrt>=10.12,<12' (the kdeploy[trt] extra pins it)",
        )


def import_tensorrt(feature: str):
    trt = require("tensorrt", feature=feature)
    check_trt_version(getattr(trt, "__version__", "unknown"))
    return trt


@dataclass
class _State:
    """What the settings need besides the builder objects."""

    out_dir: Path
    seed_cache: Path | None
    log: Callable[[str], None]
    network: Any = None
    cache_loaded_from: str | None = None
    notes: list[str] = field(default_factory=list)


def _typing(trt, builder, config, profile, value: str, st: _State) -> None:
    """The network was created strongly typed (``_parse_onnx``); say so if it is not."""
    network = st.network
    if value != "strong" or not network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED):
        raise StageError(
            f"the network is not strongly typed (plan asks for {value!r})",
            fix="kdeploy builds strongly typed networks only; rebuild the plan",
        )


def _flag(trt, builder, config, profile, value: str, st: _State) -> None:
    config.set_flag(getattr(trt.BuilderFlag, value))


def _workspace(trt, builder, config, profile, value: int, st: _State) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, value * 1024 * 1024)


def _opt_level(trt, builder, config, profile, value: int, st: _State) -> None:
    config.builder_optimization_level = value


def _verbosity(trt, builder, config, profile, value: str, st: _State) -> None:
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, value)


def _dla(trt, builder, config, profile, value: int, st: _State) -> None:
    if builder.num_DLA_cores <= value:
        raise StageError(
            f"target.dla_core is {value} but this device has {builder.num_DLA_cores} DLA core(s)",
            fix="remove target.dla_core or pick an existing core",
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = value


def _shape(trt, builder, config, profile, value: ShapeRange, st: _State) -> None:
    profile.set_shape(value.name, value.min, value.opt, value.max)


def _timing_cache(trt, builder, config, profile, value: str, st: _State) -> None:
    blob = b""
    if st.seed_cache is not None and st.seed_cache.is_file():
        blob = st.seed_cache.read_bytes()
        st.cache_loaded_from = str(st.seed_cache)
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False
        st.log(f"warning: timing cache {st.seed_cache} is for another device; starting afresh")
        st.cache_loaded_from = None
        config.set_timing_cache(config.create_timing_cache(b""), False)


TRT_APPLY: dict[str, Callable[..., None]] = {
    "typing": _typing,
    "flag": _flag,
    "workspace_mb": _workspace,
    "optimization_level": _opt_level,
    "profiling_verbosity": _verbosity,
    "dla_core": _dla,
    "shape": _shape,
    "timing_cache": _timing_cache,
}


def _make_logger(trt):
    class _Recorder(trt.ILogger):
        """Keeps the builder's messages (the sparsity report is logged at INFO)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: D102 - TensorRT's callback
            if severity == trt.ILogger.Severity.VERBOSE:
                return
            self.lines.append(msg)
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    return _Recorder()


def build_engine(
    plan: BuildPlan,
    onnx_path: Path,
    out_dir: Path,
    *,
    shared_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Parse the ONNX model, apply the plan, build, and write engine/cache/layer JSON."""
    trt = import_tensorrt("building a TensorRT engine (kdeploy build)")
    logger = _make_logger(trt)
    out_dir.mkdir(parents=True, exist_ok=True)
    builder = _create_builder(trt, logger)
    # the parser owns the network's weights: it must live until the build is done
    network, parser = _parse_onnx(trt, builder, logger, onnx_path)
    st = _State(out_dir=out_dir, seed_cache=shared_cache, log=log, network=network)
    config = _configure(trt, builder, plan, st)
    flags = "".join(f", {f}" for f in plan.flags)
    log(f"building a strongly typed TensorRT {trt.__version__} engine ({plan.precision}{flags})")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise StageError(
            "TensorRT could not build the engine: " + "; ".join(logger.errors[-3:]),
            fix="see the TensorRT messages above; a smaller target.workspace_mb or "
            "export.shapes range may help",
        )
    with open(out_dir / ENGINE_FILE, "wb") as f:
        f.write(serialized)
    _write_timing_cache(config, out_dir, shared_cache)
    _write_layer_info(trt, logger, serialized, out_dir)
    return {
        "tensorrt": trt.__version__,
        "build_seconds": round(seconds, 3),
        "engine_bytes": (out_dir / ENGINE_FILE).stat().st_size,
        "timing_cache_seeded_from": st.cache_loaded_from,
        "log_sparsity": sparsity_from_log(logger.lines),
        "builder_warnings": [m for m in logger.lines if "warning" in m.lower()][:50],
    }


def _create_builder(trt, logger):
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind raises when the factory returns null (no CUDA)
        logger.errors.append(str(exc))
        builder = None
    if not builder:
        raise StageError(
            "TensorRT cannot create a builder: " + "; ".join(logger.errors[-3:]),
            fix="run on a machine with a CUDA GPU and a driver TensorRT supports",
        )
    return builder


def _parse_onnx(trt, builder, logger, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser) of the ONNX model; the caller keeps the parser alive."""
    # strongly typed: each tensor in the type the ONNX graph gives it (10.12+; 11.x's only
    # mode, where the flag is still accepted). Explicit batch is implied since 10.0.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise ModelError(
            f"TensorRT's ONNX parser rejects {onnx_path}: {'; '.join(errors[:3])}",
            where=str(onnx_path),
            fix="INT8 needs symmetric int8 Q/DQ (quantize.activation_type/weight_type: int8)",
        )
    return network, parser


def _configure(trt, builder, plan: BuildPlan, st: _State):
    """The builder config with every setting of the plan applied (TRT_APPLY)."""
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for s in plan.settings():
        TRT_APPLY[s.kind](trt, builder, config, profile, s.value, st)
    config.add_optimization_profile(profile)
    return config


def _write_timing_cache(config, out_dir: Path, shared_cache: Path | None) -> None:
    """The timing cache after the build, into the run and (atomically) the shared cache."""
    blob = config.get_timing_cache().serialize()
    with open(out_dir / TIMING_CACHE_FILE, "wb") as f:
        f.write(blob)
    if shared_cache is not None:
        shared_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = shared_cache.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
        tmp.replace(shared_cache)


def _write_layer_info(trt, logger, serialized, out_dir: Path) -> None:
    """The engine inspector's per-layer JSON of the built engine."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    (out_dir / LAYER_INFO_FILE).write_text(info, encoding="utf-8")
