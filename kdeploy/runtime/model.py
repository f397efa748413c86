"""Encoder / Classifier: load a kdeploy model dir (or a run's deployable model) and answer
in numpy. Torch-free: numpy, tokenizers and onnxruntime (or a TensorRT runner) only.

>>> from kdeploy.runtime import Encoder
>>> with Encoder("runs/cpu-int8-model") as enc:          # a run dir, or a model dir
...     vectors = enc.embed(["a sentence", "another one"])
...     vector = enc.encode("one sentence")                 # sentence-transformers' encode()

Batching: the texts are tokenized once, sorted by token length (length bucketing), cut into
batches of ``batch_size`` and each batch is padded only to its own longest text (dynamic
padding); the results come back in the caller's order. Fewer pad tokens means less work, so
this is faster than fixed-order batching on real text of mixed lengths.

Reproducibility: a model with *dynamic* INT8 quantization picks its activation scales per
batch, so one text's output depends slightly on which texts share its batch and on the pad
length. The same texts, ``batch_size`` and ``bucketing`` give the same batches, hence the same
numbers (this is how ``verify`` computes its metric and ``serve-check`` replays the reference
outputs). Another batch layout leaves fp32 outputs unchanged but moves dynamic-INT8 ones: on
all-MiniLM-L6-v2's 3-layer INT8 student, bucketed vs fixed-order batches of 32 agree to a
median cosine of 0.9976 (minimum 0.9938 over 1000 STS-B dev sentences; printed by
``python benchmarks/runtime_overhead.py RUN_DIR --write``, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdeploy.core.errors import ModelError
from kdeploy.runtime.card import ModelCard, resolve_model_dir
from kdeploy.runtime.runners import RunnerSettings, make_runner
from kdeploy.runtime.text import TextEncoder


class _Loaded:
    def __init__(
        self,
        target: Path | str,
        *,
        threads: int | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        bucketing: bool = True,
        settings: RunnerSettings | None = None,
    ):
        if batch_size < 1:
            raise ModelError(f"batch_size must be >= 1, got {batch_size}")
        self.dir = resolve_model_dir(Path(target))
        self.card = ModelCard.load(self.dir)
        self.batch_size = batch_size
        self.bucketing = bucketing
        self.text = TextEncoder(
            self.dir / self.card.tokenizer_file, max_length or self.card.max_seq_length
        )
        # settings pick GPU providers (kdeploy.config.settings.runner_settings); None: CPU
        self.runner = make_runner(
            self.dir, self.card, threads=threads, settings=settings, name=self.dir.name
        )
        self._open = False

    # -- lifecycle: a `with` block, or opened on first use and closed by close() ---------
    def __enter__(self):
        self._ensure_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_open(self) -> None:
        if not self._open:
            self.runner.__enter__()
            self._open = True

    def close(self) -> None:
        if self._open:
            self.runner.__exit__(None, None, None)
            self._open = False

    @property
    def input_names(self) -> list[str]:
        """The graph inputs the model takes (a subset of input_ids/attention_mask/...)."""
        self._ensure_open()
        return list(self.runner.input_names)

    def tokenize(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        *,
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Model inputs for one batch, in the given order, padded to its longest text (or up
        to a multiple, so Triton's batcher can merge more requests of equal shape): what a
        client sends to the Triton model (tokenization is client-side, see README)."""
        encs = self.text.tokenize(list(texts), None if pairs is None else list(pairs))
        feeds = self.text.pad(encs, pad_to_multiple_of=pad_to_multiple_of)
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def batches(self, n_or_lengths: list[int], batch_size: int | None = None) -> list[np.ndarray]:
        """Indices of each batch for texts of these token lengths (the batch layout);
        ``batch_size`` defaults to the one the model was opened with."""
        size = batch_size or self.batch_size
        lengths = np.asarray(n_or_lengths)
        if self.bucketing:
            order = np.argsort(lengths, kind="stable")
        else:
            order = np.arange(len(lengths))
        return [order[i : i + size] for i in range(0, len(order), size)]

    def outputs(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """The graph output the model card names (embeddings or logits), in input order."""
        self._ensure_open()
        if batch_size is not None and batch_size < 1:
            raise ModelError(f"batch_size must be >= 1, got {batch_size}")
        encs = self.text.tokenize(list(texts), None if pairs is None else list(pairs))
        out: np.ndarray | None = None
        layout = self.batches([len(e.ids) for e in encs], batch_size)
        if progress:
            from tqdm import tqdm

            layout = tqdm(layout, desc="Batches", unit="batch")
        for idx in layout:
            feeds = self.text.pad([encs[i] for i in idx])
            y = self.runner.infer(feeds)[self.card.output]
            if out is None:
                out = np.empty((len(encs), *y.shape[1:]), dtype=y.dtype)
            out[idx] = y
        if out is None:
            return np.zeros((0, 0), dtype=np.float32)
        return out


class Encoder(_Loaded):
    """Sentence embeddings from an embedding model dir."""

    def __init__(self, target: Path | str, **kw):
        super().__init__(target, **kw)
        if self.card.task != "embedding":
            raise ModelError(f"{self.dir} is a {self.card.task} model, not an embedding model")

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32; L2-normalised when the model card says so (inside the graph)."""
        return self.outputs(list(texts))

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        show_progress_bar: bool = False,
    ) -> np.ndarray | list[np.ndarray]:
        """``SentenceTransformer.encode``'s signature and semantics, without torch: one
        sentence gives one vector (dim,), a list gives (n, dim) (an empty list: shape (0,),
        as sentence-transformers returns it); ``normalize_embeddings`` L2-normalises (a
        no-op up to rounding when the card says the graph normalises already);
        ``convert_to_numpy=False`` gives a list of 1-D arrays for a list (sentence-transformers
        gives tensors there). ``batch_size``: this call's batch size (default: the Encoder's,
        32 unless it was opened with another). The batches are bucketed by length as in
        ``embed``, so the same texts and batch size give the same numbers as ``embed``."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not texts:
            return np.zeros((0,), dtype=np.float32) if convert_to_numpy else []
        vectors = self.outputs(texts, batch_size=batch_size, progress=show_progress_bar)
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        if single:
            return vectors[0]
        return vectors if convert_to_numpy else list(vectors)


class Classifier(_Loaded):
    """Labels and probabilities from a sequence-classification model dir."""

    def __init__(self, target: Path | str, **kw):
        super().__init__(target, **kw)
        if self.card.task != "classification":
            raise ModelError(f"{self.dir} is a {self.card.task} model, not a classifier")

    @property
    def labels(self) -> list[str] | None:
        """Class names by index, when the model card has them."""
        return self.card.labels

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        return self.outputs(texts, pairs)

    def predict(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(label indices, probabilities) for each text (or text pair)."""
        return softmax_predict(self.logits(texts, pairs))


def softmax_predict(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.argmax(axis=1), probs.astype(np.float32)


def open_model(target: Path | str, **kw) -> Encoder | Classifier:
    """Encoder or Classifier, whichever the model card says."""
    card = ModelCard.load(resolve_model_dir(Path(target)))
    return Encoder(target, **kw) if card.task == "embedding" else Classifier(target, **kw)
