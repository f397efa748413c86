"""Real Ctrl-C: SIGINT to a real `kdeploy compress` process at several points, then a rerun.

For each point the test starts `python -m kdeploy.cli compress` on the tiny BERT, waits for
a log line, sends SIGINT, and checks that the process exits 130 with the "rerun the same
command to resume" message, no traceback, and a run dir holding nothing half-written (a
valid manifest whose artifacts match their sha256, no temp dirs except distill's
checkpoint dir). It then reruns the same command and checks that the stages finished
before the signal are reused, not redone, and that the final artifacts are bit-identical
to an uninterrupted run's.

Compared bit for bit: the student (safetensors, config, tokenizer), the teacher and student
ONNX models, the INT8 models, and the deployable model dir. Not comparable bit for bit:
``bench/bench.json`` and the report hold wall-clock timings, and ``verify.json`` embeds the
latency budget's measured value; for those the test compares the task metric of every
model in ``verify.json`` (deterministic: same models, same data, same thread count).

The signal lands a few milliseconds after the line is read, so its exact place inside the
stage varies from run to run; the assertions hold wherever it lands, and the rerun's log
shows where that was (e.g. "resuming distill after epoch 1").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdeploy.core.fsutil import sha256_file
from kdeploy.engine.manifest import load_manifest
from kdeploy.stages import ORDER
from tests.conftest import ROOT, TINY_OVERRIDES, build_tiny_bert, make_data_slice, shared_data

pytestmark = pytest.mark.sigint

OVERRIDES = [*TINY_OVERRIDES, "distill.epochs=3"]
# Files compared bit for bit between the interrupted+resumed and the uninterrupted run.
COMPARED = ("distill/student", "export", "quantize", "package/deploy")

STAGES = [s for s in ORDER if s not in ("build", "sparsify")]  # (both off in cpu-int8)
# (id, log line prefix that triggers SIGINT, stage the signal is meant to land in)
POINTS = [
    ("distill-teacher-targets", "[distill] student keeps teacher layers", "distill"),
    ("distill-training", "[distill] epoch 1/3", "distill"),
    ("between-distill-and-export", "[distill] done", "export"),
    ("export-student", "[export] teacher:", "export"),
    ("bench", "[bench] teacher_fp32: p50", "bench"),
    ("verify", "[verify] running", "verify"),
]


def command(model: Path, data: Path, out: Path) -> list[str]:
    sets = [x for o in OVERRIDES for x in ("--set", o)]
    return [sys.executable, "-m", "kdeploy.cli", "compress", "--model", str(model), "--data",
            str(data), "--out", str(out), "--no-progress", *sets]  # fmt: skip


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr + res.stdout
    return res


def run_and_interrupt(cmd: list[str], trigger: str) -> tuple[int, str]:
    """Start the command, SIGINT it right after ``trigger`` is logged; (exit code, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)  # fmt: skip
    lines = []
    sent = False
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if not sent and line.startswith(trigger):
            proc.send_signal(signal.SIGINT)
            sent = True
    proc.wait(timeout=300)
    assert sent, "trigger line never logged:\n" + "".join(lines)
    return proc.returncode, "".join(lines)


def artifact_hashes(run: Path) -> dict[str, str]:
    out = {}
    for rel in COMPARED:
        for p in sorted((run / rel).rglob("*")):
            if p.is_file() and p.name != "metrics.json" and not p.name.startswith("."):
                out[p.relative_to(run).as_posix()] = sha256_file(p)
    return out


def task_metrics(run: Path) -> dict[str, float]:
    verify = json.loads((run / "verify" / "verify.json").read_text())
    return {name: m["value"] for name, m in verify["models"].items()}


def assert_consistent(run: Path) -> list[str]:
    """Nothing half-written; returns the stages the manifest records as finished."""
    m = load_manifest(run)
    assert m is not None
    for rec in m.stages.values():
        for art in rec.outputs.values():
            assert art.check(run) == [], art.path
    tmp_dirs = sorted(p.name for p in run.glob("*.tmp"))
    assert set(tmp_dirs) <= {"distill.tmp"}, tmp_dirs
    outside_distill = [
        p for p in run.rglob("*") if ".tmp" in p.name and "distill.tmp" not in p.parts
        and p.name != "distill.tmp"
    ]  # fmt: skip
    assert outside_distill == []
    if (run / "distill.tmp").exists():  # kept only when it holds something to resume from
        kept = {p.name for p in (run / "distill.tmp").iterdir()}
        assert kept & {"checkpoint", "teacher_targets.npy"}, kept
    return list(m.stages)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    model = build_tiny_bert(root / "model")
    data = make_data_slice(
        shared_data("stsb"), root / "stsb", {"train": 150, "dev": 40, "test": 40}
    )
    clean = root / "clean"
    t0 = time.perf_counter()
    run_to_end(command(model, data, clean))
    return model, data, clean, time.perf_counter() - t0


@pytest.mark.parametrize("point, trigger, lands_in", POINTS, ids=[p[0] for p in POINTS])
def test_sigint_then_rerun_gives_identical_artifacts(setup, tmp_path, point, trigger, lands_in):
    model, data, clean, _ = setup
    out = tmp_path / "run"
    cmd = command(model, data, out)

    code, err = run_and_interrupt(cmd, trigger)
    assert code == 130, err[-3000:]
    assert "interrupted:" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    done = assert_consistent(out)
    assert lands_in not in done  # the stage the signal hit was not recorded as finished
    assert done == STAGES[: len(done)]

    res = run_to_end(cmd)
    for stage in STAGES:
        if stage in done:
            assert f"[{stage}] up to date, reused" in res.stderr
        else:
            assert f"[{stage}] running" in res.stderr
    if point == "distill-training":
        assert re.search(r"resuming distill\w* after epoch", res.stderr)
    assert_consistent(out)
    assert not (out / "distill.tmp").exists()

    resumed = [ln for ln in res.stderr.splitlines() if "resum" in ln or "reusing" in ln]
    print(f"{point}: finished before SIGINT {done}; rerun: {resumed}")
    assert artifact_hashes(out) == artifact_hashes(clean)
    assert task_metrics(out) == task_metrics(clean)
