"""Atomic writes and content digests: nothing half-written survives a crash or Ctrl-C."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kdeploy.core.errors import RunDirError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path, patterns: tuple[str, ...] = ("*",)) -> list[Path]:
    """Regular files under ``root`` (or ``root`` itself), sorted, hidden files skipped."""
    if root.is_file():
        return [root]
    files: set[Path] = set()
    for pat in patterns:
        for p in root.rglob(pat):
            rel = p.relative_to(root)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                files.add(p)
    return sorted(files)


def digest_files(
    root: Path,
    patterns: tuple[str, ...] = ("*",),
    sha256: Callable[[Path], str] | None = None,
) -> dict[str, str]:
    """{relative path: sha256} for every file under root (a file maps to its own name).

    ``sha256`` replaces :func:`sha256_file` (the pipeline passes its hash-once cache)."""
    sha = sha256 or sha256_file
    if root.is_file():
        return {root.name: sha(root)}
    return {p.relative_to(root).as_posix(): sha(p) for p in tree_files(root, patterns)}


def combine_digests(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode())
        h.update(b"\0")
        h.update(files[rel].encode())
        h.update(b"\n")
    return h.hexdigest()


def digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _raise_write_error(path: Path, exc: OSError) -> None:
    if exc.errno == errno.ENOSPC:
        raise RunDirError(
            f"no space left on device while writing {path}",
            where=str(path),
            fix="free disk space, then rerun the same command to resume",
        ) from exc
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise RunDirError(
            f"cannot write {path}: {exc.strerror}",
            where=str(path),
            fix="choose a writable output directory with --out",
        ) from exc
    raise RunDirError(
        f"cannot write {path}: {exc}",
        where=str(path),
        fix="check the output directory (--out) and the disk, then rerun the same command",
    ) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        _raise_write_error(path, exc)
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temp dir into place; an older ``dst`` is removed only afterwards.

    The two renames run with Ctrl-C held back, so ``dst`` is never missing because of it."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    with deferred_sigint():
        if dst.exists():
            os.replace(dst, old)
        os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


_deferring = False


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold back Ctrl-C while a few renames commit a stage; re-raise it right after.

    Nested uses defer to the outermost one, which alone re-raises."""
    global _deferring
    if _deferring:
        yield
        return
    received: list[Any] = []

    def _handler(signum: int, frame: Any) -> None:
        received.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, _handler)
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt
