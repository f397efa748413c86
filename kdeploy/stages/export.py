"""export: teacher and student to ONNX (dynamic batch/sequence), checked and validated.

For embedding models it also derives ``student_hidden/model.onnx`` from the exported
student (the sparse one when sparsify ran): the same graph without pooling and
normalisation, output ``last_hidden_state``, for sentence-transformers' ONNX backend
(``kdeploy.onnxtools.hidden``; the package stage copies it, torch- and onnx-free).
"""

from __future__ import annotations

from pathlib import Path

from kdeploy.data import load_task_data
from kdeploy.model_info import sparse_layers
from kdeploy.stages.base import Stage, StageInputs, StageResult, maybe, need


class Export(Stage):
    name = "export"
    consumes = (
        need("teacher_model", role="teacher"),
        need("student_model", "teacher_model", role="student"),
        maybe("sparse_model", role="sparse"),
        need("dataset"),
    )
    # + sparse_onnx when sparsify ran, + student_hidden_onnx for embedding models
    produces = ("teacher_onnx", "student_onnx")
    tools = (
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "sentence-transformers",
        "onnx",
        "onnxruntime",
    )

    def config(self) -> dict:
        return {"task": self.profile.task, "export": self.profile.export.model_dump(mode="json")}

    def outputs_expected(self) -> tuple[str, ...]:
        return (*self.produces, "student_hidden_onnx") if self.embedding_run else self.produces

    def run(self, inputs: StageInputs, out_dir: Path) -> StageResult:
        texts = load_task_data(inputs["dataset"]).bench_split().texts_a
        texts = texts[: self.profile.export.validation_texts]
        roles = [r for r in ("teacher", "student", "sparse") if r in inputs]
        metrics = {role: self._export(role, inputs[role], out_dir / role, texts) for role in roles}
        outputs = {f"{r}_onnx": out_dir / r for r in roles}
        if self.embedding_run:
            last = roles[-1]  # the fp32 model quantize takes: sparse, else student
            hidden = out_dir / "student_hidden"
            metrics[last]["hidden_state_graph"] = self.hidden_state_graph(
                out_dir / last, hidden, texts
            )
            outputs["student_hidden_onnx"] = hidden
        return StageResult(outputs=outputs, metrics=metrics)

    def _export(self, role: str, src: Path, out: Path, texts: list[str]) -> dict:
        from kdeploy.onnxtools.checks import check_sparse_export
        from kdeploy.train.export import check_onnx, export_onnx, validate_export

        cfg = self.profile.export
        pickle = self.options.allow_pickle
        info = self.inspect(src)
        card_role = "teacher" if role == "teacher" else "student"
        card = export_onnx(info, out, opset=cfg.opset, role=card_role, allow_pickle=pickle)
        onnx_path = out / card.model_file
        check_onnx(onnx_path)
        check = validate_export(
            info, out, texts, atol=cfg.atol, min_cosine=cfg.min_cosine, allow_pickle=pickle
        )
        size = onnx_path.stat().st_size
        self.log(
            f"{role}: {size / 1e6:.1f} MB, max |torch - onnx| {check['max_abs_diff']:.2e}, "
            f"min cosine {check['min_cosine']:.6f}"
        )
        metrics = {"validation": check, "onnx_bytes": size, "layers": info.num_layers}
        if role == "sparse":
            gemms = check_sparse_export(onnx_path, set(sparse_layers(src)))
            metrics["gemms"] = gemms
            self.log(
                f"sparse: {gemms['sparse_2to4']} of {gemms['gemms']} GEMM weights are exactly "
                "2:4 in the ONNX graph"
            )
        return metrics
