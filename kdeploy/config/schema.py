"""The profile schema: pydantic models and presets only (ModelOpt's ``config.py`` shape).

A profile is data: one YAML per deployment target. This module holds the target and the
recipe (student, distill, sparsify, quantize) and the Profile itself; the sections that
export, measure and package the result (export, bench, verify, package) live in
``sections.py``. The cross-field rules live in ``rules.py`` (one small function each, run by
one validator per model); reading YAML, ``extends:``, ``--set`` and file:line errors live in
``loader.py``; the typed per-method configs the quantize and sparsify handlers receive live
in ``methods.py``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from kdeploy.config import rules
from kdeploy.config.methods import (
    QUANTIZE_METHODS,
    SPARSIFY_METHODS,
    TORCH_QUANTIZE,
    FineTune,
    QuantizeMethod,
    SparsifyMethod,
    method_config,
)
from kdeploy.config.methods import Strict as _Strict
from kdeploy.config.sections import (
    BenchConfig,
    ExportConfig,
    OpenVinoConfig,
    PackageConfig,
    VerifyConfig,
)

Device = Literal["cpu", "a100", "h100", "t4", "orin"]


class Target(_Strict):
    """Where the model will run."""

    device: Device = Field(description="Device class the artifacts are built and checked for.")
    runtime: Literal["ort", "trt", "openvino"] = Field(
        description="ort = ONNX Runtime, trt = TensorRT engine (GPU devices only), "
        "openvino = OpenVINO (CPU only, kdeploy[openvino])."
    )
    engines: list[Literal["ort", "openvino"]] | None = Field(
        default=None,
        description="CPU targets: the engines the run makes a model for; bench measures "
        "each on the profile's workload, verify checks each against the budgets, and the "
        "fastest that meets them is deployed (default: [runtime]).",
    )
    openvino: OpenVinoConfig = Field(
        default_factory=lambda: OpenVinoConfig(),
        description="How OpenVINO makes and runs its model (engine openvino).",
    )
    precision: Literal["fp32", "fp16", "int8", "fp8"] = "int8"
    threads: int | None = Field(
        default=None, ge=1, le=256, description="ONNX Runtime intra-op threads (CPU)."
    )
    dla_core: int | None = Field(default=None, ge=0, le=1, description="Orin DLA core.")
    gpu_fallback: bool = Field(
        default=True, description="With dla_core: run layers the DLA cannot run on the GPU."
    )
    workspace_mb: int = Field(
        default=4096, ge=16, le=1 << 20, description="TensorRT builder workspace limit (MiB)."
    )
    builder_optimization_level: int = Field(
        default=3, ge=0, le=5, description="TensorRT builder optimization level (3 = default)."
    )
    timing_cache: str | None = Field(
        default="~/.cache/kdeploy/trt-timing",
        description="Directory of persistent TensorRT timing caches, one file per device and "
        "TensorRT version (null: only the run's own cache).",
    )
    ort_providers: list[Literal["tensorrt", "cuda", "cpu"]] | None = Field(
        default=None,
        description="ONNX Runtime execution providers for the ONNX models, in priority order "
        "(default: cpu on the CPU, cuda on GPUs).",
    )

    @model_validator(mode="after")
    def _rules(self) -> Target:
        return rules.check(self, rules.TARGET)

    def engine_list(self) -> list[str]:
        """The engines the run makes a model for (``engines``, else the runtime alone)."""
        return list(self.engines) if self.engines else [self.runtime]

    def providers(self) -> list[str]:
        """ONNX Runtime providers for this target (the default filled in)."""
        if self.ort_providers:
            return list(self.ort_providers)
        return ["cuda"] if self.device != "cpu" else ["cpu"]


class StudentConfig(_Strict):
    """How the student is cut out of the teacher (weights are inherited)."""

    layers: int = Field(ge=1, le=48, description="Transformer layers the student keeps.")
    strategy: Literal["uniform", "top", "bottom", "explicit"] = Field(
        default="uniform",
        description="uniform: spread over the teacher; bottom: first k; top: last k; "
        "explicit: the indices in 'keep'.",
    )
    keep: list[int] | None = Field(default=None, description="Teacher layer indices (explicit).")
    hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=16384,
        description="Student hidden width (None = the teacher's). Whole attention heads are "
        "kept (head width unchanged), so it must be a multiple of the teacher's head width "
        "and at most the teacher's hidden size; the inherited weights are sliced to the most "
        "important hidden dims and heads.",
    )
    intermediate_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Student feed-forward width (None = the teacher's), at most the "
        "teacher's; each layer keeps the FFN neurons that write the most into the residual "
        "stream on calibration text (mean activation x output-weight norm).",
    )

    intermediate_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Student feed-forward width as a fraction of the teacher's (rounded to a "
        "multiple of 64 for teachers of 256 or more), so one profile fits teachers of any "
        "width; exclusive with intermediate_size.",
    )

    def ffn_width(self, teacher_ffn: int) -> int | None:
        """The student's feed-forward width for this teacher (None = the teacher's)."""
        if self.intermediate_fraction is None:
            return self.intermediate_size
        step = 64 if teacher_ffn >= 256 else 1  # GEMM-friendly widths on real models
        width = round(teacher_ffn * self.intermediate_fraction / step) * step
        return min(teacher_ffn, max(width, step))

    @model_validator(mode="after")
    def _rules(self) -> StudentConfig:
        return rules.check(self, rules.STUDENT)


class LossWeights(_Strict):
    """Weights of the distillation losses; 0 switches a loss off.

    Losses that do not apply to the teacher's kind are ignored (embedding_* for embedding
    teachers, logit_kd and hard_label for classifiers; hidden_mse and attention_kl for both).
    """

    embedding_mse: float = Field(default=1.0, ge=0, description="MSE of pooled embeddings.")
    embedding_cosine: float = Field(default=0.0, ge=0, description="1 - cosine of embeddings.")
    similarity_mse: float = Field(
        default=0.0,
        ge=0,
        description="MSE between the student's and the teacher's in-batch cosine-similarity "
        "matrices (the structure a vector index sees; embedding teachers).",
    )
    contrastive: float = Field(
        default=0.0,
        ge=0,
        description="InfoNCE against the teacher's embeddings: each student embedding must be "
        "closest to its own teacher embedding among the batch's (contrastive pruning, "
        "Xu et al. 2021; embedding teachers).",
    )
    logit_kd: float = Field(
        default=1.0, ge=0, description="KL of softened class distributions (Hinton et al.)."
    )
    hard_label: float = Field(
        default=0.0, ge=0, description="Cross-entropy with gold labels (train rows only)."
    )
    hidden_mse: float = Field(
        default=0.0,
        ge=0,
        description="MSE between student layer i and teacher layer layer_map[i] hidden states "
        "(a learned projection when widths differ).",
    )
    attention_kl: float = Field(
        default=0.0,
        ge=0,
        description="KL between student and teacher attention probabilities (per layer map).",
    )

    @model_validator(mode="after")
    def _rules(self) -> LossWeights:
        return rules.check(self, rules.LOSSES)

    def uses_embedding(self) -> bool:
        """An embedding loss is on (it compares pooled vectors of both models)."""
        return any(
            w > 0
            for w in (self.embedding_mse, self.embedding_cosine, self.similarity_mse,
                      self.contrastive)
        )  # fmt: skip

    def needs_teacher_online(self) -> bool:
        """Token-level losses need the teacher's inner states for every batch."""
        return self.hidden_mse > 0 or self.attention_kl > 0


