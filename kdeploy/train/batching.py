"""Training items as model inputs: tokenization, length-grouped batches for training and
calibration, and the loop that feeds calibration batches to a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from kdeploy.data import TrainItem

CALIBRATION_TEXTS = 1024


def tokenize(tokenizer, items: Sequence[TrainItem], max_len: int, device) -> dict:
    """Model inputs for ``items`` (text pairs when any item has a second text), padded to
    the longest, on ``device``."""
    a = [x[0] for x in items]
    b = [x[1] for x in items]
    enc = tokenizer(
        a,
        b if any(x is not None for x in b) else None,
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    return {k: v.to(device) for k, v in enc.items()}


def token_lengths(tokenizer, items: Sequence[TrainItem], max_len: int) -> np.ndarray:
    """Each item's length in tokens after truncation (what length grouping sorts by)."""
    enc = tokenizer(
        [x[0] for x in items],
        [x[1] for x in items] if any(x[1] is not None for x in items) else None,
        truncation=True,
        max_length=max_len,
    )
    return np.asarray([len(ids) for ids in enc["input_ids"]])


def tokenized_batches(
    tokenizer, texts: Sequence[str], max_len: int, batch_size: int, device
) -> list[dict]:
    """Calibration batches: ``texts`` tokenized in order, ``batch_size`` at a time."""
    items = [(t, None, None) for t in texts]
    return [
        tokenize(tokenizer, items[i : i + batch_size], max_len, device)
        for i in range(0, len(items), batch_size)
    ]


def forward_loop(batches: list[dict]) -> Callable[[torch.nn.Module], None]:
    """Run a model over calibration batches (what modelopt's calibration and SparseGPT's
    Hessian collection call)."""

    def loop(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                model(**b)

    return loop


def shuffled_batches(
    rng: np.random.Generator, lengths: np.ndarray, batch_size: int
) -> list[np.ndarray]:
    """Length-grouped shuffling: sort chunks of 50 batches by length, shuffle the batches."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def calibration_batches(
    tokenizer,
    items: Sequence[TrainItem],
    max_len: int,
    device,
    seed: int,
    n: int = CALIBRATION_TEXTS,
    batch_size: int = 64,
) -> list[dict]:
    """Model inputs for ``n`` training items drawn with ``seed``, batched by length: the
    text on which a narrower student's units are chosen (``width.measure_importance``)."""
    rng = np.random.default_rng([seed, 1])
    pick = rng.choice(len(items), size=min(n, len(items)), replace=False)
    chosen = [items[i] for i in pick]
    order = np.argsort(token_lengths(tokenizer, chosen, max_len), kind="stable")
    return [
        tokenize(tokenizer, [chosen[i] for i in order[s : s + batch_size]], max_len, device)
        for s in range(0, len(order), batch_size)
    ]
