"""One record schema for the four kinds of context.

A `ContextRecord` is one context (a task description, a set of demonstrations, a document, a user's
chat history) with the queries asked of it. `queries` are for evaluation (and, in the training
split, for training); `support` holds further labelled examples of the same task that only the
per-task oracle LoRA and demonstration sampling may use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

KINDS = ("task", "demonstrations", "document", "conversation")
SPLITS = ("train", "validation", "test")
# how a query is scored: log-likelihood choice, text generation (ROUGE-L / exact match),
# SQuAD F1 (documents), fact recall (conversations: the answer must appear in the reply)
METRICS = ("choice", "generation", "squad", "fact")


@dataclass
class Query:
    input: str
    answers: list[str]  # reference answers; the first is the training target
    choices: list[str] | None = None  # multiple choice options (metric "choice")
    label: int | None = None  # index of the right choice

    @property
    def target(self) -> str:
        return self.choices[self.label] if self.choices is not None else self.answers[0]


@dataclass
class ContextRecord:
    id: str
    kind: str
    group: str  # the unit of splitting: a task family, an article, a conversation
    source: str
    context: str
    metric: str
    queries: list[Query]
    support: list[Query] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> "ContextRecord":
        d = dict(d)
        d["queries"] = [Query(**q) for q in d["queries"]]
        d["support"] = [Query(**q) for q in d.get("support", [])]
        return cls(**d)


def write_records(path: Path, records: Iterable[ContextRecord]) -> int:
    """Write JSON lines atomically (temp file + rename); return the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(record.to_json() + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_records(path: Path) -> Iterator[ContextRecord]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield ContextRecord.from_dict(json.loads(line))


def load_split(data_dir: Path, split: str, kind: str) -> list[ContextRecord]:
    """Prepared records of one kind in one split (run `hyperadapter data prepare` first)."""
    if split not in SPLITS or kind not in KINDS:
        raise ValueError(f"unknown split/kind {split!r}/{kind!r}; splits {SPLITS}, kinds {KINDS}")
    return list(read_records(require_split(data_dir, split, kind)))


def require_split(data_dir: Path, split: str, kind: str) -> Path:
    """The prepared file of one kind in one split, or a FileNotFoundError saying how to make it."""
    path = Path(data_dir) / split / f"{kind}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `hyperadapter data prepare` first")
    return path
