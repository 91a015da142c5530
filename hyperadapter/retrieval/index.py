"""The key index: FAISS indexes of unit-vector keys, one per scope, and the `index.faiss` file.

A scope is `(kind, base_model, owner)`; every search names one, so each scope has its own index
and a search never sees (or filters out) another owner's keys. Labels are the store's int64 row
numbers (`adapters.seq`, never reused). Inner product on unit vectors is cosine similarity.

Index types, from a FAISS factory string:
- `"Flat"`: exact search (`IndexIDMap2(IndexFlatIP)`); `remove_ids` really removes the vector.
- `"HNSW…"` (e.g. `"HNSW32"`): a scope starts flat and is rebuilt as HNSW once it holds `ann_min` keys.
  FAISS's HNSW cannot remove a node, so a deletion zeroes the vector in the index's flat storage
  (the key's content is gone at once), adds the label to the scope's tombstones (filtered out of
  every search by an `IDSelectorNot`), and the scope is rebuilt without them when tombstones pass
  10% of it (or on `AdapterStore.rebuild_index()`).
- `"IVF…"` (e.g. `"IVF1024,Flat"`): trained on the scope's keys once it holds `max(ann_min, 39 * nlist)`;
  IVF stores the labels itself and `remove_ids` really removes them.

The file is an atomic snapshot (temp + fsync + rename) that only saves start-up time: the store
reconciles it against SQLite on open and rebuilds it if it is missing, from another store, or damaged
(CRC-32 over the whole file). Layout: MAGIC, one FAISS blob per scope, a JSON header describing the
blobs, the header's length (u64) and the CRC (u32).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from hyperadapter.durable import fsync_path

ANN_MIN = 10_000  # below this many keys a scope stays exact: brute force over <10k keys takes < 1 ms
COMPACT_FRACTION = 0.10
MAGIC = b"HAKIDX01"
Scope = tuple[str, str, str]  # (kind, base_model, owner)


class IndexFileError(ValueError):
    """The index file is missing, damaged, or belongs to another store / index type."""


def _empty_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class IndexConfig:
    """How scopes are indexed: shared by every ScopeIndex of a store."""

    dim: int = 384
    factory: str = "Flat"
    ann_min: int = ANN_MIN
    ef_search: int = 128  # benchmarks/cache.py: recall@1 >= 0.99 at 1M keys with HNSW32, efConstruction 200
    ef_construction: int = 200
    nprobe: int = 32
    ann_at: int = field(init=False, default=0)  # a scope switches from exact to the factory's index at this size

    def __post_init__(self) -> None:
        at = 0
        if self.factory != "Flat":  # (also validates the factory string)
            index = new_ann_index(self.dim, self.factory, 0)
            # IVF must be trained: FAISS wants at least 39 training points per centroid
            at = self.ann_min if index.is_trained else max(self.ann_min, 39 * faiss.extract_index_ivf(index).nlist)
        object.__setattr__(self, "ann_at", at)


class ScopeIndex:
    """The keys of one scope under int64 labels: exact while small, the factory's ANN index once large."""

    def __init__(self, config: IndexConfig):
        self.config, self.dim = config, config.dim
        self.tombstones: set[int] = set()
        self._selector = None  # the HNSW tombstone filter, rebuilt when the tombstones change
        self._set_index(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), exact=True)

    # ---------------------------------------------------------------- state
    def _set_index(self, index: faiss.Index, exact: bool) -> None:
        self.index, self.exact = index, exact
        self.hnsw = self.ivf = None
        if not exact:
            inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
            if isinstance(inner, faiss.IndexHNSW):
                self.hnsw = inner
                inner.hnsw.efSearch = self.config.ef_search
            else:
                self.ivf = faiss.extract_index_ivf(index)
                self.ivf.nprobe = self.config.nprobe
        self._selector = None

    def __len__(self) -> int:
        return self.index.ntotal - len(self.tombstones)

    def labels(self) -> np.ndarray:
        """The live labels (tombstones excluded)."""
        if self.ivf is not None:
            return _ivf_labels(self.ivf)
        labels = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if self.tombstones:
            labels = labels[~np.isin(labels, np.fromiter(self.tombstones, np.int64))]
        return labels

    def wants_rebuild(self) -> bool:
        """True when the scope should be rebuilt from its keys: grown past the ANN threshold, or too many tombstones."""
        if self.exact:
            return self.config.factory != "Flat" and len(self) >= self.config.ann_at
        return len(self.tombstones) > COMPACT_FRACTION * max(self.index.ntotal, 1)

    # ---------------------------------------------------------------- changes
    def add(self, labels: np.ndarray, keys: np.ndarray) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim)
        if len(labels):
            self.index.add_with_ids(keys, labels)

    def remove(self, labels: np.ndarray) -> int:
        """Remove labels; returns how many were present."""
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if not len(labels):
            return 0
        if self.hnsw is None:
            return int(self.index.remove_ids(faiss.IDSelectorBatch(labels)))
        # HNSW: zero the stored vectors and tombstone the labels (see the module docstring)
        id_map = faiss.vector_to_array(self.index.id_map)
        positions = np.flatnonzero(np.isin(id_map, labels))
        fresh = [int(id_map[p]) for p in positions if int(id_map[p]) not in self.tombstones]
        storage = faiss.downcast_index(self.hnsw.storage)
        if isinstance(storage, faiss.IndexFlat) and len(positions):
            xb = faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * self.dim).reshape(storage.ntotal, self.dim)
            xb[positions] = 0.0
        self.tombstones.update(fresh)
        self._selector = None
        return len(fresh)

    def rebuild(self, labels: np.ndarray, keys: np.ndarray) -> None:
        """Replace the contents by exactly these keys, choosing the index type for their number."""
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim)
        self.tombstones = set()
        if self.config.factory == "Flat" or len(labels) < self.config.ann_at:
            self._set_index(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), exact=True)
        else:
            index = new_ann_index(self.dim, self.config.factory, self.config.ef_construction)
            if not index.is_trained:
                index.train(keys)
            self._set_index(index, exact=False)
        self.add(labels, keys)

    # ---------------------------------------------------------------- search
    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change HNSW's efSearch / IVF's nprobe for this scope (speed against recall)."""
        self.config = replace(self.config, ef_search=ef_search or self.config.ef_search,
                              nprobe=nprobe or self.config.nprobe)
        self._set_index(self.index, self.exact)

    def search(self, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities [n, k], labels [n, k]); missing results have label -1."""
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0:
            return np.full((len(keys), k), -np.inf, np.float32), np.full((len(keys), k), -1, np.int64)
        params = None
        if self.hnsw is not None:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.config.ef_search, k)  # fewer than k results otherwise
            if self.tombstones:
                if self._selector is None:  # built once per change of the tombstones
                    batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, np.int64))
                    self._selector = (batch, faiss.IDSelectorNot(batch))  # (both kept alive here)
                params.sel = self._selector[1]
        return self.index.search(keys, k, params=params)


