"""Losses on the frozen base with adapters applied through the runtime's hooks.

Only the answer positions go through the LM head (a 49k-word head on every prompt token would cost
more than the rest of the step). Losses are per item (a trainer weighs and averages them):
`answer_losses` is the supervised/self-supervised cross-entropy, averaged over a row's answer
tokens; `choice_losses` ranks a multiple-choice query's candidate answers by their summed
log-likelihood (how the harness scores them) and takes the cross-entropy of the right one;
`distill_loss` is KL(teacher || student) on the answer tokens, the teacher being the base with the
context in its prompt. The trainer goes through `item_losses_and_kl`, which takes the anchor's and
distillation's KLs from the answer loss's own adapted pass (training a stage 11 batch: 0.88-0.94x the
time of a separate student pass for distillation, the same losses).

`bf16=True` runs the base under CPU autocast (bfloat16 matmuls, float32 weights, losses and
gradients into the generator): 2.2-2.4x faster forward+backward on CPUs with AVX512-BF16, measured
on the default model (batch 4-8, 64-256 tokens). Inference and evaluation stay in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hyperadapter.base import Base
from hyperadapter.packed import cpu_autocast
from hyperadapter.runtime import LoraRuntime
from hyperadapter.scoring import choice_logprobs


@dataclass
class Batch:
    input_ids: Tensor  # [B, T] right-padded
    attention_mask: Tensor
    labels: Tensor  # [B, T]: the token ids at answer positions, -100 elsewhere


class Scored(NamedTuple):
    """What a loss needs of a training query: its target, and for multiple choice the candidate
    answers and the index of the right one (empty choices: trained on the target's tokens)."""

    target: str
    choices: tuple[str, ...] = ()
    label: int = 0


def truncate_input(base: Base, text: str, max_tokens: int) -> str:
    """Keep the end of an over-long input (questions and instructions tend to come last)."""
    ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else base.tokenizer.decode(ids[-max_tokens:])


def encode_pairs(base: Base, prompts: list[str], targets: list[str], max_target_tokens: int = 48) -> Batch:
    """Chat-formatted prompts + answers (ending in EOS) -> a right-padded batch with answer labels."""
    tok = base.tokenizer
    rows = []
    for prompt, target in zip(prompts, targets):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"][:max_target_tokens] + [tok.eos_token_id]
        rows.append((p, t))
    length = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(p + t)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(t)
    return Batch(ids, mask, labels)


def precision(bf16: bool):
    """The autocast context the base runs under in training (float32 where the CPU lacks bf16 kernels)."""
    return cpu_autocast(bf16)


def answer_logits(base: Base, runtime: LoraRuntime, batch: Batch, factors=None,
                  bf16: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """-> (logits [n_answer_tokens, vocab], their labels, row index of each) under the given factors."""
    target = batch.labels[:, 1:]
    select = target != -100
    with runtime.activate(factors=factors or {}), precision(bf16):
        hidden = base.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  use_cache=False).last_hidden_state
        logits = base.model.lm_head(hidden[:, :-1][select])
    rows = torch.arange(batch.labels.shape[0])[:, None].expand_as(target)[select]
    return logits.float(), target[select], rows


def _row_means(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    sums = torch.zeros(n_rows, dtype=values.dtype).index_add(0, rows, values)
    counts = torch.zeros(n_rows, dtype=values.dtype).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def answer_losses(base: Base, runtime: LoraRuntime, batch: Batch, factors=None, bf16: bool = False) -> Tensor:
    """Per row: the mean cross-entropy of its answer tokens."""
    logits, labels, rows = answer_logits(base, runtime, batch, factors, bf16)
    return _row_means(F.cross_entropy(logits, labels, reduction="none"), rows, batch.labels.shape[0])


def choice_losses(base: Base, runtime: LoraRuntime, prompts: list[str], choices: Sequence[Sequence[str]],
                  labels: Sequence[int], prompt_factors=None, choice_factors=None, max_target_tokens: int = 48,
                  bf16: bool = False) -> Tensor:
    """Per query: the cross-entropy of the right choice under a softmax of the
    choices' summed log-likelihoods (scoring.choice_logprobs: the harness's score). `choice_factors`
    has one row per choice, in order."""
    tok = base.tokenizer
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    choice_ids = [[tok(c, add_special_tokens=False)["input_ids"][:max_target_tokens] or [tok.eos_token_id]
                   for c in cs] for cs in choices]
    with precision(bf16):
        totals = choice_logprobs(base, runtime, prompt_ids, choice_ids, prompt_factors, choice_factors)
    scores = torch.split(totals, [len(cs) for cs in choices])
    return torch.stack([F.cross_entropy(s[None], torch.tensor([y])) for s, y in zip(scores, labels)])


def item_losses(base: Base, runtime: LoraRuntime, prompts: list[str], items: Sequence, factors_of: Callable,
                max_target_tokens: int = 48, bf16: bool = False) -> Tensor:
    """The loss of each of `items` (each with `.target`, `.choices`, `.label`), in order:
    `choice_losses` where it has choices, `answer_losses` otherwise. `factors_of(rows)` gives the
    factors for those rows of the batch (None: the base alone)."""
    return item_losses_and_kl(base, runtime, prompts, items, factors_of, max_target_tokens, bf16)[0]


def item_losses_and_kl(base: Base, runtime: LoraRuntime, prompts: list[str], items: Sequence,
                       factors_of: Callable, max_target_tokens: int = 48, bf16: bool = False,
                       anchored: Sequence[int] = (), distilled: Mapping[int, str] | None = None,
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """`item_losses`, and per item two KLs of the adapted model from a teacher, averaged over its
    answer tokens (the right choice's, for multiple choice), 0 where not asked for:
      - the anchor, at positions `anchored`: the teacher is the base alone on the same prompt;
      - distillation, at the positions keyed in `distilled`: the teacher is the base on the prompt
        given there (one with the context in it).
    Both reuse the adapted pass of a generation item's answer loss (one forward and backward where
    there were two); only the teachers' own passes are added."""
    anchored, distilled = set(anchored), dict(distilled or {})
    ranked = [i for i, it in enumerate(items) if it.choices]
    plain = [i for i, it in enumerate(items) if not it.choices]
    out, anchor, distill = torch.zeros(len(items)), torch.zeros(len(items)), torch.zeros(len(items))

    def teach(batch: Batch, positions: list[int], logits: Tensor, labels: Tensor, token_rows: Tensor) -> None:
        """The anchor's and distillation's KLs of the batch's rows (items `positions`), given the
        adapted pass over them."""
        nonlocal anchor, distill

        def kl(teacher: Batch, keep: list[int]) -> Tensor:  # of batch rows `keep`, one teacher row each
            at = torch.tensor(keep)
            take = torch.isin(token_rows, at)
            renumber = torch.full((len(positions),), -1, dtype=torch.long)
            renumber[at] = torch.arange(len(keep))
            return _kl_rows(base, runtime, teacher, logits[take], labels[take], renumber[token_rows[take]], bf16)

        keep = [j for j, i in enumerate(positions) if i in anchored]
        if keep:  # the base's pass on those rows of the same batch (right-padded: trimmed to their width)
            at = torch.tensor(keep)
            width = int(batch.attention_mask[at].sum(1).max())
            teacher = Batch(batch.input_ids[at, :width], batch.attention_mask[at, :width], batch.labels[at, :width])
            anchor = anchor.index_put((torch.tensor([positions[j] for j in keep]),), kl(teacher, keep))
        keep = [j for j, i in enumerate(positions) if i in distilled]
        if keep:  # the base on the prompts given, with the same answers
            teacher = encode_pairs(base, [distilled[positions[j]] for j in keep],
                                   [items[positions[j]].target for j in keep], max_target_tokens)
            distill = distill.index_put((torch.tensor([positions[j] for j in keep]),), kl(teacher, keep))

    if ranked:
        rows = [i for i in ranked for _ in items[i].choices]
        losses = choice_losses(base, runtime, [prompts[i] for i in ranked], [items[i].choices for i in ranked],
                               [items[i].label for i in ranked], factors_of(ranked), factors_of(rows),
                               max_target_tokens, bf16)
        out = out.index_put((torch.tensor(ranked),), losses)
        chosen = [i for i in ranked if i in anchored or i in distilled]
        if chosen:  # the ranking gives summed log-likelihoods only: the right choice's tokens need a pass
            batch = encode_pairs(base, [prompts[i] for i in chosen], [items[i].target for i in chosen],
                                 max_target_tokens)
            teach(batch, chosen, *answer_logits(base, runtime, batch, factors_of(chosen), bf16))
    if plain:
        batch = encode_pairs(base, [prompts[i] for i in plain], [items[i].target for i in plain], max_target_tokens)
        logits, labels, token_rows = answer_logits(base, runtime, batch, factors_of(plain), bf16)
        ce = F.cross_entropy(logits, labels, reduction="none")
        out = out.index_put((torch.tensor(plain),), _row_means(ce, token_rows, len(plain)))
        teach(batch, plain, logits, labels, token_rows)
    return out, anchor, distill


def _kl_rows(base: Base, runtime: LoraRuntime, teacher: Batch, student_logits: Tensor, student_labels: Tensor,
             rows: Tensor, bf16: bool) -> Tensor:
    """Per row of `teacher`: KL(base on `teacher` || student) averaged over the answer tokens, given the
    student's answer logits and each token's row (as `answer_logits` returns them)."""
    with torch.no_grad():
        t_logits, t_labels, _ = answer_logits(base, runtime, teacher, None, bf16)
    if not torch.equal(t_labels, student_labels):
        raise RuntimeError("teacher and student answers differ; encode both with the same targets")
    kl = F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                  reduction="none").sum(-1)
    return _row_means(kl, rows, teacher.labels.shape[0])


def distill_loss(base: Base, runtime: LoraRuntime, student: Batch, teacher: Batch, factors,
                 bf16: bool = False) -> Tensor:
    """KL(teacher || student) over the vocabulary at each answer token (teacher-forced on the answer)."""
    s_logits, s_labels, rows = answer_logits(base, runtime, student, factors, bf16)
    return _kl_rows(base, runtime, teacher, s_logits, s_labels, rows, bf16).mean()
