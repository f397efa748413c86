"""What a KD run trains beside the student and how: the learned projections to the
teacher's width, and AdamW with a linear warm-up schedule over both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import get_linear_schedule_with_warmup

from kdeploy.config import DistillConfig

# parameters trained without weight decay (by name suffix)
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


@dataclass
class Optimization:
    """AdamW over the student's (and the projections') parameters, with its schedule."""

    params: list[torch.nn.Parameter]  # everything trained, for gradient clipping
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    # averages the gradients DDP does not (the projections'), between backward and clipping
    sync: Callable[[], None] | None = None

    def step(self, loss: torch.Tensor, max_grad_norm: float) -> None:
        """Backpropagate ``loss``, clip the gradients' norm, step optimizer and schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.sync is not None:
            self.sync()
        torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()


def make_optimization(
    student: torch.nn.Module,
    projections: torch.nn.ModuleDict | None,
    cfg: DistillConfig,
    total_steps: int,
) -> Optimization:
    """AdamW with weight decay on all but biases and LayerNorm weights; the learning rate
    warms up linearly over ``cfg.warmup_ratio`` of the steps, then falls linearly to 0."""
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if projections is not None:
        named += [(f"proj.{n}", p) for n, p in projections.named_parameters()]
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for n, p in named if not n.endswith(NO_DECAY)],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
    )
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return Optimization([p for _, p in named], optimizer, scheduler)


def make_projections(
    d_student: int,
    d_teacher: int,
    *,
    hidden_layers: int,
    embedding: bool,
    student_dims: torch.Tensor | None = None,
) -> torch.nn.ModuleDict | None:
    """Learned maps from the student's width to the teacher's, when they differ: one per
    hidden-state KD layer ("hidden") and one for the pooled embedding ("embedding"; the
    embedding losses compare ``proj(student)`` with the teacher's vector). They train with
    the student and are dropped afterwards: the exported student keeps its own width.

    ``student_dims[i]`` is the teacher dim that student dim i was sliced from; the maps then
    start as that embedding (identity on the kept dims, zero elsewhere), else at random.
    """
    if d_student == d_teacher or not (hidden_layers or embedding):
        return None

    def linear() -> torch.nn.Linear:
        lin = torch.nn.Linear(d_student, d_teacher, bias=False)
        if student_dims is not None:
            with torch.no_grad():
                lin.weight.zero_()
                lin.weight[student_dims, torch.arange(d_student)] = 1.0
        return lin

    return torch.nn.ModuleDict(
        {
            "hidden": torch.nn.ModuleList([linear() for _ in range(hidden_layers)])
            if hidden_layers
            else None,
            "embedding": linear() if embedding else None,
        }
    )
