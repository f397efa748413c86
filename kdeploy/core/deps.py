"""One place that imports optional heavy dependencies, with a clear install hint.

Never a silent fallback: a feature whose library is missing raises DependencyError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kdeploy.core.errors import DependencyError

# module name -> the extra that installs it
_EXTRAS = {
    "torch": "train",
    "transformers": "train",
    "optimum": "train",
    "sentence_transformers": "train",
    "onnx": "train",
    "safetensors": "train",
    "tensorrt": "trt",
    "polygraphy": "trt",
    "matplotlib": "plots",
    "tritonclient": "triton",
    "pytriton": "serve",
    "openvino": "openvino",
    "nncf": "openvino",
}


def require(module: str, *, feature: str) -> ModuleType:
    """Import ``module`` or raise DependencyError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top)
        raise DependencyError(
            f"{feature} needs the Python package '{top}', which is not importable ({exc})",
            fix=f"pip install 'kdeploy[{extra}]'",
        ) from exc


def version_of(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (fast, torch-free)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
