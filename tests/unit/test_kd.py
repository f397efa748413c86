"""Distillation losses and the training loop's choices (layer map, best epoch, early stop)."""

from __future__ import annotations

import math

import pytest
import torch

from kdeploy.config import DistillConfig
from kdeploy.train import kd


def test_logit_kd_is_zero_for_equal_logits_and_scaled_by_t2():
    t = torch.tensor([[2.0, -1.0, 0.5]])
    assert kd.logit_kd(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.0, 0.0, 0.0]])
    p = torch.softmax(t / 3.0, -1)
    manual = (p * (p.log() - math.log(1 / 3))).sum() * 9.0
    assert kd.logit_kd(s, t, 3.0).item() == pytest.approx(manual.item(), rel=1e-5)


def test_hard_label_ignores_unlabelled_rows():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    labels = torch.tensor([0, 1, -1])
    full = torch.nn.functional.cross_entropy(logits[:2], labels[:2])
    assert kd.hard_label(logits, labels).item() == pytest.approx(full.item())
    assert kd.hard_label(logits, torch.tensor([-1, -1, -1])).item() == 0.0


def test_hidden_mse_ignores_padding_and_projects():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = kd.hidden_mse(s, t, mask)
    s2 = s.clone()
    s2[0, 3:] += 100.0  # padding positions change: loss must not
    assert kd.hidden_mse(s2, t, mask).item() == pytest.approx(base.item())
    proj = torch.nn.Linear(4, 8, bias=False)
    assert kd.hidden_mse(torch.randn(2, 5, 4), t, mask, proj).dim() == 0


def test_attention_kl_zero_when_equal_and_handles_head_mismatch():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    mask = torch.ones(2, 5, dtype=torch.long)
    assert kd.attention_kl(a, a, mask).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    assert kd.attention_kl(b, a, mask).item() > 0
    assert kd.attention_kl(torch.softmax(torch.randn(2, 2, 5, 5), -1), a, mask).item() > 0


def test_total_loss_uses_only_losses_that_apply():
    cfg = DistillConfig(losses={"embedding_mse": 1.0, "logit_kd": 0.5})
    x = kd.Outputs(pooled=torch.randn(3, 4))
    y = torch.randn(3, 4)
    _, parts = kd.total_loss(
        x,
        "embedding",
        cfg,
        target=y,
        teacher=None,
        mask=torch.ones(3, 2),
        labels=None,
        layer_map=[],
    )
    assert set(parts) == {"embedding_mse"}
    _, parts = kd.total_loss(
        x,
        "classification",
        cfg,
        target=y,
        teacher=None,
        mask=torch.ones(3, 2),
        labels=None,
        layer_map=[],
    )
    assert set(parts) == {"logit_kd"}
    only_emb = DistillConfig(losses={"embedding_mse": 1.0, "logit_kd": 0.0})
    assert kd.applicable_losses(only_emb, "classification") == []
    with pytest.raises(ValueError, match="no enabled distillation loss"):
        kd.total_loss(
            x,
            "classification",
            only_emb,
            target=y,
            teacher=None,
            mask=torch.ones(3, 2),
            labels=None,
            layer_map=[],
        )


def _run_distill(tiny_bert, data_dir, tmp_path, **cfg_kw):
    from kdeploy.data import load_task_data
    from kdeploy.model_info import inspect_model
    from kdeploy.train.distill import distill

    info = inspect_model(tiny_bert)
    data = load_task_data(data_dir)
    items = [(t, None, None) for t in data.splits["train"].texts()[:96]]
    cfg = DistillConfig(batch_size=16, max_seq_length=32, **cfg_kw)
    return distill(
        info,
        cfg,
        [1, 3],
        items,
        tmp_path,
        dev=data.splits["dev"],
        progress=False,
        log=lambda m: None,
    )


def test_token_level_losses_train(tiny_bert, stsb_small, tmp_path):
    out = _run_distill(
        tiny_bert,
        stsb_small,
        tmp_path,
        epochs=6,
        learning_rate=3e-3,
        losses={"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_kl": 1.0},
        layer_map=[1, 3],
    )
    hist = out.record.history
    assert {"embedding_mse", "hidden_mse", "attention_kl"} <= set(hist[0])
    assert hist[-1]["hidden_mse"] < hist[0]["hidden_mse"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert out.record.layer_map == [1, 3]
    assert all("dev_score" in h for h in hist)


def test_best_epoch_is_kept_and_early_stop(tiny_bert, stsb_small, tmp_path, monkeypatch):
    import kdeploy.train.trainer as trainer

    scores = iter([50.0, 40.0, 30.0, 20.0])
    monkeypatch.setattr(trainer, "score", lambda *a, **k: next(scores))
    out = _run_distill(tiny_bert, stsb_small, tmp_path, epochs=4, early_stopping_patience=2)
    assert out.record.best_epoch == 1
    assert out.record.epochs_run == 3  # epochs 2 and 3 did not improve: stop
    assert out.record.stopped_early is True
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "best" / "student.safetensors"))
    final = load_file(str(tmp_path / "student" / "model.safetensors"))
    key = "encoder.layer.0.output.dense.weight"
    assert torch.equal(best[key], final[key])


