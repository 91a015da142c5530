"""The adapter store: SQLite rows, one PEFT folder per adapter, and the key index, under one root.

    <root>/adapters.db        SQLite (WAL): one row per adapter, its key (float32 blob) included
    <root>/adapters/<id>/     the PEFT folder
    <root>/index.faiss        snapshot of the key index (see index.py); always rebuildable from the rows
    <root>/staging/           adapters being written (named <pid>-<uuid>)
    <root>/store.lock         the inter-process write lock

Writes. `put` saves the adapter into staging/ (files fsynced), then under the write lock renames it
into adapters/, fsyncs the folder and commits the row (synchronous=FULL). The row is the commit
point: an adapter exists once its row does, and `put` returns only after that commit, so killing the
process at any moment loses no acknowledged insert; what a kill can leave behind (a staging folder,
a renamed folder whose row never committed) is removed on the next open. Deleting commits the row
deletion first and then removes the folder.

Rows and keys. SQLite triggers keep a running total (count, bytes) for the capacity limits and log
every deleted row in `deleted`. A process's in-memory index follows the database by applying the rows
whose `seq` is past what it has applied and the `deleted` entries past what it has applied (`_sync`,
before every search and after every write). `seq` is AUTOINCREMENT and SQLite has one writer at a
time, so seq order is commit order and nothing is skipped. On open the index file is loaded (or
rebuilt if missing, damaged, or from another store) and reconciled label by label against the rows.

Threads and processes. Each thread uses its own SQLite connection; readers never block in WAL mode
and writers wait for each other (busy timeout). Steps that change both rows and files (put, delete,
eviction, leftover cleanup, integrity check) hold the write lock: a threading.Lock plus a `filelock`
lock on store.lock, so two processes never interleave them. The index of each process is guarded by
an RLock and kept current from SQLite as above, so a process sees another's inserts and deletions on
its next call. Both write index.faiss the same atomic way (temp + rename); the last one wins and the
other's changes are reconciled in on the next open.

Durability choices: WAL with synchronous=FULL for inserts and deletions (the commit is on disk when
`put` returns, surviving power loss, not only a kill), NORMAL for the hit counter (`touch`): a kill
keeps it too, a power cut may lose the last few counts, which only feed LRU eviction.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from filelock import FileLock

from hyperadapter.adapter import Adapter, AdapterError, Routes
from hyperadapter.durable import fsync_path
from hyperadapter.retrieval.index import (ANN_MIN, IndexConfig, IndexFileError, Scope, ScopeIndex,
                                          load_index, save_index)

FORMAT = 1
KEEP_DELETED = 10_000  # entries of the `deleted` log kept for other processes; a process further behind re-reconciles
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COLS = "seq, id, kind, owner, context_hash, base_model, rank, created, last_used, hits, nbytes, metadata"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS adapters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the label of the key in the index; never reused
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    context_hash TEXT NOT NULL,
    base_model TEXT NOT NULL,
    rank INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    nbytes INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    key BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS adapters_exact ON adapters (kind, base_model, owner, context_hash);
CREATE INDEX IF NOT EXISTS adapters_owner ON adapters (owner);
CREATE INDEX IF NOT EXISTS adapters_lru ON adapters (last_used);
CREATE TABLE IF NOT EXISTS deleted (
    dseq INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL, kind TEXT NOT NULL, base_model TEXT NOT NULL, owner TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL, nbytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS adapters_insert AFTER INSERT ON adapters BEGIN
    UPDATE totals SET n = n + 1, nbytes = nbytes + NEW.nbytes;
END;
CREATE TRIGGER IF NOT EXISTS adapters_delete AFTER DELETE ON adapters BEGIN
    UPDATE totals SET n = n - 1, nbytes = nbytes - OLD.nbytes;
    INSERT INTO deleted (seq, kind, base_model, owner) VALUES (OLD.seq, OLD.kind, OLD.base_model, OLD.owner);
END;
"""


class AdapterNotFound(KeyError):
    """No adapter with this id in the store."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


class AdapterExists(ValueError):
    """An adapter with this id is already stored."""


class StoreFull(ValueError):
    """The adapter alone exceeds the store's byte limit."""


class StoreClosed(RuntimeError):
    """The store was closed."""


