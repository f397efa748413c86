"""Every TensorRT and Polygraphy name kdeploy's code uses exists in those libraries.

TensorRT cannot be installed here, so the build and runner code never runs in CI. Its
names are checked against what TensorRT's bindings really define: the tables in
``tests/data/tensorrt_api/`` are read out of NVIDIA/TensorRT's own pybind11 sources at
each tag by ``tools/trt_api_names.py`` (classes, their members and bases, enum values,
module-level names). Every expression of the TensorRT code is typed from a few variable
names and method return types (``VAR_TYPES``, ``RETURNS``), chained calls included
(``config.get_timing_cache().serialize()``), and each attribute must exist on its type in
every TensorRT version kdeploy supports. Polygraphy (pure Python, in the ``dev`` extra) is
checked against its own installed source.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLES = ROOT / "tests" / "data" / "tensorrt_api"
# kdeploy[trt] pins tensorrt>=10.12,<12 (strongly typed networks): the oldest and newest
# 10.x tags and every 11.x tag read out of NVIDIA/TensorRT
SUPPORTED = ("v10.12.0", "v10.16", "v11.0", "v11.1")
MODULES = (
    "kdeploy/runtime/trt_build.py",
    "kdeploy/runtime/trt_runner.py",
    "kdeploy/packaging/triton_io.py",
)

# variables that hold TensorRT objects, by name (the code's convention; an assignment
# that gives one of them another type fails the test)
VAR_TYPES = {
    "builder": "Builder",
    "config": "IBuilderConfig",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "inspector": "EngineInspector",
    "cache": "ITimingCache",
}
# what the methods whose results the code uses return (from the TensorRT API reference)
RETURNS = {
    "Builder.create_builder_config": "IBuilderConfig",
    "Builder.create_network": "INetworkDefinition",
    "Builder.create_optimization_profile": "IOptimizationProfile",
    "IBuilderConfig.create_timing_cache": "ITimingCache",
    "IBuilderConfig.get_timing_cache": "ITimingCache",
    "OnnxParser.get_error": "ParserError",
    "Runtime.deserialize_cuda_engine": "ICudaEngine",
    "ICudaEngine.create_engine_inspector": "EngineInspector",
    "ICudaEngine.get_tensor_dtype": "DataType",
    "ICudaEngine.get_tensor_mode": "TensorIOMode",
}
ENUM_BUILTINS = {"name", "value"}


@dataclass
class Api:
    """One TensorRT version's names."""

    tag: str
    classes: dict[str, dict]
    module: set[str]

    @classmethod
    def load(cls, tag: str) -> Api:
        data = json.loads((TABLES / f"{tag}.json").read_text())
        return cls(tag, data["classes"], set(data["module"]))

    def members(self, qual: str) -> set[str]:
        c = self.classes[qual]
        out = set(c["members"]) | {"__init__"}
        for base in c["bases"]:
            out |= self.members(base)
        return out


