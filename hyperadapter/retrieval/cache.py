"""The cache policy: reuse a stored adapter for a context seen before, or one close enough to it.

For a request (kind, context, owner, base model), in this order:
1. exact: the sha256 of kind + normalised context is stored in this scope -> that adapter (no encoding);
2. near: the nearest stored key of this scope has cosine similarity >= the kind's threshold -> that
   adapter, reporting the similarity and the neighbour;
3. blend (only with blend_k > 0): the top-k neighbours with similarity >= blend_min_similarity are
   combined, weighted by similarity, into a new adapter (stored, so the next request hits exactly);
4. generate: call the generator, store the adapter with its key, and index it.
`reuse=False` skips 1-3 and always makes a new adapter (the newest one then wins exact lookups).

Scopes are exact: a search or lookup only ever sees adapters of the same kind, base model and owner.
Adapters are also tied to the generator that made them (`maker`, its name and weights digest, kept in
the record's metadata): after the generator is upgraded, the old one's adapters are never served for
a new request (they stay in the store, reachable by id, until evicted). `maker=None` (a process with
no generator, a throwaway catalogue) reuses whatever the store holds.
Concurrent requests for the same new context in one process are collapsed: the first generates, the
others wait and then hit it exactly (a lock per (scope, context hash)), so it is generated once.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from hyperadapter.adapter import Adapter
from hyperadapter.embedding import normalise
from hyperadapter.retrieval.store import AdapterNotFound, AdapterRecord, AdapterStore

Generate = Callable[[str, str], Adapter]
GenerateMany = Callable[[list[tuple[str, str]]], list[Adapter]]


@dataclass
class CacheResult:
    record: AdapterRecord
    cache_hit: bool
    similarity: float | None  # to the reused neighbour (1.0 for exact); None when generated
    neighbour: str | None  # id of the reused (or for a blend, the nearest) adapter
    how: str  # "exact" | "near" | "blend" | "generated"

    def as_dict(self) -> dict:
        return {"id": self.record.id, "cache_hit": self.cache_hit, "similarity": self.similarity,
                "neighbour": self.neighbour, "how": self.how, "kind": self.record.kind, "rank": self.record.rank,
                "path": str(self.record.path)}


class AdapterCache:
    """get_or_create(kind, context) -> a stored adapter, reused when possible (see the module docstring)."""

    def __init__(self, store: AdapterStore, encoder, generate: Generate, thresholds: dict[str, float],
                 blend_k: int = 0, *, blend_min_similarity: float = 0.8, blend_rank: int | None = None,
                 maker: str | None = None):
        if blend_k < 0:
            raise ValueError(f"blend_k must be >= 0, got {blend_k}")
        self.store, self.encoder, self.generate = store, encoder, generate
        self.thresholds = dict(thresholds)
        self.blend_k, self.blend_min_similarity, self.blend_rank = blend_k, blend_min_similarity, blend_rank
        self.maker = maker
        self._locks = _KeyedLocks()

    @classmethod
    def from_settings(cls, settings, store: AdapterStore, encoder, generate: Generate,
                      maker: str | None = None) -> "AdapterCache":
        """Thresholds from every `cache_threshold_<kind>` setting, blend_k from `cache_blend_k`."""
        kinds = [name.removeprefix("cache_threshold_") for name in vars(settings)
                 if name.startswith("cache_threshold_")]
        return cls(store, encoder, generate, {kind: settings.cache_threshold(kind) for kind in kinds},
                   blend_k=settings.cache_blend_k, maker=maker)

    def context_hash(self, kind: str, context: str) -> str:
        return hashlib.sha256(f"{kind}\n{normalise(context)}".encode()).hexdigest()

    # ---------------------------------------------------------------- one request
    def get_or_create(self, kind: str, context: str, *, owner: str, reuse: bool = True, base_model: str,
                      metadata: dict | None = None) -> CacheResult:
        self._check(kind, context)
        chash = self.context_hash(kind, context)
        if reuse and (hit := self._exact(kind, base_model, owner, chash)):
            return hit
        key = self._encode([context])[0]
        neighbours = self._neighbours(key, kind, base_model, owner) if reuse else []
        if hit := self._near(kind, neighbours):
            return hit
        with self._locks.hold([self._lock_key(kind, base_model, owner, chash)] if reuse else []):
            if reuse and (hit := self._exact(kind, base_model, owner, chash)):  # made while we waited
                return hit
            if reuse and (blended := self._blend(kind, chash, key, owner, neighbours, metadata)):
                return blended
            adapter = self.generate(kind, context)
            return self._store(adapter, kind, chash, key, owner, base_model, metadata)

    # ---------------------------------------------------------------- a batch
    def get_or_create_many(self, items: Sequence[tuple[str, str]], *, owner: str, reuse: bool = True,
                           base_model: str, generate_many: GenerateMany | None = None,
                           metadata: dict | None = None) -> list[CacheResult]:
        """Like get_or_create for each (kind, context), with one batched encode and (given `generate_many`)
        one batched generation. An item repeated within the batch gets its first occurrence's result."""
        items = list(items)
        for kind, context in items:
            self._check(kind, context)
        hashes = [self.context_hash(kind, context) for kind, context in items]
        results: list[CacheResult | None] = [None] * len(items)
        first: dict[tuple[str, str], int] = {}
        repeats: dict[int, int] = {}
        todo: list[int] = []
        for i, ((kind, _), chash) in enumerate(zip(items, hashes)):
            if (kind, chash) in first:
                repeats[i] = first[(kind, chash)]
                continue
            first[(kind, chash)] = i
            if reuse and (hit := self._exact(kind, base_model, owner, chash)):
                results[i] = hit
            else:
                todo.append(i)
        keys = self._encode([items[i][1] for i in todo]) if todo else np.zeros((0, 0), np.float32)
        key_of = dict(zip(todo, keys))
        neighbours: dict[int, list] = {}
        misses = []
        for i in todo:
            if reuse:
                neighbours[i] = self._neighbours(key_of[i], items[i][0], base_model, owner)
                if hit := self._near(items[i][0], neighbours[i]):
                    results[i] = hit
                    continue
            misses.append(i)
        lock_keys = [self._lock_key(items[i][0], base_model, owner, hashes[i]) for i in misses] if reuse else []
        with self._locks.hold(lock_keys):
            to_generate = []
            for i in misses:
                kind, context = items[i]
                if reuse and (done := self._exact(kind, base_model, owner, hashes[i])
                              or self._blend(kind, hashes[i], key_of[i], owner, neighbours[i], metadata)):
                    results[i] = done
                else:
                    to_generate.append(i)
            if to_generate:
                pairs = [items[i] for i in to_generate]
                adapters = generate_many(pairs) if generate_many else [self.generate(k, c) for k, c in pairs]
                if len(adapters) != len(pairs):
                    raise ValueError(f"generate_many returned {len(adapters)} adapters for {len(pairs)} contexts")
                for i, adapter in zip(to_generate, adapters):
                    results[i] = self._store(adapter, items[i][0], hashes[i], key_of[i], owner, base_model, metadata)
        for i, j in repeats.items():
            results[i] = results[j]
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------- steps
    def _check(self, kind: str, context: str) -> None:
        if kind not in self.thresholds:
            raise ValueError(f"unknown adapter kind {kind!r}; expected one of {sorted(self.thresholds)}")
        if not isinstance(context, str) or not context.strip():
            raise ValueError("context must be a non-empty string")

    def _lock_key(self, kind: str, base_model: str, owner: str, chash: str) -> tuple[str, ...]:
        return (kind, base_model, owner, chash)

    def _encode(self, texts: list[str]) -> np.ndarray:
        keys = self.encoder.encode(texts)  # the encoder normalises (embedding.normalise)
        keys = np.asarray(keys.detach().cpu().numpy() if hasattr(keys, "detach") else keys, dtype=np.float32)
        return keys / np.linalg.norm(keys, axis=1, keepdims=True)

    def _exact(self, kind: str, base_model: str, owner: str, chash: str) -> CacheResult | None:
        record = self.store.find_exact(kind=kind, base_model=base_model, owner=owner, context_hash=chash)
        if record is None or not self._ours(record):
            return None
        self.store.touch(record.id)
        return CacheResult(record, True, 1.0, record.id, "exact")

    def _neighbours(self, key: np.ndarray, kind: str, base_model: str, owner: str) -> list[tuple[AdapterRecord, float]]:
        if self.thresholds[kind] > 1.0 and self.blend_k == 0:
            return []  # exact reuse only (e.g. personal conversation adapters): no search needed
        k = max(1, self.blend_k)
        if self.maker is None:
            return self.store.search(key, kind=kind, base_model=base_model, owner=owner, k=k)
        # a few extra, in case the nearest were made by an earlier generator
        found = self.store.search(key, kind=kind, base_model=base_model, owner=owner, k=k + 4)
        return [(record, sim) for record, sim in found if self._ours(record)][:k]

    def _ours(self, record: AdapterRecord) -> bool:
        return self.maker is None or record.metadata.get("maker") == self.maker

    def _tagged(self, metadata: dict | None) -> dict:
        """The caller's metadata with this cache's maker, under which the adapter is stored."""
        return {**(metadata or {}), **({"maker": self.maker} if self.maker else {})}

    def _near(self, kind: str, neighbours: list[tuple[AdapterRecord, float]]) -> CacheResult | None:
        if not neighbours or neighbours[0][1] < self.thresholds[kind]:
            return None
        record, sim = neighbours[0]
        self.store.touch(record.id)
        return CacheResult(record, True, sim, record.id, "near")

    def _blend(self, kind: str, chash: str, key: np.ndarray, owner: str, neighbours: list[tuple[AdapterRecord, float]],
               metadata: dict | None) -> CacheResult | None:
        if self.blend_k <= 0:
            return None
        parts = []
        for record, sim in neighbours[:self.blend_k]:
            if sim < self.blend_min_similarity:
                continue
            try:
                parts.append((record, self.store.load(record.id), sim))
            except AdapterNotFound:  # deleted since the search
                continue
        if not parts:
            return None
        total = sum(sim for _, _, sim in parts)
        rank = self.blend_rank or max(adapter.rank for _, adapter, _ in parts)
        blended = Adapter.combine([(adapter, sim / total) for _, adapter, sim in parts], rank=rank,
                                  metadata={"blend_of": ",".join(r.id for r, _, _ in parts)})
        for record, _, _ in parts:
            self.store.touch(record.id)
        meta = {**self._tagged(metadata), "blend_of": [[r.id, sim] for r, _, sim in parts]}
        stored = self.store.put(blended, kind=kind, owner=owner, context_hash=chash, key=key, metadata=meta)
        return CacheResult(stored, False, parts[0][2], parts[0][0].id, "blend")

    def _store(self, adapter: Adapter, kind: str, chash: str, key: np.ndarray, owner: str, base_model: str,
               metadata: dict | None) -> CacheResult:
        if adapter.base_model != base_model:
            raise ValueError(f"the generator made an adapter for base model {adapter.base_model!r}, "
                             f"but {base_model!r} was asked for")
        record = self.store.put(adapter, kind=kind, owner=owner, context_hash=chash, key=key,
                                metadata=self._tagged(metadata), remember=True)  # it is about to be used
        return CacheResult(record, False, None, None, "generated")


class _KeyedLocks:
    """One lock per key, created on demand and dropped when unused; several keys are taken in sorted order."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict = {}  # key -> [lock, users]

    @contextmanager
    def hold(self, keys: list) -> Iterator[None]:
        keys = sorted(set(keys))
        with self._guard:
            entries = []
            for key in keys:
                entry = self._locks.setdefault(key, [threading.Lock(), 0])
                entry[1] += 1
                entries.append(entry)
        taken = []
        try:
            for entry in entries:
                entry[0].acquire()
                taken.append(entry)
            yield
        finally:
            for entry in taken:
                entry[0].release()
            with self._guard:
                for key, entry in zip(keys, entries):
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._locks[key]
