"""Plain LoRA fine-tuning on the frozen base: the baselines the generator is measured against.

- per-task (oracle) LoRA: trained on one held-out task's own labelled examples (its `support`);
- multi-task LoRA: one adapter trained on the training split of every kind, context absent.
Same target modules and rank as the generator, so the comparison is shape for shape.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from tqdm import tqdm

from hyperadapter.adapter import Adapter
from hyperadapter.base import Base
from hyperadapter.data.prompts import query_prompt
from hyperadapter.data.schema import Query
from hyperadapter.runtime import LoraRuntime
from hyperadapter.training.examples import sample_choices
from hyperadapter.training.objectives import Scored, item_losses, truncate_input

DEFAULT_MODULES = ("q_proj", "v_proj", "down_proj")


def train_lora(base: Base, runtime: LoraRuntime, pairs: Sequence[Query | tuple[str, str]], steps: int = 100,
               lr: float = 1e-3, batch_size: int = 8, rank: int = 8, alpha: float = 16.0,
               modules: Sequence[str] = DEFAULT_MODULES, seed: int = 0, max_prompt_tokens: int = 256,
               max_target_tokens: int = 48, progress: bool = False, metadata: dict | None = None,
               bf16: bool = True) -> Adapter:
    """Fit a LoRA to labelled queries, or (input, target) pairs (inputs are put in the chat template,
    without context). Multiple-choice queries are trained by ranking a few of their choices, as the
    generator is (training.objectives.item_losses)."""
    if not pairs:
        raise ValueError("no training pairs")
    queries = [q if isinstance(q, Query) else Query(q[0], [q[1]]) for q in pairs]
    g = torch.Generator().manual_seed(seed)
    params: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]] = {}
    for name, (fan_in, fan_out) in base.linear_shapes().items():
        if name.rsplit(".", 1)[-1] in modules:
            a = torch.empty(rank, fan_in).uniform_(-1, 1, generator=g) / math.sqrt(fan_in)  # PEFT's kaiming-uniform scale
            params[name] = (torch.nn.Parameter(a), torch.nn.Parameter(torch.zeros(fan_out, rank)))
    flat = [p for ab in params.values() for p in ab]
    optimizer = torch.optim.AdamW(flat, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * (1 - s / max(1, steps)) + 0.05)
    scaling = alpha / rank
    rng = random.Random(seed)
    prompts = {}
    for _ in tqdm(range(steps), desc="lora", disable=not progress):
        chosen = [queries[rng.randrange(len(queries))] for _ in range(batch_size)]
        items, texts = [], []
        for q in chosen:
            if q.input not in prompts:
                prompts[q.input] = query_prompt(base, truncate_input(base, q.input, max_prompt_tokens))
            texts.append(prompts[q.input])
            choices, label = sample_choices(q, rng) if q.choices and len(q.choices) > 1 else ((), 0)
            items.append(Scored(q.target, choices, label))
        # rows grouped by length (padding a short question to a long input wastes the base's work)
        order = sorted(range(len(chosen)), key=lambda i: len(texts[i]))
        for group in (order[:len(order) // 2], order[len(order) // 2:]):
            if not group:
                continue
            factors = {n: (a, b * scaling) for n, (a, b) in params.items()}
            losses = item_losses(base, runtime, [texts[i] for i in group], [items[i] for i in group],
                                 lambda rows: factors, max_target_tokens, bf16)
            loss = losses.sum() / len(chosen)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(flat, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    weights = {n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in params.items()}
    return Adapter(weights, alpha, base.model_id, {k: str(v) for k, v in (metadata or {}).items()})
