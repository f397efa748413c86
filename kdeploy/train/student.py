"""Cut a student out of a teacher: keep k transformer layers, inherit their weights."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from kdeploy.errors import ModelError
from kdeploy.model_info import ModelInfo


def select_layers(
    n_teacher: int, k: int, strategy: str, keep: list[int] | None = None
) -> list[int]:
    """Teacher layer indices the student inherits, in order.

    uniform spreads k layers evenly from the teacher's first to its last, rounding down
    (6 -> 3: [0, 2, 5]; 12 -> 4: [0, 3, 7, 11]). Keeping both ends matters: the last layer
    produced the output the teacher was trained on, and the first reads the embeddings
    directly. Measured on all-MiniLM-L6-v2 -> 3 layers, one epoch of embedding KD on STS-B
    train texts, STS-B test Spearman: [0,2,5] 80.43, [0,1,5] 80.19, [0,3,5] 80.10,
    [1,3,5] 79.91, [0,2,4] 71.96 (benchmarks/RESULTS.md).
    """
    if k > n_teacher:
        raise ModelError(
            f"the student asks for {k} layers but the teacher has only {n_teacher}",
            fix=f"set student.layers <= {n_teacher}",
        )
    if strategy == "uniform":
        if k == 1:
            return [n_teacher - 1]
        return [(i * (n_teacher - 1)) // (k - 1) for i in range(k)]
    if strategy == "bottom":
        return list(range(k))
    if strategy == "top":
        return list(range(n_teacher - k, n_teacher))
    if strategy == "explicit":
        assert keep is not None
        bad = [i for i in keep if i >= n_teacher]
        if bad:
            raise ModelError(
                f"student.keep names layers {bad}, but the teacher has layers 0..{n_teacher - 1}"
            )
        return list(keep)
    raise ModelError(f"unknown layer strategy {strategy}")


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(
            f"{type(model).__name__} has no encoder.layer list; cannot drop layers",
            fix="use a BERT-family model (bert, roberta, xlm-roberta, electra)",
        )
    return layers


def make_student(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A deep copy of the teacher holding only the layers in ``keep`` (weights inherited)."""
    student = copy.deepcopy(teacher)
    layers = encoder_layers(student)
    base = getattr(student, "base_model", student)
    base.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    student.config.num_hidden_layers = len(keep)
    for i, layer in enumerate(base.encoder.layer):
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i
    return student


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def write_sentence_transformers_layout(info: ModelInfo, out_dir: Path, max_seq_length: int) -> None:
    """Make ``out_dir`` loadable by sentence-transformers with the teacher's pooling.

    Copies the teacher's module files when it is a sentence-transformers model, else writes
    Transformer + mean Pooling modules.
    """
    src = info.path
    if info.sentence_transformers:
        modules = json.loads((src / "modules.json").read_text())
        for name in ST_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out_dir / name)
        for m in modules:
            sub = m.get("path") or ""
            if sub and (src / sub).is_dir():
                shutil.copytree(src / sub, out_dir / sub, dirs_exist_ok=True)
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
            "word_embedding_dimension": info.hidden_size,
            "pooling_mode_cls_token": info.pooling == "cls",
            "pooling_mode_mean_tokens": info.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
    )
