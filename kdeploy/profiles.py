"""Profiles: one YAML per deployment target, validated in one place.

A profile is data. ``load_profile`` reads a YAML file (following ``extends:`` chains and
``--set key=value`` overrides), validates the merged result with the pydantic models below
and reports every problem with the file and line it comes from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kdeploy.errors import ProfileError

# --------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Device = Literal["cpu", "a100", "h100", "t4", "orin"]


class Target(_Strict):
    """Where the model will run."""

    device: Device = Field(description="Device class the artifacts are built and checked for.")
    runtime: Literal["ort", "trt"] = Field(
        description="ort = ONNX Runtime, trt = TensorRT engine (GPU devices only)."
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
    def _runtime_fits_device(self) -> Target:
        from kdeploy.devices import caps, target_problems

        if self.runtime == "trt" and self.device == "cpu":
            raise ValueError("runtime 'trt' needs a GPU device; use runtime 'ort' for cpu")
        problems = target_problems(
            self.device, self.precision, self.dla_core, sparsify=False, runtime=self.runtime
        )
        if problems:
            raise ValueError("; ".join(problems))
        gpu_eps = {"tensorrt", "cuda"} & set(self.ort_providers or ())
        if gpu_eps and not caps(self.device).gpu:
            raise ValueError(f"ort_providers {sorted(gpu_eps)} need a GPU device, not cpu")
        return self

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
        "teacher's; each layer keeps its FFN neurons with the largest weight norms.",
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
    def _keep_matches(self) -> StudentConfig:
        if self.intermediate_fraction is not None and self.intermediate_size is not None:
            raise ValueError(
                "set intermediate_size or intermediate_fraction, not both (a fixed width over "
                "a profile that sets a fraction: add --set student.intermediate_fraction=null)"
            )
        if self.strategy == "explicit":
            if not self.keep:
                raise ValueError("strategy 'explicit' needs a 'keep' list of layer indices")
            if len(self.keep) != self.layers:
                raise ValueError(f"'keep' lists {len(self.keep)} layers but layers={self.layers}")
            if len(set(self.keep)) != len(self.keep) or any(i < 0 for i in self.keep):
                raise ValueError("'keep' must hold distinct non-negative layer indices")
        elif self.keep is not None:
            raise ValueError("'keep' is only used with strategy 'explicit'")
        return self


class LossWeights(_Strict):
    """Weights of the distillation losses; 0 switches a loss off.

    Losses that do not apply to the teacher's kind are ignored (embedding_* for embedding
    teachers, logit_kd and hard_label for classifiers; hidden_mse and attention_kl for both).
    """

    embedding_mse: float = Field(default=1.0, ge=0, description="MSE of pooled embeddings.")
    embedding_cosine: float = Field(default=0.0, ge=0, description="1 - cosine of embeddings.")
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
    def _something_on(self) -> LossWeights:
        if not any(v > 0 for v in self.model_dump().values()):
            raise ValueError("at least one distillation loss needs a weight > 0")
        return self

    def uses_embedding(self) -> bool:
        """An embedding loss is on (it compares pooled vectors of both models)."""
        return self.embedding_mse > 0 or self.embedding_cosine > 0

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
    seed: int = 42
    temperature: float = Field(default=2.0, gt=0, le=100, description="logit_kd temperature.")
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
    def _stopping_needs_scores(self) -> DistillConfig:
        if self.early_stopping_patience is not None and not self.select_best:
            raise ValueError("early_stopping_patience needs select_best: true (dev scores)")
        return self


class FineTune(_Strict):
    """KD fine-tuning after a structural change (2:4 masks, fake quantization).

    Everything not set here (losses, temperature, batch size, sequence length, seed) is
    taken from ``distill``: the same teacher targets and losses, a shorter schedule.
    """

    epochs: float = Field(default=1, ge=0, le=1000, description="0 = no fine-tuning.")
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    select_best: bool = Field(
        default=True, description="Keep the epoch with the best dev score (dev only)."
    )


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


class QuantizeConfig(_Strict):
    enabled: bool = True
    method: Literal["dynamic", "static", "ptq", "qat"] = Field(
        default="dynamic",
        description="ONNX Runtime post-training: dynamic (INT8 weights, activations "
        "quantized at run time) or static (activations calibrated on the train split). "
        "modelopt, in torch, exported as Q/DQ ONNX: ptq (calibration only) or qat "
        "(calibration, then KD fine-tuning with fake quantization).",
    )
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
    def _modelopt_is_symmetric_qdq(self) -> QuantizeConfig:
        if self.method in ("ptq", "qat"):
            wrong = [
                f"{k}: {v}"
                for k, v in (
                    ("format", self.format),
                    ("weight_type", self.weight_type),
                    ("activation_type", self.activation_type),
                )
                if v != ("qdq" if k == "format" else "int8")
            ]
            if wrong:
                raise ValueError(
                    f"quantize.method {self.method} writes symmetric int8 Q/DQ (modelopt); "
                    f"set quantize.format: qdq, weight_type: int8, activation_type: int8 "
                    f"(not {', '.join(wrong)})"
                )
        return self

    @model_validator(mode="after")
    def _fuse_is_for_ort(self) -> QuantizeConfig:
        if self.fuse and self.method in ("ptq", "qat"):
            raise ValueError("quantize.fuse applies to ONNX Runtime's dynamic/static methods")
        return self

    @property
    def in_torch(self) -> bool:
        """ptq/qat quantize the torch model (modelopt) before export; dynamic/static the
        exported ONNX model (ONNX Runtime)."""
        return self.method in ("ptq", "qat")


class MinOptMax(_Strict):
    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> MinOptMax:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


class ExportShapes(_Strict):
    batch: MinOptMax
    sequence: MinOptMax


class ExportConfig(_Strict):
    opset: int = Field(default=18, ge=13, le=23)
    shapes: ExportShapes
    atol: float = Field(default=1e-4, gt=0, description="Max abs diff torch vs ONNX.")
    min_cosine: float = Field(default=0.9999, gt=0, le=1)
    qdq_atol: float = Field(
        default=0.05, gt=0, description="Max abs diff fake-quantized torch vs Q/DQ ONNX."
    )
    qdq_min_cosine: float = Field(default=0.995, gt=0, le=1)
    validation_texts: int = Field(default=64, ge=1)


class BenchConfig(_Strict):
    batch_sizes: list[int] = Field(default=[1, 8, 32], min_length=1)
    sequence_lengths: list[int] = Field(default=[32, 128], min_length=1)
    warmup: int = Field(default=3, ge=0)
    iterations: int = Field(default=20, ge=1)
    throughput_batch_size: int = Field(default=32, ge=1)
    throughput_texts: int | None = Field(default=None, ge=1)
    throughput_repeats: int = Field(default=1, ge=1, le=20)


class LatencyBudget(_Strict):
    batch: int = Field(ge=1)
    sequence: int = Field(ge=1)
    p50_ms: float | None = Field(default=None, gt=0)
    p99_ms: float | None = Field(default=None, gt=0)


class SpeedupBudget(_Strict):
    over: Literal["teacher_fp32", "teacher_int8"] = "teacher_fp32"
    ratio: float = Field(gt=0)


class Budgets(_Strict):
    min_retention: float | None = Field(
        default=None, gt=0, le=1.5, description="student metric / teacher metric"
    )
    max_latency: LatencyBudget | None = None
    min_speedup: SpeedupBudget | None = None


DEFAULT_EVAL_BATCH = 64


class VerifyConfig(_Strict):
    eval_split: Literal["auto", "dev", "test"] = "auto"
    max_eval_examples: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description=f"Texts per inference call; None = {DEFAULT_EVAL_BATCH}. A value larger "
        "than the eval split is refused (the split is then not the data you meant, or the "
        "value is a typo).",
    )
    budgets: Budgets = Budgets()

    @property
    def eval_batch_size(self) -> int:
        return self.batch_size or DEFAULT_EVAL_BATCH


def _check_device_fit(p: Profile) -> None:
    """Profile-wide rules that come from the target device and the TensorRT build."""
    from kdeploy.devices import target_problems

    t = p.target
    problems = target_problems(
        t.device, t.precision, t.dla_core, sparsify=p.sparsify.enabled, runtime=t.runtime
    )
    if problems:
        raise ValueError("; ".join(problems))
    if t.precision == "fp8":
        raise ValueError(
            "target.precision fp8 needs FP8 Q/DQ nodes in the model, and kdeploy's quantize "
            "stage writes INT8 only; use int8 or fp16"
        )
    bmax = p.export.shapes.batch.max
    if t.runtime == "trt":
        for key, value in (
            ("verify.batch_size", p.verify.eval_batch_size),
            ("bench.throughput_batch_size", p.bench.throughput_batch_size),
        ):
            if value > bmax:
                raise ValueError(
                    f"{key}={value} exceeds export.shapes.batch.max={bmax}, the largest batch "
                    "the TensorRT engine accepts"
                )
    q = p.quantize
    if t.runtime == "trt" and q.fuse:
        raise ValueError(
            "quantize.fuse writes ONNX Runtime contrib ops (Attention, SkipLayerNormalization) "
            "that TensorRT's ONNX parser does not take; set quantize.fuse: false"
        )
    if t.runtime == "trt" and t.precision == "int8":
        wrong = []
        if q.method not in ("static", "ptq", "qat") or q.format != "qdq":
            wrong.append("quantize.method: qat, ptq or static and quantize.format: qdq")
        if q.activation_type != "int8" or q.weight_type != "int8":
            wrong.append("quantize.activation_type: int8 and quantize.weight_type: int8")
        if q.method == "static" and (
            not q.op_types or not set(q.op_types) <= {"MatMul", "Gemm", "Conv"}
        ):
            wrong.append("quantize.op_types: [MatMul] (Q/DQ on GEMM inputs only)")
        if wrong:
            raise ValueError(
                "TensorRT INT8 reads explicit, symmetric int8 Q/DQ (no implicit calibration; "
                "its DequantizeLinear takes no INT32, as ONNX Runtime's default op list "
                "writes for LayerNormalization biases): set " + " and ".join(wrong)
            )


class PackageConfig(_Strict):
    """What the package stage leaves for a serving stack."""

    triton: bool = Field(
        default=True, description="Write a Triton model repository (needs kdeploy[triton])."
    )
    triton_model_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model name in the Triton repository (default: <teacher>_<precision>).",
    )
    preferred_batch_sizes: list[int] | None = Field(
        default=None,
        description="Triton dynamic batching preferred sizes (default: bench.batch_sizes > 1).",
    )
    max_queue_delay_us: int = Field(default=100, ge=0, le=10_000_000)
    instances: int = Field(default=1, ge=1, le=64, description="Triton instance_group count.")
    reference_texts: int = Field(
        default=16, ge=1, le=10_000, description="Dev sentences whose outputs serve-check replays."
    )
    plots: bool = Field(default=True, description="PNG plots in the report (needs matplotlib).")


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
    def _coherent(self) -> Profile:
        _check_device_fit(self)
        lm = self.distill.layer_map
        if lm is not None and len(lm) != self.student.layers:
            raise ValueError(
                f"distill.layer_map has {len(lm)} entries but the student has "
                f"{self.student.layers} layers"
            )
        shapes = self.export.shapes
        lat = self.verify.budgets.max_latency
        if lat is not None:
            if not shapes.batch.min <= lat.batch <= shapes.batch.max:
                raise ValueError(
                    f"verify.budgets.max_latency.batch={lat.batch} is outside the exported "
                    f"batch range {shapes.batch.min}..{shapes.batch.max}"
                )
            if not shapes.sequence.min <= lat.sequence <= shapes.sequence.max:
                raise ValueError(
                    f"verify.budgets.max_latency.sequence={lat.sequence} is outside the exported "
                    f"sequence range {shapes.sequence.min}..{shapes.sequence.max}"
                )
        if lat is not None and (
            lat.batch not in self.bench.batch_sizes
            or lat.sequence not in self.bench.sequence_lengths
        ):
            raise ValueError(
                f"verify.budgets.max_latency (batch {lat.batch}, sequence {lat.sequence}) is "
                "not in the bench grid: add them to bench.batch_sizes / bench.sequence_lengths"
            )
        for b in self.bench.batch_sizes:
            if not shapes.batch.min <= b <= shapes.batch.max:
                raise ValueError(f"bench batch size {b} is outside export.shapes.batch")
        for s in self.bench.sequence_lengths:
            if not shapes.sequence.min <= s <= shapes.sequence.max:
                raise ValueError(f"bench sequence length {s} is outside export.shapes.sequence")
        if self.distill.max_seq_length > shapes.sequence.max:
            raise ValueError(
                f"distill.max_seq_length={self.distill.max_seq_length} exceeds "
                f"export.shapes.sequence.max={shapes.sequence.max}"
            )
        if self.target.precision == "int8" and not self.quantize.enabled:
            raise ValueError("target.precision is int8 but quantize.enabled is false")
        if self.target.precision != "int8" and self.quantize.enabled:
            raise ValueError(
                f"quantize.enabled is true but target.precision is {self.target.precision}"
            )
        for b in self.package.preferred_batch_sizes or []:
            if not 1 <= b <= shapes.batch.max:
                raise ValueError(
                    f"package.preferred_batch_sizes has {b}, outside 1..export.shapes.batch.max"
                    f" ({shapes.batch.max})"
                )
        sp = self.verify.budgets.min_speedup
        if sp is not None and sp.over == "teacher_int8" and not self.quantize.teacher_baseline:
            raise ValueError("min_speedup over teacher_int8 needs quantize.teacher_baseline: true")
        return self

    def digest(self) -> str:
        """Hash of the validated content (not of the YAML text): stable across formatting."""
        blob = json.dumps(
            self.model_dump(mode="json", exclude={"description", "extends"}), sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------
# Finding profiles
# --------------------------------------------------------------------------------------


def profile_dirs() -> list[Path]:
    """Where profile names are looked up, first match wins."""
    dirs: list[Path] = []
    env = os.environ.get("KDEPLOY_PROFILE_PATH")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    dirs += [here.parent / "profiles", here / "_profiles"]
    return [d for d in dirs if d.is_dir()]


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def resolve_profile_path(ref: str | Path, *, relative_to: Path | None = None) -> Path:
    """A profile reference is a file path (has a suffix or a slash) or a name to look up."""
    ref_s = str(ref)
    looks_like_path = ref_s.endswith((".yaml", ".yml")) or os.sep in ref_s or "/" in ref_s
    if looks_like_path:
        p = Path(ref_s)
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        if not p.is_file():
            raise ProfileError(
                f"profile file {p} does not exist",
                where=str(p),
                fix="give an existing YAML file, or a profile name (`kdeploy profiles list`)",
            )
        return p
    if relative_to is not None:
        sibling = relative_to / f"{ref_s}.yaml"
        if sibling.is_file():
            return sibling
    known = available_profiles()
    if ref_s in known:
        return known[ref_s]
    close = difflib.get_close_matches(ref_s, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ProfileError(
        f"unknown profile '{ref_s}'",
        where=f"looked in {', '.join(str(d) for d in profile_dirs()) or '(no profile dirs)'}",
        fix=f"{hint}known profiles: {', '.join(sorted(known)) or '(none found)'}; "
        "or pass a path to a YAML file",
    )


# --------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One YAML document plus where each key path sits in it."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)


def _read_yaml(path: Path) -> _Source:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"profile {path} is not UTF-8 text ({exc.reason})",
            where=str(path),
            fix="re-encode the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ProfileError(
            f"cannot read profile {path}: {exc.strerror}",
            where=str(path),
            fix="check the path and its permissions",
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(
            f"malformed YAML: {problem}", where=where, fix="fix the YAML syntax at that line"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            "a profile must be a YAML mapping of keys to values",
            where=f"{path}:1",
            fix="start the file with 'name: ...'",
        )
    src = _Source(path=path, data=data)
    if node is not None:
        _index_lines(node, (), src)
    return src


def _index_lines(node: yaml.Node, prefix: tuple[str, ...], src: _Source) -> None:
    src.lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise ProfileError(
                    f"duplicate key '{key}'",
                    where=f"{src.path}:{key_node.start_mark.line + 1}",
                    fix="keep one of the two entries",
                )
            seen.add(key)
            src.lines[prefix + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, prefix + (key,), src)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            src.lines[prefix + (str(i),)] = item.start_mark.line + 1
            _index_lines(item, prefix + (str(i),), src)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _apply_override(data: dict[str, Any], assignment: str) -> tuple[str, ...]:
    if "=" not in assignment:
        raise ProfileError(
            f"override '{assignment}' is not of the form key.path=value",
            where=f"--set {assignment}",
            fix="e.g. --set distill.epochs=1",
        )
    key, raw = assignment.split("=", 1)
    path = tuple(p for p in key.strip().split(".") if p)
    if not path:
        raise ProfileError(
            "override has an empty key",
            where=f"--set {assignment}",
            fix="e.g. --set distill.epochs=1",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ProfileError(
            f"override value is not valid YAML: {exc}",
            where=f"--set {assignment}",
            fix="quote the value for the shell, e.g. --set 'bench.batch_sizes=[1,8]'",
        ) from None
    cur = data
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[path[-1]] = value
    return path


@dataclass
class LoadedProfile:
    """A validated profile and where it came from."""

    profile: Profile
    sources: list[Path]
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.profile.name

    def digest(self) -> str:
        return self.profile.digest()


def _chain(path: Path) -> list[_Source]:
    """[child, parent, grandparent, ...], refusing cycles and missing parents."""
    chain: list[_Source] = []
    seen: list[Path] = []
    current = path
    while True:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(str(p) for p in seen + [resolved])
            raise ProfileError(
                f"profile extends itself (cycle: {cycle})",
                where=f"{chain[-1].path}:{chain[-1].lines.get(('extends',), 1)}",
                fix="remove or change the 'extends' entry",
            )
        seen.append(resolved)
        src = _read_yaml(current)
        chain.append(src)
        parent = src.data.get("extends")
        if parent is None:
            return chain
        if not isinstance(parent, str):
            raise ProfileError(
                "'extends' must be a profile name or a path",
                where=f"{src.path}:{src.lines.get(('extends',), 1)}",
                fix="e.g. extends: cpu-int8",
            )
        try:
            current = resolve_profile_path(parent, relative_to=current.parent)
        except ProfileError as exc:
            raise ProfileError(
                f"profile extends '{parent}', which cannot be found: {exc.what}",
                where=f"{src.path}:{src.lines.get(('extends',), 1)}",
                fix=exc.fix,
            ) from None


def _locate(
    loc: tuple[str, ...], chain: list[_Source], overrides: dict[tuple[str, ...], str]
) -> str:
    for n in range(len(loc), 0, -1):
        prefix = loc[:n]
        if prefix in overrides:
            return f"--set {overrides[prefix]}"
        inner = [f"--set {t}" for o, t in overrides.items() if o[:n] == prefix]
        for src in chain:
            if prefix in src.lines:
                where = f"{src.path}:{src.lines[prefix]}"
                return f"{where} (with {', '.join(inner)})" if inner else where
        if inner:
            return inner[0]
    return str(chain[0].path)


def load_profile(ref: str | Path, overrides: list[str] | None = None) -> LoadedProfile:
    """Read, merge and validate a profile; every error names the file and line."""
    path = resolve_profile_path(ref)
    chain = _chain(path)
    merged: dict[str, Any] = {}
    for src in reversed(chain):
        merged = _deep_merge(merged, src.data)
    merged["extends"] = chain[0].data.get("extends")
    opaths: dict[tuple[str, ...], str] = {}
    for assignment in overrides or []:
        opaths[_apply_override(merged, assignment)] = assignment
    try:
        profile = Profile.model_validate(merged)
    except ValidationError as exc:
        raise _profile_error(exc, chain, opaths) from None
    return LoadedProfile(
        profile=profile, sources=[s.path for s in chain], overrides=list(overrides or [])
    )


def locate_key(loaded: LoadedProfile, key: str) -> str:
    """Where a dotted key of a loaded profile got its value: '--set ...', 'file:line', or
    the profile file with a note that the default applies."""
    path = tuple(key.split("."))
    for assignment in reversed(loaded.overrides):
        k = tuple(p for p in assignment.split("=", 1)[0].strip().split(".") if p)
        if path[: len(k)] == k:
            return f"--set {assignment}"
    try:
        chain = _chain(loaded.sources[0])
    except ProfileError:  # the file changed since it was loaded: name it without a line
        return str(loaded.sources[0])
    for src in chain:
        if path in src.lines:
            return f"{src.path}:{src.lines[path]}"
    return f"{chain[0].path} ({key} is not set there: the default applies)"


def _profile_error(
    exc: ValidationError, chain: list[_Source], opaths: dict[tuple[str, ...], str]
) -> ProfileError:
    problems = []
    first_where = None
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = _locate(loc, chain, opaths)
        first_where = first_where or where
        key = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_fields = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], parent_fields, n=1)
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
            if parent_fields:
                msg += f"; allowed here: {', '.join(parent_fields)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if not loc:  # a check across sections: point at the keys its message names
                named = _named_keys(msg)
                hit = next((w for k in named if (w := _exact(k, chain, opaths))), None)
                if hit is not None:
                    where, key = hit, " / ".join(".".join(k) for k in named)
                    first_where = hit if first_where == str(chain[0].path) else first_where
        elif "input" in err and err["type"] != "assertion_error":
            msg += f" (got {err['input']!r})"
        problems.append(f"{where}: {key}: {msg}")
    what = "invalid profile:\n    " + "\n    ".join(problems)
    return ProfileError(
        what, where=first_where, fix="see `kdeploy profiles schema` for the allowed keys"
    )


def _named_keys(msg: str) -> list[tuple[str, ...]]:
    """Dotted profile keys a validation message mentions, in order."""
    found = []
    for m in re.finditer(r"\b[a-z_]+(?:\.[a-z_0-9]+)+", msg):
        k = tuple(m.group(0).split("."))
        if k[0] in Profile.model_fields and k not in found:
            found.append(k)
    return found


def _exact(
    path: tuple[str, ...], chain: list[_Source], opaths: dict[tuple[str, ...], str]
) -> str | None:
    """Where exactly ``path`` was set: its --set flag, else its file:line; None if defaulted."""
    if path in opaths:
        return f"--set {opaths[path]}"
    for src in chain:
        if path in src.lines:
            return f"{src.path}:{src.lines[path]}"
    return None


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """Field names allowed at a key path of the Profile schema (for 'did you mean')."""
    model: Any = Profile
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        args = getattr(ann, "__args__", ())
        model = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def json_schema() -> dict[str, Any]:
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "kdeploy profile"
    return schema


def dump_profile(profile: Profile) -> str:
    """The fully resolved profile as YAML (what a run actually used)."""
    data = profile.model_dump(mode="json")
    data["extends"] = None  # already merged in: the dump stands alone
    return yaml.safe_dump(data, sort_keys=False)
