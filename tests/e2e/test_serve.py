"""A real Triton server: `kdeploy serve` on the tiny run (PyTriton's tritonserver on CPU),
real KServe v2 requests over HTTP and gRPC from several clients at once, every answer checked
against kdeploy.runtime on the same sentences, then Ctrl-C and a check that nothing is left.

Every wait is bounded (the server's start, each request, the shutdown), so a hung server
fails the test instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, real_sentences

pytestmark = pytest.mark.serve
pytest.importorskip("pytriton", reason="pip install 'kdeploy[serve]'")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")

START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie has exited; only its parent's wait is missing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Served:
    proc: subprocess.Popen
    ports: list[int]
    log: list[str] = field(default_factory=list)
    lines: queue.Queue = field(default_factory=queue.Queue)

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def metrics(self) -> str:
        return f"127.0.0.1:{self.ports[2]}"

    def read_until(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            self.log.append(line)
            if marker in line:
                return
        raise AssertionError(f"no '{marker}' within {timeout} s:\n{''.join(self.log)[-4000:]}")

    def drain(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return "".join(self.log)
            if line is not None:
                self.log.append(line)


def start_serve(run_dir: Path, tmp_path: Path) -> Served:
    from kdeploy.packaging.serve import free_ports

    ports = free_ports(3)
    cmd = [sys.executable, "-m", "kdeploy.cli", "serve", str(run_dir),
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
           "--metrics-port", str(ports[2]), "--log-file", str(tmp_path / "triton.log")]  # fmt: skip
    # a session of its own: the test's Ctrl-C goes to the whole group, as a terminal's does
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, start_new_session=True)  # fmt: skip
    served = Served(proc, ports)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            served.lines.put(line)
        served.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return served


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def http_embed(url: str, name: str, texts: list[str]) -> np.ndarray:
    client = http.InferenceServerClient(url, connection_timeout=REQUEST_TIMEOUT_S,
                                        network_timeout=REQUEST_TIMEOUT_S)  # fmt: skip
    try:
        x = http.InferInput("text", [len(texts), 1], "BYTES")
        x.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        return client.infer(name, [x]).as_numpy("sentence_embedding")
    finally:
        client.close()


def grpc_embed(url: str, name: str, texts: list[str]) -> np.ndarray:
    client = grpc.InferenceServerClient(url)
    try:
        x = grpc.InferInput("text", [len(texts), 1], "BYTES")
        x.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        res = client.infer(name, [x], client_timeout=REQUEST_TIMEOUT_S)
        return res.as_numpy("sentence_embedding")
    finally:
        client.close()


def metric(text: str, name: str, model: str) -> float:
    """A counter from Triton's Prometheus metrics for one model."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {model} in the metrics")


