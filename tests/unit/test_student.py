"""Layer selection and weight inheritance."""

from __future__ import annotations

import pytest
import torch

from kdeploy.errors import ModelError
from kdeploy.train.student import make_student, select_layers


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
