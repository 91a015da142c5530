"""Adapter cache benchmark: key search at scale (exact flat vs HNSW) and end-to-end cache hits.

    python benchmarks/cache.py                          # 10k, 100k and 1M keys (several minutes: HNSW build)
    python benchmarks/cache.py --quick                  # 10k keys, fewer queries and adapters
    python benchmarks/cache.py --sizes 10000,100000 --queries 500

Part 1, search: synthetic 384-dim unit keys drawn like sentence embeddings (clusters around random
centres, cosine ~0.5 within a cluster, plus a shared direction). Two query sets: "fresh" = new points
from the same distribution (a cache miss; the hard case for ANN), "near" = a stored key moved to cosine
0.97 (the near-hit case). Both indexes run through `ScopeIndex.search`, the code path the store uses;
latency is one query at a time on one thread (p50/p99), recall@1 is against exact flat search. HNSW is
swept over efSearch; its summary row is the first efSearch whose recall@1 reaches the target on both
query sets. The keys are hard for a graph index on purpose: within a cluster every key is at nearly the same
distance from every other (intrinsic dimension ~384), which real sentence embeddings are not.

Part 2, end to end: a real AdapterStore holding adapters made by the project's generator (SmolLM2-135M;
the shipped checkpoint, or an untrained generator of the same shape when none is shipped: generation
costs the same) for synthetic task descriptions, and the real sentence encoder. An exact hit is
`AdapterCache.get_or_create` (hash -> row -> hit count) + `AdapterStore.load`; a near hit (a paraphrase
of a stored context; threshold 0.9 so that each one is a hit) adds the encoder and the key search.
Loads are measured from the in-memory LRU and from disk.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.retrieval.index import IndexConfig, ScopeIndex  # noqa: E402

DIM = 384


def synthetic_keys(n: int, rng: np.random.Generator, centres: np.ndarray, shared: np.ndarray) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(len(centres), size=m)] + rng.standard_normal((m, DIM), dtype=np.float32) + shared
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def near_queries(keys: np.ndarray, count: int, rng: np.random.Generator, cos: float = 0.97) -> np.ndarray:
    base = keys[rng.integers(len(keys), size=count)]
    noise = rng.standard_normal(base.shape, dtype=np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to the key
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = base + np.sqrt(1 / cos**2 - 1) * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def single_thread(threads: int = 1) -> None:
    """Per-request latency is measured on one thread (a server runs requests side by side); idle OpenMP
    workers spinning next to a busy core otherwise turn microseconds into milliseconds."""
    import torch

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)


def latencies_ms(index: ScopeIndex, queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        index.search(q[None], 1)
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def recall(index: ScopeIndex, queries: np.ndarray, truth: np.ndarray) -> float:
    _, labels = index.search(queries, 1)
    return float((labels[:, 0] == truth).mean())


def bench_search(sizes: list[int], n_queries: int, ef_candidates: list[int], m: int, ef_construction: int,
                 target: float, threads: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        n_clusters = max(100, n // 1000)
        centres = rng.standard_normal((n_clusters, DIM), dtype=np.float32)
        shared = 1.5 * rng.standard_normal(DIM).astype(np.float32)
        keys = synthetic_keys(n, rng, centres, shared)
        labels = np.arange(n, dtype=np.int64)
        fresh = synthetic_keys(n_queries, rng, centres, shared)
        near = near_queries(keys, n_queries, rng)

        single_thread(threads)
        t = time.perf_counter()
        flat = ScopeIndex(IndexConfig(DIM, "Flat"))
        flat.rebuild(labels, keys)
        flat_build = time.perf_counter() - t
        truth_fresh = flat.search(fresh, 1)[1][:, 0]
        truth_near = flat.search(near, 1)[1][:, 0]
        flat_q = fresh[: n_queries if n <= 100_000 else min(n_queries, 200)]  # flat at 1M is ~50-100 ms a query
        single_thread()
        lat = latencies_ms(flat, flat_q)
        rows.append(dict(n=n, index="Flat (exact)", build=flat_build, p50=np.percentile(lat, 50),
                         p99=np.percentile(lat, 99), r_fresh=1.0, r_near=1.0, ef="-", nq=len(flat_q)))
        del flat

        single_thread(threads)
        t = time.perf_counter()
        hnsw = ScopeIndex(IndexConfig(DIM, f"HNSW{m}", ann_min=0, ef_construction=ef_construction,
                                      ef_search=ef_candidates[0]))
        hnsw.rebuild(labels, keys)
        hnsw_build = time.perf_counter() - t
        assert not hnsw.exact
        sweep = []
        for ef in ef_candidates:
            hnsw.set_search_params(ef_search=ef)
            single_thread(threads)
            r_fresh, r_near = recall(hnsw, fresh, truth_fresh), recall(hnsw, near, truth_near)
            single_thread()
            lat, lat_near = latencies_ms(hnsw, fresh), latencies_ms(hnsw, near)
            sweep.append(dict(ef=ef, r_fresh=r_fresh, r_near=r_near, p50=np.percentile(lat, 50),
                              p99=np.percentile(lat, 99), p99_near=np.percentile(lat_near, 99)))
        best = next((s for s in sweep if min(s["r_fresh"], s["r_near"]) >= target), sweep[-1])
        rows.append(dict(n=n, index=f"HNSW{m} efC={ef_construction}", build=hnsw_build, nq=len(fresh), sweep=sweep,
                         **best))
        del hnsw, keys
        print(f"  done {n:,} keys", file=sys.stderr, flush=True)
    return rows


TOPICS = ["shoes", "laptops", "hotel stays", "car insurance", "garden tools", "phone plans", "coffee machines",
          "concert tickets", "kitchen knives", "bicycles"]
LANGS = ["French", "German", "Spanish", "Italian", "Dutch", "Polish", "Greek", "Turkish", "Swedish", "Czech"]


def task_text(i: int) -> str:
    return (f"Task {i}: translate customer reviews of {TOPICS[i % 10]} from English into {LANGS[(i // 10) % 10]}, "
            f"keep the reviewer's tone, and answer with the translation only (variant {i // 100}).")


def paraphrase(i: int) -> str:
    return (f"Task {i}: please translate the customer reviews of {TOPICS[i % 10]} from English to "
            f"{LANGS[(i // 10) % 10]}, keeping the reviewer's tone; reply with only the translation (variant {i // 100}).")


def real_shaped_adapter(seed: int, base: str):
    import torch

    from hyperadapter.adapter import Adapter

    g = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.q_proj": (576, 576), "self_attn.v_proj": (576, 192), "mlp.down_proj": (1536, 576)}
    weights = {f"model.layers.{i}.{name}": (torch.randn(8, fin, generator=g) * 0.01, torch.randn(fout, 8, generator=g) * 0.01)
               for i in range(30) for name, (fin, fout) in shapes.items()}
    return Adapter(weights, alpha=16.0, base_model=base)


def load_generator(encoder):
    """The project's generator: the shipped checkpoint, else an untrained one of the same shape (same cost)."""
    try:
        from hyperadapter.base import load_base
        from hyperadapter.config import load_settings
        from hyperadapter.generator import Generator
    except ImportError as exc:
        return None, f"not available ({exc}); see benchmarks/generate_latency.py"
    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    if Path(settings.generator).is_dir():
        generator = Generator.from_pretrained(settings.generator, base, encoder)
        return generator, generator.name
    return Generator.fresh(base, encoder), "untrained (no checkpoint shipped yet; the same computation)"