@dataclass
class Checker(ast.NodeVisitor):
    """Types the expressions rooted at ``trt`` or a VAR_TYPES variable; records every
    attribute it could not find."""

    api: Api
    where: str
    used: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def problem(self, node: ast.AST, msg: str) -> None:
        self.problems.append(f"{self.where}:{node.lineno}: {msg} (TensorRT {self.api.tag})")

    def type_of(self, node: ast.AST):
        if isinstance(node, ast.Name):
            if node.id == "trt":
                return ("module",)
            return ("inst", VAR_TYPES[node.id]) if node.id in VAR_TYPES else None
        if isinstance(node, ast.Call):
            f = self.type_of(node.func)
            if f is None:
                return None
            if f[0] == "class":
                return ("inst", f[1])
            if f[0] == "member":
                key = f"{f[1]}.{f[2]}"
                return ("inst", RETURNS[key]) if key in RETURNS else ("unknown", key)
            return None  # a module function (nptype): not a TensorRT object
        if isinstance(node, ast.Attribute):
            return self.attribute(node, self.type_of(node.value))
        return None

    def attribute(self, node: ast.Attribute, base):
        if base is None:
            return None
        name = node.attr
        if base[0] == "module":
            self.used.add(f"trt.{name}")
            if name not in self.api.module:
                self.problem(node, f"trt.{name} is not in the tensorrt module")
                return None
            return ("class", name) if name in self.api.classes else ("func", name)
        if base[0] == "unknown":
            self.problem(node, f".{name} on the result of {base[1]}: add its type to RETURNS")
            return None
        if base[0] not in ("class", "inst"):
            return None
        qual = base[1]
        self.used.add(f"{qual}.{name}")
        if f"{qual}.{name}" in self.api.classes:
            return ("class", f"{qual}.{name}")
        enum = self.api.classes[qual]["enum"]
        if base[0] == "inst" and enum and name in ENUM_BUILTINS:
            return None
        if name not in self.api.members(qual):
            self.problem(node, f"{qual} has no attribute {name}")
            return None
        return ("inst", qual) if enum else ("member", qual, name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.type_of(node)  # records problems; nested attributes are typed on the way
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in VAR_TYPES:
                got = self.type_of(node.value)
                want = VAR_TYPES[target.id]
                if got is not None and got[0] == "inst" and got[1] != want:
                    self.problem(node, f"{target.id} holds a {got[1]}, VAR_TYPES says {want}")
        self.generic_visit(node)


def check(module: str, api: Api) -> Checker:
    checker = Checker(api, module)
    checker.visit(ast.parse((ROOT / module).read_text()))
    return checker


@pytest.mark.parametrize("tag", SUPPORTED)
@pytest.mark.parametrize("module", MODULES)
def test_every_tensorrt_name_exists_in_the_bindings(module, tag):
    checker = check(module, Api.load(tag))
    assert checker.used, "the AST walk found no TensorRT name at all"
    assert checker.problems == []


def test_chained_calls_and_enum_members_are_checked():
    """The checker types chains and enum scopes: what the code uses is seen, and a name
    TensorRT 11 removed (the INT8 calibrator) or a misspelling fails."""
    api = Api.load("v10.16")
    used = set().union(*(check(m, api).used for m in MODULES))
    assert {"ITimingCache.serialize", "ParserError.desc", "ILogger.Severity.VERBOSE"} <= used
    assert {"ICudaEngine.num_io_tensors", "EngineInspector.get_engine_information"} <= used
    bad = Checker(api, "sample")
    bad.visit(
        ast.parse(
            "x = config.get_timing_cache().serialise()\n"
            "trt.ILogger.Severity.LOUD\n"
            "builder.create_network(0).add_lstm()\n"
            "config.int8_calibrator = None\n"
            "engine = builder.create_builder_config()\n"
        )
    )
    assert len(bad.problems) == 4, bad.problems  # int8_calibrator exists in 10.16
    v11 = Checker(Api.load("v11.0"), "sample")
    v11.visit(ast.parse("config.int8_calibrator = None\ntrt.BuilderFlag.INT8\n"))
    assert [p.split(": ", 1)[1] for p in v11.problems] == [
        "IBuilderConfig has no attribute int8_calibrator (TensorRT v11.0)",
        "BuilderFlag has no attribute INT8 (TensorRT v11.0)",
    ]


@pytest.mark.parametrize("tag", SUPPORTED)
def test_flags_and_verbosity_the_plan_can_emit_exist(tag):
    """Enum members reached through getattr(trt.BuilderFlag, name) and friends."""
    from kdeploy.runtime.build_plan import _TRTEXEC_FLAG, BUILDER_FLAGS

    api = Api.load(tag)
    emitted = set(BUILDER_FLAGS) | set(_TRTEXEC_FLAG)
    assert emitted <= set(api.classes["BuilderFlag"]["members"])
    assert "DETAILED" in api.classes["ProfilingVerbosity"]["members"]
    assert "DLA" in api.classes["DeviceType"]["members"]
    assert "STRONGLY_TYPED" in api.classes["NetworkDefinitionCreationFlag"]["members"]
    # TensorRT 11 removed the weak-typing flags: the table knows it, and so did 10.12 not
    removed = {"FP16", "INT8", "BF16"}
    assert not removed & set(Api.load("v11.1").classes["BuilderFlag"]["members"])
    assert removed <= set(Api.load("v10.12.0").classes["BuilderFlag"]["members"])


def test_strong_typing_is_checked_in_every_supported_version():
    """The build creates its network with STRONGLY_TYPED and reads the flag back; both
    names are seen by the checker (so a TensorRT that dropped them would fail above)."""
    for tag in SUPPORTED:
        used = check("kdeploy/runtime/trt_build.py", Api.load(tag)).used
        assert {
            "trt.NetworkDefinitionCreationFlag",
            "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
            "INetworkDefinition.get_flag",
            "Builder.create_network",
        } <= used, tag


def polygraphy_uses(module: str) -> dict[str, set[str]]:
    """{"TrtRunner": attrs used on a runner, "DeviceArray": ..., kwargs of infer}."""
    tree = ast.parse((ROOT / module).read_text())
    uses: dict[str, set[str]] = {"TrtRunner": set(), "DeviceArray": set(), "infer": set()}
    runner_vars = {"runner", "_runner"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            key = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if key in runner_vars:
                uses["TrtRunner"].add(node.attr)
            elif key == "buf":
                uses["DeviceArray"].add(node.attr)
        is_infer = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if (
            is_infer
            and node.func.attr == "infer"
            and getattr(node.func.value, "id", "") == "runner"
        ):
            uses["infer"] |= {k.arg for k in node.keywords}
    return uses


def test_every_polygraphy_name_exists_in_polygraphy():
    polygraphy = pytest.importorskip("polygraphy")
    from polygraphy import cuda
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    assert callable(EngineFromPath)
    uses = polygraphy_uses("kdeploy/runtime/trt_runner.py")
    assert uses["TrtRunner"] >= {"activate", "infer", "deactivate", "engine"}, uses
    source = inspect.getsource(TrtRunner)
    for attr in uses["TrtRunner"]:
        assert hasattr(TrtRunner, attr) or f"self.{attr} =" in source, (attr, polygraphy)
    assert uses["infer"] == {"copy_outputs_to_host"}
    # Runner.infer(feed_dict, check_inputs, *args, **kwargs) passes them to infer_impl
    assert uses["infer"] <= set(inspect.signature(TrtRunner.infer_impl).parameters)
    assert {"shape", "dtype"} <= set(inspect.signature(cuda.DeviceArray).parameters)
    for attr in uses["DeviceArray"]:
        assert hasattr(cuda.DeviceArray, attr), attr
