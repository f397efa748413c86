"""A run's model served by `kdeploy serve` (a real Triton server) under load, against the
runtime called in-process on the same sentences.

    python benchmarks/serve_load.py RUN_DIR [--data ../shared/data/stsb] [--write]

The server runs as its own process (`python -m kdeploy.cli serve RUN_DIR` on free localhost
ports, dynamic batching as the run's profile sets it). 1, 4 and 16 concurrent clients
(threads of this process, one tritonclient each, over gRPC and over HTTP) send the real dev
sentences one per request, each client its share in turn; every answer is compared with
the runtime's output for that sentence. Per configuration: sentences/s (answered sentences
over the wall time from the first request to the last answer), p50/p99 request latency as
the client sees it, the mean batch Triton ran (requests / executions, from its Prometheus
metrics), errors (an error answer), dropped requests (no answer within the timeout, plus
any difference between answers received and requests Triton counted), and the lowest
cosine of an answer to the runtime's output for its sentence (dynamic INT8 picks its
scales per batch, so merged requests move a little). Rounds are interleaved; sentences/s is
the median over rounds, latencies are pooled.

In-process rows, in the same rotation: the runtime (``kdeploy.runtime``, the profile's
threads) one sentence per call, and in calls of the runtime batch size (``verify``'s: what
one full Triton batch costs the function Triton calls). Clients and server share this
machine's cores, so the server rows include the clients' own CPU time.
"""

from __future__ import annotations

import argparse
import csv
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import add_write_options, argv_of, write_block  # noqa: E402

START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 30


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", type=Path, help="a finished kdeploy run dir")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    ap.add_argument("--texts", type=int, default=1000, help="dev sentences sent per config")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--protocols", nargs="+", choices=["grpc", "http"], default=["grpc", "http"])
    ap.add_argument("--rounds", type=int, default=3)
    add_write_options(ap)
    return ap


def load_texts(data: Path, n: int) -> list[str]:
    """The first ``n`` distinct sentences of the dev split (both columns of a pair)."""
    with open(data / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    cols = [i for i, h in enumerate(header) if h in ("sentence1", "sentence2", "sentence")]
    texts = list(dict.fromkeys(r[i] for r in body for i in cols if len(r) > i))
    return texts[:n]


@dataclass
class Load:
    """What one configuration (protocol x clients) measured, over every round."""

    protocol: str
    clients: int
    rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    errors: int = 0
    dropped: int = 0
    requests: float = 0.0  # Triton's count of successful requests
    executions: float = 0.0  # Triton's count of model executions (batches)
    min_cosine: float = 1.0
    first_error: str = ""


class ServeProcess:
    """`python -m kdeploy.cli serve RUN` on free ports, until stop()."""

    def __init__(self, run: Path, log_dir: Path):
        from kdeploy.packaging.serve import free_ports

        self.ports = free_ports(3)
        cmd = [sys.executable, "-m", "kdeploy.cli", "serve", str(run),
               "--http-port", str(self.ports[0]), "--grpc-port", str(self.ports[1]),
               "--metrics-port", str(self.ports[2]),
               "--log-file", str(log_dir / "triton.log")]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._wait_ready()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.log.append(line)
            if line.startswith("ready;"):
                return
        self.stop()
        raise SystemExit(f"kdeploy serve did not start:\n{''.join(self.log)[-3000:]}")

    @property
    def url(self) -> dict[str, str]:
        return {"http": f"127.0.0.1:{self.ports[0]}", "grpc": f"127.0.0.1:{self.ports[1]}"}

    def metrics(self, model: str) -> tuple[float, float]:
        """(successful requests, executions) Triton counted for the model so far, once two
        reads 0.2 s apart agree (Triton counts a request just after answering it)."""
        last = self._metrics(model)
        for _ in range(25):
            time.sleep(0.2)
            now = self._metrics(model)
            if now == last:
                break
            last = now
        return last

    def _metrics(self, model: str) -> tuple[float, float]:
        url = f"http://127.0.0.1:{self.ports[2]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()

        def counter(name: str) -> float:
            m = re.search(rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
            return float(m.group(1)) if m else 0.0

        return counter("nv_inference_request_success"), counter("nv_inference_exec_count")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """One tritonclient (gRPC or HTTP) sending one sentence per request."""

    def __init__(self, protocol: str, url: str, model: str, output: str):
        if protocol == "grpc":
            import tritonclient.grpc as tc

            self.client = tc.InferenceServerClient(url)
            self.kw = {"client_timeout": REQUEST_TIMEOUT_S}
        else:
            import tritonclient.http as tc

            self.client = tc.InferenceServerClient(
                url, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
            )
            self.kw = {}
        self.tc, self.model, self.output = tc, model, output

    def embed(self, text: str) -> np.ndarray:
        x = self.tc.InferInput("text", [1, 1], "BYTES")
        x.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=object))
        return self.client.infer(self.model, [x], **self.kw).as_numpy(self.output)[0]

    def close(self) -> None:
        self.client.close()


