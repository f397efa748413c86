"""2:4 semi-structured sparsity of a student's Linear weights, then KD fine-tuning with the
masks fixed.

Masks come from NVIDIA TensorRT Model Optimizer's ``sparse_magnitude`` mode
(``modelopt.torch.sparsity``: keep the 2 largest of every 4 weights along the input
dimension) or from ``sparsegpt`` (kdeploy.train.sparsegpt: SparseGPT's second-order mask
*and* its compensating weight update, which modelopt's own sparsegpt mode discards). The
search runs on a copy of the model; kdeploy keeps only the masks and the resulting weights,
so the student stays a plain transformers model (saved with ``save_pretrained``, exported by
optimum) and fine-tuning re-applies the masks after every optimizer step.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kdeploy.config import SparsifyConfig
from kdeploy.config.methods import MagnitudeSparsity, SparseGptSparsity
from kdeploy.onnxtools.layers import is_2to4
from kdeploy.train.layers import family_of_model

MASKS_FILE = "masks.safetensors"


@dataclass
class LayerChoice:
    name: str
    in_features: int
    out_features: int
    sparse: bool
    reason: str  # why it stays dense, or the method that sparsified it


def choose_layers(model: torch.nn.Module, cfg: SparsifyConfig) -> list[LayerChoice]:
    """Every Linear of the model and whether it gets a 2:4 mask (with the reason if not).

    Dense: layers matching ``cfg.dense_layers`` (heads and the pooler by default: small and
    right before the metric), layers with fewer than ``cfg.min_features`` inputs or outputs
    (too small for sparse kernels to pay), input widths not divisible by 4 (no 2:4 groups).
    The family's own head Linears (``Family.head``) count as ``dense_layers``.
    Embeddings are lookups, not GEMMs: they are never Linear layers here.
    """
    out = []
    dense = [*cfg.dense_layers, *family_of_model(model).head]
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        k, n = module.in_features, module.out_features
        reason = cfg.method
        if any(fnmatch.fnmatch(name, pat) for pat in dense):
            reason = "dense_layers"
        elif min(k, n) < cfg.min_features:
            reason = f"smaller than min_features={cfg.min_features}"
        elif k % 4:
            reason = "input width not a multiple of 4"
        out.append(LayerChoice(name, k, n, reason == cfg.method, reason))
    return out


def magnitude_masks(
    work: torch.nn.Module, sparse: list[str], method: MagnitudeSparsity, batches
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """modelopt's ``sparse_magnitude`` on ``work`` (a copy): masks and masked weights."""
    import modelopt.torch.sparsity as mts

    rules: dict[str, dict | None] = {"*": None}  # dense unless named below
    rules.update({name: {} for name in sparse})
    # modelopt prints a line per layer it searches; the console keeps the progress bars
    with contextlib.redirect_stdout(io.StringIO()):
        mts.sparsify(work, mode=[("sparse_magnitude", {"nn.Linear": rules})])
    masks, weights = {}, {}
    modules = dict(work.named_modules())
    for name in sparse:
        m = modules[name]
        mask = getattr(m, "_weight_mask", None)
        w = m.weight.detach()
        mask = (w != 0) if mask is None else mask.detach().bool()
        masks[name] = mask.cpu().clone()
        weights[name] = (w * mask).cpu().clone()
    return masks, weights


def sparsegpt_masks(
    work: torch.nn.Module, sparse: list[str], method: SparseGptSparsity, batches
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """kdeploy's SparseGPT (mask and weight update) over the calibration ``batches``."""
    if not batches:
        raise ValueError("SparseGPT needs calibration data (tokenized batches)")
    from kdeploy.train.sparsegpt import sparsegpt

    return sparsegpt(work, sparse, batches, damp=method.damp)


# sparsify method config type -> the function that finds its masks
MASKERS = {MagnitudeSparsity: magnitude_masks, SparseGptSparsity: sparsegpt_masks}


def compute_masks(
    model: torch.nn.Module,
    layers: list[LayerChoice],
    cfg: SparsifyConfig,
    batches: Sequence[dict] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """2:4 masks and the new weights of the sparse layers, found on a copy of the model by
    the handler of the profile's method (``MASKERS``).

    Returns ({layer: bool mask}, {layer: masked weight}).
    """
    method = cfg.method_config()
    sparse = [x.name for x in layers if x.sparse]
    return MASKERS[type(method)](copy.deepcopy(model).eval(), sparse, method, batches)


def needs_calibration(cfg: SparsifyConfig) -> bool:
    """Does the profile's method read calibration text (SparseGPT's Hessians)?"""
    return isinstance(cfg.method_config(), SparseGptSparsity)


def sparsity_report(
    layers: list[LayerChoice], masks: dict[str, torch.Tensor], cfg: SparsifyConfig
) -> dict:
    """What ``sparsity.json`` records: per Linear layer sparse or dense and why."""
    total = sum(x.in_features * x.out_features for x in layers)
    pruned = sum(int((~m).sum()) for m in masks.values())
    return {
        "pattern": cfg.pattern,
        "method": cfg.method,
        "layers": [x.__dict__ for x in layers],
        "sparse_layers": sum(1 for x in layers if x.sparse),
        "dense_layers": {x.name: x.reason for x in layers if not x.sparse},
        "linear_weights_zero_fraction": round(pruned / total, 4),
    }


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights (after every optimizer step: AdamW's moments and weight
    decay would otherwise bring them back)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            w = modules[name].weight
            w.mul_(mask.to(device=w.device, dtype=w.dtype))


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            modules[name].weight.copy_(w.to(modules[name].weight.device))


def save_masks(path: Path, masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]):
    tensors = {f"mask::{k}": v.to(torch.uint8) for k, v in masks.items()}
    tensors.update({f"weight::{k}": v.contiguous() for k, v in weights.items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def load_masks(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    t = load_file(str(path))
    masks = {k.split("::", 1)[1]: v.bool() for k, v in t.items() if k.startswith("mask::")}
    weights = {k.split("::", 1)[1]: v for k, v in t.items() if k.startswith("weight::")}
    return masks, weights


def check_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """Layers whose weights are not 2:4 (along the input dimension) or left their mask."""
    modules = dict(model.named_modules())
    bad = []
    for name, mask in masks.items():
        w = modules[name].weight.detach().cpu()
        if not is_2to4(w.T.numpy()) or bool((w[~mask] != 0).any()):
            bad.append(name)
    return bad
