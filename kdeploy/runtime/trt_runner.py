"""TrtRunner: a TensorRT engine behind kdeploy's Runner shape (``infer(feeds) -> outputs``).

Device side, ``kdeploy[trt]``: TensorRT 10.x and Polygraphy, whose ``TrtRunner`` already does
what this needs (dynamic input shapes per call, CUDA buffers and copies through its own
libcudart bindings, no torch or pycuda). This class adapts it: numpy feeds in the engine's
input dtypes, only the outputs asked for, and device-resident inputs for latency timing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdeploy.core.deps import require
from kdeploy.core.errors import ModelError
from kdeploy.runtime.trt_build import import_tensorrt

ENGINE_SUFFIXES = (".plan", ".engine")


class TrtRunner:
    """Runs a serialized TensorRT engine (built by ``kdeploy build``)."""

    io_mode = "device"  # bench_fn keeps inputs and outputs on the GPU

    def __init__(
        self, engine_path: Path | str, *, outputs: list[str] | None = None, name: str | None = None
    ):
        self.engine_path = Path(engine_path)
        self.name = name or self.engine_path.name
        self.wanted_outputs = outputs
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._runner = None
        self._dtypes: dict[str, np.dtype] = {}
        self._held: list = []

    def __enter__(self) -> TrtRunner:
        trt = import_tensorrt("running a TensorRT engine")
        require("polygraphy", feature="running a TensorRT engine")
        from polygraphy.backend.trt import EngineFromPath
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

        if not self.engine_path.is_file():
            raise ModelError(
                f"TensorRT engine {self.engine_path} does not exist",
                where=str(self.engine_path),
                fix="build it on the target with `kdeploy build RUN_DIR`",
            )
        runner = PolygraphyTrtRunner(EngineFromPath(str(self.engine_path)), name=self.name)
        try:
            runner.activate()
        except Exception as exc:  # Polygraphy raises PolygraphyException on a bad engine
            raise ModelError(
                f"TensorRT cannot load {self.engine_path}: {str(exc).splitlines()[0]}",
                where=str(self.engine_path),
                fix="engines are specific to a GPU model and TensorRT version: rebuild it on "
                "this device with `kdeploy build RUN_DIR`",
            ) from None
        self._runner = runner
        engine = runner.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self.input_names = inputs
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in inputs}
        if self.wanted_outputs:
            missing = [o for o in self.wanted_outputs if o not in outputs]
            if missing:
                raise ModelError(
                    f"{self.engine_path} has no output {missing} (it has {outputs})",
                    where=str(self.engine_path),
                )
            outputs = list(self.wanted_outputs)
        self.output_names = outputs
        return self

    def _feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ModelError(f"{self.engine_path} needs input(s) {missing}")
        return {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.input_names}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is None:
            raise RuntimeError("use the runner inside a `with` block")
        out = self._runner.infer(self._feeds(feeds))
        return {n: np.asarray(out[n]) for n in self.output_names}

    def bench_fn(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        """One timed call with inputs already on the GPU and outputs left there (Polygraphy
        synchronizes its stream before returning, so the time covers the whole execution)."""
        from polygraphy import cuda

        host = self._feeds(feeds)
        device = {}
        for n, arr in host.items():
            buf = cuda.DeviceArray(shape=arr.shape, dtype=arr.dtype)
            buf.copy_from(arr)
            device[n] = buf
        self._held += list(device.values())
        runner = self._runner
        return lambda: runner.infer(device, copy_outputs_to_host=False)

    def __exit__(self, *exc: object) -> None:
        for buf in self._held:
            buf.free()
        self._held = []
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
