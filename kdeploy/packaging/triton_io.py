"""What Triton sees of a model file: its input and output tensors with Triton's type names,
the platform that loads it, and Triton's ModelConfig schema (tritonclient's protobuf module).

Torch-free; tritonclient (extra ``triton``) is imported only when the schema is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.deps import require
from kdeploy.core.errors import DependencyError, ModelError
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
NUMPY_TO_TRITON = {
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
# model file suffix -> (Triton platform or backend, the file name Triton looks for in the
# version dir)
PLATFORMS = {
    ".onnx": ("onnxruntime_onnx", "model.onnx"),
    ".plan": ("tensorrt_plan", "model.plan"),
    ".engine": ("tensorrt_plan", "model.plan"),
    ".xml": ("openvino", "model.xml"),
}
# loaders Triton names in config.pbtxt's `backend` field (the others go in `platform`); the
# OpenVINO backend reads model.xml and the model.bin beside it
BACKENDS = {"openvino"}
# files a model file needs beside it in the version dir (OpenVINO IR: its weights)
COMPANIONS = {".xml": (".bin",)}
# OpenVINO element types -> Triton's
_OV_TO_TRITON = {"i64": "TYPE_INT64", "i32": "TYPE_INT32", "f32": "TYPE_FP32", "f16": "TYPE_FP16"}
VERSION = "1"
LABELS_FILE = "labels.txt"


def model_config_pb2() -> Any:
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
    if suffix == ".xml":
        return _openvino_io(model_file)
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


def _openvino_io(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an OpenVINO IR model (read, not compiled)."""
    ov = require("openvino", feature="reading an OpenVINO model's inputs and outputs")
    model = ov.Core().read_model(str(path))

    def conv(ports) -> list[TensorInfo]:
        out = []
        for port in ports:
            etype = port.get_element_type().get_type_name()
            if etype not in _OV_TO_TRITON:
                raise ModelError(
                    f"{path}: tensor {port.get_any_name()} has type {etype}, which Triton "
                    "cannot carry",
                    where=str(path),
                )
            shape = [
                None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()
            ]
            out.append(TensorInfo(port.get_any_name(), _OV_TO_TRITON[etype], shape))
        return out

    return conv(model.inputs), conv(model.outputs)
