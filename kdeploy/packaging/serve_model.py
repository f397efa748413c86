"""The model ``kdeploy serve`` binds: the function Triton calls with a batch of requests,
answering with ``kdeploy.runtime`` (tokenization server-side, with the threads, batch size
and providers ``verify`` measured the model with), its tensors, and the settings Triton's
scheduler takes from the profile. Torch- and PyTriton-free: the server lives in ``serve.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.config.loader import LoadedProfile
from kdeploy.config.settings import runner_settings
from kdeploy.packaging.triton import settings_for
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.model import open_model, softmax_predict
from kdeploy.runtime.runners import RunnerSettings

TEXT = "text"
TEXT_PAIR = "text_pair"
PROBABILITIES = "probabilities"
LABEL = "label"


@dataclass(frozen=True)
class ServeSettings:
    """What the served model and Triton's scheduler take from the profile."""

    name: str
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instances: int
    threads: int | None
    batch_size: int  # texts per runtime call inside one Triton batch (verify's batch size)
    runner: RunnerSettings | None = None


def serve_settings(loaded: LoadedProfile, model_dir: Path, name: str) -> ServeSettings:
    """The profile's serving values, computed as for the Triton repository in the run."""
    profile = loaded.profile
    card = ModelCard.load(model_dir)
    repo = settings_for(profile, model_dir / card.model_file, name, card)
    # as build_config writes them: sizes above max_batch_size left out
    preferred = [b for b in repo.preferred_batch_sizes if b <= repo.max_batch_size]
    return ServeSettings(
        name=name,
        max_batch_size=repo.max_batch_size,
        preferred_batch_sizes=tuple(preferred),
        max_queue_delay_us=repo.max_queue_delay_us,
        instances=repo.instances,
        threads=profile.target.threads,
        batch_size=profile.verify.eval_batch_size,
        runner=runner_settings(profile),
    )


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the served model, as Triton's config lists it."""

    name: str
    dtype: str  # "BYTES" | "FP32"
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False


class ServedModel:
    """One model instance: the runtime model and the function Triton calls with a batch of
    requests (each a mapping of input name to a ``[rows, 1]`` BYTES array)."""

    def __init__(self, model_dir: Path, settings: ServeSettings):
        self.model = open_model(
            model_dir,
            threads=settings.threads,
            batch_size=settings.batch_size,
            settings=settings.runner,
        )
        self.card = self.model.card
        self.model.__enter__()

    def close(self) -> None:
        self.model.close()

    def answer(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The served outputs for these texts: what ``kdeploy.runtime`` computes for them."""
        y = self.model.outputs(texts, pairs)
        out = {self.card.output: y.astype(np.float32, copy=False)}
        if self.card.task == "classification":
            idx, probs = softmax_predict(y)
            names = self.card.labels or [str(i) for i in range(y.shape[1])]
            out[PROBABILITIES] = probs
            out[LABEL] = np.array([[names[i].encode("utf-8")] for i in idx], dtype=object)
        return out

    def interface(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs, the output dims read from one warm-up answer."""
        width = self.answer(["warm-up"])[self.card.output].shape[1]
        inputs = [TensorSpec(TEXT, "BYTES", (1,))]
        outputs = [TensorSpec(self.card.output, "FP32", (width,))]
        if self.card.task == "classification":
            inputs.append(TensorSpec(TEXT_PAIR, "BYTES", (1,), optional=True))
            outputs.append(TensorSpec(PROBABILITIES, "FP32", (width,)))
            outputs.append(TensorSpec(LABEL, "BYTES", (1,)))
        return tuple(inputs), tuple(outputs)

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
        """One Triton batch: the texts of all its requests through the runtime in one call
        (one call per kind when some requests carry text pairs and others do not)."""
        answers: list[dict[str, Any]] = [{} for _ in requests]
        for with_pairs in (False, True):
            group = [i for i, r in enumerate(requests) if (TEXT_PAIR in r) == with_pairs]
            if not group:
                continue
            texts = [t for i in group for t in decode(requests[i][TEXT])]
            pairs = None
            if with_pairs:
                pairs = [t for i in group for t in decode(requests[i][TEXT_PAIR])]
            out = self.answer(texts, pairs)
            start = 0
            for i in group:
                n = len(requests[i][TEXT])
                answers[i] = {k: v[start : start + n] for k, v in out.items()}
                start += n
        return answers


def decode(column: np.ndarray) -> list[str]:
    """A ``[rows, 1]`` BYTES column as texts. Bytes that are not UTF-8 become U+FFFD: one bad
    request must not fail the other requests Triton batched with it."""
    return [
        x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
        for x in np.asarray(column, dtype=object).reshape(len(column), -1)[:, 0]
    ]