def bench_end_to_end(n_adapters: int, n_queries: int) -> dict:
    from hyperadapter.embedding import SentenceEncoder
    from hyperadapter.retrieval import AdapterCache, AdapterStore

    owner = "bench"
    root = Path(tempfile.mkdtemp(prefix="hyperadapter-bench-"))
    out: dict = {}
    try:
        encoder = SentenceEncoder()
        texts = [task_text(i) for i in range(n_adapters)]
        keys = encoder.encode(texts).numpy()
        generator, out["generator"] = load_generator(encoder)
        single_thread()
        adapters, gen_ms = [], []
        for i, text in enumerate(texts):
            t = time.perf_counter()
            adapters.append(generator.generate_adapter(text, "task") if generator else
                            real_shaped_adapter(i, "HuggingFaceTB/SmolLM2-135M-Instruct"))
            gen_ms.append((time.perf_counter() - t) * 1e3)
        if generator:
            out["generate"] = np.array(gen_ms)
        base = adapters[0].base_model
        del generator

        def no_generation(kind: str, context: str):
            raise AssertionError("a cache hit must not generate")

        thresholds = {"task": 0.9, "document": 0.985, "demonstrations": 0.98, "conversation": 1.01}
        warm = AdapterStore(root, memory_cache_bytes=2 * 2**30)
        cold = AdapterStore(root, memory_cache_bytes=0)  # a second handle on the same store: every load from disk
        cache_warm = AdapterCache(warm, encoder, no_generation, thresholds)
        cache_cold = AdapterCache(cold, encoder, no_generation, thresholds)
        put_ms = []
        for i, (text, adapter) in enumerate(zip(texts, adapters)):
            t = time.perf_counter()
            warm.put(adapter, kind="task", owner=owner, context_hash=cache_warm.context_hash("task", text), key=keys[i])
            put_ms.append((time.perf_counter() - t) * 1e3)
        out["put"] = np.array(put_ms)
        out["adapter_mb"] = warm.total_bytes() / n_adapters / 2**20
        rng = np.random.default_rng(1)
        picks = rng.integers(n_adapters, size=n_queries)

        for cache, store, label in ((cache_warm, warm, "warm"), (cache_cold, cold, "cold")):
            for i in picks[:20]:  # warm-up: fill the LRU (warm) / the OS page cache (cold)
                store.load(cache.get_or_create("task", texts[i], owner=owner, base_model=base).record.id)
            lat, lookup, load = [], [], []
            for i in picks:
                t0 = time.perf_counter()
                res = cache.get_or_create("task", texts[i], owner=owner, base_model=base)
                t1 = time.perf_counter()
                store.load(res.record.id)
                t2 = time.perf_counter()
                assert res.how == "exact"
                lat.append((t2 - t0) * 1e3)
                lookup.append((t1 - t0) * 1e3)
                load.append((t2 - t1) * 1e3)
            out[f"exact_{label}"], out[f"exact_lookup_{label}"], out[f"load_{label}"] = map(np.array, (lat, lookup, load))

        lat, enc, srch, hows = [], [], [], []
        for i in picks:
            t0 = time.perf_counter()
            res = cache_warm.get_or_create("task", paraphrase(i), owner=owner, base_model=base)
            warm.load(res.record.id)
            lat.append((time.perf_counter() - t0) * 1e3)
            hows.append(res.how)
            t1 = time.perf_counter()
            key = encoder.encode([paraphrase(i)])[0]
            t2 = time.perf_counter()
            warm.search(key, kind="task", base_model=base, owner=owner)
            t3 = time.perf_counter()
            enc.append((t2 - t1) * 1e3)
            srch.append((t3 - t2) * 1e3)
        out["near"], out["encode"], out["search"] = map(np.array, (lat, enc, srch))
        out["near_fraction"] = hows.count("near") / len(hows)
        out["n_adapters"], out["n_queries"] = n_adapters, n_queries
        warm.close()
        cold.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated key counts")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", default="16,32,64,128,256,512,1024", help="efSearch values swept, in order")
    p.add_argument("--m", type=int, default=32, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--target-recall", type=float, default=0.99)
    p.add_argument("--adapters", type=int, default=200, help="real-shaped adapters stored for the end-to-end part")
    p.add_argument("--threads", type=int, default=2, help="threads for building indexes (latency is timed on one)")
    p.add_argument("--quick", action="store_true", help="10k keys, 300 queries, 50 adapters")
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.adapters = "10000", 300, 50
    single_thread(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    efs = [int(e) for e in args.ef.split(",")]

    print(f"# key search: {DIM}-dim unit keys, {args.queries} queries, built with {args.threads} threads, timed on 1, "
          f"recall@1 vs exact; HNSW row: the first efSearch of {efs} reaching {args.target_recall} on both query sets")
    rows = bench_search(sizes, args.queries, efs, args.m, args.ef_construction, args.target_recall, args.threads)
    print(f"{'keys':>9} | {'index':<20} | {'build s':>8} | {'efSearch':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
          f"{'R@1 fresh':>9} | {'R@1 near':>8} | {'queries':>7}")
    for r in rows:
        print(f"{r['n']:>9,} | {r['index']:<20} | {r['build']:>8.1f} | {r['ef']!s:>8} | {r['p50']:>7.3f} | "
              f"{r['p99']:>7.3f} | {r['r_fresh']:>9.4f} | {r['r_near']:>8.4f} | {r['nq']:>7}")
    print("\n# HNSW efSearch sweep (speed against recall@1)")
    print(f"{'keys':>9} | {'efSearch':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'p99 near':>8} | {'R@1 fresh':>9} | {'R@1 near':>8}")
    for r in rows[1::2]:
        for s in r["sweep"]:
            print(f"{r['n']:>9,} | {s['ef']:>8} | {s['p50']:>7.3f} | {s['p99']:>7.3f} | {s['p99_near']:>8.3f} | "
                  f"{s['r_fresh']:>9.4f} | {s['r_near']:>8.4f}")
    print("\n# ratios, flat / HNSW (same keys, same queries)")
    for flat, hnsw in zip(rows[::2], rows[1::2]):
        goal = "meets" if max(hnsw["p99"], hnsw["p99_near"]) <= 5.0 and min(hnsw["r_fresh"], hnsw["r_near"]) >= 0.99 \
            else "misses"
        print(f"{flat['n']:>9,} keys: p50 x{flat['p50'] / hnsw['p50']:.1f}, p99 x{flat['p99'] / hnsw['p99']:.1f} faster with HNSW; "
              f"HNSW efSearch {hnsw['ef']}: p99 {hnsw['p99']:.2f} ms (near queries {hnsw['p99_near']:.2f} ms), "
              f"recall@1 {hnsw['r_fresh']:.4f} / {hnsw['r_near']:.4f} (fresh / near): "
              f"{goal} the goal (p99 <= 5 ms, recall@1 >= 0.99)")

    if args.skip_e2e:
        return
    e = bench_end_to_end(args.adapters, args.queries)
    pct = lambda a, q: float(np.percentile(a, q))  # noqa: E731
    made = "made by the generator" if "generate" in e else "random, SmolLM2-135M shapes"
    print(f"\n# end to end: {e['n_adapters']} stored adapters ({made}, {e['adapter_mb']:.1f} MB each on disk), "
          f"{e['n_queries']} queries, real sentence encoder, one thread; generator: {e['generator']}")
    print(f"{'step':<52} | {'p50 ms':>7} | {'p99 ms':>7}")
    for label, arr in [("exact hit, adapter in memory (lookup + load)", e["exact_warm"]),
                       ("  lookup only (hash -> row -> hit count)", e["exact_lookup_warm"]),
                       ("exact hit, adapter read from disk (lookup + load)", e["exact_cold"]),
                       ("  load from disk only", e["load_cold"]),
                       (f"near hit (encode + search + load), {e['near_fraction']:.0%} near", e["near"]),
                       ("  encode one context (SentenceEncoder)", e["encode"]),
                       ("  key search in the store (sync + FAISS + row)", e["search"]),
                       ("put: save PEFT folder + fsync + row + index", e["put"])] + \
            ([("generate one adapter (task description, no cache)", e["generate"])] if "generate" in e else []):
        print(f"{label:<52} | {pct(arr, 50):>7.3f} | {pct(arr, 99):>7.3f}")
    goal = "meets" if pct(e["exact_warm"], 50) <= 5.0 else "misses"
    print(f"\nexact hit p50 {pct(e['exact_warm'], 50):.2f} ms (in memory) / {pct(e['exact_cold'], 50):.2f} ms (from disk): "
          f"{goal} the goal (<= 5 ms p50); a near hit is dominated by encoding ({pct(e['encode'], 50):.1f} ms)")
    if "generate" in e:
        gen = pct(e["generate"], 50)
        print(f"against generating the adapter ({gen:.1f} ms p50): exact hit x{gen / pct(e['exact_warm'], 50):,.0f} "
              f"(in memory), x{gen / pct(e['exact_cold'], 50):,.1f} (from disk); near hit x{gen / pct(e['near'], 50):,.1f}")
    else:
        print("generation: see benchmarks/generate_latency.py")


if __name__ == "__main__":
    main()
