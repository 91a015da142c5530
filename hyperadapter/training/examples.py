"""Sampling training examples: a context, and queries about it whose answers the adapted model must
give without seeing the context.

Objectives by kind: supervised answers for all four kinds; for documents, also self-supervised
continuation of the passage's own text (a few words of it as the cue, the next words as the
target). Multiple-choice queries carry a few of their choices (the right one among them): they are
trained the way they are scored, by ranking the choices' log-likelihoods (training.objectives),
not by generating the right choice, which taught the adapted model to answer "Yes"/"No" to
everything. Demonstration sets are drawn from a task's examples in a few fixed variants per task,
so their features can be cached like any other context's. So are a task description's variants
(`task_variants`): with only ~160 training descriptions, a generator can tell them apart by their
exact wording without reading what they ask; a description with some words dropped, its sentences
reordered, or one solved example appended asks the same thing in other words. Generated tasks
(data.synthetic) can stand in for a share of the task and demonstrations contexts, and a share of the
demonstrations can come with their labels swapped (data.relabel), so that only the demonstrated
labels tell the right answer; such a context is contrasted with the same demonstrations unswapped,
and the other way round. With `remap_symbols` the labels become unrelated words instead (symbol
tuning), contrasted with the same words assigned the other way round. A chat can be cut to one or a
few of its messages, with or without the assistant's replies (`short_history_share`): new users
bring that little. A document can be cut to its first sentences (`short_document_share`). Locality
queries (another task's query under this context's adapter) can come from a fixed pool whose
generation queries carry the base's own reply as the answer (training.locality).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Sequence

from hyperadapter.data.builders import (DEMOS, format_demonstrations, short_document, short_examples, short_history,
                                        split_sentences)
from hyperadapter.data.relabel import derangement, label_set, swap_labels, symbol_mapping
from hyperadapter.data.schema import KINDS, ContextRecord, Query

DEMO_VARIANTS = 8
REMAPPED = "@remap"  # ends the cache key of a demonstration set with its labels swapped
SYMBOLIC = "@symbols"  # ends the key of a demonstration set with its labels renamed to unrelated words
MOVED = "@moved"  # ends the key of such a set with the words assigned the other way round (its wrong context)
# A demonstration set's wrong context in the contrastive term: the same set under this other labelling
OTHER_LABELLING = {"": REMAPPED, REMAPPED: "", SYMBOLIC: SYMBOLIC + MOVED}
MAX_CHOICES = 4  # the right choice and up to three wrong ones per multiple-choice training query
WORD_DROP = 0.15  # share of a description's words a variant drops
SHORT_VARIANTS = 4  # fixed short cuts per chat and length


@dataclass
class Example:
    kind: str
    context_key: str  # identifies the exact context text (features are cached under it)
    context: str
    input: str
    target: str
    objective: str  # "supervised" | "selfsup" | "choice" | "unrelated" (another task's query: locality)
    choices: tuple[str, ...] = ()  # with objective "choice": candidate answers, the right one at `label`
    label: int = 0


def sample_choices(q: Query, rng: random.Random, k: int = MAX_CHOICES) -> tuple[tuple[str, ...], int]:
    """The right choice and up to k-1 wrong ones, shuffled: (choices, index of the right one)."""
    wrong = [c for i, c in enumerate(q.choices or []) if i != q.label]
    picked = rng.sample(wrong, min(k - 1, len(wrong))) + [q.target]
    rng.shuffle(picked)
    return tuple(picked), picked.index(q.target)


class ExampleSampler:
    def __init__(self, records: dict[str, list[ContextRecord]], kind_weights: dict[str, float],
                 seed: int = 0, selfsup_share: float = 0.25, lead_space: tuple[str, ...] = (),
                 unrelated_share: float = 0.0, unrelated_kinds: tuple[str, ...] = KINDS, task_variants: int = 1,
                 synthetic: dict[str, list[ContextRecord]] | None = None, synthetic_share: float = 0.0,
                 short_history_share: float = 0.0, locality_pool: list[tuple[str, Query]] | None = None,
                 short_history_lines: Sequence[int] = (1, 2), short_history_replies: float = 0.0,
                 remap_share: float = 0.0, remap_symbols: bool = False, short_document_share: float = 0.0,
                 short_document_sentences: Sequence[int] = (1, 2, 3)):
        self.records = {k: v for k, v in records.items() if v and kind_weights.get(k, 0) > 0}
        # generated tasks (data.synthetic) per kind, drawn instead of a real record with synthetic_share
        self.synthetic = {k: v for k, v in (synthetic or {}).items() if v and k in self.records}
        self.synthetic_ids = {r.id for v in self.synthetic.values() for r in v}
        self.synthetic_share = synthetic_share
        if not self.records:
            raise ValueError("no training records for any kind with a positive weight")
        self.kinds = sorted(self.records)
        self.weights = [kind_weights[k] for k in self.kinds]
        self.rng = random.Random(seed)
        self.selfsup_share = selfsup_share
        self.lead_space = set(lead_space)
        self.unrelated_share = unrelated_share
        self.unrelated_kinds = set(unrelated_kinds)
        self.tasks = records.get("task") or []
        self.task_variants = max(1, task_variants)
        if unrelated_share > 0 and len(self.tasks) < 2:
            raise ValueError("unrelated_share needs task records (their queries are the unrelated ones)")
        self.short_history_share = short_history_share
        self.short_history_lines = tuple(short_history_lines)
        self.short_history_replies = short_history_replies
        self.short_document_share = short_document_share
        self.short_document_sentences = tuple(short_document_sentences)
        self.locality_pool = locality_pool or []  # (task id, query); empty: any query of any other task
        # demonstrations whose queries share one small label set: their labels can be swapped
        self.labels = {r.id: labels for r in self.records.get("demonstrations", [])
                       if (labels := label_set(r)) is not None}
        self.relabellable = [r for r in self.records.get("demonstrations", []) if r.id in self.labels]
        self.remap_share = remap_share if self.labels else 0.0
        self.remap_symbols = remap_symbols

    def sample(self, n_contexts: int, queries_per_context: int) -> list[Example]:
        out: list[Example] = []
        for kind in self.rng.choices(self.kinds, self.weights, k=n_contexts):
            record = self.rng.choice(self._pool(kind, synthetic=self._draw_synthetic(kind)))
            if kind == "conversation" and self.short_history_share > 0 and self.rng.random() < self.short_history_share:
                record = self._short(record)
            # no draw without the share: earlier recipes' batches stay what they were
            if kind == "document" and self.short_document_share > 0 and self.rng.random() < self.short_document_share:
                record = self._short_document(record)
            if kind == "demonstrations" and self.remap_share > 0 and self.rng.random() < self.remap_share:
                record = self.rng.choice(self.relabellable)
                examples = self._demonstrations(record, queries_per_context, remap=True)
            else:
                examples = self.examples_for(record, queries_per_context)
            out.extend(self._maybe_unrelated(e, record) for e in examples)
        return out

    def _short(self, record: ContextRecord) -> ContextRecord:
        lines, variant = self.rng.choice(self.short_history_lines), self.rng.randrange(SHORT_VARIANTS)
        # no draw without replies: earlier recipes' batches stay what they were
        replies = self.short_history_replies > 0 and self.rng.random() < self.short_history_replies
        return short_history(record, lines, variant, replies=replies)

    def _short_document(self, record: ContextRecord) -> ContextRecord:
        """The document cut to its first few sentences; whole if the cut keeps none of its questions."""
        cut = short_document(record, self.rng.choice(self.short_document_sentences))
        return cut if cut.queries or cut.support else record

    def _draw_synthetic(self, kind: str) -> bool:
        # no draw without synthetic tasks: earlier recipes' batches stay what they were
        return self.synthetic_share > 0 and bool(self.synthetic.get(kind)) and self.rng.random() < self.synthetic_share

    def _pool(self, kind: str, synthetic: bool) -> list[ContextRecord]:
        return self.synthetic[kind] if synthetic else self.records.get(kind, [])

    def _maybe_unrelated(self, example: Example, record: ContextRecord) -> Example:
        """With probability unrelated_share, the same context with a query of another task, trained
        to its own answer: an adapter must not break what its context says nothing about (a user's
        adapter still answers "What is the capital of France?")."""
        if (self.unrelated_share <= 0 or example.kind not in self.unrelated_kinds
                or self.rng.random() >= self.unrelated_share):
            return example
        own = record.id.removeprefix("demos/")
        if self.locality_pool:
            q = self._locality_query(own)
        else:
            other = self.rng.choice([t for t in self.tasks if t.id != own] or self.tasks)
            q = self.rng.choice(other.queries + other.support)
        e = self._example("task", example.context_key, example.context, q)
        return Example(example.kind, e.context_key, e.context, e.input, e.target, "unrelated", e.choices, e.label)

    def _locality_query(self, own: str) -> Query:
        """A query of the locality pool from a task other than `own` (redrawn a few times: the pool
        spans many tasks, so this rarely repeats)."""
        for _ in range(8):
            task, q = self.rng.choice(self.locality_pool)
            if task != own:
                break
        return q

    def wrong_contexts(self, examples: list[Example], kinds: Sequence[str]) -> list[tuple[int, Example]]:
        """For each example of `kinds` whose query belongs to its context (not an unrelated one):
        (its index, the same query with the context of another record of that kind)."""
        out = []
        for i, e in enumerate(examples):
            if e.kind not in kinds or e.objective == "unrelated":
                continue
            own = e.context_key.split("#")[0]
            if e.kind == "demonstrations" and self.remap_share > 0 and own in self.labels:
                out.append((i, self._relabelled(e)))
                continue
            # a wrong context from the same pool: a generated task against another generated one
            others = [r for r in self._pool(e.kind, own in self.synthetic_ids) if r.id != own]
            if not others:
                continue
            key, context = self._draw_context(self.rng.choice(others))
            out.append((i, dataclasses.replace(e, context_key=key, context=context)))
        return out

    def examples_for(self, record: ContextRecord, n: int) -> list[Example]:
        kind = record.kind
        if kind == "demonstrations":
            return self._demonstrations(record, n)
        pool: list[Query] = record.queries + record.support
        key, context = self._draw_context(record)
        out = []
        for _ in range(n):
            if kind == "document" and self.rng.random() < self.selfsup_share:
                cue, target = self._continuation(record.context)
                if cue:
                    out.append(Example(kind, record.id, record.context, f"Continue the text: {cue}",
                                       self._spaced(kind, target), "selfsup"))
                    continue
            q = self.rng.choice(pool)
            out.append(self._example(kind, key, context, q))
        return out

    def _spaced(self, kind: str, target: str) -> str:
        return " " + target.lstrip() if kind in self.lead_space else target

    def _example(self, kind: str, key: str, context: str, q: Query) -> Example:
        if q.choices is None or len(q.choices) < 2:
            return Example(kind, key, context, q.input, self._spaced(kind, q.target), "supervised")
        choices, label = sample_choices(q, self.rng)
        return Example(kind, key, context, q.input, q.target, "choice", choices, label)

    @staticmethod
    def _demonstration_set(record: ContextRecord, variant: int) -> tuple[str, str, list[Query]]:
        """The `variant`-th fixed demonstration set of a task: (its key, its text, its examples)."""
        pool = record.queries + record.support
        short = short_examples(pool)
        demos = random.Random(f"{record.id}:{variant}").sample(short, min(DEMOS, len(short)))
        return f"{record.id}#{variant}", format_demonstrations(demos), demos

    def _mapping(self, record_id: str, variant: int) -> dict[str, str]:
        """The fixed label permutation of a task's `variant`-th demonstration set."""
        return derangement(self.labels[record_id], f"{record_id}:{variant}:remap")

    def _symbols(self, record_id: str, variant: int, moved: bool = False) -> dict[str, str]:
        """The fixed renaming of a task's labels to unrelated words for its `variant`-th demonstration
        set; `moved`: the same words, each given to another label (a fixed derangement of them)."""
        mapping = symbol_mapping(self.labels[record_id], f"{record_id}:{variant}:symbols")
        if not moved:
            return mapping
        shift = derangement(tuple(sorted(mapping.values())), f"{record_id}:{variant}:moved")
        return {label: shift[word] for label, word in mapping.items()}

    def _labelled(self, record: ContextRecord, variant: int, labelling: str) -> ContextRecord:
        """`record` with every query's labels as its `variant`-th set shows them under `labelling` (a key
        suffix: "" plain, REMAPPED swapped, SYMBOLIC words, SYMBOLIC + MOVED the words assigned the other
        way round). Inputs stay as they were, so its `variant`-th demonstration set holds the plain set's
        examples, relabelled."""
        if not labelling:
            return record
        if labelling == REMAPPED:
            return swap_labels(record, self._mapping(record.id, variant))
        return swap_labels(record, self._symbols(record.id, variant, moved=labelling.endswith(MOVED)))

    def _relabelled(self, example: Example) -> Example:
        """`example` with the other labelling of its own demonstration set as the wrong context: the
        swapped set for a plain one and the other way round, the words assigned the other way round for
        a symbol set. The inputs are the same; only the demonstrated answers differ, so only reading
        them tells the two adapters apart."""
        own, rest = example.context_key.split("#")
        number = rest.split("@")[0]
        labelling = OTHER_LABELLING[rest.removeprefix(number)]
        record = next(r for r in self.relabellable if r.id == own)
        key, context, _ = self._demonstration_set(self._labelled(record, int(number), labelling), int(number))
        return dataclasses.replace(example, context_key=key + labelling, context=context)

    def _draw_context(self, record: ContextRecord) -> tuple[str, str]:
        """`record`'s context as training shows it: (its feature-cache key, its text). Demonstrations,
        and task descriptions with `task_variants`, come in fixed variants, one drawn at random. No
        draw for the others: the random stream (so the fixed validation examples and every earlier
        recipe's batches) stays what it was before variants existed."""
        if record.kind == "demonstrations":
            key, context, _ = self._demonstration_set(record, self.rng.randrange(DEMO_VARIANTS))
            return key, context
        if record.kind == "task" and self.task_variants > 1:
            return self._task_variant(record, self.rng.randrange(self.task_variants))
        return record.id, record.context

    @staticmethod
    def _task_variant(record: ContextRecord, variant: int) -> tuple[str, str]:
        """The `variant`-th fixed rewording of a task description: (its key, its text). Variant 0 is
        the description itself; the others drop a share of its words, reorder its sentences half the
        time, and append one solved example half the time."""
        if variant == 0:
            return record.id, record.context
        rng = random.Random(f"{record.id}:wording:{variant}")
        sentences = split_sentences(record.context)
        if len(sentences) > 1 and rng.random() < 0.5:
            rng.shuffle(sentences)
        words = " ".join(sentences).split(" ")
        text = " ".join([w for w in words if rng.random() >= WORD_DROP] or words)
        if record.support and rng.random() < 0.5:
            text += "\n\n" + format_demonstrations([rng.choice(short_examples(record.support))])
        return f"{record.id}#{variant}", text

    def _demonstrations(self, record: ContextRecord, n: int, remap: bool = False) -> list[Example]:
        variant = self.rng.randrange(DEMO_VARIANTS)
        labelling = (SYMBOLIC if self.remap_symbols else REMAPPED) if remap else ""
        # the queries answer by the same labels (or words) as the demonstrations
        record = self._labelled(record, variant, labelling)
        key, context, demos = self._demonstration_set(record, variant)
        key += labelling
        pool = record.queries + record.support
        rest = [q for q in pool if q not in demos] or pool
        return [self._example("demonstrations", key, context, q) for q in (self.rng.choice(rest) for _ in range(n))]

    def _continuation(self, text: str, cue_words: int = 6, target_words: int = 12) -> tuple[str, str]:
        words = text.split()
        if len(words) < cue_words + target_words + 1:
            return "", ""
        i = self.rng.randrange(0, len(words) - cue_words - target_words)
        return " ".join(words[i:i + cue_words]), " ".join(words[i + cue_words:i + cue_words + target_words])
