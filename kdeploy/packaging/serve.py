"""``kdeploy serve``: a run's deployed model behind a real Triton Inference Server on this
machine, started through NVIDIA PyTriton (extra ``serve``: ``nvidia-pytriton``, which ships
the ``tritonserver`` binary and its Python backend; no container, no GPU needed).

Interface: KServe v2 over HTTP and gRPC. Requests carry texts, one BYTES element per row
(input ``text``, dims ``[1]``; classifiers also take an optional ``text_pair``); the answer
is the model card's output (``sentence_embedding`` or ``logits``; classifiers add
``probabilities`` and ``label``). Dynamic batching with the profile's
``package.preferred_batch_sizes`` (default ``bench.batch_sizes`` above 1),
``package.max_queue_delay_us`` and ``max_batch_size`` = ``export.shapes.batch.max``: the same
values the ``onnxruntime_onnx`` repository in ``package/triton/`` gets (``triton.settings_for``).

Tokenization is server-side: the function Triton calls gets a batch of texts and answers with
``kdeploy.runtime`` (``model.outputs``: tokenize, length-bucket, pad, ONNX Runtime), with the
threads, batch size and providers ``verify`` measured the model with. So the served numbers
are the verified ones; and since every request is a row of one BYTES tensor, Triton's
batcher merges requests whatever their token lengths (token tensors of different lengths
are not merged). Why this and not client-side token tensors: README, "kdeploy serve".

PyTriton's Python-backend stub embeds libpython. It must load *this* interpreter's: with
another build of the same minor version it fails (e.g. ``'_thread.RLock' object has no
attribute '_recursion_count'``). ``python_lib_dir`` finds the running interpreter's shared
libpython and the server process is started with that directory first in
``LD_LIBRARY_PATH``; an interpreter without a shared libpython gets a DependencyError saying
so when the stub fails.

Torch-free; PyTriton is imported only when a server starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.deps import require, version_of
from kdeploy.core.errors import DependencyError, KdeployError, ModelError, UsageError
from kdeploy.packaging.serve_model import ServedModel, ServeSettings, TensorSpec

EXIT_TIMEOUT_S = 5  # Triton's wait for in-flight requests when it is stopped
_FEATURE = "kdeploy serve (a Triton Inference Server on this machine)"
_FIX = "pip install 'kdeploy[serve]'"
# what the stub's log says when it embedded another build's libpython
_LIBPYTHON_SIGNS = ("_recursion_count", "libpython", "undefined symbol: Py", "Py_Initialize")


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens: one address for HTTP, gRPC and metrics."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def http(self) -> str:
        """``host:port`` as tritonclient.http takes it."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def ports(self) -> dict[str, int]:
        """{the CLI option that sets it: port}."""
        return {
            "--http-port": self.http_port,
            "--grpc-port": self.grpc_port,
            "--metrics-port": self.metrics_port,
        }


@dataclass(frozen=True)
class ServeInfo:
    """What a started server serves and where (printed by the CLI)."""

    name: str
    model_dir: Path
    task: str
    precision: str
    endpoints: Endpoints
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    settings: ServeSettings
    triton_version: str
    pytriton_version: str
    log_file: Path


