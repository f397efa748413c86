"""Width: slice a (depth-cut) student to a narrower hidden and/or feed-forward width.

Narrowing *slices* the inherited weights (keeps a subset of rows/columns) rather than
projecting them (multiplying by a learned or PCA matrix): a sliced weight is exactly a part
of the teacher's, so every kept unit starts computing what it computed in the teacher, and
the sliced student at full width is the teacher (a test checks that).

Which units are kept is decided by how much each one carries on real text: the depth-cut
model runs over a sample of the training texts (``calibration_batches``; padding masked out)
and every unit gets an importance; the largest are kept, in their original order.

- FFN neurons, per layer: mean ``|act_j|`` (after the activation function) times
  ``||W_out[:, j]||``, the typical size of what neuron j writes into the residual stream.
  A neuron that writes nothing (a zero output column) is dropped first, and dropping it
  changes nothing.
- Attention heads, per layer, whole (head width unchanged, so ``hidden_size`` must be a
  multiple of it): mean ``||context_h||`` per token times ``||W_O[:, h]||``, the same bound
  for what head h writes.
- Hidden (residual-stream) dims: one set for the whole model, used consistently for the
  embeddings, every LayerNorm and every Linear that reads or writes the residual stream
  (and the pooler / classification head): mean ``|x_d|`` of the residual stream (every
  LayerNorm's output, i.e. what every layer reads), which keeps the few "outlier" dims
  that BERT-family models put most of their signal in.

Why activations, not weight norms: all-MiniLM-L6-v2 cut to layers [0, 2, 5], sliced, before
any training, STS-B dev Spearman (full width 81.98): FFN 768 81.35 with activations vs 77.35
with ``||W_in[j]|| * ||W_out[:, j]||`` (first 768: 78.04, random: 77.8-79.1); hidden 256
80.07 vs 71.42 with weight-norm shares (first: 70.41, random: 70.1-73.0); hidden 256 + FFN
768 79.74 vs 69.89. Printed by ``python benchmarks/slice_importance.py --write`` (the
``slice_importance`` block of benchmarks/RESULTS.md, 2026-12-02).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch

from kdeploy.core.errors import ModelError
from kdeploy.families import FAMILIES, Family
from kdeploy.model_info import width_problem
from kdeploy.train.layers import encoder_layers, family_of_model

BERT = FAMILIES[0]


@dataclass
class WidthPlan:
    """The units a narrower student keeps, as sorted indices into the teacher's weights."""

    hidden: torch.Tensor  # residual-stream dims, shared by the whole model
    heads: list[torch.Tensor]  # per layer: attention heads
    ffn: list[torch.Tensor]  # per layer: feed-forward neurons
    head_dim: int

    @property
    def hidden_size(self) -> int:
        return len(self.hidden)

    @property
    def intermediate_size(self) -> int:
        return len(self.ffn[0])


def _layer_linears(layer: torch.nn.Module, family: Family = BERT) -> dict[str, torch.nn.Linear]:
    """The Linears of one encoder layer by role: the attention output and the feed-forward
    block (every family), and BERT's query/key/value (what benchmarks/slice_importance.py's
    weight-norm rule reads)."""
    out = {
        "attn_out": layer.get_submodule(family.attn_out),
        "ffn_in": layer.get_submodule(family.ffn_in),
        "ffn_out": layer.get_submodule(family.ffn_out),
    }
    attn = getattr(getattr(layer, "attention", None), "self", None)
    for role in ("query", "key", "value"):
        if isinstance(getattr(attn, role, None), torch.nn.Linear):
            out[role] = getattr(attn, role)
    return out


