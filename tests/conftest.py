"""Shared fixtures: tiny random BERTs built in code, real data slices from ../shared/data."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KDEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is not available (set KDEPLOY_SHARED_DATA)")
    return path


def centered_cosines(approx, exact):
    """Row-wise cosine of ``approx`` to ``exact`` after subtracting the mean ``exact`` row
    from both. A random tiny BERT maps every sentence near one common direction (LayerNorm +
    mean pooling: 0.85-0.95 cosine between *different* sentences), so a raw cosine of 0.9
    says nothing; centred, unrelated sentences fall near 0 and a model that lost its
    weights' detail falls with them."""
    import numpy as np

    mu = exact.mean(0)
    a, e = approx - mu, exact - mu
    return (a * e).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(e, axis=1)


def identity_margin(approx, exact) -> float:
    """min over rows of (centred cosine to its own row - the highest to any other row):
    > 0 means every output is nearest the reference output of its own sentence."""
    import numpy as np

    mu = exact.mean(0)
    a, e = approx - mu, exact - mu
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    c = a @ e.T
    own = np.diag(c).copy()
    np.fill_diagonal(c, -np.inf)
    return float((own - c.max(1)).min())


def real_sentences(n: int = 32) -> list[str]:
    """``n`` distinct STS-B dev sentences (real text of mixed lengths)."""
    path = shared_data("stsb") / "dev.tsv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return list(dict.fromkeys(r[0] for r in rows))[:n]


def _slice_tsv(src: Path, dst: Path, rows: int) -> None:
    with open(src, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    with open(dst, "w", encoding="utf-8", newline="") as f:
        f.writelines("\t".join(row) + "\n" for row in lines[: rows + 1])


def make_data_slice(src_dir: Path, dst_dir: Path, sizes: dict[str, int]) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        if (src_dir / f"{split}.tsv").is_file():
            _slice_tsv(src_dir / f"{split}.tsv", dst_dir / f"{split}.tsv", n)
    return dst_dir


@pytest.fixture(scope="session")
def stsb_small(tmp_path_factory) -> Path:
    """STS-B slices: 120 train pairs, 40 dev, 40 test (real sentences and scores)."""
    return make_data_slice(
        shared_data("stsb"), tmp_path_factory.mktemp("stsb"), {"train": 120, "dev": 40, "test": 40}
    )


@pytest.fixture(scope="session")
def sst2_small(tmp_path_factory) -> Path:
    return make_data_slice(
        shared_data("sst2"), tmp_path_factory.mktemp("sst2"), {"train": 200, "dev": 60}
    )


def build_tokenizer(
    out_dir: Path, corpus: list[str], model_input_names: list[str] | None = None
) -> None:
    """A small WordPiece tokenizer trained on real text, saved as a fast BERT tokenizer
    (``model_input_names``: what it returns, as the tokenizers of MPNet or DistilBERT omit
    token_type_ids)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=1000, special_tokens=special)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
        **({"model_input_names": model_input_names} if model_input_names else {}),
    )
    fast.save_pretrained(str(out_dir))


def _corpus() -> list[str]:
    path = SHARED_DATA / "stsb" / "train.tsv"
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:2000]
        return [r[0] for r in rows] + [r[1] for r in rows]
    return ["a tiny corpus for a tiny tokenizer"] * 10


def build_tiny_bert(
    out_dir: Path,
    *,
    layers: int = 4,
    classifier: bool = False,
    num_labels: int = 2,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> Path:
    """A random 32-wide BERT saved with safetensors and a fast tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir, _corpus())
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(out_dir)).vocab_size
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=initializer_range,
    )
    if classifier:
        cfg.num_labels = num_labels
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(cfg)
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


# Tiny random configs of every supported family beyond BERT: 32 wide, 4 heads of 8, FFN 64,
# 4 layers, special token ids of build_tokenizer's vocabulary ([PAD] 0, [CLS] 2, [SEP] 3)
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "mpnet": ("MPNet", {**TINY_SIZES, **TOKEN_IDS, "max_position_embeddings": 130}),
    "distilbert": (
        "DistilBert",
        {"dim": 32, "n_layers": 4, "n_heads": 4, "hidden_dim": 64, "pad_token_id": 0},
    ),
    # DeBERTa-v3's layout: relative attention (c2p + p2c) with shared position keys, log
    # buckets, LayerNorm'd relative embeddings, no absolute positions, no token types
    "deberta-v2": (
        "DebertaV2",
        {
            **TINY_SIZES,
            "pad_token_id": 0,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "max_relative_positions": -1,
            "position_buckets": 16,
            "norm_rel_ebd": "layer_norm",
            "share_att_key": True,
            "position_biased_input": False,
            "type_vocab_size": 0,
        },
    ),
    # global attention on layers 0 and 3 (every 3rd), a 16-token window on layers 1 and 2:
    # real sentences of the tiny pipeline are longer than the window, so local layers differ
    "modernbert": (
        "ModernBert",
        {
            **TINY_SIZES,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "cls_token_id": 2,
            "sep_token_id": 3,
            "global_attn_every_n_layers": 3,
            "local_attention": 16,
        },
    ),
}
FAMILY_TYPES = list(FAMILY_CONFIGS)