def test_embedding_losses_go_through_the_projection():
    """A narrower student's pooled vector is compared with the teacher's after the learned
    projection: with a projection that maps it exactly onto the target, the loss is 0."""
    cfg = DistillConfig(losses={"embedding_mse": 1.0, "embedding_cosine": 1.0})
    torch.manual_seed(0)
    student, target = torch.randn(4, 4), torch.randn(4, 6)  # student width 4, teacher 6
    proj = torch.nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        proj.weight.copy_((torch.linalg.inv(student) @ target).T)
    args = dict(teacher=None, mask=torch.ones(4, 2), labels=None, layer_map=[])
    loss, parts = kd.total_loss(
        kd.Outputs(pooled=student), "embedding", cfg, target=target,
        embedding_projection=proj, **args,
    )  # fmt: skip
    assert set(parts) == {"embedding_mse", "embedding_cosine"}
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="needs an embedding_projection"):
        kd.total_loss(kd.Outputs(pooled=student), "embedding", cfg, target=target, **args)


def test_similarity_structure_losses():
    """similarity_mse ignores scale but not the angles between rows; the contrastive loss is
    low when each student row is closest to its own teacher row, high when rows are swapped."""
    torch.manual_seed(0)
    t = torch.randn(8, 16)
    assert kd.similarity_mse(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert kd.similarity_mse(torch.randn(8, 16), t).item() > 0.01
    rotated = t @ torch.linalg.qr(torch.randn(16, 16))[0]  # same structure, other vectors
    assert kd.similarity_mse(rotated, t).item() == pytest.approx(0.0, abs=1e-5)
    own = kd.contrastive(t, t, 0.05).item()
    swapped = kd.contrastive(t.roll(1, 0), t, 0.05).item()
    assert own < 0.01 and swapped > 5.0
    cfg = DistillConfig(
        losses={"embedding_mse": 0.0, "logit_kd": 0.0, "similarity_mse": 1.0, "contrastive": 1.0}
    )
    _, parts = kd.total_loss(
        kd.Outputs(pooled=t), "embedding", cfg, target=t, teacher=None,
        mask=torch.ones(8, 2), labels=None, layer_map=[],
    )  # fmt: skip
    assert set(parts) == {"similarity_mse", "contrastive"}
    assert kd.applicable_losses(cfg, "embedding") == ["similarity_mse", "contrastive"]
    assert kd.applicable_losses(cfg, "classification") == []


def test_projections_start_as_the_slicing():
    from kdeploy.train.optimization import make_projections

    dims = torch.tensor([0, 2, 5])
    proj = make_projections(3, 6, hidden_layers=2, embedding=True, student_dims=dims)
    x = torch.randn(5, 3)
    for lin in (*proj["hidden"], proj["embedding"]):
        y = lin(x)
        assert torch.equal(y[:, dims], x)
        assert torch.equal(y[:, [1, 3, 4]], torch.zeros(5, 3))
    assert make_projections(6, 6, hidden_layers=2, embedding=True) is None
    only_emb = make_projections(3, 6, hidden_layers=0, embedding=True)
    assert only_emb["hidden"] is None and only_emb["embedding"].weight.shape == (6, 3)
    assert make_projections(3, 6, hidden_layers=0, embedding=False) is None


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_classifier"])
def test_narrow_student_distils(fixture, request, stsb_small, sst2_small, tmp_path):
    """Sliced to half width (hidden, heads and FFN) it trains with every token-level loss,
    the projections are checkpointed, and the saved student has the narrow width."""
    from kdeploy.data import load_task_data
    from kdeploy.model_info import inspect_model
    from kdeploy.train.distill import distill

    model = request.getfixturevalue(fixture)
    info = inspect_model(model)
    data = load_task_data(stsb_small if info.kind == "embedding" else sst2_small)
    train = data.splits["train"]
    labels = train.labels if info.kind == "classification" else [None] * len(train)
    items = [(t, None, None if y is None else int(y)) for t, y in zip(
        train.texts_a[:96], labels[:96], strict=True)]  # fmt: skip
    own = {"embedding_mse": 1.0} if info.kind == "embedding" else {"logit_kd": 1.0}
    cfg = DistillConfig(
        batch_size=16, max_seq_length=32, epochs=4, learning_rate=3e-3,
        losses={**own, "hidden_mse": 1.0, "attention_kl": 1.0}, select_best=False,
    )  # fmt: skip
    out = distill(
        info, cfg, [1, 3], items, tmp_path, hidden_size=16, intermediate_size=32,
        progress=False, log=lambda m: None,
    )  # fmt: skip
    hist = out.record.history
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["hidden_mse"] < hist[0]["hidden_mse"]
    assert (out.hidden_size, out.intermediate_size) == (16, 32)
    saved = inspect_model(out.student_dir)
    assert (saved.hidden_size, saved.num_heads, saved.num_layers) == (16, 2, 2)
    extra = torch.load(tmp_path / "checkpoint" / "optim.pt", weights_only=True)
    keys = set(extra["projections"])
    assert {"hidden.0.weight", "hidden.1.weight"} <= keys
    assert ("embedding.weight" in keys) == (info.kind == "embedding")
    if info.kind == "embedding":  # sentence-transformers is told the student's width
        import json

        pooling = json.loads((out.student_dir / "1_Pooling" / "config.json").read_text())
        assert pooling["word_embedding_dimension"] == 16
