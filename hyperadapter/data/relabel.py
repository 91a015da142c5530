"""Demonstrations with their labels swapped: a task only its demonstrations can answer.

Why: on held-out tasks a generator's demonstrations adapters score the same from the right task's
demonstrations as from another task's (model card: +0.5 +- 0.5 on 34 test tasks). With 161
training tasks, what an answer needs is the task's identity, which any few of its inputs give away;
the demonstrated answers are never needed. For a task whose queries all choose from one small set of
labels (Yes/No, positive/negative), the labels can be permuted: every demonstration and every answer
then says "No" where the data say "Yes". The inputs still name the task, but only the demonstrated
labels tell which answer is right, so a generator has to read them (the "flipped labels" and
"symbol tuning" settings of in-context learning studies).

A permutation moves every label (a derangement), so the task's own labels are wrong under it. Each
demonstration set has one fixed permutation, so remapped contexts are cached like any other.

Symbol tuning goes one step further (`symbol_mapping`, recipe key `remap_symbols`): the labels become
unrelated words ("river", "piano"), so no prior about the task's own labels is left to fall back on and
the demonstrated input-to-symbol pairs are all an adapter has.

Training draws such sets (training.examples, recipe key `remap_share`); the harness can score held-out
demonstrations relabelled the same way (`relabelled`, eval key `relabel`): there an adapter that reads
its demonstrations answers by the swapped labels, one that knows only the task by the task's own.
"""

from __future__ import annotations

import dataclasses
import random
import re

from hyperadapter.data.schema import ContextRecord, Query

MAX_LABELS = 10  # a larger fixed label set (a hundred numbers) is not a classification to relabel
# Words that are no label of any task with a label set here (checked on the prepared splits; some free-choice
# tasks answer with them, as odd_one_out does with "apple", but those are never relabelled)
SYMBOLS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle", "mirror", "garden",
           "rocket", "violin", "pepper", "forest", "silver", "window", "coffee", "island", "dragon", "pencil",
           "marble", "planet", "turtle", "basket")


def label_set(record: ContextRecord) -> tuple[str, ...] | None:
    """The labels every query of `record` chooses from, sorted, when they all share 2 to MAX_LABELS
    of them; None otherwise (free generation, or choices that differ by query)."""
    queries = record.queries + record.support
    if not queries or any(q.choices is None for q in queries):
        return None
    sets = {tuple(sorted(set(q.choices))) for q in queries}
    if len(sets) != 1:
        return None
    labels = sets.pop()
    return labels if 2 <= len(labels) <= MAX_LABELS else None


def derangement(labels: tuple[str, ...], seed: str) -> dict[str, str]:
    """A fixed permutation of `labels` (by `seed`) that moves every one of them."""
    rng = random.Random(seed)
    while True:
        moved = list(labels)
        rng.shuffle(moved)
        if all(a != b for a, b in zip(labels, moved)):
            return dict(zip(labels, moved))


def symbol_mapping(labels: tuple[str, ...], seed: str) -> dict[str, str]:
    """A fixed renaming (by `seed`) of each of `labels` to a distinct word of SYMBOLS."""
    return dict(zip(labels, random.Random(seed).sample(SYMBOLS, len(labels))))


def remap_query(q: Query, mapping: dict[str, str]) -> Query:
    """`q` with every label renamed by `mapping`: the same choices in the same order, each renamed,
    so the right one (same index) now reads as another label."""
    return dataclasses.replace(q, answers=[mapping.get(a, a) for a in q.answers],
                               choices=[mapping[c] for c in q.choices] if q.choices is not None else None)


def relabelled(record: ContextRecord, symbols: bool = False) -> ContextRecord | None:
    """A demonstrations record with its labels swapped by a fixed derangement (`symbols`: renamed to
    unrelated words), in its demonstrations (the context's "Output:" lines) and in its queries alike;
    None if it has no small label set."""
    labels = label_set(record)
    if labels is None:
        return None
    mapping = symbol_mapping(labels, f"{record.id}:symbols") if symbols else derangement(labels, f"{record.id}:relabel")
    return dataclasses.replace(swap_labels(record, mapping), context=remap_outputs(record.context, mapping))


def remap_outputs(context: str, mapping: dict[str, str]) -> str:
    """A demonstrations context with each "Output:" line's label renamed by `mapping` (others kept)."""
    def output(m: re.Match) -> str:
        return m.group(1) + mapping.get(m.group(2), m.group(2))
    return re.sub(r"^(Output: )(.*)$", output, context, flags=re.MULTILINE)


def swap_labels(record: ContextRecord, mapping: dict[str, str]) -> ContextRecord:
    """`record` with the labels of all its queries (and support) renamed by `mapping`; its context as it was."""
    return dataclasses.replace(record, queries=[remap_query(q, mapping) for q in record.queries],
                               support=[remap_query(q, mapping) for q in record.support])