def build_tiny_family(
    out_dir: Path, model_type: str, *, classifier: bool = False, seed: int = 0
) -> Path:
    """A random tiny model of ``model_type`` (FAMILY_CONFIGS) saved with safetensors and a
    fast tokenizer that returns only the inputs the family takes."""
    import torch
    import transformers

    from kdeploy.families import family_of

    prefix, kw = FAMILY_CONFIGS[model_type]
    family = family_of(model_type)
    assert family is not None
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = getattr(transformers, f"{prefix}Config")(vocab_size=1000, **kw)
    build_tokenizer(out_dir, _corpus(), list(family.graph_inputs(cfg.to_dict())))
    from transformers import AutoTokenizer

    cfg.vocab_size = AutoTokenizer.from_pretrained(str(out_dir)).vocab_size
    if "max_position_embeddings" not in kw and model_type != "deberta-v2":
        cfg.max_position_embeddings = 128
    cls = f"{prefix}ForSequenceClassification" if classifier else f"{prefix}Model"
    model = getattr(transformers, cls)(cfg).eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def build_tiny_st(
    out_dir: Path, model_type: str, *, pooling: str = "cls", dense: int | None = 24
) -> Path:
    """A sentence-transformers folder around a tiny ``model_type`` model: Transformer,
    ``pooling`` Pooling, a Dense layer to ``dense`` dims (tanh) when given, Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    hf = build_tiny_family(out_dir.with_name(out_dir.name + "-hf"), model_type)
    torch.manual_seed(1)
    first = models.Transformer(str(hf), max_seq_length=48)
    mods = [first, models.Pooling(first.get_word_embedding_dimension(), pooling_mode=pooling)]
    if dense:
        mods.append(models.Dense(first.get_word_embedding_dimension(), dense))
    mods.append(models.Normalize())
    SentenceTransformer(modules=mods, device="cpu").save(str(out_dir), safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="session")
def tiny_bert_spread(tmp_path_factory) -> Path:
    """The tiny BERT with weights drawn 4x wider (std 0.08): its GEMMs, not the embeddings
    passed along the residual stream, shape its outputs, so a coarser quantizer shows. At
    the default 0.02 even ternary GEMM weights keep a centred cosine of 0.985 to fp32."""
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert-spread") / "model", initializer_range=0.08
    )


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-clf") / "model", classifier=True)


TINY_OVERRIDES = [
    "student.layers=2",
    "student.intermediate_fraction=null",
    "distill.epochs=1",
    "distill.batch_size=16",
    "distill.max_seq_length=64",
    "bench.batch_sizes=[1,8]",
    "bench.sequence_lengths=[16,64]",
    "bench.iterations=3",
    "bench.warmup=1",
    "bench.throughput_texts=64",
    "verify.budgets.max_latency.sequence=64",
    "verify.budgets.min_retention=0.01",
    "verify.budgets.min_speedup=null",
    "verify.budgets.min_neighbour_recall=null",
    "verify.budgets.min_probe_retention=null",
    # the runtime's engine alone (valid for every profile), so which model a tiny run
    # deploys does not depend on a timing; the engine choice has its own run (tiny_ov_run)
    # and tests (test_openvino.py)
    "target.engines=null",
]


# TensorRT profiles on the tiny BERT: its 128 positions bound the engine's sequence range,
# and its 32-wide Linears need a lower 2:4 eligibility floor than real models' 64
TRT_TINY = [
    *TINY_OVERRIDES,
    "quantize.calibration_texts=64",
    "sparsify.min_features=8",
    "export.shapes.sequence={min: 1, opt: 64, max: 128}",
    # the tiny model's dev Spearman is noise around 0-10, where a pair's rank moves it by
    # points: the FP16 graph's metric gate is loosened (its cosine to the source is not)
    "quantize.cast_budget.min_retention=0.5",
]


def _finished_run(out: Path, model: Path, data: Path, overrides: list[str]) -> Path:
    """A cpu-int8 run of ``model`` on ``data`` with ``overrides``, run to the end."""
    from kdeploy.api import RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.stages import RunOptions

    run_pipeline(
        RunRequest(
            profile=load_profile("cpu-int8", overrides),
            model_dir=model,
            data_dir=data,
            out_dir=out,
            options=RunOptions(progress=False),
        ),
        log=lambda m: None,
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert, stsb_small) -> Path:
    """A finished cpu-int8 run of the tiny BERT (do not modify; copy it first)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return _finished_run(out, tiny_bert, stsb_small, TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_ov_run(tmp_path_factory, tiny_bert, stsb_small) -> Path:
    """A finished cpu-int8 run of the tiny BERT with both CPU engines (ONNX Runtime and
    OpenVINO), as the profile ships (do not modify; copy it first)."""
    out = tmp_path_factory.mktemp("runs") / "tiny-ov"
    overrides = [*TINY_OVERRIDES, "target.engines=[ort, openvino]"]
    return _finished_run(out, tiny_bert, stsb_small, overrides)


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def tiny_hf_model(cls_name: str = "BertModel", **kw):
    """A random 4-layer, 32-wide model (4 heads of 8, FFN 64) of a transformers class."""
    import torch
    import transformers

    torch.manual_seed(0)
    family = cls_name.split("For")[0].removesuffix("Model")
    config_cls = getattr(transformers, f"{family}Config")
    base = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        attn_implementation="eager",
    )
    return getattr(transformers, cls_name)(config_cls(**{**base, **kw})).eval()
