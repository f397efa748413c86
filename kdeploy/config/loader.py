"""Profile YAML -> a validated Profile: ``extends:`` chains, ``--set key=value`` overrides,
and every problem reported with the file and line (or the flag) it comes from."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdeploy.config.discovery import resolve_profile_path
from kdeploy.config.schema import Profile
from kdeploy.core.errors import ProfileError


@dataclass
class _Source:
    """One YAML document plus where each key path sits in it."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)


def _read_yaml(path: Path) -> _Source:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"profile {path} is not UTF-8 text ({exc.reason})",
            where=str(path),
            fix="re-encode the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ProfileError(
            f"cannot read profile {path}: {exc.strerror}",
            where=str(path),
            fix="check the path and its permissions",
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(
            f"malformed YAML: {problem}", where=where, fix="fix the YAML syntax at that line"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            "a profile must be a YAML mapping of keys to values",
            where=f"{path}:1",
            fix="start the file with 'name: ...'",
        )
    src = _Source(path=path, data=data)
    if node is not None:
        _index_lines(node, (), src)
    return src


def _index_lines(node: yaml.Node, prefix: tuple[str, ...], src: _Source) -> None:
    src.lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise ProfileError(
                    f"duplicate key '{key}'",
                    where=f"{src.path}:{key_node.start_mark.line + 1}",
                    fix="keep one of the two entries",
                )
            seen.add(key)
            src.lines[prefix + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, prefix + (key,), src)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            src.lines[prefix + (str(i),)] = item.start_mark.line + 1
            _index_lines(item, prefix + (str(i),), src)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _apply_override(data: dict[str, Any], assignment: str) -> tuple[str, ...]:
    if "=" not in assignment:
        raise ProfileError(
            f"override '{assignment}' is not of the form key.path=value",
            where=f"--set {assignment}",
            fix="e.g. --set distill.epochs=1",
        )
    key, raw = assignment.split("=", 1)
    path = tuple(p for p in key.strip().split(".") if p)
    if not path:
        raise ProfileError(
            "override has an empty key",
            where=f"--set {assignment}",
            fix="e.g. --set distill.epochs=1",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ProfileError(
            f"override value is not valid YAML: {exc}",
            where=f"--set {assignment}",
            fix="quote the value for the shell, e.g. --set 'bench.batch_sizes=[1,8]'",
        ) from None
    cur = data
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[path[-1]] = value
    return path


@dataclass
class LoadedProfile:
    """A validated profile and where it came from."""

    profile: Profile
    sources: list[Path]
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.profile.name

    def digest(self) -> str:
        return self.profile.digest()


def _chain(path: Path) -> list[_Source]:
    """[child, parent, grandparent, ...], refusing cycles and missing parents."""
    chain: list[_Source] = []
    seen: list[Path] = []
    current = path
    while True:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(str(p) for p in seen + [resolved])
            raise ProfileError(
                f"profile extends itself (cycle: {cycle})",
                where=f"{chain[-1].path}:{chain[-1].lines.get(('extends',), 1)}",
                fix="remove or change the 'extends' entry",
            )
        seen.append(resolved)
        src = _read_yaml(current)
        chain.append(src)
        parent = src.data.get("extends")
        if parent is None:
            return chain
        if not isinstance(parent, str):
            raise ProfileError(
                "'extends' must be a profile name or a path",
                where=f"{src.path}:{src.lines.get(('extends',), 1)}",
                fix="e.g. extends: cpu-int8",
            )
        try:
            current = resolve_profile_path(parent, relative_to=current.parent)
        except ProfileError as exc:
            raise ProfileError(
                f"profile extends '{parent}', which cannot be found: {exc.what}",
                where=f"{src.path}:{src.lines.get(('extends',), 1)}",
                fix=exc.fix,
            ) from None


def _locate(
    loc: tuple[str, ...], chain: list[_Source], overrides: dict[tuple[str, ...], str]
) -> str:
    for n in range(len(loc), 0, -1):
        prefix = loc[:n]
        if prefix in overrides:
            return f"--set {overrides[prefix]}"
        inner = [f"--set {t}" for o, t in overrides.items() if o[:n] == prefix]
        for src in chain:
            if prefix in src.lines:
                where = f"{src.path}:{src.lines[prefix]}"
                return f"{where} (with {', '.join(inner)})" if inner else where
        if inner:
            return inner[0]
    return str(chain[0].path)


def load_profile(ref: str | Path, overrides: list[str] | None = None) -> LoadedProfile:
    """Read, merge and validate a profile; every error names the file and line."""
    path = resolve_profile_path(ref)
    chain = _chain(path)
    merged: dict[str, Any] = {}
    for src in reversed(chain):
        merged = _deep_merge(merged, src.data)
    merged["extends"] = chain[0].data.get("extends")
    opaths: dict[tuple[str, ...], str] = {}
    for assignment in overrides or []:
        opaths[_apply_override(merged, assignment)] = assignment
    try:
        profile = Profile.model_validate(merged)
    except ValidationError as exc:
        raise _profile_error(exc, chain, opaths) from None
    return LoadedProfile(
        profile=profile, sources=[s.path for s in chain], overrides=list(overrides or [])
    )


def locate_key(loaded: LoadedProfile, key: str) -> str:
    """Where a dotted key of a loaded profile got its value: '--set ...', 'file:line', or
    the profile file with a note that the default applies."""
    path = tuple(key.split("."))
    for assignment in reversed(loaded.overrides):
        k = tuple(p for p in assignment.split("=", 1)[0].strip().split(".") if p)
        if path[: len(k)] == k:
            return f"--set {assignment}"
    try:
        chain = _chain(loaded.sources[0])
    except ProfileError:  # the file changed since it was loaded: name it without a line
        return str(loaded.sources[0])
    for src in chain:
        if path in src.lines:
            return f"{src.path}:{src.lines[path]}"
    return f"{chain[0].path} ({key} is not set there: the default applies)"


def _profile_error(
    exc: ValidationError, chain: list[_Source], opaths: dict[tuple[str, ...], str]
) -> ProfileError:
    problems = []
    first_where = None
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = _locate(loc, chain, opaths)
        first_where = first_where or where
        key = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_fields = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], parent_fields, n=1)
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
            if parent_fields:
                msg += f"; allowed here: {', '.join(parent_fields)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if not loc:  # a check across sections: point at the keys its message names
                named = _named_keys(msg)
                hit = next((w for k in named if (w := _exact(k, chain, opaths))), None)
                if hit is not None:
                    where, key = hit, " / ".join(".".join(k) for k in named)
                    first_where = hit if first_where == str(chain[0].path) else first_where
        elif "input" in err and err["type"] != "assertion_error":
            msg += f" (got {err['input']!r})"
        problems.append(f"{where}: {key}: {msg}")
    what = "invalid profile:\n    " + "\n    ".join(problems)
    return ProfileError(
        what, where=first_where, fix="see `kdeploy profiles schema` for the allowed keys"
    )


