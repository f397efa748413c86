"""Tokenization for the device side: the `tokenizers` library's fast batch encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdeploy.core.errors import ModelError


class TextEncoder:
    """texts -> numpy feeds (input_ids, attention_mask, token_type_ids), dynamic padding."""

    def __init__(self, tokenizer_file: Path | str, max_length: int):
        from tokenizers import Tokenizer

        path = Path(tokenizer_file)
        if not path.is_file():
            raise ModelError(
                f"tokenizer file {path} does not exist",
                where=str(path),
                fix="the model dir needs tokenizer.json (a fast tokenizer)",
            )
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelError(
                f"cannot load tokenizer {path}: {exc}",
                where=str(path),
                fix="the file must be a `tokenizers` JSON (tokenizer.save())",
            ) from None
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length=max_length)
        pad = self.tokenizer.padding or {}
        pad_id = pad.get("pad_id", 0)
        pad_token = pad.get("pad_token", "[PAD]")
        self._padding = {"pad_id": pad_id, "pad_token": pad_token}
        self.tokenizer.enable_padding(**self._padding)

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        if pairs is not None:
            encs = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
        else:
            encs = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        types = np.array([e.type_ids for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> list:
        """Truncated, unpadded encodings (``tokenizers.Encoding``), one per text (or pair)."""
        self.tokenizer.no_padding()
        try:
            if pairs is not None:
                return self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
            return self.tokenizer.encode_batch(list(texts))
        finally:
            self.tokenizer.enable_padding(**self._padding)

    def pad(self, encodings: list, *, pad_to_multiple_of: int | None = None) -> dict:
        """Feeds for a batch of encodings, right-padded to the batch's longest (dynamic
        padding), exactly as ``encode`` pads them."""
        n = len(encodings)
        width = max((len(e.ids) for e in encodings), default=0)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((n, width), self._padding["pad_id"], dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = e.attention_mask
            types[i, :k] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts after truncation (no padding), for length bucketing."""
        self.tokenizer.no_padding()
        try:
            return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]
        finally:
            self.tokenizer.enable_padding(**self._padding)