def layer_roles(family: Family) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per-dimension roles of a layer's weights, matched in order. Families without
    ``slice_roles`` slice only the feed-forward block: its input Linear's rows ('ffn', or
    'ffn_glu' for [value; gate] halves) and its output Linear's columns; the attention
    output comes first because ``.attention.output.dense.`` also ends in ``.output.dense.``."""
    if family.slice_roles is not None:
        return family.slice_roles
    return (
        (f".{family.attn_out}.", ("hidden", "hidden")),
        (f".{family.ffn_in}.", ("ffn_glu" if family.glu else "ffn", "hidden")),
        (f".{family.ffn_out}.", ("hidden", "ffn")),
    )


def _layer_index(family: Family) -> re.Pattern[str]:
    return re.compile(rf"(?:^|\.){re.escape(family.layer_key)}\.(\d+)\.")


def dim_roles(
    name: str, shape: tuple[int, ...], width: int, family: Family = BERT
) -> tuple[str | None, ...]:
    """What each dim of parameter ``name`` indexes: 'hidden', 'heads', 'ffn', 'ffn_glu' or
    None.

    The encoder layers' Linears and the embedding tables are named; everything else
    (LayerNorms, pooler, classification head, ELECTRA's embedding projection) indexes the
    residual stream in every dim whose size is the hidden ``width``.
    """
    if _layer_index(family).search(name):
        for part, roles in layer_roles(family):
            if part in name:
                return roles[: len(shape)]
    if name.endswith("_embeddings.weight"):  # [vocab or positions, width (or ELECTRA's E)]
        return (None, "hidden" if shape[1] == width else None)
    return tuple("hidden" if n == width else None for n in shape)


@dataclass
class Importance:
    """Per-unit importance of a model on calibration text (see the module docstring)."""

    hidden: torch.Tensor  # [hidden]
    heads: list[torch.Tensor]  # per layer: [heads]
    ffn: list[torch.Tensor]  # per layer: [intermediate]


class _Meter:
    """Masked per-feature mean of |x| (or of per-head norms) over the real tokens seen."""

    def __init__(self, size: int, head_dim: int | None = None) -> None:
        self.total = torch.zeros(size, dtype=torch.float64)
        self.tokens = 0.0
        self.head_dim = head_dim

    def add(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        x = x.detach().float()
        if self.head_dim is not None:
            x = x.reshape(*x.shape[:-1], -1, self.head_dim).norm(dim=-1)
        m = mask.to(x.dtype).unsqueeze(-1)
        self.total += (x.abs() * m).sum((0, 1)).double().cpu()
        self.tokens += float(mask.sum())

    def mean(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1.0)


def measure_importance(model: torch.nn.Module, batches) -> Importance:
    """Run ``model`` (eval, no grad) over ``batches`` (dicts of model inputs holding an
    ``attention_mask``) and score every hidden dim, head and FFN neuron."""
    cfg, family = model.config, family_of_model(model)
    width, head_dim = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    n_ffn = int(getattr(cfg, family.keys.ffn))
    layers = encoder_layers(model)
    hidden = _Meter(width)
    heads = [_Meter(cfg.num_attention_heads, head_dim) for _ in layers]
    ffn = [_Meter(n_ffn) for _ in layers]
    mask: dict[str, torch.Tensor] = {}
    hooks = []

    def on_output(meter: _Meter):
        return lambda module, args, out: meter.add(out, mask["m"])

    def on_input(meter: _Meter):
        return lambda module, args, out: meter.add(args[0], mask["m"])

    for name, module in model.named_modules():
        is_ln = isinstance(module, torch.nn.LayerNorm) and name.split(".")[-1] in family.norms
        shared = any(name.endswith(s) for s in family.shared)  # e.g. DeBERTa's position norm
        if is_ln and not shared and module.normalized_shape == (width,):
            hooks.append(module.register_forward_hook(on_output(hidden)))
    for i, layer in enumerate(layers):
        lin = _layer_linears(layer, family)
        hooks.append(lin["attn_out"].register_forward_hook(on_input(heads[i])))
        hooks.append(lin["ffn_out"].register_forward_hook(on_input(ffn[i])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            seen = 0
            for batch in batches:
                mask["m"] = batch["attention_mask"]
                model(**batch)
                seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen or not hidden.tokens:
        raise ModelError("no calibration text to measure the student's unit importance on")

    def out_norms(w: torch.Tensor, n: int) -> torch.Tensor:  # per column group of W_out
        return w.detach().double().cpu().reshape(w.shape[0], n, -1).pow(2).sum((0, 2)).sqrt()

    lins = [_layer_linears(layer, family) for layer in layers]
    return Importance(
        hidden=hidden.mean(),
        heads=[
            m.mean() * out_norms(lin["attn_out"].weight, cfg.num_attention_heads)
            for m, lin in zip(heads, lins, strict=True)
        ],
        ffn=[
            m.mean() * out_norms(lin["ffn_out"].weight, n_ffn)
            for m, lin in zip(ffn, lins, strict=True)
        ],
    )


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (ties: lower index)."""
    order = torch.argsort(-scores, stable=True)
    return torch.sort(order[:k]).values


def width_plan(
    model: torch.nn.Module, hidden_size: int | None, intermediate_size: int | None, batches
) -> WidthPlan:
    """Which hidden dims, heads and FFN neurons a student of these widths keeps, measured
    on ``batches`` of calibration text (``measure_importance``)."""
    cfg, family = model.config, family_of_model(model)
    n_ffn = int(getattr(cfg, family.keys.ffn))
    problem = width_problem(
        cfg.hidden_size,
        cfg.num_attention_heads,
        n_ffn,
        hidden=hidden_size,
        ffn=intermediate_size,
    )
    if problem is not None:
        raise ModelError(problem[1], fix=problem[2])
    if family.slice_roles is None and hidden_size not in (None, cfg.hidden_size):
        raise ModelError(
            f"student.hidden_size {hidden_size}: kdeploy slices only the feed-forward width "
            f"of {family.name} students ({family.why_no_hidden_slicing})",
            fix="set student.hidden_size: null; student.intermediate_size or "
            "student.intermediate_fraction still narrow the feed-forward block",
        )
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    hidden = hidden_size or cfg.hidden_size
    ffn = intermediate_size or n_ffn
    imp = measure_importance(model, batches)
    return WidthPlan(
        hidden=_top(imp.hidden, hidden),
        heads=[_top(h, hidden // head_dim) for h in imp.heads],
        ffn=[_top(f, ffn) for f in imp.ffn],
        head_dim=head_dim,
    )


def _narrow_config(config, plan: WidthPlan, family: Family):
    cfg = copy.deepcopy(config)
    if plan.hidden_size != cfg.hidden_size:
        if getattr(cfg, "embedding_size", None) == cfg.hidden_size:  # ELECTRA: no projection
            cfg.embedding_size = plan.hidden_size
        cfg.hidden_size = plan.hidden_size
        cfg.num_attention_heads = plan.hidden_size // plan.head_dim
    setattr(cfg, family.keys.ffn, plan.intermediate_size)
    return cfg


def _indices(plan: WidthPlan, role: str, name: str, size: int, family: Family) -> torch.Tensor:
    """Indices ``plan`` keeps along a dim of ``size`` with this role."""
    if role == "hidden":
        return plan.hidden
    match = _layer_index(family).search(name)
    if match is None:
        raise ModelError(f"cannot slice {name}: '{role}' dims outside an encoder layer")
    layer = int(match.group(1))
    if role == "ffn":
        return plan.ffn[layer]
    if role == "ffn_glu":  # rows [value; gate]: neuron j is row j and row size/2 + j
        kept = plan.ffn[layer]
        return torch.cat([kept, kept + size // 2])
    if role == "qkv_heads":  # rows [q; k; v]: the kept heads' rows in each third
        heads = _head_rows(plan, layer)
        return torch.cat([heads + k * (size // 3) for k in range(3)])
    return _head_rows(plan, layer)


def _head_rows(plan: WidthPlan, layer: int) -> torch.Tensor:
    """The rows (or columns) of the kept heads of ``layer``, head_dim each."""
    heads = plan.heads[layer]
    return (heads[:, None] * plan.head_dim + torch.arange(plan.head_dim)).reshape(-1)


def slice_tensor(
    name: str, tensor: torch.Tensor, width: int, plan: WidthPlan, family: Family = BERT
) -> torch.Tensor:
    """``tensor`` (the teacher's ``name``) restricted to the units ``plan`` keeps."""
    out = tensor
    for d, role in enumerate(dim_roles(name, tuple(tensor.shape), width, family)):
        if role is not None:
            idx = _indices(plan, role, name, out.shape[d], family)
            out = out.index_select(d, idx.to(out.device))
    return out


def slice_model(model: torch.nn.Module, plan: WidthPlan) -> torch.nn.Module:
    """A new model of ``model``'s class and the plan's widths, holding the kept weights."""
    width, family = model.config.hidden_size, family_of_model(model)
    student = type(model)(_narrow_config(model.config, plan, family))
    source = model.state_dict()
    sliced = {}
    for name, want in student.state_dict().items():
        if name not in source:
            raise ModelError(f"cannot slice {type(model).__name__}: no teacher weight {name}")
        got = slice_tensor(name, source[name], width, plan, family)
        if got.shape != want.shape:
            raise ModelError(
                f"cannot slice {type(model).__name__}: {name} sliced to {tuple(got.shape)}, "
                f"the student needs {tuple(want.shape)}",
                fix=f"report this: {family.name}'s layout (kdeploy/families.py) does not "
                "describe this weight",
            )
        sliced[name] = got.clone()
    student.load_state_dict(sliced, strict=True)
    student.to(next(model.parameters()).device)
    student.train(model.training)
    return student
