"""Size on disk of kdeploy's torch-free device install vs the full host install.

Walks the dependency closure of `pip install kdeploy` (base: numpy, onnxruntime, tokenizers,
pydantic, pyyaml, click, tqdm and what they need) and of `pip install 'kdeploy[train,...]'`
through the distributions installed in this environment, and sums the files each
distribution installed (its RECORD). No network, nothing installed.

    python benchmarks/install_size.py [--extras train minilm] [--write]
"""

from __future__ import annotations

import argparse
import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from results import add_write_options, argv_of, write_block

ROOT = Path(__file__).resolve().parents[1]


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str], extras: set[str] | None = None) -> dict[str, object]:
    from packaging.requirements import Requirement

    todo = [(Requirement(r), extras or set()) for r in requirements]
    seen: dict[str, object] = {}
    while todo:
        req, wanted = todo.pop()
        name = canon(req.name)
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional dependency not installed here
        seen[name] = dist
        for spec in dist.requires or []:
            sub = Requirement(spec)
            ctx = [{"extra": e} for e in (set(req.extras) | {""})]
            if sub.marker is None or any(sub.marker.evaluate(c) for c in ctx):
                todo.append((sub, set()))
    return seen


def size_mb(dists: dict[str, object]) -> float:
    total = 0
    for dist in dists.values():
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            if p.is_file():
                total += p.stat().st_size
    return total / 1e6


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--extras", nargs="+", default=["train", "minilm"])
    add_write_options(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = closure(project["dependencies"])
    full_reqs = list(project["dependencies"])
    for e in args.extras:
        full_reqs += project["optional-dependencies"][e]
    full = closure(full_reqs)
    rows = [
        ("base (`pip install kdeploy`: device side, no torch)", base),
        (f"full (`pip install 'kdeploy[{','.join(args.extras)}]'`)", full),
    ]
    lines = ["| install | distributions | MB on disk | torch |", "|---|---|---|---|"]
    for label, d in rows:
        lines.append(
            f"| {label} | {len(d)} | {size_mb(d):.0f} | {'yes' if 'torch' in d else 'no'} |"
        )
    biggest = sorted(((size_mb({k: v}), k) for k, v in full.items()), reverse=True)[:5]
    lines += [
        "",
        "Largest in the full install: " + ", ".join(f"{k} {mb:.0f} MB" for mb, k in biggest) + ".",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_block(
            f"install_size:{','.join(args.extras)}",
            table,
            script=__file__,
            argv=argv_of(argv),
            title="Install size",
            results=args.results,
        )


if __name__ == "__main__":
    main()
