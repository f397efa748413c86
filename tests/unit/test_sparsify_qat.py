"""2:4 sparsity and INT8 QAT: masks, fine-tuning with masks fixed, Q/DQ export, the chain in
the pipeline and report, and resuming an interrupted QAT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdeploy.api import RunRequest, run_pipeline
from kdeploy.config import SparsifyConfig, load_profile
from kdeploy.core.errors import Interrupted
from kdeploy.engine.manifest import load_manifest
from kdeploy.onnxtools.layers import gemm_layers, is_2to4, max_nonzeros_per_group, sparsity_problems
from kdeploy.onnxtools.qdq_lint import lint_qdq
from kdeploy.stages import RunOptions
from tests.conftest import TINY_OVERRIDES, tiny_hf_model

SPARSE_QAT = [
    *TINY_OVERRIDES,
    "sparsify.enabled=true",
    "sparsify.min_features=8",
    "quantize.method=qat",
    "quantize.format=qdq",
    "quantize.activation_type=int8",
    "quantize.calibration_texts=64",
]


def run(model, data, out, extra=(), **kw):
    req = RunRequest(
        profile=load_profile("cpu-int8", [*SPARSE_QAT, *extra]),
        model_dir=model,
        data_dir=data,
        out_dir=out,
        options=RunOptions(progress=False),
        **kw,
    )
    return run_pipeline(req, log=lambda m: None)


@pytest.fixture(scope="module")
def sparse_qat_run(tmp_path_factory, tiny_bert, stsb_small):
    out = tmp_path_factory.mktemp("sparse-qat") / "run"
    run(tiny_bert, stsb_small, out)
    return out


def test_2to4_check_reads_groups_along_the_input_dimension():
    w = np.array([[1, 0, 0, 2], [0, 3, 4, 0]], dtype=np.float32).T  # [K=4, N=2]
    assert is_2to4(w) and max_nonzeros_per_group(w) == 2
    w[0, 1] = 5  # column 1 now has 3 non-zeros in its group of 4 inputs
    assert not is_2to4(w) and max_nonzeros_per_group(w) == 3
    assert not is_2to4(np.zeros((6, 2)))  # K not a multiple of 4: no 2:4 groups
    assert is_2to4(np.full((4, 3), 7, dtype=np.int8) * np.array([[1], [1], [0], [0]]), zero=0)
    # an asymmetric uint8 weight's zero is its zero point
    assert is_2to4(np.array([[128], [128], [3], [9]], dtype=np.uint8), zero=128)


def _tiny_bert_module(classifier: bool = False):
    cls_name = "BertForSequenceClassification" if classifier else "BertModel"
    return tiny_hf_model(cls_name, vocab_size=50, num_hidden_layers=2, max_position_embeddings=64)


def test_layer_choice_keeps_heads_small_layers_and_globs_dense():
    from kdeploy.train.sparsify import choose_layers

    model = _tiny_bert_module(classifier=True)
    cfg = SparsifyConfig(enabled=True, min_features=8)
    layers = {x.name: x for x in choose_layers(model, cfg)}
    assert not layers["classifier"].sparse and layers["classifier"].reason == "dense_layers"
    assert not layers["bert.pooler.dense"].sparse
    assert layers["bert.encoder.layer.0.intermediate.dense"].sparse
    small = {x.name: x for x in choose_layers(model, SparsifyConfig(enabled=True))}
    assert not small["bert.encoder.layer.0.attention.self.query"].sparse  # 32 < 64
    assert "min_features" in small["bert.encoder.layer.0.attention.self.query"].reason
    custom = SparsifyConfig(enabled=True, min_features=8, dense_layers=["*layer.1.*"])
    chosen = {x.name: x.sparse for x in choose_layers(model, custom)}
    assert (
        chosen["bert.encoder.layer.0.output.dense"]
        and not chosen["bert.encoder.layer.1.output.dense"]
    )
    assert chosen["bert.pooler.dense"]  # the default list was replaced


def test_magnitude_masks_keep_the_two_largest_of_every_four():
    from kdeploy.train.sparsify import check_masks, choose_layers, compute_masks, load_weights

    model = _tiny_bert_module()
    cfg = SparsifyConfig(enabled=True, min_features=8)
    layers = choose_layers(model, cfg)
    before = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")
    }
    masks, weights = compute_masks(model, layers, cfg, None)
    assert set(masks) == {x.name for x in layers if x.sparse} and len(masks) == 12
    for name, mask in masks.items():
        w = before[name].abs().reshape(-1, 4)  # rows of [out, in]: groups along the input
        m = mask.reshape(-1, 4)
        assert (m.sum(1) == 2).all()
        kept_min = torch.where(m, w, torch.inf).min(1).values
        dropped_max = torch.where(~m, w, -torch.inf).max(1).values
        assert (kept_min >= dropped_max).all(), name
        torch.testing.assert_close(weights[name], before[name] * mask)
    assert torch.equal(
        model.encoder.layer[0].output.dense.weight, before["encoder.layer.0.output.dense"]
    )
    load_weights(model, weights)
    assert check_masks(model, masks) == []


def test_sparsegpt_masks_are_2to4_and_follow_the_hessian():
    from kdeploy.train.sparsify import check_masks, choose_layers, compute_masks, load_weights

    model = _tiny_bert_module()
    cfg = SparsifyConfig(enabled=True, min_features=8, method="sparsegpt")
    x = torch.randint(1, 50, (8, 12))
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)}]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks, weights = compute_masks(model, choose_layers(model, cfg), cfg, batches)
    magnitude, _ = compute_masks(
        model, choose_layers(model, cfg), SparsifyConfig(enabled=True, min_features=8), None
    )
    differ = [n for n in masks if not torch.equal(masks[n], magnitude[n])]
    assert len(differ) >= len(masks) // 2  # the inputs' statistics changed the choice
    for n, p in model.named_parameters():  # the search ran on a copy
        assert torch.equal(p, before[n]), n
    # the kept weights moved (SparseGPT's compensating update), the pruned ones are zero
    moved = [n for n in masks if not torch.equal(weights[n], before[f"{n}.weight"] * masks[n])]
    assert len(moved) == len(masks)
    load_weights(model, weights)
    assert check_masks(model, masks) == []
    with pytest.raises(ValueError, match="calibration"):
        compute_masks(model, choose_layers(model, cfg), cfg, None)


def test_sparsegpt_update_lowers_the_output_error_of_its_mask():
    """On correlated inputs the OBS update beats keeping the same mask's dense weights,
    and SparseGPT's mask plus update beats magnitude pruning, in ||XW^T - XW'^T||."""
    from kdeploy.train.sparsegpt import prune_2to4

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g)
    x = torch.randn(2048, 64, generator=g) @ mix  # correlated features
    w = torch.randn(32, 64, generator=g)
    keep, new = prune_2to4(w, 2 * x.T @ x / len(x))
    groups = keep.reshape(32, 16, 4)
    assert (groups.sum(-1) == 2).all() and torch.equal(new, new * keep)
    ref = x @ w.T

    def err(v):
        return float(((x @ v.T - ref) ** 2).mean())

    top = w.abs().reshape(32, 16, 4).topk(2, dim=-1).indices
    magnitude = torch.zeros(32, 16, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(32, 64)
    assert err(new) < 0.7 * err(w * keep)
    assert err(new) < 0.7 * err(w * magnitude)


def test_sparsegpt_on_white_inputs_is_magnitude_pruning():
    """H = I: every score is w^2 and no pruned error reaches another weight's column."""
    from kdeploy.train.sparsegpt import prune_2to4

    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    keep, new = prune_2to4(w, torch.eye(16), damp=1e-9)
    top = w.abs().reshape(8, 4, 4).topk(2, dim=-1).indices
    magnitude = torch.zeros(8, 4, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(8, 16)
    assert torch.equal(keep, magnitude)
    torch.testing.assert_close(new, w * keep)
    with pytest.raises(ValueError, match="multiple of 4"):
        prune_2to4(torch.ones(2, 6), torch.eye(6))


def test_sparsegpt_hessians_leave_padding_out_and_blocks_go_in_order():
    from kdeploy.train.sparsegpt import collect_hessians, layer_groups

    model = _tiny_bert_module()
    name = "encoder.layer.0.attention.self.query"
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[9, 10, 0, 0]])
    padded = [{"input_ids": torch.cat([a, b]), "attention_mask": (torch.cat([a, b]) > 0).long()}]
    apart = [
        {"input_ids": a, "attention_mask": torch.ones_like(a)},
        {"input_ids": b[:, :2], "attention_mask": torch.ones_like(b[:, :2])},
    ]
    # rows 0 and 1 of the padded batch at position < 2 match the unpadded run token for token
    h_padded = collect_hessians(model, [name], padded)[name]
    h_apart = collect_hessians(model, [name], apart)[name]
    torch.testing.assert_close(h_padded, h_apart)
    nopad = [{"input_ids": torch.cat([a, b])}]  # no mask: padding counted, H differs
    assert not torch.allclose(collect_hessians(model, [name], nopad)[name], h_apart)
    assert layer_groups(
        [
            "pooler.dense",
            "encoder.layer.10.output.dense",
            "encoder.layer.2.intermediate.dense",
            "encoder.layer.2.output.dense",
        ]
    ) == [
        ["encoder.layer.2.intermediate.dense", "encoder.layer.2.output.dense"],
        ["encoder.layer.10.output.dense"],
        ["pooler.dense"],
    ]


