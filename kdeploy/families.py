"""The encoder families kdeploy compresses, one small description each: where the layers
live, what every layer shares, which inputs the exported graph takes, which Linears are
the feed-forward block (width slicing), and ModernBERT's global/local attention pattern.

Torch-free (``model_info`` reads it before torch is imported). The code that cuts, slices,
trains and exports a student asks this table instead of testing ``model_type``; a family
not listed here is refused with the list of supported ones (``family_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOKEN_TYPES = "token_type_ids"
INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class ConfigKeys:
    """The names config.json gives the sizes (DistilBERT: n_layers, dim, n_heads, hidden_dim)."""

    layers: str = "num_hidden_layers"
    hidden: str = "hidden_size"
    heads: str = "num_attention_heads"
    ffn: str = "intermediate_size"
    positions: str = "max_position_embeddings"


@dataclass(frozen=True)
class AttentionPattern:
    """Global attention on every ``every``-th layer (``layer_id % every == 0``), sliding-window
    attention elsewhere (ModernBERT). transformers decides the role from the layer's index
    when it builds the model, so a student's kept layers must form the same kind of pattern
    with its own indices: ``config_key`` is the period the student's config gets. Layer 0
    is built without a pre-attention LayerNorm (Identity), so it stays the student's first
    layer."""

    config_key: str = "global_attn_every_n_layers"


@dataclass(frozen=True)
class Family:
    """How kdeploy reads one encoder family (a model_type, or several with one layout)."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # the layer ModuleList, relative to the base model
    # base-model submodules every layer reads (relative position tables and their norms):
    # a student keeps them whole whatever layers it drops
    shared: tuple[str, ...] = ()
    # base-model submodules applied after the first layer only (DeBERTa-v2's optional
    # encoder.conv): where present, a student keeps the teacher's first layer first
    after_first: tuple[str, ...] = ()
    # whether the graph takes token_type_ids: True, False, or None = when type_vocab_size > 0
    token_types: bool | None = True
    keys: ConfigKeys = field(default_factory=ConfigKeys)
    # Linears inside one layer, relative to it: attention output, feed-forward in and out
    attn_out: str = "attention.output.dense"
    ffn_in: str = "intermediate.dense"
    ffn_out: str = "output.dense"
    glu: bool = False  # ffn_in writes [value; gate], 2 x intermediate_size rows
    # per-dim roles of a layer's weights for hidden/head slicing, or None: only the
    # feed-forward width can be sliced
    slice_roles: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    why_no_hidden_slicing: str = ""  # said when a narrower hidden width is refused
    # names (last part) of the LayerNorms on the residual stream (hidden-dim importance)
    norms: tuple[str, ...] = ("LayerNorm",)
    pattern: AttentionPattern | None = None
    # module scopes whose own ONNX nodes compute positions (MPNet's relative position
    # buckets: Log, Div, Min, Cast to int64): static INT8 leaves them float, since Q/DQ on
    # them turns bucket indices into garbage
    float_scopes: tuple[str, ...] = ()
    # head Linears (glob) besides the profile's ``*classifier*`` / ``*pooler*``: kept dense
    # by sparsify and float by QAT like those (ModernBERT's pooling head ``head.dense``)
    head: tuple[str, ...] = ()
    # positions are counted from pad_token_id + 1 (RoBERTa, MPNet): that many fewer tokens fit
    position_offset: bool = False

    def graph_inputs(self, config: dict, kind: str = "classification") -> tuple[str, ...]:
        """The inputs optimum's export of a model with this config.json takes: embedding
        models are exported as sentence-transformers pipelines, which take input_ids and
        attention_mask whatever the family; classifiers take the family's inputs (the
        transformers model's, ``kind`` "classification", also what the tokenizer returns)."""
        if kind == "embedding":
            return INPUTS
        types = self.token_types
        if types is None:
            types = int(config.get("type_vocab_size", 0) or 0) > 0
        return (*INPUTS, TOKEN_TYPES) if types else INPUTS

    def max_tokens(self, config: dict) -> int:
        """The longest input the position table covers (at most 512, BERT's length)."""
        positions = int(config.get(self.keys.positions, 512))
        if self.position_offset:
            positions -= int(config.get("pad_token_id", 1) or 0) + 1
        return min(positions, 512)

    @property
    def layer_key(self) -> str:
        """The last part of ``layers`` ('layer', 'layers'): it names layer i's weights
        ``<...>.<layer_key>.<i>.<...>``."""
        return self.layers.split(".")[-1]


# BERT's per-dim roles (matched in this order: ".attention.output.dense." also ends in
# ".output.dense.")
BERT_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".attention.self.query.", ("heads", "hidden")),
    (".attention.self.key.", ("heads", "hidden")),
    (".attention.self.value.", ("heads", "hidden")),
    (".attention.output.dense.", ("hidden", "heads")),
    (".intermediate.dense.", ("ffn", "hidden")),
    (".output.dense.", ("hidden", "ffn")),
)

