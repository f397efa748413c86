"""quantize: the INT8 student, and optionally the teacher quantized as optimum users do it
today (the baseline).

The profile's method config picks the handler (``QUANTIZERS``, keyed by config type):

- ``dynamic`` / ``static``: ONNX Runtime's post-training quantizer on the exported ONNX
  student (the sparse one when sparsify ran), static calibrated on train-split texts.
- ``ptq`` / ``qat``: modelopt in torch on the student (sparse or distilled): calibration,
  then for qat KD fine-tuning through the fake quantizers (2:4 masks kept), exported as a
  Q/DQ ONNX graph, checked against the fake-quantized torch model.

Every Q/DQ graph is linted against TensorRT's explicit-quantization rules
(``kdeploy.onnxtools.qdq_lint``): a finding fails the stage for TensorRT targets and is
reported for ONNX Runtime ones. When the student is 2:4 sparse, the INT8 graph must still
be exactly 2:4.

For embedding models, ``student_hidden/model.onnx`` is the INT8 student cut at its token
outputs (``last_hidden_state``, no pooling): the very quantized nodes verify measures, for
sentence-transformers' ONNX backend (the package stage copies it).

TensorRT targets build strongly typed engines (TensorRT 10.12+ / 11.x): the precision is the
graph's. With ``quantize.high_precision: fp16`` (the default) or ``method: fp16`` the stage
casts the graph to FP16 (modelopt AutoCast) except the ``quantize.keep_fp32`` ops
(``kdeploy.onnxtools.precision``), keeps the FP32 graph in ``student_fp32/``, lints the
result with the strongly typed rules and runs it on CPU with ONNX's reference evaluator
against the torch model and on the dev split (``kdeploy.evaluation.cast_check``): a graph
that loses more than ``quantize.cast_budget`` fails the stage.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdeploy.config.methods import DynamicQuant, Fp16Graph, PtqQuant, QatQuant, StaticQuant
from kdeploy.core.errors import ExportError
from kdeploy.data import calibration_texts, labelled_dev, load_task_data
from kdeploy.model_info import sparse_layers
from kdeploy.runtime.card import ModelCard
from kdeploy.stages.base import Stage, StageInputs, StageResult, maybe, need


class Quantize(Stage):
    name = "quantize"
    consumes = (
        need("sparse_onnx", "student_onnx", role="student_onnx"),
        need("teacher_onnx"),
        need("dataset"),
        need("sparse_model", "student_model", "teacher_model", role="student_model"),
        need("teacher_model"),
        maybe("unlabeled_text"),
    )
    # + teacher_int8 with quantize.teacher_baseline, + student_hidden_int8 for embedding models,
    # + student_openvino when the profile's engines include openvino
    produces = ("student_int8",)
    tools = (
        "onnx",
        "onnxruntime",
        "optimum",
        "optimum-onnx",
        "torch",
        "nvidia-modelopt",
        "openvino",
        "nncf",
    )

    def enabled(self) -> bool:
        return self.profile.quantize.enabled

    def outputs_expected(self) -> tuple[str, ...]:
        out = (*self.produces, "student_hidden_int8") if self.embedding_run else self.produces
        return (*out, "student_openvino") if self.makes_openvino else out

    @property
    def makes_openvino(self) -> bool:
        """The profile's engines include OpenVINO: the stage also leaves its INT8 model."""
        return "openvino" in self.profile.target.engine_list()

    def resumable(self) -> bool:
        """QAT checkpoints every epoch and resumes there; the other methods start over."""
        return isinstance(self.profile.quantize.method_config(), QatQuant)

    def distributed(self) -> bool:
        """QAT's KD fine-tuning; the other methods (and the export) run on rank 0."""
        method = self.profile.quantize.method_config()
        return isinstance(method, QatQuant) and method.fine_tune.epochs > 0

    def config(self) -> dict:
        p = self.profile
        cfg = {"quantize": p.quantize.model_dump(mode="json"), "seed": p.distill.seed}
        if p.quantize.in_torch:  # the QAT recipe reuses distillation's losses and batch
            cfg["distill"] = p.distill.model_dump(mode="json")
            cfg["export"] = p.export.model_dump(mode="json")
            cfg["task"] = p.task
        if self.makes_openvino:
            cfg["openvino"] = {
                "int8": p.target.openvino.int8,
                "calibration_texts": p.quantize.calibration_texts,
                "validation_texts": p.export.validation_texts,
            }
        return cfg

    def calibration_texts(self, inputs: StageInputs) -> list[str]:
        """A seeded sample of train-split texts (never dev/test); none for dynamic."""
        q = self.profile.quantize
        if isinstance(q.method_config(), DynamicQuant):
            return []
        return calibration_texts(inputs["dataset"], q.calibration_texts, self.profile.distill.seed)

    def casts_to_fp16(self) -> bool:
        """Is the graph written in FP16 for a strongly typed TensorRT engine?"""
        q, t = self.profile.quantize, self.profile.target
        if t.runtime != "trt":
            return False
        return q.method == "fp16" or (q.format == "qdq" and q.high_precision == "fp16")

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        cfg = self.profile.quantize
        out = out_dir / "student"
        method = cfg.method_config()
        # (texts, outputs) of the model the graph was made from, set by the handler
        self.reference: tuple[list[str], np.ndarray] | None = None
        student = QUANTIZERS[type(method)](self, method, inputs, out)
        metrics: dict = {"student": student}
        outputs = {"student_int8": out}
        if self.embedding_run:  # cut from the FP32 graph: ONNX Runtime runs it on CPU
            hidden = out_dir / "student_hidden"
            texts = load_task_data(inputs["dataset"]).bench_split().texts_a
            texts = texts[: self.profile.export.validation_texts]
            metrics["student_hidden"] = self.hidden_state_graph(out, hidden, texts)
            outputs["student_hidden_int8"] = hidden
        if self.casts_to_fp16():
            metrics["fp16"] = self.cast_fp16(out, out_dir / "student_fp32")
        if cfg.format == "qdq" or self.casts_to_fp16():
            metrics["qdq_lint"] = self.lint(out / "model.onnx")
        if inputs.source("student_onnx") == "sparse_onnx":
            from kdeploy.onnxtools.checks import check_sparsity_kept

            metrics["sparsity"] = check_sparsity_kept(
                inputs["student_onnx"] / "model.onnx", out / "model.onnx"
            )
        if self.casts_to_fp16():
            metrics["fp16_check"] = self.check_fp16(inputs, out, out_dir / "student_fp32")
        self.log(f"student {cfg.method}: {student['bytes_after'] / 1e6:.1f} MB")
        if self.makes_openvino:
            metrics["openvino"] = self.openvino_model(inputs, out, out_dir / "openvino")
            outputs["student_openvino"] = out_dir / "openvino"
        if cfg.teacher_baseline:
            from kdeploy.train.quantize import quantize_with_optimum

            tout = out_dir / "teacher"
            if tout.exists():
                shutil.rmtree(tout)
            metrics["teacher"] = quantize_with_optimum(inputs["teacher_onnx"], tout)
            outputs["teacher_int8"] = tout
            self.log(f"teacher INT8 baseline ({metrics['teacher']['config']})")
        return StageResult(outputs=outputs, metrics=metrics)

    def openvino_model(self, inputs: StageInputs, int8_dir: Path, out: Path) -> dict:
        """The student for the OpenVINO engine: NNCF INT8 of the fp32 (or 2:4) ONNX student,
        calibrated on train-split texts, or OpenVINO reading this stage's Q/DQ graph."""
        from kdeploy.train.openvino_int8 import openvino_int8

        p = self.profile
        texts = calibration_texts(inputs["dataset"], p.quantize.calibration_texts, p.distill.seed)
        val = load_task_data(inputs["dataset"]).bench_split().texts_a[: p.export.validation_texts]
        method = p.target.openvino.int8
        record = openvino_int8(
            inputs["student_onnx"],
            out,
            method=method,
            calibration_texts=texts,
            validation_texts=val,
            qdq_onnx=int8_dir / "model.onnx" if method == "qdq" else None,
            threads=p.target.threads,
        )
        self.log(
            f"OpenVINO INT8 ({method}): {record.fake_quantize_nodes} FakeQuantize nodes, "
            f"{record.bytes_after / 1e6:.1f} MB; vs the fp32 ONNX: min cosine "
            f"{record.min_cosine:.4f}, centred {record.mean_centred_cosine:.4f}"
        )
        return record.to_json()

    def cast_fp16(self, out: Path, fp32_dir: Path) -> dict:
        """The graph in ``out`` rewritten FP16 but for the keep_fp32 ops; the FP32 one is
        kept, as a model dir, in ``fp32_dir``."""
        from kdeploy.evaluation.cast_check import gemm_share
        from kdeploy.onnxtools.precision import cast_fp16

        if fp32_dir.exists():
            shutil.rmtree(fp32_dir)
        shutil.copytree(out, fp32_dir)
        card = ModelCard.load(out)
        keep = self.profile.quantize.keep_fp32
        result = cast_fp16(fp32_dir / card.model_file, out / card.model_file, keep)
        card.extra = {**card.extra, "graph_precision": "fp16", "keep_fp32": list(keep)}
        card.save(out)
        kept = sum(len(v) for v in result.fp32_nodes.values())
        self.log(
            f"FP16 graph (modelopt AutoCast): {result.fp16_nodes} of {result.nodes} nodes FP16, "
            f"{kept} kept FP32 by rule ({', '.join(keep) or 'none'}), "
            f"{result.casts} Casts, opset {result.opset}"
        )
        share = gemm_share(out / card.model_file)
        self.log(
            "GEMM FLOPs at batch 1 x 128 tokens: "
            + ", ".join(f"{k.upper()} {v:.1%}" for k, v in share.share.items())
        )
        return {**result.to_json(), "gemm_share": share.to_json()}

    def check_fp16(self, inputs: StageInputs, out: Path, fp32_dir: Path) -> dict:
        """The FP16 graph on CPU (reference evaluator) vs its source model on real texts and
        vs the FP32 graph on the dev split; fails the stage past quantize.cast_budget."""
        from kdeploy.evaluation.cast_check import check_cast
        from kdeploy.evaluation.verify import eval_plan

        p = self.profile
        if self.reference is None:  # ONNX Runtime's static Q/DQ: the FP32 graph is the source
            from kdeploy.runtime.model import open_model

            texts = load_task_data(inputs["dataset"]).bench_split().texts_a
            texts = texts[: p.export.validation_texts]
            with open_model(fp32_dir) as m:
                self.reference = (texts, m.outputs(texts))
        texts, ref = self.reference
        # the dev split (the and QAT's selection split); verify's split without one
        split = labelled_dev(inputs["dataset"]) or load_task_data(
            inputs["dataset"], need_train=False
        ).eval_split(p.verify.eval_split)
        n, batch_size = eval_plan(p.verify, split)
        budget = p.quantize.cast_budget
        check = check_cast(
            out,
            fp32_dir,
            texts,
            ref,
            split,
            limit=n,
            batch_size=batch_size,
            min_cosine=budget.min_cosine,
            min_retention=budget.min_retention,
            threads=p.target.threads,
        )
        self.log(
            f"FP16 graph on CPU (ONNX reference evaluator): min cosine {check.min_cosine:.5f} "
            f"vs the torch model on {check.texts} texts; {check.metric} {check.fp16_value:.2f} "
            f"vs {check.fp32_value:.2f} (FP32 graph) on {check.split}, retention "
            f"{check.retention:.4f}"
        )
        return check.to_json()

    def lint(self, onnx_path: Path) -> dict:
        """TensorRT's explicit-quantization rules, and for FP16 graphs the strongly typed
        ones (no FP32 islands between INT8 GEMMs): fatal for TensorRT targets."""
        from kdeploy.onnxtools.qdq_lint import (
            RULES,
            findings_json,
            fp32_kept,
            lint_qdq,
            summary,
        )

        keep = self.profile.quantize.keep_fp32
        findings = lint_qdq(onnx_path, keep_fp32=keep)
        self.log(f"Q/DQ lint (TensorRT rules): {summary(findings)}")
        if findings and self.profile.target.runtime == "trt":
            broken = {f.rule for f in findings}
            shown = "; ".join(f"[{f.rule}] {f.node}: {f.message}" for f in findings[:4])
            raise ExportError(
                f"the Q/DQ graph breaks {len(findings)} TensorRT explicit-quantization rule(s): "
                f"{shown}",
                where=str(onnx_path),
                fix="quantize with method qat/ptq (modelopt places Q/DQ on GEMM inputs only), "
                "or for static set quantize.op_types: [MatMul]; rules: "
                + "; ".join(f"{k}: {v[0]}" for k, v in RULES.items() if k in broken),
            )
        kept = fp32_kept(onnx_path, keep)
        if kept:
            self.log(f"kept FP32 by rule: {', '.join(f'{k}: {len(v)}' for k, v in kept.items())}")
        return {
            "findings": findings_json(findings),
            "summary": summary(findings),
            "fp32_kept": kept,
        }

    # ------------------------------------------------------------------ the handlers

    def onnx_runtime_ptq(
        self, method: DynamicQuant | StaticQuant, inputs: StageInputs, out: Path
    ) -> dict:
        """ONNX Runtime's quantizer on the exported ONNX student."""
        from kdeploy.train.quantize import quantize_student

        if out.exists():  # a stopped earlier attempt
            shutil.rmtree(out)
        texts = self.calibration_texts(inputs)
        return quantize_student(inputs["student_onnx"], out, self.profile.quantize, texts)

    def modelopt_int8(self, method: PtqQuant | QatQuant, inputs: StageInputs, out: Path) -> dict:
        """modelopt fake quantizers in torch (calibrated; fine-tuned for qat), exported as
        a Q/DQ ONNX graph and validated against the fake-quantized torch model."""
        import torch

        from kdeploy.train.batching import forward_loop, tokenized_batches
        from kdeploy.train.finetune import remove_leftovers
        from kdeploy.train.loading import load_hf_model, load_tokenizer
        from kdeploy.train.qat import export_qdq, quantize_model, sparse_masks

        p = self.profile
        src = inputs["student_model"]
        s_info = self.inspect(src)
        torch.manual_seed(p.distill.seed)
        student = load_hf_model(s_info, allow_pickle=self.options.allow_pickle)
        # QAT must not undo the zeros: the same masks again
        masks = None
        if inputs.source("student_model") == "sparse_model":
            masks = sparse_masks(student, sparse_layers(src))
        max_len = min(p.distill.max_seq_length, s_info.max_seq_length)
        texts = self.calibration_texts(inputs)
        calib = tokenized_batches(
            load_tokenizer(s_info.path), texts, max_len, 16, torch.device("cpu")
        )
        placed = quantize_model(student, method, forward_loop(calib))
        self.log(
            f"modelopt INT8 fake quantizers on {len(placed['quantized'])} Linear layers "
            f"(float: {', '.join(placed['float']) or 'none'}), calibrated on {len(calib)} batches"
        )
        record: dict = {"steps": 0}
        if isinstance(method, QatQuant):
            record = self.kd_fine_tune(
                student,
                inputs,
                student_source="student_model",
                fine_tune=method.fine_tune,
                masks=masks,
                work_dir=out.parent,
                label="QAT",
            )
        val_texts = load_task_data(inputs["dataset"]).bench_split().texts_a
        val_texts = val_texts[: p.export.validation_texts]
        check, reference = export_qdq(
            student,
            s_info,
            src,
            out,
            opset=p.export.opset,
            quantized=placed["quantized"],
            texts=val_texts,
            atol=p.export.qdq_atol,
            min_cosine=p.export.qdq_min_cosine,
        )
        self.reference = (val_texts, reference)
        remove_leftovers(out.parent)
        self.log(
            f"Q/DQ export vs fake-quantized torch: max |diff| {check['max_abs_diff']:.2e}, "
            f"min cosine {check['min_cosine']:.5f}"
        )
        return modelopt_record(method, len(texts), placed, record, check, inputs, out)

    def fp16_graph(self, method: Fp16Graph, inputs: StageInputs, out: Path) -> dict:
        """No INT8: the exported FP32 student, cast to FP16 afterwards (``cast_fp16``) and
        checked against the torch student it was exported from."""
        from kdeploy.train.export import torch_outputs

        src = inputs["student_onnx"]
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
        card = ModelCard.load(out)
        card.precision = "fp16"
        card.save(out)
        texts = load_task_data(inputs["dataset"]).bench_split().texts_a
        texts = texts[: self.profile.export.validation_texts]
        info = self.inspect(inputs["student_model"])
        self.reference = (texts, torch_outputs(info, texts, self.options.allow_pickle))
        size = (out / card.model_file).stat().st_size
        return {"method": "fp16", "tool": "modelopt", "bytes_before": size, "bytes_after": size}