def test_masks_survive_an_optimizer_step_only_when_reapplied():
    from kdeploy.train.sparsify import (
        apply_masks,
        check_masks,
        choose_layers,
        compute_masks,
        load_weights,
    )

    model = _tiny_bert_module().train()
    cfg = SparsifyConfig(enabled=True, min_features=8)
    masks, weights = compute_masks(model, choose_layers(model, cfg), cfg, None)
    load_weights(model, weights)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(input_ids=torch.randint(0, 50, (4, 10))).last_hidden_state.pow(2).mean().backward()
    opt.step()
    assert check_masks(model, masks)  # AdamW moved the pruned weights
    apply_masks(model, masks)
    assert check_masks(model, masks) == []


def test_sparse_qat_chain_in_the_pipeline(sparse_qat_run):
    run_dir = sparse_qat_run
    m = load_manifest(run_dir)
    assert list(m.stages) == [
        "distill",
        "sparsify",
        "export",
        "quantize",
        "bench",
        "verify",
        "package",
    ]
    sp = m.stages["sparsify"].metrics
    assert sp["sparse_layers"] == 12 and sp["dense_layers"] == {"pooler.dense": "dense_layers"}
    assert sp["fine_tune"]["steps"] > 0
    sparse = gemm_layers(run_dir / "export" / "sparse" / "model.onnx")
    dense = gemm_layers(run_dir / "export" / "student" / "model.onnx")
    assert len(sparse) == 12 and all(x.is_2to4 and x.weight_bits == 32 for x in sparse)
    assert not any(x.is_2to4 for x in dense)
    int8 = run_dir / "quantize" / "student" / "model.onnx"
    layers = gemm_layers(int8)
    assert all(x.is_2to4 and x.weight_bits == 8 and x.activation_bits == 8 for x in layers)
    assert lint_qdq(int8) == []
    q = m.stages["quantize"].metrics
    assert q["student"]["tool"] == "modelopt" and q["student"]["fine_tune"]["steps"] > 0
    assert q["student"]["validation"]["passed"]
    assert q["qdq_lint"]["findings"] == [] and q["sparsity"]["sparse_2to4"] == 12
    verify = json.loads((run_dir / "verify" / "verify.json").read_text())
    assert {"student_fp32", "student_sparse", "student_int8"} <= set(verify["models"])
    assert verify["deploy"] == "student_int8"
    report = json.loads((run_dir / "package" / "report.json").read_text())
    chain = [x["model"] for x in report["chain"] if x["kind"] == "chain"]
    assert chain == ["student_fp32", "student_sparse", "student_int8"]
    row = next(x for x in report["layers"] if x["layer"] == "encoder.layer.1.output.dense")
    assert row == {
        "layer": "encoder.layer.1.output.dense",
        "in": 64,
        "out": 32,
        "student_fp32": "dense fp32",
        "student_sparse": "2:4 fp32",
        "student_int8": "2:4 int8",
    }
    md = (run_dir / "package" / "report.md").read_text()
    assert "## Layers" in md and "Kept dense by sparsify: pooler.dense (dense_layers)" in md