DISTILBERT_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".attention.q_lin.", ("heads", "hidden")),
    (".attention.k_lin.", ("heads", "hidden")),
    (".attention.v_lin.", ("heads", "hidden")),
    (".attention.out_lin.", ("hidden", "heads")),
    (".ffn.lin1.", ("ffn", "hidden")),
    (".ffn.lin2.", ("hidden", "ffn")),
)
DEBERTA_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".attention.self.query_proj.", ("heads", "hidden")),
    (".attention.self.key_proj.", ("heads", "hidden")),
    (".attention.self.value_proj.", ("heads", "hidden")),
    (".attention.output.dense.", ("hidden", "heads")),
    (".intermediate.dense.", ("ffn", "hidden")),
    (".output.dense.", ("hidden", "ffn")),
)
# Wqkv's rows are [q; k; v], each heads x head_dim ("qkv_heads"); Wi's are [value; gate]
MODERNBERT_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".attn.Wqkv.", ("qkv_heads", "hidden")),
    (".attn.Wo.", ("hidden", "heads")),
    (".mlp.Wi.", ("ffn_glu", "hidden")),
    (".mlp.Wo.", ("hidden", "ffn")),
)

FAMILIES: tuple[Family, ...] = (
    Family(
        name="BERT",
        model_types=("bert",),
        layers="encoder.layer",
        slice_roles=BERT_ROLES,
    ),
    Family(
        name="RoBERTa",
        model_types=("roberta", "xlm-roberta", "camembert"),
        layers="encoder.layer",
        token_types=False,
        slice_roles=BERT_ROLES,
        position_offset=True,
    ),
    Family(
        name="ELECTRA",
        model_types=("electra",),
        layers="encoder.layer",
        slice_roles=BERT_ROLES,
    ),
    Family(
        name="MPNet",
        model_types=("mpnet",),
        layers="encoder.layer",
        shared=("encoder.relative_attention_bias",),
        token_types=False,
        attn_out="attention.attn.o",
        why_no_hidden_slicing="heads are chosen per layer, and its relative attention bias, "
        "shared by all layers, has one column per head",
        position_offset=True,
        float_scopes=("encoder", "encoder/relative_attention_bias"),
    ),
    Family(
        name="DistilBERT",
        model_types=("distilbert",),
        layers="transformer.layer",
        token_types=False,
        keys=ConfigKeys(layers="n_layers", hidden="dim", heads="n_heads", ffn="hidden_dim"),
        attn_out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        slice_roles=DISTILBERT_ROLES,
        norms=("LayerNorm", "sa_layer_norm", "output_layer_norm"),
    ),
    Family(
        name="DeBERTa-v2/v3",
        model_types=("deberta-v2",),
        layers="encoder.layer",
        shared=("encoder.rel_embeddings", "encoder.LayerNorm"),
        after_first=("encoder.conv",),
        token_types=None,
        slice_roles=DEBERTA_ROLES,
    ),
    Family(
        name="ModernBERT",
        model_types=("modernbert",),
        layers="layers",
        token_types=False,
        attn_out="attn.Wo",
        ffn_in="mlp.Wi",
        ffn_out="mlp.Wo",
        glu=True,
        slice_roles=MODERNBERT_ROLES,
        norms=("norm", "attn_norm", "mlp_norm", "final_norm"),
        head=("head.dense", "*.head.dense"),
        pattern=AttentionPattern(),
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_of(model_type: str | None) -> Family | None:
    """The family of a config's ``model_type``, or None when kdeploy does not support it."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def is_global(layer: int, every: int) -> bool:
    """Whether layer ``layer`` attends globally under a period of ``every`` (ModernBERT)."""
    return layer % every == 0


def fitting_period(keep: list[int], every: int) -> int | None:
    """The smallest period p under which student layer i attends globally exactly when the
    teacher layer it keeps (``keep[i]``) does, or None when no period reproduces the kept
    roles (the student would change some layers from local to global or back)."""
    roles = [is_global(t, every) for t in keep]
    for p in range(1, len(keep) + 1):
        if [is_global(i, p) for i in range(len(keep))] == roles:
            return p
    return None


def coherent_keep(keep: list[int], n_teacher: int, every: int) -> list[int] | None:
    """``keep`` when a period reproduces its roles; else the layers nearest ``keep`` whose
    roles follow the teacher's own period (student layer i global iff i % every == 0), with
    layer 0 first; None when there is no such choice."""
    if keep and keep[0] == 0 and fitting_period(keep, every) is not None:
        return list(keep)
    out = [0]
    for i in range(1, len(keep)):
        want = is_global(i, every)
        room = n_teacher - (len(keep) - 1 - i)  # leave a layer for every later slot
        options = [t for t in range(out[-1] + 1, room) if is_global(t, every) == want]
        if not options:
            return None
        out.append(min(options, key=lambda t: (abs(t - keep[i]), t)))
    return out
