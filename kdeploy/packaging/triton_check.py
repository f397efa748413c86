"""Reading a config.pbtxt back and checking it the way Triton would: against the graph of
the model file in ``<name>/1/`` (check_config) and against one request's tensors
(check_request). Every check returns problems as sentences; an empty list means none found.

Torch-free; tritonclient (extra ``triton``) is imported only when a config is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.errors import ModelError
from kdeploy.packaging.triton_io import (
    BACKENDS,
    COMPANIONS,
    NUMPY_TO_TRITON,
    PLATFORMS,
    VERSION,
    TensorInfo,
    graph_io,
    model_config_pb2,
)


def load_config(path: Path) -> Any:
    """Parse a config.pbtxt into tritonclient's ModelConfig (errors name file and line)."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}", where=str(path)) from None
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        line = getattr(exc, "GetLine", lambda: None)()
        where = f"{path}:{line}" if line else str(path)
        raise ModelError(
            f"{path} is not a valid Triton ModelConfig: {exc}",
            where=where,
            fix="regenerate it: rerun `kdeploy compress --from package`",
        ) from None


def loader_of(cfg: Any) -> str:
    """The platform (onnxruntime_onnx, tensorrt_plan) or backend (openvino) of a config."""
    return cfg.platform or cfg.backend


def model_file_of(cfg: Any, model_dir: Path) -> Path:
    default = dict(PLATFORMS.values()).get(loader_of(cfg), "model.onnx")
    return model_dir / VERSION / (cfg.default_model_filename or default)


def check_config(cfg: Any, model_dir: Path) -> list[str]:
    """Problems that would make Triton refuse the model (empty list: none found)."""
    problems: list[str] = []
    if cfg.name != model_dir.name:
        problems.append(f"name '{cfg.name}' differs from the directory name '{model_dir.name}'")
    known = sorted({p for p, _ in PLATFORMS.values()})
    if loader_of(cfg) not in known:
        problems.append(
            f"platform/backend '{loader_of(cfg)}' is not one of kdeploy's ({', '.join(known)})"
        )
        return problems
    if cfg.platform in BACKENDS:
        problems.append(f"'{cfg.platform}' is a Triton backend: it goes in `backend`")
    model_file = model_file_of(cfg, model_dir)
    if not model_file.is_file():
        return [*problems, f"model file {model_file} is missing"]
    missing = [
        s
        for s in COMPANIONS.get(model_file.suffix.lower(), ())
        if not model_file.with_suffix(s).is_file()
    ]
    if missing:  # (the graph cannot be read without them)
        return [*problems, f"{model_file.name} needs its {', '.join(missing)} file beside it"]
    return [
        *problems,
        *_graph_problems(cfg, model_file),
        *_batching_problems(cfg),
        *_instance_problems(cfg),
        *_label_problems(cfg, model_dir),
    ]


def _graph_problems(cfg: Any, model_file: Path) -> list[str]:
    """The platform and the configured tensors against the model file's graph."""
    problems: list[str] = []
    platform, _ = PLATFORMS.get(model_file.suffix.lower(), (None, None))
    if platform != loader_of(cfg):
        problems.append(f"{loader_of(cfg)} does not load {model_file.name}")
    inputs, outputs = graph_io(model_file)
    problems += _tensors_problems(cfg, "input", cfg.input, inputs, need_all=True)
    problems += _tensors_problems(cfg, "output", cfg.output, outputs, need_all=False)
    if not cfg.output:
        problems.append("the config lists no output")
    return problems


def _tensors_problems(
    cfg: Any, kind: str, configured: Any, graph: list[TensorInfo], *, need_all: bool
) -> list[str]:
    """Configured inputs or outputs against the graph's; ``need_all``: every graph tensor
    must be configured (inputs; a config may leave graph outputs out)."""
    problems: list[str] = []
    by_name = {t.name: t for t in graph}
    if need_all:
        missing = sorted(set(by_name) - {t.name for t in configured})
        if missing:
            problems.append(f"graph {kind}(s) {missing} are not in the config")
    for t in configured:
        g = by_name.get(t.name)
        if g is None:
            problems.append(f"config {kind} '{t.name}' is not in the graph ({sorted(by_name)})")
        else:
            problems += _tensor_problems(cfg, kind, t, g)
    return problems


