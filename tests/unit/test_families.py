"""Teachers beyond BERT: MPNet, DistilBERT, DeBERTa-v2/v3 and ModernBERT, each a tiny random
model built in code (tests/conftest.py FAMILY_CONFIGS), cut, sliced, and run through the
whole pipeline on real STS-B / SST-2 slices."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kdeploy.api import RunRequest, run_pipeline, serve_check
from kdeploy.config import load_profile
from kdeploy.core.errors import ModelError
from kdeploy.engine.manifest import load_manifest
from kdeploy.families import FAMILIES, coherent_keep, family_of, fitting_period
from kdeploy.model_info import SUPPORTED_MODEL_TYPES, inspect_model
from kdeploy.stages import RunOptions
from tests.conftest import (
    FAMILY_CONFIGS,
    FAMILY_TYPES,
    TINY_OVERRIDES,
    build_tiny_family,
    build_tiny_st,
    real_sentences,
)
from tests.unit.test_sparsify_qat import SPARSE_QAT

# every stage on the tiny models: 3/4 feed-forward width, every KD loss of the task, 2:4
# sparsity, modelopt INT8 QAT (Q/DQ), the teacher's ONNX Runtime dynamic INT8 baseline;
# random models have no retention worth a budget
ALL_STAGES = [
    *SPARSE_QAT,
    "student.intermediate_fraction=0.75",
    "distill.losses.hidden_mse=1.0",
    "distill.losses.attention_kl=1.0",
    "verify.budgets.min_retention=null",
]
STAGES = ["distill", "sparsify", "export", "quantize", "bench", "verify", "package"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """model_type -> a tiny saved model of it (embedding model), built once per module."""
    root = tmp_path_factory.mktemp("families")
    return {t: build_tiny_family(root / t, t) for t in FAMILY_TYPES}


def _load(path: Path):
    from kdeploy.train.loading import load_hf_model, load_tokenizer

    info = inspect_model(path)
    return info, load_hf_model(info, attn_implementation="eager"), load_tokenizer(path)


def _batch(tok, n: int = 16) -> dict:
    return dict(tok(real_sentences(n), padding=True, return_tensors="pt"))


def test_every_model_type_has_one_family_and_unsupported_ones_name_the_list(tmp_path):
    seen = [t for f in FAMILIES for t in f.model_types]
    assert len(seen) == len(set(seen)) and tuple(seen) == SUPPORTED_MODEL_TYPES
    for t in ("bert", "roberta", "mpnet", "distilbert", "deberta-v2", "modernbert"):
        assert family_of(t) is not None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelError) as err:
        inspect_model(tmp_path)
    assert "unsupported architecture 't5'" in str(err.value)
    assert all(t in err.value.fix for t in ("mpnet", "distilbert", "deberta-v2", "modernbert"))


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_family_description_matches_the_model(family_dirs, model_type):
    """Sizes read through the family's config keys, the tokenizer returns exactly the
    family's inputs, the layer list and shared modules are where the family says."""
    from kdeploy.train.layers import cut_layers, encoder_layers

    info, model, tok = _load(family_dirs[model_type])
    fam = info.family
    assert (info.num_layers, info.hidden_size, info.num_heads, info.intermediate_size) == (
        4,
        32,
        4,
        64,
    )
    assert sorted(_batch(tok)) == sorted(fam.graph_inputs({"type_vocab_size": 0}))
    assert "token_type_ids" not in _batch(tok)  # none of these four takes token types
    assert len(encoder_layers(model)) == 4
    student = cut_layers(model, [0, 3])
    base, sbase = model.base_model, student.base_model
    for name in fam.shared:  # kept whole, not copied per layer
        want = base.get_submodule(name).state_dict()
        got = sbase.get_submodule(name).state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert len(encoder_layers(student)) == 2 and student.config.num_hidden_layers == 2


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_keeping_every_layer_reproduces_the_teacher_exactly(family_dirs, model_type, tmp_path):
    """All layers kept: the same hidden states and attentions, bit for bit; a cut student
    saved and loaded again computes what it computed in memory."""
    from transformers import AutoModel

    from kdeploy.train.layers import cut_layers, student_layers

    info, model, tok = _load(family_dirs[model_type])
    batch = _batch(tok)
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True, output_attentions=True)
        full = cut_layers(model, list(range(4)))(
            **batch, output_hidden_states=True, output_attentions=True
        )
        assert len(ref.attentions) == 4 and ref.attentions[0].shape[1] == 4
        for a, b in zip(ref.hidden_states, full.hidden_states, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(ref.attentions, full.attentions, strict=True):
            assert torch.equal(a, b)
        keep = student_layers(info, 3, "uniform")
        cut = cut_layers(model, keep)
        cut.save_pretrained(str(tmp_path / "s"), safe_serialization=True)
        loaded = AutoModel.from_pretrained(str(tmp_path / "s"), attn_implementation="eager")
        a = cut(**batch).last_hidden_state
        b = loaded.eval()(**batch).last_hidden_state
    assert torch.equal(a, b), f"{model_type} student {keep} changed when reloaded"


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_width_slicing(family_dirs, model_type, tmp_path):
    """At full width the sliced student is the teacher; at 48 of 64 neurons every layer's
    feed-forward block is narrower and the config says so (DistilBERT: hidden_dim). A
    hidden width of 16 (2 of 4 heads) where the family's layout allows it (not MPNet: its
    relative attention bias is shared by all layers, one column per head), refused where not;
    a narrow student reloads to the same outputs."""
    from transformers import AutoModel

    from kdeploy.train.layers import cut_layers
    from kdeploy.train.width import slice_model, width_plan

    info, model, tok = _load(family_dirs[model_type])
    fam = info.family
    batch = _batch(tok)
    cut = cut_layers(model, [0, 3])
    with torch.no_grad():
        same = slice_model(cut, width_plan(cut, 32, None, [batch]))
        assert torch.equal(same(**batch).last_hidden_state, cut(**batch).last_hidden_state)
        narrow = slice_model(cut, width_plan(cut, None, 48, [batch]))
        assert narrow(**batch).last_hidden_state.shape == (*batch["input_ids"].shape, 32)
    assert getattr(narrow.config, fam.keys.ffn) == 48
    for layer in narrow.base_model.get_submodule(fam.layers):
        assert layer.get_submodule(fam.ffn_out).in_features == 48
        rows = layer.get_submodule(fam.ffn_in).out_features
        assert rows == (96 if fam.glu else 48)
    if fam.slice_roles is None:
        with pytest.raises(ModelError, match="slices only the feed-forward width"):
            width_plan(cut, 16, None, [batch])
        return
    plan = width_plan(cut, 16, 48, [batch])
    thin = slice_model(cut, plan)
    thin.save_pretrained(str(tmp_path / "thin"), safe_serialization=True)
    loaded = AutoModel.from_pretrained(str(tmp_path / "thin"), attn_implementation="eager")
    with torch.no_grad():
        out = thin(**batch, output_attentions=True)
        assert out.last_hidden_state.shape[-1] == 16 and out.attentions[0].shape[1] == 2
        assert torch.equal(loaded.eval()(**batch).last_hidden_state, out.last_hidden_state)
    if model_type == "modernbert":  # Wqkv: the kept heads' rows of q, k and v, kept columns
        w = cut.base_model.layers[1].attn.Wqkv.weight.view(3, 4, 8, 32)
        want = w[:, plan.heads[1]][..., plan.hidden].reshape(3 * 16, 16)
        assert torch.equal(thin.base_model.layers[1].attn.Wqkv.weight, want)


def test_modernbert_layer_roles(family_dirs):
    """Global attention on every 3rd teacher layer (0, 3, ...): a student keeps layer 0 and
    a set whose roles repeat with one period; uniform choices are moved to the nearest
    such set, explicit ones refused."""
    from kdeploy.train.layers import student_layers

    assert fitting_period([0, 3], 3) == 1  # both global
    assert fitting_period([0, 1, 2, 3], 3) == 3
    assert fitting_period([0, 10, 21], 3) == 2  # global, local, global
    assert fitting_period([0, 4, 8, 12, 16, 21], 3) is None
    fixed = coherent_keep([0, 4, 8, 12, 16, 21], 22, 3)
    assert fixed is not None and fixed[0] == 0 and fitting_period(fixed, 3) is not None
    assert coherent_keep([1, 2], 4, 3) == [0, 2]  # layer 0 first, then the nearest local
    info = replace(inspect_model(family_dirs["modernbert"]), num_layers=22)
    assert student_layers(info, 6, "uniform") == fixed
    assert student_layers(info, 3, "uniform") == [0, 10, 21]
    with pytest.raises(ModelError, match="cannot be rebuilt as a ModernBERT"):
        student_layers(info, 2, "explicit", [3, 6])


def test_modernbert_student_keeps_its_local_layers_local(family_dirs, tmp_path):
    """Layers 0 (global) and 1 (local: a 16-token window) make a student of period 2; it is
    the teacher's first two layers exactly, also after a reload. The sentences are longer
    than the window, so a student whose layer 1 attended globally would differ."""
    from transformers import AutoModel

    from kdeploy.train.layers import cut_layers

    _, model, tok = _load(family_dirs["modernbert"])
    batch = _batch(tok, 32)
    assert batch["attention_mask"].sum(1).max() > 16
    cut = cut_layers(model, [0, 1])
    assert cut.config.global_attn_every_n_layers == 2
    cut.save_pretrained(str(tmp_path / "s"), safe_serialization=True)
    loaded = AutoModel.from_pretrained(str(tmp_path / "s"), attn_implementation="eager").eval()
    cut.config.global_attn_every_n_layers = 1
    all_global = AutoModel.from_config(cut.config, attn_implementation="eager").eval()
    all_global.load_state_dict(cut.state_dict())
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
        teacher_two = model.base_model.final_norm(hs[2])
        got = loaded(**batch).last_hidden_state
        wrong = all_global(**batch).last_hidden_state
    assert torch.equal(got, cut(**batch).last_hidden_state)
    assert torch.allclose(got, teacher_two, atol=1e-6)
    assert not torch.allclose(wrong, teacher_two, atol=1e-3)


def _run(model, data, out, overrides, **kw):
    return run_pipeline(
        RunRequest(
            profile=load_profile("cpu-int8", overrides),
            model_dir=model,
            data_dir=data,
            out_dir=out,
            options=RunOptions(progress=False),
            **kw,
        ),
        log=lambda m: None,
    )


def _graph_inputs(path: Path) -> list[str]:
    from kdeploy.runtime.graph import onnx_inputs

    return [i.name for i in onnx_inputs(path)]


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_tiny_pipeline_every_stage(family_dirs, stsb_small, tmp_path, model_type):
    """distill (3/4 FFN, hidden width 16 where the family allows it; embedding + hidden-state
    + attention KD) -> 2:4 sparsify -> export -> QAT INT8 -> bench -> verify -> package,
    then serve-check replays the package."""
    from kdeploy.onnxtools.layers import gemm_layers
    from kdeploy.onnxtools.qdq_lint import lint_qdq
    from kdeploy.packaging.triton_check import load_config

    run = tmp_path / "run"
    thin = family_of(model_type).slice_roles is not None  # hidden 16: KD through projections
    _run(
        family_dirs[model_type],
        stsb_small,
        run,
        [*ALL_STAGES, *(["student.hidden_size=16"] if thin else [])],
    )
    m = load_manifest(run)
    assert list(m.stages) == STAGES
    d = m.stages["distill"].metrics
    assert d["intermediate_size"] == 48 and len(d["kept_layers"]) == 2
    assert d["hidden_size"] == (16 if thin else 32)
    assert set(d["losses"]) == {"embedding_mse", "hidden_mse", "attention_kl"}
    if model_type == "modernbert":  # teacher layers 0 and 3 both attend globally
        assert d["kept_layers"] == [0, 3] and d["global_attention_layers"] == [0, 1]
        md = (run / "package" / "report.md").read_text()
        assert "Global attention: student layers [0, 1] (teacher layers [0, 3])" in md
    ex = m.stages["export"].metrics
    diffs = {role: ex[role]["validation"]["max_abs_diff"] for role in ("teacher", "student")}
    diffs["sparse"] = ex["sparse"]["validation"]["max_abs_diff"]
    print(f"\n{model_type}: export max |torch - onnx| {diffs}")  # shown with pytest -s
    assert max(diffs.values()) < 1e-5, diffs
    int8 = run / "quantize" / "student" / "model.onnx"
    assert lint_qdq(int8) == []
    encoder = [x for x in gemm_layers(int8) if x.weight_bits == 8]
    assert encoder and all(x.is_2to4 for x in encoder)
    deploy = run / "package" / "deploy" / "model.onnx"
    assert _graph_inputs(deploy) == ["input_ids", "attention_mask"]
    cfg = load_config(next((run / "package" / "triton").glob("*/config.pbtxt")))
    assert [i.name for i in cfg.input] == ["input_ids", "attention_mask"]
    verify = json.loads((run / "verify" / "verify.json").read_text())
    assert {"teacher_fp32", "teacher_int8", "student_sparse", "student_int8"} <= set(
        verify["models"]
    )
    result = serve_check(run, log=lambda m: None)
    assert result["passed"], result
    # the packaged sentence-transformers folder loads with its ONNX backend; its fp32 graph
    # is the model quantize took (the 2:4 student here)
    from sentence_transformers import SentenceTransformer

    from kdeploy.runtime import Encoder

    folder = run / "package" / "sentence-transformers"
    st = SentenceTransformer(
        str(folder), backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"}
    )
    texts = real_sentences(16)
    with Encoder(run / "export" / "sparse") as enc:
        assert np.abs(st.encode(texts) - enc.embed(texts)).max() < 1e-5


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_tiny_classifier_pipeline(sst2_small, tmp_path, model_type):
    """A sequence classifier of each family: logit + hard-label + hidden-state + attention
    KD, ONNX Runtime dynamic INT8 student, logits graph without token_type_ids."""
    model = build_tiny_family(tmp_path / "m", model_type, classifier=True)
    run = tmp_path / "run"
    extra = [
        "distill.losses.hard_label=1.0",
        "distill.losses.hidden_mse=1.0",
        "distill.losses.attention_kl=1.0",
        "verify.budgets.min_retention=null",
    ]
    _run(model, sst2_small, run, [*TINY_OVERRIDES, *extra])
    m = load_manifest(run)
    assert set(m.stages["distill"].metrics["losses"]) == {
        "logit_kd",
        "hard_label",
        "hidden_mse",
        "attention_kl",
    }
    assert m.stages["export"].metrics["student"]["validation"]["max_abs_diff"] < 1e-5
    assert _graph_inputs(run / "package" / "deploy" / "model.onnx") == [
        "input_ids",
        "attention_mask",
    ]
    report = json.loads((run / "package" / "report.json").read_text())
    assert {row["metric"] for row in report["summary"]} == {"accuracy"}
    assert serve_check(run, log=lambda m: None)["passed"]


def test_sentence_transformers_teacher_with_cls_dense_normalize(stsb_small, tmp_path):
    """An MPNet sentence-transformers teacher (CLS pooling, a Dense layer to 24 dims,
    Normalize; max_seq_length 48 where sentence-transformers 5.7 keeps it): the whole
    pipeline is inside the exported graph, which matches sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer

    from kdeploy.runtime import Encoder

    teacher = build_tiny_st(tmp_path / "st", "mpnet")
    info = inspect_model(teacher)
    assert (info.pooling, info.normalize, info.max_seq_length) == ("cls", True, 48)
    run = tmp_path / "run"
    _run(teacher, stsb_small, run, [*TINY_OVERRIDES, "verify.budgets.min_retention=null"])
    texts = real_sentences(16)
    student = run / "distill" / "student"
    want = SentenceTransformer(str(student), device="cpu").encode(texts)
    with Encoder(run / "export" / "student") as enc:
        got = enc.embed(texts)
    assert got.shape == (16, 24) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize(
    ("modules", "pooling", "match"),
    [
        (["Transformer", "Pooling", "LayerNorm"], {"pooling_mode": "mean"}, "LayerNorm"),
        (["Transformer", "Pooling"], {"pooling_mode": "max"}, "pooling max"),
        (["Transformer", "Pooling"], {"pooling_mode": ["cls", "mean"]}, "cls \\+ mean"),
        (["Transformer", "Pooling"], {"pooling_mode_lasttoken": True}, "lasttoken"),
        (["Transformer", "Normalize", "Pooling"], {"pooling_mode": "mean"}, "are not"),
    ],
)
def test_sentence_transformers_modules_kdeploy_does_not_handle(
    family_dirs, tmp_path, modules, pooling, match
):
    import shutil

    path = tmp_path / "st"
    shutil.copytree(family_dirs["mpnet"], path)
    entries = []
    for i, name in enumerate(modules):
        sub = "" if name == "Transformer" else f"{i}_{name}"
        entries.append({"idx": i, "name": str(i), "path": sub, "type": f"x.{name}"})
        if sub:
            (path / sub).mkdir()
            (path / sub / "config.json").write_text(json.dumps(pooling))
    (path / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(ModelError, match=match):
        inspect_model(path)


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_static_int8(family_dirs, stsb_small, tmp_path, model_type):
    """ONNX Runtime's static Q/DQ INT8 on every family. MPNet's relative-position bucket
    nodes stay float (``Family.float_scopes``): quantized, their int64 bucket indices were
    garbage and ONNX Runtime refused the Gather."""
    import onnx

    from kdeploy.train.quantize import float_nodes

    run = tmp_path / "run"
    static = ["quantize.method=static", "quantize.format=qdq", "quantize.calibration_texts=64"]
    _run(
        family_dirs[model_type], stsb_small, run, [*TINY_OVERRIDES, *static], until_stage="quantize"
    )
    q = load_manifest(run).stages["quantize"].metrics
    assert q["student"]["method"] == "static" and q["student_hidden"]["identical"]
    src = run / "export" / "student"
    kept = float_nodes(onnx.load(str(src / "model.onnx")).graph, src / "config.json")
    assert bool(kept) == (model_type == "mpnet")
    assert all("/layer." not in n for n in kept)


def test_narrower_hidden_width_is_refused_before_any_stage(family_dirs, stsb_small, tmp_path):
    from kdeploy.core.errors import ProfileError

    with pytest.raises(ProfileError, match="slices only the feed-forward width of MPNet"):
        _run(family_dirs["mpnet"], stsb_small, tmp_path / "r", ["student.hidden_size=16"])
    assert not (tmp_path / "r" / "distill").exists()


def test_deberta_conv_layer_needs_the_first_layer(tmp_path):
    """DeBERTa-v2 (xlarge) applies encoder.conv after the first layer of its list only: a
    student keeps teacher layer 0 first, or is refused."""
    from transformers import DebertaV2Config, DebertaV2Model

    from kdeploy.train.layers import cut_layers

    kw = FAMILY_CONFIGS["deberta-v2"][1]
    model = DebertaV2Model(DebertaV2Config(vocab_size=100, conv_kernel_size=3, **kw)).eval()
    assert model.encoder.conv is not None
    assert cut_layers(model, [0, 3]).config.num_hidden_layers == 2
    with pytest.raises(ModelError, match="encoder.conv after its first layer"):
        cut_layers(model, [1, 3])


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_modelopt_ptq(family_dirs, stsb_small, tmp_path, model_type):
    """modelopt INT8 calibration without fine-tuning (quantize.method=ptq): a Q/DQ graph,
    lint-clean, every encoder Linear INT8, matching the fake-quantized torch model."""
    from kdeploy.onnxtools.layers import gemm_layers
    from kdeploy.onnxtools.qdq_lint import lint_qdq

    run = tmp_path / "run"
    ptq = ["quantize.method=ptq", "quantize.format=qdq", "quantize.activation_type=int8"]
    _run(family_dirs[model_type], stsb_small, run, [*TINY_OVERRIDES, *ptq], until_stage="quantize")
    q = load_manifest(run).stages["quantize"].metrics["student"]
    assert q["tool"] == "modelopt" and q["validation"]["passed"]
    int8 = run / "quantize" / "student" / "model.onnx"
    assert lint_qdq(int8) == []
    # DeBERTa's shared position keys run query_proj/key_proj a second time (16 GEMMs)
    encoder = [x for x in gemm_layers(int8) if "/layer" in x.node]
    assert len(encoder) >= (8 if model_type == "modernbert" else 12)
    assert all(x.weight_bits == 8 and x.activation_bits == 8 for x in encoder)
