"""Cut a student out of a teacher: keep k transformer layers, inherit their weights, and
optionally slice it to a narrower hidden and/or feed-forward width. Depth (``layers``) and
width (``width``) are separate steps; ``make_student`` does both.
"""

from __future__ import annotations

import torch

from kdeploy.train.layers import cut_layers
from kdeploy.train.width import slice_model, width_plan


def make_student(
    teacher: torch.nn.Module,
    keep: list[int],
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    batches=None,
) -> torch.nn.Module:
    """A copy of the teacher holding only the layers in ``keep`` (weights inherited), sliced
    to ``hidden_size`` / ``intermediate_size`` when given; ``batches`` (dicts of model
    inputs) are the calibration text that decides which units are kept."""
    student = cut_layers(teacher, keep)
    if hidden_size is None and intermediate_size is None:
        return student
    if batches is None:
        raise ValueError("a narrower student needs calibration batches")
    plan = width_plan(student, hidden_size, intermediate_size, batches)
    return slice_model(student, plan)
