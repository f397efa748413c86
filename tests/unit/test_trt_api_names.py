"""The TensorRT calls kdeploy makes exist in the TensorRT 10.x Python API.

TensorRT cannot be installed on our machines, so the build and runner code never runs in
CI. This test reads that code (ast) and checks every attribute it takes from ``trt`` or from
a TensorRT object against names verified in NVIDIA/TensorRT's own bindings at v10.0.0 and
v10.16 (python/src/infer/pyCore.cpp, pyFoundationalTypes.cpp, parsers/pyOnnx.cpp and
python/packaging/bindings_wheel/tensorrt/__init__.py for ``nptype``/``__version__``).
A misspelt or new API name fails here until it is checked against those sources and added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("kdeploy/runtime/trt_build.py", "kdeploy/runtime/trt_runner.py")
OWNERS = {
    "trt",
    "builder",
    "config",
    "network",
    "parser",
    "profile",
    "runtime",
    "engine",
    "inspector",
}

VERIFIED_10X = {
    "trt.Builder",
    "trt.BuilderFlag",
    "trt.DeviceType",
    "trt.DeviceType.DLA",
    "trt.ILogger",
    "trt.ILogger.__init__",
    "trt.ILogger.Severity",
    "trt.ILogger.Severity.ERROR",
    "trt.ILogger.Severity.INTERNAL_ERROR",
    "trt.ILogger.Severity.VERBOSE",
    "trt.LayerInformationFormat",
    "trt.LayerInformationFormat.JSON",
    "trt.MemoryPoolType",
    "trt.MemoryPoolType.WORKSPACE",
    "trt.OnnxParser",
    "trt.ProfilingVerbosity",
    "trt.Runtime",
    "trt.TensorIOMode",
    "trt.TensorIOMode.INPUT",
    "trt.__version__",
    "trt.nptype",
    "builder.build_serialized_network",
    "builder.create_builder_config",
    "builder.create_network",
    "builder.create_optimization_profile",
    "builder.num_DLA_cores",
    "config.DLA_core",
    "config.add_optimization_profile",
    "config.builder_optimization_level",
    "config.create_timing_cache",
    "config.default_device_type",
    "config.get_timing_cache",
    "config.profiling_verbosity",
    "config.set_flag",
    "config.set_memory_pool_limit",
    "config.set_timing_cache",
    "engine.create_engine_inspector",
    "engine.get_tensor_dtype",
    "engine.get_tensor_mode",
    "engine.get_tensor_name",
    "engine.num_io_tensors",
    "inspector.get_engine_information",
    "parser.get_error",
    "parser.num_errors",
    "parser.parse_from_file",
    "profile.set_shape",
    "runtime.deserialize_cuda_engine",
}
# enum members reached through getattr(trt.BuilderFlag, name) / getattr(trt.ProfilingVerbosity)
VERIFIED_BUILDER_FLAGS = {"FP16", "INT8", "FP8", "SPARSE_WEIGHTS", "GPU_FALLBACK"}
VERIFIED_VERBOSITY = {"DETAILED"}


def used_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            chain, n = [], node
            while isinstance(n, ast.Attribute):
                chain.append(n.attr)
                n = n.value
            if isinstance(n, ast.Name) and n.id in OWNERS:
                names.add(n.id + "." + ".".join(reversed(chain)))
    return names


@pytest.mark.parametrize("module", MODULES)
def test_every_tensorrt_name_is_verified(module):
    used = used_names(ROOT / module)
    assert used, "the AST walk found no TensorRT call at all"
    assert used - VERIFIED_10X == set()


def test_flags_and_verbosity_the_plan_can_emit_are_verified():
    from kdeploy.runtime.build_plan import _TRTEXEC_FLAG, PRECISION_FLAGS

    emitted = {f for flags in PRECISION_FLAGS.values() for f in flags} | set(_TRTEXEC_FLAG)
    assert emitted <= VERIFIED_BUILDER_FLAGS
    from kdeploy.runtime.build_plan import BuildPlan

    kinds = {
        s.value
        for s in BuildPlan(
            device="a100",
            compute_capability="SM 8.0",
            precision="fp32",
            flags=(),
            shapes=(),
            workspace_mb=1,
            optimization_level=3,
            dla_core=None,
            onnx="m",
            engine="e",
            timing_cache="t",
            layer_info="l",
        ).settings()
        if s.kind == "profiling_verbosity"
    }
    assert kinds <= VERIFIED_VERBOSITY