@dataclass
class AdapterRecord:
    """One stored adapter (a row of adapters.db)."""

    id: str
    kind: str
    owner: str
    context_hash: str
    base_model: str
    rank: int
    created: float
    last_used: float
    hits: int
    nbytes: int
    metadata: dict
    path: Path  # the PEFT folder

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "path"}, "path": str(self.path)}


@dataclass
class _Loaded:
    """The in-memory LRU of loaded adapters, keyed by row seq (ids may be reused after a delete)."""

    max_bytes: int
    items: OrderedDict = field(default_factory=OrderedDict)
    nbytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, seq: int) -> Adapter | None:
        with self.lock:
            adapter = self.items.get(seq)
            if adapter is not None:
                self.items.move_to_end(seq)
            return adapter

    def put(self, seq: int, adapter: Adapter) -> None:
        size = adapter.nbytes
        if size > self.max_bytes:
            return
        with self.lock:
            if seq in self.items:
                return
            self.items[seq] = adapter
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.nbytes -= old.nbytes

    def drop(self, seqs) -> None:
        with self.lock:
            for seq in seqs:
                old = self.items.pop(seq, None)
                if old is not None:
                    self.nbytes -= old.nbytes


class AdapterStore:
    """Adapters with their metadata and keys; exact lookups by context hash and scoped key search."""

    def __init__(self, root: str | os.PathLike, dim: int = 384, index_factory: str = "Flat",
                 max_adapters: int | None = None, max_bytes: int | None = None, *,
                 ann_min: int = ANN_MIN, ef_search: int = 128, ef_construction: int = 200, nprobe: int = 32,
                 memory_cache_bytes: int = 256 * 2**20, save_every: int = 10_000, lock_timeout: float = 120.0):
        for name, limit in (("max_adapters", max_adapters), ("max_bytes", max_bytes)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit), got {limit}")
        self.root = Path(root)
        self.adapter_dir, self.staging_dir = self.root / "adapters", self.root / "staging"
        self.db_path, self.index_path = self.root / "adapters.db", self.root / "index.faiss"
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(exist_ok=True)
        self.config = IndexConfig(dim, index_factory, ann_min, ef_search, ef_construction, nprobe)
        self.dim, self.max_adapters, self.max_bytes = dim, max_adapters, max_bytes
        self.save_every, self.lock_timeout = save_every, lock_timeout

        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._mutex = threading.Lock()
        self._flock = FileLock(self.root / "store.lock", thread_local=False, poll_interval=0.005)
        self._index_lock = threading.RLock()
        self._scopes: dict[Scope, ScopeIndex] = {}
        self._applied_seq = self._applied_dseq = 0
        self._unsaved = 0  # index changes since index.faiss was written
        self._loaded = _Loaded(memory_cache_bytes)
        self._closed = False

        with self._write_locked():
            self._init_db()
            self._clean_leftovers()
        self._open_index()

    @classmethod
    def from_settings(cls, settings, **kwargs: Any) -> "AdapterStore":
        """The store of `hyperadapter.config.Settings` (store_dir, cache_index, capacity limits)."""
        return cls(settings.store_dir, index_factory=settings.cache_index, max_adapters=settings.cache_max_adapters,
                   max_bytes=settings.cache_max_bytes, **kwargs)

    # ---------------------------------------------------------------- connections and locks
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreClosed(f"the store at {self.root} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE for writes)
            conn = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _write_locked(self) -> Iterator[None]:
        with self._mutex, self._flock.acquire(timeout=self.lock_timeout):
            yield

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    def _init_db(self) -> None:
        conn = self._conn()
        conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as conn:
            for statement in _statements(SCHEMA):  # (executescript would COMMIT our transaction)
                conn.execute(statement)
            meta = dict(conn.execute("SELECT name, value FROM meta"))
            if not meta:
                meta = {"format": str(FORMAT), "store_id": uuid.uuid4().hex, "dim": str(self.dim),
                        "deleted_trimmed": "0"}
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        if int(meta["format"]) != FORMAT:
            raise ValueError(f"{self.db_path}: store format {meta['format']}, this code reads format {FORMAT}")
        if int(meta["dim"]) != self.dim:
            raise ValueError(f"{self.db_path}: the store's keys have {meta['dim']} dimensions, not {self.dim}")
        self.store_id = meta["store_id"]

    def _clean_leftovers(self) -> None:
        """Remove what killed writers left: staging folders of dead processes, adapter folders without a row."""
        for path in self.staging_dir.iterdir():
            if not _pid_alive(_staging_pid(path.name)):
                _remove(path)
        ids = {row[0] for row in self._conn().execute("SELECT id FROM adapters")}
        for path in self.adapter_dir.iterdir():
            if path.name not in ids:
                _remove(path)

    # ---------------------------------------------------------------- writing
    def put(self, adapter: Adapter, *, kind: str, owner: str, context_hash: str, key,
            adapter_id: str | None = None, metadata: dict | None = None, remember: bool = False) -> AdapterRecord:
        """Store an adapter with its key; durable when it returns. May evict least recently used adapters.
        `remember`: keep it in the in-memory LRU as `load` would give it back (for one that is about to be used:
        a user's adapter, a context's adapter made for a reply), so that its first use reads nothing.
        Treat `adapter` as read-only from then on: the LRU holds its tensors."""
        for name, value in (("kind", kind), ("owner", owner), ("context_hash", context_hash)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not adapter.base_model:
            raise ValueError("the adapter has no base_model; the store scopes adapters by it")
        adapter_id = adapter_id or uuid.uuid4().hex
        if not _ID.match(adapter_id):
            raise ValueError(f"adapter id {adapter_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
                             "not starting with '.'")
        key = as_key(key, self.dim)
        try:
            meta_json = json.dumps(metadata or {}, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"metadata must be JSON-serialisable ({exc})") from exc
        tagged = Adapter(adapter.weights, adapter.alpha, adapter.base_model,
                         {**adapter.metadata, "id": adapter_id, "kind": kind, "owner": owner,
                          "context_hash": context_hash}, adapter.routes)
        staging = self.staging_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            tagged.save(staging)  # the slow part (write + fsync), outside the lock
            nbytes = sum(f.stat().st_size for f in staging.iterdir())
            if self.max_bytes is not None and nbytes > self.max_bytes:
                raise StoreFull(f"adapter {adapter_id} takes {nbytes} bytes, more than the store's "
                                f"max_bytes {self.max_bytes}")
            with self._write_locked():
                final = self.adapter_dir / adapter_id
                conn = self._conn()
                if conn.execute("SELECT 1 FROM adapters WHERE id = ?", (adapter_id,)).fetchone():
                    raise AdapterExists(f"an adapter with id {adapter_id!r} is already stored")
                _remove(final)  # a folder without a row: left by a killed writer
                os.replace(staging, final)
                fsync_path(self.adapter_dir)
                now = time.time()
                try:
                    with self._transaction() as conn:
                        seq = conn.execute("INSERT INTO adapters (id, kind, owner, context_hash, base_model, rank, "
                                           "created, last_used, hits, nbytes, metadata, key) "
                                           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                           (adapter_id, kind, owner, context_hash, adapter.base_model, adapter.rank,
                                            now, now, 0, nbytes, meta_json, key.tobytes())).lastrowid
                except BaseException:
                    _remove(final)
                    raise
                evicted = self._evict(keep=adapter_id)
                if remember:  # under the lock: a delete cannot come between the row and the LRU
                    try:
                        self._loaded.put(seq, tagged.as_saved(final))
                    except AdapterError:  # its routes files unreadable just after writing: read when used
                        pass
        finally:
            _remove(staging)
        self._loaded.drop(s for s, _ in evicted)
        self._sync()
        return AdapterRecord(adapter_id, kind, owner, context_hash, adapter.base_model, adapter.rank, now, now, 0,
                             nbytes, metadata or {}, final)

    def _evict(self, keep: str) -> list[tuple[int, str]]:
        """Delete least recently used adapters until within the limits (caller holds the write lock)."""
        if self.max_adapters is None and self.max_bytes is None:
            return []
        max_n = self.max_adapters if self.max_adapters is not None else float("inf")
        max_b = self.max_bytes if self.max_bytes is not None else float("inf")
        victims: list[tuple[int, str]] = []
        with self._transaction() as conn:
            n, nbytes = conn.execute("SELECT n, nbytes FROM totals").fetchone()
            if n <= max_n and nbytes <= max_b:
                return []
            cursor = conn.execute("SELECT seq, id, nbytes FROM adapters WHERE id != ? ORDER BY last_used, seq", (keep,))
            for seq, aid, size in cursor:
                if n <= max_n and nbytes <= max_b:
                    break
                victims.append((seq, aid))
                n, nbytes = n - 1, nbytes - size
            cursor.close()
            conn.executemany("DELETE FROM adapters WHERE seq = ?", [(seq,) for seq, _ in victims])
            _trim_deleted(conn)
        for _, aid in victims:
            _remove(self.adapter_dir / aid)
        return victims

    def touch(self, adapter_id: str) -> None:
        """Count a hit: hits += 1, last_used = now (drives LRU eviction)."""
        self._conn().execute("UPDATE adapters SET hits = hits + 1, last_used = ? WHERE id = ?",
                             (time.time(), adapter_id))

    def delete(self, adapter_id: str) -> bool:
        """Remove the row, the folder and the key. False if there was no such adapter."""
        return bool(self._delete_where("id = ?", (adapter_id,)))

    def delete_owner(self, owner: str, prefix: bool = False) -> int:
        """Delete every adapter of `owner` (with prefix=True: of every owner that starts with it). Returns the count."""
        if not owner:
            raise ValueError("owner must be a non-empty string")
        if prefix:
            return len(self._delete_where("owner >= ? AND substr(owner, 1, ?) = ?", (owner, len(owner), owner)))
        return len(self._delete_where("owner = ?", (owner,)))

    def _delete_where(self, where: str, params: tuple) -> list[str]:
        with self._write_locked():
            with self._transaction() as conn:
                rows = conn.execute(f"SELECT seq, id FROM adapters WHERE {where}", params).fetchall()
                if rows:
                    conn.execute(f"DELETE FROM adapters WHERE {where}", params)
                    _trim_deleted(conn)
            for _, aid in rows:
                _remove(self.adapter_dir / aid)
        if rows:
            self._loaded.drop(seq for seq, _ in rows)
            self._sync()
        return [aid for _, aid in rows]

    # ---------------------------------------------------------------- reading
    def get(self, adapter_id: str) -> AdapterRecord | None:
        row = self._conn().execute(f"SELECT {_COLS} FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
        return self._record(row) if row else None

    def load(self, adapter_id: str) -> Adapter:
        """The adapter itself. Served from a small in-memory LRU when recently loaded: treat it as read-only."""
        row = self._conn().execute("SELECT seq FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
        if row is None:
            raise AdapterNotFound(f"no adapter with id {adapter_id!r}")
        adapter = self._loaded.get(row[0])
        if adapter is None:
            try:
                adapter = Adapter.load(self.adapter_dir / adapter_id)
            except AdapterError:
                if self.get(adapter_id) is None:  # deleted meanwhile
                    raise AdapterNotFound(f"no adapter with id {adapter_id!r}") from None
                raise
            self._loaded.put(row[0], adapter)
        return adapter

    def find_exact(self, *, kind: str, base_model: str, owner: str, context_hash: str) -> AdapterRecord | None:
        """The newest adapter made from this exact context, in this scope."""
        row = self._conn().execute(
            f"SELECT {_COLS} FROM adapters WHERE kind = ? AND base_model = ? AND owner = ? AND context_hash = ? "
            "ORDER BY seq DESC LIMIT 1", (kind, base_model, owner, context_hash)).fetchone()
        return self._record(row) if row else None

    def search(self, key, *, kind: str, base_model: str, owner: str, k: int = 1) -> list[tuple[AdapterRecord, float]]:
        """The k nearest adapters of this scope by cosine similarity, best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = as_key(key, self.dim)
        with self._index_lock:
            self._sync()
            scope = self._scopes.get((kind, base_model, owner))
            if scope is None:
                return []
            sims, labels = scope.search(query[None], k)
        found = [(int(label), min(float(sim), 1.0)) for sim, label in zip(sims[0], labels[0]) if label >= 0]
        if not found:
            return []
        marks = ",".join("?" * len(found))
        rows = self._conn().execute(f"SELECT {_COLS} FROM adapters WHERE seq IN ({marks})", [s for s, _ in found])
        records = {row[0]: self._record(row) for row in rows}
        return [(records[seq], sim) for seq, sim in found if seq in records]  # (a row deleted meanwhile is skipped)

    def list(self, *, owner: str | None = None, owner_prefix: str | None = None, kind: str | None = None,
             limit: int = 50, offset: int = 0) -> list[AdapterRecord]:
        """Adapters, newest first."""
        where, params = _filters(owner, owner_prefix, kind)
        rows = self._conn().execute(f"SELECT {_COLS} FROM adapters{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                    (*params, limit, offset))
        return [self._record(row) for row in rows]

    def count(self, *, owner: str | None = None, owner_prefix: str | None = None, kind: str | None = None) -> int:
        where, params = _filters(owner, owner_prefix, kind)
        if not where:
            return self._conn().execute("SELECT n FROM totals").fetchone()[0]
        return self._conn().execute(f"SELECT count(*) FROM adapters{where}", params).fetchone()[0]

    def total_bytes(self) -> int:
        return self._conn().execute("SELECT nbytes FROM totals").fetchone()[0]

    def stats(self) -> dict[str, int]:
        """Counts for metrics: adapters, bytes on disk, scopes and keys in this process's index."""
        n, nbytes = self._conn().execute("SELECT n, nbytes FROM totals").fetchone()
        with self._index_lock:
            self._sync()
            return {"adapters": n, "bytes": nbytes, "scopes": len(self._scopes),
                    "indexed_keys": sum(len(index) for index in self._scopes.values()),
                    "loaded_adapters": len(self._loaded.items)}

    def _record(self, row) -> AdapterRecord:
        _, aid, kind, owner, chash, base, rank, created, last_used, hits, nbytes, meta = row
        return AdapterRecord(aid, kind, owner, chash, base, rank, created, last_used, hits, nbytes,
                             json.loads(meta), self.adapter_dir / aid)

    # ---------------------------------------------------------------- the index
    def _open_index(self) -> None:
        with self._index_lock:
            try:
                self._scopes = load_index(self.index_path, self._index_header(), self.config)
            except IndexFileError:
                self._scopes = {}  # missing or damaged: rebuilt from the rows by the reconciliation
                self._unsaved += 1
            self._reconcile()

    def _index_header(self) -> dict:
        return {"format": FORMAT, "store_id": self.store_id, "dim": self.dim, "factory": self.config.factory}

    def _high_water(self, conn: sqlite3.Connection) -> tuple[int, int]:
        marks = dict(conn.execute("SELECT name, seq FROM sqlite_sequence"))
        return marks.get("adapters", 0), marks.get("deleted", 0)

    def _reconcile(self) -> None:
        """Make the in-memory index hold exactly the rows' keys (compares every label with every row)."""
        with self._index_lock:
            conn = self._conn()
            conn.execute("BEGIN")  # one read snapshot
            try:
                seq_hw, dseq_hw = self._high_water(conn)
                rows = np.fromiter((r[0] for r in conn.execute("SELECT seq FROM adapters")), np.int64)
                have = {scope: index.labels() for scope, index in self._scopes.items()}
                indexed = np.concatenate(list(have.values())) if have else np.zeros(0, np.int64)
                missing = np.setdiff1d(rows, indexed)
                adds = []
                for start in range(0, len(missing), 500):
                    chunk = missing[start:start + 500].tolist()
                    adds += conn.execute("SELECT seq, kind, base_model, owner, key FROM adapters WHERE seq IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall()
            finally:
                conn.execute("COMMIT")
            removed = 0
            for scope, labels in have.items():
                extra = labels[~np.isin(labels, rows)]
                if len(extra):
                    removed += self._scopes[scope].remove(extra)
                    self._loaded.drop(extra.tolist())
                    if len(self._scopes[scope]) == 0:
                        del self._scopes[scope]
            self._apply(adds, [])
            self._applied_seq, self._applied_dseq = seq_hw, dseq_hw
            self._unsaved += removed
            self._rebuild_wanted({s for s in self._scopes if self._scopes[s].wants_rebuild()})

    def _sync(self) -> None:
        """Apply the rows inserted and deleted (by any thread or process) since the last sync."""
        with self._index_lock:
            conn = self._conn()
            seq_hw, dseq_hw = self._high_water(conn)
            if seq_hw <= self._applied_seq and dseq_hw <= self._applied_dseq:
                return
            conn.execute("BEGIN")  # one read snapshot for rows and deletions
            try:
                seq_hw, dseq_hw = self._high_water(conn)
                trimmed = int(conn.execute("SELECT value FROM meta WHERE name = 'deleted_trimmed'").fetchone()[0])
                adds = conn.execute("SELECT seq, kind, base_model, owner, key FROM adapters WHERE seq > ? AND seq <= ? "
                                    "ORDER BY seq", (self._applied_seq, seq_hw)).fetchall()
                dels = conn.execute("SELECT seq, kind, base_model, owner FROM deleted WHERE dseq > ? AND dseq <= ?",
                                    (self._applied_dseq, dseq_hw)).fetchall()
            finally:
                conn.execute("COMMIT")
            if trimmed > self._applied_dseq:  # we fell too far behind the deletion log
                self._reconcile()
                return
            touched = self._apply(adds, dels)
            self._applied_seq, self._applied_dseq = seq_hw, dseq_hw
            self._rebuild_wanted({s for s in touched if s in self._scopes and self._scopes[s].wants_rebuild()})
            if self._unsaved >= self.save_every:
                self.save_index()

    def _apply(self, adds: list, dels: list) -> set[Scope]:
        groups: dict[Scope, list] = {}
        for seq, kind, base_model, owner, blob in adds:
            groups.setdefault((kind, base_model, owner), []).append((seq, blob))
        for scope, items in groups.items():
            labels = np.array([seq for seq, _ in items], np.int64)
            keys = np.stack([np.frombuffer(blob, np.float32) for _, blob in items])
            index = self._scopes.get(scope)
            if index is None:
                self._scopes[scope] = index = ScopeIndex(self.config)
                index.rebuild(labels, keys)  # picks exact or ANN by size
            else:
                index.add(labels, keys)
        gone: dict[Scope, list[int]] = {}
        for seq, kind, base_model, owner in dels:
            gone.setdefault((kind, base_model, owner), []).append(seq)
        for scope, seqs in gone.items():
            index = self._scopes.get(scope)
            if index is not None:
                index.remove(np.array(seqs, np.int64))
                if len(index) == 0:
                    del self._scopes[scope]
            self._loaded.drop(seqs)  # (also what another process deleted)
        self._unsaved += len(adds) + len(dels)
        return set(groups) | set(gone)

    def _rebuild_wanted(self, scopes: set[Scope]) -> None:
        """Rebuild these scopes from their rows (to switch to the ANN type, or to drop HNSW tombstones)."""
        for scope in scopes:
            kind, base_model, owner = scope
            rows = self._conn().execute(
                "SELECT seq, key FROM adapters WHERE kind = ? AND base_model = ? AND owner = ? AND seq <= ?",
                (kind, base_model, owner, self._applied_seq)).fetchall()
            labels = np.array([seq for seq, _ in rows], np.int64)
            keys = np.stack([np.frombuffer(blob, np.float32) for _, blob in rows]) if rows else np.zeros((0, self.dim))
            # rows deleted after our applied point are gone here already; their log entries are no-ops later
            self._scopes[scope].rebuild(labels, keys)
            self._unsaved += 1

    def rebuild_index(self) -> None:
        """Drop the in-memory index, rebuild it from the rows, and write index.faiss."""
        with self._index_lock:
            self._scopes = {}
            self._reconcile()
            self.save_index()

    def save_index(self) -> None:
        """Write index.faiss now (atomically). Also done on close and every `save_every` index changes."""
        with self._index_lock:
            save_index(self.index_path, self._scopes, self._index_header())
            self._unsaved = 0

    def index_labels(self) -> dict[Scope, np.ndarray]:
        """The live labels of each scope of the in-memory index (for checks and tests)."""
        with self._index_lock:
            self._sync()
            return {scope: index.labels() for scope, index in self._scopes.items()}

    # ---------------------------------------------------------------- health
    def integrity_check(self) -> list[str]:
        """Problems found (empty = fine): SQLite's own check, the totals, every row's folder (its routes files
        too) and key, folders without a row, and the index against the rows (each key in its scope, nothing
        extra)."""
        problems: list[str] = []
        with self._write_locked():  # no insert or delete, from any process, while we look
            conn = self._conn()
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                problems += [f"sqlite: {r}" for r in result]
            rows = conn.execute("SELECT seq, id, kind, base_model, owner, length(key), nbytes FROM adapters").fetchall()
            n, nbytes = conn.execute("SELECT n, nbytes FROM totals").fetchone()
            row_bytes = sum(r[6] for r in rows)
            if n != len(rows) or nbytes != row_bytes:
                problems.append(f"totals say {n} adapters / {nbytes} bytes, the rows {len(rows)} / {row_bytes}")
            ids = set()
            for seq, aid, kind, base_model, owner, key_len, _ in rows:
                ids.add(aid)
                folder = self.adapter_dir / aid
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    if not (folder / name).is_file():
                        problems.append(f"adapter {aid}: {folder / name} is missing")
                try:  # its routes files, if any, are all there and hold what their list says
                    Routes.count(folder)
                except AdapterError as exc:
                    problems.append(f"adapter {aid}: {exc}")
                if key_len != 4 * self.dim:
                    problems.append(f"adapter {aid}: key has {key_len} bytes, expected {4 * self.dim}")
            for path in self.adapter_dir.iterdir():
                if path.name not in ids:
                    problems.append(f"{path}: a folder with no row")
            for path in self.staging_dir.iterdir():
                if not _pid_alive(_staging_pid(path.name)):
                    problems.append(f"{path}: staging left by a dead process")
            with self._index_lock:
                self._sync()
                where = {int(label): scope for scope, labels in
                         ((s, i.labels()) for s, i in self._scopes.items()) for label in labels}
                seen = set()
                for seq, aid, kind, base_model, owner, _, _ in rows:
                    scope = where.get(seq)
                    if scope is None:
                        problems.append(f"adapter {aid}: its key is not in the index")
                    elif scope != (kind, base_model, owner):
                        problems.append(f"adapter {aid}: its key is indexed under scope {scope}")
                    seen.add(seq)
                extra = sorted(set(where) - seen)
                if extra:
                    problems.append(f"index holds {len(extra)} keys with no row (labels {extra[:5]}...)")
        return problems

    def close(self) -> None:
        """Write the index file if it changed, and close every connection."""
        if self._closed:
            return
        with self._index_lock:
            self._sync()
            if self._unsaved or not self.index_path.exists():
                self.save_index()
            self._closed = True
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def __enter__(self) -> "AdapterStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------- helpers
def as_key(key, dim: int) -> np.ndarray:
    """A unit float32 vector of `dim` values from a tensor / array / list; ValueError if it cannot be one."""
    if hasattr(key, "detach"):
        key = key.detach().float().cpu().numpy()
    vec = np.asarray(key, dtype=np.float32).reshape(-1)
    if vec.shape != (dim,):
        raise ValueError(f"key has {vec.size} values; this store's keys have {dim}")
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("key must be a finite, non-zero vector")
    return vec / norm


def _filters(owner: str | None, owner_prefix: str | None, kind: str | None) -> tuple[str, list]:
    clauses, params = [], []
    if owner is not None:
        clauses.append("owner = ?")
        params.append(owner)
    if owner_prefix is not None:
        clauses.append("owner >= ? AND substr(owner, 1, ?) = ?")  # range uses the index; substr makes it exact
        params += [owner_prefix, len(owner_prefix), owner_prefix]
    if kind is not None:
        clauses.append("kind = ?")
        params.append(kind)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _trim_deleted(conn: sqlite3.Connection) -> None:
    """Keep the last KEEP_DELETED entries of the deletion log; a process that had not applied the dropped
    ones notices (meta.deleted_trimmed) and reconciles its whole index instead."""
    (top,) = conn.execute("SELECT coalesce(max(dseq), 0) FROM deleted").fetchone()
    cut = top - KEEP_DELETED
    if cut > 0 and conn.execute("DELETE FROM deleted WHERE dseq <= ?", (cut,)).rowcount:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'deleted_trimmed'", (str(cut),))


def _statements(script: str) -> list[str]:
    """Split the schema into statements (a trigger body holds semicolons, ending with END;)."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            current = []
    return out


def _staging_pid(name: str) -> int | None:
    head = name.lstrip(".").split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
