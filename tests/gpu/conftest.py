"""GPU tests. Their setup runs everywhere: the fixtures build the run on the CPU up to the
first CUDA call (on a machine without TensorRT, ``compress`` hands off before ``build``),
so a broken fixture fails CI, not the first GPU machine. Each test then asks for what it
needs (``need_cuda``, ``need_tensorrt``, ``need_cuda_ep``) right before its first GPU call
and skips there, with the reason, where the machine lacks it.

Markers ``gpu`` / ``trt`` select these tests (``-m gpu``); they no longer skip by themselves.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from pathlib import Path

import pytest

from kdeploy.api import RunRequest, run_pipeline
from kdeploy.config import load_profile
from kdeploy.core.errors import HandOff
from kdeploy.stages import RunOptions
from tests.conftest import TRT_TINY

# ONNX models on ONNX Runtime's CPU EP (no onnxruntime-gpu needed), the engine on the GPU
GPU_TINY = [*TRT_TINY, "target.ort_providers=[cpu]", "target.timing_cache=null"]


@cache
def cuda_devices() -> int:
    """CUDA devices the driver reports (0 when there is no driver), without torch."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def need_cuda() -> None:
    if cuda_devices() == 0:
        pytest.skip("no CUDA GPU on this machine")


def need_tensorrt() -> None:
    need_cuda()
    if not has_tensorrt():
        pytest.skip("TensorRT is not installed (pip install 'kdeploy[trt]')")


def need_cuda_ep() -> None:
    import onnxruntime as ort

    need_cuda()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA EP here (pip install 'kdeploy[gpu]')")


@pytest.fixture(scope="session")
def gpu_run(tmp_path_factory, tiny_bert, stsb_small) -> tuple[Path, HandOff | None]:
    """``h100-int8`` on the tiny BERT: 2:4 sparsify + QAT, then, with TensorRT on this
    machine, the engine build, bench, verify and package; without it the hand-off."""
    out = tmp_path_factory.mktemp("gpu") / "run"
    req = RunRequest(
        profile=load_profile("h100-int8", GPU_TINY),
        model_dir=tiny_bert,
        data_dir=stsb_small,
        out_dir=out,
        options=RunOptions(progress=False),
    )
    try:
        run_pipeline(req, log=print)
    except HandOff as handoff:
        if has_tensorrt():
            raise  # a machine with TensorRT must build, not hand off
        return out, handoff
    return out, None
