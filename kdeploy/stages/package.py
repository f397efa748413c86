"""package: the deployable model dir and the report (report.json + report.md)."""

from __future__ import annotations

import shutil

from kdeploy.fsutil import atomic_write_json, atomic_write_text, read_json
from kdeploy.manifest import MANIFEST_NAME
from kdeploy.profiles import Profile
from kdeploy.report import build_report, render_markdown
from kdeploy.stages import StageContext, StageResult
from kdeploy.stages.bench import run_models
from kdeploy.stages.verify import deploy_name

CONSUMES = (
    "teacher_onnx",
    "teacher_int8?",
    "student_onnx",
    "student_int8?",
    "student_trt?",
    "bench?",
    "verify?",
)
PRODUCES = ("report", "deploy")
TOOLS = ()


def enabled(profile: Profile) -> bool:
    return True


def config(profile: Profile) -> dict:
    return {"profile": profile.digest()}


def run(ctx: StageContext) -> StageResult:
    models = run_models(ctx.inputs)
    deploy_src = models[deploy_name(models)]
    deploy = ctx.work_dir / "deploy"
    shutil.copytree(deploy_src, deploy)
    manifest = read_json(ctx.run_dir / MANIFEST_NAME)
    bench = read_json(ctx.input("bench")) if "bench" in ctx.inputs else None
    verify = read_json(ctx.input("verify")) if "verify" in ctx.inputs else None
    report = build_report(
        manifest, bench, verify, deploy_dir=str(ctx.run_dir / ctx.name / "deploy")
    )
    atomic_write_json(ctx.work_dir / "report.json", report)
    atomic_write_text(ctx.work_dir / "report.md", render_markdown(report))
    ctx.log(f"report: {ctx.run_dir / ctx.name / 'report.md'}")
    return StageResult(
        outputs={"report": ctx.work_dir / "report.json", "deploy": deploy},
        metrics={"deploy_from": deploy_name(models)},
    )
