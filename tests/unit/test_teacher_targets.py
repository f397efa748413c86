"""The teacher's KD targets by ONNX Runtime fp32: the same numbers as torch's, cached across
the run's training stages, and torch when ONNX Runtime would not give the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdeploy.config import load_profile
from kdeploy.data import training_items
from kdeploy.model_info import inspect_model
from kdeploy.train import teacher_onnx
from kdeploy.train.loading import load_hf_model, load_tokenizer
from kdeploy.train.teacher import fastest_exact_targets, prepare_teacher, teacher_targets
from tests.conftest import build_tiny_st, shared_data


def _items(kind: str, n: int = 120):
    data = shared_data("stsb" if kind == "embedding" else "sst2")
    return training_items(data, None, kind, cap=n, seed=0)


def _both(model_dir: Path, tmp_path: Path, kind: str):
    info = inspect_model(model_dir, task="auto")
    items = _items(kind)
    tok = load_tokenizer(info.path)
    model = load_hf_model(info).eval()
    cpu = torch.device("cpu")
    ref = teacher_targets(model, tok, info, items, 64, 32, cpu, progress=False)
    got, record = fastest_exact_targets(
        model, tok, info, items, 64, 32, cpu,
        cache_dir=tmp_path / "cache", allow_pickle=False, progress=False, log=lambda m: None,
    )  # fmt: skip
    return ref, got, record


def test_onnx_runtime_targets_equal_torch_for_an_embedding_teacher(tiny_bert, tmp_path):
    ref, got, record = _both(tiny_bert, tmp_path, "embedding")
    assert record.engine == "onnxruntime"
    assert record.check_max_abs_diff is not None and record.check_max_abs_diff < 1e-5
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_st_teacher_targets_stay_before_dense_and_normalize(tmp_path):
    """A sentence-transformers teacher (MPNet: no token types) with CLS pooling, Dense and
    Normalize: the targets are the pooled transformer output, as in torch (the exported
    graph is cut before the pooling, so ONNX Runtime's numbers are not the normalised Dense
    output)."""
    st = build_tiny_st(tmp_path / "st", "mpnet", pooling="cls", dense=24)
    ref, got, record = _both(st, tmp_path, "embedding")
    assert record.engine == "onnxruntime"
    assert got.shape[1] == ref.shape[1] != 24
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_onnx_runtime_targets_equal_torch_for_a_classifier(tiny_classifier, tmp_path):
    ref, got, record = _both(tiny_classifier, tmp_path, "classification")
    assert record.engine == "onnxruntime"
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_a_mismatch_falls_back_to_torch_and_says_so(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_onnx, "MAX_ABS_DIFF", 0.0)
    info = inspect_model(tiny_bert, task="auto")
    items = _items("embedding", 40)
    lines: list[str] = []
    got, record = fastest_exact_targets(
        load_hf_model(info).eval(), load_tokenizer(info.path), info, items, 64, 32,
        torch.device("cpu"), cache_dir=tmp_path, allow_pickle=False, progress=False,
        log=lines.append,
    )  # fmt: skip
    assert record.engine == "torch" and record.reason == "onnxruntime differed"
    assert any("computing them in torch" in line for line in lines)


def test_targets_are_shared_across_stages_and_keyed_by_the_teacher(tiny_bert, tmp_path):
    cfg = load_profile("cpu-int8", ["distill.batch_size=16"]).profile.distill
    info = inspect_model(tiny_bert, task="auto")
    items = _items("embedding", 60)
    cache = tmp_path / "cache"
    logs: list[str] = []
    first = prepare_teacher(
        info, cfg, items, tmp_path / "distill", progress=False, log=logs.append, cache_dir=cache
    )
    assert any("teacher targets by onnxruntime" in line for line in logs)
    logs.clear()
    second = prepare_teacher(
        info, cfg, items, tmp_path / "quantize", progress=False, log=logs.append, cache_dir=cache
    )
    assert any("reusing cached teacher targets" in line for line in logs), logs
    np.testing.assert_array_equal(first.targets, second.targets)
    assert not list(cache.glob("*.tmp*"))
    # other items: computed again
    logs.clear()
    prepare_teacher(
        info, cfg, items[:30], tmp_path / "x", progress=False, log=logs.append, cache_dir=cache
    )
    assert not any("reusing" in line for line in logs)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_numpy_pooling_is_torch_pooling(pooling):
    from kdeploy.train.evaluate import pool

    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 7, 5)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6])
    ref = pool(torch.from_numpy(h), torch.from_numpy(mask), pooling).numpy()
    np.testing.assert_allclose(teacher_onnx.pool_numpy(h, mask, pooling), ref, atol=1e-6)
