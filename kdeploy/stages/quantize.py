"""quantize: INT8 student with ONNX Runtime's quantizer (dynamic, or static calibrated on
the train split); optionally the teacher too, quantized the way optimum users do today."""

from __future__ import annotations

import numpy as np

from kdeploy.data import load_task_data
from kdeploy.profiles import Profile
from kdeploy.stages import StageContext, StageResult

CONSUMES = ("student_onnx", "teacher_onnx", "dataset")
PRODUCES = ("student_int8",)
TOOLS = ("onnx", "onnxruntime", "optimum", "optimum-onnx")


def enabled(profile: Profile) -> bool:
    return profile.quantize.enabled


def config(profile: Profile) -> dict:
    return {"quantize": profile.quantize.model_dump(mode="json"), "seed": profile.distill.seed}


def calibration_texts(ctx: StageContext) -> list[str]:
    """A seeded sample of train-split texts (never dev/test)."""
    cfg = ctx.profile.quantize
    if cfg.method != "static":
        return []
    texts = load_task_data(ctx.input("dataset")).splits["train"].texts()
    rng = np.random.default_rng(ctx.profile.distill.seed)
    n = min(cfg.calibration_texts, len(texts))
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def run(ctx: StageContext) -> StageResult:
    from kdeploy.train.quantize import quantize_student, quantize_with_optimum

    cfg = ctx.profile.quantize
    out = ctx.work_dir / "student"
    metrics = {
        "student": quantize_student(ctx.input("student_onnx"), out, cfg, calibration_texts(ctx))
    }
    outputs = {"student_int8": out}
    ctx.log(f"student INT8 ({cfg.method}): {metrics['student']['bytes_after'] / 1e6:.1f} MB")
    if cfg.teacher_baseline:
        tout = ctx.work_dir / "teacher"
        metrics["teacher"] = quantize_with_optimum(ctx.input("teacher_onnx"), tout)
        outputs["teacher_int8"] = tout
        ctx.log(f"teacher INT8 baseline ({metrics['teacher']['config']})")
    return StageResult(outputs=outputs, metrics=metrics)
