"""The hypernetwork: context features in, LoRA factors for every (layer, module) out.

One learned query per (layer, module, rank slot) attends over the context's token features (the
frozen base's hidden states, read chunk by chunk). The attention is kept as running softmax
statistics (max, normaliser, weighted sum) so that contexts stream in at constant memory and the
result after any number of chunks equals attention over all of them at once. Each attended query,
plus the sentence embedding and a kind embedding, goes through shared MLP blocks, and a head per
module type turns it into one row of A and one column of B. B's per-(layer, module) scale starts at
zero, so a fresh generator emits zero updates: the base model unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperadapter.generator.config import KIND_IDS, GeneratorConfig


@dataclass
class AttentionState:
    """Running softmax statistics per context: max [B, N, h], normaliser [B, N, h], sum [B, N, h, dh]."""

    max: Tensor
    norm: Tensor
    sum: Tensor

    def detach(self) -> "AttentionState":
        return AttentionState(self.max.detach(), self.norm.detach(), self.sum.detach())

    def select(self, i: int) -> "AttentionState":
        return AttentionState(self.max[i:i + 1], self.norm[i:i + 1], self.sum[i:i + 1])

    @staticmethod
    def cat(states: list["AttentionState"]) -> "AttentionState":
        return AttentionState(torch.cat([s.max for s in states]), torch.cat([s.norm for s in states]),
                              torch.cat([s.sum for s in states]))

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        return {f"{prefix}max": self.max, f"{prefix}norm": self.norm, f"{prefix}sum": self.sum}


class MLPBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class HyperNetwork(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        self.n_modules = len(c.module_names)
        self.n_queries = c.num_layers * self.n_modules * c.rank
        d, self.h = c.latent, c.heads
        self.dh = d // c.heads
        # queries = layer + module + rank-slot embeddings + a free per-query part
        self.layer_emb = nn.Parameter(torch.randn(c.num_layers, 1, 1, d) * 0.02)
        self.module_emb = nn.Parameter(torch.randn(1, self.n_modules, 1, d) * 0.02)
        self.slot_emb = nn.Parameter(torch.randn(1, 1, c.rank, d) * 0.02)
        self.query_free = nn.Parameter(torch.randn(c.num_layers, self.n_modules, c.rank, d) * 0.02)
        self.feature_norm = nn.LayerNorm(c.hidden_size)
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(c.hidden_size, d, bias=False)
        self.to_v = nn.Linear(c.hidden_size, d, bias=False)
        self.null_k = nn.Parameter(torch.zeros(d))  # an always-present key/value: empty contexts are defined
        self.null_v = nn.Parameter(torch.zeros(d))
        self.attn_out = nn.Linear(d, d)
        self.sentence = nn.Linear(c.sentence_dim, d) if c.use_sentence else None
        self.kind_emb = nn.Embedding(len(KIND_IDS), d)
        nn.init.normal_(self.kind_emb.weight, std=0.02)
        self.blocks = nn.ModuleList(MLPBlock(d) for _ in range(c.mlp_blocks))
        self.out_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({m: nn.Linear(d, sum(c.shape(m))) for m in c.module_names})
        # per (layer, module) output scales; B's start at zero: a fresh generator changes nothing
        self.scale_a = nn.ParameterDict({m: nn.Parameter(torch.full((c.num_layers, 1, 1), 1.0 / math.sqrt(c.shape(m)[0])))
                                         for m in c.module_names})
        self.scale_b = nn.ParameterDict({m: nn.Parameter(torch.zeros(c.num_layers, 1, 1)) for m in c.module_names})

    # ------------------------------------------------------------ attention over the context
    def queries(self) -> Tensor:
        q = self.layer_emb + self.module_emb + self.slot_emb + self.query_free  # [L, M, r, d]
        q = q.reshape(self.n_queries, -1)
        return q

    def _heads(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:-1], self.h, self.dh)

    def init_state(self, batch: int) -> AttentionState:
        """The state of a context that has seen no tokens yet: only the null key/value."""
        q = self._heads(self.to_q(self.queries()))  # [N, h, dh]
        score = (q * self._heads(self.null_k)).sum(-1) / math.sqrt(self.dh)  # [N, h]
        n = self.n_queries
        return AttentionState(max=score.expand(batch, n, self.h).clone(),
                              norm=torch.ones(batch, n, self.h, dtype=score.dtype),
                              sum=self._heads(self.null_v).expand(batch, n, self.h, self.dh).clone())

    def absorb(self, state: AttentionState, features: Tensor, mask: Tensor) -> AttentionState:
        """Fold token features [B, T, hidden] (mask [B, T]: 1 = real token) into the running state."""
        if features.shape[1] == 0:
            return state
        x = self.feature_norm(features.to(self.null_k.dtype))
        k, v = self._heads(self.to_k(x)), self._heads(self.to_v(x))  # [B, T, h, dh]
        q = self._heads(self.to_q(self.queries()))  # [N, h, dh]
        scores = torch.einsum("nhd,bthd->bnht", q, k) / math.sqrt(self.dh)
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        new_max = torch.maximum(state.max, scores.amax(-1))
        carry = torch.exp(state.max - new_max)
        weights = torch.exp(scores - new_max[..., None])  # masked tokens: exp(-inf) = 0
        norm = state.norm * carry + weights.sum(-1)
        total = state.sum * carry[..., None] + torch.einsum("bnht,bthd->bnhd", weights, v)
        return AttentionState(new_max, norm, total)

    # ------------------------------------------------------------ factors
    def factors(self, state: AttentionState, sentence: Tensor | None, kind_ids: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """-> {module: (A [B, L, r, in], B [B, L, out, r])}; the adapter's alpha/r scaling is NOT folded in."""
        c = self.config
        batch = state.sum.shape[0]
        attended = (state.sum / state.norm[..., None]).reshape(batch, self.n_queries, -1)
        z = self.queries()[None] + self.attn_out(attended)
        z = z + self.kind_emb(kind_ids)[:, None, :]
        if self.sentence is not None and sentence is not None:
            z = z + self.sentence(sentence.to(z.dtype))[:, None, :]
        for block in self.blocks:
            z = block(z)
        z = self.out_norm(z).reshape(batch, c.num_layers, self.n_modules, c.rank, -1)
        out = {}
        for i, m in enumerate(c.module_names):
            fan_in, fan_out = c.shape(m)
            rows = self.heads[m](z[:, :, i])  # [B, L, r, in + out]
            a = rows[..., :fan_in] * self.scale_a[m]
            b = (rows[..., fan_in:] * self.scale_b[m]).transpose(-1, -2)  # [B, L, out, r]
            out[m] = (a, b)
        return out

    def forward(self, features: Tensor, mask: Tensor, sentence: Tensor | None, kind_ids: Tensor,
                use_tokens: bool = True) -> dict[str, tuple[Tensor, Tensor]]:
        """The whole pass for a batch of contexts given at once (training goes through here, so that
        a DistributedDataParallel wrapper sees it)."""
        state = self.init_state(kind_ids.shape[0])
        if use_tokens:
            state = self.absorb(state, features, mask)
        return self.factors(state, sentence, kind_ids)
