"""serve-check: does the packaged model still answer as it did when it was packaged?

Torch-free. Given the deployable model dir, its reference outputs (``reference.py``) and
the Triton repository, it:

1. parses every ``config.pbtxt`` of the Triton repository into tritonclient's ModelConfig
   and checks its tensors against the graph of the model file beside it;
2. replays the reference sentences through the runtime with the stored batch layout;
3. sends each sentence as its own request, tokenized client-side, through the very model
   file in the Triton repository (checked against the config as Triton would check it), and
   compares with the reference computed one sentence per batch.

``kdeploy.api.serve_check`` finds these paths in a run directory (after checking their
sha256) and calls ``check_package``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.errors import ModelError
from kdeploy.packaging.reference import REFERENCE_JSON, compare
from kdeploy.packaging.triton_check import (
    check_config,
    check_request,
    load_config,
    model_file_of,
)
from kdeploy.runtime.model import open_model
from kdeploy.runtime.runners import open_model_file


@dataclass
class Reference:
    """What the package stage stored: texts, batch layout, outputs and tolerances."""

    meta: dict[str, Any]
    outputs: np.ndarray  # batched as the package stage batched them
    single: np.ndarray  # one sentence per batch (what a Triton client sends)

    @classmethod
    def load(cls, ref_dir: Path) -> Reference:
        meta = json.loads((ref_dir / REFERENCE_JSON).read_text(encoding="utf-8"))
        return cls(
            meta=meta,
            outputs=np.load(ref_dir / meta["outputs_file"]),
            single=np.load(ref_dir / meta["single_outputs_file"]),
        )

    @property
    def texts(self) -> list[str]:
        return self.meta["texts"]

    @property
    def pairs(self) -> list[str] | None:
        return self.meta.get("pairs")

    def one(self, i: int) -> tuple[list[str], list[str] | None]:
        return self.texts[i : i + 1], None if self.pairs is None else self.pairs[i : i + 1]


@dataclass
class Checks:
    """The checks serve-check ran, in order; ``passed`` when every one held."""

    log: Callable[[str], None] = print
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, passed: bool, detail: str, numbers: dict | None = None) -> None:
        extra = {k: v for k, v in (numbers or {}).items() if k not in ("passed", "detail")}
        self.rows.append({"check": name, "passed": passed, "detail": detail, **extra})
        self.log(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.rows)


def check_triton_configs(repo: Path | None, checks: Checks) -> dict[str, tuple[Any, Path]]:
    """Parse and check every config.pbtxt; {model name: (ModelConfig, model dir)}."""
    if repo is None:
        checks.add("triton config", True, "skipped: the profile has package.triton false")
        return {}
    model_dirs = sorted(p.parent for p in repo.glob("*/config.pbtxt"))
    if not model_dirs:
        checks.add("triton config", False, f"no <model>/config.pbtxt under {repo}")
    configs = {}
    for mdir in model_dirs:
        cfg = load_config(mdir / "config.pbtxt")
        problems = check_config(cfg, mdir)
        configs[mdir.name] = (cfg, mdir)
        checks.add(
            f"triton config {mdir.name}",
            not problems,
            "; ".join(problems)
            or f"{cfg.platform}, max_batch_size {cfg.max_batch_size}, "
            f"{len(cfg.input)} inputs / {len(cfg.output)} outputs match the graph",
        )
    return configs


def replay_runtime(model, ref: Reference, checks: Checks) -> None:
    """The reference sentences through the runtime, batched as the package stage did."""
    meta = ref.meta
    c = compare(meta["task"], model.outputs(ref.texts, ref.pairs), ref.outputs, meta["tolerance"])
    checks.add(
        "runtime replay",
        c["passed"],
        f"{len(ref.texts)} reference sentences, batch {meta['batch_size']}"
        f"{' bucketed' if meta['bucketing'] else ''}: {c['detail']}"
        + (", bit-identical" if c.get("identical") else ""),
        c,
    )


def replay_triton(model, ref: Reference, name: str, cfg: Any, mdir: Path, checks: Checks) -> None:
    """Each reference sentence as its own request through the Triton repository's model
    file, tokenized client-side and checked against the config as Triton checks it."""
    out_name = ref.meta["output"]
    model_file = model_file_of(cfg, mdir)
    try:
        runner = open_model_file(model_file, threads=ref.meta.get("threads"), outputs=[out_name])
        runner.__enter__()
    except ModelError as exc:  # e.g. a TensorRT plan on a host without TensorRT
        checks.add(f"triton requests {name}", True, f"skipped: {exc.what}")
        return
    try:
        rows, problems = [], []
        for i in range(len(ref.texts)):
            feeds = model.tokenize(*ref.one(i))
            problems += check_request(cfg, feeds)
            rows.append(runner.infer(feeds)[out_name])
    finally:
        runner.__exit__(None, None, None)
    c = compare(ref.meta["task"], np.concatenate(rows), ref.single, ref.meta["tolerance"])
    checks.add(
        f"triton requests {name}",
        c["passed"] and not problems,
        (f"{'; '.join(sorted(set(problems)))}; " if problems else "")
        + f"{len(ref.texts)} single-sentence requests through {model_file.name}, "
        f"client-side tokenization: {c['detail']}"
        + (", bit-identical" if c.get("identical") else ""),
        c,
    )


def check_package(
    deploy: Path,
    reference: Path,
    triton_repo: Path | None,
    *,
    log: Callable[[str], None] = print,
) -> Checks:
    """Every serve-check check of a packaged model (paths already checked by the caller)."""
    checks = Checks(log=log)
    ref = Reference.load(reference)
    configs = check_triton_configs(triton_repo, checks)
    meta = ref.meta
    with open_model(
        deploy,
        threads=meta.get("threads"),
        batch_size=meta["batch_size"],
        bucketing=meta["bucketing"],
    ) as model:
        replay_runtime(model, ref, checks)
        for name, (cfg, mdir) in configs.items():
            replay_triton(model, ref, name, cfg, mdir, checks)
    return checks
