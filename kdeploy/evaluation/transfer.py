"""Transfer metrics: how well a student stands in for its teacher beyond the task it was
judged on. Torch-free (numpy only), so verify runs them where the engine runs.

- neighbour agreement: in a pool of sentences embedded by both, the share of the teacher's
  k nearest neighbours (cosine) of each sentence that the student's k nearest also hold
  (recall@k), and the mean per-sentence Spearman of the two similarity rankings. This is
  what a vector index built on the teacher sees when the student replaces it.
- linear probe: an L2-regularised logistic regression on frozen embeddings of a labelled
  classification set, trained on one split and scored on another: what a classifier a user
  puts on top of the embeddings keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NeighbourAgreement:
    """Student vs teacher neighbours over one pool of sentences."""

    recall_at_k: float  # mean share of the teacher's k nearest found in the student's k nearest
    rank_spearman: float  # mean Spearman of a sentence's similarities to all the others
    k: int
    pool: int  # sentences in the pool


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _similarities_without_self(x: np.ndarray) -> np.ndarray:
    """[n, n-1]: each row's cosine similarity to every *other* row of ``x``."""
    u = _unit(x)
    sims = u @ u.T
    n = len(u)
    return sims[~np.eye(n, dtype=bool)].reshape(n, n - 1)


def _row_ranks(s: np.ndarray) -> np.ndarray:
    """Ranks within each row (ties broken by position: continuous similarities rarely tie)."""
    ranks = np.empty_like(s)
    order = np.argsort(s, axis=1, kind="stable")
    rows = np.arange(len(s))[:, None]
    ranks[rows, order] = np.arange(s.shape[1], dtype=s.dtype)[None, :]
    return ranks


def neighbour_agreement(
    reference: np.ndarray, other: np.ndarray, k: int = 10
) -> NeighbourAgreement:
    """How much of ``reference``'s neighbourhood structure ``other`` keeps (same rows, same
    sentences): recall@k of each row's k nearest other rows by cosine, and the mean Spearman
    of each row's similarities to all other rows."""
    reference = np.asarray(reference)
    other = np.asarray(other)
    if reference.shape[0] != other.shape[0]:
        raise ValueError(f"{reference.shape[0]} reference rows vs {other.shape[0]}")
    n = len(reference)
    if not 1 <= k < n:
        raise ValueError(f"k={k} needs a pool of more than k sentences (got {n})")
    s_ref = _similarities_without_self(reference)
    s_oth = _similarities_without_self(other)
    top_ref = np.argpartition(-s_ref, k - 1, axis=1)[:, :k]
    top_oth = np.argpartition(-s_oth, k - 1, axis=1)[:, :k]
    hits = (top_ref[:, :, None] == top_oth[:, None, :]).any(axis=2).sum(axis=1)
    r_ref = _row_ranks(s_ref)
    r_oth = _row_ranks(s_oth)
    r_ref -= r_ref.mean(axis=1, keepdims=True)
    r_oth -= r_oth.mean(axis=1, keepdims=True)
    rho = (r_ref * r_oth).sum(axis=1) / np.sqrt(
        (r_ref * r_ref).sum(axis=1) * (r_oth * r_oth).sum(axis=1)
    )
    return NeighbourAgreement(
        recall_at_k=float(hits.mean() / k),
        rank_spearman=float(rho.mean()),
        k=k,
        pool=n,
    )


@dataclass
class LinearProbe:
    """A fitted one-vs-rest logistic regression on standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # [classes or 1, features]
    bias: np.ndarray  # [classes or 1]
    classes: np.ndarray

    def decision(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return z @ self.weights.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        d = self.decision(x)
        if len(self.classes) == 2:
            return self.classes[(d[:, 0] > 0).astype(int)]
        return self.classes[d.argmax(axis=1)]


def _fit_binary(
    z: np.ndarray, y: np.ndarray, c: float, max_iter: int, tol: float
) -> tuple[np.ndarray, float]:
    """Newton's method on sklearn's objective: 0.5 ||w||^2 + C sum(log-loss), the intercept
    not penalised. ``y`` in {0, 1}. Converges in a handful of steps at these sizes."""
    n, d = z.shape
    x = np.hstack([z, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.ones(d + 1)
    reg[-1] = 0.0
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = c * (x.T @ (p - y)) + reg * theta
        w = c * p * (1 - p)
        hess = (x * w[:, None]).T @ x + np.diag(reg + 1e-10)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return theta[:-1], float(theta[-1])


def fit_probe(
    x: np.ndarray, y: np.ndarray, *, c: float = 1.0, max_iter: int = 50, tol: float = 1e-8
) -> LinearProbe:
    """Logistic regression (one-vs-rest for more than two classes) on features standardised
    with the training set's mean and deviation, so that one C suits every model's scale."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes, the labels hold {classes.tolist()}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    targets = [classes[1]] if len(classes) == 2 else list(classes)
    fitted = [_fit_binary(z, (y == t).astype(np.float64), c, max_iter, tol) for t in targets]
    return LinearProbe(
        mean=mean,
        scale=scale,
        weights=np.stack([w for w, _ in fitted]),
        bias=np.asarray([b for _, b in fitted]),
        classes=classes,
    )


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    c: float = 1.0,
) -> float:
    """Accuracy (0..1) on the test rows of a probe fitted on the train rows."""
    probe = fit_probe(train_x, train_y, c=c)
    return float((probe.predict(test_x) == np.asarray(test_y)).mean())
