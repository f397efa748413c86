"""The models of a run, by the names tables use, and which one the run deploys."""

from __future__ import annotations

from pathlib import Path

# artifact name -> name in tables, in display order
VARIANTS = {
    "teacher_onnx": "teacher_fp32",
    "teacher_int8": "teacher_int8",
    "student_onnx": "student_fp32",
    "sparse_onnx": "student_sparse",
    "student_int8": "student_int8",
    "student_trt": "student_trt",
}
MODEL_ARTIFACTS = tuple(VARIANTS)

# the model the run delivers: the last one of the chain that was produced
_DEPLOY_ORDER = ("student_trt", "student_int8", "student_sparse")


def models_of(artifacts: dict[str, Path]) -> dict[str, Path]:
    """{table name: model dir} for the model artifacts among ``artifacts``."""
    return {VARIANTS[k]: artifacts[k] for k in VARIANTS if k in artifacts}


def deploy_name(models: dict[str, Path]) -> str:
    """The model the run delivers: the last one the chain produced."""
    return next((name for name in _DEPLOY_ORDER if name in models), "student_fp32")
