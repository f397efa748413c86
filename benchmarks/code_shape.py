"""The shape of the code base: modules, their sizes, the longest functions and the imports
that break the layer order (``tests/unit/test_layering.py`` holds the order and fails on
any). Prints a table; ``--top N`` lists the N largest modules and longest functions.

    python benchmarks/code_shape.py [--root kdeploy] [--top 10]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "kdeploy"), help="the package dir")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument(
        "--no-layers", action="store_true", help="skip the layer check (a tree of another layout)"
    )
    args = ap.parse_args(argv)
    from tests.unit.test_layering import violations

    root = Path(args.root).resolve()
    files = sorted(root.rglob("*.py"))
    sizes, funcs = [], []
    for f in files:
        text = f.read_text(encoding="utf-8")
        rel = f.relative_to(root.parent).as_posix()
        sizes.append((len(text.splitlines()), rel))
        funcs += functions(ast.parse(text), rel)
    sizes.sort(reverse=True)
    funcs.sort(reverse=True)
    bad = [] if args.no_layers else violations(root)
    print("| measure | value |\n|---|---|")
    print(f"| modules | {len(files)} |")
    print(f"| lines | {sum(n for n, _ in sizes)} |")
    print(f"| modules over 300 lines | {sum(1 for n, _ in sizes if n > 300)} |")
    print(f"| modules over 400 lines | {sum(1 for n, _ in sizes if n > 400)} |")
    print(f"| largest module | {sizes[0][1]} ({sizes[0][0]} lines) |")
    print(f"| functions over 60 lines | {sum(1 for n, _ in funcs if n > 60)} |")
    print(f"| functions over 80 lines | {sum(1 for n, _ in funcs if n > 80)} |")
    print(f"| longest function | {funcs[0][1]} ({funcs[0][0]} lines) |")
    if not args.no_layers:
        print(f"| imports against the layer order | {len(bad)} |")
    print("\n| largest modules | lines |\n|---|---|")
    for n, name in sizes[: args.top]:
        print(f"| {name} | {n} |")
    print("\n| longest functions | lines |\n|---|---|")
    for n, name in funcs[: args.top]:
        print(f"| {name} | {n} |")
    for b in bad:
        print(f"layer violation: {b}")


if __name__ == "__main__":
    main()
