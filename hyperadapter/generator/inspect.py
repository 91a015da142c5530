"""What the copy head reads from a context: for every copy slot of every layer, its attention over
the context's tokens, and how much the slots of one layer agree. It is how the chat failure was
found: in stage 16 every slot copied the same blend of a chat's names, so no question could get a
name of its own (see generator.hypernet, `copy_compete`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hyperadapter.generator.config import KIND_IDS
from hyperadapter.generator.model import Generator, check_kind


@dataclass
class CopyReport:
    tokens: list[str]  # "<null>" first, then the context's tokens
    weights: torch.Tensor  # [layers, modules, rank, 1 + T]: each slot's copy attention
    gains: torch.Tensor  # [layers, modules, rank]: how much each slot's copy enters B (0: no copy)
    agreement: float  # mean cosine between the attention of two slots of one layer (1.0: a single blend)

    def top_tokens(self, k: int = 10) -> list[tuple[str, float]]:
        """The tokens the copy slots take most, weighted by each slot's |gain|."""
        mass = (self.weights * self.gains.abs()[..., None]).sum((0, 1, 2))
        order = mass.argsort(descending=True)[:k]
        return [(self.tokens[i], round(float(mass[i]), 3)) for i in order]


@torch.no_grad()
def copy_attention(generator: Generator, context: str, kind: str) -> CopyReport:
    """Each copy slot's attention over `context` read as `kind` (the null key included)."""
    check_kind(kind)
    net, c = generator.net_for(kind), generator.config
    if not net.copy_modules:
        raise ValueError("this generator has no copy head")
    features, ids = generator.context_features([[context]], [kind])[0]
    if len(ids) == 0:
        raise ValueError("the context has no tokens")
    x = net.feature_norm(features[None].to(net.null_k.dtype))
    null = net.init_state(1).copy_max  # [1, N]: the null key's scores
    scores = net.copy_scores(x, torch.tensor([KIND_IDS[kind]]))  # competing only if the kind is routed
    weights = torch.softmax(torch.cat([null[..., None], scores], -1), -1)[0]  # [N, 1 + T]
    weights = weights.reshape(c.num_layers, len(c.module_names), c.rank, -1)
    gains = torch.zeros(c.num_layers, len(c.module_names), c.rank)
    for i, m in enumerate(c.module_names):
        if m in net.copy_gain:
            gains[:, i] = net.copy_gain[m][:, 0] * c.copy_scale
    copying = [i for i, m in enumerate(c.module_names) if m in net.copy_gain]
    slots = F.normalize(weights[:, copying], dim=-1)  # [L, M', r, 1 + T]
    cos = slots @ slots.transpose(-1, -2)  # [L, M', r, r]
    r = c.rank
    agreement = float((cos.sum((-1, -2)) - r).mean() / (r * (r - 1))) if r > 1 else 1.0
    tokens = ["<null>"] + [generator.base.tokenizer.decode([int(t)]) for t in ids]
    return CopyReport(tokens, weights, gains, agreement)
