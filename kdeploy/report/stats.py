"""Size, parameters and zero weights of each model dir, for the report's chain table."""

from __future__ import annotations

from pathlib import Path

from kdeploy.onnxtools.weights import onnx_weight_stats
from kdeploy.runtime.card import ModelCard


def model_stats(model_dir: Path) -> dict:
    """Parameters, size on disk and share of zero weights of a model dir's graph."""
    card = ModelCard.load(model_dir)
    model_file = model_dir / card.model_file
    files = [model_file] + [
        p for p in model_dir.glob(f"{model_file.name}*") if p != model_file and p.is_file()
    ]
    if model_file.suffix == ".xml":  # OpenVINO IR: the weights are in model.bin
        files += [p for p in [model_file.with_suffix(".bin")] if p.is_file()]
    stats = {
        "bytes": sum(p.stat().st_size for p in files),
        "role": card.role,
        "precision": card.precision,
        "layers": card.extra.get("layers"),
        "params": None,
        "zero_weights": None,
    }
    if model_file.suffix == ".onnx":
        stats.update(onnx_weight_stats(model_file))
    return stats
