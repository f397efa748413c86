"""Task data: GLUE-style TSV splits (train/dev/test), read with quoting off. Torch-free.

Two layouts are recognised from the header row:
- STS (sentence-pair similarity): ``sentence1  sentence2  score`` -> task "sts"
- classification: ``sentence  label`` (or ``sentence1 sentence2 label``) -> task "classification"
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdeploy.core.errors import DataError
from kdeploy.core.fsutil import combine_digests, sha256_file

SPLITS = ("train", "dev", "test")
TEXT_COLUMNS = ("sentence1", "sentence2", "sentence", "text")
LABEL_COLUMNS = ("score", "label")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Split:
    name: str
    path: Path
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[float] | list[int] | None

    def __len__(self) -> int:
        return len(self.texts_a)

    def texts(self) -> list[str]:
        """Every text of the split (both sides of a pair)."""
        return self.texts_a + (self.texts_b or [])


@dataclass
class TaskData:
    root: Path
    task: str  # "sts" | "classification"
    splits: dict[str, Split] = field(default_factory=dict)
    num_labels: int | None = None

    def eval_split(self, which: str = "auto") -> Split:
        if which == "auto":
            for name in ("test", "dev"):
                if name in self.splits and self.splits[name].labels is not None:
                    return self.splits[name]
            raise DataError(
                f"{self.root} has no labelled dev or test split to evaluate on",
                where=str(self.root),
                fix="add dev.tsv (or test.tsv) with a label/score column",
            )
        if which not in self.splits:
            raise DataError(
                f"the profile asks for the '{which}' split but {self.root}/{which}.tsv is missing",
                where=str(self.root),
                fix="set verify.eval_split to auto, or add the file",
            )
        return self.splits[which]

    def bench_split(self) -> Split:
        """Real sentences for throughput: dev if present, else the eval split."""
        return self.splits.get("dev") or self.eval_split()


def data_files(root: Path) -> list[Path]:
    """The files whose content the dataset digest covers."""
    return sorted(root.glob("*.tsv"))


def data_digest(root: Path, sha256: Callable[[Path], str] | None = None) -> str:
    sha = sha256 or sha256_file
    return combine_digests({p.name: sha(p) for p in data_files(root)})


def load_task_data(root: Path | str, *, need_train: bool = True) -> TaskData:
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"data directory {root} does not exist",
            where=str(root),
            fix="pass --data DIR holding train.tsv and dev.tsv/test.tsv (GLUE layout)",
        )
    if root.is_file():
        raise DataError(
            f"--data must be a directory of TSV splits, got the file {root}",
            where=str(root),
            fix=f"pass its folder: --data {root.parent}",
        )
    found = {s: root / f"{s}.tsv" for s in SPLITS if (root / f"{s}.tsv").is_file()}
    if need_train and "train" not in found:
        names = ", ".join(p.name for p in found.values()) or "none"
        raise DataError(
            f"{root} has no train.tsv (found: {names})",
            where=str(root),
            fix="distillation trains on the train split: add train.tsv",
        )
    if not ({"dev", "test"} & set(found)):
        raise DataError(
            f"{root} has no dev.tsv or test.tsv to evaluate on",
            where=str(root),
            fix="add dev.tsv and/or test.tsv",
        )
    task = None
    data = TaskData(root=root, task="")
    for name, path in found.items():
        split, split_task = _read_split(name, path)
        if task is None:
            task = split_task
        elif split_task != task:
            raise DataError(
                f"{path.name} looks like a {split_task} file but the other splits are {task}",
                where=str(path),
                fix="all splits need the same columns",
            )
        data.splits[name] = split
    data.task = task or "sts"
    if data.task == "classification":
        labels = sorted({int(x) for s in data.splits.values() for x in (s.labels or [])})
        data.num_labels = max(labels) + 1 if labels else None
    return data


def _read_split(name: str, path: Path) -> tuple[Split, str]:
    header, body = _read_tsv(path)
    cols = {h: i for i, h in enumerate(header)}
    task, a, b, lab = _split_columns(path, header, cols)
    width = len(header)
    texts_a: list[str] = []
    texts_b: list[str] | None = [] if b else None
    labels: list = [] if lab else None  # type: ignore[assignment]
    for lineno, row in enumerate(body, start=2):
        if len(row) < width:
            raise DataError(
                f"row has {len(row)} fields, the header has {width}",
                where=f"{path}:{lineno}",
                fix="check for a missing tab (files are read with quoting off)",
            )
        texts_a.append(row[cols[a]])
        if b is not None and texts_b is not None:
            texts_b.append(row[cols[b]])
        if lab is not None:
            labels.append(_label_value(row[cols[lab]].strip(), lab, task, f"{path}:{lineno}"))
    return Split(name, path, texts_a, texts_b, labels), task


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(stripped header, data rows) of a UTF-8 TSV read with quoting off; both non-empty."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
            where=str(path),
            fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None
    except OSError as exc:
        raise DataError(
            f"cannot read {path}: {exc.strerror}",
            where=str(path),
            fix="check the file's permissions",
        ) from None
    if not rows:
        raise DataError(f"{path} is empty", where=str(path), fix="it needs a header row and data")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise DataError(f"{path} has a header but no rows", where=f"{path}:1", fix="add data rows")
    return header, body


def _split_columns(
    path: Path, header: list[str], cols: dict[str, int]
) -> tuple[str, str, str | None, str | None]:
    """(task, text column, second text column or None, label column or None) the header
    names: STS pairs with scores, labelled sentences or pairs, or unlabeled texts."""
    if {"sentence1", "sentence2", "score"} <= cols.keys():
        return "sts", "sentence1", "sentence2", "score"
    if {"sentence", "label"} <= cols.keys():
        return "classification", "sentence", None, "label"
    if {"sentence1", "sentence2", "label"} <= cols.keys():
        return "classification", "sentence1", "sentence2", "label"
    if "sentence" in cols or "text" in cols or "sentence1" in cols:
        # An unlabeled split (e.g. GLUE test): texts only.
        a = "sentence" if "sentence" in cols else "text" if "text" in cols else "sentence1"
        b = "sentence2" if "sentence2" in cols and a == "sentence1" else None
        return ("sts" if b else "classification"), a, b, None
    raise DataError(
        f"{path} has columns {header}; expected sentence1/sentence2/score (STS) or "
        "sentence/label (classification)",
        where=f"{path}:1",
        fix="rename the header columns",
    )


def _label_value(raw: str, lab: str, task: str, where: str) -> float | int:
    """An STS score (float) or a class index (int >= 0) from its stripped cell."""
    try:
        value = float(raw) if task == "sts" else int(raw)
    except ValueError:
        raise DataError(
            f"{lab} '{raw}' is not a number",
            where=where,
            fix=f"the {lab} column needs numbers",
        ) from None
    if task == "classification" and value < 0:
        raise DataError(
            f"label {value} is negative",
            where=where,
            fix="labels are class indices 0..N-1",
        )
    return value


def unlabeled_file(path: Path | str) -> Path:
    """The file ``--unlabeled`` reads: the path itself, or a dataset folder's train.tsv."""
    path = Path(path)
    if path.is_dir():
        train = path / "train.tsv"
        if not train.is_file():
            raise DataError(
                f"{path} has no train.tsv to take unlabeled text from",
                where=f"--unlabeled {path}",
                fix="pass a GLUE-layout folder with train.tsv, or a text file (one text per line)",
            )
        return train
    if not path.is_file():
        raise DataError(
            f"unlabeled text file {path} does not exist",
            where=f"--unlabeled {path}",
            fix="pass a text file with one text per line, or leave --unlabeled out",
        )
    return path


