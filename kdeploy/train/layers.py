"""Depth: which teacher layers a student keeps, and the cut that keeps them (weights
inherited)."""

from __future__ import annotations

import copy

import torch

from kdeploy.core.errors import ModelError


def select_layers(
    n_teacher: int, k: int, strategy: str, keep: list[int] | None = None
) -> list[int]:
    """Teacher layer indices the student inherits, in order.

    uniform spreads k layers evenly from the teacher's first to its last, rounding down
    (6 -> 3: [0, 2, 5]; 12 -> 4: [0, 3, 7, 11]). Keeping both ends matters: the last layer
    produced the output the teacher was trained on, and the first reads the embeddings
    directly. Measured on all-MiniLM-L6-v2 -> 3 layers, one epoch of embedding KD on STS-B
    train texts, STS-B test Spearman of the INT8 student: [0,2,5] 81.02, [0,1,5] 80.79,
    [0,3,5] 80.25, [1,3,5] 80.10, [0,2,4] 72.97 (``python benchmarks/distill_sweep.py
    --teacher minilm --keeps 0,2,5 0,1,5 0,3,5 1,3,5 0,2,4 --loss-sets emb --set
    student.intermediate_fraction=null --set distill.epochs=1 --set
    quantize.teacher_baseline=false --tag keep --write``; benchmarks/RESULTS.md).
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


def cut_layers(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
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
