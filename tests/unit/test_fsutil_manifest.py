"""Atomic writes and manifest digests."""

from __future__ import annotations

import errno
import os

import pytest

from kdeploy.core.errors import RunDirError
from kdeploy.core.fsutil import atomic_write_json, atomic_write_text, digest_files
from kdeploy.engine.manifest import Manifest, load_manifest, make_artifact


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert p.read_text().strip().endswith("}")
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_content_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(RunDirError, match="no space left"):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_artifact_check_detects_change_and_loss(tmp_path):
    d = tmp_path / "stage" / "out"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"abc")
    (d / "tok.json").write_text("{}")
    art = make_artifact(tmp_path, d, digest_files(d))
    assert art.check(tmp_path) == []
    (d / "model.onnx").write_bytes(b"abd")
    assert "does not match its sha256" in art.check(tmp_path)[0]
    (d / "tok.json").unlink()
    assert any("missing" in p for p in art.check(tmp_path))


def test_manifest_roundtrip_and_corruption(tmp_path):
    m = Manifest.new(profile={"name": "p"}, model={}, data={})
    m.save(tmp_path)
    assert load_manifest(tmp_path).profile == {"name": "p"}
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="corrupted"):
        load_manifest(tmp_path)