def is_timeout(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("deadline", "timeout", "timed out", "unavailable"))


def one_round(server: ServeProcess, load: Load, model: str, output: str, texts: list[str],
              want: np.ndarray) -> None:  # fmt: skip
    """Every text once, shared round-robin among ``load.clients`` threads."""
    from kdeploy.runtime.metrics import cosine_rows

    got: dict[int, np.ndarray] = {}
    latencies: list[float] = []
    counts = {"errors": 0, "dropped": 0}
    lock = threading.Lock()
    ready = threading.Barrier(load.clients + 1)  # every client connected and warm
    start = threading.Barrier(load.clients + 1)

    def work(k: int) -> None:
        # made in its thread: tritonclient.http's gevent client stays in the thread it was
        # made in
        client = Client(load.protocol, server.url[load.protocol], model, output)
        try:
            client.embed(texts[0])  # warm the connection
            ready.wait()
            start.wait()
            for i in range(k, len(texts), load.clients):
                t0 = time.perf_counter()
                try:
                    y = client.embed(texts[i])
                except Exception as exc:  # counted, the load goes on
                    with lock:
                        counts["dropped" if is_timeout(exc) else "errors"] += 1
                        load.first_error = load.first_error or f"{type(exc).__name__}: {exc}"
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    got[i] = y
                    latencies.append(1000 * dt)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(load.clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=START_TIMEOUT_S)
    before = server.metrics(model)
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = server.metrics(model)
    load.rates.append(len(got) / wall)
    load.latencies_ms += latencies
    load.sent += len(texts)
    load.answered += len(got)
    load.errors += counts["errors"]
    load.dropped += counts["dropped"]
    load.requests += after[0] - before[0]
    load.executions += after[1] - before[1]
    if got:
        idx = sorted(got)
        cos = cosine_rows(np.stack([got[i] for i in idx]), want[idx]).min()
        load.min_cosine = min(load.min_cosine, float(cos))


