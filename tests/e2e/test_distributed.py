"""Data-parallel training under a real ``torchrun`` (2 processes, gloo, on this CPU box).

- A 2-process run of the tiny BERT through the whole cpu-int8 pipeline writes the same
  artifact layout as the 1-process run (``tiny_run``, the same profile, data and global
  batch), takes the same number of optimizer steps, and its student lands within a stated
  tolerance of the 1-process student (dev score, KD loss, verify's task metric). Without
  dropout, 2 processes and 1 train the same weights (float summation order aside).
- SIGINT to the launcher mid-training stops every rank; the rerun resumes from the last
  checkpoint, with 2 processes or with 1 (checkpoints do not depend on the world size).
- A rank that raises makes its stage fail on every rank: the failing rank says why, every
  rank exits with the stage-failure code (7; torchrun may stop one first, -15), torchrun
  reports exit code 7 as the root cause (and exits 1 itself, as it does for any failed
  worker), nothing is recorded as finished, and the rerun resumes. An error that rank 0
  finds alone (preflight) reaches the waiting ranks: all exit with its code.

Each launch has a timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdeploy.engine.manifest import load_manifest
from tests.conftest import ROOT, TINY_OVERRIDES

pytestmark = pytest.mark.ddp

TIMEOUT = 300  # seconds per launch; the tiny runs take 10-60 s
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
# the 2-process student vs the 1-process one at the same global batch, with dropout (each rank
# draws its own masks): measured 1.0 dev points, 4% in KD loss and 0.1 in verify's metric on
# the tiny BERT (17 steps); without dropout the two students are the same (the last test)
DEV_TOLERANCE = 3.0  # STS-B dev Spearman x100
LOSS_TOLERANCE = 0.10  # relative, last-epoch KD loss
METRIC_TOLERANCE = 3.0  # verify's task metric of the INT8 student, x100
SAME_WEIGHTS = 1e-5  # max |diff| of any weight, without dropout (measured 1e-6)


def torchrun(procs: int, *args: str) -> list[str]:
    # --standalone: a rendezvous on a free local port (tests may run beside other jobs)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(procs), *args]  # fmt: skip


def compress_args(model: Path, data: Path, out: Path, *overrides: str) -> list[str]:
    sets = [x for o in (*TINY_OVERRIDES, *overrides) for x in ("--set", o)]
    return ["-m", "kdeploy", "compress", "--model", str(model), "--data", str(data),
            "--out", str(out), "--no-progress", *sets]  # fmt: skip


def launch(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env={**ENV, **env})


def layout(run: Path) -> set[str]:
    """Every file of a run dir, by relative path (what a run writes, not what it holds)."""
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def distill_metrics(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]["distill"]["metrics"]


def task_metric(run: Path, model: str) -> float:
    return json.loads((run / "verify" / "verify.json").read_text())["models"][model]["value"]


def test_two_processes_match_one(tiny_run, tiny_bert, stsb_small, tmp_path):
    out, scratch = tmp_path / "ddp", tmp_path / "tmp"
    scratch.mkdir()
    res = launch(torchrun(2, *compress_args(tiny_bert, stsb_small, out)), TMPDIR=str(scratch))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    assert len(re.findall(r"^ran \d+ stage", res.stdout, re.M)) == 1  # rank 0 alone reports
    assert layout(out) == layout(tiny_run)
    assert not list(out.glob("*.tmp"))
    assert not list(scratch.glob("kdeploy-*"))  # rank 1's scratch dirs are gone
    one, two = distill_metrics(tiny_run), distill_metrics(out)
    assert two["steps"] == one["steps"] and two["texts"] == one["texts"]
    assert abs(two["best_dev_score"] - one["best_dev_score"]) <= DEV_TOLERANCE
    assert abs(two["final_loss"] - one["final_loss"]) <= LOSS_TOLERANCE * one["final_loss"]
    got, want = task_metric(out, "student_int8"), task_metric(tiny_run, "student_int8")
    assert abs(got - want) <= METRIC_TOLERANCE
    print(
        f"1 process: dev {one['best_dev_score']:.2f}, loss {one['final_loss']:.6f}, "
        f"verify {want:.2f}; 2 processes: dev {two['best_dev_score']:.2f}, "
        f"loss {two['final_loss']:.6f}, verify {got:.2f}"
    )


def interrupt(cmd: list[str], trigger: str) -> tuple[int, str]:
    """Start ``cmd``, SIGINT the launcher right after ``trigger`` is logged."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)  # fmt: skip
    assert proc.stdout is not None
    lines, sent = [], False
    for line in proc.stdout:
        lines.append(line)
        if not sent and line.startswith(trigger):
            proc.send_signal(signal.SIGINT)
            sent = True
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert sent, "trigger never logged:\n" + "".join(lines)
    return proc.returncode, "".join(lines)


