"""kdeploy.runtime: length bucketing, dynamic padding, order restored, runner factory."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from kdeploy.core.errors import ModelError
from kdeploy.data import load_task_data
from kdeploy.runtime import Encoder, open_model
from kdeploy.runtime.runners import open_model_file
from kdeploy.runtime.text import TextEncoder
from tests.conftest import centered_cosines, identity_margin


@pytest.fixture(scope="module")
def texts(stsb_small) -> list[str]:
    split = load_task_data(stsb_small, need_train=False).bench_split()
    return split.texts()[:70]


def test_pad_equals_the_tokenizers_own_padding(tiny_run, texts):
    deploy = tiny_run / "package" / "deploy"
    enc = TextEncoder(deploy / "tokenizer.json", 64)
    mine = enc.pad(enc.tokenize(texts[:9]))
    theirs = enc.encode(texts[:9])
    for k in theirs:
        np.testing.assert_array_equal(mine[k], theirs[k])
    wider = enc.pad(enc.tokenize(texts[:9]), pad_to_multiple_of=16)
    assert wider["input_ids"].shape[1] % 16 == 0
    assert wider["attention_mask"].sum() == theirs["attention_mask"].sum()


def test_bucketing_sorts_by_length_and_restores_order(tiny_run, texts):
    fp32 = tiny_run / "export" / "student"  # fp32: padding and batch mates change nothing
    with Encoder(fp32, batch_size=8, bucketing=True) as enc:
        lengths = [len(e.ids) for e in enc.text.tokenize(texts)]
        batches = enc.batches(lengths)
        bucketed = enc.embed(texts)
    # every text once; inside the layout lengths never decrease (sorted buckets)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(texts)))
    assert all(lengths[a] <= lengths[b] for a, b in zip(flat[:-1], flat[1:], strict=True))
    # the padded width of each batch is its own longest text, not the global longest
    widths = [max(lengths[i] for i in b) for b in batches]
    assert min(widths) < max(lengths)
    with Encoder(fp32, batch_size=8, bucketing=False) as enc:
        fixed = enc.embed(texts)
    with Encoder(fp32, batch_size=1) as enc:
        single = np.stack([enc.embed([t])[0] for t in texts[:12]])
    np.testing.assert_allclose(bucketed, fixed, atol=1e-5)
    np.testing.assert_allclose(bucketed[:12], single, atol=1e-5)


def test_int8_outputs_depend_only_on_the_batch_layout(tiny_run, texts):
    """Dynamic INT8: same texts + batch size + bucketing -> identical numbers; another
    layout moves them a little (why reference comparisons carry a tolerance)."""
    deploy = tiny_run / "package" / "deploy"
    with Encoder(deploy, batch_size=16) as enc:
        a = enc.embed(texts)
        b = enc.embed(texts)
    np.testing.assert_array_equal(a, b)
    with Encoder(deploy, batch_size=16, bucketing=False) as enc:
        c = enc.embed(texts)
    # another batch layout moves dynamic-INT8 outputs only slightly: centred cosine 0.99999
    # on the tiny BERT (unrelated sentences: near 0), each output nearest its own sentence
    assert centered_cosines(c, a).min() > 0.999
    unique = sorted({t: i for i, t in enumerate(texts)}.values())  # pairs repeat sentences
    assert identity_margin(c[unique], a[unique]) > 0


def test_run_dir_and_lazy_open(tiny_run, texts):
    enc = open_model(tiny_run)  # a run dir means its packaged model
    assert enc.dir == tiny_run / "package" / "deploy"
    try:
        v = enc.embed(texts[:3])  # no `with`: opened on first use
        assert v.shape == (3, 32)
        assert enc.embed([]).shape[0] == 0
        feeds = enc.tokenize(texts[:2])
        assert set(feeds) == set(enc.input_names)
    finally:
        enc.close()


def test_run_dir_without_package_is_a_clear_error(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "manifest.json", run / "manifest.json")
    with pytest.raises(ModelError, match="no packaged model"):
        Encoder(run)


def test_runner_factory(tiny_run, tmp_path):
    runner = open_model_file(tiny_run / "package" / "deploy" / "model.onnx")
    assert type(runner).__name__ == "OrtRunner"
    with pytest.raises(ModelError, match="no runner for model file"):
        open_model_file(tmp_path / "model.tflite")
    assert type(open_model_file(tmp_path / "model.plan")).__name__ == "TrtRunner"
