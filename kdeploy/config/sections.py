"""Profile sections past the recipe: how the model is exported (shapes, tolerances), the
bench grid, the verify budgets and what the package stage leaves for a serving stack.
The Profile that holds them is in ``schema.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdeploy.config import rules
from kdeploy.config.methods import Strict as _Strict


class MinOptMax(_Strict):
    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _rules(self) -> MinOptMax:
        return rules.check(self, rules.MIN_OPT_MAX)


class OpenVinoConfig(_Strict):
    """OpenVINO on a CPU: how its INT8 model is made and how it is compiled."""

    int8: Literal["nncf", "qdq"] = Field(
        default="nncf",
        description="nncf: NNCF post-training static INT8 of the fp32 (or 2:4) ONNX student, "
        "calibrated on quantize.calibration_texts train-split texts (transformer preset: "
        "softmax/LayerNorm paths kept float); qdq: OpenVINO reads the quantize stage's own "
        "Q/DQ graph (quantize.format qdq) as is.",
    )
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        default="LATENCY",
        description="OpenVINO's CPU performance hint: LATENCY runs one request on all threads "
        "(a request-at-a-time server, kdeploy's bench loop); THROUGHPUT runs streams.",
    )
    bounded_shapes: bool = Field(
        default=False,
        description="Reshape the dynamic batch and sequence axes to [1, export max] "
        "before compiling.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="OpenVINO's model cache directory (compiled models reused across "
        "processes); null: compile every time.",
    )


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


class RecallBudget(_Strict):
    """The deployed model's neighbour recall@k >= ratio x that of ``over``. Recall is
    measured against teacher_fp32's neighbours, whose own recall is 1: ``over:
    teacher_fp32`` makes ``ratio`` an absolute floor, ``over: teacher_int8`` asks for at
    least what optimum's INT8 teacher keeps in the same run."""

    over: Literal["teacher_fp32", "teacher_int8"] = "teacher_int8"
    ratio: float = Field(default=1.0, gt=0, le=1.5)


class Budgets(_Strict):
    min_retention: float | None = Field(
        default=None, gt=0, le=1.5, description="student metric / teacher metric"
    )
    max_latency: LatencyBudget | None = None
    min_speedup: SpeedupBudget | None = None
    min_neighbour_recall: RecallBudget | None = Field(
        default=None,
        description="Embedding models: recall@k of the teacher's nearest neighbours in the "
        "verify.transfer.neighbours pool (not checked for classifiers).",
    )
    min_probe_retention: float | None = Field(
        default=None,
        gt=0,
        le=1.5,
        description="Embedding models: linear-probe accuracy on the --probe data / the "
        "teacher's (needs --probe; not checked for classifiers).",
    )


class NeighbourCheck(_Strict):
    k: int = Field(default=10, ge=1, le=100, description="Neighbours compared per sentence.")
    max_pool: int = Field(
        default=5000,
        ge=2,
        le=20_000,
        description="The pool: the eval split's distinct texts (both columns), the first "
        "max_pool of them in file order. A pool of n costs n x n similarities per model.",
    )


class ProbeCheck(_Strict):
    train_examples: int = Field(
        default=4000,
        ge=2,
        le=100_000,
        description="Rows of the probe data's train split the probe is fitted on (a seeded "
        "sample); it is scored on the probe data's dev split (test when there is no dev).",
    )
    c: float = Field(
        default=1.0,
        gt=0,
        description="Inverse L2 strength (scikit-learn's C), features standardised.",
    )
    seed: int = 0


class TransferConfig(_Strict):
    """How well an embedding student stands in for its teacher beyond the task metric
    (``kdeploy.evaluation.transfer``). Measured for every model of the run, reported in
    verify.json and the report; the budgets are ``min_neighbour_recall`` and
    ``min_probe_retention``. A section set to null is not measured."""

    neighbours: NeighbourCheck | None = NeighbourCheck()
    probe: ProbeCheck | None = Field(
        default=ProbeCheck(), description="Measured when the run has --probe data."
    )


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
    transfer: TransferConfig = TransferConfig()

    @property
    def eval_batch_size(self) -> int:
        return self.batch_size or DEFAULT_EVAL_BATCH


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
