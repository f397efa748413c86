"""Quantize and sparsify methods as typed configs, one per method, each mapped to one
handler (torchao's config type -> handler registry; ModelOpt's mode registry).

The profile section stays flat (``quantize: {method: qat, calibration_texts: 512, ...}``)
so that a child profile can switch ``method`` and every key it inherits keeps its meaning.
``QuantizeConfig.method_config()`` turns the section into the discriminated union below: a
model holding only the fields that method reads. Handlers are looked up by that model's
type (``kdeploy.stages.quantize.QUANTIZERS``, ``kdeploy.train.sparsify.MASKERS``), never by
comparing method strings, so a new method is one config class, one handler and one entry.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FineTune(Strict):
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


class _View(BaseModel):
    """A method's view of its (already validated) profile section: the other fields of the
    section are ignored, the view is frozen."""

    model_config = ConfigDict(extra="ignore", frozen=True)


Int8Type = Literal["int8", "uint8"]


class DynamicQuant(_View):
    """ONNX Runtime ``quantize_dynamic`` on the exported student: INT8 weights, activations
    quantized per batch at run time (QOperator graph)."""

    method: Literal["dynamic"]
    per_channel: bool
    weight_type: Int8Type
    op_types: list[str] | None
    fuse: bool


class StaticQuant(_View):
    """ONNX Runtime ``quantize_static`` on the exported student, activations calibrated
    (min-max) on train-split texts; QOperator or Q/DQ graph."""

    method: Literal["static"]
    format: Literal["qoperator", "qdq"]
    per_channel: bool
    weight_type: Int8Type
    activation_type: Int8Type
    calibration_texts: int
    op_types: list[str] | None
    fuse: bool


class PtqQuant(_View):
    """modelopt INT8 fake quantizers in torch, max-calibrated, exported as symmetric Q/DQ."""

    method: Literal["ptq"]
    per_channel: bool
    calibration_texts: int
    keep_float: list[str]


class QatQuant(_View):
    """PtqQuant followed by KD fine-tuning through the fake quantizers."""

    method: Literal["qat"]
    per_channel: bool
    calibration_texts: int
    keep_float: list[str]
    fine_tune: FineTune


class Fp16Graph(_View):
    """No INT8: the exported FP32 student written as an FP16 graph (modelopt AutoCast), the
    ``keep_fp32`` ops left in FP32, for a strongly typed FP16 TensorRT engine."""

    method: Literal["fp16"]


QuantizeMethod = Annotated[
    DynamicQuant | StaticQuant | PtqQuant | QatQuant | Fp16Graph, Field(discriminator="method")
]
TORCH_QUANTIZE = (PtqQuant, QatQuant)  # quantize the torch model before export


class MagnitudeSparsity(_View):
    """modelopt ``sparse_magnitude``: the 2 largest of every 4 weights along the input."""

    method: Literal["magnitude"]


class SparseGptSparsity(_View):
    """SparseGPT: second-order mask and the weight update that compensates it."""

    method: Literal["sparsegpt"]
    calibration_texts: int
    damp: float


SparsifyMethod = Annotated[MagnitudeSparsity | SparseGptSparsity, Field(discriminator="method")]

QUANTIZE_METHODS: TypeAdapter = TypeAdapter(QuantizeMethod)
SPARSIFY_METHODS: TypeAdapter = TypeAdapter(SparsifyMethod)


def method_config(methods: TypeAdapter, section: BaseModel):
    """The typed config of ``section``'s method (the union picks it by ``method``)."""
    return methods.validate_python(section.model_dump())
