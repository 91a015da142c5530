"""AdapterStore: rows + PEFT folders + FAISS keys stay consistent through puts, deletes, eviction, crashes,
threads and a second process."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperadapter.adapter import Adapter
from hyperadapter.retrieval import store as store_module
from hyperadapter.retrieval.index import IndexConfig, IndexFileError, ScopeIndex, load_index
from hyperadapter.retrieval.store import AdapterExists, AdapterNotFound, AdapterStore, StoreFull

REPO = Path(__file__).resolve().parent.parent
BASE = "test-base"


def small_adapter(seed: int, base: str = BASE, rank: int = 4) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    weights = {f"model.layers.{i}.self_attn.q_proj": (torch.randn(rank, 32, generator=g), torch.randn(32, rank, generator=g))
               for i in range(2)}
    return Adapter(weights, alpha=2.0 * rank, base_model=base)


def real_shaped_adapter(seed: int, base: str = BASE) -> Adapter:
    """SmolLM2-135M's shapes: 30 layers, q_proj 576->576, v_proj 576->192, down_proj 1536->576, rank 8."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.q_proj": (576, 576), "self_attn.v_proj": (576, 192), "mlp.down_proj": (1536, 576)}
    weights = {f"model.layers.{i}.{name}": (torch.randn(8, fan_in, generator=g) * 0.01, torch.randn(fan_out, 8, generator=g) * 0.01)
               for i in range(30) for name, (fan_in, fan_out) in shapes.items()}
    return Adapter(weights, alpha=16.0, base_model=base)