def _tensor_problems(cfg: Any, kind: str, t: Any, g: TensorInfo) -> list[str]:
    """One configured tensor against its graph tensor: type, batch dimension, dims."""
    problems: list[str] = []
    dtype = _dtype_name(t.data_type)
    if dtype != g.dtype:
        problems.append(f"{kind} '{t.name}': config {dtype}, graph {g.dtype}")
    shape = list(g.shape)
    if cfg.max_batch_size > 0:
        if not shape or shape[0] is not None:
            problems.append(
                f"{kind} '{t.name}' has no dynamic batch dimension but max_batch_size "
                f"is {cfg.max_batch_size}"
            )
            return problems
        shape = shape[1:]
    want = [-1 if d is None else d for d in shape]
    if list(t.dims) != want:
        problems.append(f"{kind} '{t.name}': config dims {list(t.dims)}, graph {want}")
    return problems


def _batching_problems(cfg: Any) -> list[str]:
    if not cfg.HasField("dynamic_batching"):
        return []
    problems: list[str] = []
    if cfg.max_batch_size <= 0:
        problems.append("dynamic_batching needs max_batch_size > 0")
    bad = [b for b in cfg.dynamic_batching.preferred_batch_size if not 0 < b <= cfg.max_batch_size]
    if bad:
        problems.append(f"preferred_batch_size {bad} outside 1..{cfg.max_batch_size}")
    return problems


def _instance_problems(cfg: Any) -> list[str]:
    kinds = [model_config_pb2().ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group]
    return [
        "a tensorrt_plan model cannot run on KIND_CPU instances"
        for kind in kinds
        if cfg.platform == "tensorrt_plan" and kind == "KIND_CPU"
    ]


def _label_problems(cfg: Any, model_dir: Path) -> list[str]:
    return [
        f"label file {t.label_filename} of output '{t.name}' is missing"
        for t in cfg.output
        if t.label_filename and not (model_dir / t.label_filename).is_file()
    ]


def _dtype_name(value: int) -> str:
    """Triton's name of a DataType enum value, e.g. TYPE_INT64."""
    return model_config_pb2().DataType.Name(value)


def check_request(cfg: Any, feeds: dict[str, np.ndarray]) -> list[str]:
    """Would Triton accept these tensors as one request to this model?"""
    problems = []
    for t in cfg.input:
        arr = feeds.get(t.name)
        if arr is None:
            if not t.optional:
                problems.append(f"request lacks input '{t.name}'")
            continue
        problems += _request_input_problems(cfg, t, arr)
    extra = sorted(set(feeds) - {t.name for t in cfg.input})
    if extra:
        problems.append(f"request has tensors {extra} the model does not take")
    return problems


def _request_input_problems(cfg: Any, t: Any, arr: np.ndarray) -> list[str]:
    """One request tensor against its configured input: type, batch size, dims."""
    problems = []
    want = _dtype_name(t.data_type)
    got = NUMPY_TO_TRITON.get(arr.dtype)
    if got != want:
        problems.append(f"input '{t.name}': request {arr.dtype}, config {want}")
    shape = list(arr.shape)
    if cfg.max_batch_size > 0:
        if not shape or not 1 <= shape[0] <= cfg.max_batch_size:
            problems.append(f"input '{t.name}': batch {shape[:1]} outside 1..{cfg.max_batch_size}")
            return problems
        shape = shape[1:]
    fits = len(shape) == len(t.dims) and all(
        d in (-1, s) for d, s in zip(t.dims, shape, strict=True)
    )
    if not fits:
        problems.append(f"input '{t.name}': request shape {list(arr.shape)}, dims {t.dims}")
    return problems
