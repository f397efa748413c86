"""The student's OpenVINO INT8 model: NNCF post-training quantization, or OpenVINO reading
kdeploy's own Q/DQ graph. Host side (``kdeploy[openvino]``: openvino + nncf; no torch).

- ``nncf``: ``nncf.quantize`` on the fp32 (or 2:4 sparse) ONNX student read by OpenVINO,
  the transformer model type (NNCF keeps softmax and the LayerNorm paths float and places
  FakeQuantize on the MatMul inputs), calibrated on real train-split texts, one text per
  sample (batch 1, no padding in the statistics). This is what sentence-transformers'
  ``export_static_quantized_openvino_model`` does for its users.
- ``qdq``: the quantize stage's Q/DQ ONNX (modelopt QAT/PTQ or ONNX Runtime static) as it
  is: OpenVINO turns each QuantizeLinear/DequantizeLinear pair into a FakeQuantize.

The result is an OpenVINO IR model dir: ``model.xml`` + ``model.bin``, the tokenizer and a
``kdeploy_model.json`` whose ``model_file`` is ``model.xml`` (``kdeploy.runtime`` opens it
with ``OpenVinoRunner``), weights kept in their own precision (no FP16 compression).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdeploy.core.deps import require, version_of
from kdeploy.core.errors import ExportError
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.metrics import cosine_rows
from kdeploy.runtime.text import TextEncoder

IR_FILE = "model.xml"
SIDECARS = ("tokenizer.json", "config.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class OpenVinoInt8:
    """What the OpenVINO INT8 step did (the quantize stage's metrics)."""

    method: str  # "nncf" | "qdq"
    source: str  # the ONNX file it was made from
    calibration_texts: int
    fake_quantize_nodes: int
    openvino: str | None
    nncf: str | None
    bytes_after: int
    # the OpenVINO model against its source ONNX (ONNX Runtime) on validation texts
    validation_texts: int
    min_cosine: float
    mean_centred_cosine: float

    def to_json(self) -> dict:
        return asdict(self)


def nncf_int8(src: Path, tokenizer_json: Path, max_len: int, texts: list[str]):
    """NNCF static INT8 (transformer model type) of the ONNX graph ``src``, calibrated on
    ``texts`` one per sample; the quantized ``openvino.Model``. Also what the benchmarks'
    OpenVINO rows use, so they measure the quantizer kdeploy ships."""
    ov = require("openvino", feature="the OpenVINO engine")
    nncf = require("nncf", feature="OpenVINO INT8 (NNCF)")
    model = ov.Core().read_model(str(src))
    inputs = {p.get_any_name() for p in model.inputs}
    enc = TextEncoder(tokenizer_json, max_len)
    samples = [{k: v for k, v in enc.encode([t]).items() if k in inputs} for t in texts]
    return nncf.quantize(
        model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
    )


def _centred_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean cosine after removing the reference's mean vector: sentence embeddings share a
    large common direction, so a plain cosine stays high even for a broken model."""
    mu = ref.mean(axis=0, keepdims=True)
    return float(cosine_rows(ref - mu, got - mu).mean())


def compare_with_source(
    out_dir: Path, src_onnx: Path, texts: list[str], threads: int | None
) -> tuple[float, float]:
    """(min cosine, mean centred cosine) of the OpenVINO model's outputs against its source
    graph's under ONNX Runtime, on ``texts`` (batches of 16)."""
    from kdeploy.runtime.openvino_runner import OpenVinoRunner
    from kdeploy.runtime.runners import OrtRunner

    card = ModelCard.load(out_dir)
    enc = TextEncoder(out_dir / card.tokenizer_file, card.max_seq_length)
    batches = [enc.encode(texts[i : i + 16]) for i in range(0, len(texts), 16)]
    with (
        OrtRunner(src_onnx, threads=threads, outputs=[card.output]) as ref_r,
        OpenVinoRunner(out_dir / IR_FILE, threads=threads, outputs=[card.output]) as ov_r,
    ):
        ref = np.concatenate([ref_r.infer(b)[card.output] for b in batches])
        got = np.concatenate([ov_r.infer(b)[card.output] for b in batches])
    return float(cosine_rows(ref, got).min()), _centred_cosine(ref, got)


def openvino_int8(
    src_dir: Path,
    out_dir: Path,
    *,
    method: str,
    calibration_texts: list[str],
    validation_texts: list[str],
    qdq_onnx: Path | None = None,
    threads: int | None = None,
) -> OpenVinoInt8:
    """``out_dir``: the OpenVINO INT8 model dir of the student in ``src_dir`` (its fp32 or
    2:4 ONNX model dir). ``method`` nncf quantizes that graph; qdq converts ``qdq_onnx``."""
    ov = require("openvino", feature="the OpenVINO engine")
    card = ModelCard.load(src_dir)
    src = src_dir / card.model_file
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if method == "nncf":
        tok = src_dir / card.tokenizer_file
        model = nncf_int8(src, tok, card.max_seq_length, calibration_texts)
        source = src
    elif method == "qdq":
        if qdq_onnx is None or not qdq_onnx.is_file():
            raise ExportError(
                "OpenVINO int8 'qdq' needs the quantize stage's Q/DQ graph, which is missing",
                where=str(qdq_onnx),
                fix="set quantize.format: qdq, or target.openvino.int8: nncf",
            )
        model = ov.Core().read_model(str(qdq_onnx))
        source = qdq_onnx
    else:
        raise ValueError(f"unknown OpenVINO INT8 method {method!r}")
    ov.save_model(model, str(out_dir / IR_FILE), compress_to_fp16=False)
    for name in SIDECARS:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, out_dir / name)
    card.model_file = IR_FILE
    card.precision = "int8"
    card.extra = {**card.extra, "engine": "openvino", "int8": method}
    card.save(out_dir)
    fq = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
    if fq == 0:
        raise ExportError(
            f"the OpenVINO model made from {source.name} has no FakeQuantize node: nothing "
            "was quantized",
            where=str(out_dir / IR_FILE),
            fix="check that the graph has MatMul/Gemm nodes NNCF can quantize",
        )
    min_cos, centred = compare_with_source(out_dir, src, validation_texts, threads)
    return OpenVinoInt8(
        method=method,
        source=str(source),
        calibration_texts=len(calibration_texts) if method == "nncf" else 0,
        fake_quantize_nodes=fq,
        openvino=version_of("openvino"),
        nncf=version_of("nncf") if method == "nncf" else None,
        bytes_after=sum(f.stat().st_size for f in out_dir.glob("model.*")),
        validation_texts=len(validation_texts),
        min_cosine=min_cos,
        mean_centred_cosine=centred,
    )
