"""Cut a student out of a teacher: keep k transformer layers, inherit their weights, and
optionally slice it to a narrower hidden and/or feed-forward width.

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
768 79.74 vs 69.89 (``benchmarks/slice_importance.py``, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from kdeploy.core.errors import ModelError
from kdeploy.model_info import ModelInfo, width_problem


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


def make_student(
    teacher: torch.nn.Module,
    keep: list[int],
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    batches=None,
) -> torch.nn.Module:
    """A copy of the teacher holding only the layers in ``keep`` (weights inherited), sliced
    to ``hidden_size`` / ``intermediate_size`` when given; ``batches`` (dicts of model
    inputs) are the calibration text that decides which units are kept."""
    student = cut_layers(teacher, keep)
    if hidden_size is None and intermediate_size is None:
        return student
    if batches is None:
        raise ValueError("a narrower student needs calibration batches")
    plan = width_plan(student, hidden_size, intermediate_size, batches)
    return slice_model(student, plan)


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


def _layer_linears(layer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linears of one BERT-family encoder layer, by role."""
    return {
        "query": layer.attention.self.query,
        "key": layer.attention.self.key,
        "value": layer.attention.self.value,
        "attn_out": layer.attention.output.dense,
        "ffn_in": layer.intermediate.dense,
        "ffn_out": layer.output.dense,
    }


# Per-dimension roles of the weights of a BERT-family encoder layer (matched in this order:
# ".attention.output.dense." also ends in ".output.dense.").
_LAYER_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".attention.self.query.", ("heads", "hidden")),
    (".attention.self.key.", ("heads", "hidden")),
    (".attention.self.value.", ("heads", "hidden")),
    (".attention.output.dense.", ("hidden", "heads")),
    (".intermediate.dense.", ("ffn", "hidden")),
    (".output.dense.", ("hidden", "ffn")),
)
_LAYER_INDEX = re.compile(r"\.layer\.(\d+)\.")


def dim_roles(name: str, shape: tuple[int, ...], width: int) -> tuple[str | None, ...]:
    """What each dim of parameter ``name`` indexes: 'hidden', 'heads', 'ffn' or None.

    The encoder layers' Linears and the embedding tables are named; everything else
    (LayerNorms, pooler, classification head, ELECTRA's embedding projection) indexes the
    residual stream in every dim whose size is the hidden ``width``.
    """
    if _LAYER_INDEX.search(name):
        for part, roles in _LAYER_ROLES:
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
    cfg = model.config
    width, head_dim = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    layers = encoder_layers(model)
    hidden = _Meter(width)
    heads = [_Meter(cfg.num_attention_heads, head_dim) for _ in layers]
    ffn = [_Meter(cfg.intermediate_size) for _ in layers]
    mask: dict[str, torch.Tensor] = {}
    hooks = []

    def on_output(meter: _Meter):
        return lambda module, args, out: meter.add(out, mask["m"])

    def on_input(meter: _Meter):
        return lambda module, args, out: meter.add(args[0], mask["m"])

    for name, module in model.named_modules():
        is_ln = isinstance(module, torch.nn.LayerNorm) and "LayerNorm" in name.split(".")[-1]
        if is_ln and module.normalized_shape == (width,):
            hooks.append(module.register_forward_hook(on_output(hidden)))
    for i, layer in enumerate(layers):
        lin = _layer_linears(layer)
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

    lins = [_layer_linears(layer) for layer in layers]
    return Importance(
        hidden=hidden.mean(),
        heads=[
            m.mean() * out_norms(lin["attn_out"].weight, cfg.num_attention_heads)
            for m, lin in zip(heads, lins, strict=True)
        ],
        ffn=[
            m.mean() * out_norms(lin["ffn_out"].weight, cfg.intermediate_size)
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
    cfg = model.config
    problem = width_problem(
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        hidden=hidden_size,
        ffn=intermediate_size,
    )
    if problem is not None:
        raise ModelError(problem[1], fix=problem[2])
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    hidden = hidden_size or cfg.hidden_size
    ffn = intermediate_size or cfg.intermediate_size
    imp = measure_importance(model, batches)
    return WidthPlan(
        hidden=_top(imp.hidden, hidden),
        heads=[_top(h, hidden // head_dim) for h in imp.heads],
        ffn=[_top(f, ffn) for f in imp.ffn],
        head_dim=head_dim,
    )


def _narrow_config(config, plan: WidthPlan):
    cfg = copy.deepcopy(config)
    if getattr(cfg, "embedding_size", None) == cfg.hidden_size:  # ELECTRA: no projection
        cfg.embedding_size = plan.hidden_size
    cfg.hidden_size = plan.hidden_size
    cfg.num_attention_heads = plan.hidden_size // plan.head_dim
    cfg.intermediate_size = plan.intermediate_size
    return cfg


def _indices(plan: WidthPlan, role: str, name: str) -> torch.Tensor:
    if role == "hidden":
        return plan.hidden
    match = _LAYER_INDEX.search(name)
    if match is None:
        raise ModelError(f"cannot slice {name}: '{role}' dims outside an encoder layer")
    layer = int(match.group(1))
    if role == "ffn":
        return plan.ffn[layer]
    heads = plan.heads[layer]
    return (heads[:, None] * plan.head_dim + torch.arange(plan.head_dim)).reshape(-1)


def slice_tensor(name: str, tensor: torch.Tensor, width: int, plan: WidthPlan) -> torch.Tensor:
    """``tensor`` (the teacher's ``name``) restricted to the units ``plan`` keeps."""
    out = tensor
    for d, role in enumerate(dim_roles(name, tuple(tensor.shape), width)):
        if role is not None:
            out = out.index_select(d, _indices(plan, role, name).to(out.device))
    return out


def slice_model(model: torch.nn.Module, plan: WidthPlan) -> torch.nn.Module:
    """A new model of ``model``'s class and the plan's widths, holding the kept weights."""
    width = model.config.hidden_size
    student = type(model)(_narrow_config(model.config, plan))
    source = model.state_dict()
    sliced = {}
    for name, want in student.state_dict().items():
        if name not in source:
            raise ModelError(f"cannot slice {type(model).__name__}: no teacher weight {name}")
        got = slice_tensor(name, source[name], width, plan)
        if got.shape != want.shape:
            raise ModelError(
                f"cannot slice {type(model).__name__}: {name} sliced to {tuple(got.shape)}, "
                f"the student needs {tuple(want.shape)}",
                fix="narrow students support BERT-family layouts (bert, roberta, electra)",
            )
        sliced[name] = got.clone()
    student.load_state_dict(sliced, strict=True)
    student.to(next(model.parameters()).device)
    student.train(model.training)
    return student


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
                pooling["word_embedding_dimension"] = width
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
