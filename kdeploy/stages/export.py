"""export: teacher and student to ONNX (dynamic batch/sequence), checked and validated."""

from __future__ import annotations

from pathlib import Path

from kdeploy.data import load_task_data
from kdeploy.model_info import inspect_model
from kdeploy.profiles import Profile
from kdeploy.stages import StageContext, StageResult

CONSUMES = ("teacher_model", "student_model|teacher_model", "sparse_model?", "dataset")
PRODUCES = ("teacher_onnx", "student_onnx")  # + sparse_onnx when sparsify ran
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
    roles = [("teacher", "teacher_model"), ("student", student_key)]
    if "sparse_model" in ctx.inputs:
        roles.append(("sparse", "sparse_model"))
    for role, key in roles:
        info = inspect_model(
            ctx.input(key),
            allow_pickle=ctx.options.allow_pickle,
            trust_remote_code=ctx.options.trust_remote_code,
            task=ctx.profile.task,
        )
        out = ctx.work_dir / role
        card = export_onnx(
            info,
            out,
            opset=cfg.opset,
            role="teacher" if role == "teacher" else "student",
            allow_pickle=ctx.options.allow_pickle,
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
        if role == "sparse":
            metrics[role]["gemms"] = check_sparse_export(out, ctx.input("sparse_model"))
            ctx.log(
                f"sparse: {metrics[role]['gemms']['sparse_2to4']} of "
                f"{metrics[role]['gemms']['gemms']} GEMM weights are exactly 2:4 in the ONNX graph"
            )
        outputs[f"{role}_onnx"] = out
    return StageResult(outputs=outputs, metrics=metrics)


def check_sparse_export(model_dir: Path, sparse_model: Path) -> dict:
    """Every layer sparsify masked must reach the ONNX graph exactly 2:4."""
    import json

    from kdeploy.errors import ExportError
    from kdeploy.onnx_layers import gemm_layers, sparsity_problems, summarize
    from kdeploy.stages.sparsify import REPORT_FILE

    layers = gemm_layers(model_dir / "model.onnx")
    report = json.loads((sparse_model / REPORT_FILE).read_text())
    problems = sparsity_problems(layers, {x["name"] for x in report["layers"] if x["sparse"]})
    if problems:
        raise ExportError(
            f"the exported sparse student lost its 2:4 pattern: {'; '.join(problems[:3])}",
            where=str(model_dir),
            fix="a kdeploy bug (the exporter changed the weights): please report it",
        )
    return summarize(layers)
