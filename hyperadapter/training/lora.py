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
from hyperadapter.runtime import LoraRuntime
from hyperadapter.training.objectives import answer_loss, encode_pairs, truncate_input

DEFAULT_MODULES = ("q_proj", "v_proj", "down_proj")


def train_lora(base: Base, runtime: LoraRuntime, pairs: Sequence[tuple[str, str]], steps: int = 100,
               lr: float = 1e-3, batch_size: int = 8, rank: int = 8, alpha: float = 16.0,
               modules: Sequence[str] = DEFAULT_MODULES, seed: int = 0, max_prompt_tokens: int = 256,
               max_target_tokens: int = 48, progress: bool = False, metadata: dict | None = None,
               bf16: bool = True) -> Adapter:
    """Fit a LoRA to (input, target) pairs (inputs are put in the chat template, without context)."""
    if not pairs:
        raise ValueError("no training pairs")
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
        chosen = [pairs[rng.randrange(len(pairs))] for _ in range(batch_size)]
        texts = []
        for x, _ in chosen:
            if x not in prompts:
                prompts[x] = query_prompt(base, truncate_input(base, x, max_prompt_tokens))
            texts.append(prompts[x])
        # rows grouped by length (padding a short question to a long input wastes the base's work)
        order = sorted(range(len(chosen)), key=lambda i: len(texts[i]))
        for group in (order[:len(order) // 2], order[len(order) // 2:]):
            if not group:
                continue
            batch = encode_pairs(base, [texts[i] for i in group], [chosen[i][1] for i in group], max_target_tokens)
            factors = {n: (a, b * scaling) for n, (a, b) in params.items()}
            loss = answer_loss(base, runtime, batch, factors, bf16) * len(group) / len(chosen)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(flat, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    weights = {n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in params.items()}
    return Adapter(weights, alpha, base.model_id, {k: str(v) for k, v in (metadata or {}).items()})
