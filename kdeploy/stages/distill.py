"""distill: cut a student out of the teacher and train it to imitate the teacher.

Trains on the texts of the train split only (plus an optional --unlabeled file);
dev only picks the best epoch, test is never seen.
"""

from __future__ import annotations

from pathlib import Path

from kdeploy.data import labelled_dev
from kdeploy.stages.base import Stage, StageInputs, StageResult, maybe, need


class Distill(Stage):
    name = "distill"
    consumes = (need("teacher_model"), need("dataset"), maybe("unlabeled_text"))
    produces = ("student_model",)
    tools = ("torch", "transformers", "safetensors")

    def enabled(self) -> bool:
        return self.profile.distill.enabled

    def resumable(self) -> bool:
        return True  # checkpoints every epoch in out_dir

    def config(self) -> dict:
        p = self.profile
        return {
            "task": p.task,
            "student": p.student.model_dump(mode="json"),
            "distill": p.distill.model_dump(mode="json"),
        }

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        from kdeploy.train.distill import distill
        from kdeploy.train.finetune import remove_leftovers
        from kdeploy.train.layers import select_layers

        p = self.profile
        info = self.inspect(inputs["teacher_model"])
        keep = select_layers(info.num_layers, p.student.layers, p.student.strategy, p.student.keep)
        items = self.training_items(inputs, info.kind)
        dev = labelled_dev(inputs["dataset"]) if p.distill.select_best else None
        self.log(
            f"student keeps teacher layers {keep} of {info.num_layers}; "
            f"{len(items)} distinct training texts"
            + (f"; best epoch chosen on dev ({len(dev)} examples)" if dev is not None else "")
        )
        outcome = distill(
            info,
            p.distill,
            keep,
            items,
            out_dir,
            dev=dev,
            hidden_size=p.student.hidden_size,
            intermediate_size=p.student.ffn_width(info.intermediate_size),
            allow_pickle=self.options.allow_pickle,
            progress=self.options.progress,
            log=self.log,
        )
        remove_leftovers(out_dir)
        return StageResult(
            outputs={"student_model": outcome.student_dir}, metrics=outcome.metrics()
        )
