"""quantize: the INT8 student, and optionally the teacher quantized as optimum users do it
today (the baseline).

- ``dynamic`` / ``static``: ONNX Runtime's post-training quantizer on the exported ONNX
  student (the sparse one when sparsify ran), static calibrated on train-split texts.
- ``ptq`` / ``qat``: modelopt in torch on the student (sparse or distilled): calibration,
  then for qat KD fine-tuning through the fake quantizers (2:4 masks kept), exported as a
  Q/DQ ONNX graph, checked against the fake-quantized torch model.

Every Q/DQ graph is linted against TensorRT's explicit-quantization rules (kdeploy.qdq_lint):
a finding fails the stage for TensorRT targets and is reported for ONNX Runtime ones. When
the student is 2:4 sparse, the INT8 graph must still be exactly 2:4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kdeploy.data import load_task_data
from kdeploy.errors import ExportError
from kdeploy.profiles import Profile
from kdeploy.stages import StageContext, StageResult

CONSUMES = (
    "sparse_onnx|student_onnx",
    "teacher_onnx",
    "dataset",
    "sparse_model|student_model|teacher_model",
    "teacher_model",
    "unlabeled_text?",
)
PRODUCES = ("student_int8",)
TOOLS = ("onnx", "onnxruntime", "optimum", "optimum-onnx", "torch", "nvidia-modelopt")


def resumable(profile: Profile) -> bool:
    """QAT checkpoints every epoch and resumes there; the other methods start over."""
    return profile.quantize.method == "qat"


def enabled(profile: Profile) -> bool:
    return profile.quantize.enabled


def config(profile: Profile) -> dict:
    cfg = {"quantize": profile.quantize.model_dump(mode="json"), "seed": profile.distill.seed}
    if profile.quantize.in_torch:  # the QAT recipe reuses distillation's losses and batch
        cfg["distill"] = profile.distill.model_dump(mode="json")
        cfg["export"] = profile.export.model_dump(mode="json")
        cfg["task"] = profile.task
    return cfg


def calibration_texts(ctx: StageContext) -> list[str]:
    """A seeded sample of train-split texts (never dev/test)."""
    cfg = ctx.profile.quantize
    if cfg.method == "dynamic":
        return []
    texts = load_task_data(ctx.input("dataset")).splits["train"].texts()
    rng = np.random.default_rng(ctx.profile.distill.seed)
    n = min(cfg.calibration_texts, len(texts))
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def _first(ctx: StageContext, *names: str) -> Path:
    return next(ctx.inputs[n] for n in names if n in ctx.inputs)


def run(ctx: StageContext) -> StageResult:
    from kdeploy.train.quantize import quantize_student, quantize_with_optimum

    cfg = ctx.profile.quantize
    out = ctx.work_dir / "student"
    src_onnx = _first(ctx, "sparse_onnx", "student_onnx")
    if cfg.in_torch:
        student = modelopt_student(ctx, out)
    else:
        if out.exists():  # a stopped earlier attempt
            shutil.rmtree(out)
        student = quantize_student(src_onnx, out, cfg, calibration_texts(ctx))
    metrics: dict = {"student": student}
    if cfg.format == "qdq":
        metrics["qdq_lint"] = lint(ctx, out)
    if "sparse_onnx" in ctx.inputs:
        metrics["sparsity"] = check_sparsity_kept(src_onnx, out)
    outputs = {"student_int8": out}
    ctx.log(f"student INT8 ({cfg.method}): {student['bytes_after'] / 1e6:.1f} MB")
    if cfg.teacher_baseline:
        tout = ctx.work_dir / "teacher"
        if tout.exists():
            shutil.rmtree(tout)
        metrics["teacher"] = quantize_with_optimum(ctx.input("teacher_onnx"), tout)
        outputs["teacher_int8"] = tout
        ctx.log(f"teacher INT8 baseline ({metrics['teacher']['config']})")
    return StageResult(outputs=outputs, metrics=metrics)


def lint(ctx: StageContext, model_dir: Path) -> dict:
    from kdeploy.qdq_lint import RULES, findings_json, lint_qdq, summary

    findings = lint_qdq(model_dir / "model.onnx")
    ctx.log(f"Q/DQ lint (TensorRT rules): {summary(findings)}")
    if findings and ctx.profile.target.runtime == "trt":
        broken = {f.rule for f in findings}
        shown = "; ".join(f"[{f.rule}] {f.node}: {f.message}" for f in findings[:4])
        raise ExportError(
            f"the Q/DQ graph breaks {len(findings)} TensorRT explicit-quantization rule(s): "
            f"{shown}",
            where=str(model_dir / "model.onnx"),
            fix="quantize with method qat/ptq (modelopt places Q/DQ on GEMM inputs only), or "
            "for static set quantize.op_types: [MatMul]; rules: "
            + "; ".join(f"{k}: {v[0]}" for k, v in RULES.items() if k in broken),
        )
    return {"findings": findings_json(findings), "summary": summary(findings)}


def check_sparsity_kept(sparse_dir: Path, int8_dir: Path) -> dict:
    """The INT8 student must keep every 2:4 weight of the sparse fp32 one."""
    from kdeploy.onnx_layers import gemm_layers, module_of, sparsity_problems, summarize

    before = {module_of(x.node) for x in gemm_layers(sparse_dir / "model.onnx") if x.is_2to4}
    after = gemm_layers(int8_dir / "model.onnx")
    problems = sparsity_problems(after, before)
    if problems:
        raise ExportError(
            f"quantization broke the 2:4 pattern: {'; '.join(problems[:3])}",
            where=str(int8_dir / "model.onnx"),
            fix="use symmetric int8 weights (quantize.weight_type: int8), whose zero stays 0",
        )
    return summarize(after)


def modelopt_student(ctx: StageContext, out: Path) -> dict:
    """PTQ or QAT in torch (modelopt), exported as Q/DQ ONNX and validated."""
    import torch

    from kdeploy.model_info import inspect_model
    from kdeploy.stages.distill import kd_fine_tune, remove_leftovers
    from kdeploy.stages.sparsify import layer_map
    from kdeploy.train.distill import forward_loop, tokenized_batches
    from kdeploy.train.export import (
        check_onnx,
        export_loaded,
        sentence_transformer_around,
        torch_outputs,
        validate_export,
    )
    from kdeploy.train.loading import load_hf_model, load_tokenizer
    from kdeploy.train.qat import quantize_model
    from kdeploy.train.sparsify import apply_masks

    p = ctx.profile
    cfg = p.quantize
    opts = {
        "allow_pickle": ctx.options.allow_pickle,
        "trust_remote_code": ctx.options.trust_remote_code,
    }
    src = _first(ctx, "sparse_model", "student_model", "teacher_model")
    s_info = inspect_model(src, task=p.task, **opts)
    t_info = inspect_model(ctx.input("teacher_model"), task=p.task, **opts)
    torch.manual_seed(p.distill.seed)
    student = load_hf_model(s_info, allow_pickle=ctx.options.allow_pickle)
    masks = None
    if "sparse_model" in ctx.inputs:  # QAT must not undo the zeros: the same masks again
        import json

        from kdeploy.stages.sparsify import REPORT_FILE

        report = json.loads((src / REPORT_FILE).read_text())
        modules = dict(student.named_modules())
        masks = {
            x["name"]: modules[x["name"]].weight.detach() != 0
            for x in report["layers"]
            if x["sparse"]
        }
    max_len = min(p.distill.max_seq_length, s_info.max_seq_length)
    tok = load_tokenizer(s_info.path)
    calib = tokenized_batches(tok, calibration_texts(ctx), max_len, 16, torch.device("cpu"))
    placed = quantize_model(student, cfg, forward_loop(calib))
    ctx.log(
        f"modelopt INT8 fake quantizers on {len(placed['quantized'])} Linear layers "
        f"(float: {', '.join(placed['float']) or 'none'}), calibrated on {len(calib)} batches"
    )
    record: dict = {"steps": 0}
    if cfg.method == "qat":
        record = kd_fine_tune(
            ctx,
            student,
            t_info,
            layer_map(ctx, t_info.num_layers, s_info.num_layers),
            cfg.fine_tune,
            after_step=(lambda: apply_masks(student, masks)) if masks else None,
            label="QAT",
        )
    student.cpu().eval()
    model = student
    if s_info.kind == "embedding":
        model = sentence_transformer_around(src, student)
    if out.exists():
        shutil.rmtree(out)
    export_loaded(model, s_info, out, opset=p.export.opset, role="student", precision="int8")
    check_onnx(out / "model.onnx")
    expect_int8(out, placed["quantized"])
    texts = load_task_data(ctx.input("dataset")).bench_split().texts_a[: p.export.validation_texts]
    check = validate_export(
        s_info,
        out,
        texts,
        atol=p.export.qdq_atol,
        min_cosine=p.export.qdq_min_cosine,
        reference=torch_outputs(s_info, texts, model=model),
    )
    remove_leftovers(ctx.work_dir)
    ctx.log(
        f"Q/DQ export vs fake-quantized torch: max |diff| {check['max_abs_diff']:.2e}, "
        f"min cosine {check['min_cosine']:.5f}"
    )
    return {
        "method": cfg.method,
        "tool": "modelopt",
        "format": "qdq",
        "per_channel": cfg.per_channel,
        "weight_type": "int8",
        "activation_type": "int8",
        "calibration_texts": len(calibration_texts(ctx)),
        "quantized_layers": placed["quantized"],
        "float_layers": placed["float"],
        "fine_tune": record,
        "validation": check,
        "bytes_before": (_first(ctx, "sparse_onnx", "student_onnx") / "model.onnx").stat().st_size,
        "bytes_after": (out / "model.onnx").stat().st_size,
    }


def expect_int8(model_dir: Path, quantized: list[str]) -> None:
    """Each Linear modelopt quantized must be a Q/DQ GEMM in the exported graph: an
    exporter that drops the quantizers would otherwise pass every numeric check."""
    from kdeploy.onnx_layers import gemm_layers, module_of

    int8 = {module_of(x.node) for x in gemm_layers(model_dir / "model.onnx") if x.weight_bits == 8}
    lost = [n for n in quantized if not any(m.endswith(n) for m in int8)]
    if lost:
        raise ExportError(
            f"{len(lost)} of {len(quantized)} quantized layers reached the ONNX graph without "
            f"Q/DQ (e.g. {lost[0]})",
            where=str(model_dir / "model.onnx"),
            fix="a kdeploy bug (the exporter lost modelopt's quantizers): please report it",
        )
