"""build: the student ONNX model (INT8 Q/DQ, or fp32) -> a TensorRT engine for the target.

Enabled for ``runtime: trt`` profiles. Runs on the target (TensorRT engines are specific
to a GPU model and TensorRT version), torch-free: ``kdeploy build RUN_DIR``. On a host
without TensorRT, ``kdeploy compress`` stops before this stage (exit 11) and says so.

Writes ``build/student/``: ``model.plan`` (the engine), ``timing.cache``, ``layers.json``
(the engine inspector's layer information), ``layer_report.json`` (which layers run sparse
and in which precision), ``build_plan.json`` and ``trtexec.sh`` (the same build as a
trtexec command), plus the tokenizer and ``kdeploy_model.json``, so the directory is a
deployable model dir like the ONNX ones.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from kdeploy.deps import version_of
from kdeploy.fsutil import atomic_write_json, atomic_write_text
from kdeploy.profiles import Profile
from kdeploy.runtime.build_plan import (
    ENGINE_FILE,
    LAYER_INFO_FILE,
    BuildPlan,
    make_plan,
    onnx_inputs,
    trtexec_command,
)
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.layer_report import load_layer_info, parse_layers, summarize
from kdeploy.stages import StageContext, StageResult

CONSUMES = ("student_int8|student_onnx",)
PRODUCES = ("student_trt",)
TOOLS = ("tensorrt",)
SIDECARS = ("tokenizer.json", "config.json")


def enabled(profile: Profile) -> bool:
    return profile.target.runtime == "trt"


def config(profile: Profile) -> dict:
    t = profile.target
    return {
        "target": t.model_dump(mode="json", exclude={"threads", "timing_cache", "ort_providers"}),
        "shapes": profile.export.shapes.model_dump(mode="json"),
        "sparsify": profile.sparsify.model_dump(mode="json"),
    }


def unavailable() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "this machine has no TensorRT (the engine must be built on the target GPU)"
    return None


def shared_cache_path(profile: Profile, plan: BuildPlan) -> Path | None:
    """The persistent timing cache for this device and TensorRT version (None: off)."""
    root = profile.target.timing_cache
    if not root:
        return None
    sm = plan.compute_capability.replace("SM ", "sm").replace(".", "")
    return Path(root).expanduser() / f"{plan.device}-{sm}-trt{version_of('tensorrt')}.cache"


def plan_for(ctx: StageContext) -> tuple[BuildPlan, Path, ModelCard]:
    key = "student_int8" if "student_int8" in ctx.inputs else "student_onnx"
    src = ctx.input(key)
    card = ModelCard.load(src)
    onnx_path = src / card.model_file
    try:
        rel = onnx_path.resolve().relative_to(ctx.run_dir.resolve()).as_posix()
    except ValueError:
        rel = str(onnx_path)
    plan = make_plan(ctx.profile, onnx_inputs(onnx_path), onnx=rel)
    return plan, onnx_path, card


def run(ctx: StageContext) -> StageResult:
    from kdeploy.runtime.trt_build import build_engine

    plan, onnx_path, card = plan_for(ctx)
    out = ctx.work_dir / "student"
    out.mkdir(parents=True, exist_ok=True)
    command = trtexec_command(plan)
    ctx.log(f"same build with trtexec, from the run dir:\n  {command}")
    outcome = build_engine(
        plan, onnx_path, out, shared_cache=shared_cache_path(ctx.profile, plan), log=ctx.log
    )
    layers = parse_layers(load_layer_info(out / LAYER_INFO_FILE), str(out / LAYER_INFO_FILE))
    summary = summarize(
        layers,
        precision=plan.precision,
        sparse_requested=plan.sparse_requested,
        log_sparsity=outcome["log_sparsity"],
    )
    for w in summary["warnings"]:
        ctx.log(f"warning: {w}")
    for name in SIDECARS:
        if (onnx_path.parent / name).is_file():
            shutil.copy2(onnx_path.parent / name, out / name)
    card.model_file = ENGINE_FILE
    card.precision = plan.precision
    card.extra = {
        **card.extra,
        "runtime": "tensorrt",
        "tensorrt": outcome["tensorrt"],
        "device": plan.device,
        "compute_capability": plan.compute_capability,
        "built_from": plan.onnx,
    }
    card.save(out)
    atomic_write_json(out / "build_plan.json", plan.to_json())
    atomic_write_json(out / "layer_report.json", {"summary": summary, "layers": layers})
    atomic_write_text(
        out / "trtexec.sh",
        "#!/bin/sh\n# The same build with trtexec (TensorRT 10.x), run from the run directory.\n"
        f"{command}\n",
    )
    metrics = {
        "plan": plan.to_json(),
        "trtexec": command,
        **{k: v for k, v in outcome.items() if k != "builder_warnings"},
        "layers": summary,
    }
    return StageResult(outputs={"student_trt": out}, metrics=metrics)
