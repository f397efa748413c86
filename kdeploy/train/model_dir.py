"""A trained model saved as a loadable HF model dir; for embedding models with the
sentence-transformers modules (pooling, normalisation), so that ``SentenceTransformer(dir)``
loads a student the way it loads its teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from kdeploy.core.fsutil import replace_dir
from kdeploy.model_info import ModelInfo


def save_model_dir(model: torch.nn.Module, layout: ModelInfo, tokenizer, out_dir: Path) -> Path:
    """``model`` + ``tokenizer`` saved as a HF model dir, with the sentence-transformers
    modules (pooling, normalisation) of ``layout`` for embedding models."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if layout.kind == "embedding":
        write_sentence_transformers_layout(
            layout, tmp, layout.max_seq_length, model.config.hidden_size
        )
    replace_dir(tmp, out_dir)
    return out_dir


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def write_sentence_transformers_layout(
    info: ModelInfo, out_dir: Path, max_seq_length: int, hidden_size: int | None = None
) -> None:
    """Make ``out_dir`` loadable by sentence-transformers with the teacher's pooling.

    Copies the teacher's module files when it is a sentence-transformers model, else writes
    Transformer + mean Pooling modules. ``hidden_size`` is the student's width (default:
    the teacher's); the Pooling module is told it.
    """
    src = info.path
    width = hidden_size or info.hidden_size
    if info.sentence_transformers:
        modules = json.loads((src / "modules.json").read_text())
        for name in ST_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out_dir / name)
        for m in modules:
            sub = m.get("path") or ""
            if sub and (src / sub).is_dir():
                shutil.copytree(src / sub, out_dir / sub, dirs_exist_ok=True)
            pcfg = out_dir / sub / "config.json"
            is_pooling = str(m.get("type", "")).endswith("Pooling")
            if sub and is_pooling and pcfg.is_file() and width != info.hidden_size:
                pooling = json.loads(pcfg.read_text())
                for key in ("word_embedding_dimension", "embedding_dimension"):  # ST < / >= 5.7
                    if key in pooling:
                        pooling[key] = width
                pcfg.write_text(json.dumps(pooling, indent=2))
    else:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
        (out_dir / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": width,
            "pooling_mode_cls_token": info.pooling == "cls",
            "pooling_mode_mean_tokens": info.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
    )
