"""The runtime in a fresh venv that holds only kdeploy's base dependencies.

Stronger than an import blocker: torch and transformers are not installed at all. The venv
is built offline from the distributions already installed here: every file of each base
dependency (and of what it needs, recursively) is linked into the new site-packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_closure() -> dict[str, object]:
    """Distribution name -> Distribution for the base deps and their requirements."""
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(d).name for d in deps]
    seen: dict[str, object] = {}
    while todo:
        name = _canon(todo.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.skip(f"base dependency {name} is not installed here")
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "base"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    for dist in base_closure().values():
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    return venv


def test_fresh_venv_has_no_torch_and_runs_the_runtime(base_venv, tiny_run):
    names = set(base_closure())
    assert not names & {"torch", "transformers", "optimum", "onnx", "sentence-transformers"}
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        for m in ("torch", "transformers", "onnx", "optimum", "tritonclient"):
            assert importlib.util.find_spec(m) is None, m + " is installed"
        from kdeploy.runtime import Encoder
        with Encoder({str(tiny_run)!r}, batch_size=4) as enc:
            v = enc.embed(["a sentence", "and another, longer sentence", "x"] * 3)
        print("SHAPE", v.shape)
        from kdeploy.cli import main
        for cmd in (["verify", {str(tiny_run)!r}], ["serve-check", {str(tiny_run)!r}]):
            try:
                main(cmd)
            except SystemExit as e:
                print("EXIT", cmd[0], e.code)
        print("MODULES", sorted(m for m in sys.modules if m.split(".")[0] in ("torch",
              "transformers")))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}
    res = subprocess.run(
        [str(base_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "SHAPE (9, 32)" in res.stdout
    assert "EXIT verify 0" in res.stdout or "EXIT verify None" in res.stdout
    # serve-check needs the Triton schema: a clear missing-dependency error, exit 9
    assert "EXIT serve-check 9" in res.stdout
    assert "pip install 'kdeploy[triton]'" in res.stderr
    assert "MODULES []" in res.stdout
