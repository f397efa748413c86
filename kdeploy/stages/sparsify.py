"""sparsify: 2:4 masks on the student's eligible Linear weights, then KD fine-tuning with
the masks fixed. Runs after distill (on the teacher itself when distill is off) and before
export and quantize, so every later model of the chain carries the same zeros.

Trains on the train split only (plus --unlabeled); dev only picks the best epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdeploy.core.errors import StageError
from kdeploy.data import calibration_texts
from kdeploy.model_info import SPARSITY_FILE, ModelInfo
from kdeploy.stages.base import Stage, StageInputs, StageResult, maybe, need


class Sparsify(Stage):
    name = "sparsify"
    consumes = (
        need("student_model", "teacher_model", role="student"),
        need("teacher_model"),
        need("dataset"),
        maybe("unlabeled_text"),
    )
    produces = ("sparse_model",)
    tools = ("torch", "transformers", "safetensors", "nvidia-modelopt")

    def enabled(self) -> bool:
        return self.profile.sparsify.enabled

    def resumable(self) -> bool:
        return True  # masks and fine-tuning checkpoints are kept in out_dir

    def distributed(self) -> bool:
        return self.profile.sparsify.fine_tune.epochs > 0  # the KD fine-tuning

    def config(self) -> dict:
        p = self.profile
        return {
            "task": p.task,
            "student": p.student.model_dump(mode="json"),
            "sparsify": p.sparsify.model_dump(mode="json"),
            "distill": p.distill.model_dump(mode="json"),  # losses, batch, seed
        }

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        import torch

        from kdeploy.train.finetune import remove_leftovers
        from kdeploy.train.loading import load_hf_model, load_tokenizer, pick_device
        from kdeploy.train.model_dir import save_model_dir
        from kdeploy.train.sparsify import (
            MASKS_FILE,
            apply_masks,
            check_masks,
            choose_layers,
            sparsity_report,
        )

        p = self.profile
        self.inspect(inputs["teacher_model"])  # the teacher checked before the student loads
        s_info = self.inspect(inputs["student"])
        torch.manual_seed(p.distill.seed)
        student = load_hf_model(s_info, allow_pickle=self.options.allow_pickle)
        layers = choose_layers(student, p.sparsify)
        if not any(x.sparse for x in layers):
            raise StageError(
                "sparsify: no Linear layer of the student is eligible for 2:4 masks",
                where="sparsify.dense_layers / sparsify.min_features",
                fix="loosen sparsify.dense_layers or min_features, or set sparsify.enabled: false",
            )
        masks = self._masks(student, s_info, layers, inputs, out_dir / MASKS_FILE)
        record = self.kd_fine_tune(
            student,
            inputs,
            student_source="student",
            fine_tune=p.sparsify.fine_tune,
            masks=masks,
            work_dir=out_dir,
            label="sparse fine-tune",
        )
        student.to(pick_device())
        apply_masks(student, masks)  # the best epoch's weights were saved masked; make sure
        bad = check_masks(student.cpu(), masks)
        if bad:
            raise StageError(
                f"sparsify: {len(bad)} layer(s) are not 2:4 after fine-tuning: "
                f"{', '.join(bad[:3])}",
                fix="a kdeploy bug: please report it",
            )
        tok = load_tokenizer(s_info.path)
        out = save_model_dir(student.cpu(), s_info, tok, out_dir / "student")
        report = sparsity_report(layers, masks, p.sparsify)
        (out / SPARSITY_FILE).write_text(json.dumps(report, indent=1))
        remove_leftovers(out_dir, MASKS_FILE)
        self.log(
            f"2:4 on {report['sparse_layers']}/{len(layers)} Linear layers, "
            f"{100 * report['linear_weights_zero_fraction']:.1f}% of Linear weights zero"
        )
        metrics = {k: v for k, v in report.items() if k != "layers"}
        metrics["fine_tune"] = record
        return StageResult(outputs={"sparse_model": out}, metrics=metrics)

    def _masks(self, student, s_info: ModelInfo, layers, inputs: StageInputs, mask_path: Path):
        """The 2:4 masks (and masked weights), loaded into the student: the ones chosen
        before an interruption, else found by the profile's method and saved first."""
        import torch

        from kdeploy.train.batching import tokenized_batches
        from kdeploy.train.loading import load_tokenizer
        from kdeploy.train.sparsify import (
            apply_masks,
            compute_masks,
            load_masks,
            load_weights,
            needs_calibration,
            save_masks,
        )

        p = self.profile
        if mask_path.is_file():  # resuming: the masks chosen before the interruption
            masks, weights = load_masks(mask_path)
            self.log(f"reusing the 2:4 masks of {len(masks)} layers")
        else:
            batches = None
            if needs_calibration(p.sparsify):
                texts = calibration_texts(
                    inputs["dataset"], p.sparsify.calibration_texts, p.distill.seed
                )
                max_len = min(p.distill.max_seq_length, s_info.max_seq_length)
                tok = load_tokenizer(s_info.path)
                batches = tokenized_batches(tok, texts, max_len, 16, torch.device("cpu"))
            masks, weights = compute_masks(student, layers, p.sparsify, batches)
            save_masks(mask_path, masks, weights)
            self.log(
                f"2:4 masks ({p.sparsify.method}) on {len(masks)} of {len(layers)} Linear layers"
            )
        load_weights(student, weights)
        apply_masks(student, masks)
        return masks
