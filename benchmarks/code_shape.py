"""The shape of the code base: modules, their sizes, the longest functions and the imports
that break the layer order (``tests/unit/test_layering.py`` holds the order and fails on
any). Prints a table; ``--top N`` lists the N largest modules and longest functions.

    python benchmarks/code_shape.py [--top 10] [--write]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def functions(tree: ast.AST, path: str) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method, nested ones included."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                out.append((child.end_lineno - child.lineno + 1, f"{path}:{name}"))
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "kdeploy"), help="the package dir")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument(
        "--no-layers", action="store_true", help="skip the layer check (a tree of another layout)"
    )
    add_write_options(ap)
    return ap


def shape_table(root: Path, top: int, layers: bool) -> tuple[str, list[str]]:
    """The Markdown tables, and the layer violations found."""
    from tests.unit.test_layering import violations

    files = sorted(root.rglob("*.py"))
    sizes, funcs = [], []
    for f in files:
        text = f.read_text(encoding="utf-8")
        rel = f.relative_to(root.parent).as_posix()
        sizes.append((len(text.splitlines()), rel))
        funcs += functions(ast.parse(text), rel)
    sizes.sort(reverse=True)
    funcs.sort(reverse=True)
    bad = violations(root) if layers else []
    out = [
        "| measure | value |",
        "|---|---|",
        f"| modules | {len(files)} |",
        f"| lines | {sum(n for n, _ in sizes)} |",
        f"| modules over 300 lines | {sum(1 for n, _ in sizes if n > 300)} |",
        f"| modules over 400 lines | {sum(1 for n, _ in sizes if n > 400)} |",
        f"| largest module | {sizes[0][1]} ({sizes[0][0]} lines) |",
        f"| functions over 60 lines | {sum(1 for n, _ in funcs if n > 60)} |",
        f"| functions over 80 lines | {sum(1 for n, _ in funcs if n > 80)} |",
        f"| longest function | {funcs[0][1]} ({funcs[0][0]} lines) |",
    ]
    if layers:
        out.append(f"| imports against the layer order | {len(bad)} |")
    out += ["", "| largest modules | lines |", "|---|---|"]
    out += [f"| {name} | {n} |" for n, name in sizes[:top]]
    out += ["", "| longest functions | lines |", "|---|---|"]
    out += [f"| {name} | {n} |" for n, name in funcs[:top]]
    return "\n".join(out), bad


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    root = Path(args.root).resolve()
    table, bad = shape_table(root, args.top, not args.no_layers)
    print(table)
    for b in bad:
        print(f"layer violation: {b}")
    if args.write:
        write_block(
            f"code_shape:{root.parent.name}/{root.name}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="Code shape",
            results=args.results,
        )


if __name__ == "__main__":
    main()
