"""Ctrl-C while a stage is committed: held back until the stage is both in place and in
the manifest (real SIGINTs to this process)."""

from __future__ import annotations

import os
import signal

import pytest

from kdeploy.core.errors import Interrupted
from kdeploy.core.fsutil import deferred_sigint, replace_dir
from kdeploy.engine.manifest import load_manifest


def test_nested_deferral_raises_once_after_the_outer_block(tmp_path):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            with deferred_sigint():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner body")
            steps.append("after inner")  # the inner block must not raise
        steps.append("never")
    assert steps == ["inner body", "after inner"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_replace_dir_is_not_split_by_ctrl_c(tmp_path, monkeypatch):
    src, dst = tmp_path / "new", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_text("new")
    dst.mkdir()
    (dst / "f").write_text("old")
    real_replace = os.replace
    calls = []

    def replace_then_sigint(a, b):
        real_replace(a, b)
        calls.append(b)
        if len(calls) == 1:  # Ctrl-C between moving the old dir away and the new one in
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(src, dst)
    assert (dst / "f").read_text() == "new"
    assert not src.exists()


def test_ctrl_c_while_committing_a_stage_keeps_it(tmp_path, tiny_run_copy, tiny_bert, stsb_small,
                                                  monkeypatch):  # fmt: skip
    """SIGINT right after bench's dir is moved into place: the manifest still records bench,
    so the rerun reuses it instead of redoing it."""
    import kdeploy.core.fsutil
    from tests.unit.test_pipeline import run

    real = kdeploy.core.fsutil.replace_dir

    def replace_then_sigint(src, dst):
        real(src, dst)
        if dst.name == "bench":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(kdeploy.core.fsutil, "replace_dir", replace_then_sigint)
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        run(tiny_bert, stsb_small, tiny_run_copy, ["bench.iterations=4"])
    monkeypatch.setattr(kdeploy.core.fsutil, "replace_dir", real)
    m = load_manifest(tiny_run_copy)
    assert "bench" in m.stages
    assert m.stages["bench"].outputs["bench"].check(tiny_run_copy) == []
    result = run(tiny_bert, stsb_small, tiny_run_copy, ["bench.iterations=4"])
    assert "bench" in result.reused
    assert result.ran == ["verify", "package"]


def test_ctrl_c_while_a_stage_sets_up_its_work_dir(tiny_run_copy, tiny_bert, stsb_small,
                                                   monkeypatch):  # fmt: skip
    """Found by the real-SIGINT test: a Ctrl-C between creating verify.tmp and starting the
    stage left verify.tmp behind."""
    import kdeploy.core.fsutil
    from tests.unit.test_pipeline import run

    real = kdeploy.core.fsutil.atomic_write_text

    def write_then_sigint(path, text):
        real(path, text)
        if path.parent.name == "verify.tmp":
            raise KeyboardInterrupt

    monkeypatch.setattr(kdeploy.core.fsutil, "atomic_write_text", write_then_sigint)
    with pytest.raises(Interrupted, match="stopped during stage verify"):
        run(tiny_bert, stsb_small, tiny_run_copy, ["verify.max_eval_examples=30"])
    assert not (tiny_run_copy / "verify.tmp").exists()
