"""`kdeploy serve` without a server: the function Triton calls answers as kdeploy.runtime
does, the profile's batching values, the interpreter's libpython for PyTriton's stub, the
port checks and the errors (the real server: tests/e2e/test_serve.py, marker ``serve``)."""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from kdeploy.cli import cli
from kdeploy.core.errors import DependencyError, ModelError, UsageError
from kdeploy.packaging import serve as sv
from kdeploy.packaging import serve_model
from kdeploy.runtime import Encoder
from kdeploy.runtime.card import ModelCard
from tests.conftest import real_sentences


def column(texts: list[str]) -> np.ndarray:
    """A request's BYTES input as Triton hands it over: [rows, 1] of bytes."""
    return np.array([[t.encode()] for t in texts], dtype=object)


def test_settings_are_the_profiles_as_in_the_triton_repository(tiny_run):
    from kdeploy.cli.serve import served_model
    from kdeploy.packaging.triton_check import load_config

    model_dir, s = served_model(tiny_run)
    assert model_dir == tiny_run / "package" / "deploy"
    cfg = load_config(next((tiny_run / "package" / "triton").glob("*/config.pbtxt")))
    assert s.name == cfg.name  # clients use one name for both servers
    assert s.max_batch_size == cfg.max_batch_size == 64
    assert list(s.preferred_batch_sizes) == list(cfg.dynamic_batching.preferred_batch_size)
    assert s.preferred_batch_sizes == (8,)  # bench.batch_sizes [1, 8] of the tiny profile
    assert s.max_queue_delay_us == cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert (s.instances, s.threads, s.batch_size) == (1, 2, 64)  # verify's batch size
    assert s.runner is not None and s.runner.cpu_only


def test_served_model_answers_as_the_runtime(tiny_run):
    from kdeploy.cli.serve import served_model

    model_dir, s = served_model(tiny_run)
    texts = real_sentences(12)
    model = serve_model.ServedModel(model_dir, s)
    try:
        inputs, outputs = model.interface()
        assert [(t.name, t.dtype, t.dims) for t in inputs] == [("text", "BYTES", (1,))]
        assert [(t.name, t.dtype, t.dims) for t in outputs] == [
            ("sentence_embedding", "FP32", (32,))
        ]
        # one Triton batch of three requests = one runtime call on their texts, in order
        answers = model([{"text": column(texts[:5])}, {"text": column(texts[5:6])},
                         {"text": column(texts[6:])}])  # fmt: skip
    finally:
        model.close()
    with Encoder(model_dir, threads=s.threads, batch_size=s.batch_size) as enc:
        want = enc.embed(texts)
    got = np.concatenate([a["sentence_embedding"] for a in answers])
    assert [len(a["sentence_embedding"]) for a in answers] == [5, 1, 6]
    assert np.array_equal(got, want)  # same texts, same batch layout: same bits


class FakeClassifier:
    """A classifier whose logits say which text (and pair) it was given."""

    card = ModelCard(task="classification", output="logits", max_seq_length=8,
                     labels=["negative", "positive"])  # fmt: skip

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str] | None]] = []

    def outputs(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        self.calls.append((texts, pairs))
        others = pairs or [""] * len(texts)
        score = [len(t) - len(p) for t, p in zip(texts, others, strict=True)]
        return np.array([[0.0, s] for s in score], dtype=np.float32)


def test_classifier_requests_with_and_without_pairs():
    model = serve_model.ServedModel.__new__(serve_model.ServedModel)
    model.model, model.card = FakeClassifier(), FakeClassifier.card
    answers = model(
        [
            {"text": column(["good movie", "bad"])},
            {"text": column(["abc"]), "text_pair": column(["abcdef"])},
            {"text": column(["fine"])},
        ]
    )
    # requests without pairs in one runtime call, those with pairs in another
    assert model.model.calls == [(["good movie", "bad", "fine"], None), (["abc"], ["abcdef"])]
    assert [a["label"][:, 0].tolist() for a in answers] == [
        [b"positive", b"positive"],
        [b"negative"],
        [b"positive"],
    ]
    assert answers[1]["logits"].tolist() == [[0.0, -3.0]]
    np.testing.assert_allclose(answers[0]["probabilities"].sum(1), 1.0, rtol=1e-6)


def test_decode_keeps_one_bad_request_from_failing_the_batch():
    col = np.array([[b"caf\xc3\xa9"], [b"\xff\xfe bad"], ["str"]], dtype=object)
    assert serve_model.decode(col) == ["café", "\ufffd\ufffd bad", "str"]


def test_stub_gets_this_interpreters_libpython(monkeypatch):
    lib = sv.python_lib_dir()
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        assert lib == Path(sysconfig.get_config_var("LIBDIR"))
        assert (lib / sysconfig.get_config_var("INSTSONAME")).is_file()
    else:
        assert lib is None
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    with sv.stub_environment(Path("/py/lib")):
        assert os.environ["LD_LIBRARY_PATH"] == "/py/lib:/opt/x"  # first: it wins
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/x"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    with sv.stub_environment(Path("/py/lib")):
        assert os.environ["LD_LIBRARY_PATH"] == "/py/lib"
    assert "LD_LIBRARY_PATH" not in os.environ


def test_ports_taken_or_shared_are_usage_errors():
    http, grpc, metrics = sv.free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grpc))
        busy.listen()
        with pytest.raises(UsageError, match=f"127.0.0.1:{grpc}") as exc:
            sv.check_ports(sv.Endpoints("127.0.0.1", http, grpc, metrics))
    assert exc.value.where == "--grpc-port" and exc.value.exit_code == 2
    with pytest.raises(UsageError, match="must differ"):
        sv.check_ports(sv.Endpoints("127.0.0.1", http, http, metrics))
    sv.check_ports(sv.Endpoints("127.0.0.1", http, grpc, metrics))  # all free again


def test_start_failures_say_what_is_wrong(tmp_path, monkeypatch):
    log = tmp_path / "triton.log"
    server = sv.Server(tmp_path, SimpleNamespace(name="m"), log_file=log)
    log.write_text(
        "E1202 failed to load 'm' version 1: AttributeError: '_thread.RLock' object has no "
        "attribute '_recursion_count'\n"
    )
    err = server._start_failure(RuntimeError("load failed for model 'm'"))
    assert isinstance(err, DependencyError) and err.exit_code == 9
    assert "Python-backend stub" in err.what and sys.executable in err.what
    assert err.where == str(log)
    monkeypatch.setattr(sv, "python_lib_dir", lambda: None)
    err = server._start_failure(RuntimeError("load failed"))
    assert "--enable-shared" in err.fix
    log.write_text("E1202 something else broke\n")
    err = server._start_failure(TimeoutError("Triton Inference Server is not ready"))
    assert isinstance(err, ModelError) and "is not ready" in err.what


def test_cli_without_the_serve_extra_exits_9(tiny_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytriton", None)  # import pytriton raises ImportError
    res = CliRunner().invoke(cli, ["serve", str(tiny_run)])
    assert res.exit_code == 9, res.output
    assert "pip install 'kdeploy[serve]'" in res.output and "Traceback" not in res.output


def test_cli_on_a_dir_that_is_not_a_run_exits_6(tmp_path):
    res = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert res.exit_code == 6, res.output
    assert "not a kdeploy run directory" in res.output
