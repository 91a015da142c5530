"""Retrieval: the adapter cache and store. A context seen before, or one close enough, gets the stored
adapter instead of a new one.

- `store.AdapterStore`: where adapters live, under `<data_root>/store/`: SQLite `adapters.db` (WAL;
  metadata and each adapter's key), one PEFT folder per adapter in `adapters/<id>/`, and the key index
  snapshot `index.faiss`. Exact lookup by context hash, key search scoped by (kind, base model, owner),
  LRU eviction by count and bytes, deletion by id and by owner that removes row, files and key.
- `index.ScopeIndex`: the FAISS side; one index per scope, exact (`Flat`) by default, HNSW or IVF from
  a FAISS factory string for large scopes.
- `cache.AdapterCache`: the policy: exact hash -> near neighbour above the kind's threshold -> optional
  blend of the top-k neighbours -> generate, store and index.

Keys are the sentence encoder's unit embeddings (`hyperadapter.embedding`: long contexts are cut into
256-token windows whose embeddings are pooled and re-normalised), so inner product = cosine similarity.

Why one index per scope and not one global index with a filter: a user's personal scope is tiny and a
filtered ANN search over a big shared index loses recall or scans everything; per scope, a small scope
is searched exactly in microseconds, a big one (the 1M-key benchmark is one scope) gets HNSW/IVF, and
no owner's key is ever a candidate for another owner's search.

Two processes on one store (e.g. the API server and a batch job) stay safe this way:
- rows: SQLite's own locking in WAL mode (readers never block, one writer at a time, busy timeout);
  every insert / delete is one transaction, committed with synchronous=FULL;
- files + rows together (put, delete, eviction, cleanup of a killed writer's leftovers, integrity
  check): a `filelock` lock on `store.lock` (plus a thread lock) so these never interleave;
- the index: each process keeps its own in-memory copy and, before every search and after every
  write, applies the rows inserted (seq past its last applied one; seq is AUTOINCREMENT so commit
  order) and deleted (a trigger-filled `deleted` log) by anyone. `index.faiss` is only a start-up
  snapshot, written atomically (temp + rename) on close and every `save_every` changes, reconciled
  against the rows on open and rebuilt from them when missing or damaged.
See the module docstrings of store.py and index.py for the details.
"""

from hyperadapter.retrieval.cache import AdapterCache, CacheResult, normalise
from hyperadapter.retrieval.index import IndexConfig, ScopeIndex
from hyperadapter.retrieval.store import (AdapterExists, AdapterNotFound, AdapterRecord, AdapterStore, StoreClosed,
                                          StoreFull)

__all__ = ["AdapterCache", "CacheResult", "normalise", "IndexConfig", "ScopeIndex", "AdapterStore", "AdapterRecord",
           "AdapterExists", "AdapterNotFound", "StoreClosed", "StoreFull"]
