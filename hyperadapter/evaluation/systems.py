"""The systems the harness compares. Each decides, per held-out context, which adapter (if any) the
frozen base uses and how a query is prompted. Only `base+context` puts the context in the prompt.

Any `context -> Adapter` function can be evaluated: wrap it in `AdapterSystem`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from hyperadapter.adapter import Adapter
from hyperadapter.base import Base
from hyperadapter.data.prompts import context_prompt, query_prompt
from hyperadapter.data.schema import ContextRecord
from hyperadapter.evaluation.names import RESULT_NAMES, WRONG_SUFFIX


class System:
    name = "system"
    kinds: tuple[str, ...] = ("task", "demonstrations", "document", "conversation")

    def __init__(self, base: Base):
        self.base = base
        self.adapter_seconds: list[float] = []  # time spent making each context's adapter

    def prepare(self, records: list[ContextRecord]) -> None:
        """Called once per kind with the contexts about to be scored."""

    def adapter(self, record: ContextRecord) -> Adapter | None:
        return None

    def prompt(self, record: ContextRecord, query: str) -> str:
        return query_prompt(self.base, query)


class BaseSystem(System):
    name = "base"


class ContextInPromptSystem(System):
    name = "base+context"

    def prompt(self, record: ContextRecord, query: str) -> str:
        return context_prompt(self.base, record.kind, record.context, query)


class AdapterSystem(System):
    """Adapters from a `(kind, context) -> Adapter` function; with `wrong=True` each context gets the
    adapter of another context of the same kind (the control that proves the context matters)."""

    def __init__(self, base: Base, make: Callable[[str, str], Adapter], name: str = "generated",
                 wrong: bool = False):
        super().__init__(base)
        self.make = make
        self.name = name + (WRONG_SUFFIX if wrong else "")
        self.wrong = wrong
        self.partner: dict[str, ContextRecord] = {}

    def prepare(self, records: list[ContextRecord]) -> None:
        n = len(records)
        for i, r in enumerate(records):  # a fixed derangement: shift by half the list
            self.partner[r.id] = records[(i + max(1, n // 2)) % n] if n > 1 else r

    def adapter(self, record: ContextRecord) -> Adapter:
        source = self.partner[record.id] if self.wrong else record
        start = time.perf_counter()
        adapter = self.make(source.kind, source.context)
        self.adapter_seconds.append(time.perf_counter() - start)
        return adapter


class UnrelatedContextSystem(AdapterSystem):
    """Locality: each context's queries under the adapter of a context of *another kind* (a user's
    chat history for tasks, demonstrations and documents; a document for conversations). Beside the
    base model it shows what an adapter breaks of what its context says nothing about."""

    PARTNER_KIND = {"task": "conversation", "demonstrations": "conversation", "document": "conversation",
                    "conversation": "document"}

    def __init__(self, base: Base, make: Callable[[str, str], Adapter], others: Callable[[str], list[ContextRecord]],
                 partner_kind: str = ""):
        super().__init__(base, make, name="generated")
        self.name = RESULT_NAMES["generated-unrelated"]
        self.others = others  # kind -> held-out records of that kind
        self.partner_kind = partner_kind  # "": PARTNER_KIND's choice

    def prepare(self, records: list[ContextRecord]) -> None:
        if not records:
            return
        pool = self.others(self.partner_kind or self.PARTNER_KIND[records[0].kind])
        for i, r in enumerate(records):
            self.partner[r.id] = pool[i % len(pool)]

    def adapter(self, record: ContextRecord) -> Adapter:
        source = self.partner[record.id]
        start = time.perf_counter()
        adapter = self.make(source.kind, source.context)
        self.adapter_seconds.append(time.perf_counter() - start)
        return adapter


class FixedAdapterSystem(System):
    """One adapter for every context (the multi-task LoRA)."""

    def __init__(self, base: Base, adapter: Adapter, name: str):
        super().__init__(base)
        self.fixed = adapter
        self.name = name

    def adapter(self, record: ContextRecord) -> Adapter:
        return self.fixed


class PerTaskLoraSystem(System):
    """The oracle: a LoRA trained on the held-out task's own labelled examples (its support set).
    With `save_dir`, each task's LoRA is kept there (PEFT folder named by task and budget) and
    reused by later evaluations with the same budget; its training time rides in its metadata."""

    name = RESULT_NAMES["per-task-lora"]
    kinds = ("task", "demonstrations")

    def __init__(self, base: Base, runtime, steps: int = 80, seed: int = 0, batch_size: int = 8,
                 save_dir: str | Path | None = None):
        super().__init__(base)
        self.runtime = runtime
        self.steps = steps
        self.batch_size = batch_size
        self.seed = seed
        self.save_dir = Path(save_dir) if save_dir else None
        self.cache: dict[str, Adapter] = {}

    def _folder(self, task_id: str) -> Path | None:
        if self.save_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_id)
        return self.save_dir / f"{safe}-ranked-s{self.steps}-b{self.batch_size}-seed{self.seed}"

    def adapter(self, record: ContextRecord) -> Adapter | None:
        from hyperadapter.training.lora import train_lora
        task_id = record.id.removeprefix("demos/")
        if task_id in self.cache:
            return self.cache[task_id]
        folder = self._folder(task_id)
        if folder is not None and (folder / "adapter_config.json").is_file():
            adapter = Adapter.load(folder)
            self.adapter_seconds.append(float(adapter.metadata.get("train_seconds", "nan")))
        else:
            pairs = list(record.support)
            if not pairs:
                return None
            start = time.perf_counter()
            adapter = train_lora(self.base, self.runtime, pairs, steps=self.steps, batch_size=self.batch_size,
                                 seed=self.seed, metadata={"task": task_id})
            seconds = time.perf_counter() - start
            self.adapter_seconds.append(seconds)
            if folder is not None:
                adapter.metadata["train_seconds"] = f"{seconds:.1f}"
                adapter.save(folder)
        self.cache[task_id] = adapter
        return adapter
