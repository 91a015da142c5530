"""Deterministic splits by context group, never by example, and the leakage check.

A group (task family, article, conversation) is hashed into train / validation / test, so all
records of a group land in one split. After splitting, any training record whose context or query
text also occurs in a held-out split is dropped (and counted in the manifest): nothing of the test
split may appear in training in any form.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Iterable

from hyperadapter.data.schema import ContextRecord

FRACTIONS = {"task": (0.70, 0.12), "demonstrations": (0.70, 0.12), "document": (0.80, 0.05),
             "conversation": (0.80, 0.05)}  # (train, validation); the rest is test


def split_of(group: str, kind: str = "task", salt: str = "hyperadapter-v1") -> str:
    train, validation = FRACTIONS[kind]
    u = int(hashlib.sha256(f"{salt}:{group}".encode()).hexdigest()[:12], 16) / 16**12
    return "train" if u < train else "validation" if u < train + validation else "test"


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def assign(records: Iterable[ContextRecord]) -> dict[str, list[ContextRecord]]:
    kind_of_split = {"demonstrations": "task"}  # a task and its demonstrations share one split
    out: dict[str, list[ContextRecord]] = defaultdict(list)
    for r in records:
        out[split_of(r.group, kind_of_split.get(r.kind, r.kind))].append(r)
    return out


def _texts(r: ContextRecord) -> set[str]:
    """What of a record could leak: its context, and its inputs where they carry content (the
    conversation questions are shared templates by design; their answers are split-disjoint values)."""
    if r.kind == "conversation":
        return {_norm(r.context)} | {_norm(a) for q in r.queries for a in q.answers}
    return {_norm(r.context)} | {_norm(q.input) for q in r.queries + r.support}


def remove_leaks(splits: dict[str, list[ContextRecord]]) -> int:
    """Drop training records (or their queries) that share a context, an input or a personal fact
    value with held-out data. Returns how many whole records were dropped."""
    held_out: set[str] = set()
    for name in ("validation", "test"):
        for r in splits.get(name, []):
            held_out |= _texts(r)
    held_out.discard("")
    kept, dropped = [], 0
    for r in splits.get("train", []):
        texts = _texts(r)
        if texts & held_out:
            # keep the record but without the leaking queries, unless the context itself leaks
            if _norm(r.context) in held_out:
                dropped += 1
                continue
            if r.kind == "conversation":  # a held-out fact value in a training history: drop the user
                dropped += 1
                continue
            r.queries = [q for q in r.queries if _norm(q.input) not in held_out]
            r.support = [q for q in r.support if _norm(q.input) not in held_out]
            if not r.queries:
                dropped += 1
                continue
        kept.append(r)
    splits["train"] = kept
    return dropped


def overlap(a: Iterable[ContextRecord], b: Iterable[ContextRecord]) -> set[str]:
    """Normalised texts (contexts and query inputs) present in both collections."""
    def texts(rs):
        s = set().union(*(_texts(r) for r in rs)) if rs else set()
        s.discard("")
        return s
    return texts(a) & texts(b)
