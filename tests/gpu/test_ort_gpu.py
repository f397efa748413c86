"""ONNX Runtime's CUDA EP on a GPU (needs onnxruntime-gpu): the same outputs as the CPU EP,
and the IO-binding call bench times leaves its outputs on the GPU and computes the same
numbers. The CPU half runs everywhere; the GPU half skips (``need_cuda_ep``) without one."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.config import load_profile
from kdeploy.config.settings import runner_settings
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.runners import OrtRunner, make_runner
from kdeploy.runtime.text import TextEncoder
from tests.conftest import real_sentences
from tests.gpu.conftest import need_cuda_ep

pytestmark = pytest.mark.gpu


def test_cuda_ep_and_io_binding_match_the_cpu(tiny_run):
    src = tiny_run / "export" / "student"
    card = ModelCard.load(src)
    feeds = TextEncoder(src / card.tokenizer_file, card.max_seq_length).encode(real_sentences(16))
    with OrtRunner(src / card.model_file, outputs=[card.output]) as cpu:
        want = cpu.infer(feeds)[card.output]
    assert want.shape == (16, 32)
    need_cuda_ep()
    settings = runner_settings(load_profile("a100-int8").profile)
    with make_runner(src, card, settings=settings) as gpu:
        assert gpu.on_gpu
        got = gpu.infer(feeds)[card.output]
        bound = gpu.bench_fn(feeds)()  # the timed call: IO binding, outputs on the GPU
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert [v.device_name().lower() for v in bound] == ["cuda"]
    np.testing.assert_allclose(bound[0].numpy(), want, atol=1e-3)