def modelopt_record(
    method: PtqQuant | QatQuant,
    calibration_texts: int,
    placed: dict,
    fine_tune: dict,
    validation: dict,
    inputs: StageInputs,
    out: Path,
) -> dict:
    """What the report says about a modelopt INT8 student (the stage's metrics)."""
    return {
        "method": method.method,
        "tool": "modelopt",
        "format": "qdq",
        "per_channel": method.per_channel,
        "weight_type": "int8",
        "activation_type": "int8",
        "calibration_texts": calibration_texts,
        "quantized_layers": placed["quantized"],
        "float_layers": placed["float"],
        "fine_tune": fine_tune,
        "validation": validation,
        "bytes_before": (inputs["student_onnx"] / "model.onnx").stat().st_size,
        "bytes_after": (out / "model.onnx").stat().st_size,
    }


# quantize method config type -> the handler that makes the INT8 student
QUANTIZERS: dict[type, Callable[[Quantize, object, StageInputs, Path], dict]] = {
    DynamicQuant: Quantize.onnx_runtime_ptq,
    StaticQuant: Quantize.onnx_runtime_ptq,
    PtqQuant: Quantize.modelopt_int8,
    QatQuant: Quantize.modelopt_int8,
    Fp16Graph: Quantize.fp16_graph,
}