def test_kdeploy_serve_answers_as_the_runtime_does(tiny_run, tmp_path):
    from kdeploy.cli.serve import served_model
    from kdeploy.runtime import Encoder
    from kdeploy.runtime.metrics import cosine_rows

    model_dir, settings = served_model(tiny_run)
    name = settings.name
    sentences = real_sentences(48)
    enc = Encoder(model_dir, threads=settings.threads, batch_size=settings.batch_size)
    alone = np.concatenate([enc.embed([s]) for s in sentences])  # one sentence per batch
    together = enc.embed(sentences[:32])  # one request of 32, as the runtime batches it

    t0 = time.monotonic()
    served = start_serve(tiny_run, tmp_path)
    try:
        served.read_until("ready; Ctrl-C stops the server", START_TIMEOUT_S)
        started_s = time.monotonic() - t0
        children = descendants(served.proc.pid)
        assert children, "the server process started no tritonserver"
        text = served.drain()
        assert f"/v2/models/{name}/infer" in text and "preferred [8]" in text

        # the profile's batching reached Triton's own config
        with http.InferenceServerClient(served.http) as c:
            assert c.is_server_live() and c.is_model_ready(name)
            cfg = c.get_model_config(name)
        assert cfg["max_batch_size"] == settings.max_batch_size == 64
        assert cfg["dynamic_batching"]["preferred_batch_size"] == [8]
        assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == 100

        # same batch layout, same bits: one sentence per request, and one request of 32
        for i, s in enumerate(sentences[:8]):
            assert np.array_equal(http_embed(served.http, name, [s]), alone[i : i + 1])
            assert np.array_equal(grpc_embed(served.grpc, name, [s]), alone[i : i + 1])
        assert np.array_equal(http_embed(served.http, name, sentences[:32]), together)
        assert np.array_equal(grpc_embed(served.grpc, name, sentences[:32]), together)

        # 8 clients at once (4 HTTP, 4 gRPC), single sentences and small batches: Triton
        # merges them as they come, so dynamic INT8 may move the numbers a little; every
        # answer must be its own sentence's
        jobs = [(k, sentences[j : j + n]) for k in range(8) for j, n in
                ((k % 8, 1), (8 + k, 1), (16 + k, 3), (24 + k, 1), (40, 1))]  # fmt: skip

        def send(job: tuple[int, list[str]]) -> np.ndarray:
            k, texts = job
            embed = http_embed if k % 2 == 0 else grpc_embed
            return embed(served.http if k % 2 == 0 else served.grpc, name, texts)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, jobs * 4, timeout=REQUEST_TIMEOUT_S * 4))
        got = np.concatenate(answers)
        idx = np.array([sentences.index(t) for _, texts in jobs * 4 for t in texts])
        assert len(got) == len(idx) == 4 * sum(len(t) for _, t in jobs)
        assert cosine_rows(got, alone[idx]).min() >= 0.99
        assert (nearest(got, alone) == idx).all(), "an answer went to another request"

        # Triton merged requests: fewer executions than requests
        with urllib.request.urlopen(f"http://{served.metrics}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        requests = metric(metrics, "nv_inference_request_success", name)
        executions = metric(metrics, "nv_inference_exec_count", name)
        assert requests == 16 + 2 + len(jobs) * 4
        assert executions < requests

        # Ctrl-C (SIGINT to the process group, as a terminal sends it)
        t1 = time.monotonic()
        os.killpg(served.proc.pid, signal.SIGINT)
        rc = served.proc.wait(timeout=STOP_TIMEOUT_S)
        stopped_s = time.monotonic() - t1
    except BaseException:
        kill_group(served.proc)
        raise
    text = served.drain()
    assert rc == 130, text[-3000:]
    assert "server stopped (Ctrl-C)" in text and "Traceback" not in text
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in children if alive(p)], "processes left after Ctrl-C"
    assert all(port_free(p) for p in served.ports)
    print(f"server started in {started_s:.1f} s, stopped in {stopped_s:.1f} s")


def nearest(got: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """For each answer, the sentence whose runtime output it is nearest (centred cosine: the
    tiny model's outputs all point one way, see tests/conftest.centered_cosines)."""
    mu = alone.mean(0)
    a, e = got - mu, alone - mu
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return (a @ e.T).argmax(1)


def test_sigterm_stops_the_server_cleanly(tiny_run, tmp_path):
    """`kill PID` (SIGTERM to the kdeploy process alone, as a supervisor sends it) stops
    Triton and its stub like Ctrl-C does."""
    served = start_serve(tiny_run, tmp_path)
    try:
        served.read_until("ready; Ctrl-C stops the server", START_TIMEOUT_S)
        children = descendants(served.proc.pid)
        served.proc.send_signal(signal.SIGTERM)
        rc = served.proc.wait(timeout=STOP_TIMEOUT_S)
    except BaseException:
        kill_group(served.proc)
        raise
    text = served.drain()
    assert rc == 130 and "server stopped" in text and "Traceback" not in text, text[-3000:]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in children if alive(p)], "processes left after SIGTERM"
    assert all(port_free(p) for p in served.ports)


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory, tiny_classifier, sst2_small):
    """A finished cpu-int8 run of the tiny classifier on SST-2 slices."""
    from kdeploy.api import RunRequest, run_pipeline
    from kdeploy.config import load_profile
    from kdeploy.stages import RunOptions
    from tests.conftest import TINY_OVERRIDES

    out = tmp_path_factory.mktemp("clf") / "run"
    run_pipeline(
        RunRequest(
            profile=load_profile("cpu-int8", TINY_OVERRIDES),
            model_dir=tiny_classifier,
            data_dir=sst2_small,
            out_dir=out,
            options=RunOptions(progress=False),
        ),
        log=lambda m: None,
    )
    return out


