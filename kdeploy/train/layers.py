"""Depth: which teacher layers a student keeps, and the cut that keeps them (weights
inherited)."""

from __future__ import annotations

import copy

import torch

from kdeploy.core.errors import ModelError
from kdeploy.families import (
    SUPPORTED_MODEL_TYPES,
    Family,
    coherent_keep,
    family_of,
    fitting_period,
    is_global,
)
from kdeploy.model_info import ModelInfo


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


def family_of_model(model: torch.nn.Module) -> Family:
    """The family description of a transformers model (from its config's model_type)."""
    family = family_of(getattr(model.config, "model_type", None))
    if family is None:
        raise ModelError(
            f"{type(model).__name__} (model_type {model.config.model_type!r}) is not a "
            "supported encoder family; cannot drop layers",
            fix=f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    return family


def _layer_parent(model: torch.nn.Module, family: Family) -> tuple[torch.nn.Module, str]:
    """(module holding the layer list, the list's attribute name)."""
    base = getattr(model, "base_model", model)
    *path, attr = family.layers.split(".")
    parent = base
    for part in path:
        parent = getattr(parent, part, None)
    return parent, attr


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's transformer layers, in order (where they live: ``Family.layers``)."""
    family = family_of_model(model)
    parent, attr = _layer_parent(model, family)
    layers = getattr(parent, attr, None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(
            f"{type(model).__name__} has no {family.layers} list; cannot drop layers",
            fix=f"a {family.name} model as transformers builds it",
        )
    return layers


def student_layers(
    info: ModelInfo, k: int, strategy: str, keep: list[int] | None = None
) -> list[int]:
    """``select_layers`` for the teacher ``info``, moved to the nearest layers a student can
    keep coherently where the family alternates global and local attention (ModernBERT,
    ``Family.pattern``). An explicit ``keep`` is never moved: an incoherent one is refused
    with the reason."""
    chosen = select_layers(info.num_layers, k, strategy, keep)
    family = info.family
    if family.pattern is None or info.attention_period is None or not chosen:
        return chosen
    every = info.attention_period
    roles = ", ".join(f"{t}:{'global' if is_global(t, every) else 'local'}" for t in chosen)
    if strategy == "explicit":
        if chosen[0] == 0 and fitting_period(chosen, every) is not None:
            return chosen
        raise ModelError(
            f"student.keep {chosen} ({roles}) cannot be rebuilt as a {family.name}: a layer "
            f"attends globally when its index % {family.pattern.config_key} == 0 and layer 0 "
            "has no attention LayerNorm, so the kept layers must start with 0 and their "
            "global/local roles must repeat with one period",
            fix="keep layer 0 and roles with one period (e.g. student.strategy: bottom), or "
            "let student.strategy: uniform pick a coherent set",
        )
    fixed = coherent_keep(chosen, info.num_layers, every)
    if fixed is None:
        raise ModelError(
            f"no coherent {len(chosen)}-layer {family.name} student near layers {chosen} ({roles})",
            fix="use student.strategy: bottom, or another student.layers",
        )
    return fixed


def cut_layers(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A deep copy of the teacher holding only the layers in ``keep`` (weights inherited).

    Modules every layer shares (``Family.shared``: MPNet's relative attention bias,
    DeBERTa's relative embeddings) live outside the layer list and are kept whole. Each
    kept layer learns its new index, and for ModernBERT the config gets the period that
    gives the kept layers their global/local roles again when the saved student is loaded
    (transformers derives a layer's role from its index)."""
    family = family_of_model(teacher)
    student = copy.deepcopy(teacher)
    layers = encoder_layers(student)
    parent, attr = _layer_parent(student, family)
    if family.pattern is not None:
        _keep_pattern(student.config, family, keep)
    base = getattr(student, "base_model", student)
    after_first = [n for n in family.after_first if _submodule(base, n) is not None]
    if after_first and keep and keep[0] != 0:
        raise ModelError(
            f"this {family.name} applies {', '.join(after_first)} after its first layer "
            f"only; a student keeping layers {keep} would apply it after layer {keep[0]}",
            fix="keep layer 0 (student.strategy: uniform or bottom, or student.keep from 0)",
        )
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in keep]))
    student.config.num_hidden_layers = len(keep)
    for i, layer in enumerate(getattr(parent, attr)):
        for module in layer.modules():
            for name in ("layer_idx", "layer_id"):  # BERT's cache index, ModernBERT's role
                if isinstance(getattr(module, name, None), int):
                    setattr(module, name, i)
    return student


def _submodule(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """``module``'s submodule ``name`` (dotted), or None where it is absent or None."""
    for part in name.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _keep_pattern(config, family: Family, keep: list[int]) -> None:
    """Set the student config's global-attention period so that the kept layers keep their
    roles; refuse a choice no period reproduces."""
    assert family.pattern is not None
    key = family.pattern.config_key
    every = int(getattr(config, key))
    period = fitting_period(keep, every) if keep and keep[0] == 0 else None
    if period is None:
        raise ModelError(
            f"{family.name} layers {keep} cannot form a student: roles "
            + ", ".join(f"{t}:{'global' if is_global(t, every) else 'local'}" for t in keep)
            + f" (teacher {key}={every}) repeat with no period, or layer 0 is dropped",
            fix="choose the layers with student_layers() (kdeploy.train.layers)",
        )
    setattr(config, key, period)
