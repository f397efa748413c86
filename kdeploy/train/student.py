"""Cut a student out of a teacher: keep k transformer layers, inherit their weights, and
optionally slice it to a narrower hidden and/or feed-forward width. Depth (``layers``) and
width (``width``) are separate steps; ``make_student`` does both.
"""

from __future__ import annotations

import torch

from kdeploy.train.layers import cut_layers
from kdeploy.train.width import WidthPlan, slice_model, width_plan


def cut_student(
    teacher: torch.nn.Module,
    keep: list[int],
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    batches=None,
) -> tuple[torch.nn.Module, WidthPlan | None]:
    """``make_student``, and the plan that sliced it (None when the width is the teacher's):
    distillation initialises its width projections from the plan."""
    student = cut_layers(teacher, keep)
    if hidden_size is None and intermediate_size is None:
        return student, None
    if batches is None:
        raise ValueError("a narrower student needs calibration batches")
    plan = width_plan(student, hidden_size, intermediate_size, batches)
    return slice_model(student, plan), plan


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
    return cut_student(
        teacher, keep, hidden_size=hidden_size, intermediate_size=intermediate_size, batches=batches
    )[0]