@pytest.mark.parametrize("resume_procs", [2, 1])
def test_sigint_to_torchrun_then_rerun_resumes(tiny_bert, stsb_small, tmp_path, resume_procs):
    out = tmp_path / "run"
    args = compress_args(tiny_bert, stsb_small, out, "distill.epochs=6")
    code, log = interrupt(torchrun(2, *args, "--until", "distill"), "[distill] epoch 1/6")
    assert code != 0, log[-3000:]
    assert "interrupted:" in log and "rerun the same command to resume" in log
    m = load_manifest(out)
    assert m is not None and "distill" not in m.stages
    assert (out / "distill.tmp" / "checkpoint" / "state.json").is_file()
    assert not list(out.glob("*.tmp.tmp"))

    rerun = [*args, "--until", "distill"]
    cmd = torchrun(2, *rerun) if resume_procs == 2 else [sys.executable, *rerun]
    res = launch(cmd)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resuming distill after epoch" in res.stderr
    metrics = distill_metrics(out)
    assert metrics["epochs_run"] == 6 and [h["epoch"] for h in metrics["history"]] == [
        1, 2, 3, 4, 5, 6
    ]  # fmt: skip
    assert not (out / "distill.tmp").exists()


FAILING_RANK = """
import sys
from kdeploy.core import ranks
from kdeploy.train import trainer

real = trainer._Training.batch_loss
calls = []

def batch_loss(self, idx):
    calls.append(1)
    if ranks.current().rank == 1 and len(calls) == 3:
        raise RuntimeError("injected failure on rank 1")
    return real(self, idx)

trainer._Training.batch_loss = batch_loss
from kdeploy.cli import main
sys.argv[0] = "kdeploy"
main()
"""


def test_a_rank_that_raises_fails_the_stage_everywhere(tiny_bert, stsb_small, tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    out = tmp_path / "run"
    args = compress_args(tiny_bert, stsb_small, out, "distill.epochs=2")[2:]  # no -m kdeploy
    res = launch(torchrun(2, str(script), *args, "--until", "distill"))
    log = res.stdout + res.stderr
    assert res.returncode != 0
    assert "stage error: stage distill failed on rank 1: RuntimeError: injected failure" in log
    # torchrun's summary: every rank exited with the stage-failure code (or was stopped by
    # torchrun before it could), the first one to fail with it; torchrun itself exits 1
    codes = re.findall(r"exitcode\s*: (-?\d+)", log)
    assert set(codes) <= {"7", "-15"} and "7" in codes, codes
    root = log[log.index("Root Cause") :]
    assert re.search(r"exitcode\s*: 7", root), root
    m = load_manifest(out)
    assert m is not None and "distill" not in m.stages

    res = launch([sys.executable, "-m", "kdeploy", *args, "--until", "distill"])
    assert res.returncode == 0, res.stderr[-4000:]
    assert "[distill] done" in res.stderr


def test_without_dropout_two_processes_train_the_same_student(tiny_bert, stsb_small, tmp_path):
    import shutil

    from safetensors.torch import load_file

    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    students = []
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        args = [*compress_args(model, stsb_small, out, "distill.epochs=2"), "--until", "distill"]
        res = launch(torchrun(2, *args) if procs == 2 else [sys.executable, *args])
        assert res.returncode == 0, res.stderr[-4000:]
        students.append(load_file(str(out / "distill" / "student" / "model.safetensors")))
    one, two = students
    assert one.keys() == two.keys()
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff < SAME_WEIGHTS, diff


def test_sparse_fine_tune_and_qat_train_on_two_processes(tiny_bert, stsb_small, tmp_path):
    """The other two training stages: 2:4 KD fine-tuning (the masks rank 0 chose, kept on
    every rank) and QAT through modelopt's fake quantizers, each in DDP, against 1 process."""
    from tests.unit.test_sparsify_qat import SPARSE_QAT

    extra = [o for o in SPARSE_QAT if o not in TINY_OVERRIDES]
    records = []
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        args = [*compress_args(tiny_bert, stsb_small, out, *extra), "--until", "quantize"]
        res = launch(torchrun(2, *args) if procs == 2 else [sys.executable, *args])
        assert res.returncode == 0, res.stderr[-4000:]
        stages = json.loads((out / "manifest.json").read_text())["stages"]
        records.append(
            {
                "sparsify": stages["sparsify"]["metrics"]["fine_tune"],
                "quantize": stages["quantize"]["metrics"]["student"]["fine_tune"],
            }
        )
    one, two = records
    for stage in ("sparsify", "quantize"):
        assert two[stage]["steps"] == one[stage]["steps"] > 0, stage
        loss_one, loss_two = one[stage]["final_loss"], two[stage]["final_loss"]
        assert abs(loss_two - loss_one) <= LOSS_TOLERANCE * loss_one, (stage, loss_one, loss_two)


def test_an_error_on_rank_0_alone_reaches_the_waiting_ranks(tiny_bert, stsb_small, tmp_path):
    """A usage error found by rank 0's preflight (the other ranks wait for its first
    announcement): every rank exits with that error's code, and rank 0 alone says why."""
    args = compress_args(tiny_bert, stsb_small, tmp_path / "run")
    res = launch(torchrun(2, *args, "--until", "no-such-stage"))
    log = res.stdout + res.stderr
    assert res.returncode != 0
    assert log.count("usage error:") == 1, log[-3000:]
    codes = re.findall(r"exitcode\s*: (-?\d+)", log)
    assert set(codes) <= {"2", "-15"} and "2" in codes, codes
