"""ONNX export through optimum, then a numeric check against torch on real sentences.

Embedding models are exported as sentence-transformers pipelines (transformer + pooling
[+ normalize]) so the graph's ``sentence_embedding`` output is the finished vector;
classifiers as ``text-classification`` with a ``logits`` output. Both get dynamic batch and
sequence axes from optimum's BERT ONNX config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from kdeploy.core.errors import ExportError
from kdeploy.model_info import ModelInfo
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.metrics import cosine_rows
from kdeploy.runtime.runners import OrtRunner
from kdeploy.runtime.text import TextEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEEP_FILES = ("model.onnx", "tokenizer.json", "config.json")


@contextlib.contextmanager
def quiet_libraries():
    """Keep the libraries' advisory warnings (e.g. 'install accelerate') off the console."""
    loggers = [
        logging.getLogger(n)
        for n in ("optimum", "transformers", "sentence_transformers", "torch.onnx")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _load_torch(info: ModelInfo, allow_pickle: bool):
    if info.kind == "embedding":
        from sentence_transformers import SentenceTransformer

        kwargs = {} if info.safetensors else {"model_kwargs": {"use_safetensors": False}}
        if not info.safetensors and not allow_pickle:
            raise ExportError(f"{info.path} has only pickle weights; pass --allow-pickle")
        try:
            with quiet_libraries():
                return SentenceTransformer(
                    str(info.path),
                    device="cpu",
                    local_files_only=True,
                    trust_remote_code=False,
                    **kwargs,
                )
        except (OSError, ValueError) as exc:
            from kdeploy.train.loading import pickle_refusal

            refused = None if info.safetensors else pickle_refusal(info.path)
            raise refused or ExportError(
                f"cannot load {info.path} with sentence-transformers: {exc}",
                where=str(info.path),
            ) from None
    from kdeploy.train.loading import load_hf_model

    return load_hf_model(info, allow_pickle=allow_pickle)


def sentence_transformer_around(src_dir: Path, model) -> object:
    """The sentence-transformers pipeline of ``src_dir`` (pooling, normalisation) around a
    transformers model in memory (e.g. one carrying fake quantizers)."""
    from sentence_transformers import SentenceTransformer

    with quiet_libraries():
        st = SentenceTransformer(str(src_dir), device="cpu", local_files_only=True)
    first = st[0]
    # sentence-transformers 5 keeps the model in `.model` behind a read-only `auto_model`
    # property; nn.Module.__setattr__ would silently store an unused copy instead
    if isinstance(getattr(type(first), "auto_model", None), property):
        first.model = model
    else:
        first.auto_model = model
    if first.auto_model is not model:
        raise ExportError(
            f"cannot put the model into the sentence-transformers pipeline of {src_dir}"
        )
    return st


def export_onnx(
    info: ModelInfo,
    out_dir: Path,
    *,
    opset: int,
    role: str,
    allow_pickle: bool = False,
) -> ModelCard:
    """Write ``out_dir/model.onnx`` + tokenizer + kdeploy_model.json; return the card."""
    model = _load_torch(info, allow_pickle)
    return export_loaded(model, info, out_dir, opset=opset, role=role)


def export_loaded(
    model, info: ModelInfo, out_dir: Path, *, opset: int, role: str, precision: str = "fp32"
) -> ModelCard:
    """Export a model already in memory (a SentenceTransformer for embedding models, a
    transformers classifier otherwise), e.g. one carrying modelopt's fake quantizers,
    which optimum's exporter writes as QuantizeLinear/DequantizeLinear pairs."""
    from optimum.exporters.onnx import onnx_export_from_model

    task = "feature-extraction" if info.kind == "embedding" else "text-classification"
    tmp = out_dir.with_name(out_dir.name + ".export")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with quiet_libraries():
            onnx_export_from_model(
                model, tmp, opset=opset, task=task, do_validation=False, device="cpu"
            )
    except Exception as exc:
        raise ExportError(
            f"optimum could not export {info.path} to ONNX: {type(exc).__name__}: {exc}",
            where=str(info.path),
        ) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in KEEP_FILES:
        if (tmp / name).is_file():
            shutil.move(str(tmp / name), out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    check_inputs(out_dir / "model.onnx", info)
    if not (out_dir / "tokenizer.json").is_file():
        raise ExportError(
            f"{info.path} has no fast tokenizer (tokenizer.json)",
            where=str(info.path),
            fix="save the tokenizer with use_fast=True",
        )
    labels = None
    if info.kind == "classification":
        id2label = getattr(model.config, "id2label", None) or {}
        labels = [str(id2label.get(i, i)) for i in range(len(id2label))] or None
    card = ModelCard(
        task=info.kind,
        output="sentence_embedding" if info.kind == "embedding" else "logits",
        max_seq_length=info.max_seq_length,
        role=role,
        precision=precision,
        pooling=info.pooling if info.kind == "embedding" else None,
        normalize=info.normalize,
        labels=labels,
        extra={"layers": info.num_layers, "hidden_size": info.hidden_size},
    )
    card.save(out_dir)
    return card


def check_inputs(path: Path, info: ModelInfo) -> None:
    """The exported graph takes exactly the inputs the family says (``Family.graph_inputs``):
    the runtime, Triton config and serve-check feed what the graph declares, and a graph
    that wants token_type_ids the tokenizer does not return would be fed zeros."""
    from kdeploy.runtime.graph import onnx_inputs

    got = sorted(i.name for i in onnx_inputs(path))
    if got != sorted(info.inputs):
        raise ExportError(
            f"the exported graph {path} takes {got}, but a {info.family.name} model takes "
            f"{sorted(info.inputs)}",
            where=str(path),
            fix="a kdeploy bug for this family (kdeploy/families.py): please report it",
        )


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected {path}: {exc}", where=str(path)) from None


@torch.inference_mode()
def torch_outputs(
    info: ModelInfo,
    texts: list[str],
    allow_pickle: bool = False,
    pairs: list[str] | None = None,
    model=None,
) -> np.ndarray:
    """Reference outputs of the torch model on real texts (``model``: one in memory, else
    the one saved in ``info.path``)."""
    if model is None:
        model = _load_torch(info, allow_pickle)
    if info.kind == "embedding":
        return model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    from kdeploy.train.loading import load_tokenizer

    tok = load_tokenizer(info.path)
    enc = tok(
        texts,
        pairs,
        padding=True,
        truncation=True,
        max_length=info.max_seq_length,
        return_tensors="pt",
    )
    return model(**enc).logits.float().numpy()


def validate_export(
    info: ModelInfo,
    model_dir: Path,
    texts: list[str],
    *,
    atol: float,
    min_cosine: float,
    allow_pickle: bool = False,
    reference: np.ndarray | None = None,
) -> dict:
    """Compare torch and ONNX Runtime on the same real sentences (optimum's practice).

    ``reference``: the torch outputs when the model is not the one saved in ``info.path``
    (a fake-quantized model in memory)."""
    ref = torch_outputs(info, texts, allow_pickle) if reference is None else reference
    card = ModelCard.load(model_dir)
    enc = TextEncoder(model_dir / card.tokenizer_file, card.max_seq_length)
    with OrtRunner(model_dir / card.model_file, outputs=[card.output]) as runner:
        got = np.concatenate(
            [
                runner.infer(enc.encode(texts[i : i + 32]))[card.output]
                for i in range(0, len(texts), 32)
            ]
        )
    diff = float(np.abs(ref - got).max())
    cos = float(cosine_rows(ref, got).min())
    result = {
        "texts": len(texts),
        "max_abs_diff": diff,
        "min_cosine": cos,
        "atol": atol,
        "passed": diff <= atol and cos >= min_cosine,
    }
    if not result["passed"]:
        raise ExportError(
            f"ONNX output of {model_dir} differs from torch: max |diff| {diff:.2e} "
            f"(allowed {atol:.1e}), min cosine {cos:.6f} (required {min_cosine})",
            where=str(model_dir),
            fix="check the opset and the exporter versions; raise export.atol only if "
            "the difference is understood",
        )
    return result