class InProcess:
    """The runtime called in this process on the same sentences: one sentence per call, and
    calls of the runtime batch size (what one full Triton batch costs the bound function)."""

    def __init__(self, run: Path, texts: list[str]):
        from kdeploy.cli.serve import served_model
        from kdeploy.runtime import open_model

        model_dir, s = served_model(run)
        self.batch_size = s.batch_size
        self.model = open_model(model_dir, threads=s.threads, batch_size=s.batch_size)
        self.texts = texts
        self.want = np.concatenate([self.model.outputs([t]) for t in texts])  # + warm-up
        self.single_ms: list[float] = []
        self.batch_ms: list[float] = []
        self.single_rates: list[float] = []
        self.batch_rates: list[float] = []

    def one_round(self) -> None:
        t0 = time.perf_counter()
        for t in self.texts:
            t1 = time.perf_counter()
            self.model.outputs([t])
            self.single_ms.append(1000 * (time.perf_counter() - t1))
        self.single_rates.append(len(self.texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(0, len(self.texts), self.batch_size):
            t1 = time.perf_counter()
            self.model.outputs(self.texts[i : i + self.batch_size])
            self.batch_ms.append(1000 * (time.perf_counter() - t1))
        self.batch_rates.append(len(self.texts) / (time.perf_counter() - t0))

    def rows(self) -> list[str]:
        p, b = np.percentile, self.batch_size
        return [
            f"| runtime in-process, 1 sentence per call | - | {np.median(self.single_rates):.0f} "
            f"| {p(self.single_ms, 50):.2f} | {p(self.single_ms, 99):.2f} | 1 | 0 | 0 | 1 |",
            f"| runtime in-process, calls of {b} sentences | - | "
            f"{np.median(self.batch_rates):.0f} | {p(self.batch_ms, 50):.2f} per call | "
            f"{p(self.batch_ms, 99):.2f} per call | {b} | 0 | 0 | - |",
        ]

    def close(self) -> None:
        self.model.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from kdeploy.cli.serve import served_model
    from kdeploy.runtime.card import ModelCard

    model_dir, settings = served_model(args.run)
    card = ModelCard.load(model_dir)
    if card.task != "embedding":
        raise SystemExit("serve_load measures embedding models (the default job's)")
    texts = load_texts(args.data, args.texts)
    local = InProcess(args.run, texts)
    loads = [Load(p, c) for p in args.protocols for c in args.clients]
    ways: list[InProcess | Load] = [local, *loads]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(args.run, Path(tmp))
        try:
            served_line = next(ln for ln in server.log if ln.startswith("serving "))
            for r in range(args.rounds):  # rotated: a drifting shared CPU hits every way alike
                for way in ways[r % len(ways) :] + ways[: r % len(ways)]:
                    if isinstance(way, InProcess):
                        way.one_round()
                    else:
                        one_round(server, way, settings.name, card.output, texts, local.want)
        finally:
            server.stop()
            local.close()
    triton = re.search(r"with (Triton \S+ through PyTriton \S+)", served_line)
    lines = [
        f"Run `{args.run.name}` ({card.precision} {card.task}), served by `kdeploy serve` "
        f"({triton.group(1) if triton else 'Triton'}; dynamic batching: max "
        f"{settings.max_batch_size}, preferred {list(settings.preferred_batch_sizes)}, queue "
        f"delay {settings.max_queue_delay_us} us; {settings.instances} instance x "
        f"{settings.threads} threads, runtime batch {settings.batch_size}). {len(texts)} "
        f"{args.data.name} dev sentences per configuration, one per request, {args.rounds} "
        "interleaved round(s): sentences/s median over rounds, latency percentiles pooled; "
        "clients are threads on the same machine as the server.",
        "",
        "| way | protocol | sentences/s | p50 ms | p99 ms | mean batch | errors | dropped | "
        "min cosine vs runtime |",
        "|---|---|---|---|---|---|---|---|---|",
        *local.rows(),
    ]
    for load in loads:
        lat = load.latencies_ms or [float("nan")]
        # a request answered to the client but not counted by Triton (or the reverse)
        dropped = load.dropped + abs(load.answered - int(load.requests))
        batch = load.requests / load.executions if load.executions else float("nan")
        lines.append(
            f"| kdeploy serve, {load.clients} client(s), 1 sentence per request | "
            f"{load.protocol} | {np.median(load.rates):.0f} | {np.percentile(lat, 50):.2f} | "
            f"{np.percentile(lat, 99):.2f} | {batch:.1f} | {load.errors} | {dropped} | "
            f"{load.min_cosine:.4f} |"
        )
    lines += [f"\n{x.protocol} x {x.clients}: {x.first_error}" for x in loads if x.first_error]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_block(
            "serve_load",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="Serving under load (kdeploy serve)",
            results=args.results,
        )


if __name__ == "__main__":
    main()