def read_unlabeled(path: Path | str) -> list[str]:
    """Extra unlabeled text for distillation.

    A text file holds one text per line (blank lines skipped). A GLUE-layout folder (or a
    ``.tsv`` split file) gives the text columns of its train split only, labels ignored,
    so another task's training data can widen the distillation corpus without its dev or
    test split ever being read.
    """
    path = unlabeled_file(path)
    if path.suffix == ".tsv":
        lines = _read_split("train", path)[0].texts()
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path} is not UTF-8 text ({exc.reason})",
                where=str(path),
                fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            ) from None
    texts = [ln.strip() for ln in lines if ln.strip()]
    if not texts:
        raise DataError(
            f"{path} holds no text", where=str(path), fix="one text per line; or drop --unlabeled"
        )
    return texts


# (text, paired text or None, gold label or None): one distillation example
TrainItem = tuple[str, str | None, int | None]


TEXT_SOURCES = ("task", "unlabeled")


def training_items(
    data_dir: Path,
    unlabeled: Path | None,
    kind: str,
    *,
    cap: int | None = None,
    seed: int = 0,
    sources: Sequence[str] = TEXT_SOURCES,
) -> list[TrainItem]:
    """Distinct training texts: every text column of the train split (source ``task``) and
    the unlabeled texts (source ``unlabeled``), blank ones dropped, at most ``cap`` of them
    (a seeded sample). Leaving ``task`` out of ``sources`` distils on other text only, so
    the task's data is judged on sentences of a corpus the student never saw.

    Classifier rows keep their gold label (for the hard-label loss); the unlabeled texts
    and, for embedding teachers, every text have none. Dev and test are never read.
    """
    items: list[TrainItem] = []
    if "task" in sources:
        train = load_task_data(data_dir).splits["train"]
        if kind == "classification":
            labels = train.labels or [None] * len(train)
            pairs = train.texts_b or [None] * len(train)
            items = [
                (a, b, None if y is None else int(y))
                for a, b, y in zip(train.texts_a, pairs, labels, strict=True)
            ]
        else:
            items = [(t, None, None) for t in train.texts()]
    if unlabeled is not None and "unlabeled" in sources:
        items += [(t, None, None) for t in read_unlabeled(unlabeled)]
    seen: set = set()
    unique = []
    for it in items:
        if it[:2] not in seen and it[0].strip():
            seen.add(it[:2])
            unique.append(it)
    if cap is not None and cap < len(unique):
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(unique), size=cap, replace=False))
        unique = [unique[i] for i in pick]
    return unique


