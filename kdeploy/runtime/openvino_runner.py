"""OpenVINO as a CPU runtime: the same Runner shape as ONNX Runtime's (``infer(feeds)``).

Device side: needs ``kdeploy[openvino]`` (the ``openvino`` package) and numpy, never torch;
``openvino`` is imported when a runner is entered. It reads OpenVINO IR (``model.xml`` +
``model.bin``, what kdeploy's NNCF INT8 step writes) and ONNX files alike.

The options are the profile's ``target.openvino`` section, as plain data:

- ``performance_hint``: OpenVINO's ``LATENCY`` (one stream, all threads on one request:
  what a request-at-a-time server or a benchmark loop wants) or ``THROUGHPUT``;
- ``bounded_shapes``: reshape the model's dynamic batch and sequence axes to the export
  ranges (``[1, max]``), so the CPU plugin plans memory for bounded shapes;
- ``cache_dir``: OpenVINO's model cache (compiled blobs reused across processes), off by
  default so that a measured first call is a first call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.core.deps import require
from kdeploy.core.errors import ModelError

OPENVINO_SUFFIXES = (".xml",)
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")


@dataclass(frozen=True)
class OpenVinoOptions:
    """How OpenVINO compiles a model for the CPU (from the profile's ``target.openvino``)."""

    performance_hint: str = "LATENCY"
    bounded_shapes: bool = False
    max_batch: int = 64
    max_sequence: int = 512
    cache_dir: str | None = None

    def compile_config(self, threads: int | None) -> dict[str, str]:
        """OpenVINO's CPU plugin properties, by their documented names."""
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise ModelError(
                f"unknown OpenVINO performance hint {self.performance_hint!r}",
                fix=f"use one of {', '.join(PERFORMANCE_HINTS)}",
            )
        config = {"PERFORMANCE_HINT": self.performance_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if self.cache_dir:
            config["CACHE_DIR"] = str(Path(self.cache_dir).expanduser())
        return config


def import_openvino(feature: str = "the OpenVINO runtime"):
    return require("openvino", feature=feature)


class OpenVinoRunner:
    """An OpenVINO ``CompiledModel`` on the CPU, one infer request, numpy in and out."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        threads: int | None = None,
        options: OpenVinoOptions | None = None,
        outputs: list[str] | None = None,
        name: str | None = None,
    ):
        self.model_path = Path(model_path)
        self.threads = threads
        self.options = options or OpenVinoOptions()
        self.wanted_outputs = outputs
        self.name = name or self.model_path.name
        self.on_gpu = False
        self.io_mode = "host"
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._request = None
        self._ports: dict[str, object] = {}

    def __enter__(self) -> OpenVinoRunner:
        ov = import_openvino()
        if not self.model_path.is_file():
            raise ModelError(
                f"OpenVINO model {self.model_path} does not exist",
                where=str(self.model_path),
                fix="point at a model dir written by `kdeploy compress` (model.xml + model.bin)",
            )
        core = ov.Core()
        try:
            model = core.read_model(str(self.model_path))
            if self.options.bounded_shapes:
                model.reshape(
                    {
                        port.get_any_name(): ov.PartialShape(
                            [
                                ov.Dimension(1, self.options.max_batch),
                                ov.Dimension(1, self.options.max_sequence),
                            ]
                        )
                        for port in model.inputs
                    }
                )
            compiled = core.compile_model(
                model, "CPU", self.options.compile_config(self.threads)
            )
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable models
            raise ModelError(
                f"OpenVINO cannot load {self.model_path}: {str(exc).splitlines()[0]}",
                where=str(self.model_path),
                fix="the files may be corrupted: rerun the quantize stage (--force quantize)",
            ) from None
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        ports = {name: p for p in compiled.outputs for name in p.get_names()}
        names = self.wanted_outputs or [p.get_any_name() for p in compiled.outputs]
        missing = [o for o in names if o not in ports]
        if missing:
            raise ModelError(
                f"{self.model_path} has no output {missing} (it has {sorted(ports)})",
                where=str(self.model_path),
                fix="kdeploy_model.json names an output the model lacks: rerun quantize",
            )
        self.output_names = list(names)
        self._ports = {n: ports[n] for n in names}
        self._request = compiled.create_infer_request()
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._request is None:
            raise RuntimeError("use the runner inside a `with` block")
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        result = self._request.infer(feeds)
        # copy out: the request reuses its output buffers on the next call
        return {n: np.array(result[port]) for n, port in self._ports.items()}

    def bench_fn(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        request = self._request
        return lambda: request.infer(feeds)

    def __exit__(self, *exc: object) -> None:
        self._request = None
        self._ports = {}
