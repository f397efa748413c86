"""Benchmarks write their own tables into RESULTS.md: between ``<!-- tag -->`` and
``<!-- /tag -->``, under a line that says when, on which machine and with which exact
command the table was measured. A rerun with ``--write`` replaces its block, so no figure
in RESULTS is typed by hand; ``tests/unit/test_benchmarks.py`` checks that every command
quoted in RESULTS and README exists and parses its arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def add_write_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    ap.add_argument(
        "--results", type=Path, default=RESULTS, help="the results file --write updates"
    )


def machine() -> str:
    from kdeploy.core.host import host_info

    h = host_info()
    gpu = f", GPU {h['gpu']}" if h.get("gpu") else ""
    return f"{h['cpu']} ({h['cores']} cores){gpu}, ONNX Runtime {h['onnxruntime']}"


def command(script: str, argv: list[str]) -> str:
    """The exact command line, as a user would type it from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *argv])


def write_block(
    tag: str,
    table: str,
    *,
    script: str,
    argv: list[str],
    title: str,
    results: Path = RESULTS,
    note: str = "",
) -> None:
    """Replace (or append, under ``## title``) the block ``tag`` of ``results``."""
    begin, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    stamp = (
        f"Measured {dt.date.today().isoformat()} on {machine()} by `{command(script, argv)}`"
        + (f"; {note}" if note else "")
        + "."
    )
    block = f"{begin}\n{stamp}\n\n{table.strip()}\n{end}"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    results.write_text(text, encoding="utf-8")
    print(f"wrote block {tag} into {results}")


def argv_of(argv: list[str] | None) -> list[str]:
    """The arguments a benchmark was called with, as the command line it records: without
    ``--results PATH``, which only redirects where the block is written."""
    args = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--results":
            skip = True
        elif not a.startswith("--results="):
            out.append(a)
    return out
