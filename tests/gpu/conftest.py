"""GPU tests: `gpu` needs a CUDA device, `trt` needs TensorRT 10; each skips with its reason."""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache

import pytest


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


def pytest_collection_modifyitems(config, items):
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and cuda_devices() == 0:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(
                pytest.mark.skip(reason="TensorRT is not installed (pip install 'kdeploy[trt]')")
            )
