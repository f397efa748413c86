"""export: teacher and student to ONNX (dynamic batch/sequence), checked and validated."""

from __future__ import annotations

from kdeploy.data import load_task_data
from kdeploy.model_info import inspect_model
from kdeploy.profiles import Profile
from kdeploy.stages import StageContext, StageResult

CONSUMES = ("teacher_model", "student_model|teacher_model", "dataset")
PRODUCES = ("teacher_onnx", "student_onnx")
TOOLS = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "sentence-transformers",
    "onnx",
    "onnxruntime",
)


def enabled(profile: Profile) -> bool:
    return True


def config(profile: Profile) -> dict:
    return {"task": profile.task, "export": profile.export.model_dump(mode="json")}


def run(ctx: StageContext) -> StageResult:
    from kdeploy.train.export import check_onnx, export_onnx, validate_export

    cfg = ctx.profile.export
    data = load_task_data(ctx.input("dataset"))
    texts = data.bench_split().texts_a[: cfg.validation_texts]
    metrics: dict = {}
    outputs = {}
    student_key = "student_model" if "student_model" in ctx.inputs else "teacher_model"
    for role, key in (("teacher", "teacher_model"), ("student", student_key)):
        info = inspect_model(
            ctx.input(key),
            allow_pickle=ctx.options.allow_pickle,
            trust_remote_code=ctx.options.trust_remote_code,
            task=ctx.profile.task,
        )
        out = ctx.work_dir / role
        card = export_onnx(
            info, out, opset=cfg.opset, role=role, allow_pickle=ctx.options.allow_pickle
        )
        check_onnx(out / card.model_file)
        check = validate_export(
            info,
            out,
            texts,
            atol=cfg.atol,
            min_cosine=cfg.min_cosine,
            allow_pickle=ctx.options.allow_pickle,
        )
        size = (out / card.model_file).stat().st_size
        ctx.log(
            f"{role}: {size / 1e6:.1f} MB, max |torch - onnx| {check['max_abs_diff']:.2e}, "
            f"min cosine {check['min_cosine']:.6f}"
        )
        metrics[role] = {"validation": check, "onnx_bytes": size, "layers": info.num_layers}
        outputs[f"{role}_onnx"] = out
    return StageResult(outputs=outputs, metrics=metrics)
