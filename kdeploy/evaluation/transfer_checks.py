"""Verify's transfer checks: every embedding model of a run measured beside the task
metric on what it was not judged on (``kdeploy.evaluation.transfer``), and which of the
evaluation texts the student was trained on. Torch-free.

- neighbour agreement on a pool of the eval split's distinct sentences, against
  teacher_fp32's neighbours;
- a linear probe on the ``--probe`` data (a labelled classification set in GLUE layout):
  fitted on a seeded sample of its train split, scored on its dev split (test without dev).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdeploy.config import TransferConfig
from kdeploy.config.sections import NeighbourCheck, ProbeCheck
from kdeploy.core.errors import DataError
from kdeploy.data import Split, load_task_data, seen_count
from kdeploy.evaluation.transfer import neighbour_agreement, probe_accuracy
from kdeploy.runtime.model import Encoder, open_model
from kdeploy.runtime.runners import RunnerSettings

REFERENCE = "teacher_fp32"


@dataclass
class ProbeData:
    """The probe's texts and labels: a train sample to fit on, a split to score on."""

    path: Path
    train_texts: list[str]
    train_labels: np.ndarray
    eval_split: str
    eval_texts: list[str]
    eval_labels: np.ndarray


def load_probe(probe_dir: Path, cfg: ProbeCheck) -> ProbeData:
    """``cfg.train_examples`` seeded rows of the probe set's train split and all of its dev
    split (test when it has no labelled dev); single-sentence classification only."""
    where = f"--probe {probe_dir}"
    if not (probe_dir / "train.tsv").is_file():
        raise DataError(
            f"{probe_dir} has no train.tsv for the linear probe",
            where=where,
            fix="pass a GLUE-layout folder with train.tsv and dev.tsv (sentence, label), "
            "e.g. ../shared/data/sst2",
        )
    data = load_task_data(probe_dir)
    if data.task != "classification":
        raise DataError(
            f"{probe_dir} is {data.task} data; the probe needs labelled classification data",
            where=where,
            fix="pass a GLUE-layout folder with sentence/label columns (e.g. ../shared/data/sst2)",
        )
    train = data.splits["train"]
    evals = [s for n in ("dev", "test") if (s := data.splits.get(n)) is not None and s.labels]
    if train.labels is None or not evals:
        raise DataError(
            f"{probe_dir} needs labels in train.tsv and in dev.tsv or test.tsv",
            where=where,
            fix="add the label column",
        )
    if train.texts_b is not None:
        raise DataError(
            f"{probe_dir} holds sentence pairs; the probe embeds single sentences",
            where=where,
            fix="pass a single-sentence classification set (columns sentence, label)",
        )
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.train_examples, len(train))
    pick = np.sort(rng.choice(len(train), size=n, replace=False))
    ev = evals[0]
    return ProbeData(
        path=probe_dir,
        train_texts=[train.texts_a[i] for i in pick],
        train_labels=np.asarray([int(train.labels[i]) for i in pick]),
        eval_split=ev.name,
        eval_texts=list(ev.texts_a),
        eval_labels=np.asarray([int(x) for x in ev.labels or []]),
    )


def neighbour_pool(split: Split, cfg: NeighbourCheck) -> list[str]:
    """The eval split's distinct texts (both columns, file order), at most ``max_pool``."""
    return list(dict.fromkeys(t for t in split.texts() if t.strip()))[: cfg.max_pool]


@dataclass
class _Embedded:
    pool: np.ndarray | None
    probe_train: np.ndarray | None
    probe_eval: np.ndarray | None


def _embed(model: Encoder, pool: list[str] | None, probe: ProbeData | None) -> _Embedded:
    return _Embedded(
        pool=model.embed(pool) if pool else None,
        probe_train=model.embed(probe.train_texts) if probe else None,
        probe_eval=model.embed(probe.eval_texts) if probe else None,
    )


def _texts_seen(
    kd_texts: Path | None, split: Split, pool: list[str] | None, probe: ProbeData | None
) -> dict:
    """Which of the texts verify evaluates on were among the training texts."""
    if kd_texts is None:
        return {"recorded": False}
    fp = np.load(kd_texts)
    rows = {"eval": (split.name, split.texts())}
    if pool:
        rows["neighbour_pool"] = (split.name, pool)
    if probe is not None:
        rows["probe_train"] = ("train", probe.train_texts)
        rows["probe_eval"] = (probe.eval_split, probe.eval_texts)
    out: dict = {"recorded": True, "training_texts": int(len(fp))}
    for name, (split_name, texts) in rows.items():
        distinct = len({t.strip() for t in texts if t.strip()})
        out[name] = {"split": split_name, "texts": distinct, "seen": seen_count(texts, fp)}
    return out


def transfer_checks(
    models: dict[str, Path],
    split: Split,
    cfg: TransferConfig,
    *,
    probe_dir: Path | None,
    kd_texts: Path | None,
    threads: int | None,
    batch_size: int,
    settings: RunnerSettings | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Neighbour agreement and probe accuracy of every model (embedding runs only), and
    which evaluated texts were trained on. ``{"applicable": False}`` for classifiers."""
    if REFERENCE not in models:
        return {"applicable": False, "reason": f"no {REFERENCE} model to compare with"}
    pool = neighbour_pool(split, cfg.neighbours) if cfg.neighbours else None
    if pool is not None and len(pool) <= cfg.neighbours.k:
        raise DataError(
            f"the neighbour pool has {len(pool)} distinct texts, not more than "
            f"k={cfg.neighbours.k}",
            where=str(split.path),
            fix="lower verify.transfer.neighbours.k, or set verify.transfer.neighbours: null",
        )
    probe = load_probe(probe_dir, cfg.probe) if probe_dir is not None and cfg.probe else None
    embedded: dict[str, _Embedded] = {}
    for name, mdir in models.items():
        with open_model(mdir, threads=threads, batch_size=batch_size, settings=settings) as m:
            if not isinstance(m, Encoder):
                return {"applicable": False, "reason": "a classifier: its logits are its task"}
            embedded[name] = _embed(m, pool, probe)
    results = {name: _model_row(e, embedded[REFERENCE], probe, cfg) for name, e in embedded.items()}
    ref_acc = results[REFERENCE].get("probe_accuracy")
    for r in results.values():
        if ref_acc:
            r["probe_retention"] = r["probe_accuracy"] / ref_acc
    for name, r in results.items():
        log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    return {
        "applicable": True,
        "models": results,
        "neighbours": None
        if pool is None
        else {"k": cfg.neighbours.k, "pool": len(pool), "split": split.name},
        "probe": None
        if probe is None
        else {
            "data": str(probe.path),
            "train_examples": len(probe.train_texts),
            "eval_split": probe.eval_split,
            "eval_examples": len(probe.eval_texts),
        },
        "texts_seen": _texts_seen(kd_texts, split, pool, probe),
    }


def _model_row(
    mine: _Embedded, ref: _Embedded, probe: ProbeData | None, cfg: TransferConfig
) -> dict:
    row: dict = {}
    if mine.pool is not None and ref.pool is not None and cfg.neighbours:
        na = neighbour_agreement(ref.pool, mine.pool, cfg.neighbours.k)
        row["neighbour_recall"] = na.recall_at_k
        row["neighbour_rank_spearman"] = na.rank_spearman
    if probe is not None and cfg.probe is not None:
        assert mine.probe_train is not None and mine.probe_eval is not None
        row["probe_accuracy"] = 100 * probe_accuracy(
            mine.probe_train, probe.train_labels, mine.probe_eval, probe.eval_labels, c=cfg.probe.c
        )
    return row
