"""Task metric of a torch model on a labelled split (for choosing epochs on dev)."""

from __future__ import annotations

import numpy as np
import torch

from kdeploy.data import Split
from kdeploy.model_info import ModelInfo
from kdeploy.runtime.metrics import accuracy, cosine_rows, spearman


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def predict(
    model,
    tokenizer,
    info: ModelInfo,
    texts: list[str],
    pairs: list[str] | None,
    max_len: int,
    batch_size: int,
    device,
) -> np.ndarray:
    """Pooled embeddings or logits, batched by length (order restored)."""
    lens = np.asarray([len(x) for x in texts])
    order = np.argsort(lens, kind="stable")
    out: np.ndarray | None = None
    for s in range(0, len(texts), batch_size):
        idx = order[s : s + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            None if pairs is None else [pairs[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        res = model(**enc)
        y = (
            res.logits
            if info.kind == "classification"
            else pool(res.last_hidden_state, enc["attention_mask"], info.pooling)
        )
        y = y.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), y.shape[1]), dtype=np.float32)
        out[idx] = y
    assert out is not None
    return out


def score(
    model, tokenizer, info: ModelInfo, split: Split, max_len: int, device, batch_size: int = 64
) -> float:
    """STS: Spearman x100 of cosine similarity; classification: accuracy x100."""
    was_training = model.training
    model.eval()
    try:
        if info.kind == "embedding":
            assert split.texts_b is not None and split.labels is not None
            a = predict(model, tokenizer, info, split.texts_a, None, max_len, batch_size, device)
            b = predict(model, tokenizer, info, split.texts_b, None, max_len, batch_size, device)
            return 100 * spearman(cosine_rows(a, b), np.asarray(split.labels))
        assert split.labels is not None
        logits = predict(
            model, tokenizer, info, split.texts_a, split.texts_b, max_len, batch_size, device
        )
        return 100 * accuracy(logits.argmax(1), np.asarray(split.labels))
    finally:
        model.train(was_training)
