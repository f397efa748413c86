"""The task metric of every model on the eval split, retention vs the teacher, and the
profile's budgets. Torch-free.

STS: Spearman (x100) of cosine(embedding1, embedding2) against the gold scores.
Classification: accuracy (x100).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.config import DEFAULT_EVAL_BATCH, Profile, VerifyConfig
from kdeploy.config.settings import runner_settings
from kdeploy.core.errors import DataError
from kdeploy.data import Split, load_task_data
from kdeploy.evaluation.budgets import check_budgets
from kdeploy.evaluation.transfer_checks import transfer_checks
from kdeploy.evaluation.variants import deploy_candidates, engine_of
from kdeploy.runtime.metrics import accuracy, cosine_rows, spearman
from kdeploy.runtime.model import Classifier, Encoder, open_model
from kdeploy.runtime.runners import RunnerSettings


def eval_plan(cfg: VerifyConfig, split: Split) -> tuple[int, int]:
    """(examples, batch size) verify uses on a split; refuses a batch larger than the split.

    A batch that the split cannot fill is refused rather than shrunk: asking for 256 texts
    per call on a 40-row file usually means the file is not the one meant (a slice, a
    header-only export) or the value is a typo, and the metric of 40 rows is not the number
    the profile was written for.
    """
    n = min(len(split), cfg.max_eval_examples) if cfg.max_eval_examples else len(split)
    if n < 2:
        raise DataError(
            f"the eval split {split.path.name} has {n} example(s); at least 2 are needed",
            where=str(split.path),
            fix="add labelled rows to it (or raise verify.max_eval_examples)",
        )
    if cfg.batch_size is not None and cfg.batch_size > n:
        capped = " (after verify.max_eval_examples)" if n < len(split) else ""
        raise DataError(
            f"the eval split {split.path.name} has {n} example(s){capped}, fewer than one "
            f"batch of verify.batch_size={cfg.batch_size}",
            where=str(split.path),
            fix=f"check that {split.path} is the file you meant; or set "
            f"verify.batch_size to at most {n} (--set verify.batch_size={n}), or leave it "
            f"unset ({DEFAULT_EVAL_BATCH}, capped by the split)",
        )
    return n, cfg.eval_batch_size


def _labelled(split: Split, limit: int | None) -> int:
    if split.labels is None:
        raise DataError(
            f"{split.path} has no labels to evaluate against",
            where=str(split.path),
            fix="add a score/label column, or set verify.eval_split to a labelled split",
        )
    n = min(len(split), limit) if limit else len(split)
    if n < 2:
        raise DataError(
            f"{split.path} has {n} example(s); at least 2 are needed to evaluate",
            where=str(split.path),
            fix="add labelled rows (or raise verify.max_eval_examples)",
        )
    return n


def _sts_score(model: Encoder, split: Split, n: int) -> dict:
    if split.texts_b is None:
        raise DataError(
            f"{split.path} has no sentence2 column for STS evaluation",
            where=str(split.path),
            fix="STS data needs sentence1, sentence2 and score columns",
        )
    a = model.embed(split.texts_a[:n])
    b = model.embed(split.texts_b[:n])
    score = spearman(cosine_rows(a, b), np.asarray(split.labels[:n]))
    return {"metric": "spearman", "value": 100 * score, "examples": n}


def _accuracy(model: Classifier, split: Split, n: int) -> dict:
    pairs = None if split.texts_b is None else split.texts_b[:n]
    pred, _ = model.predict(split.texts_a[:n], pairs)
    value = 100 * accuracy(pred, np.asarray(split.labels[:n]))
    return {"metric": "accuracy", "value": value, "examples": n}


def evaluate(
    model_dir: Path,
    split: Split,
    *,
    threads: int | None,
    batch_size: int,
    limit: int | None = None,
    settings: RunnerSettings | None = None,
) -> dict:
    """Task metric of one model dir on one labelled split (same data and metric whatever
    runs it: ONNX Runtime on CPU or GPU, or a TensorRT engine; ``settings`` picks which)."""
    n = _labelled(split, limit)
    with open_model(model_dir, threads=threads, batch_size=batch_size, settings=settings) as m:
        return _sts_score(m, split, n) if isinstance(m, Encoder) else _accuracy(m, split, n)


def verify_models(
    models: dict[str, Path],
    data_dir: Path,
    profile: Profile,
    bench: dict | None,
    log: Callable[[str], None] = print,
    *,
    probe_dir: Path | None = None,
    kd_texts: Path | None = None,
) -> dict:
    """Every model's metric on the profile's eval split, retention, the transfer checks
    (embedding models: neighbour agreement, the linear probe on ``probe_dir``, which texts
    were seen in training per ``kd_texts``) and the budgets of the model the run deploys
    (``passed``: all of them held)."""
    cfg = profile.verify
    data = load_task_data(data_dir, need_train=False)
    split = data.eval_split(cfg.eval_split)
    n, batch_size = eval_plan(cfg, split)
    settings = runner_settings(profile)
    results: dict[str, dict] = {}
    for name, mdir in models.items():
        r = evaluate(
            mdir,
            split,
            threads=profile.target.threads,
            batch_size=batch_size,
            limit=n,
            settings=settings,
        )
        results[name] = r
        log(f"{name}: {r['metric']} {r['value']:.2f} on {split.name} ({r['examples']} examples)")
    ref = results["teacher_fp32"]["value"]
    for r in results.values():
        r["retention"] = r["value"] / ref if ref else None
    transfer = transfer_checks(
        models,
        split,
        cfg.transfer,
        probe_dir=probe_dir,
        kd_texts=kd_texts,
        threads=profile.target.threads,
        batch_size=batch_size,
        settings=settings,
        log=log,
    )
    engines = [
        EngineChoice.of(name, check_budgets(cfg.budgets, results, bench, name, transfer), bench)
        for name in deploy_candidates(models, profile.target.engine_list())
    ]
    winner = pick_engine(engines)
    if len(engines) > 1:
        log(winner.reason(engines))
    return {
        "split": split.name,
        "task": data.task,
        "batch_size": batch_size,
        "deploy": winner.model,
        "engines": [e.to_json() for e in engines],
        "deploy_reason": winner.reason(engines),
        "models": results,
        "transfer": transfer,
        "budgets": winner.budgets,
        "passed": winner.passed,
    }


@dataclass(frozen=True)
class EngineChoice:
    """One model the run may deploy (one per engine), its budgets and its throughput."""

    model: str
    engine: str
    budgets: list[dict]
    sentences_per_s: float | None

    @classmethod
    def of(cls, model: str, budgets: list[dict], bench: dict | None) -> EngineChoice:
        tp = (bench or {}).get("models", {}).get(model, {}).get("throughput", {})
        return cls(model, engine_of(model), budgets, tp.get("sentences_per_s"))

    @property
    def passed(self) -> bool:
        return all(b["passed"] for b in self.budgets)

    def reason(self, engines: list[EngineChoice]) -> str:
        """Why this one was deployed, with the margin over the runner-up."""
        if len(engines) == 1:
            return f"{self.model} ({self.engine}): the profile's only engine"
        others = [e for e in engines if e is not self]
        best_other = max(others, key=lambda e: e.sentences_per_s or 0.0)
        ratio = (
            self.sentences_per_s / best_other.sentences_per_s
            if self.sentences_per_s and best_other.sentences_per_s
            else None
        )
        how = f"{ratio:.2f}x {best_other.model} ({best_other.engine})" if ratio else "unmeasured"
        speed = f"{self.sentences_per_s or 0:.0f} sentences/s, {how}"
        if self.passed:
            return (
                f"deploys {self.model} ({self.engine}): the fastest of {len(engines)} engines "
                f"that meet the budgets; {speed}"
            )
        return (
            f"deploys {self.model} ({self.engine}): no engine meets every budget; the one with "
            f"the most budgets met, then the fastest; {speed}"
        )

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "engine": self.engine,
            "sentences_per_s": self.sentences_per_s,
            "passed": self.passed,
            "budgets": self.budgets,
        }


def pick_engine(engines: list[EngineChoice]) -> EngineChoice:
    """The fastest model that meets every budget; when none does, the one that meets the
    most of them, then the fastest (its missed budgets then fail the run)."""

    def key(e: EngineChoice) -> tuple:
        met = 0 if e.passed else sum(b["passed"] for b in e.budgets)
        return (e.passed, met, e.sentences_per_s or 0.0)

    return max(engines, key=key)
