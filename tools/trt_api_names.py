"""The names TensorRT's Python bindings define, read from NVIDIA/TensorRT's own sources.

TensorRT cannot be installed here, so kdeploy's TensorRT code is checked against the names
its bindings really bind: the pybind11 sources (``python/src/**/*.cpp``: every
``py::class_`` / ``py::enum_`` and their ``.def*("name")`` / ``.value("NAME")``) and the
wheel's ``tensorrt/__init__.py`` (``nptype``, ``__version__``, ...). The result is a JSON
table of names only (classes with their members and bases, module-level names), committed
under ``tests/data/tensorrt_api/`` and read by ``tests/unit/test_trt_api_names.py``.

    python tools/trt_api_names.py --repo PATH/TO/TensorRT --tag v10.16 \
        --out tests/data/tensorrt_api/v10.16.json

``--repo`` is a clone of github.com/NVIDIA/TensorRT (a bare one works: files are read with
``git show TAG:path``).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

CPP_DIRS = ("python/src",)
WHEEL_INIT = "python/packaging/bindings_wheel/tensorrt/__init__.py"

_DECL = re.compile(
    r"^py::(class_|enum_)<(?P<tpl>.+?)>\s*(?P<var>\w+)?\s*[({]\s*(?P<scope>\w+)\s*,\s*"
    r'"(?P<name>\w+)"',
    re.S,
)
_MEMBER = re.compile(
    r"\.(?:def|def_static|def_property|def_property_readonly|def_readwrite|def_readonly)"
    r'\(\s*"(\w+)"'
)
_VALUE = re.compile(r'\.value\(\s*"(\w+)"')
_MODULE_DEF = re.compile(r'^m\s*\.\s*(?:def|attr)\(\s*"(\w+)"')
_VAR_DEF = re.compile(r"^(\w+)\s*\.\s*def")


def git_show(repo: Path, tag: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"{tag}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def cpp_files(repo: Path, tag: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "--name-only", tag, *CPP_DIRS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(p for p in out.splitlines() if p.endswith(".cpp"))


def strip_comments(text: str) -> str:
    """C++ source without comments and preprocessor lines (string literals kept intact).

    ``#if EXPORT_ALL_BINDINGS`` blocks are kept: the TensorRT wheel binds them (they are
    left out of TensorRT-RTX only)."""
    text = re.sub(r"(?m)^[ \t]*#.*$", "", text)
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            i = text.find("*/", i)
            i = n if i < 0 else i + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def statements(text: str) -> list[str]:
    """Statements, split at ';' and at block braces outside () and [] and outside strings:
    a lambda's body sits inside its ``.def(...)`` parentheses and stays in its statement."""
    out, depth, start, i, n = [], 0, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        elif depth == 0 and (c == ";" or (c in "{}" and not _brace_init(text, i))):
            out.append(text[start:i].strip())
            start = i + 1
        i += 1
    out.append(text[start:].strip())
    return [s for s in out if s]


def _brace_init(text: str, i: int) -> bool:
    """Is the brace at ``i`` a brace initialiser (``binding{m, "ILogger", ...}``) rather
    than a block? An initialiser's ``{`` follows a name; its ``}`` closes such a ``{``."""
    if text[i] == "{":
        before = text[:i].rstrip()
        return (
            bool(before)
            and (before[-1].isalnum() or before[-1] == "_")
            and not re.search(
                r"(\)|\belse|\bdo|\btry|\bstruct\s+\w+|\bclass\s+[\w:, ]+|\bnamespace\s*\w*)$",
                before,
            )
        )
    return False


def _template_args(tpl: str) -> list[str]:
    """``ILogger, PyLogger`` -> the top-level template arguments."""
    args, depth, cur = [], 0, []
    for c in tpl:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        if c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    args.append("".join(cur).strip())
    return args


def bindings(repo: Path, tag: str) -> dict:
    """{"classes": {qualname: {"members": [...], "bases": [...], "enum": bool}},
    "module": [...]} for one tag."""
    classes: dict[str, dict] = {}
    cpp_to_py: dict[str, str] = {}
    pending_bases: dict[str, list[str]] = {}
    var_class: dict[str, str] = {}
    module: set[str] = set()
    for path in cpp_files(repo, tag):
        for stmt in statements(strip_comments(git_show(repo, tag, path))):
            stmt = re.sub(r"^(?:(?:static|auto|const)\s+)+", "", stmt)
            decl = _DECL.match(stmt)
            if decl:
                scope = decl["scope"]
                qual = (
                    decl["name"]
                    if scope == "m"
                    else f"{var_class.get(scope, scope)}.{decl['name']}"
                )
                if scope == "m":
                    module.add(decl["name"])
                args = _template_args(decl["tpl"])
                cls = classes.setdefault(qual, {"members": set(), "bases": [], "enum": False})
                cls["enum"] = decl.group(1) == "enum_"
                cpp_to_py[args[0]] = qual
                pending_bases[qual] = args[1:]
                if decl["var"]:
                    var_class[decl["var"]] = qual
                cls["members"] |= set(_MEMBER.findall(stmt))
                values = set(_VALUE.findall(stmt))
                cls["members"] |= values
                if cls["enum"] and ".export_values()" in stmt and "." in qual:
                    classes[qual.rsplit(".", 1)[0]]["members"] |= values
                continue
            var = _VAR_DEF.match(stmt)
            if var and var[1] in var_class:
                classes[var_class[var[1]]]["members"] |= set(_MEMBER.findall(stmt))
            mod = _MODULE_DEF.match(stmt)
            if mod:
                module.add(mod[1])
    for qual, bases in pending_bases.items():
        classes[qual]["bases"] = [cpp_to_py[b] for b in bases if b in cpp_to_py]
    # the wheel's __init__ is a template: ##TENSORRT_MODULE## etc. are filled in at build time
    init = ast.parse(re.sub(r"##(\w+)##", r"\1", git_show(repo, tag, WHEEL_INIT)))
    for node in init.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            module.add(node.name)
        elif isinstance(node, ast.Assign):
            module |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {
        "classes": {
            q: {"members": sorted(c["members"]), "bases": c["bases"], "enum": c["enum"]}
            for q, c in sorted(classes.items())
        },
        "module": sorted(module),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="a clone of NVIDIA/TensorRT")
    ap.add_argument("--tag", required=True, help="e.g. v10.16")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sha = subprocess.run(
        ["git", "-C", str(args.repo), "rev-parse", f"{args.tag}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    table = {"tag": args.tag, "commit": sha, **bindings(args.repo, args.tag)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{args.out}: {len(table['classes'])} classes, {len(table['module'])} module names")


if __name__ == "__main__":
    main()
