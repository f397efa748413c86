"""Layer selection and weight inheritance."""

from __future__ import annotations

import pytest
import torch

from kdeploy.core.errors import ModelError
from kdeploy.train.layers import select_layers
from kdeploy.train.student import make_student
from tests.conftest import tiny_hf_model


@pytest.mark.parametrize(
    "n, k, strategy, keep, want",
    [
        (6, 3, "uniform", None, [0, 2, 5]),
        (6, 2, "uniform", None, [0, 5]),
        (12, 4, "uniform", None, [0, 3, 7, 11]),
        (6, 1, "uniform", None, [5]),
        (6, 3, "bottom", None, [0, 1, 2]),
        (6, 3, "top", None, [3, 4, 5]),
        (6, 3, "explicit", [0, 2, 5], [0, 2, 5]),
        (6, 6, "uniform", None, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_select_layers(n, k, strategy, keep, want):
    assert select_layers(n, k, strategy, keep) == want


def test_select_layers_errors():
    with pytest.raises(ModelError, match="only 6"):
        select_layers(6, 8, "uniform")
    with pytest.raises(ModelError, match=r"layers \[7\]"):
        select_layers(6, 2, "explicit", [0, 7])


def test_student_inherits_teacher_weights():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    teacher = BertModel(
        BertConfig(
            vocab_size=100,
            hidden_size=16,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).eval()
    student = make_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2
    assert len(student.encoder.layer) == 2
    assert len(teacher.encoder.layer) == 4  # the teacher is untouched
    for s_i, t_i in enumerate([1, 3]):
        s_sd = student.encoder.layer[s_i].state_dict()
        t_sd = teacher.encoder.layer[t_i].state_dict()
        for k in t_sd:
            assert torch.equal(s_sd[k], t_sd[k])
    assert torch.equal(
        student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight
    )
    # independent copies: training the student leaves the teacher alone
    with torch.no_grad():
        student.encoder.layer[0].output.dense.weight.add_(1.0)
    assert not torch.equal(
        student.encoder.layer[0].output.dense.weight, teacher.encoder.layer[1].output.dense.weight
    )
    ids = torch.randint(0, 100, (2, 7))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 7, 16)


# ------------------------------------------------------------------ narrower students


def _calibration(n_batches: int = 3) -> list[dict]:
    """Random token batches with some padding (masked out of the importance)."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(3, 100, (4, 11), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        mask[3, 3:] = 0
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


CAL = _calibration()


def _outputs(model, ids):
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


MODELS = [
    ("BertModel", {}),
    ("BertForSequenceClassification", {}),
    ("RobertaForSequenceClassification", {"pad_token_id": 1}),
    ("ElectraForSequenceClassification", {"embedding_size": 32}),
    ("ElectraForSequenceClassification", {"embedding_size": 16}),
]


@pytest.mark.parametrize("cls_name, kw", MODELS)
def test_sliced_to_full_width_is_the_teacher(cls_name, kw):
    from kdeploy.train.layers import cut_layers

    teacher = tiny_hf_model(cls_name, **kw)
    ids = torch.randint(3, 100, (3, 9))
    cut = cut_layers(teacher, [1, 3])
    full = make_student(teacher, [1, 3], hidden_size=32, intermediate_size=64, batches=CAL)
    assert full is not cut
    with torch.no_grad():
        torch.testing.assert_close(_outputs(full, ids), _outputs(cut, ids), rtol=0, atol=1e-6)
    for name, tensor in cut.state_dict().items():
        assert torch.equal(full.state_dict()[name], tensor), name


@pytest.mark.parametrize("cls_name, kw", MODELS)
def test_narrow_student_runs_at_its_width(cls_name, kw):
    teacher = tiny_hf_model(cls_name, **kw)
    student = make_student(teacher, [0, 3], hidden_size=16, intermediate_size=24, batches=CAL)
    cfg = student.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (16, 2, 24)
    assert cfg.num_hidden_layers == 2
    assert teacher.config.hidden_size == 32  # the teacher is untouched
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        out = student(input_ids=ids, output_attentions=True, output_hidden_states=True)
    assert out.hidden_states[-1].shape == (2, 7, 16)
    assert out.attentions[0].shape == (2, 2, 7, 7)
    n_s = sum(p.numel() for p in student.parameters())
    assert n_s < sum(p.numel() for p in teacher.parameters()) / 2


def test_kept_weights_are_the_teachers_rows_and_columns():
    from kdeploy.train.layers import cut_layers
    from kdeploy.train.width import slice_model, width_plan

    teacher = tiny_hf_model("BertForSequenceClassification")
    cut = cut_layers(teacher, [1, 3])
    plan = width_plan(cut, 16, 24, CAL)
    student = slice_model(cut, plan)
    h = plan.hidden
    assert len(h) == 16 and torch.equal(h, torch.sort(h).values)
    t, s = cut.state_dict(), student.state_dict()
    assert torch.equal(
        s["bert.embeddings.word_embeddings.weight"],
        t["bert.embeddings.word_embeddings.weight"][:, h],
    )
    assert torch.equal(
        s["bert.embeddings.position_embeddings.weight"],
        t["bert.embeddings.position_embeddings.weight"][:, h],
    )
    assert torch.equal(
        s["bert.embeddings.LayerNorm.weight"], t["bert.embeddings.LayerNorm.weight"][h]
    )
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        heads = plan.heads[i]
        assert len(heads) == 2
        rows = torch.cat([torch.arange(8) + 8 * int(k) for k in heads])
        for m in ("query", "key", "value"):
            w = f"{p}attention.self.{m}."
            assert torch.equal(s[w + "weight"], t[w + "weight"][rows][:, h])
            assert torch.equal(s[w + "bias"], t[w + "bias"][rows])
        w = f"{p}attention.output.dense."
        assert torch.equal(s[w + "weight"], t[w + "weight"][h][:, rows])
        assert torch.equal(s[w + "bias"], t[w + "bias"][h])
        f = plan.ffn[i]
        assert len(f) == 24
        w = f"{p}intermediate.dense."
        assert torch.equal(s[w + "weight"], t[w + "weight"][f][:, h])
        assert torch.equal(s[w + "bias"], t[w + "bias"][f])
        w = f"{p}output.dense."
        assert torch.equal(s[w + "weight"], t[w + "weight"][h][:, f])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            for x in ("weight", "bias"):
                assert torch.equal(s[f"{p}{ln}.{x}"], t[f"{p}{ln}.{x}"][h])
    assert torch.equal(s["bert.pooler.dense.weight"], t["bert.pooler.dense.weight"][h][:, h])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"][:, h])
    assert torch.equal(s["classifier.bias"], t["classifier.bias"])


def test_importance_keeps_the_units_that_matter():
    """Units that write nothing are dropped (and dropping them changes nothing); a hidden
    dim every LayerNorm scales up is kept."""
    from kdeploy.train.layers import cut_layers
    from kdeploy.train.width import measure_importance, width_plan

    teacher = tiny_hf_model()
    dead = torch.tensor([3, 10, 17, 40, 41, 63])
    with torch.no_grad():
        for layer in teacher.encoder.layer:
            layer.output.dense.weight[:, dead] = 0.0  # these neurons write nothing
        teacher.encoder.layer[1].attention.output.dense.weight[:, 8:16] = 0.0  # nor head 1
        for name, module in teacher.named_modules():
            if name.endswith("LayerNorm"):
                module.weight[5] = 20.0
    ids = torch.randint(3, 100, (3, 9))
    # FFN only: dropping neurons that write nothing leaves the function as it was
    ffn_only = make_student(teacher, [0, 1, 2, 3], intermediate_size=58, batches=CAL)
    with torch.no_grad():
        torch.testing.assert_close(
            _outputs(ffn_only, ids), _outputs(teacher, ids), atol=1e-5, rtol=1e-5
        )
    cut = cut_layers(teacher, [0, 1, 2, 3])
    imp = measure_importance(cut, CAL)
    assert all(bool((f[dead] == 0).all()) and bool((f[f != 0] > 0).all()) for f in imp.ffn)
    assert imp.heads[1][1] == 0 and int(imp.hidden.argmax()) == 5
    plan = width_plan(cut, 24, 58, CAL)
    for kept in plan.ffn:
        assert not set(dead.tolist()) & set(kept.tolist())
    assert 1 not in plan.heads[1].tolist() and len(plan.heads[1]) == 3
    assert 5 in plan.hidden.tolist()


def test_importance_ignores_padding():
    from kdeploy.train.layers import cut_layers
    from kdeploy.train.width import measure_importance

    cut = cut_layers(tiny_hf_model(), [0, 3])
    a = measure_importance(cut, CAL)
    noisy = [{**b, "input_ids": torch.where(b["attention_mask"] == 1, b["input_ids"], 77)}
             for b in CAL]  # fmt: skip
    b = measure_importance(cut, noisy)
    torch.testing.assert_close(a.hidden, b.hidden)
    for x, y in zip(a.ffn + a.heads, b.ffn + b.heads, strict=True):
        torch.testing.assert_close(x, y)


def test_width_errors():
    teacher = tiny_hf_model()
    with pytest.raises(ModelError, match="wider than the teacher's 32"):
        make_student(teacher, [0, 1], hidden_size=40, batches=CAL)
    with pytest.raises(ModelError, match="whole number of the teacher's attention heads"):
        make_student(teacher, [0, 1], hidden_size=20, batches=CAL)
    with pytest.raises(ModelError, match="intermediate_size 65 is wider"):
        make_student(teacher, [0, 1], intermediate_size=65, batches=CAL)
