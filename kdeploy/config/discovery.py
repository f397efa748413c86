"""Where profiles are found: ``KDEPLOY_PROFILE_PATH``, the repository's ``profiles/`` and
the copy bundled in the wheel (``kdeploy/_profiles``). A reference is a file path or a name."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from kdeploy.core.errors import ProfileError


def profile_dirs() -> list[Path]:
    """Where profile names are looked up, first match wins."""
    dirs: list[Path] = []
    env = os.environ.get("KDEPLOY_PROFILE_PATH")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    package = Path(__file__).resolve().parents[1]  # kdeploy/
    dirs += [package.parent / "profiles", package / "_profiles"]
    return [d for d in dirs if d.is_dir()]


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def resolve_profile_path(ref: str | Path, *, relative_to: Path | None = None) -> Path:
    """A profile reference is a file path (has a suffix or a slash) or a name to look up."""
    ref_s = str(ref)
    looks_like_path = ref_s.endswith((".yaml", ".yml")) or os.sep in ref_s or "/" in ref_s
    if looks_like_path:
        p = Path(ref_s)
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        if not p.is_file():
            raise ProfileError(
                f"profile file {p} does not exist",
                where=str(p),
                fix="give an existing YAML file, or a profile name (`kdeploy profiles list`)",
            )
        return p
    if relative_to is not None:
        sibling = relative_to / f"{ref_s}.yaml"
        if sibling.is_file():
            return sibling
    known = available_profiles()
    if ref_s in known:
        return known[ref_s]
    close = difflib.get_close_matches(ref_s, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ProfileError(
        f"unknown profile '{ref_s}'",
        where=f"looked in {', '.join(str(d) for d in profile_dirs()) or '(no profile dirs)'}",
        fix=f"{hint}known profiles: {', '.join(sorted(known)) or '(none found)'}; "
        "or pass a path to a YAML file",
    )
