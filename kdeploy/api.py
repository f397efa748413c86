"""kdeploy's Python API: everything the CLI does, callable without it.

- ``run_pipeline(RunRequest(...))``: ``kdeploy compress``
- ``run_device_stages(run_dir, until=...)``: ``kdeploy build``
- ``bench(target, ...)`` / ``verify(target, ...)``: ``kdeploy bench`` / ``kdeploy verify`` on a
  run dir or a model dir (torch-free); on a run dir they first check the sha256 of every
  model and every packaged file against the manifest (``engine.rundir.open_run``)
- ``serve_check(run_dir)``: ``kdeploy serve-check`` (torch-free)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdeploy.config import LoadedProfile, load_profile
from kdeploy.config.settings import runner_settings
from kdeploy.core.errors import RunDirError, UsageError
from kdeploy.core.fsutil import read_json
from kdeploy.engine.rundir import RunView, is_run_dir, open_run
from kdeploy.engine.runs import RunRequest, follow_leader, run_device_stages, run_pipeline
from kdeploy.engine.scheduler import BudgetMissed, RunResult
from kdeploy.evaluation.bench import bench_models, throughput_texts
from kdeploy.evaluation.verify import verify_models
from kdeploy.runtime.card import CARD_NAME, model_dir_of

__all__ = [
    "BudgetMissed",
    "RunRequest",
    "RunResult",
    "Target",
    "bench",
    "follow_leader",
    "open_target",
    "run_device_stages",
    "run_pipeline",
    "serve_check",
    "verify",
]

Log = Callable[[str], None]


@dataclass
class Target:
    """What ``kdeploy bench`` / ``verify`` measure: a run's models, or one model dir."""

    models: dict[str, Path]  # table name -> model dir
    view: RunView | None  # the run, when the target is a run directory

    def profile(self, profile_ref: str | None, overrides: list[str]) -> LoadedProfile:
        """--profile, else the run's own, else cpu-int8."""
        if profile_ref:
            return load_profile(profile_ref, overrides)
        if self.view is not None:
            return load_profile(self.view.run_dir / "profile.yaml", overrides)
        return load_profile("cpu-int8", overrides)


def open_target(target: Path, reference: Path | None = None) -> Target:
    """A run dir (its models, after checking their sha256) or a model dir / model file."""
    if is_run_dir(target):
        view = open_run(target)
        return Target(view.models, view)
    if not (model_dir_of(target) / CARD_NAME).is_file():
        raise RunDirError(
            f"{target} is not a kdeploy run directory or model dir",
            where=str(target),
            fix="pass a run dir (with manifest.json) or a model dir / .onnx file written by "
            "kdeploy (with kdeploy_model.json)",
        )
    models = {"model": model_dir_of(target)}
    if reference is not None:
        models = {"teacher_fp32": model_dir_of(reference), "student_fp32": model_dir_of(target)}
    return Target(models, None)


def bench(
    target: Path,
    *,
    data_dir: Path | None = None,
    profile_ref: str | None = None,
    overrides: list[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Latency grid and throughput of a run dir's models or of one model (no torch)."""
    t = open_target(target)
    p = t.profile(profile_ref, list(overrides or [])).profile
    data = data_dir or (t.view.run_data() if t.view else None)
    texts = throughput_texts(data, p.bench) if data else None
    return bench_models(
        t.models,
        p.bench,
        threads=p.target.threads,
        texts=texts,
        log=log,
        settings=runner_settings(p),
    )


def verify(
    target: Path,
    *,
    data_dir: Path | None = None,
    reference: Path | None = None,
    profile_ref: str | None = None,
    overrides: list[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Task metric, retention and budgets of a run dir, or of a model against a reference
    teacher (no torch). ``result["passed"]``: every budget held."""
    t = open_target(target, reference)
    if t.view is None and reference is None:
        raise UsageError(
            "verify of a single model needs --reference TEACHER_DIR to compute retention",
            where=f"kdeploy verify {target}",
            fix="pass --reference, or verify a run directory",
        )
    if t.view is None and data_dir is None:
        raise UsageError(
            "verify of a model needs --data DIR (a model dir does not say which data it was "
            "made for)",
            where=f"kdeploy verify {target}",
            fix="pass --data DIR with the eval split",
        )
    loaded = t.profile(profile_ref, list(overrides or []))
    bench_json = None
    if t.view is not None and "bench" in t.view.manifest.stages:
        bench_json = read_json(t.view.artifact("bench"))
    data = data_dir or t.view.run_data()
    return verify_models(t.models, data, loaded.profile, bench_json, log=log)


def serve_check(run_dir: Path, *, log: Log = print) -> dict[str, Any]:
    """Everything ``kdeploy serve-check`` checks; ``result["passed"]`` says if it all held."""
    from kdeploy.packaging.servecheck import check_package

    # open_run checks every packaged file against the manifest (exit 6 naming the file)
    view = open_run(run_dir, need=("package",))
    rec = view.manifest.stages["package"]
    if "reference" not in rec.outputs:
        raise RunDirError(
            f"{run_dir} was packaged without reference outputs (an older kdeploy)",
            where=str(run_dir / "package"),
            fix="rerun `kdeploy compress --from package`",
        )
    triton = rec.outputs.get("triton")
    checks = check_package(
        rec.outputs["deploy"].abspath(run_dir),
        rec.outputs["reference"].abspath(run_dir),
        triton.abspath(run_dir) if triton is not None else None,
        log=log,
    )
    return {"run_dir": str(run_dir), "checks": checks.rows, "passed": checks.passed}
