"""The profile's cross-field rules, one small named function each.

A rule reads one validated section (or the whole profile) and raises ``ValueError`` with a
message that names the keys involved; the loader turns it into a ProfileError pointing at
the file and line of the first key the message names. The schema (``schema.py`` and
``sections.py``) holds the models only and runs these lists from one validator per model, in
the order given here: the first rule a profile breaks is the one reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kdeploy.core.devices import caps, target_problems

if TYPE_CHECKING:
    from kdeploy.config.schema import (
        DistillConfig,
        LossWeights,
        Profile,
        QuantizeConfig,
        StudentConfig,
        Target,
    )
    from kdeploy.config.sections import MinOptMax


def check(model: Any, rules: Sequence[Callable[[Any], None]]) -> Any:
    """Run ``rules`` on ``model`` in order (each raises ValueError); return the model."""
    for rule in rules:
        rule(model)
    return model


# ----------------------------------------------------------------------------- sections


def trt_needs_a_gpu(t: Target) -> None:
    if t.runtime == "trt" and t.device == "cpu":
        raise ValueError("runtime 'trt' needs a GPU device; use runtime 'ort' for cpu")


def openvino_is_a_cpu_engine(t: Target) -> None:
    if "openvino" in t.engine_list() and t.device != "cpu":
        raise ValueError(
            f"runtime/engines 'openvino' run on the cpu device, not {t.device}; GPU targets "
            "use runtime 'trt' or 'ort'"
        )


def engines_are_a_cpu_choice(t: Target) -> None:
    if t.engines is None:
        return
    if t.device != "cpu":
        raise ValueError(f"engines is a choice measured on a cpu device, not {t.device}")
    if len(set(t.engines)) != len(t.engines):
        raise ValueError(f"engines lists an engine twice: {t.engines}")
    if t.runtime not in t.engines:
        raise ValueError(f"runtime '{t.runtime}' must be one of engines {t.engines}")


def device_runs_the_precision(t: Target) -> None:
    problems = target_problems(t.device, t.precision, t.dla_core, sparsify=False, runtime=t.runtime)
    if problems:
        raise ValueError("; ".join(problems))


def gpu_providers_need_a_gpu(t: Target) -> None:
    gpu_eps = {"tensorrt", "cuda"} & set(t.ort_providers or ())
    if gpu_eps and not caps(t.device).gpu:
        raise ValueError(f"ort_providers {sorted(gpu_eps)} need a GPU device, not cpu")


def ffn_size_or_fraction(s: StudentConfig) -> None:
    if s.intermediate_fraction is not None and s.intermediate_size is not None:
        raise ValueError(
            "set intermediate_size or intermediate_fraction, not both (a fixed width over "
            "a profile that sets a fraction: add --set student.intermediate_fraction=null)"
        )


def explicit_keep_list(s: StudentConfig) -> None:
    if s.strategy == "explicit":
        if not s.keep:
            raise ValueError("strategy 'explicit' needs a 'keep' list of layer indices")
        if len(s.keep) != s.layers:
            raise ValueError(f"'keep' lists {len(s.keep)} layers but layers={s.layers}")
        if len(set(s.keep)) != len(s.keep) or any(i < 0 for i in s.keep):
            raise ValueError("'keep' must hold distinct non-negative layer indices")
    elif s.keep is not None:
        raise ValueError("'keep' is only used with strategy 'explicit'")


def some_loss_is_on(w: LossWeights) -> None:
    if not any(v > 0 for v in w.model_dump().values()):
        raise ValueError("at least one distillation loss needs a weight > 0")


def early_stopping_needs_dev_scores(d: DistillConfig) -> None:
    if d.early_stopping_patience is not None and not d.select_best:
        raise ValueError("early_stopping_patience needs select_best: true (dev scores)")


def modelopt_writes_symmetric_qdq(q: QuantizeConfig) -> None:
    if q.method not in ("ptq", "qat"):
        return
    wrong = [
        f"{k}: {v}"
        for k, v in (
            ("format", q.format),
            ("weight_type", q.weight_type),
            ("activation_type", q.activation_type),
        )
        if v != ("qdq" if k == "format" else "int8")
    ]
    if wrong:
        raise ValueError(
            f"quantize.method {q.method} writes symmetric int8 Q/DQ (modelopt); "
            f"set quantize.format: qdq, weight_type: int8, activation_type: int8 "
            f"(not {', '.join(wrong)})"
        )


def fuse_is_for_onnx_runtime_methods(q: QuantizeConfig) -> None:
    if q.fuse and q.method in ("ptq", "qat"):
        raise ValueError("quantize.fuse applies to ONNX Runtime's dynamic/static methods")


def min_opt_max_ordered(m: MinOptMax) -> None:
    if not m.min <= m.opt <= m.max:
        raise ValueError(f"need min <= opt <= max, got {m.min}, {m.opt}, {m.max}")


TARGET = (
    trt_needs_a_gpu,
    openvino_is_a_cpu_engine,
    engines_are_a_cpu_choice,
    device_runs_the_precision,
    gpu_providers_need_a_gpu,
)
STUDENT = (ffn_size_or_fraction, explicit_keep_list)
LOSSES = (some_loss_is_on,)


def text_sources_distinct(d: DistillConfig) -> None:
    if len(set(d.text_sources)) != len(d.text_sources):
        raise ValueError(f"text_sources lists a source twice: {d.text_sources}")


DISTILL = (early_stopping_needs_dev_scores, text_sources_distinct)
QUANTIZE = (modelopt_writes_symmetric_qdq, fuse_is_for_onnx_runtime_methods)
MIN_OPT_MAX = (min_opt_max_ordered,)


# ----------------------------------------------------------------------------- the profile


def device_has_what_the_profile_uses(p: Profile) -> None:
    t = p.target
    problems = target_problems(
        t.device, t.precision, t.dla_core, sparsify=p.sparsify.enabled, runtime=t.runtime
    )
    if problems:
        raise ValueError("; ".join(problems))


def no_fp8_quantizer(p: Profile) -> None:
    if p.target.precision == "fp8":
        raise ValueError(
            "target.precision fp8 needs FP8 Q/DQ nodes in the model, and kdeploy's quantize "
            "stage writes INT8 only; use int8 or fp16"
        )


def trt_batches_fit_the_engine(p: Profile) -> None:
    if p.target.runtime != "trt":
        return
    bmax = p.export.shapes.batch.max
    for key, value in (
        ("verify.batch_size", p.verify.eval_batch_size),
        ("bench.throughput_batch_size", p.bench.throughput_batch_size),
    ):
        if value > bmax:
            raise ValueError(
                f"{key}={value} exceeds export.shapes.batch.max={bmax}, the largest batch "
                "the TensorRT engine accepts"
            )


def trt_parses_no_contrib_ops(p: Profile) -> None:
    if p.target.runtime == "trt" and p.quantize.fuse:
        raise ValueError(
            "quantize.fuse writes ONNX Runtime contrib ops (Attention, SkipLayerNormalization) "
            "that TensorRT's ONNX parser does not take; set quantize.fuse: false"
        )


def trt_int8_is_explicit_and_symmetric(p: Profile) -> None:
    t, q = p.target, p.quantize
    if t.runtime != "trt" or t.precision != "int8":
        return
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


def layer_map_matches_the_student(p: Profile) -> None:
    lm = p.distill.layer_map
    if lm is not None and len(lm) != p.student.layers:
        raise ValueError(
            f"distill.layer_map has {len(lm)} entries but the student has {p.student.layers} layers"
        )


def latency_budget_is_exported(p: Profile) -> None:
    lat, shapes = p.verify.budgets.max_latency, p.export.shapes
    if lat is None:
        return
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


def latency_budget_is_benched(p: Profile) -> None:
    lat = p.verify.budgets.max_latency
    if lat is not None and (
        lat.batch not in p.bench.batch_sizes or lat.sequence not in p.bench.sequence_lengths
    ):
        raise ValueError(
            f"verify.budgets.max_latency (batch {lat.batch}, sequence {lat.sequence}) is "
            "not in the bench grid: add them to bench.batch_sizes / bench.sequence_lengths"
        )


def bench_grid_is_exported(p: Profile) -> None:
    shapes = p.export.shapes
    for b in p.bench.batch_sizes:
        if not shapes.batch.min <= b <= shapes.batch.max:
            raise ValueError(f"bench batch size {b} is outside export.shapes.batch")
    for s in p.bench.sequence_lengths:
        if not shapes.sequence.min <= s <= shapes.sequence.max:
            raise ValueError(f"bench sequence length {s} is outside export.shapes.sequence")


def distill_length_is_exported(p: Profile) -> None:
    smax = p.export.shapes.sequence.max
    if p.distill.max_seq_length > smax:
        raise ValueError(
            f"distill.max_seq_length={p.distill.max_seq_length} exceeds "
            f"export.shapes.sequence.max={smax}"
        )


def precision_matches_quantize(p: Profile) -> None:
    t, q = p.target, p.quantize
    fp16_graph = q.enabled and q.method == "fp16"
    if t.precision == "int8" and not q.enabled:
        raise ValueError("target.precision is int8 but quantize.enabled is false")
    if t.precision == "int8" and fp16_graph:
        raise ValueError("target.precision is int8 but quantize.method fp16 writes no INT8")
    trt_fp16 = t.precision == "fp16" and t.runtime == "trt"
    if trt_fp16 and not fp16_graph:
        raise ValueError(
            "target.precision fp16 on TensorRT needs an FP16 graph (engines are strongly "
            "typed: they run the types the ONNX graph gives; TensorRT 11 has no FP16 "
            "builder flag): set quantize.enabled: true and quantize.method: fp16"
        )
    if t.precision != "int8" and q.enabled and not (trt_fp16 and fp16_graph):
        raise ValueError(f"quantize.enabled is true but target.precision is {t.precision}")


def preferred_batches_fit(p: Profile) -> None:
    bmax = p.export.shapes.batch.max
    for b in p.package.preferred_batch_sizes or []:
        if not 1 <= b <= bmax:
            raise ValueError(
                f"package.preferred_batch_sizes has {b}, outside 1..export.shapes.batch.max"
                f" ({bmax})"
            )


def speedup_baseline_exists(p: Profile) -> None:
    sp = p.verify.budgets.min_speedup
    if sp is not None and sp.over == "teacher_int8" and not p.quantize.teacher_baseline:
        raise ValueError("min_speedup over teacher_int8 needs quantize.teacher_baseline: true")


def recall_baseline_exists(p: Profile) -> None:
    nb = p.verify.budgets.min_neighbour_recall
    if nb is not None and nb.over == "teacher_int8" and not p.quantize.teacher_baseline:
        raise ValueError(
            "min_neighbour_recall over teacher_int8 needs quantize.teacher_baseline: true"
        )


def transfer_budgets_are_measured(p: Profile) -> None:
    b, t = p.verify.budgets, p.verify.transfer
    if b.min_neighbour_recall is not None and t.neighbours is None:
        raise ValueError(
            "verify.budgets.min_neighbour_recall needs verify.transfer.neighbours (it is null)"
        )
    if b.min_probe_retention is not None and t.probe is None:
        raise ValueError(
            "verify.budgets.min_probe_retention needs verify.transfer.probe (it is null)"
        )


def openvino_needs_int8_quantize(p: Profile) -> None:
    """OpenVINO's model is made by the quantize stage (NNCF, or its own Q/DQ graph)."""
    if "openvino" not in p.target.engine_list():
        return
    if not p.quantize.enabled:
        raise ValueError(
            "engine 'openvino' needs quantize.enabled: true (its INT8 model is made by the "
            "quantize stage)"
        )
    if p.target.openvino.int8 == "qdq" and p.quantize.format != "qdq":
        raise ValueError(
            "target.openvino.int8 'qdq' reads the quantize stage's Q/DQ graph: set "
            "quantize.format: qdq (method static, ptq or qat), or use int8 'nncf'"
        )


PROFILE = (
    device_has_what_the_profile_uses,
    no_fp8_quantizer,
    trt_batches_fit_the_engine,
    trt_parses_no_contrib_ops,
    trt_int8_is_explicit_and_symmetric,
    layer_map_matches_the_student,
    latency_budget_is_exported,
    latency_budget_is_benched,
    bench_grid_is_exported,
    distill_length_is_exported,
    precision_matches_quantize,
    openvino_needs_int8_quantize,
    preferred_batches_fit,
    speedup_baseline_exists,
    recall_baseline_exists,
    transfer_budgets_are_measured,
)