def new_ann_index(dim: int, factory: str, ef_construction: int) -> faiss.Index:
    """An empty index from the factory string that accepts our labels (HNSW wrapped in IndexIDMap2)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"index_factory {factory!r} is not a valid FAISS factory string") from exc
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        if ef_construction:
            inner.hnsw.efConstruction = ef_construction
        return faiss.IndexIDMap2(index)  # (the wrapper keeps a reference to `index`, the owner)
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        raise ValueError(f"index_factory {factory!r}: use 'Flat', an HNSW ('HNSW32', 'HNSW32,SQ8') "
                         "or an IVF ('IVF1024,Flat') factory string") from None
    return index


def _ivf_labels(ivf: faiss.IndexIVF) -> np.ndarray:
    invlists = ivf.invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(ivf.nlist) if invlists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else _empty_labels()


# -------------------------------------------------------------------- the file
def save_index(path: Path, scopes: dict[Scope, ScopeIndex], header: dict) -> None:
    """Write every scope's index to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    crc, offset = 0, 0
    try:
        with os.fdopen(fd, "wb") as f:
            def write(data: bytes) -> None:
                nonlocal crc, offset
                f.write(data)
                crc = zlib.crc32(data, crc)
                offset += len(data)

            write(MAGIC)
            entries = []
            for (kind, base_model, owner), scope in scopes.items():
                start = offset
                faiss.write_index(scope.index, faiss.PyCallbackIOWriter(write))
                entries.append({"kind": kind, "base_model": base_model, "owner": owner, "offset": start,
                                "length": offset - start, "exact": scope.exact,
                                "tombstones": sorted(scope.tombstones)})
            head = json.dumps({**header, "scopes": entries}).encode()
            write(head)
            write(struct.pack("<Q", len(head)))
            f.write(struct.pack("<I", crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_index(path: Path, expect: dict, config: IndexConfig) -> dict[Scope, ScopeIndex]:
    """Read a file written by `save_index`; raise IndexFileError when it is absent, damaged or not ours.
    `expect`: header fields that must match (store id, dim, factory)."""
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < len(MAGIC) + 12 or f.read(len(MAGIC)) != MAGIC:
            raise IndexFileError(f"{path}: not an index file")
        f.seek(0)
        crc, left = 0, size - 4
        while left:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                raise IndexFileError(f"{path}: truncated")
            crc, left = zlib.crc32(chunk, crc), left - len(chunk)
        (stored,) = struct.unpack("<I", f.read(4))
        if crc != stored:
            raise IndexFileError(f"{path}: checksum mismatch (damaged file)")
        f.seek(size - 12)
        (head_len,) = struct.unpack("<Q", f.read(8))
        f.seek(size - 12 - head_len)
        try:
            header = json.loads(f.read(head_len))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IndexFileError(f"{path}: unreadable header ({exc})") from exc
        for name, value in expect.items():
            if header.get(name) != value:
                raise IndexFileError(f"{path}: {name} is {header.get(name)!r}, expected {value!r}")
        scopes: dict[Scope, ScopeIndex] = {}
        for entry in header["scopes"]:
            f.seek(entry["offset"])
            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
            except RuntimeError as exc:
                raise IndexFileError(f"{path}: cannot read the index of scope {entry['owner']!r} ({exc})") from exc
            scope = ScopeIndex(config)
            scope._set_index(index, exact=entry["exact"])
            scope.tombstones = set(entry["tombstones"])
            scopes[(entry["kind"], entry["base_model"], entry["owner"])] = scope
    return scopes
