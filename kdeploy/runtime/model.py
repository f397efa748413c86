"""Encoder / Classifier: load a kdeploy model dir and answer in numpy. Torch-free.

>>> from kdeploy.runtime.model import Encoder
>>> with Encoder("runs/cpu-int8-model/package/deploy") as enc:
...     vectors = enc.embed(["a sentence", "another one"])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.errors import ModelError
from kdeploy.runtime.card import ModelCard, model_dir_of
from kdeploy.runtime.runners import make_runner
from kdeploy.runtime.text import TextEncoder


class _Loaded:
    def __init__(
        self,
        target: Path | str,
        *,
        threads: int | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        profile=None,
    ):
        self.dir = model_dir_of(Path(target))
        self.card = ModelCard.load(self.dir)
        self.batch_size = batch_size
        self.text = TextEncoder(
            self.dir / self.card.tokenizer_file, max_length or self.card.max_seq_length
        )
        # profile (a kdeploy.profiles.Profile) picks GPU providers; None runs on the CPU
        self.runner = make_runner(
            self.dir, self.card, threads=threads, profile=profile, name=self.dir.name
        )

    def __enter__(self):
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.__exit__(*exc)

    def _run(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        outs = []
        for i in range(0, len(texts), self.batch_size):
            feeds = self.text.encode(
                texts[i : i + self.batch_size],
                None if pairs is None else pairs[i : i + self.batch_size],
            )
            outs.append(self.runner.infer(feeds)[self.card.output])
        if not outs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outs, axis=0)


class Encoder(_Loaded):
    """Sentence embeddings from an embedding model dir."""

    def __init__(self, target: Path | str, **kw):
        super().__init__(target, **kw)
        if self.card.task != "embedding":
            raise ModelError(f"{self.dir} is a {self.card.task} model, not an embedding model")

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._run(list(texts))


class Classifier(_Loaded):
    """Labels and probabilities from a sequence-classification model dir."""

    def __init__(self, target: Path | str, **kw):
        super().__init__(target, **kw)
        if self.card.task != "classification":
            raise ModelError(f"{self.dir} is a {self.card.task} model, not a classifier")

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return self._run(list(texts), None if pairs is None else list(pairs))

    def predict(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        logits = self.logits(texts, pairs).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs.argmax(axis=1), probs.astype(np.float32)


def open_model(target: Path | str, **kw) -> Encoder | Classifier:
    card = ModelCard.load(model_dir_of(Path(target)))
    return Encoder(target, **kw) if card.task == "embedding" else Classifier(target, **kw)