class DistillConfig(_Strict):
    enabled: bool = True
    epochs: float = Field(default=3, ge=0, le=1000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-4, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_seq_length: int = Field(default=128, ge=8, le=8192)
    max_train_texts: int | None = Field(
        default=None, ge=1, description="Cap on distinct training texts (None = all)."
    )
    text_sources: list[Literal["task", "unlabeled"]] = Field(
        default=["task", "unlabeled"],
        min_length=1,
        description="Where the distillation texts come from: the --data train split "
        "('task') and/or the --unlabeled texts. [unlabeled] alone keeps the task's own "
        "sentences out of training (a cross-domain run: distil on one corpus, judge on "
        "another). Every training stage (distill, sparsify, QAT) uses the same texts.",
    )
    seed: int = 42
    temperature: float = Field(default=2.0, gt=0, le=100, description="logit_kd temperature.")
    contrastive_temperature: float = Field(
        default=0.05, gt=0, le=10, description="Temperature of the contrastive loss's cosines."
    )
    losses: LossWeights = LossWeights()
    layer_map: list[int] | None = Field(
        default=None,
        description="Teacher layer matched by each student layer in hidden_mse/attention_kl "
        "(None = the layer the student inherited).",
    )
    select_best: bool = Field(
        default=True,
        description="Score the student on the dev split after every epoch and keep the best "
        "epoch (dev only: test is never used for choices).",
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop after this many epochs without a dev gain."
    )

    @model_validator(mode="after")
    def _rules(self) -> DistillConfig:
        return rules.check(self, rules.DISTILL)


# Linear layers that stay dense/unquantized unless a profile says otherwise: heads are small
# and sit right before the metric (BERT's pooler feeds the classifier).
ALWAYS_DENSE = ("*classifier*", "*pooler*")


class SparsifyConfig(_Strict):
    """2:4 semi-structured sparsity of the student's Linear weights (torch, modelopt)."""

    enabled: bool = False
    pattern: Literal["2:4"] = "2:4"
    method: Literal["magnitude", "sparsegpt"] = Field(
        default="magnitude",
        description="How the 2 of every 4 weights are chosen: magnitude, or SparseGPT "
        "(second-order error score from the Hessians of each layer's inputs on calibration "
        "texts, and the weight update that compensates the pruned weights).",
    )
    calibration_texts: int = Field(
        default=512, ge=1, le=100_000, description="Train texts SparseGPT's Hessians see."
    )
    damp: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="SparseGPT's Hessian dampening, as a fraction of its mean diagonal.",
    )
    dense_layers: list[str] = Field(
        default=list(ALWAYS_DENSE),
        description="Module-name globs kept dense (e.g. layers where 2:4 does not pay).",
    )
    min_features: int = Field(
        default=64,
        ge=4,
        description="Linear layers with fewer input or output features stay dense.",
    )
    fine_tune: FineTune = FineTune()

    def method_config(self) -> SparsifyMethod:
        """The typed config of this section's method (what its handler receives)."""
        return method_config(SPARSIFY_METHODS, self)