def key(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def put(store: AdapterStore, seed: int, owner: str = "tenant", kind: str = "task", **kw):
    return store.put(small_adapter(seed), kind=kind, owner=owner, context_hash=f"hash-{seed}", key=key(seed), **kw)


def top_id(store: AdapterStore, seed: int, owner: str = "tenant", kind: str = "task") -> str | None:
    found = store.search(key(seed), kind=kind, base_model=BASE, owner=owner, k=1)
    return found[0][0].id if found else None


def all_labels(store: AdapterStore) -> set[int]:
    return {int(x) for labels in store.index_labels().values() for x in labels}


def row_seq(store: AdapterStore, adapter_id: str) -> int:
    return store._conn().execute("SELECT seq FROM adapters WHERE id = ?", (adapter_id,)).fetchone()[0]


# ------------------------------------------------------------------------------------------------ basics
def test_put_load_roundtrip_real_shapes_and_reopen(tmp_path):
    adapter = real_shaped_adapter(0)
    with AdapterStore(tmp_path) as store:
        rec = store.put(adapter, kind="document", owner="tenant", context_hash="h0", key=key(0), metadata={"source": "t"})
        assert rec.path == tmp_path / "adapters" / rec.id
        assert rec.nbytes == sum(f.stat().st_size for f in rec.path.iterdir()) > adapter.nbytes
        config = json.loads((rec.path / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
        assert store.total_bytes() == rec.nbytes
    with AdapterStore(tmp_path) as store:  # durable across a reopen
        got = store.get(rec.id)
        assert got is not None and got.metadata == {"source": "t"} and got.rank == 8 and got.base_model == BASE
        loaded = store.load(rec.id)
        assert loaded.metadata["context_hash"] == "h0" and loaded.metadata["owner"] == "tenant"
        for module, (a, b) in adapter.weights.items():
            assert torch.equal(loaded.weights[module][0], a) and torch.equal(loaded.weights[module][1], b)
        assert store.load(rec.id) is loaded  # the in-memory LRU
        [(found, sim)] = store.search(key(0), kind="document", base_model=BASE, owner="tenant")
        assert found.id == rec.id and sim == pytest.approx(1.0, abs=1e-5)
        assert store.integrity_check() == []


def test_a_documents_routes_are_stored_counted_and_loaded_with_it(tmp_path):
    from hyperadapter.adapter import Routes
    adapter = real_shaped_adapter(0)
    adapter.routes = Routes([small_adapter(1), small_adapter(2)], torch.eye(2, 384))
    with AdapterStore(tmp_path) as store:
        plain = store.put(real_shaped_adapter(0), kind="document", owner="t", context_hash="h0", key=key(0))
        rec = store.put(adapter, kind="document", owner="t", context_hash="h1", key=key(1))
        assert rec.nbytes > plain.nbytes + adapter.routes.nbytes * 0.99 and Routes.count(rec.path) == 2
    with AdapterStore(tmp_path) as store:
        loaded = store.load(rec.id)
        assert loaded.metadata["context_hash"] == "h1" and torch.equal(loaded.routes.vectors, torch.eye(2, 384))
        for got, made in zip(loaded.routes.adapters, adapter.routes.adapters):
            assert all(torch.equal(got.weights[m][1], made.weights[m][1]) for m in made.weights)
        assert store.load(plain.id).routes is None and store.integrity_check() == []


def test_a_remembered_adapter_is_served_from_memory_as_a_load_from_disk_would_give_it(tmp_path, monkeypatch):
    from hyperadapter.adapter import Routes
    adapter = real_shaped_adapter(0)
    adapter.metadata["note"] = "x"
    adapter.routes = Routes([small_adapter(1), small_adapter(2)], torch.eye(2, 384),
                            [torch.tensor([1]), torch.tensor([2, 3])])
    with AdapterStore(tmp_path) as store:
        rec = store.put(adapter, kind="conversation", owner="t", context_hash="h", key=key(0), remember=True)
        plain = store.put(real_shaped_adapter(1), kind="task", owner="t", context_hash="p", key=key(1))
        from_disk = Adapter.load(rec.path)
        def no_reading(*args, **kwargs):
            raise OSError("read from disk")
        monkeypatch.setattr(Adapter, "load", no_reading)
        kept = store.load(rec.id)  # no disk read
        assert kept.metadata == from_disk.metadata and kept.metadata["id"] == rec.id
        assert all(torch.equal(kept.weights[m][i], from_disk.weights[m][i]) for m in from_disk.weights for i in (0, 1))
        assert torch.equal(kept.routes.vectors, from_disk.routes.vectors)
        assert all(torch.equal(a, b) for a, b in zip(kept.routes.words, from_disk.routes.words, strict=True))
        assert kept.routes.files == from_disk.routes.files and kept.routes.files[0].path.parent == rec.path
        for got, disk in zip(kept.routes.adapters, from_disk.routes.adapters, strict=True):
            assert (got.alpha, got.base_model, got.metadata) == (disk.alpha, disk.base_model, disk.metadata)
            assert all(torch.equal(got.weights[m][1], disk.weights[m][1]) for m in disk.weights)
        with pytest.raises(OSError, match="read from disk"):
            store.load(plain.id)  # not remembered: read when first asked for
        store.delete(rec.id)
        with pytest.raises(AdapterNotFound):
            store.load(rec.id)


def test_find_exact_returns_newest_and_touch_counts(tmp_path):
    with AdapterStore(tmp_path) as store:
        a = store.put(small_adapter(1), kind="task", owner="t", context_hash="same", key=key(1))
        b = store.put(small_adapter(2), kind="task", owner="t", context_hash="same", key=key(2))
        assert store.find_exact(kind="task", base_model=BASE, owner="t", context_hash="same").id == b.id
        assert store.find_exact(kind="task", base_model=BASE, owner="t", context_hash="other") is None
        before = store.get(a.id)
        store.touch(a.id)
        store.touch(a.id)
        after = store.get(a.id)
        assert after.hits == before.hits + 2 and after.last_used > before.last_used


def test_owner_kind_and_base_model_scoping(tmp_path):
    with AdapterStore(tmp_path) as store:
        shared = put(store, 1, owner="tenant")
        alice = store.put(small_adapter(2), kind="task", owner="tenant/user/alice", context_hash="h", key=key(1))
        other_base = store.put(small_adapter(3, base="other-base"), kind="task", owner="tenant", context_hash="h", key=key(1))
        # the same key is stored in three scopes; each search sees only its own
        assert top_id(store, 1, owner="tenant") == shared.id
        assert top_id(store, 1, owner="tenant/user/alice") == alice.id
        assert top_id(store, 1, owner="tenant/user/bob") is None
        assert top_id(store, 1, owner="tenant", kind="document") is None
        assert store.search(key(1), kind="task", base_model="other-base", owner="tenant", k=5)[0][0].id == other_base.id
        assert [r.id for r, _ in store.search(key(1), kind="task", base_model=BASE, owner="tenant", k=10)] == [shared.id]
        assert store.find_exact(kind="task", base_model=BASE, owner="tenant/user/bob", context_hash="h") is None
        assert store.find_exact(kind="task", base_model=BASE, owner="tenant/user/alice", context_hash="h").id == alice.id


def test_list_count_and_delete_owner_prefix(tmp_path):
    owners = ["t1", "t1/user/alice", "t1/user/alice", "t1/user/alice2", "t10", "t2"]
    with AdapterStore(tmp_path) as store:
        recs = [put(store, i, owner=o) for i, o in enumerate(owners)]
        assert store.count() == 6
        assert store.count(owner="t1/user/alice") == 2
        assert {r.owner for r in store.list(owner_prefix="t1/")} == {"t1/user/alice", "t1/user/alice2"}
        assert [r.id for r in store.list(limit=2)] == [recs[5].id, recs[4].id]  # newest first
        assert [r.id for r in store.list(limit=2, offset=2)] == [recs[3].id, recs[2].id]
        assert store.count(kind="document") == 0
        assert store.delete_owner("t1/user/alice") == 2  # exact owner: alice2 stays
        assert store.count(owner="t1/user/alice2") == 1
        assert store.delete_owner("t1/", prefix=True) == 1
        assert sorted(r.owner for r in store.list()) == ["t1", "t10", "t2"]
        for r in recs[1:4]:
            assert store.get(r.id) is None and not r.path.exists()
        assert all_labels(store) == {row_seq(store, r.id) for r in store.list()}
        with pytest.raises(ValueError, match="owner"):
            store.delete_owner("", prefix=True)
        assert store.integrity_check() == []


# ------------------------------------------------------------------------------------------------ deletion and eviction
def test_delete_removes_row_folder_and_key_also_for_another_process(tmp_path):
    a, b = AdapterStore(tmp_path), AdapterStore(tmp_path)  # two handles = two processes' views
    try:
        recs = [put(a, i) for i in range(3)]
        assert top_id(b, 1) == recs[1].id  # b learns of a's inserts from SQLite
        b.load(recs[1].id)
        seq = row_seq(a, recs[1].id)
        assert a.delete(recs[1].id) is True
        assert a.get(recs[1].id) is None
        assert not recs[1].path.exists()
        for store in (a, b):
            assert seq not in all_labels(store)
            assert top_id(store, 1) != recs[1].id
            with pytest.raises(AdapterNotFound, match=recs[1].id):
                store.load(recs[1].id)
        assert a.delete(recs[1].id) is False
        assert b.integrity_check() == [] and a.integrity_check() == []
    finally:
        a.close()
        b.close()


def test_lru_eviction_by_count_removes_all_three(tmp_path):
    with AdapterStore(tmp_path, max_adapters=3) as store:
        r0, r1, r2 = (put(store, i) for i in range(3))
        store.touch(r0.id)
        store.touch(r1.id)  # r2 is now the least recently used
        seq2 = row_seq(store, r2.id)
        r3 = put(store, 3)
        assert store.count() == 3
        assert store.get(r2.id) is None and not r2.path.exists()
        assert seq2 not in all_labels(store) and top_id(store, 2) != r2.id
        assert {r.id for r in store.list()} == {r0.id, r1.id, r3.id}
        assert store.stats() | {"bytes": 0, "loaded_adapters": 0} == {"adapters": 3, "bytes": 0, "scopes": 1,
                                                                      "indexed_keys": 3, "loaded_adapters": 0}
        assert store.integrity_check() == []


def test_lru_eviction_by_bytes_and_oversized_adapter(tmp_path):
    with AdapterStore(tmp_path / "probe") as probe:
        size = put(probe, 0).nbytes
    with AdapterStore(tmp_path / "s", max_bytes=int(2.5 * size)) as store:
        recs = [put(store, i) for i in range(4)]
        assert store.count() == 2 and store.total_bytes() <= 2.5 * size
        assert {r.id for r in store.list()} == {recs[2].id, recs[3].id}
        assert len(all_labels(store)) == 2
        with pytest.raises(StoreFull, match="max_bytes"):
            store.put(real_shaped_adapter(9), kind="task", owner="tenant", context_hash="big", key=key(9))
        assert store.count() == 2 and list((tmp_path / "s" / "staging").iterdir()) == []
        assert store.integrity_check() == []


# ------------------------------------------------------------------------------------------------ the index file
def test_index_rebuilt_after_index_file_deleted_or_corrupted(tmp_path):
    with AdapterStore(tmp_path) as store:
        recs = [put(store, i, owner=f"o{i % 3}") for i in range(12)]
    index_file = tmp_path / "index.faiss"
    assert index_file.stat().st_size > 12 * 384 * 4

    index_file.unlink()
    with AdapterStore(tmp_path) as store:
        assert store.integrity_check() == []
        assert all(top_id(store, i, owner=f"o{i % 3}") == r.id for i, r in enumerate(recs))
    assert index_file.exists()  # written again on close

    data = bytearray(index_file.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)  # damage the middle of a FAISS blob
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum"):
        load_index(index_file, {}, IndexConfig())
    with AdapterStore(tmp_path) as store:
        assert store.integrity_check() == []
        assert all(top_id(store, i, owner=f"o{i % 3}") == r.id for i, r in enumerate(recs))

    index_file.write_bytes(b"not an index")
    with AdapterStore(tmp_path) as store:
        assert store.integrity_check() == []


def test_stale_or_foreign_index_file_is_reconciled(tmp_path):
    with AdapterStore(tmp_path) as store:
        recs = [put(store, i) for i in range(6)]
    stale = (tmp_path / "index.faiss").read_bytes()
    with AdapterStore(tmp_path) as store:
        recs += [put(store, i) for i in range(6, 9)]
        for r in recs[:3]:
            store.delete(r.id)
    (tmp_path / "index.faiss").write_bytes(stale)  # knows 0-5 (3 of them deleted since), not 6-8
    with AdapterStore(tmp_path) as store:
        assert store.integrity_check() == []
        assert all_labels(store) == {row_seq(store, r.id) for r in recs[3:]}
        assert all(top_id(store, i) == recs[i].id for i in range(3, 9))
        assert all(top_id(store, i) != recs[i].id for i in range(3))
    with AdapterStore(tmp_path / "other") as other:
        put(other, 50)
    shutil.copy(tmp_path / "other" / "index.faiss", tmp_path / "index.faiss")  # another store's index
    with AdapterStore(tmp_path) as store:
        assert all_labels(store) == {row_seq(store, r.id) for r in recs[3:]}
        assert store.integrity_check() == []


def test_integrity_check_finds_damage(tmp_path):
    with AdapterStore(tmp_path) as store:
        recs = [put(store, i) for i in range(3)]
        assert store.integrity_check() == []
        (recs[0].path / "adapter_model.safetensors").unlink()
        (tmp_path / "adapters" / "stray").mkdir()
        store._conn().execute("UPDATE totals SET n = n + 5")
        problems = store.integrity_check()
        assert any(recs[0].id in p and "missing" in p for p in problems)
        assert any("stray" in p and "no row" in p for p in problems)
        assert any("totals" in p for p in problems)
        with store._index_lock:  # drop a key from the in-memory index behind the store's back
            seq = row_seq(store, recs[1].id)
            next(iter(store._scopes.values())).remove(np.array([seq]))
        assert any(recs[1].id in p and "not in the index" in p for p in store.integrity_check())
        store.rebuild_index()
        assert not any("index" in p for p in store.integrity_check())


def test_hnsw_scopes_tombstone_zero_and_compact(tmp_path):
    scope = ("task", BASE, "tenant")
    with AdapterStore(tmp_path, index_factory="HNSW16", ann_min=20) as store:
        recs = [put(store, i) for i in range(30)]
        index = store._scopes[scope]
        assert not index.exact and index.hnsw is not None  # switched from exact at 20 keys
        assert all(top_id(store, i) == r.id for i, r in enumerate(recs))
        seq0 = row_seq(store, recs[0].id)
        assert np.allclose(index.index.reconstruct(seq0), key(0))
        store.delete(recs[0].id)
        assert index.tombstones == {seq0}
        assert np.all(index.index.reconstruct(seq0) == 0.0)  # the key's vector is gone, not only filtered
        assert top_id(store, 0) != recs[0].id
        assert len(store.search(key(0), kind="task", base_model=BASE, owner="tenant", k=40)) == 29
    with AdapterStore(tmp_path, index_factory="HNSW16", ann_min=20) as store:  # tombstones survive the file
        index = store._scopes[scope]
        assert not index.exact and len(index.tombstones) == 1 and top_id(store, 0) != recs[0].id
        for r in recs[1:4]:  # 4 tombstones of 30 > 10%: the scope is rebuilt without them
            store.delete(r.id)
        index = store._scopes[scope]
        assert index.tombstones == set() and index.index.ntotal == 26
        assert all(top_id(store, i) == recs[i].id for i in range(4, 30))
        assert store.integrity_check() == []


def test_ivf_scope_really_removes(tmp_path):
    config = IndexConfig(dim=32, factory="IVF4,Flat", ann_min=10)
    assert config.ann_at == 4 * 39
    index = ScopeIndex(config)
    keys = np.stack([key(i, 32) for i in range(200)])
    index.rebuild(np.arange(1000, 1200), keys)
    assert index.ivf is not None and len(index) == 200
    assert index.remove(np.arange(1000, 1010)) == 10
    assert len(index) == 190 and index.index.ntotal == 190
    assert set(index.labels().tolist()) == set(range(1010, 1200))
    _, labels = index.search(keys[:20], 1)
    assert labels[10:, 0].tolist() == list(range(1010, 1020)) and not set(labels[:10, 0]) & set(range(1000, 1010))


def test_bad_inputs_raise_clear_errors(tmp_path):
    with AdapterStore(tmp_path) as store:
        rec = put(store, 1, adapter_id="my-adapter.v1")
        with pytest.raises(AdapterExists, match="my-adapter.v1"):
            put(store, 2, adapter_id="my-adapter.v1")
        with pytest.raises(ValueError, match="adapter id"):
            put(store, 3, adapter_id="../escape")
        with pytest.raises(ValueError, match="384"):
            store.put(small_adapter(4), kind="task", owner="t", context_hash="h", key=np.ones(10))
        with pytest.raises(ValueError, match="non-zero"):
            store.put(small_adapter(4), kind="task", owner="t", context_hash="h", key=np.zeros(384))
        with pytest.raises(ValueError, match="owner"):
            store.put(small_adapter(4), kind="task", owner="", context_hash="h", key=key(4))
        with pytest.raises(ValueError, match="JSON"):
            put(store, 5, metadata={"x": object()})
        with pytest.raises(AdapterNotFound, match="nope"):
            store.load("nope")
        assert store.count() == 1 and store.get(rec.id) is not None
        assert store.integrity_check() == []
    with pytest.raises(ValueError, match="dimensions"):
        AdapterStore(tmp_path, dim=128)
    with pytest.raises(ValueError, match="factory"):
        AdapterStore(tmp_path / "x", index_factory="NotAnIndex")
    with pytest.raises(ValueError, match="factory"):
        AdapterStore(tmp_path / "y", index_factory="PQ8")


# ------------------------------------------------------------------------------------------------ concurrency and crashes
def test_threads_insert_and_search_without_losing_or_duplicating(tmp_path):
    writers, per_writer = 4, 20
    errors: list[BaseException] = []
    done = threading.Event()
    with AdapterStore(tmp_path) as store:
        made: list[str] = []
        lock = threading.Lock()

        def write(w: int) -> None:
            try:
                for i in range(per_writer):
                    rec = put(store, w * 1000 + i, owner=f"o{w % 2}")
                    with lock:
                        made.append(rec.id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def read(r: int) -> None:
            rng = random.Random(r)
            try:
                while not done.is_set():
                    w = rng.randrange(writers)
                    seed = w * 1000 + rng.randrange(per_writer)
                    found = store.search(key(seed), kind="task", base_model=BASE, owner=f"o{w % 2}", k=3)
                    assert all(rec.owner == f"o{w % 2}" for rec, _ in found)
                    store.find_exact(kind="task", base_model=BASE, owner=f"o{w % 2}", context_hash=f"hash-{seed}")
                    store.list(limit=5)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        readers = [threading.Thread(target=read, args=(r,)) for r in range(3)]
        for t in threads + readers:
            t.start()
        for t in threads:
            t.join()
        done.set()
        for t in readers:
            t.join()
        assert errors == []
        assert len(made) == len(set(made)) == writers * per_writer
        assert store.count() == writers * per_writer
        assert {r.id for r in store.list(limit=1000)} == set(made)
        labels = [int(x) for ls in store.index_labels().values() for x in ls]
        assert len(labels) == len(set(labels)) == writers * per_writer
        for w in range(writers):
            for i in range(per_writer):
                assert top_id(store, w * 1000 + i, owner=f"o{w % 2}") is not None
        assert store.integrity_check() == []


def test_other_process_falls_behind_trimmed_deletion_log(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "KEEP_DELETED", 2)
    a, b = AdapterStore(tmp_path), AdapterStore(tmp_path)
    try:
        recs = [put(a, i) for i in range(8)]
        assert top_id(b, 0) == recs[0].id
        for r in recs[:5]:
            a.delete(r.id)  # the log keeps only the last 2 deletions: b must notice and reconcile
        assert int(a._conn().execute("SELECT value FROM meta WHERE name='deleted_trimmed'").fetchone()[0]) > 0
        assert all_labels(b) == {row_seq(b, r.id) for r in recs[5:]}
        assert b.integrity_check() == []
    finally:
        a.close()
        b.close()


CHILD = r"""
import sys
import numpy as np, torch
from hyperadapter.adapter import Adapter
from hyperadapter.retrieval.store import AdapterStore

root, owner, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = AdapterStore(root)
for seed in range(start, start + count):
    g = torch.Generator().manual_seed(seed)
    weights = {f"model.layers.{i}.mlp.down_proj": (torch.randn(8, 256, generator=g), torch.randn(128, 8, generator=g))
               for i in range(4)}
    k = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    rec = store.put(Adapter(weights, 16.0, "test-base"), kind="task", owner=owner, context_hash=f"hash-{seed}", key=k)
    print(rec.id, seed, flush=True)  # acknowledged: put has returned
store.close()
"""


def _spawn(tmp_path: Path, root: Path, owner: str, start: int, count: int) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(root), owner, str(start), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_sigkill_during_inserts_loses_no_acknowledged_adapter(tmp_path):
    root = tmp_path / "store"
    proc = _spawn(tmp_path, root, "tenant", 0, 100_000)
    acked: dict[str, int] = {}
    for line in proc.stdout:
        aid, seed = line.split()
        acked[aid] = int(seed)
        if len(acked) == 40:
            break
    time.sleep(random.uniform(0.0, 0.01))
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()  # reaps the child; lines it flushed before dying were acknowledged too
    for line in rest.splitlines():
        aid, seed = line.split()
        acked[aid] = int(seed)
    assert proc.returncode == -signal.SIGKILL

    with AdapterStore(root) as store:
        assert store.integrity_check() == []
        assert len(acked) <= store.count() <= len(acked) + 1  # at most the one whose put had not returned
        for aid, seed in acked.items():
            assert store.get(aid) is not None
            assert store.load(aid).weights["model.layers.0.mlp.down_proj"][0].shape == (8, 256)
            assert top_id(store, seed) == aid
        assert list((root / "staging").iterdir()) == []


def test_two_processes_insert_into_one_store(tmp_path):
    root = tmp_path / "store"
    with AdapterStore(root) as watcher:  # a third handle, open all along, follows both writers
        procs = [_spawn(tmp_path, root, f"p{n}", n * 1000, 25) for n in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err
        ids = [line.split()[0] for out, _ in outs for line in out.splitlines()]
        assert len(ids) == len(set(ids)) == 50
        assert watcher.count() == 50 and watcher.count(owner="p1") == 25
        assert all(top_id(watcher, n * 1000 + i, owner=f"p{n}") is not None for n in range(2) for i in range(25))
        assert len(all_labels(watcher)) == 50
        assert watcher.integrity_check() == []
