"""Which Runner loads a model file: one small factory, keyed by the file's suffix.

``model.onnx`` -> :class:`~kdeploy.runtime.runners.OrtRunner`. A TensorRT engine
(``model.plan`` / ``.engine``) goes to a ``TrtRunner`` when this kdeploy has one
(``register_runner`` lets the module that brings it plug itself in); otherwise it is a
clear error, never a silent fallback to another backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kdeploy.errors import ModelError
from kdeploy.runtime.runners import OrtRunner, Runner

RunnerFactory = Callable[..., Runner]


def _ort(path: Path, **kw) -> Runner:
    return OrtRunner(path, **kw)


def _trt(path: Path, **kw) -> Runner:
    from kdeploy.runtime import runners

    cls = getattr(runners, "TrtRunner", None)
    if cls is None:
        raise ModelError(
            f"{path} is a TensorRT engine and this version of kdeploy has no TensorRT runner",
            where=str(path),
            fix="load the model dir's ONNX file instead, or use a kdeploy with TensorRT support",
        )
    return cls(path, **kw)


_FACTORIES: dict[str, RunnerFactory] = {".onnx": _ort, ".plan": _trt, ".engine": _trt}


def register_runner(suffix: str, factory: RunnerFactory) -> None:
    """Let a backend module claim a model-file suffix (e.g. ``.plan``)."""
    _FACTORIES[suffix.lower()] = factory


def open_runner(
    model_path: Path | str,
    *,
    threads: int | None = None,
    outputs: list[str] | None = None,
    name: str | None = None,
) -> Runner:
    """A Runner for ``model_path`` (not entered yet: use it in a ``with`` block)."""
    path = Path(model_path)
    factory = _FACTORIES.get(path.suffix.lower())
    if factory is None:
        raise ModelError(
            f"no runner for model file {path.name} (suffix {path.suffix or 'none'})",
            where=str(path),
            fix=f"kdeploy loads {', '.join(sorted(_FACTORIES))} files",
        )
    return factory(path, threads=threads, outputs=outputs, name=name)
