"""Read a finished run directory on the device side (no torch): its models, profile, data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdeploy.errors import RunDirError
from kdeploy.manifest import MANIFEST_NAME, Manifest, load_manifest
from kdeploy.profiles import LoadedProfile, load_profile
from kdeploy.stages.bench import VARIANTS


@dataclass
class RunView:
    run_dir: Path
    manifest: Manifest
    profile: LoadedProfile
    models: dict[str, Path]  # table name (teacher_fp32, ...) -> model dir
    data_dir: Path


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def open_run(
    run_dir: Path, *, need: tuple[str, ...] = ("export",), check_digests: bool = True
) -> RunView:
    """The models of a run, after checking the stages they come from are finished and intact."""
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise RunDirError(
            f"{run_dir} is not a kdeploy run directory (no {MANIFEST_NAME})",
            where=str(run_dir),
            fix="run `kdeploy compress` first, or pass an ONNX model dir",
        )
    missing = [s for s in need if s not in manifest.stages]
    if missing:
        raise RunDirError(
            f"{run_dir} is incomplete: stage(s) {', '.join(missing)} have not finished",
            where=str(run_dir),
            fix="rerun `kdeploy compress` with the same arguments to finish the run",
        )
    artifacts = {}
    for rec in manifest.stages.values():
        for name, art in rec.outputs.items():
            artifacts[name] = art
    models: dict[str, Path] = {}
    for art_name, table_name in VARIANTS.items():
        art = artifacts.get(art_name)
        if art is None:
            continue
        if check_digests:
            problems = art.check(run_dir)
            if problems:
                raise RunDirError(
                    f"artifact {art_name} of {run_dir} is damaged: {problems[0]}",
                    where=str(art.abspath(run_dir)),
                    fix="rerun `kdeploy compress` (it rebuilds damaged stages)",
                )
        models[table_name] = art.abspath(run_dir)
    profile_path = run_dir / "profile.yaml"
    if not profile_path.is_file():
        raise RunDirError(
            f"{run_dir} has no profile.yaml",
            where=str(run_dir),
            fix="rerun `kdeploy compress` to restore it",
        )
    profile = load_profile(profile_path)
    return RunView(
        run_dir=run_dir,
        manifest=manifest,
        profile=profile,
        models=models,
        data_dir=Path(manifest.data["path"]),
    )
