"""The device side (bench, verify, runtime) works with torch and transformers unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

HOST_ONLY = ("torch", "transformers", "optimum", "sentence_transformers", "onnx")

BLOCKER = textwrap.dedent(
    f"""
    import sys
    BLOCKED = {HOST_ONLY!r}

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {{name}} (device side must not need it)")
            return None

    sys.meta_path.insert(0, _Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    script = (
        BLOCKER
        + textwrap.dedent(code)
        + textwrap.dedent(
            f"""
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {HOST_ONLY!r})
        assert not leaked, leaked
        print("NO-HOST-MODULES")
        """
        )
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )


def test_blocker_really_blocks():
    res = run_blocked("import torch")
    assert res.returncode != 0 and "blocked import of torch" in res.stderr


def test_device_modules_import_without_host_stack():
    res = run_blocked(
        """
        import importlib, pkgutil, kdeploy
        # every module but the host-side training package
        names = [m.name for m in pkgutil.walk_packages(kdeploy.__path__, "kdeploy.")]
        assert "kdeploy.engine.scheduler" in names and "kdeploy.api" in names
        for name in names:
            if not name.startswith("kdeploy.train"):
                importlib.import_module(name)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "NO-HOST-MODULES" in res.stdout


def test_bench_and_verify_cli_on_a_run_dir(tiny_run):
    res = run_blocked(
        f"""
        from kdeploy.cli import main
        for cmd in (["bench", {str(tiny_run)!r}], ["verify", {str(tiny_run)!r}]):
            try:
                main(cmd)
            except SystemExit as e:
                assert e.code in (0, None), (cmd, e.code)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "NO-HOST-MODULES" in res.stdout
    assert "| student_int8 |" in res.stdout
    assert "spearman" in res.stdout


def test_runtime_encoder_without_torch(tiny_run):
    deploy = tiny_run / "package" / "deploy"
    res = run_blocked(
        f"""
        import numpy as np
        from kdeploy.runtime.model import Encoder
        with Encoder({str(deploy)!r}) as enc:
            v = enc.embed(["a small test sentence", "another one", "x"])
        print("SHAPE", v.shape, float(np.linalg.norm(v[0])))
        """
    )
    assert res.returncode == 0, res.stderr
    assert "SHAPE (3, 32)" in res.stdout


def test_encoder_matches_verify_numbers(tiny_run):
    """The runtime Encoder reproduces the run's own STS metric on the eval split."""
    import json

    from kdeploy.data import load_task_data
    from kdeploy.engine.rundir import open_run
    from kdeploy.runtime.metrics import cosine_rows, spearman
    from kdeploy.runtime.model import Encoder

    view = open_run(tiny_run)
    split = load_task_data(view.data_dir).eval_split()
    # Same batch size as verify: dynamic INT8 picks activation scales per batch, so the
    # batch composition changes the numbers slightly.
    verify = json.loads((tiny_run / "verify" / "verify.json").read_text())
    batch = verify["batch_size"]
    with Encoder(tiny_run / "package" / "deploy", batch_size=batch) as enc:
        score = 100 * spearman(
            cosine_rows(enc.embed(split.texts_a), enc.embed(split.texts_b)),
            np.asarray(split.labels),
        )
    assert score == verify["models"]["student_int8"]["value"]


def test_serve_check_and_bucketed_runtime_without_torch(tiny_run):
    """serve-check (Triton config via tritonclient, runtime replay, Triton-model requests)
    and the bucketing Encoder never import the host-side stack."""
    import pytest

    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    res = run_blocked(
        f"""
        from kdeploy.runtime import Encoder
        with Encoder({str(tiny_run)!r}, batch_size=2, bucketing=True) as enc:
            v = enc.embed(["short", "a much longer sentence than the first", "mid length"])
        print("SHAPE", v.shape)
        from kdeploy.cli import main
        try:
            main(["serve-check", {str(tiny_run)!r}])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        """
    )
    assert res.returncode == 0, res.stderr
    assert "SHAPE (3, 32)" in res.stdout
    assert "| runtime replay | pass |" in res.stdout
    assert "NO-HOST-MODULES" in res.stdout


def test_openvino_model_and_engine_choice_without_torch(tiny_ov_run):
    """The OpenVINO model dir runs in kdeploy.runtime, and bench + verify of a run with two
    engines measure both and pick one, with torch, transformers and onnx unimportable."""
    import pytest

    pytest.importorskip("openvino", reason="kdeploy[openvino] is not installed")
    ov_dir = tiny_ov_run / "quantize" / "openvino"
    res = run_blocked(
        f"""
        import numpy as np
        from kdeploy.runtime.model import Encoder
        with Encoder({str(ov_dir)!r}) as enc:
            v = enc.embed(["a small test sentence", "another one", "x"])
        print("SHAPE", v.shape)
        from kdeploy.cli import main
        for cmd in (["bench", {str(tiny_ov_run)!r}], ["verify", {str(tiny_ov_run)!r}]):
            try:
                main(cmd)
            except SystemExit as e:
                assert e.code in (0, None), (cmd, e.code)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "SHAPE (3, 32)" in res.stdout and "NO-HOST-MODULES" in res.stdout
    assert "| student_openvino |" in res.stdout
