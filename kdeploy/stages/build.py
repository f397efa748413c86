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

from kdeploy.config.settings import build_settings
from kdeploy.core.deps import version_of
from kdeploy.core.fsutil import atomic_write_json, atomic_write_text
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
from kdeploy.stages.base import Stage, StageInputs, StageResult, need

SIDECARS = ("tokenizer.json", "config.json")


class Build(Stage):
    name = "build"
    consumes = (need("student_int8", "student_onnx", role="student"),)
    produces = ("student_trt",)
    tools = ("tensorrt",)

    def enabled(self) -> bool:
        return self.profile.target.runtime == "trt"

    def config(self) -> dict:
        p = self.profile
        return {
            "target": p.target.model_dump(
                mode="json", exclude={"threads", "timing_cache", "ort_providers"}
            ),
            "shapes": p.export.shapes.model_dump(mode="json"),
            "sparsify": p.sparsify.model_dump(mode="json"),
        }

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "this machine has no TensorRT (the engine must be built on the target GPU)"
        return None

    def shared_cache_path(self, plan: BuildPlan) -> Path | None:
        """The persistent timing cache for this device and TensorRT version (None: off)."""
        root = self.profile.target.timing_cache
        if not root:
            return None
        sm = plan.compute_capability.replace("SM ", "sm").replace(".", "")
        return Path(root).expanduser() / f"{plan.device}-{sm}-trt{version_of('tensorrt')}.cache"

    def plan(self, onnx_path: Path) -> BuildPlan:
        """The build the profile asks for; paths relative to the run directory."""
        try:
            rel = onnx_path.resolve().relative_to(self.env.run_dir.resolve()).as_posix()
        except ValueError:
            rel = str(onnx_path)
        return make_plan(build_settings(self.profile), onnx_inputs(onnx_path), onnx=rel)

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        from kdeploy.runtime.trt_build import build_engine

        src = inputs["student"]
        card = ModelCard.load(src)
        onnx_path = src / card.model_file
        plan = self.plan(onnx_path)
        out = out_dir / "student"
        out.mkdir(parents=True, exist_ok=True)
        command = trtexec_command(plan)
        self.log(f"same build with trtexec, from the run dir:\n  {command}")
        outcome = build_engine(
            plan, onnx_path, out, shared_cache=self.shared_cache_path(plan), log=self.log
        )
        layers = parse_layers(load_layer_info(out / LAYER_INFO_FILE), str(out / LAYER_INFO_FILE))
        summary = summarize(
            layers,
            precision=plan.precision,
            sparse_requested=plan.sparse_requested,
            log_sparsity=outcome["log_sparsity"],
        )
        for w in summary["warnings"]:
            self.log(f"warning: {w}")
        self._write_model_dir(out, onnx_path, card, plan, outcome)
        atomic_write_json(out / "build_plan.json", plan.to_json())
        atomic_write_json(out / "layer_report.json", {"summary": summary, "layers": layers})
        atomic_write_text(
            out / "trtexec.sh",
            "#!/bin/sh\n# The same build with trtexec (TensorRT 10.12+ or 11.x, strongly typed), "
            "run from the run "
            f"directory.\n{command}\n",
        )
        metrics = {
            "plan": plan.to_json(),
            "trtexec": command,
            **{k: v for k, v in outcome.items() if k != "builder_warnings"},
            "layers": summary,
        }
        return StageResult(outputs={"student_trt": out}, metrics=metrics)

    @staticmethod
    def _write_model_dir(out: Path, onnx_path: Path, card: ModelCard, plan: BuildPlan, outcome):
        """The engine dir as a deployable model dir: tokenizer, config and its card."""
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
