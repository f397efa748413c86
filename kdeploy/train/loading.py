"""Load teachers and students safely: local files only, safetensors, no remote code."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from kdeploy.errors import ModelError
from kdeploy.model_info import ModelInfo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_hf_model(
    info: ModelInfo,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """The teacher (or a saved student) as a torch module in eval mode.

    Weights come from model.safetensors; pickle checkpoints only with ``allow_pickle``, and
    transformers then reads them with ``torch.load(weights_only=True)``.
    """
    cls = AutoModelForSequenceClassification if info.kind == "classification" else AutoModel
    if not info.safetensors and not allow_pickle:
        raise ModelError(
            f"{info.path} has only pickle weights", where=str(info.path), fix="pass --allow-pickle"
        )
    try:
        model = cls.from_pretrained(
            str(info.path),
            local_files_only=True,
            use_safetensors=info.safetensors,
            trust_remote_code=trust_remote_code,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}),
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the model in {info.path}: {exc}", where=str(info.path)
        ) from None
    model.eval()
    return model


def load_tokenizer(path: Path):
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer in {path}: {exc}", where=str(path)) from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(
            f"{path} has no fast tokenizer (tokenizer.json)",
            where=str(path),
            fix="kdeploy's runtime tokenizes with the `tokenizers` library: save a fast "
            "tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained()",
        )
    return tok


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
