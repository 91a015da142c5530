"""The hypernetwork: context features in, LoRA factors for every (layer, module) out.

One learned query per (layer, module, rank slot) attends over the context's token features (the
frozen base's hidden states, read chunk by chunk). The attention is kept as running softmax
statistics (max, normaliser, weighted sum) so that contexts stream in at constant memory and the
result after any number of chunks equals attention over all of them at once. Each attended query,
plus the sentence embedding and a kind embedding, goes through shared MLP blocks, and a head per
module type turns it into one row of A and one column of B. B's per-(layer, module) scale starts at
zero, so a fresh generator emits zero updates: the base model unchanged.

A second, single-head "copy" attention has the context's *token embeddings* as values. For modules
that write into the residual stream (down_proj), each B column also gets a gated mixture of those
embeddings: with the LM head tied to the embeddings, an adapter can then raise the logits of words
that were in the context (a name in a chat, an answer span in a document) when its A row fires.
Without it, early training learned a context-independent "answer format" adapter and little else.
With `copy_features`, the copy attention also pools the *features* of the tokens it picks, and they
join the query's latent: a slot then knows what it copied and in what context, so its A row (when
the slot fires) can depend on the copied word instead of being the same for every context.
With `copy_compete` > 0, the rank slots of one (layer, module) also compete for each token (as in
Slot Attention): a slot's weight on a token is scaled by its share of the slots' softmax over that
token's scores x copy_compete, times the number of slots (so slots that agree keep exactly their
old weights; at 0 every share is 1: no competition). Without it,
every slot of stage 16 copied the same blend of a chat's names (" Clara" .36, " Rex" .25, " Oslo"
.11), and the blend's embedding raised junk tokens (" setattr") for questions about a short chat
with several facts. The share is a function of one token's scores, so streaming stays exact.
With `copy_keys` > 0, each copy slot also gets a key: its pooled copied features (the base's
hidden states where it copied, which know "my sister ... Clara") go through a shared map to
copy_keys numbers and a per-layer map into the module's input space, and are added to its A row.
A slot is then a key-value memory entry: the key says when to fire, the copied embedding what to
write. Through the latent alone the A row is one shared head's view of the features, and competing
slots of stage 21 still gave one name to every question about a chat. The per-layer maps start at
zero, so adding keys to a trained generator changes nothing until they learn.
Both act only for the kinds in `routed_kinds`; the copy slots of other kinds read as without them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperadapter.generator.config import KIND_IDS, GeneratorConfig
from hyperadapter.packed import Int8Linear, PackedLinear, can_pack


FIELDS = ("max", "norm", "sum", "copy_max", "copy_norm", "copy_sum")


@dataclass
class AttentionState:
    """Running softmax statistics per context: max [B, N, h], normaliser [B, N, h], sum [B, N, h, dh];
    and the copy head's: copy_max [B, N], copy_norm [B, N], copy_sum [B, N, hidden] (token
    embeddings) or [B, N, 2 * hidden] (embeddings, then features, with `copy_features`)."""

    max: Tensor
    norm: Tensor
    sum: Tensor
    copy_max: Tensor
    copy_norm: Tensor
    copy_sum: Tensor

    def detach(self) -> "AttentionState":
        return AttentionState(*(getattr(self, f).detach() for f in FIELDS))

    def rows(self, start: int, stop: int) -> "AttentionState":
        return AttentionState(*(getattr(self, f)[start:stop] for f in FIELDS))

    def take(self, rows: list[int]) -> "AttentionState":
        """These rows, in this order (a view when they are consecutive and rising)."""
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return self.rows(rows[0], rows[0] + len(rows))
        index = torch.tensor(rows)
        return AttentionState(*(getattr(self, f)[index] for f in FIELDS))

    @staticmethod
    def cat(states: list["AttentionState"]) -> "AttentionState":
        return AttentionState(*(torch.cat([getattr(s, f) for s in states]) for f in FIELDS))

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        return {f"{prefix}{f}": getattr(self, f) for f in FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "") -> "AttentionState":
        return cls(*(tensors[f"{prefix}{f}"] for f in FIELDS))


def _online(old_max: Tensor, old_norm: Tensor, old_sum: Tensor | None, scores: Tensor, values: Tensor,
            equation: str) -> tuple[Tensor, Tensor, Tensor]:
    """One step of streaming softmax attention: fold new `scores` (token axis last) and `values`.
    `old_sum` None: a sum of zeros (the same result, bit for bit, without reading them)."""
    new_max = torch.maximum(old_max, scores.amax(-1))
    carry = torch.exp(old_max - new_max)
    weights = torch.exp(scores - new_max[..., None])  # masked tokens: exp(-inf) = 0
    norm = old_norm * carry + weights.sum(-1)
    total = torch.einsum(equation, weights, values)
    if old_sum is not None:
        total = old_sum * carry[..., None] + total
    return new_max, norm, total


class MLPBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor, linear=None) -> Tensor:
        linear = linear or (lambda layer, h: layer(h))
        return x + linear(self.fc2, F.silu(linear(self.fc1, self.norm(x))))


class HyperNetwork(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        # Serving sets it (Generator's int8, only where packed.fast_int8): linears read at inference
        # go through int8 copies. Training leaves it off, so its validation stays float32.
        self.int8_inference = False
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
        # the copy head: scores from the same features, values = the context's token embeddings
        self.copy_modules = [m for m in c.module_names if m in c.copy_modules]
        for m in self.copy_modules:
            if c.shape(m)[1] != c.hidden_size:
                raise ValueError(f"copy module {m} must write into the residual stream ({c.hidden_size} wide)")
        self.copy_q = nn.Linear(d, c.copy_dim, bias=False)
        self.copy_k = nn.Linear(c.hidden_size, c.copy_dim, bias=False)
        self.copy_null_k = nn.Parameter(torch.zeros(c.copy_dim))
        self.copy_gain = nn.ParameterDict({m: nn.Parameter(torch.zeros(c.num_layers, 1, c.rank))
                                           for m in self.copy_modules})
        self.copy_feature = nn.Linear(c.hidden_size, d) if c.copy_features else None
        self.copy_key_in: nn.Linear | None = None
        self.copy_key_out = nn.ParameterDict()
        if c.copy_keys:
            self._build_copy_keys()
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

    def _build_copy_keys(self) -> None:
        c = self.config
        self.copy_key_in = nn.Linear(c.hidden_size, c.copy_keys, bias=False)
        for m in self.copy_modules:  # zero: keys add nothing until trained
            self.copy_key_out[m] = nn.Parameter(torch.zeros(c.num_layers, c.copy_keys, c.shape(m)[0]))

    def add_copy_keys(self, width: int, scale: float | None = None) -> None:
        """Give a generator trained without keys `width`-wide ones, learned as raw x `scale` (they
        change nothing until trained). Keys it already has stay as they are: same width and scale."""
        c = self.config
        scale = c.copy_key_scale if scale is None else float(scale)
        if c.copy_keys:
            if (c.copy_keys, c.copy_key_scale) != (width, scale):
                raise ValueError(f"this generator already has copy keys {c.copy_keys} wide at scale "
                                 f"{c.copy_key_scale}, not {width} at {scale}")
            return
        if not width:
            return
        dataclasses.replace(c, copy_keys=width, copy_key_scale=scale)  # the config's own checks, first
        c.copy_keys, c.copy_key_scale = width, scale  # in place: the generator holds this same config
        self._build_copy_keys()
        self.to(self.null_k.dtype)

    @torch.no_grad()
    def set_copy_scale(self, scale: float) -> None:
        """Change how the copy gain is parametrised (raw * scale) without changing what it computes."""
        for gain in self.copy_gain.values():
            gain.mul_(self.config.copy_scale / scale)
        self.config.copy_scale = scale

    # ------------------------------------------------------------ attention over the context
    def _frozen(self, name: str, compute, params: Sequence[Tensor]):
        """`compute()`, remembered while no gradient is recorded: what depends on the weights alone
        (the queries and their projections, a packed copy of a layer) is the same for every context,
        and recomputing it was ~3 ms of a ~30 ms one-sentence adapter. Keyed on autocast and on the
        storage and in-place version of each of `params`, the weights `compute` reads (an optimizer
        step or load_state_dict bumps a version; a new Parameter has new storage), so a changed
        weight is never served stale. They are named, not found by `self.parameters()`: walking the
        module tree on every call was ~1.5 ms of a one-sentence adapter."""
        if torch.is_grad_enabled():
            return compute()
        key = (torch.is_autocast_enabled("cpu"), *((p.data_ptr(), p._version) for p in params))
        cache = self.__dict__.setdefault("_frozen_cache", {})
        if name not in cache or cache[name][0] != key:
            cache[name] = (key, compute())
        return cache[name][1]

    def _linear(self, layer: nn.Linear, x: Tensor) -> Tensor:
        """`layer(x)`; at inference under bf16 autocast, through a bf16 copy of the layer laid out
        once for oneDNN (hyperadapter.packed): autocast would cast the weight on every call, a third
        of the heads' time for one adapter. The same numbers. At inference with `int8_inference`
        set (where bf16 is slow), through an int8 copy: the heads 21.0 -> 14.5 ms
        for one adapter on an AVX2-only CPU, its factors within ~1% of float32."""
        if torch.is_grad_enabled():
            return layer(x)
        params = (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)
        if self.int8_inference and not torch.is_autocast_enabled("cpu"):
            return self._frozen(f"int8:{id(layer)}", lambda: Int8Linear(layer), params)(x)
        if (not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != torch.bfloat16
                or not can_pack()):
            return layer(x)
        return self._frozen(f"packed:{id(layer)}", lambda: PackedLinear(layer), params)(x)

    def queries(self) -> Tensor:
        def compute() -> Tensor:
            q = self.layer_emb + self.module_emb + self.slot_emb + self.query_free  # [L, M, r, d]
            return q.reshape(self.n_queries, -1)
        return self._frozen("queries", compute, self._query_params())

    def _query_params(self) -> tuple[Tensor, ...]:
        return self.layer_emb, self.module_emb, self.slot_emb, self.query_free

    def _projected_queries(self) -> tuple[Tensor, Tensor]:
        """The queries' attention heads [N, h, dh] and copy-head queries [N, copy_dim]."""
        def compute() -> tuple[Tensor, Tensor]:
            queries = self.queries()
            return self._heads(self.to_q(queries)), self.copy_q(queries)
        return self._frozen("projected", compute, (*self._query_params(), self.to_q.weight, self.copy_q.weight))

    def _heads(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:-1], self.h, self.dh)

    def init_state(self, batch: int) -> AttentionState:
        """The state of a context that has seen no tokens yet: only the null key/value."""
        def compute() -> tuple[Tensor, Tensor]:
            q, copy_q = self._projected_queries()
            score = (q * self._heads(self.null_k)).sum(-1) / math.sqrt(self.dh)  # [N, h]
            return score, copy_q @ self.copy_null_k / math.sqrt(self.config.copy_dim)  # [N]
        score, copy_score = self._frozen("null_scores", compute, (
            *self._query_params(), self.to_q.weight, self.copy_q.weight, self.null_k, self.copy_null_k))
        n, hidden = self.n_queries, self.config.hidden_size
        return AttentionState(max=score.expand(batch, n, self.h).clone(),
                              norm=torch.ones(batch, n, self.h, dtype=score.dtype),
                              sum=self._heads(self.null_v).expand(batch, n, self.h, self.dh).clone(),
                              copy_max=copy_score.expand(batch, n).clone(),
                              copy_norm=torch.ones(batch, n, dtype=score.dtype),
                              copy_sum=torch.zeros(batch, n, hidden * self.copy_width, dtype=score.dtype))

    @property
    def copy_width(self) -> int:
        return 2 if self.copy_feature is not None else 1

    def routed(self, kind_ids: Tensor) -> Tensor | None:
        """[B] True where a row's kind is routed (its copy slots compete and carry keys); None when
        every kind is (and so every row)."""
        kinds = self.config.routed_kinds
        if set(kinds) >= set(KIND_IDS):
            return None
        return torch.isin(kind_ids, torch.tensor([KIND_IDS[k] for k in kinds], device=kind_ids.device))

    def read(self, features: Tensor, mask: Tensor, embeddings: Tensor, kind_ids: Tensor) -> AttentionState:
        """`absorb(init_state(B), ...)`, the same numbers: a context read at once from nothing. The
        copy head's empty sum is zeros, [B, 720, 1152] for the default model; not multiplying and
        adding them is ~1 ms of a one-sentence adapter."""
        return self.absorb(self.init_state(features.shape[0]), features, mask, embeddings, kind_ids, copy_empty=True)

    def absorb(self, state: AttentionState, features: Tensor, mask: Tensor, embeddings: Tensor,
               kind_ids: Tensor, copy_empty: bool = False) -> AttentionState:
        """Fold token features [B, T, hidden] and the tokens' input embeddings [B, T, hidden]
        (mask [B, T]: 1 = real token) of contexts of kinds `kind_ids` [B] into the running state.
        `copy_empty`: the copy head's sum is still init_state's zeros (see `read`)."""
        if features.shape[1] == 0:
            return state
        x = self.feature_norm(features.to(self.null_k.dtype))
        k, v = self._heads(self.to_k(x)), self._heads(self.to_v(x))  # [B, T, h, dh]
        q, copy_q = self._projected_queries()  # [N, h, dh], [N, copy_dim]
        pad = ~mask.bool()
        scores = torch.einsum("nhd,bthd->bnht", q, k) / math.sqrt(self.dh)
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        main = _online(state.max, state.norm, state.sum, scores, v, "bnht,bthd->bnhd")
        copy_scores = self.copy_scores(x, kind_ids, copy_q).masked_fill(pad[:, None, :], float("-inf"))
        copy_values = embeddings.to(x.dtype)
        if self.copy_feature is not None:
            copy_values = torch.cat([copy_values, x], -1)
        copy = _online(state.copy_max, state.copy_norm, None if copy_empty else state.copy_sum, copy_scores,
                       copy_values, "bnt,bth->bnh")
        return AttentionState(*main, *copy)

    def copy_scores(self, x: Tensor, kind_ids: Tensor, copy_q: Tensor | None = None) -> Tensor:
        """The copy head's scores [B, N, T] for normed token features x [B, T, hidden] of contexts
        of kinds `kind_ids` [B] (the null key's are init_state's copy_max); `copy_q`, the projected
        copy queries, if already at hand."""
        if copy_q is None:
            _, copy_q = self._projected_queries()
        scores = torch.einsum("nc,btc->bnt", copy_q, self.copy_k(x)) / math.sqrt(self.config.copy_dim)
        if not self.config.copy_compete:
            return scores
        routed = self.routed(kind_ids)
        if routed is None:
            return self._compete(scores)
        if not routed.any():  # e.g. a task alone, on a generator that routes chats: nothing to compete
            return scores
        return torch.where(routed[:, None, None], self._compete(scores), scores)

    def _compete(self, scores: Tensor) -> Tensor:
        """scores [B, N, T] + log(rank * softmax over each (layer, module)'s rank slots of scores x
        copy_compete): the softmax over tokens then weighs a token by the slot's share of it (see
        the module doc). A high copy_compete gives each token to the slot that scores it highest,
        however slightly: slots that copy one blend are split apart from the first step."""
        b, n, t = scores.shape
        r = self.config.rank
        grouped = scores.reshape(b, n // r, r, t)
        sharp = grouped * self.config.copy_compete
        share = sharp - torch.logsumexp(sharp, dim=2, keepdim=True) + math.log(r)
        return (grouped + share).reshape(b, n, t)

    # ------------------------------------------------------------ factors
    def factors(self, state: AttentionState, sentence: Tensor | None, kind_ids: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """-> {module: (A [B, L, r, in], B [B, L, out, r])}; the adapter's alpha/r scaling is NOT folded in."""
        c = self.config
        batch = state.sum.shape[0]
        attended = (state.sum / state.norm[..., None]).reshape(batch, self.n_queries, -1)
        hidden = c.hidden_size
        copied_all = state.copy_sum / state.copy_norm[..., None]  # [B, N, hidden * copy_width]
        z = self.queries()[None] + self._linear(self.attn_out, attended)
        if self.copy_feature is not None:
            z = z + self._linear(self.copy_feature, copied_all[..., hidden:])
        z = z + self.kind_emb(kind_ids)[:, None, :]
        if self.sentence is not None and sentence is not None:
            z = z + self._linear(self.sentence, sentence.to(z.dtype))[:, None, :]
        for block in self.blocks:
            z = block(z, self._linear)
        z = self.out_norm(z).reshape(batch, c.num_layers, self.n_modules, c.rank, -1)
        out = {}
        routed = self.routed(kind_ids)
        keyed = self.copy_key_in is not None and (routed is None or bool(routed.any()))
        copied = copied_all.reshape(batch, c.num_layers, self.n_modules, c.rank, -1)  # [B, L, M, r, hidden * copy_width]
        for i, m in enumerate(c.module_names):
            fan_in, fan_out = c.shape(m)
            rows = self._linear(self.heads[m], z[:, :, i])  # [B, L, r, in + out]
            a = rows[..., :fan_in] * self.scale_a[m]
            b = rows[..., fan_in:] * self.scale_b[m]  # [B, L, r, out]
            if m in self.copy_gain:
                gain = self.copy_gain[m].transpose(-1, -2) * self.config.copy_scale
                b = b + copied[:, :, i, :, :hidden] * gain
                if keyed:  # keys of this module's slots only: [B, L, r, copy_keys]
                    keys = self._linear(self.copy_key_in, copied[:, :, i, :, hidden:])
                    key_rows = torch.einsum("blrk,lki->blri", keys, self.copy_key_out[m]) * c.copy_key_scale
                    if routed is not None:
                        key_rows = key_rows * routed[:, None, None, None].to(key_rows.dtype)
                    a = a + key_rows
            out[m] = (a, b.transpose(-1, -2))  # B: [B, L, out, r]
        return out

    def forward(self, features: Tensor, mask: Tensor, embeddings: Tensor, sentence: Tensor | None,
                kind_ids: Tensor, use_tokens: bool = True) -> dict[str, tuple[Tensor, Tensor]]:
        """The whole pass for a batch of contexts given at once (training goes through here, so that
        a DistributedDataParallel wrapper sees it)."""
        if use_tokens and features.shape[1]:
            state = self.read(features, mask, embeddings, kind_ids)
        else:
            state = self.init_state(kind_ids.shape[0])
        return self.factors(state, sentence, kind_ids)