def test_library_server_serves_a_classifier(clf_run, tmp_path):
    """The library's Server in-process on a classifier run: logits, probabilities and
    labels as the runtime's Classifier gives them, with and without text pairs."""
    from kdeploy.cli.serve import served_model
    from kdeploy.packaging.serve import Endpoints, Server, free_ports
    from kdeploy.runtime import Classifier

    model_dir, settings = served_model(clf_run)
    texts = ["a gripping, funny film", "dull and far too long", "fine"]
    pairs = ["it works", "it does not", "ok"]
    with Classifier(model_dir, threads=settings.threads, batch_size=settings.batch_size) as clf:
        want_logits = clf.logits(texts)
        want_labels, want_probs = clf.predict(texts)
        want_pair_logits = clf.logits(texts, pairs)
        names = clf.labels
    log = tmp_path / "triton.log"
    with Server(model_dir, settings, Endpoints("127.0.0.1", *free_ports(3)), log_file=log) as s:
        assert s.info is not None
        assert [t.name for t in s.info.outputs] == ["logits", "probabilities", "label"]
        client = http.InferenceServerClient(s.endpoints.http, network_timeout=REQUEST_TIMEOUT_S)
        x = http.InferInput("text", [3, 1], "BYTES")
        x.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        res = client.infer(settings.name, [x])
        assert np.array_equal(res.as_numpy("logits"), want_logits)
        np.testing.assert_allclose(res.as_numpy("probabilities"), want_probs, rtol=1e-6)
        got = [b.decode() for b in res.as_numpy("label")[:, 0]]
        assert got == [(names or [])[i] if names else str(i) for i in want_labels]
        y = http.InferInput("text_pair", [3, 1], "BYTES")
        y.set_data_from_numpy(np.array([[t.encode()] for t in pairs], dtype=object))
        res = client.infer(settings.name, [x, y])
        assert np.array_equal(res.as_numpy("logits"), want_pair_logits)
        client.close()
    assert not s.is_alive()
    assert log.is_file()  # a log the caller named is kept


def test_a_stub_without_this_interpreters_libpython_is_exit_9(tiny_run, tmp_path, monkeypatch):
    """Without kdeploy's LD_LIBRARY_PATH fix, PyTriton's stub loads whatever libpython the
    system has; where that is another build (this dev box: Debian's libpython3.11 under a
    pyenv 3.11.7 venv) or none, starting fails and the error says why, exit 9."""
    from kdeploy.cli.serve import served_model
    from kdeploy.core.errors import DependencyError
    from kdeploy.packaging import serve as sv

    monkeypatch.setattr(sv, "python_lib_dir", lambda: None)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    model_dir, settings = served_model(tiny_run)
    log = tmp_path / "triton.log"
    server = sv.Server(model_dir, settings, sv.Endpoints("127.0.0.1", *sv.free_ports(3)),
                       log_file=log)  # fmt: skip
    try:
        server.start()
    except DependencyError as exc:
        assert exc.exit_code == 9 and "Python-backend stub" in exc.what
        assert "--enable-shared" in exc.fix and exc.where == str(log)
        assert not server.is_alive()
        return
    server.stop()
    pytest.skip("the system's libpython matches this interpreter: the stub starts without the fix")
