"""INT8 in torch with NVIDIA TensorRT Model Optimizer (``modelopt.torch.quantization``):
calibration (PTQ), optionally followed by quantization-aware KD fine-tuning (QAT), exported
by optimum as an ONNX graph with QuantizeLinear/DequantizeLinear pairs.

Why modelopt: it is NVIDIA's maintained successor of pytorch-quantization, written for
TensorRT's explicit quantization: symmetric INT8 (zero points 0), per-channel weight scales
on the output axis, per-tensor activation scales, Q/DQ on GEMM inputs, and fake quantizers
with straight-through gradients that train like any nn.Module. torch.ao.quantization
targets its own CPU backends (fbgemm/x86) and is deprecated in favour of torchao, whose QAT
has no Q/DQ ONNX export path.

Placement (kdeploy's config on top of modelopt's INT8 default): every Linear's input and
weight; nothing on LayerNorm (modelopt's default quantizes LayerNorm inputs, which puts
Q/DQ on the residual path that TensorRT then cannot fuse into the GEMM + bias + residual
kernel); heads and the pooler (``quantize.keep_float``) stay float; attention BMMs stay float
(TensorRT's fused MHA kernels pick their own precision).
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdeploy.config.methods import PtqQuant, QatQuant
from kdeploy.model_info import ModelInfo
from kdeploy.train.layers import family_of_model


def quant_config(cfg: PtqQuant | QatQuant, head: tuple[str, ...] = ()) -> dict:
    """modelopt's INT8 config with kdeploy's placement; ``head``: the family's head Linears
    (``Family.head``), kept float like ``quantize.keep_float``."""
    import modelopt.torch.quantization as mtq

    qc = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    rules = qc["quant_cfg"]
    if not cfg.per_channel:
        for r in rules:
            if r.get("quantizer_name") == "*weight_quantizer" and "cfg" in r:
                r["cfg"]["axis"] = None
    rules.append({"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False})
    # head globs name modules; their quantizers are "<module>.input_quantizer" etc.
    float_globs = [*cfg.keep_float, *(f"{pat}.*" for pat in head)]
    rules += [{"quantizer_name": pat, "enable": False} for pat in float_globs]
    return qc


def quantize_model(
    model: torch.nn.Module,
    cfg: PtqQuant | QatQuant,
    forward_loop: Callable[[torch.nn.Module], None],
) -> dict:
    """Insert fake quantizers into ``model`` (in place) and calibrate them (max).

    Returns {"quantized": [linear names], "float": [linear names left float]}."""
    import modelopt.torch.quantization as mtq

    with contextlib.redirect_stdout(io.StringIO()):  # modelopt prints per-layer progress
        mtq.quantize(model, quant_config(cfg, family_of_model(model).head), forward_loop)
    quantized, left = [], []
    for name, module in model.named_modules():
        wq = getattr(module, "weight_quantizer", None)
        if wq is None or not isinstance(module, torch.nn.Linear):
            continue
        (quantized if getattr(wq, "is_enabled", False) else left).append(name)
    return {"quantized": quantized, "float": left}


def sparse_masks(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The 2:4 masks of a sparse student's layers, read off its zeros (QAT must keep them)."""
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach() != 0 for name in names}


def export_qdq(
    model: torch.nn.Module,
    info: ModelInfo,
    src_dir: Path,
    out: Path,
    *,
    opset: int,
    quantized: list[str],
    texts: list[str],
    atol: float,
    min_cosine: float,
) -> tuple[dict, np.ndarray]:
    """The fake-quantized model as a Q/DQ ONNX graph in ``out``: structurally checked (every
    quantized Linear is a Q/DQ GEMM) and compared with the torch model on real ``texts``.
    Returns the comparison and the torch model's outputs on ``texts`` (what the FP16 graph
    is checked against later)."""
    from kdeploy.onnxtools.checks import expect_int8
    from kdeploy.train.export import (
        check_onnx,
        export_loaded,
        sentence_transformer_around,
        torch_outputs,
        validate_export,
    )

    model.cpu().eval()
    if info.kind == "embedding":
        model = sentence_transformer_around(src_dir, model)
    if out.exists():
        shutil.rmtree(out)
    export_loaded(model, info, out, opset=opset, role="student", precision="int8")
    check_onnx(out / "model.onnx")
    expect_int8(out / "model.onnx", quantized)
    reference = torch_outputs(info, texts, model=model)
    check = validate_export(info, out, texts, atol=atol, min_cosine=min_cosine, reference=reference)
    return check, reference
