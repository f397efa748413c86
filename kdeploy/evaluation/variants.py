"""The models of a run, by the names tables use, the engine each runs on, and which one
the run deploys."""

from __future__ import annotations

from pathlib import Path

# artifact name -> name in tables, in display order
VARIANTS = {
    "teacher_onnx": "teacher_fp32",
    "teacher_int8": "teacher_int8",
    "student_onnx": "student_fp32",
    "sparse_onnx": "student_sparse",
    "student_int8": "student_int8",
    "student_openvino": "student_openvino",
    "student_trt": "student_trt",
}
MODEL_ARTIFACTS = tuple(VARIANTS)

# the model the ONNX Runtime / TensorRT chain delivers: the last one it produced
_DEPLOY_ORDER = ("student_trt", "student_int8", "student_sparse")
# models that run on another engine than ONNX Runtime
_ENGINE_OF = {"student_trt": "trt", "student_openvino": "openvino"}


def models_of(artifacts: dict[str, Path]) -> dict[str, Path]:
    """{table name: model dir} for the model artifacts among ``artifacts``."""
    return {VARIANTS[k]: artifacts[k] for k in VARIANTS if k in artifacts}


def engine_of(name: str) -> str:
    """The engine a model of the run runs on: ort, openvino or trt."""
    return _ENGINE_OF.get(name, "ort")


def deploy_name(models: dict[str, Path]) -> str:
    """The model the ONNX Runtime / TensorRT chain delivers: the last one it produced."""
    return next((name for name in _DEPLOY_ORDER if name in models), "student_fp32")


def deploy_candidates(models: dict[str, Path], engines: list[str]) -> list[str]:
    """The models the run may deploy, one per engine of the profile that has one: the
    chain's last model (ONNX Runtime, or TensorRT once built) and the OpenVINO model."""
    chain = deploy_name(models)
    out = [chain] if engine_of(chain) in engines else []
    if "student_openvino" in models and "openvino" in engines:
        out.append("student_openvino")
    return out or [chain]
