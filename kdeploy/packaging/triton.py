"""Triton model repository: ``config.pbtxt`` from the model's real graph I/O and the profile.

The config is built as tritonclient's ``ModelConfig`` protobuf message (Triton's own schema),
written with protobuf ``text_format``, then parsed back from disk and checked against the
graph of the model file in ``<name>/1/`` before the stage keeps it.

Tokenization is client-side: the Triton model takes the token tensors the graph takes
(``input_ids``, ``attention_mask``, ...), and clients make them with ``kdeploy.runtime``
(``Encoder.tokenize``), the same code that computed the run's metrics. See README.

Torch-free; tritonclient (extra ``triton``) is imported only when a config is built or read.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.deps import require, version_of
from kdeploy.core.errors import DependencyError, ModelError
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.graph import TensorSpec, onnx_io

# graph element types -> Triton DataType names
_ORT_TO_TRITON = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
}
_TRT_TO_TRITON = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "FLOAT": "TYPE_FP32",
}
_NUMPY_TO_TRITON = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
}
# model file suffix -> (Triton platform, the file name Triton looks for in the version dir)
PLATFORMS = {
    ".onnx": ("onnxruntime_onnx", "model.onnx"),
    ".plan": ("tensorrt_plan", "model.plan"),
    ".engine": ("tensorrt_plan", "model.plan"),
}
VERSION = "1"
LABELS_FILE = "labels.txt"


def _pb2() -> Any:
    """tritonclient's ModelConfig protobuf module (Triton's model_config.proto)."""
    feature = "the Triton model repository (config.pbtxt)"
    try:
        return require("tritonclient.grpc.model_config_pb2", feature=feature)
    except RuntimeError as exc:  # tritonclient without its grpc extra raises RuntimeError
        raise DependencyError(
            f"{feature} needs tritonclient with gRPC support ({exc})",
            fix="pip install 'kdeploy[triton]'",
        ) from None


@dataclass
class TensorInfo:
    name: str
    dtype: str  # Triton DataType name, e.g. TYPE_INT64
    shape: list[int | None]  # None: a dynamic (symbolic) dimension


def graph_io(model_file: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an ONNX model (via onnxruntime) or a TensorRT engine."""
    suffix = model_file.suffix.lower()
    if suffix == ".onnx":
        return _onnx_io(model_file)
    if suffix in (".plan", ".engine"):
        return _engine_io(model_file)
    raise ModelError(f"cannot read the inputs/outputs of {model_file}", where=str(model_file))


