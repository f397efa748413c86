"""package: what a serving stack embeds, and the report.

- ``deploy/``: the deployable model dir (``kdeploy.runtime`` loads it, torch-free)
- ``triton/<name>/``: a Triton model repository (config.pbtxt validated with tritonclient)
- ``reference/``: real dev sentences and the deployed model's outputs (for serve-check)
- ``report.json`` / ``report.md`` / ``plots/*.png``: the chain, every number, the pictures
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdeploy.data import load_task_data
from kdeploy.errors import DependencyError
from kdeploy.fsutil import atomic_write_json, atomic_write_text, read_json
from kdeploy.manifest import MANIFEST_NAME
from kdeploy.profiles import Profile
from kdeploy.report import build_report, render_markdown
from kdeploy.runtime.card import ModelCard
from kdeploy.stages import StageContext, StageResult
from kdeploy.stages.bench import run_models
from kdeploy.stages.verify import deploy_name

CONSUMES = (
    "teacher_onnx",
    "teacher_int8?",
    "student_onnx",
    "sparse_onnx?",
    "student_int8?",
    "student_trt?",
    "bench?",
    "verify?",
    "dataset",
)
PRODUCES = ("report", "deploy", "reference")
TOOLS = ("onnxruntime", "tokenizers", "tritonclient", "matplotlib")


def enabled(profile: Profile) -> bool:
    return True


def config(profile: Profile) -> dict:
    return {"profile": profile.digest()}


def model_stats(model_dir: Path) -> dict:
    """Parameters, size on disk and share of zero weights of a model dir's graph."""
    card = ModelCard.load(model_dir)
    model_file = model_dir / card.model_file
    files = [model_file] + [
        p for p in model_dir.glob(f"{model_file.name}*") if p != model_file and p.is_file()
    ]
    stats = {
        "bytes": sum(p.stat().st_size for p in files),
        "role": card.role,
        "precision": card.precision,
        "layers": card.extra.get("layers"),
        "params": None,
        "zero_weights": None,
    }
    if model_file.suffix == ".onnx":
        stats.update(onnx_weight_stats(model_file))
    return stats


def onnx_weight_stats(path: Path) -> dict:
    """Weights = float or 8-bit initializers, without quantization scales / zero points."""
    import numpy as np

    from kdeploy.deps import require

    onnx = require("onnx", feature="parameter counts in the report")
    from onnx import numpy_helper

    weight_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
    }
    model = onnx.load(str(path))
    params = zeros = matrix = 0
    for t in model.graph.initializer:
        if t.data_type not in weight_types or t.name.endswith(("_scale", "_zero_point")):
            continue
        numel = int(np.prod(t.dims)) if t.dims else 1
        params += numel
        if len(t.dims) >= 2:
            matrix += numel
            zeros += int((numpy_helper.to_array(t) == 0).sum())
    from dataclasses import asdict

    from kdeploy.onnx_layers import gemm_layers

    return {
        "params": params,
        "zero_weights": zeros / matrix if matrix else None,
        "gemm_layers": [asdict(x) for x in gemm_layers(path)],
    }


def run(ctx: StageContext) -> StageResult:
    from kdeploy.servecheck import write_reference

    profile = ctx.profile
    models = run_models(ctx.inputs)
    deploy_src = models[deploy_name(models)]
    deploy = ctx.work_dir / "deploy"
    shutil.copytree(deploy_src, deploy)
    final = ctx.run_dir / ctx.name  # where the work dir lands; paths in the report point there
    outputs = {"deploy": deploy}

    split = load_task_data(ctx.input("dataset"), need_train=False).bench_split()
    ref = write_reference(
        ctx.work_dir / "reference",
        deploy,
        split,
        n=profile.package.reference_texts,
        threads=profile.target.threads,
        batch_size=profile.verify.eval_batch_size,
    )
    outputs["reference"] = ctx.work_dir / "reference"
    ctx.log(f"reference outputs: {len(ref['texts'])} {split.name} sentences")

    triton = None
    if profile.package.triton:
        from kdeploy.triton import model_name, write_model_repository

        manifest = read_json(ctx.run_dir / MANIFEST_NAME)
        card = ModelCard.load(deploy)
        name = profile.package.triton_model_name or model_name(
            manifest["model"]["path"], card.precision
        )
        triton = write_model_repository(ctx.work_dir / "triton", deploy, profile, name=name)
        triton["config"] = str(final / "triton" / name / "config.pbtxt")
        triton["model_file"] = str(final / "triton" / name / "1" / Path(triton["model_file"]).name)
        outputs["triton"] = ctx.work_dir / "triton"
        ctx.log(f"Triton model repository: {final / 'triton'} ({triton['platform']}, validated)")

    manifest = read_json(ctx.run_dir / MANIFEST_NAME)
    manifest["stages"].pop(ctx.name, None)  # a record of an earlier package run, if any
    bench = read_json(ctx.input("bench")) if "bench" in ctx.inputs else None
    verify = read_json(ctx.input("verify")) if "verify" in ctx.inputs else None
    report = build_report(
        manifest,
        bench,
        verify,
        deploy_dir=str(final / "deploy"),
        budgets=profile.verify.budgets,
        model_stats={name: model_stats(path) for name, path in models.items()},
        triton=triton,
        reference={
            "count": len(ref["texts"]),
            "split": ref["split"],
            "dir": str(final / "reference"),
            "tolerance": ref["tolerance"],
            "batch_size": ref["batch_size"],
            "bucketing": ref["bucketing"],
        },
    )
    report["plots"] = _plots(ctx, report)
    if report["plots"].get("files"):
        outputs["plots"] = ctx.work_dir / "plots"
    atomic_write_json(ctx.work_dir / "report.json", report)
    atomic_write_text(ctx.work_dir / "report.md", render_markdown(report))
    outputs["report"] = ctx.work_dir / "report.json"
    ctx.log(f"report: {final / 'report.md'}")
    return StageResult(
        outputs={**outputs, "report_md": ctx.work_dir / "report.md"},
        metrics={"deploy_from": deploy_name(models), "triton": bool(triton)},
    )


def _plots(ctx: StageContext, report: dict) -> dict:
    """{"files": {plot: relative path}} or {"skipped": why}: never fails the run."""
    if not ctx.profile.package.plots:
        return {"skipped": "package.plots is false in the profile"}
    from kdeploy.plots import make_plots

    try:
        files = make_plots(report, ctx.work_dir / "plots")
    except DependencyError as exc:
        ctx.log(f"plots skipped: {exc.what}")
        return {"skipped": f"{exc.what} (fix: {exc.fix})"}
    return {"files": {k: f"plots/{v}" for k, v in files.items()}}
