"""ONNX Runtime's CUDA EP on a GPU (needs onnxruntime-gpu): same outputs as the CPU EP, and
the IO-binding bench call runs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from kdeploy.config import load_profile
from kdeploy.config.settings import runner_settings
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.runners import OrtRunner, make_runner
from kdeploy.runtime.text import TextEncoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="onnxruntime has no CUDA EP here (pip install 'kdeploy[gpu]')",
    ),
]


def test_cuda_ep_matches_cpu(tiny_run):
    src = tiny_run / "export" / "student"
    card = ModelCard.load(src)
    feeds = TextEncoder(src / card.tokenizer_file, card.max_seq_length).encode(
        ["a man is playing a guitar", "two dogs run in a field"]
    )
    with OrtRunner(src / card.model_file, outputs=[card.output]) as cpu:
        want = cpu.infer(feeds)[card.output]
    with make_runner(src, card, settings=runner_settings(load_profile("a100-int8").profile)) as gpu:
        assert gpu.on_gpu and gpu.io_mode == "device"
        got = gpu.infer(feeds)[card.output]
        gpu.bench_fn(feeds)()
    np.testing.assert_allclose(got, want, atol=1e-3)