def _onnx_io(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    def conv(args: list[TensorSpec]) -> list[TensorInfo]:
        out = []
        for a in args:
            if a.dtype not in _ORT_TO_TRITON:
                raise ModelError(
                    f"{path}: tensor {a.name} has type {a.dtype}, which Triton cannot carry",
                    where=str(path),
                )
            shape = [d if isinstance(d, int) and d >= 0 else None for d in a.shape]
            out.append(TensorInfo(a.name, _ORT_TO_TRITON[a.dtype], shape))
        return out

    inputs, outputs = onnx_io(path)
    return conv(inputs), conv(outputs)


def _engine_io(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    trt = require("tensorrt", feature="reading a TensorRT engine's inputs and outputs")
    logger = trt.Logger(trt.Logger.ERROR)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ModelError(f"TensorRT cannot deserialize {path}", where=str(path))
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = _TRT_TO_TRITON.get(engine.get_tensor_dtype(name).name)
        if dtype is None:
            raise ModelError(f"{path}: tensor {name} has a type Triton cannot carry")
        shape = [d if d >= 0 else None for d in engine.get_tensor_shape(name)]
        info = TensorInfo(name, dtype, shape)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(info)
    return inputs, outputs


# ------------------------------------------------------------------------ building


@dataclass
class TritonSettings:
    """Everything in config.pbtxt that does not come from the graph."""

    name: str
    platform: str
    model_filename: str
    max_batch_size: int
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int
    kind: str  # KIND_CPU | KIND_GPU
    instances: int
    threads: int | None
    label_output: str | None = None


def model_name(teacher_path: str | Path, precision: str) -> str:
    """A repository-safe model name: <teacher dir>_<precision>."""
    p = Path(teacher_path)
    base = p.name
    if base in ("model", "models", "") and p.parent.name:
        base = p.parent.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{base}_{precision}").strip("_.-") or "model"


def settings_for(profile, model_file: Path, name: str, card: ModelCard) -> TritonSettings:
    """Triton settings from the profile: batch limits, preferred sizes, instances."""
    platform, filename = PLATFORMS.get(model_file.suffix.lower(), (None, None))
    if platform is None:
        raise ModelError(f"Triton has no platform for {model_file.name}", where=str(model_file))
    pkg = profile.package
    max_batch = profile.export.shapes.batch.max
    preferred = pkg.preferred_batch_sizes
    if preferred is None:
        preferred = [b for b in profile.bench.batch_sizes if 1 < b <= max_batch]
    return TritonSettings(
        name=name,
        platform=platform,
        model_filename=filename,
        max_batch_size=max_batch,
        preferred_batch_sizes=sorted(set(preferred)),
        max_queue_delay_us=pkg.max_queue_delay_us,
        kind="KIND_CPU" if profile.target.device == "cpu" else "KIND_GPU",
        instances=pkg.instances,
        threads=profile.target.threads if profile.target.device == "cpu" else None,
        label_output=card.output if card.task == "classification" and card.labels else None,
    )


def build_config(
    settings: TritonSettings, inputs: list[TensorInfo], outputs: list[TensorInfo]
) -> Any:
    """The ModelConfig message. Batching needs a dynamic first dim on every tensor; a graph
    without one gets max_batch_size 0 and its full shapes."""
    pb = _pb2()
    batched = settings.max_batch_size > 0 and all(
        t.shape and t.shape[0] is None for t in inputs + outputs
    )
    cfg = pb.ModelConfig(
        name=settings.name,
        platform=settings.platform,
        max_batch_size=settings.max_batch_size if batched else 0,
        default_model_filename=settings.model_filename,
    )

    def dims(t: TensorInfo) -> list[int]:
        shape = t.shape[1:] if batched else t.shape
        return [-1 if d is None else d for d in shape]

    for t in inputs:
        x = cfg.input.add()
        x.name, x.data_type = t.name, pb.DataType.Value(t.dtype)
        x.dims.extend(dims(t))
    for t in outputs:
        y = cfg.output.add()
        y.name, y.data_type = t.name, pb.DataType.Value(t.dtype)
        y.dims.extend(dims(t))
        if t.name == settings.label_output:
            y.label_filename = LABELS_FILE
    if batched:
        db = cfg.dynamic_batching
        db.preferred_batch_size.extend(
            b for b in settings.preferred_batch_sizes if b <= settings.max_batch_size
        )
        db.max_queue_delay_microseconds = settings.max_queue_delay_us
    group = cfg.instance_group.add()
    group.kind = pb.ModelInstanceGroup.Kind.Value(settings.kind)
    group.count = settings.instances
    if settings.platform == "onnxruntime_onnx" and settings.threads:
        # onnxruntime backend parameters (Triton onnxruntime_backend README)
        cfg.parameters["intra_op_thread_count"].string_value = str(settings.threads)
        cfg.parameters["inter_op_thread_count"].string_value = "1"
    return cfg


def render_config(cfg: Any) -> str:
    from google.protobuf import text_format

    header = (
        f"# Triton model configuration written by kdeploy; schema: tritonclient "
        f"{version_of('tritonclient')} ModelConfig.\n"
        "# Inputs are token tensors: tokenize on the client with kdeploy.runtime "
        "(Encoder.tokenize).\n"
    )
    return header + text_format.MessageToString(cfg, use_short_repeated_primitives=True)


def load_config(path: Path) -> Any:
    """Parse a config.pbtxt into tritonclient's ModelConfig (errors name file and line)."""
    from google.protobuf import text_format

    pb = _pb2()
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


# ------------------------------------------------------------------------ checking


def _dtype_name(pb: Any, value: int) -> str:
    return pb.DataType.Name(value)


def model_file_of(cfg: Any, model_dir: Path) -> Path:
    default = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}.get(
        cfg.platform or cfg.backend, "model.onnx"
    )
    return model_dir / VERSION / (cfg.default_model_filename or default)


def check_config(cfg: Any, model_dir: Path) -> list[str]:
    """Problems that would make Triton refuse the model (empty list: none found)."""
    pb = _pb2()
    problems: list[str] = []
    if cfg.name != model_dir.name:
        problems.append(f"name '{cfg.name}' differs from the directory name '{model_dir.name}'")
    if cfg.platform not in {p for p, _ in PLATFORMS.values()}:
        problems.append(f"platform '{cfg.platform}' is not onnxruntime_onnx or tensorrt_plan")
        return problems
    model_file = model_file_of(cfg, model_dir)
    if not model_file.is_file():
        return [*problems, f"model file {model_file} is missing"]
    platform, _ = PLATFORMS.get(model_file.suffix.lower(), (None, None))
    if platform != cfg.platform:
        problems.append(f"platform {cfg.platform} does not load {model_file.name}")
    g_inputs, g_outputs = graph_io(model_file)
    batched = cfg.max_batch_size > 0

    def compare(kind: str, configured, graph: list[TensorInfo], need_all: bool) -> None:
        by_name = {t.name: t for t in graph}
        names = [t.name for t in configured]
        if need_all:
            missing = sorted(set(by_name) - set(names))
            if missing:
                problems.append(f"graph {kind}(s) {missing} are not in the config")
        for t in configured:
            g = by_name.get(t.name)
            if g is None:
                problems.append(f"config {kind} '{t.name}' is not in the graph ({sorted(by_name)})")
                continue
            if _dtype_name(pb, t.data_type) != g.dtype:
                problems.append(
                    f"{kind} '{t.name}': config {_dtype_name(pb, t.data_type)}, graph {g.dtype}"
                )
            shape = list(g.shape)
            if batched:
                if not shape or shape[0] is not None:
                    problems.append(
                        f"{kind} '{t.name}' has no dynamic batch dimension but max_batch_size "
                        f"is {cfg.max_batch_size}"
                    )
                    continue
                shape = shape[1:]
            want = [-1 if d is None else d for d in shape]
            if list(t.dims) != want:
                problems.append(f"{kind} '{t.name}': config dims {list(t.dims)}, graph {want}")

    compare("input", cfg.input, g_inputs, need_all=True)
    compare("output", cfg.output, g_outputs, need_all=False)
    if not cfg.output:
        problems.append("the config lists no output")
    if cfg.HasField("dynamic_batching"):
        if not batched:
            problems.append("dynamic_batching needs max_batch_size > 0")
        bad = [
            b for b in cfg.dynamic_batching.preferred_batch_size if not 0 < b <= cfg.max_batch_size
        ]
        if bad:
            problems.append(f"preferred_batch_size {bad} outside 1..{cfg.max_batch_size}")
    for group in cfg.instance_group:
        kind = pb.ModelInstanceGroup.Kind.Name(group.kind)
        if cfg.platform == "tensorrt_plan" and kind == "KIND_CPU":
            problems.append("a tensorrt_plan model cannot run on KIND_CPU instances")
    for t in cfg.output:
        if t.label_filename and not (model_dir / t.label_filename).is_file():
            problems.append(f"label file {t.label_filename} of output '{t.name}' is missing")
    return problems


def check_request(cfg: Any, feeds: dict[str, np.ndarray]) -> list[str]:
    """Would Triton accept these tensors as one request to this model?"""
    pb = _pb2()
    problems = []
    for t in cfg.input:
        arr = feeds.get(t.name)
        if arr is None:
            if not t.optional:
                problems.append(f"request lacks input '{t.name}'")
            continue
        want = _dtype_name(pb, t.data_type)
        got = _NUMPY_TO_TRITON.get(arr.dtype)
        if got != want:
            problems.append(f"input '{t.name}': request {arr.dtype}, config {want}")
        shape = list(arr.shape)
        if cfg.max_batch_size > 0:
            if not shape or not 1 <= shape[0] <= cfg.max_batch_size:
                problems.append(
                    f"input '{t.name}': batch {shape[:1]} outside 1..{cfg.max_batch_size}"
                )
                continue
            shape = shape[1:]
        fits = len(shape) == len(t.dims) and all(
            d in (-1, s) for d, s in zip(t.dims, shape, strict=True)
        )
        if not fits:
            problems.append(f"input '{t.name}': request shape {list(arr.shape)}, dims {t.dims}")
    extra = sorted(set(feeds) - {t.name for t in cfg.input})
    if extra:
        problems.append(f"request has tensors {extra} the model does not take")
    return problems


# ------------------------------------------------------------------------ writing


def write_model_repository(repo: Path, model_dir: Path, profile, *, name: str) -> dict[str, Any]:
    """``repo/<name>/{config.pbtxt, 1/model.onnx|model.plan[, labels.txt]}``, validated."""
    card = ModelCard.load(model_dir)
    model_file = model_dir / card.model_file
    settings = settings_for(profile, model_file, name, card)
    target = repo / name
    version_dir = target / VERSION
    version_dir.mkdir(parents=True)
    shutil.copy2(model_file, version_dir / settings.model_filename)
    # ONNX external data lives beside the graph under the name the graph records
    for extra in sorted(model_dir.glob(f"{model_file.name}*")):
        if extra != model_file and extra.is_file():
            shutil.copy2(extra, version_dir / extra.name)
    if settings.label_output:
        (target / LABELS_FILE).write_text("\n".join(card.labels or []) + "\n", encoding="utf-8")
    inputs, outputs = graph_io(model_file)
    cfg = build_config(settings, inputs, outputs)
    path = target / "config.pbtxt"
    path.write_text(render_config(cfg), encoding="utf-8")
    parsed = load_config(path)  # what Triton will read, not what we meant to write
    problems = check_config(parsed, target)
    if problems:
        raise ModelError(
            f"generated Triton config {path} does not match its model: {'; '.join(problems)}",
            where=str(path),
        )
    return {
        "name": name,
        "platform": parsed.platform,
        "config": str(path),
        "model_file": str(model_file_of(parsed, target)),
        "max_batch_size": parsed.max_batch_size,
        "preferred_batch_sizes": list(parsed.dynamic_batching.preferred_batch_size),
        "max_queue_delay_us": parsed.dynamic_batching.max_queue_delay_microseconds,
        "instance_kind": settings.kind,
        "instances": settings.instances,
        "inputs": [asdict(t) for t in inputs],
        "outputs": [asdict(t) for t in outputs],
        "validated_with": f"tritonclient {version_of('tritonclient')} ModelConfig",
        "tokenization": "client-side (kdeploy.runtime Encoder/Classifier .tokenize)",
    }