def _named_keys(msg: str) -> list[tuple[str, ...]]:
    """Dotted profile keys a validation message mentions, in order."""
    found = []
    for m in re.finditer(r"\b[a-z_]+(?:\.[a-z_0-9]+)+", msg):
        k = tuple(m.group(0).split("."))
        if k[0] in Profile.model_fields and k not in found:
            found.append(k)
    return found


def _exact(
    path: tuple[str, ...], chain: list[_Source], opaths: dict[tuple[str, ...], str]
) -> str | None:
    """Where exactly ``path`` was set: its --set flag, else its file:line; None if defaulted."""
    if path in opaths:
        return f"--set {opaths[path]}"
    for src in chain:
        if path in src.lines:
            return f"{src.path}:{src.lines[path]}"
    return None


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """Field names allowed at a key path of the Profile schema (for 'did you mean')."""
    model: Any = Profile
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        args = getattr(ann, "__args__", ())
        model = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def json_schema() -> dict[str, Any]:
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "kdeploy profile"
    return schema


def dump_profile(profile: Profile) -> str:
    """The fully resolved profile as YAML (what a run actually used)."""
    data = profile.model_dump(mode="json")
    data["extends"] = None  # already merged in: the dump stands alone
    return yaml.safe_dump(data, sort_keys=False)
