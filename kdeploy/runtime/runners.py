"""Runners: one shape for every backend (Polygraphy's idea).

``with Runner(...) as r: outputs = r.infer(feeds)`` where feeds and outputs are dicts of
numpy arrays. bench and verify only talk to this shape, so a GPU verify computes the same
metric on the same data as a CPU one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from kdeploy.errors import ModelError


class Runner(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def __enter__(self) -> Runner: ...
    def __exit__(self, *exc: object) -> None: ...
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    """ONNX Runtime session (CPU EP by default)."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        outputs: list[str] | None = None,
        name: str | None = None,
    ):
        self.model_path = Path(model_path)
        self.threads = threads
        self.providers = providers
        self.name = name or self.model_path.name
        self.wanted_outputs = outputs
        self._session = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelError(
                f"ONNX model {self.model_path} does not exist",
                where=str(self.model_path),
                fix="point at a model dir written by `kdeploy compress`",
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), so, providers=list(self.providers)
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(
                f"ONNX Runtime cannot load {self.model_path}: {str(exc).splitlines()[0]}",
                where=str(self.model_path),
                fix="the file may be corrupted: rerun the export stage (--force export)",
            ) from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        names = [o.name for o in self._session.get_outputs()]
        if self.wanted_outputs:
            missing = [o for o in self.wanted_outputs if o not in names]
            if missing:
                raise ModelError(
                    f"{self.model_path} has no output {missing} (it has {names})",
                    where=str(self.model_path),
                    fix="kdeploy_model.json names an output the graph lacks: re-export it",
                )
            names = list(self.wanted_outputs)
        self.output_names = names
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("use the runner inside a `with` block")
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        outs = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs, strict=True))

    def __exit__(self, *exc: object) -> None:
        self._session = None