# the groups of ops a strongly typed graph keeps in FP32 (kdeploy.onnxtools.precision)
KeepFp32 = Literal["layernorm", "softmax", "head"]


class CastBudget(_Strict):
    """How much the FP16 graph may lose against the FP32 one it was cast from, measured on
    CPU (ONNX's reference evaluator runs every op in the graph's types): a graph that loses
    more fails the quantize stage."""

    min_cosine: float = Field(
        default=0.98,
        gt=0,
        le=1,
        description="Lowest cosine between the FP16 graph's outputs and the (fake-quantized) "
        "torch model's, per validation text. FP16 activations ahead of the INT8 quantizers "
        "cost all-MiniLM-L6-v2's 3-layer QAT student 0.5% median, 0.9% worst cosine "
        "(benchmarks/RESULTS.md, issue 20): the task retention is the finer gate.",
    )
    min_retention: float = Field(
        default=0.995,
        gt=0,
        le=2,
        description="The FP16 graph's dev-split task metric over the FP32 graph's.",
    )


class QuantizeConfig(_Strict):
    enabled: bool = True
    method: Literal["dynamic", "static", "ptq", "qat", "fp16"] = Field(
        default="dynamic",
        description="ONNX Runtime post-training: dynamic (INT8 weights, activations "
        "quantized at run time) or static (activations calibrated on the train split). "
        "modelopt, in torch, exported as Q/DQ ONNX: ptq (calibration only) or qat "
        "(calibration, then KD fine-tuning with fake quantization). fp16: no INT8, the "
        "student as an FP16 graph (TensorRT targets with precision fp16).",
    )
    high_precision: Literal["fp16", "fp32"] = Field(
        default="fp16",
        description="TensorRT targets: the type of everything outside the INT8 GEMMs, "
        "written into the Q/DQ graph (strongly typed engines run the graph's types). fp32: "
        "the Q/DQ graph as exported (slower: FP32 between the INT8 GEMMs).",
    )
    keep_fp32: list[KeepFp32] = Field(
        default=["layernorm", "softmax", "head"],
        description="FP16 graphs: the ops kept in FP32 by rule. layernorm: LayerNormalization; "
        "softmax: attention Softmax; head: everything after the encoder's last LayerNorm "
        "(pooling, L2 normalisation, classifier).",
    )
    cast_budget: CastBudget = CastBudget()
    format: Literal["qoperator", "qdq"] = "qoperator"
    per_channel: bool = True
    weight_type: Literal["int8", "uint8"] = "int8"
    activation_type: Literal["int8", "uint8"] = "uint8"
    calibration_texts: int = Field(default=256, ge=1, le=100_000)
    op_types: list[str] | None = Field(
        default=None, description="ONNX op types to quantize (None = the library's default)."
    )
    teacher_baseline: bool = Field(
        default=True,
        description="Also quantize the teacher dynamically, as the baseline users have today.",
    )
    fuse: bool = Field(
        default=False,
        description="dynamic/static: run ONNX Runtime's transformer optimizer (attention, "
        "LayerNorm, GELU fusion) before quantizing. ONNX Runtime contrib ops: runtime ort only.",
    )
    fine_tune: FineTune = Field(
        default=FineTune(epochs=1, learning_rate=2e-5),
        description="QAT schedule (method qat only).",
    )
    keep_float: list[str] = Field(
        default=list(ALWAYS_DENSE),
        description="Module-name globs whose Linear layers stay unquantized (ptq/qat).",
    )

    @model_validator(mode="after")
    def _rules(self) -> QuantizeConfig:
        return rules.check(self, rules.QUANTIZE)

    def method_config(self) -> QuantizeMethod:
        """The typed config of this section's method (what its handler receives)."""
        return method_config(QUANTIZE_METHODS, self)

    @property
    def in_torch(self) -> bool:
        """ptq/qat quantize the torch model (modelopt) before export; dynamic/static the
        exported ONNX model (ONNX Runtime)."""
        return isinstance(self.method_config(), TORCH_QUANTIZE)


class Profile(_Strict):
    """A deployment target and the recipe that gets a model there."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    extends: str | None = None
    target: Target
    task: Literal["auto", "embedding", "classification"] = "auto"
    student: StudentConfig
    distill: DistillConfig = DistillConfig()
    sparsify: SparsifyConfig = SparsifyConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig
    bench: BenchConfig = BenchConfig()
    verify: VerifyConfig = VerifyConfig()
    package: PackageConfig = PackageConfig()

    @model_validator(mode="after")
    def _rules(self) -> Profile:
        return rules.check(self, rules.PROFILE)

    def digest(self) -> str:
        """Hash of the validated content (not of the YAML text): stable across formatting."""
        blob = json.dumps(
            self.model_dump(mode="json", exclude={"description", "extends"}), sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()
