"""The GPU side of the runners, as far as a machine without CUDA or TensorRT can check it:
provider options from the profile, and clear errors instead of silent CPU fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.config import load_profile
from kdeploy.config.settings import runner_settings
from kdeploy.core.errors import DependencyError
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.runners import OrtRunner, make_runner, ort_provider_config
from kdeploy.runtime.trt_build import check_trt_version
from kdeploy.runtime.trt_runner import TrtRunner
from tests.unit.test_build_plan import write_onnx


@pytest.fixture
def tiny_onnx(tmp_path):
    return write_onnx(tmp_path / "model.onnx", ["batch", "sequence"])


def test_provider_config_for_tensorrt_and_cuda(tiny_onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("KDEPLOY_CACHE", str(tmp_path / "cache"))
    p = load_profile("a100-int8", ["target.ort_providers=[tensorrt, cuda]"]).profile
    names, options = ort_provider_config(runner_settings(p), tiny_onnx)
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    trt, cuda = options
    assert trt["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert trt["trt_profile_opt_shapes"] == "input_ids:32x128,attention_mask:32x128"
    assert trt["trt_profile_max_shapes"] == "input_ids:128x256,attention_mask:128x256"
    assert trt["trt_int8_enable"] == trt["trt_fp16_enable"] == "0"  # strongly typed
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort-trt" / "engines")
    assert cuda == {"device_id": "0"}


def test_default_gpu_provider_is_cuda(tiny_onnx):
    names, options = ort_provider_config(
        runner_settings(load_profile("t4-int8").profile), tiny_onnx
    )
    assert names == ["CUDAExecutionProvider"] and options == [{"device_id": "0"}]


def test_missing_gpu_provider_is_an_error_not_a_cpu_fallback(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP (the gpu tests cover it)")
    card = ModelCard(task="classification", output="logits", max_seq_length=8)
    runner = make_runner(
        tiny_onnx.parent, card, settings=runner_settings(load_profile("a100-int8").profile)
    )
    assert isinstance(runner, OrtRunner) and runner.on_gpu and runner.io_mode == "device"
    with pytest.raises(DependencyError) as err, runner:
        pass
    assert "CUDAExecutionProvider" in err.value.what and "kdeploy[gpu]" in err.value.fix


def test_cpu_runner_and_its_bench_call(tiny_onnx):
    card = ModelCard(task="classification", output="logits", max_seq_length=8)
    feeds = {
        "input_ids": np.array([[1, 2, 3]]),
        "attention_mask": np.array([[1, 1, 0]]),
        "token_type_ids": np.zeros((1, 3), dtype=np.int64),
    }
    with make_runner(
        tiny_onnx.parent, card, settings=runner_settings(load_profile("cpu-int8").profile)
    ) as r:
        assert r.io_mode == "host" and r.input_names == ["input_ids", "attention_mask"]
        out = r.infer(feeds)
        np.testing.assert_array_equal(out["logits"], [[2.0, 3.0, 3.0]])
        assert r.bench_fn(feeds)()["logits"].tolist() == [[2.0, 3.0, 3.0]]


def test_engine_files_get_the_tensorrt_runner(tmp_path):
    card = ModelCard(
        task="embedding", output="sentence_embedding", max_seq_length=8, model_file="model.plan"
    )
    runner = make_runner(tmp_path, card)
    assert isinstance(runner, TrtRunner)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyError) as err, runner:
            pass
        assert "'tensorrt'" in err.value.what and "kdeploy[trt]" in err.value.fix


@pytest.mark.parametrize(
    "version, ok",
    [
        ("10.12.0.36", True),  # weak typing deprecated, strong typing complete: the floor
        ("10.16.0.72", True),
        ("11.0.0.114", True),
        ("11.4.0.106", True),
        ("10.11.0.33", False),  # before 10.12
        ("10.0.1", False),
        ("12.0.0", False),  # an untested major release
        ("8.6.1", False),
        ("unknown", False),
    ],
)
def test_tensorrt_version_range(version, ok):
    """Strongly typed builds run on TensorRT 10.12+ and 11.x with one code path; anything
    else is refused with what to install."""
    if ok:
        check_trt_version(version)
    else:
        with pytest.raises(DependencyError, match=f"TensorRT {version} is installed") as err:
            check_trt_version(version)
        assert "tensorrt>=10.12,<12" in err.value.fix