def python_lib_dir() -> Path | None:
    """The directory of the running interpreter's shared libpython, or None when it has none
    (a statically linked interpreter)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname):
        return None
    return Path(libdir) if (Path(libdir) / soname).is_file() else None


@contextlib.contextmanager
def stub_environment(libdir: Path | None) -> Iterator[None]:
    """``LD_LIBRARY_PATH`` with ``libdir`` first while PyTriton starts ``tritonserver`` (it
    copies ``os.environ`` then; the server's Python-backend stub inherits it). Restored after."""
    old = os.environ.get("LD_LIBRARY_PATH")
    if libdir is not None:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def check_ports(endpoints: Endpoints) -> None:
    """Every port distinct and free on the host, before anything starts."""
    ports = endpoints.ports()
    if len(set(ports.values())) < len(ports):
        raise UsageError(
            f"the HTTP, gRPC and metrics ports must differ, got {ports}",
            where=" / ".join(ports),
            fix="give each its own port",
        )
    for flag, port in ports.items():
        with socket.socket(_family(endpoints.host), socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((endpoints.host, port))
            except OSError as exc:
                raise UsageError(
                    f"cannot listen on {endpoints.host}:{port}: {exc.strerror}",
                    where=flag,
                    fix=f"choose a free port with {flag} (or stop what listens there)",
                ) from None


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that are free on ``host`` now (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(_family(host), socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _pytriton() -> Any:
    """PyTriton's modules, or DependencyError naming the extra."""
    require("pytriton", feature=_FEATURE)
    import pytriton.model_config as model_config
    import pytriton.triton as triton

    return triton, model_config


class Server:
    """A Triton Inference Server serving one kdeploy model dir, started by PyTriton.

    >>> with Server(model_dir, settings, Endpoints(http_port=8000)) as server:
    ...     server.wait()      # until Ctrl-C (KeyboardInterrupt) or the server dies

    ``start`` returns once Triton reports the model ready; ``stop`` (also on leaving the
    ``with`` block, whatever the exception) stops ``tritonserver`` and its Python-backend
    stub, waits for them and removes PyTriton's workspace.
    """

    def __init__(
        self,
        model_dir: Path,
        settings: ServeSettings,
        endpoints: Endpoints = Endpoints(),
        *,
        log_file: Path | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.endpoints = endpoints
        self.log_file = Path(log_file) if log_file else _default_log_file()
        self._own_log = log_file is None  # removed after a clean stop, kept after a failure
        self.info: ServeInfo | None = None
        self._triton: Any = None
        self._instances: list[ServedModel] = []
        self._stopping = False

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ServeInfo:
        triton_mod, mc = _pytriton()
        check_ports(self.endpoints)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.write_text("", encoding="utf-8")  # this run's log only
        try:
            self._instances = [
                ServedModel(self.model_dir, self.settings) for _ in range(self.settings.instances)
            ]
            inputs, outputs = self._instances[0].interface()
            self._triton = triton_mod.Triton(config=self._triton_config(triton_mod))
            self._triton.bind(
                model_name=self.settings.name,
                infer_func=self._instances,
                inputs=[_pytriton_tensor(mc, t) for t in inputs],
                outputs=[_pytriton_tensor(mc, t) for t in outputs],
                config=mc.ModelConfig(
                    max_batch_size=self.settings.max_batch_size,
                    batcher=mc.DynamicBatcher(
                        max_queue_delay_microseconds=self.settings.max_queue_delay_us,
                        preferred_batch_size=list(self.settings.preferred_batch_sizes) or None,
                    ),
                ),
                strict=False,
            )
            with stub_environment(python_lib_dir()):
                self._triton.run()
        except KdeployError:
            self.stop(keep_log=True)
            raise
        except Exception as exc:  # PyTriton / tritonclient errors: say what the log says
            self.stop(keep_log=True)
            raise self._start_failure(exc) from None
        except BaseException:  # Ctrl-C while starting
            self.stop()
            raise
        card = self._instances[0].card
        self.info = ServeInfo(
            name=self.settings.name,
            model_dir=self.model_dir,
            task=card.task,
            precision=card.precision,
            endpoints=self.endpoints,
            inputs=inputs,
            outputs=outputs,
            settings=self.settings,
            triton_version=self._triton_version(),
            pytriton_version=version_of("nvidia-pytriton") or "?",
            log_file=self.log_file,
        )
        return self.info

    def _triton_config(self, triton_mod: Any) -> Any:
        e = self.endpoints
        return triton_mod.TritonConfig(
            http_address=e.host,
            http_port=e.http_port,
            grpc_address=e.host,
            grpc_port=e.grpc_port,
            metrics_address=e.host,
            metrics_port=e.metrics_port,
            allow_gpu_metrics=False,
            exit_timeout_secs=EXIT_TIMEOUT_S,
            log_file=self.log_file,
            log_verbose=0,
        )

    def _triton_version(self) -> str:
        try:
            import tritonclient.http as httpclient

            with contextlib.closing(httpclient.InferenceServerClient(self.endpoints.http)) as c:
                return str(c.get_server_metadata().get("version", "?"))
        except Exception:  # the version is only printed
            return "?"

    def _start_failure(self, exc: Exception) -> KdeployError:
        """The error a failed start deserves, from the exception and Triton's log."""
        text = f"{exc}\n{_read(self.log_file)}"
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        if any(sign in text for sign in _LIBPYTHON_SIGNS):
            lib = python_lib_dir()
            ver = ".".join(map(str, sys.version_info[:3]))
            return DependencyError(
                "Triton's Python-backend stub could not run this interpreter's Python "
                f"{ver} ({sys.executable}): it embeds libpython{sys.version_info[0]}."
                f"{sys.version_info[1]} and loaded another build of it ({first})",
                where=str(self.log_file),
                fix=(
                    f"kdeploy put {lib} first in the server's LD_LIBRARY_PATH; check that "
                    "nothing else there shadows it"
                    if lib
                    else "this interpreter has no shared libpython: use a Python built with "
                    "--enable-shared (the python.org, Debian and Docker python builds are; "
                    "pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install "
                    f"{ver}) in the venv that runs kdeploy serve"
                ),
            )
        return ModelError(
            f"Triton did not start serving {self.settings.name}: {first}",
            where=str(self.log_file),
            fix="read Triton's log there; rerun with other ports if one was taken",
        )

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until the server stops; Ctrl-C raises KeyboardInterrupt here."""
        while self.is_alive():
            time.sleep(poll_s)
        if not self._stopping:
            self._own_log = False  # the error points at it
            raise ModelError(
                f"Triton stopped serving {self.settings.name} unexpectedly",
                where=str(self.log_file),
                fix="read Triton's log there",
            )

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop Triton and its stub (waits for them), remove the workspace, close the models.
        Safe to call twice."""
        self._stopping = True
        triton, self._triton = self._triton, None
        try:
            if triton is not None:
                triton.stop()
        finally:
            for m in self._instances:
                m.close()
            self._instances = []
            if self._own_log and not keep_log:
                shutil.rmtree(self.log_file.parent, ignore_errors=True)


def _pytriton_tensor(mc: Any, t: TensorSpec) -> Any:
    dtype = bytes if t.dtype == "BYTES" else np.float32
    return mc.Tensor(name=t.name, dtype=dtype, shape=t.dims, optional=t.optional)


def _default_log_file() -> Path:
    return Path(tempfile.gettempdir()) / f"kdeploy-serve-{os.getpid()}" / "tritonserver.log"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def describe(info: ServeInfo) -> list[str]:
    """What a started server serves and where, one line each (the CLI prints them)."""
    s, e = info.settings, info.endpoints

    def spec(t: TensorSpec) -> str:
        return f"{t.name} {t.dtype} {list(t.dims)}" + (" (optional)" if t.optional else "")

    return [
        f"serving {info.name} ({info.task}, {info.precision}, {info.model_dir}) with Triton "
        f"{info.triton_version} through PyTriton {info.pytriton_version}",
        f"  HTTP     http://{e.http}/v2/models/{info.name}/infer  (KServe v2)",
        f"  gRPC     {e.grpc}",
        f"  metrics  {e.metrics}",
        f"  inputs   {', '.join(spec(t) for t in info.inputs)}: texts, tokenized server-side "
        "by kdeploy.runtime",
        f"  outputs  {', '.join(spec(t) for t in info.outputs)}",
        f"  batching max {s.max_batch_size}, preferred {list(s.preferred_batch_sizes)}, "
        f"queue delay {s.max_queue_delay_us} us; {s.instances} instance(s) x "
        f"{s.threads or 'default'} thread(s), runtime batch {s.batch_size}",
        f"  Triton's log: {info.log_file}",
    ]
