"""kdeploy_model.json: what a deployable model dir holds and how to call it.

A model dir is ``model.onnx`` + ``tokenizer.json`` + ``kdeploy_model.json``; everything the
device side needs to tokenize, run and post-process, with no torch or transformers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdeploy.core.errors import ModelError

CARD_NAME = "kdeploy_model.json"


@dataclass
class ModelCard:
    task: str  # "embedding" | "classification"
    output: str  # graph output to read: "sentence_embedding" | "logits"
    max_seq_length: int
    role: str = "student"  # "teacher" | "student"
    precision: str = "fp32"  # "fp32" | "int8"
    pooling: str | None = None
    normalize: bool = False
    labels: list[str] | None = None
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    extra: dict = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        from kdeploy.core.fsutil import atomic_write_json

        atomic_write_json(directory / CARD_NAME, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        path = directory / CARD_NAME
        if not path.is_file():
            raise ModelError(
                f"{directory} has no {CARD_NAME}: not a kdeploy model directory",
                where=str(directory),
                fix="point at a run directory or at a model dir written by `kdeploy compress`",
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise ModelError(
                f"{path} is malformed: {exc}",
                where=str(path),
                fix="rerun `kdeploy compress` to rewrite the model dir",
            ) from None


MODEL_SUFFIXES = (".onnx", ".plan", ".engine", ".xml")


def model_dir_of(target: Path) -> Path:
    """Accept a model dir or the model file (.onnx, .plan) inside it."""
    target = Path(target)
    if target.is_file() and target.suffix in MODEL_SUFFIXES:
        return target.parent
    return target


def resolve_model_dir(target: Path) -> Path:
    """A model dir from a model dir, a model file, or a run dir (its packaged model)."""
    target = Path(target)
    is_run = (target / "manifest.json").is_file() and not (target / CARD_NAME).exists()
    if target.is_dir() and is_run:
        deploy = target / "package" / "deploy"
        if not (deploy / CARD_NAME).is_file():
            raise ModelError(
                f"run directory {target} has no packaged model ({deploy} is missing)",
                where=str(target),
                fix="finish the run: rerun `kdeploy compress` with the same arguments",
            )
        return deploy
    return model_dir_of(target)
