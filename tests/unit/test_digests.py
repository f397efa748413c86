"""sha256 of every artifact in the manifest; every stage checks its inputs before it runs;
no file is hashed twice in one pipeline run."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

import kdeploy.core.fsutil
from kdeploy.api import RunRequest, run_pipeline
from kdeploy.config import load_profile
from kdeploy.core.errors import RunDirError
from kdeploy.core.fsutil import sha256_file
from kdeploy.engine.manifest import load_manifest
from kdeploy.stages import ORDER, RunOptions
from tests.conftest import TINY_OVERRIDES


def run(model, data, out, extra=(), log=lambda m: None):
    req = RunRequest(
        profile=load_profile("cpu-int8", [*TINY_OVERRIDES, *extra]),
        model_dir=model,
        data_dir=data,
        out_dir=out,
        options=RunOptions(progress=False),
    )
    return run_pipeline(req, log=log)


@pytest.fixture
def hashed(monkeypatch) -> Counter:
    """Every file kdeploy hashes (resolved path -> times)."""
    seen: Counter = Counter()
    real = kdeploy.core.fsutil.sha256_file

    def counting(path):
        seen[Path(path).resolve()] += 1
        return real(path)

    monkeypatch.setattr(kdeploy.core.fsutil, "sha256_file", counting)
    return seen


def test_manifest_has_the_sha256_of_every_artifact_file(tiny_run):
    m = load_manifest(tiny_run)
    recorded = {}
    for rec in m.stages.values():
        for art in rec.outputs.values():
            recorded.update(art.file_paths(tiny_run))
    on_disk = [
        p
        for name in ORDER
        for p in (tiny_run / name).rglob("*")
        if p.is_file() and p.name not in ("metrics.json", ".kdeploy-key")
    ]
    assert on_disk and sorted(on_disk) == sorted(recorded)
    for path, sha in recorded.items():
        assert sha256_file(path) == sha, path


def test_rerun_hashes_each_file_once(tiny_run_copy, tiny_bert, stsb_small, hashed):
    result = run(tiny_bert, stsb_small, tiny_run_copy)
    assert result.ran == []
    twice = {p: n for p, n in hashed.items() if n > 1}
    assert twice == {}
    m = load_manifest(tiny_run_copy)
    artifacts = {
        p.resolve() for rec in m.stages.values() for a in rec.outputs.values()
        for p in a.file_paths(tiny_run_copy)
    }  # fmt: skip
    teacher = {p.resolve() for p in tiny_bert.iterdir() if p.is_file()}
    data = {p.resolve() for p in stsb_small.glob("*.tsv")}
    assert set(hashed) == artifacts | teacher | data


def test_partial_rerun_checks_inputs_without_hashing_twice(
    tiny_run_copy, tiny_bert, stsb_small, hashed
):
    """bench, verify and package rerun on reused export/quantize outputs: those are hashed
    once (the reuse check) and their pre-stage check costs a stat, not a second hash."""
    result = run(tiny_bert, stsb_small, tiny_run_copy, ["bench.iterations=4"])
    assert result.ran == ["bench", "verify", "package"]
    assert {p: n for p, n in hashed.items() if n > 1} == {}
    onnx = (tiny_run_copy / "quantize" / "student" / "model.onnx").resolve()
    assert hashed[onnx] == 1


def _corrupt_when(trigger: str, path: Path):
    """A log callback that damages ``path`` the moment ``trigger`` is logged."""

    def log(msg: str) -> None:
        if msg.startswith(trigger):
            path.write_bytes(path.read_bytes()[:-8] + b"\xff" * 8)

    return log


def test_upstream_artifact_changed_mid_run_is_refused_then_rebuilt(
    tiny_run_copy, tiny_bert, stsb_small
):
    """export's output changes after its reuse check and before quantize starts: quantize
    refuses to use it; the rerun rebuilds export (bit-identical) and goes on."""
    onnx = tiny_run_copy / "export" / "student" / "model.onnx"
    original = sha256_file(onnx)
    extra = ["quantize.per_channel=false"]
    with pytest.raises(RunDirError, match="changed while kdeploy was running") as e:
        run(tiny_bert, stsb_small, tiny_run_copy, extra, _corrupt_when("[quantize] running", onnx))
    assert str(onnx) in e.value.what and "stage quantize" in e.value.what
    assert not (tiny_run_copy / "quantize.tmp").exists()
    logs: list[str] = []
    result = run(tiny_bert, stsb_small, tiny_run_copy, extra, logs.append)
    assert result.ran == ["export", "quantize", "bench", "verify", "package"]
    assert any("outputs changed on disk" in m for m in logs)
    assert sha256_file(onnx) == original


def test_teacher_changed_mid_run_is_refused(tiny_run_copy, tiny_bert, stsb_small, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert, teacher)
    tok = teacher / "tokenizer.json"
    with pytest.raises(RunDirError, match="teacher_model, an input of stage export"):
        run(teacher, stsb_small, tiny_run_copy, ["export.atol=0.001"],
            _corrupt_when("[export] running", tok))  # fmt: skip
    assert not (tiny_run_copy / "export.tmp").exists()
