"""Runners: one shape for every backend (Polygraphy's idea).

``with Runner(...) as r: outputs = r.infer(feeds)`` where feeds and outputs are dicts of
numpy arrays. bench and verify only talk to this shape, so a GPU verify computes the same
metric on the same data as a CPU one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kdeploy.core.errors import DependencyError, ModelError

if TYPE_CHECKING:
    from kdeploy.runtime.build_plan import BuildSettings
    from kdeploy.runtime.card import ModelCard
    from kdeploy.runtime.openvino_runner import OpenVinoOptions

# target.ort_providers names -> ONNX Runtime execution providers
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class RunnerSettings:
    """Where ONNX models run: execution providers in priority order (``cpu``, ``cuda``,
    ``tensorrt``) and, for the TensorRT EP, the target's build settings (the same
    ``BuildSettings`` as ``kdeploy build``); for OpenVINO models (``.xml``), how OpenVINO
    compiles them. The config layer makes one from a profile. ``("reference",)`` alone:
    ONNX's reference evaluator on CPU, every op in the graph's own types
    (``kdeploy.runtime.reference``; the check of FP16 graphs for TensorRT)."""

    providers: tuple[str, ...] = ("cpu",)
    build: BuildSettings | None = None
    openvino: OpenVinoOptions | None = None

    @property
    def cpu_only(self) -> bool:
        return self.providers == ("cpu",)


class Runner(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def __enter__(self) -> Runner: ...
    def __exit__(self, *exc: object) -> None: ...
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def bench_fn(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]: ...


class OrtRunner:
    """ONNX Runtime session (CPU EP by default; CUDA / TensorRT EPs on GPUs).

    A requested provider that this onnxruntime build lacks is an error, never a silent
    fall-back to the CPU (which ONNX Runtime itself would do with a warning).
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        threads: int | None = None,
        providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",),
        provider_options: list[dict[str, str]] | None = None,
        outputs: list[str] | None = None,
        name: str | None = None,
    ):
        self.model_path = Path(model_path)
        self.threads = threads
        self.providers = tuple(providers)
        self.provider_options = provider_options
        self.on_gpu = self.providers[0] in GPU_PROVIDERS
        self.io_mode = "device" if self.on_gpu else "host"
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
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise DependencyError(
                f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} "
                f"(it has {', '.join(available)})",
                fix="install onnxruntime-gpu in place of onnxruntime (pip install 'kdeploy[gpu]') "
                "on a machine with CUDA; for the TensorRT EP also TensorRT 10",
            )
        try:
            self._session = ort.InferenceSession(
                str(self.model_path),
                so,
                providers=list(self.providers),
                provider_options=self.provider_options,
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(
                f"ONNX Runtime cannot load {self.model_path}: {str(exc).splitlines()[0]}",
                where=str(self.model_path),
                fix="the file may be corrupted: rerun the export stage (--force export)",
            ) from None
        got = self._session.get_providers()
        if self.providers[0] not in got:
            raise ModelError(
                f"ONNX Runtime did not enable {self.providers[0]} for {self.model_path} "
                f"(session runs on {got})",
                where=str(self.model_path),
                fix="check the CUDA / TensorRT installation (ONNX Runtime logs the reason)",
            )
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

    def bench_fn(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        """One timed call. On a GPU provider the inputs are bound once on the device and the
        outputs stay there (IO binding), so the time is the model's, not the PCIe copies'."""
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        if not self.on_gpu:
            return lambda: self.infer(feeds)
        import onnxruntime as ort

        binding = self._session.io_binding()
        for k, v in feeds.items():
            binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
        for o in self.output_names:
            binding.bind_output(o, "cuda", 0)
        session = self._session

        def call() -> list:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding.get_outputs()  # OrtValues on the GPU (nothing copied back)

        return call

    def __exit__(self, *exc: object) -> None:
        self._session = None


def cache_dir() -> Path:
    """Where device-side caches live (ONNX Runtime TensorRT-EP engines and timing caches)."""
    return Path(os.environ.get("KDEPLOY_CACHE", "~/.cache/kdeploy")).expanduser()


def ort_provider_config(
    settings: RunnerSettings, model_path: Path
) -> tuple[list[str], list[dict[str, str]]]:
    """ONNX Runtime providers and their options for a target.

    The TensorRT EP gets its optimization profile, precision, workspace and cache options
    from the same BuildPlan as ``kdeploy build`` and the trtexec line.
    """
    from kdeploy.runtime.build_plan import make_plan, onnx_inputs, ort_trt_options

    names, options = [], []
    for p in settings.providers:
        names.append(ORT_PROVIDERS[p])
        if p == "tensorrt":
            if settings.build is None:
                raise ModelError(
                    "the TensorRT execution provider needs the target's build settings",
                    fix="pass RunnerSettings(providers=..., build=BuildSettings(...))",
                )
            plan = make_plan(settings.build, onnx_inputs(model_path), onnx=str(model_path))
            options.append(ort_trt_options(plan, cache_dir() / "ort-trt"))
        elif p == "cuda":
            options.append({"device_id": "0"})
        else:
            options.append({})
    return names, options


MODEL_FILE_SUFFIXES = (".onnx", ".plan", ".engine", ".xml")


def open_model_file(
    path: Path | str,
    *,
    threads: int | None = None,
    outputs: list[str] | None = None,
    settings: RunnerSettings | None = None,
    name: str | None = None,
) -> Runner:
    """The one runner factory, keyed by the model file: a TensorRT engine (.plan/.engine),
    an OpenVINO IR (.xml, with the settings' OpenVINO options) or ONNX Runtime with the
    settings' providers (CPU when there are none). Not entered yet: use it in a ``with``
    block. An unknown suffix is an error, never a fallback."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".plan", ".engine"):
        from kdeploy.runtime.trt_runner import TrtRunner

        return TrtRunner(path, outputs=outputs, name=name)
    if suffix == ".xml":
        from kdeploy.runtime.openvino_runner import OpenVinoRunner

        options = settings.openvino if settings is not None else None
        return OpenVinoRunner(path, threads=threads, options=options, outputs=outputs, name=name)
    if suffix != ".onnx":
        raise ModelError(
            f"no runner for model file {path.name} (suffix {path.suffix or 'none'})",
            where=str(path),
            fix=f"kdeploy loads {', '.join(MODEL_FILE_SUFFIXES)} files",
        )
    if settings is not None and settings.providers == ("reference",):
        from kdeploy.runtime.reference import ReferenceRunner

        return ReferenceRunner(path, outputs=outputs, name=name)
    if settings is None or settings.cpu_only:
        return OrtRunner(path, threads=threads, outputs=outputs, name=name)
    providers, options = ort_provider_config(settings, path)
    return OrtRunner(
        path,
        threads=threads,
        providers=providers,
        provider_options=options,
        outputs=outputs,
        name=name,
    )


def make_runner(
    model_dir: Path,
    card: ModelCard,
    *,
    threads: int | None = None,
    settings: RunnerSettings | None = None,
    name: str | None = None,
) -> Runner:
    """The runner for a model dir (its card names the file and the output to read)."""
    return open_model_file(
        Path(model_dir) / card.model_file,
        threads=threads,
        outputs=[card.output],
        settings=settings,
        name=name,
    )