def text_fingerprints(texts: Iterable[str]) -> np.ndarray:
    """Sorted distinct 64-bit fingerprints (blake2b) of ``texts``, stripped: what a run
    keeps of its training texts to tell later which evaluation texts it trained on."""
    keys = {
        int.from_bytes(hashlib.blake2b(t.strip().encode(), digest_size=8).digest(), "little")
        for t in texts
        if t.strip()
    }
    return np.asarray(sorted(keys), dtype=np.uint64)


def seen_count(texts: Sequence[str], fingerprints: np.ndarray) -> int:
    """How many of ``texts`` (distinct, stripped) are among ``fingerprints``."""
    mine = text_fingerprints(texts)
    return int(np.isin(mine, fingerprints, assume_unique=True).sum())


def item_texts(items: Sequence[TrainItem]) -> list[str]:
    """Every text of the items (both sides of a pair)."""
    return [x[0] for x in items] + [x[1] for x in items if x[1] is not None]


def sample_texts(texts: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample of ``n`` texts, in their original order (calibration text)."""
    rng = np.random.default_rng(seed)
    n = min(n, len(texts))
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def calibration_texts(data_dir: Path, n: int, seed: int) -> list[str]:
    """``n`` texts of the train split (never dev/test), seeded."""
    return sample_texts(load_task_data(data_dir).splits["train"].texts(), n, seed)


def labelled_dev(data_dir: Path) -> Split | None:
    """The labelled dev split that picks the best epoch, if there is one."""
    dev = load_task_data(data_dir).splits.get("dev")
    return dev if dev is not None and dev.labels is not None else None
