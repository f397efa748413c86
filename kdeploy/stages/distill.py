"""distill: cut a student out of the teacher and train it to imitate the teacher.

Trains on the texts of the train split only (plus an optional --unlabeled file; or on the
unlabeled texts alone, ``distill.text_sources``); dev only picks the best epoch, test is
never seen. ``kd_texts.npy`` keeps a fingerprint of every training text, so that verify
can say which of the texts it evaluates on the student was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.data import item_texts, labelled_dev, text_fingerprints
from kdeploy.stages.base import Stage, StageInputs, StageResult, maybe, need


class Distill(Stage):
    name = "distill"
    consumes = (need("teacher_model"), need("dataset"), maybe("unlabeled_text"))
    produces = ("student_model", "kd_texts")
    tools = ("torch", "transformers", "safetensors")

    def enabled(self) -> bool:
        return self.profile.distill.enabled

    def resumable(self) -> bool:
        return True  # checkpoints every epoch in out_dir

    def distributed(self) -> bool:
        return True

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
        from kdeploy.train.layers import student_layers

        p = self.profile
        info = self.inspect(inputs["teacher_model"])
        keep = student_layers(info, p.student.layers, p.student.strategy, p.student.keep)
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
            cache_dir=self.cache_dir,
        )
        remove_leftovers(out_dir)
        kd_texts = out_dir / "kd_texts.npy"
        np.save(kd_texts, text_fingerprints(item_texts(items)))
        return StageResult(
            outputs={"student_model": outcome.student_dir, "kd_texts": kd_texts},
            metrics={**outcome.metrics(), "text_sources": list(p.distill.text_sources)},
        )
