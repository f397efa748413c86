"""Post-training INT8 quantization of ONNX models with ONNX Runtime's quantization tools.

Host side (needs the `onnx` package): the device only runs the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import shutil
from pathlib import Path

import onnx

from kdeploy.config import QuantizeConfig
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.text import TextEncoder

SIDECAR_FILES = ("tokenizer.json", "config.json")


def _copy_sidecars(src: Path, dst: Path, precision: str) -> ModelCard:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SIDECAR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    card = ModelCard.load(src)
    card.precision = precision
    card.save(dst)
    return card


class _TextCalibration:
    """onnxruntime CalibrationDataReader over real training texts."""

    def __init__(
        self, model_dir: Path, texts: list[str], input_names: list[str], batch_size: int = 16
    ):
        card = ModelCard.load(model_dir)
        enc = TextEncoder(model_dir / card.tokenizer_file, card.max_seq_length)
        self._batches = []
        for i in range(0, len(texts), batch_size):
            feeds = enc.encode(texts[i : i + batch_size])
            self._batches.append({k: v for k, v in feeds.items() if k in input_names})
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_student(
    src_dir: Path, dst_dir: Path, cfg: QuantizeConfig, calibration_texts: list[str]
) -> dict:
    """INT8 with the profile's scheme; returns what was done, for the report."""
    from onnxruntime.quantization import QuantType

    card = _copy_sidecars(src_dir, dst_dir, "int8")
    src = src_dir / card.model_file
    dst = dst_dir / card.model_file
    fused = None
    if cfg.fuse:
        fused = fuse_transformer(src, dst_dir / "fused.onnx", src_dir / "config.json")
        src = dst_dir / "fused.onnx"
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    # Shape inference cannot type the outputs of contrib ops; FLOAT is right for BERT graphs.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    # ORT's quantizer logs advice through the root logger; the report records what was done.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _run_quantizer(cfg, src, dst, src_dir, calibration_texts, qtype, extra)
    finally:
        root.setLevel(level)
        if fused is not None:
            src.unlink(missing_ok=True)
    return {
        "fused": fused,
        "method": cfg.method,
        "format": cfg.format if cfg.method == "static" else "qoperator",
        "per_channel": cfg.per_channel,
        "weight_type": cfg.weight_type,
        "activation_type": cfg.activation_type if cfg.method == "static" else "uint8 (dynamic)",
        "calibration_texts": len(calibration_texts) if cfg.method == "static" else 0,
        "bytes_before": (src_dir / card.model_file).stat().st_size,
        "bytes_after": dst.stat().st_size,
    }


def fuse_transformer(src: Path, dst: Path, config_json: Path) -> dict:
    """ONNX Runtime's transformer optimizer for BERT graphs: attention (one packed QKV
    ``Attention`` contrib op), SkipLayerNormalization, BiasGelu/FastGelu, embedding
    LayerNorm fusions. The result uses com.microsoft ops: ONNX Runtime only. Returns the
    fused op counts (for the report). Other families' graphs go through the same pattern
    matcher: what matches BERT's patterns is fused, the rest is left as it is."""
    import json

    from onnxruntime.transformers.optimizer import optimize_model

    from kdeploy.families import ConfigKeys, family_of

    cfg = json.loads(config_json.read_text())
    family = family_of(cfg.get("model_type"))
    keys = family.keys if family is not None else ConfigKeys()
    with contextlib.redirect_stdout(io.StringIO()):
        model = optimize_model(
            str(src),
            model_type="bert",
            num_heads=int(cfg[keys.heads]),
            hidden_size=int(cfg[keys.hidden]),
            opt_level=1,
        )
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def _run_quantizer(cfg, src, dst, src_dir, calibration_texts, qtype, extra) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    if cfg.method == "dynamic":
        quantize_dynamic(
            src,
            dst,
            weight_type=qtype[cfg.weight_type],
            per_channel=cfg.per_channel,
            op_types_to_quantize=cfg.op_types,
            extra_options=extra,
        )
    else:
        graph = onnx.load(str(src), load_external_data=False).graph
        inputs = [i.name for i in graph.input]
        reader = _TextCalibration(src_dir, calibration_texts, inputs)
        quantize_static(
            src,
            dst,
            reader,
            quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
            weight_type=qtype[cfg.weight_type],
            activation_type=qtype[cfg.activation_type],
            per_channel=cfg.per_channel,
            op_types_to_quantize=cfg.op_types,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes(graph, src_dir / "config.json"),
            extra_options={**extra, "ActivationSymmetric": cfg.activation_type == "int8"},
        )


def float_nodes(graph, config_json: Path) -> list[str]:
    """Nodes static quantization leaves float: those directly in one of the family's
    ``float_scopes`` (optimum names nodes ``/<module path>/<op>``)."""
    import json

    from kdeploy.families import family_of

    family = family_of(json.loads(config_json.read_text()).get("model_type"))
    scopes = family.float_scopes if family is not None else ()
    return [
        n.name
        for n in graph.node
        if any(n.name.rsplit("/", 1)[0].endswith("/" + s) for s in scopes)
    ]


def optimum_isa_config():
    """The dynamic-INT8 config optimum users pick for this CPU (what they run today)."""
    from optimum.onnxruntime import AutoQuantizationConfig

    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return AutoQuantizationConfig.arm64(is_static=False, per_channel=False)
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    if "avx512_vnni" in flags:
        return AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    if "avx512" in flags:
        return AutoQuantizationConfig.avx512(is_static=False, per_channel=False)
    return AutoQuantizationConfig.avx2(is_static=False, per_channel=False)


def quantize_with_optimum(src_dir: Path, dst_dir: Path) -> dict:
    """optimum's ORTQuantizer, dynamic, the ISA's default config: the users' baseline."""
    from optimum.onnxruntime import ORTQuantizer

    card = _copy_sidecars(src_dir, dst_dir, "int8")
    qconfig = optimum_isa_config()
    work = dst_dir / ".optimum"
    quantizer = ORTQuantizer.from_pretrained(src_dir, file_name=card.model_file)
    produced = quantizer.quantize(save_dir=work, quantization_config=qconfig)
    out = next(Path(work).glob("*.onnx")) if Path(produced).is_dir() else Path(produced)
    shutil.move(str(out), dst_dir / card.model_file)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "tool": "optimum ORTQuantizer",
        "config": str(qconfig),
        "bytes_after": (dst_dir / card.model_file).stat().st_size,
    }
