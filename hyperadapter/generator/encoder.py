"""Context features from the frozen base model itself, read in independent chunks.

The base runs only up to the feature layer (a view over the base's first layers) over chunks of at
most `chunk_tokens` tokens. Chunks never attend to each other, so a context's features do not depend
on how it was delivered: this is what lets a conversation be extended message by message with the
same result as reading it whole.

The pass runs under bfloat16 autocast (CPU matmuls in bf16, norms and outputs in float32) where the
CPU has bf16 kernels (hyperadapter.packed.fast_bf16; elsewhere in float32), in training and in
serving alike: 1.9x faster here on a 2,000-token document (1,075 -> 572 ms), and
the generator sees at serving time the features it was trained on. Autocast does not keep its casts
of frozen weights, so the view holds its own copy of those layers with the linear weights already in
bf16 (56 MB for 8 layers of the default model): the same numbers, bit for bit, without casting 28M
weights on every call (a one-sentence description: 26 -> 14 ms here). Where bf16 is slow, serving's
feature pass has int8 linears instead but down_proj (FLOAT32_LINEARS; hyperadapter.packed.fast_int8);
training's stays float32.
"""

from __future__ import annotations

import copy
import threading
from typing import Sequence

import torch
from torch import Tensor, nn

from hyperadapter.base import Base
from hyperadapter.packed import Int8Linear, bf16_linears, bucket, cpu_autocast, int8_linears


# Linears the int8 feature pass keeps in float32: their inputs have a few far-out activations that
# a per-row int8 scale rounds the rest away against. Converting the default model's down_proj too
# tripled the error of the adapters made from the features (3% -> 9% mean relative error).
FLOAT32_LINEARS = ("down_proj",)


def frozen_layers(layers: nn.ModuleList, int8: bool = False) -> nn.ModuleList:
    """A copy of `layers` with bfloat16 linears (what autocast would cast them to, prepacked where
    oneDNN can: hyperadapter.packed), everything else as it was; no hooks (the runtime's adapters
    never apply to features). With `int8` (the caller checked packed.fast_int8), int8 linears
    instead, but FLOAT32_LINEARS."""
    layers = copy.deepcopy(layers)
    for module in layers.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    if int8:
        return int8_linears(layers, keep=FLOAT32_LINEARS).requires_grad_(False)
    return bf16_linears(layers).requires_grad_(False)


@torch.no_grad()
def token_embeddings(base: Base, ids: Tensor) -> Tensor:
    """The base's input embeddings of token ids (the copy head's values; the same at every depth)."""
    return base.model.get_input_embeddings()(ids)


class TokenFeatures:
    """`__call__(chunks) -> (features [n, T, hidden], mask [n, T], token embeddings [n, T, hidden])`,
    with no gradients."""

    def __init__(self, base: Base, layer: int, layers: nn.ModuleList | None = None):
        """`layers`: the base's first layers already copied for this (frozen_layers), at least `layer` of
        them, when several depths share one copy; else this makes its own."""
        self.base = base
        self.layer = layer
        self.pad_id = base.tokenizer.pad_token_id
        inner = getattr(base.model, "model", None)
        self.view = None
        if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
            # a shallow copy with its own module table: the same layer objects, only the first `layer`
            view = copy.copy(inner)
            view._modules = dict(inner._modules)
            if layers is None:
                layers = frozen_layers(nn.ModuleList(list(inner.layers)[:layer]))
            view._modules["layers"] = nn.ModuleList(list(layers)[:layer])
            self.view = view
        # int8 linears scale each row by its largest activation, pads included: a chunk's features
        # then depend on how far it is padded, so sub-batches take only chunks of one padded width
        # (a chunk is read exactly as it would be alone: streaming equals reading at once).
        self.int8 = self.view is not None and any(isinstance(m, Int8Linear) for m in self.view.layers.modules())
        self._lock = threading.Lock()

    @torch.no_grad()
    def __call__(self, chunks: list[list[int]], batch_tokens: int = 2048,
                 max_rows: int = 64) -> tuple[Tensor, Tensor, Tensor]:
        if not chunks:
            hidden = self.base.config.hidden_size
            return torch.zeros(0, 0, hidden), torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, hidden)
        length = max(len(c) for c in chunks)
        ids = torch.full((len(chunks), bucket(length)), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(chunks), bucket(length), dtype=torch.long)
        for i, c in enumerate(chunks):
            ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, :len(c)] = 1
        # Sub-batches of similar length under a token budget, each padded only to its own longest
        # chunk: a document's 256-token chunks and thirty one-line descriptions do not share a width.
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))
        out = torch.zeros(len(chunks), length, self.base.config.hidden_size)
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and end - start < max_rows
                   and (end - start + 1) * len(chunks[order[end]]) <= batch_tokens
                   and (not self.int8 or bucket(len(chunks[order[end]])) == bucket(len(chunks[order[start]])))):
                end += 1
            rows = torch.tensor(order[start:end])
            width = len(chunks[order[end - 1]])
            padded = bucket(width)  # right padding: causal attention, so real tokens never see it
            out[rows, :width] = self._forward(ids[rows, :padded], mask[rows, :padded])[:, :width]
            start = end
        return out, mask[:, :length], token_embeddings(self.base, ids[:, :length])

    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        # inference_mode: ~10% less per-op overhead than no_grad on a short text. Its output is an
        # inference tensor, only ever copied into a normal one by the caller (never saved for backward).
        with torch.inference_mode(), cpu_autocast():
            return self._forward_base(ids, mask).float()

    def _forward_base(self, ids: Tensor, mask: Tensor) -> Tensor:
        if self.view is not None:
            return self.view(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        out = self.base.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.hidden_states[self.layer]


def feature_passes(base: Base, layers: Sequence[int], int8: bool = False) -> dict[int, TokenFeatures]:
    """A TokenFeatures per layer in `layers`, all over one copy (frozen_layers, `int8` or not) of the
    base's first layers (the deepest's): reading tasks at layer 4 and chats at 8 holds 8 layers, not 12."""
    inner = getattr(base.model, "model", None)
    shared = None
    if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
        shared = frozen_layers(nn.ModuleList(list(inner.layers)[:max(layers)]), int8)
    return {layer: TokenFeatures(base, layer, shared) for layer in layers}
