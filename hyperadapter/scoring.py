"""Log-likelihood of candidate answers after a prompt, with each prompt run once.

Multiple-choice queries are scored (evaluation) and trained (training.objectives.choice_losses) by the
summed log-probability of each choice's tokens as the reply to the prompt. The prompts go through
the base once, left-padded, with a KV cache; every choice then continues from its prompt's cache
(gathered per choice row), so k choices cost k short continuations instead of k full prompts.
Gradients flow through the cache, so the same code serves training.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hyperadapter.base import Base
from hyperadapter.runtime import Factors, LoraRuntime


def choice_logprobs(base: Base, runtime: LoraRuntime, prompts: Sequence[Sequence[int]],
                    choices: Sequence[Sequence[Sequence[int]]], prompt_factors: dict[str, Factors] | None = None,
                    choice_factors: dict[str, Factors] | None = None) -> Tensor:
    """Token ids of prompts, and per prompt the token ids of its choices (each non-empty) ->
    summed log-probability of every choice, flattened in order [sum of choice counts].

    `prompt_factors` are the adapters' factors for the prompt rows and `choice_factors` for the
    choice rows (one row per choice, in the same order); unbatched factors apply to every row."""
    from transformers import DynamicCache

    tok = base.tokenizer
    n = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p))
        mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    with runtime.activate(factors=prompt_factors or {}):
        last = base.model.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
    first = F.log_softmax(base.model.lm_head(last).float(), -1)  # [n, vocab]: each choice's first token

    owner = torch.tensor([i for i, cs in enumerate(choices) for _ in cs])
    rows = [list(c) for cs in choices for c in cs]
    length = max(len(r) for r in rows)
    c_ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
    c_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for j, r in enumerate(rows):
        c_ids[j, :len(r)] = torch.tensor(r)
        c_mask[j, :len(r)] = 1
    shared = DynamicCache([(layer.keys.index_select(0, owner), layer.values.index_select(0, owner))
                           for layer in cache.layers])
    c_positions = mask.sum(-1)[owner][:, None] + torch.arange(length)[None]
    with runtime.activate(factors=choice_factors or {}):
        hidden = base.model.model(input_ids=c_ids, attention_mask=torch.cat([mask[owner], c_mask], 1),
                                  position_ids=c_positions, past_key_values=shared, use_cache=True).last_hidden_state
    totals = first[owner, c_ids[:, 0]]
    if length > 1:
        follow = c_mask[:, 1:].bool()  # positions whose next token is part of the choice
        logits = base.model.lm_head(hidden[:, :-1][follow]).float()
        logp = -F.cross_entropy(logits, c_ids[:, 1:][follow], reduction="none")
        row_of = torch.arange(len(rows))[:, None].expand(-1, length - 1)[follow]
        totals = totals + torch.zeros(len(rows), dtype=logp.dtype).index_add(0, row_of, logp)
    return totals
