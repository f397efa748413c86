"""verify: the task metric of every model on the eval split, retention vs the teacher, and
the profile's budgets. Torch-free: runs on the device.

STS: Spearman (x100) of cosine(embedding1, embedding2) against the gold scores.
Classification: accuracy (x100).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.data import Split, load_task_data
from kdeploy.errors import DataError
from kdeploy.profiles import DEFAULT_EVAL_BATCH, Budgets, Profile, VerifyConfig
from kdeploy.runtime.metrics import accuracy, cosine_rows, spearman
from kdeploy.runtime.model import Classifier, Encoder, open_model
from kdeploy.stages import StageContext, StageResult
from kdeploy.stages.bench import run_models

CONSUMES = (
    "teacher_onnx",
    "teacher_int8?",
    "student_onnx",
    "sparse_onnx?",
    "student_int8?",
    "student_trt?",
    "dataset",
    "bench",
)
PRODUCES = ("verify",)
TOOLS = ("onnxruntime", "tokenizers", "numpy")


def enabled(profile: Profile) -> bool:
    return True


def config(profile: Profile) -> dict:
    return {
        "verify": profile.verify.model_dump(mode="json"),
        "threads": profile.target.threads,
        "providers": profile.target.providers(),
    }


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


def evaluate(
    model_dir: Path,
    split: Split,
    *,
    threads: int | None,
    batch_size: int,
    limit: int | None = None,
    profile: Profile | None = None,
) -> dict:
    """Task metric of one model dir on one labelled split (same data and metric whatever
    runs it: ONNX Runtime on CPU or GPU, or a TensorRT engine; ``profile`` picks which)."""
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
    with open_model(model_dir, threads=threads, batch_size=batch_size, profile=profile) as model:
        if isinstance(model, Encoder):
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
        assert isinstance(model, Classifier)
        pred, _ = model.predict(
            split.texts_a[:n], None if split.texts_b is None else split.texts_b[:n]
        )
        return {
            "metric": "accuracy",
            "value": 100 * accuracy(pred, np.asarray(split.labels[:n])),
            "examples": n,
        }


def deploy_name(models: dict[str, Path]) -> str:
    """The model the run delivers: the last one the chain produced."""
    for name in ("student_trt", "student_int8", "student_sparse"):
        if name in models:
            return name
    return "student_fp32"


def check_budgets(budgets: Budgets, results: dict, bench: dict | None, deploy: str) -> list[dict]:
    rows: list[dict] = []
    if budgets.min_retention is not None:
        r = results[deploy]["retention"]
        rows.append(
            {
                "name": "min_retention",
                "limit": budgets.min_retention,
                "value": r,
                "passed": r >= budgets.min_retention,
                "detail": f"{deploy} metric / teacher_fp32 metric",
            }
        )
    bench_models = (bench or {}).get("models", {})
    lat = budgets.max_latency
    if lat is not None:
        grid = bench_models.get(deploy, {}).get("latency", [])
        cell = next(
            (g for g in grid if g["batch"] == lat.batch and g["sequence"] == lat.sequence), None
        )
        for pct, limit in (("p50", lat.p50_ms), ("p99", lat.p99_ms)):
            if limit is None:
                continue
            value = cell[f"{pct}_ms"] if cell else None
            rows.append(
                {
                    "name": f"max_latency_{pct}",
                    "limit": limit,
                    "value": value,
                    "passed": value is not None and value <= limit,
                    "detail": f"batch {lat.batch} x sequence {lat.sequence}, ms"
                    + ("" if cell else " (not measured by bench)"),
                }
            )
    sp = budgets.min_speedup
    if sp is not None and deploy != sp.over:  # (the model the speed-up is measured against)
        mine = bench_models.get(deploy, {}).get("throughput", {}).get("sentences_per_s")
        ref = bench_models.get(sp.over, {}).get("throughput", {}).get("sentences_per_s")
        value = mine / ref if mine and ref else None
        rows.append(
            {
                "name": "min_speedup",
                "limit": sp.ratio,
                "value": value,
                "passed": value is not None and value >= sp.ratio,
                "detail": f"{deploy} sentences/s / {sp.over} sentences/s",
            }
        )
    return rows


def verify_models(
    models: dict[str, Path], data_dir: Path, profile: Profile, bench: dict | None, log=print
) -> dict:
    cfg = profile.verify
    data = load_task_data(data_dir, need_train=False)
    split = data.eval_split(cfg.eval_split)
    n, batch_size = eval_plan(cfg, split)
    results: dict[str, dict] = {}
    for name, mdir in models.items():
        results[name] = evaluate(
            mdir,
            split,
            threads=profile.target.threads,
            batch_size=batch_size,
            limit=n,
            profile=profile,
        )
        log(
            f"{name}: {results[name]['metric']} {results[name]['value']:.2f} on "
            f"{split.name} ({results[name]['examples']} examples)"
        )
    ref = results["teacher_fp32"]["value"]
    for r in results.values():
        r["retention"] = r["value"] / ref if ref else None
    deploy = deploy_name(models)
    budgets = check_budgets(cfg.budgets, results, bench, deploy)
    return {
        "split": split.name,
        "task": data.task,
        "batch_size": batch_size,
        "deploy": deploy,
        "models": results,
        "budgets": budgets,
        "passed": all(b["passed"] for b in budgets),
    }


def run(ctx: StageContext) -> StageResult:
    from kdeploy.fsutil import atomic_write_json, read_json

    bench = read_json(ctx.input("bench"))
    result = verify_models(
        run_models(ctx.inputs), ctx.input("dataset"), ctx.profile, bench, log=ctx.log
    )
    for b in result["budgets"]:
        ctx.log(
            f"budget {b['name']}: {'pass' if b['passed'] else 'MISSED'} "
            f"(value {b['value']}, limit {b['limit']})"
        )
    path = ctx.work_dir / "verify.json"
    atomic_write_json(path, result)
    return StageResult(outputs={"verify": path}, metrics=result)
