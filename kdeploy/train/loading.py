"""Load teachers and students safely: local files only, safetensors, no remote code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from kdeploy.core import ranks
from kdeploy.core.errors import ModelError
from kdeploy.families import family_of
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
        if not info.safetensors:
            refused = pickle_refusal(info.path)
            if refused is not None:
                raise refused from None
        raise ModelError(
            f"cannot load the model in {info.path}: {exc}", where=str(info.path)
        ) from None
    model.eval()
    return model


def pickle_refusal(path: Path) -> ModelError | None:
    """Why ``torch.load(weights_only=True)`` refuses a pickle checkpoint, if it does.

    transformers reads ``pytorch_model.bin`` with ``weights_only=True`` and, when that
    refuses a file, reports a generic 'unable to load weights'; this names the real cause:
    the pickle holds something other than tensors (code that would run on load)."""
    import pickle

    for name in ("pytorch_model.bin",):
        f = path / name
        if not f.is_file():
            continue
        try:
            torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "global" in ln.lower()), lines[0])
            return ModelError(
                f"{f} holds more than tensors, and torch.load(weights_only=True) refused to "
                f"unpickle it ({detail.strip()})",
                where=str(f),
                fix="do not load this file: it may run code; get the weights as "
                "model.safetensors from a source you trust",
            )
        except Exception:  # not a pickle problem: the caller's message stands
            return None
    return None


def load_tokenizer(path: Path):
    """The fast tokenizer of a model dir, returning exactly the inputs the model's family
    takes (no token_type_ids for MPNet, DistilBERT, ModernBERT, ...: a tokenizer saved
    for another family may still emit them)."""
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
    inputs = model_inputs(Path(path))
    if inputs is not None:
        tok.model_input_names = list(inputs)
    return tok


def model_inputs(path: Path) -> tuple[str, ...] | None:
    """The inputs the model in ``path`` takes (its family's graph inputs), None when its
    config does not say (a tokenizer-only folder)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    family = family_of(cfg.get("model_type"))
    return None if family is None else family.graph_inputs(cfg)


def pick_device() -> torch.device:
    """The GPU when there is one (under torchrun: GPU ``LOCAL_RANK`` of the node), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    me = ranks.current()
    return torch.device(f"cuda:{me.local_rank}" if me.distributed else "cuda")