def test_rerun_reuses_sparsify_and_qat(sparse_qat_run, tiny_bert, stsb_small, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(sparse_qat_run, copy)
    res = run(tiny_bert, stsb_small, copy)
    assert res.ran == [] and "sparsify" in res.reused and "quantize" in res.reused


def test_qat_resumes_after_ctrl_c_to_identical_artifacts(
    sparse_qat_run, tiny_bert, stsb_small, tmp_path, monkeypatch
):
    """Ctrl-C right after QAT checkpointed its first epoch; the rerun resumes there and
    ends with the same Q/DQ model as the uninterrupted run."""
    import shutil

    from kdeploy.train import checkpoint

    extra = ["quantize.fine_tune.epochs=2"]
    clean = tmp_path / "clean"
    shutil.copytree(sparse_qat_run, clean)
    run(tiny_bert, stsb_small, clean, extra, until_stage="quantize")
    resumed = tmp_path / "resumed"
    shutil.copytree(sparse_qat_run, resumed)
    real_save = checkpoint.save
    calls = []

    def save_then_stop(ckpt, *args):
        real_save(ckpt, *args)
        calls.append(ckpt)
        if "quantize.tmp" in str(ckpt):
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted, match="quantize resumes from its checkpoint"):
        run(tiny_bert, stsb_small, resumed, extra, until_stage="quantize")
    assert (resumed / "quantize.tmp" / "checkpoint" / "state.json").is_file()
    monkeypatch.setattr(checkpoint, "save", real_save)
    run(tiny_bert, stsb_small, resumed, extra, until_stage="quantize")
    a = (clean / "quantize" / "student" / "model.onnx").read_bytes()
    b = (resumed / "quantize" / "student" / "model.onnx").read_bytes()
    assert a == b


