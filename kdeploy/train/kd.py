"""Distillation losses. Each takes student/teacher tensors and returns a scalar.

- embedding: MSE and cosine between pooled sentence embeddings (sentence-transformers'
  MSELoss distillation, Reimers & Gurevych 2020), through a learned linear projection when
  the student is narrower
- similarity structure: MSE between the in-batch cosine-similarity matrices, and an InfoNCE
  loss that makes each student embedding pick its own teacher embedding out of the batch's
  (contrastive pruning, Xu et al. 2021): what a vector index sees, not each vector alone
- logits: KL between temperature-softened distributions, scaled by T^2 (Hinton et al. 2015),
  and cross-entropy with gold labels where a row has one
- hidden states: MSE between student layer i and teacher layer m(i), padding masked out,
  through a learned linear projection when widths differ (TinyBERT, Jiao et al. 2020)
- attention: KL between teacher and student attention probabilities per mapped layer
  (MiniLM / TinyBERT), padding rows masked out
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdeploy.config import DistillConfig


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student, teacher)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the [B, B] cosine-similarity matrices of student and teacher embeddings."""
    return F.mse_loss(_cosines(student, student), _cosines(teacher, teacher))


def contrastive(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE: row i of cos(student, teacher) / T must peak at column i (the batch's other
    teacher embeddings are the negatives)."""
    logits = _cosines(student, teacher) / temperature
    return F.cross_entropy(logits, torch.arange(len(student), device=student.device))


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.softmax(teacher / t, dim=-1),
            reduction="batchmean",
        )
        * t
        * t
    )


def hard_label(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over rows that have a label (label < 0 means none)."""
    keep = labels >= 0
    if not bool(keep.any()):
        return student.new_zeros(())
    return F.cross_entropy(student[keep], labels[keep])


def hidden_mse(
    student_h: torch.Tensor,
    teacher_h: torch.Tensor,
    mask: torch.Tensor,
    proj: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Mean squared error over real (non-padding) tokens: [B, S, Ds] vs [B, S, Dt]."""
    if proj is not None:
        student_h = proj(student_h)
    m = mask.unsqueeze(-1).to(student_h.dtype)
    sq = ((student_h - teacher_h) ** 2) * m
    return sq.sum() / (m.sum() * student_h.shape[-1]).clamp(min=1.0)


def attention_kl(
    student_a: torch.Tensor, teacher_a: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) of attention rows [B, H, S, S], averaged over real query rows.

    When head counts differ, both sides are averaged over heads first.
    """
    if student_a.shape[1] != teacher_a.shape[1]:
        student_a = student_a.mean(1, keepdim=True)
        teacher_a = teacher_a.mean(1, keepdim=True)
    eps = 1e-12
    kl = teacher_a * (torch.log(teacher_a + eps) - torch.log(student_a + eps))
    per_row = kl.sum(-1)  # [B, H, S]
    m = mask[:, None, :].to(per_row.dtype)
    return (per_row * m).sum() / (m.sum() * per_row.shape[1]).clamp(min=1.0)


@dataclass
class Outputs:
    """What one forward pass gives the losses."""

    pooled: torch.Tensor  # embedding or logits
    hidden: tuple[torch.Tensor, ...] | None = None  # hidden_states (index 0 = embeddings)
    attentions: tuple[torch.Tensor, ...] | None = None


def total_loss(
    student: Outputs,
    kind: str,
    cfg: DistillConfig,
    *,
    target: torch.Tensor,
    teacher: Outputs | None,
    mask: torch.Tensor,
    labels: torch.Tensor | None,
    layer_map: list[int],
    projections: torch.nn.ModuleList | None = None,
    embedding_projection: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the enabled losses that apply to ``kind``; also each part's value.

    ``projections[i]`` maps student layer i's hidden states and ``embedding_projection``
    the pooled embedding to the teacher's width (students narrower than the teacher).
    """
    w = cfg.losses
    parts: dict[str, torch.Tensor] = {}
    if kind == "embedding":
        pooled = student.pooled
        if embedding_projection is not None:
            pooled = embedding_projection(pooled)
        if pooled.shape != target.shape:
            raise ValueError(
                f"student embeddings {tuple(pooled.shape)} vs teacher's {tuple(target.shape)}: "
                "a narrower student needs an embedding_projection"
            )
        if w.embedding_mse > 0:
            parts["embedding_mse"] = w.embedding_mse * embedding_mse(pooled, target)
        if w.embedding_cosine > 0:
            parts["embedding_cosine"] = w.embedding_cosine * embedding_cosine(pooled, target)
        if w.similarity_mse > 0:
            parts["similarity_mse"] = w.similarity_mse * similarity_mse(pooled, target)
        if w.contrastive > 0:
            parts["contrastive"] = w.contrastive * contrastive(
                pooled, target, cfg.contrastive_temperature
            )
    else:
        if w.logit_kd > 0:
            parts["logit_kd"] = w.logit_kd * logit_kd(student.pooled, target, cfg.temperature)
        if w.hard_label > 0 and labels is not None:
            parts["hard_label"] = w.hard_label * hard_label(student.pooled, labels)
    if teacher is not None and w.hidden_mse > 0:
        assert student.hidden is not None and teacher.hidden is not None
        losses = []
        for i, t in enumerate(layer_map):
            proj = projections[i] if projections is not None else None
            losses.append(hidden_mse(student.hidden[i + 1], teacher.hidden[t + 1], mask, proj))
        parts["hidden_mse"] = w.hidden_mse * torch.stack(losses).mean()
    if teacher is not None and w.attention_kl > 0:
        assert student.attentions is not None and teacher.attentions is not None
        losses = [
            attention_kl(student.attentions[i], teacher.attentions[t], mask)
            for i, t in enumerate(layer_map)
        ]
        parts["attention_kl"] = w.attention_kl * torch.stack(losses).mean()
    if not parts:
        raise ValueError(f"no enabled distillation loss applies to a {kind} teacher")
    total = torch.stack(list(parts.values())).sum()
    return total, {k: float(v.detach()) for k, v in parts.items()}


def applicable_losses(cfg: DistillConfig, kind: str) -> list[str]:
    """Names of the enabled losses that apply to this kind of teacher."""
    w = cfg.losses
    own = (
        ("embedding_mse", "embedding_cosine", "similarity_mse", "contrastive")
        if kind == "embedding"
        else ("logit_kd", "hard_label")
    )
    names = [n for n in (*own, "hidden_mse", "attention_kl") if getattr(w, n) > 0]
    return names