def test_export_without_quantizers_is_caught(sparse_qat_run):
    from kdeploy.core.errors import ExportError
    from kdeploy.onnxtools.checks import expect_int8

    with pytest.raises(ExportError, match="without Q/DQ"):
        expect_int8(
            sparse_qat_run / "export" / "sparse" / "model.onnx", ["encoder.layer.0.output.dense"]
        )
    expect_int8(
        sparse_qat_run / "quantize" / "student" / "model.onnx", ["encoder.layer.0.output.dense"]
    )


def test_sparsity_problems_name_dense_and_missing_layers(sparse_qat_run):
    dense = gemm_layers(sparse_qat_run / "export" / "student" / "model.onnx")
    problems = sparsity_problems(dense, {"encoder.layer.0.output.dense", "encoder.layer.9.x"})
    assert problems[0].startswith("encoder.layer.0.output.dense: not 2:4")
    assert problems[1] == "encoder.layer.9.x: no GEMM in the graph"


def test_profiles_validate_the_modelopt_methods():
    from kdeploy.core.errors import ProfileError

    with pytest.raises(ProfileError, match="qat writes symmetric int8 Q/DQ"):
        load_profile("cpu-int8", ["quantize.method=qat"])  # cpu-int8 is qoperator
    p = load_profile(
        "cpu-int8", ["quantize.method=ptq", "quantize.format=qdq", "quantize.activation_type=int8"]
    ).profile
    assert p.quantize.in_torch and not load_profile("cpu-int8").profile.quantize.in_torch
    with pytest.raises(ProfileError, match="sparsify.method"):
        load_profile("cpu-int8", ["sparsify.method=obs"])


def test_either_compression_alone(tiny_run_copy, tiny_bert, stsb_small):
    """A profile may use sparsify without INT8 (the sparse student is deployed) or QAT
    without sparsify (every GEMM INT8, none 2:4); the pipeline's order is fixed."""
    from kdeploy.stages import ORDER

    assert ORDER.index("sparsify") < ORDER.index("export") < ORDER.index("quantize")
    qat_only = [x for x in SPARSE_QAT if not x.startswith("sparsify.")]
    req = RunRequest(
        profile=load_profile("cpu-int8", qat_only),
        model_dir=tiny_bert,
        data_dir=stsb_small,
        out_dir=tiny_run_copy,
        options=RunOptions(progress=False),
    )
    res = run_pipeline(req, log=lambda m: None)
    assert "distill" in res.reused and "sparsify" in res.skipped and "quantize" in res.ran
    layers = gemm_layers(tiny_run_copy / "quantize" / "student" / "model.onnx")
    assert layers and all(x.weight_bits == 8 and not x.is_2to4 for x in layers)
    sparse_only = [
        *TINY_OVERRIDES,
        "sparsify.enabled=true",
        "sparsify.min_features=8",
        "target.precision=fp32",
        "quantize.enabled=false",
    ]
    req.profile = load_profile("cpu-int8", sparse_only)
    res = run_pipeline(req, log=lambda m: None)
    assert "quantize" in res.skipped and "sparsify" in res.ran
    verify = json.loads((tiny_run_copy / "verify" / "verify.json").read_text())
    assert verify["deploy"] == "student_sparse"
    deployed = gemm_layers(tiny_run_copy / "package" / "deploy" / "model.onnx")
    assert deployed and all(x.is_2to4 and x.weight_bits == 32 for x in deployed)


def test_classifier_teacher_through_sparsify_and_qat(tmp_path, tiny_classifier, sst2_small):
    """Sequence classifiers take the same path: logit KD in both fine-tunings, the head
    and pooler stay dense and float, the Q/DQ logits graph is lint-clean."""
    out = tmp_path / "run"
    run(tiny_classifier, sst2_small, out, until_stage="verify")
    m = load_manifest(out)
    dense = m.stages["sparsify"].metrics["dense_layers"]
    assert set(dense) == {"bert.pooler.dense", "classifier"}
    q = m.stages["quantize"].metrics["student"]
    assert set(q["float_layers"]) == {"bert.pooler.dense", "classifier"}
    assert "logit_kd" in q["fine_tune"]["losses"]
    int8 = out / "quantize" / "student" / "model.onnx"
    assert lint_qdq(int8) == []
    layers = gemm_layers(int8)
    encoder = [x for x in layers if "encoder" in x.node]
    assert len(encoder) == 12 and all(x.is_2to4 and x.weight_bits == 8 for x in encoder)
    head = [x for x in layers if "classifier" in x.node or "pooler" in x.node]
    assert head and all(x.weight_bits == 32 and not x.is_2to4 for x in head)
    verify = json.loads((out / "verify" / "verify.json").read_text())
    assert verify["models"]["student_int8"]["metric"] == "accuracy"
