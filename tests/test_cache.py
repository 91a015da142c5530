"""AdapterCache: exact / near / miss / forced miss, owner scoping, blending, batches and concurrent requests,
with the real sentence encoder and a real store."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import numpy as np
import pytest
import torch

from hyperadapter.adapter import Adapter
from hyperadapter.config import Settings
from hyperadapter.retrieval import AdapterCache, AdapterStore

BASE = "test-base"
FR_A = "Translate English to French."
FR_B = "Translate English into French."
NEWS = "Summarise the following news article in one sentence."
THRESHOLDS = {"task": 0.97, "document": 0.985, "demonstrations": 0.98, "conversation": 1.01}


@pytest.fixture(scope="module")
def encoder(sentence_encoder):  # the session's SentenceEncoder (conftest.py)
    return sentence_encoder


class CountingEncoder:
    """The real encoder, counting calls and texts."""

    def __init__(self, inner):
        self.inner, self.calls, self.texts = inner, 0, []

    def encode(self, texts):
        self.calls += 1
        self.texts += list(texts)
        return self.inner.encode(texts)


class Generator:
    """Makes a real (random, context-seeded) adapter and counts what it was asked for."""

    def __init__(self, base: str = BASE, delay: float = 0.0):
        self.base, self.delay, self.asked = base, delay, []
        self.lock = threading.Lock()

    def __call__(self, kind: str, context: str) -> Adapter:
        with self.lock:
            self.asked.append((kind, context))
        time.sleep(self.delay)
        g = torch.Generator().manual_seed(int(hashlib.sha256(context.encode()).hexdigest()[:8], 16))
        weights = {f"model.layers.{i}.self_attn.q_proj": (torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g))
                   for i in range(2)}
        return Adapter(weights, alpha=8.0, base_model=self.base)

    def many(self, pairs):
        with self.lock:
            self.batches = getattr(self, "batches", []) + [list(pairs)]
        return [self(kind, context) for kind, context in pairs]


def similarity(encoder, a: str, b: str) -> float:
    x, y = encoder.encode([a, b])
    return float(x @ y)


def test_exact_near_miss_and_forced_miss(tmp_path, encoder):
    sim = similarity(encoder, FR_A, FR_B)
    assert 0.9 < sim < 0.999
    gen = Generator()
    with AdapterStore(tmp_path) as store:
        cache = AdapterCache(store, encoder, gen, {**THRESHOLDS, "task": sim - 0.005})
        first = cache.get_or_create("task", FR_A, owner="t", base_model=BASE)
        assert (first.how, first.cache_hit, first.similarity, first.neighbour) == ("generated", False, None, None)
        assert gen.asked == [("task", FR_A)]

        again = cache.get_or_create("task", "  Translate   English to\nFrench. ", owner="t", base_model=BASE)
        assert (again.how, again.cache_hit, again.similarity) == ("exact", True, 1.0)
        assert again.record.id == first.record.id and store.get(first.record.id).hits == 1

        near = cache.get_or_create("task", FR_B, owner="t", base_model=BASE)
        assert (near.how, near.cache_hit, near.neighbour) == ("near", True, first.record.id)
        assert near.record.id == first.record.id and near.similarity == pytest.approx(sim, abs=1e-4)
        assert len(gen.asked) == 1 and store.get(first.record.id).hits == 2

        other = cache.get_or_create("task", NEWS, owner="t", base_model=BASE)
        assert other.how == "generated" and other.record.id != first.record.id and len(gen.asked) == 2

        forced = cache.get_or_create("task", FR_A, owner="t", base_model=BASE, reuse=False)
        assert forced.how == "generated" and not forced.cache_hit and forced.record.id != first.record.id
        assert len(gen.asked) == 3
        assert cache.get_or_create("task", FR_A, owner="t", base_model=BASE).record.id == forced.record.id  # newest wins

        strict = AdapterCache(store, encoder, gen, {**THRESHOLDS, "task": sim + 0.005})
        miss = strict.get_or_create("task", FR_B, owner="t", base_model=BASE)  # just below the threshold: a miss
        assert miss.how == "generated" and len(gen.asked) == 4
        assert store.count() == 4 and store.integrity_check() == []


def test_owner_and_base_model_scoping(tmp_path, encoder):
    gen = Generator()
    with AdapterStore(tmp_path) as store:
        cache = AdapterCache(store, encoder, gen, THRESHOLDS)
        alice = cache.get_or_create("task", FR_A, owner="tenant/user/alice", base_model=BASE)
        bob = cache.get_or_create("task", FR_A, owner="tenant/user/bob", base_model=BASE)
        shared = cache.get_or_create("task", FR_A, owner="tenant", base_model=BASE)
        assert bob.how == shared.how == "generated" and len({alice.record.id, bob.record.id, shared.record.id}) == 3
        assert cache.get_or_create("task", FR_B, owner="tenant/user/bob", base_model=BASE).record.id == bob.record.id
        assert cache.get_or_create("task", FR_A, owner="tenant/user/alice", base_model=BASE).record.id == alice.record.id
        assert cache.get_or_create("document", FR_A, owner="tenant", base_model=BASE).how == "generated"

        other = AdapterCache(store, encoder, Generator(base="other-base"), THRESHOLDS)
        assert other.get_or_create("task", FR_A, owner="tenant", base_model="other-base").how == "generated"
        with pytest.raises(ValueError, match="base model"):
            other.get_or_create("task", NEWS, owner="tenant", base_model=BASE)  # generator made the wrong base
        with pytest.raises(ValueError, match="unknown adapter kind"):
            cache.get_or_create("poem", FR_A, owner="tenant", base_model=BASE)
        with pytest.raises(ValueError, match="non-empty"):
            cache.get_or_create("task", "   ", owner="tenant", base_model=BASE)


def test_conversation_threshold_above_one_only_reuses_exact(tmp_path, encoder):
    with AdapterStore(tmp_path) as store:
        cache = AdapterCache(store, encoder, Generator(), THRESHOLDS)
        chat = "user: hi, I like hiking\nassistant: nice!"
        a = cache.get_or_create("conversation", chat, owner="u", base_model=BASE)
        assert cache.get_or_create("conversation", chat, owner="u", base_model=BASE).how == "exact"
        assert cache.get_or_create("conversation", chat + " ", owner="u", base_model=BASE).record.id == a.record.id
        assert cache.get_or_create("conversation", chat + "\nuser: and swimming", owner="u",
                                   base_model=BASE).how == "generated"


def test_long_documents_get_pooled_keys(tmp_path, encoder):
    sentences = [f"Section {i}: the {['river', 'castle', 'market', 'harbour'][i % 4]} of the old town was rebuilt in "
                 f"{1700 + 13 * i} after the {['flood', 'fire', 'war', 'storm'][i % 4]}, and its records list {i * 7} "
                 "workers, their wages and the stone they used." for i in range(30)]
    doc = " ".join(sentences)  # ~900 tokens: several encoder windows, pooled
    edited = " ".join(sentences[:-1] + ["Section 29: the harbour was left as it was."])
    unrelated = "Recipes: " + " ".join(f"Step {i}: whisk {i} eggs with sugar and bake for {10 + i} minutes." for i in range(40))
    gen = Generator()
    with AdapterStore(tmp_path) as store:
        cache = AdapterCache(store, encoder, gen, THRESHOLDS)
        first = cache.get_or_create("document", doc, owner="t", base_model=BASE)
        near = cache.get_or_create("document", edited, owner="t", base_model=BASE)
        assert near.how == "near" and near.record.id == first.record.id and near.similarity >= 0.985
        assert cache.get_or_create("document", unrelated, owner="t", base_model=BASE).how == "generated"
        assert len(gen.asked) == 2


def test_blend_composes_neighbours_weighted_by_similarity(tmp_path, encoder):
    query = "Translate English sentences to French, please."
    gen = Generator()
    with AdapterStore(tmp_path) as store:
        plain = AdapterCache(store, encoder, gen, {**THRESHOLDS, "task": 0.9999})
        a = plain.get_or_create("task", FR_A, owner="t", base_model=BASE)
        b = plain.get_or_create("task", FR_B, owner="t", base_model=BASE)
        s_a, s_b = similarity(encoder, query, FR_A), similarity(encoder, query, FR_B)
        floor = min(s_a, s_b) - 0.05

        cache = AdapterCache(store, encoder, gen, {**THRESHOLDS, "task": 0.9999}, blend_k=2,
                             blend_min_similarity=floor, blend_rank=8)  # 2 x rank 4: the exact weighted sum
        asked = len(gen.asked)
        blend = cache.get_or_create("task", query, owner="t", base_model=BASE)
        assert (blend.how, blend.cache_hit) == ("blend", False) and len(gen.asked) == asked
        best, s_best = (a, s_a) if s_a >= s_b else (b, s_b)
        assert blend.neighbour == best.record.id and blend.similarity == pytest.approx(s_best, abs=1e-4)
        assert {i for i, _ in blend.record.metadata["blend_of"]} == {a.record.id, b.record.id}
        module = "model.layers.1.self_attn.q_proj"
        expected = (s_a * store.load(a.record.id).delta_weight(module)
                    + s_b * store.load(b.record.id).delta_weight(module)) / (s_a + s_b)
        got = store.load(blend.record.id).delta_weight(module)
        assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))
        again = cache.get_or_create("task", query, owner="t", base_model=BASE)
        assert again.as_dict() | {"path": None} == {"id": blend.record.id, "cache_hit": True, "similarity": 1.0,
                                                    "neighbour": blend.record.id, "how": "exact", "kind": "task",
                                                    "rank": 8, "path": None}

        other = "Please translate these English sentences into French."  # neighbours all below the blend floor
        top = store.search(cache._encode([other])[0], kind="task", base_model=BASE, owner="t", k=3)
        none_close = AdapterCache(store, encoder, gen, {**THRESHOLDS, "task": 0.9999}, blend_k=3,
                                  blend_min_similarity=top[0][1] + 0.001)
        assert none_close.get_or_create("task", other, owner="t", base_model=BASE).how == "generated"
        assert len(gen.asked) == asked + 1
        assert store.integrity_check() == []


def test_get_or_create_many_batches_and_dedups(tmp_path, encoder):
    sim = similarity(encoder, FR_A, FR_B)
    gen = Generator()
    counting = CountingEncoder(encoder)
    with AdapterStore(tmp_path) as store:
        cache = AdapterCache(store, counting, gen, {**THRESHOLDS, "task": sim - 0.005})
        old = cache.get_or_create("task", FR_A, owner="t", base_model=BASE)
        counting.calls, counting.texts = 0, []
        new1, new2 = "Classify the sentiment of a movie review.", "Extract every date mentioned in the text."
        items = [("task", FR_A), ("task", new1), ("document", new2), ("task", new1 + "  "), ("task", FR_B)]
        results = cache.get_or_create_many(items, owner="t", base_model=BASE, generate_many=gen.many)
        assert [r.how for r in results] == ["exact", "generated", "generated", "generated", "near"]
        assert results[3] is results[1] and results[4].record.id == old.record.id
        assert gen.batches == [[("task", new1), ("document", new2)]]
        assert counting.calls == 1 and len(counting.texts) == 3  # one batched encode, exact hits skip it
        assert store.count() == 3

        again = cache.get_or_create_many(items[:3], owner="t", base_model=BASE)
        assert [r.how for r in again] == ["exact"] * 3

        forced = cache.get_or_create_many([("task", new1), ("task", new1)], owner="t", base_model=BASE, reuse=False,
                                          generate_many=gen.many)
        assert gen.batches[-1] == [("task", new1)] and forced[0].record.id == forced[1].record.id
        assert forced[0].record.id != results[1].record.id and store.count() == 4
        assert store.integrity_check() == []


def test_concurrent_requests_for_one_context_generate_once(tmp_path, encoder):
    gen = Generator(delay=0.05)  # a slow generator widens the race window
    contexts = [FR_A, NEWS, "Answer questions about the French revolution."]
    errors: list[BaseException] = []
    results: dict[str, set[str]] = {c: set() for c in contexts}
    with AdapterStore(tmp_path) as store:
        cache = AdapterCache(store, encoder, gen, THRESHOLDS)

        def worker(seed: int) -> None:
            order = contexts * 2
            random.Random(seed).shuffle(order)
            try:
                for context in order:
                    res = cache.get_or_create("task", context, owner="t", base_model=BASE)
                    results[context].add(res.record.id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(c for _, c in gen.asked) == sorted(contexts)  # each generated exactly once
        assert all(len(ids) == 1 for ids in results.values()) and store.count() == 3
        assert store.integrity_check() == []


def test_context_hash_normalisation():
    cache = AdapterCache.__new__(AdapterCache)
    h = cache.context_hash
    assert h("task", "Caf\u00e9  au lait\n") == h("task", "Cafe\u0301 au lait")  # NFC + whitespace
    assert h("task", "abc") != h("document", "abc")
    assert h("task", "abc") != h("task", "ABC")
    assert len(h("task", "abc")) == 64


def test_from_settings(tmp_path, encoder):
    settings = Settings(data_root=tmp_path, cache_threshold_task=0.9, cache_blend_k=3, cache_max_adapters=7)
    with AdapterStore.from_settings(settings) as store:
        assert store.root == tmp_path / "store" and store.max_adapters == 7
        cache = AdapterCache.from_settings(settings, store, encoder, Generator())
        assert cache.thresholds["task"] == 0.9 and cache.thresholds["conversation"] == 1.01 and cache.blend_k == 3
        assert set(cache.thresholds) == {"task", "document", "demonstrations", "conversation"}
        key = np.asarray(cache._encode([FR_A])[0])
        assert key.shape == (384,) and abs(float(np.linalg.norm(key)) - 1.0) < 1e-5


def test_encoder_remembers_texts_it_has_embedded(encoder, monkeypatch):
    """A context is embedded for the cache key and again as a generator feature: the second time (and
    any whitespace variant) must not run the model, and must give the same vector as a fresh encode."""
    from hyperadapter.embedding import SentenceEncoder
    text = "A remembered paragraph about lighthouses and their keepers, number 41872."
    fresh = SentenceEncoder._encode(encoder, [text], 8)[0]
    runs = []
    real = SentenceEncoder._encode
    monkeypatch.setattr(SentenceEncoder, "_encode", lambda self, texts, bs: runs.append(list(texts)) or real(self, texts, bs))
    first = encoder.encode([text, text])
    again = encoder.encode([text.replace(" ", "  \n"), "something else entirely"])
    assert runs == [[text], ["something else entirely"]]  # each new text once, the variant remembered
    assert torch.equal(first[0], first[1]) and torch.equal(again[0], first[0])
    assert torch.allclose(first[0], fresh, atol=1e-6)


def test_adapters_of_an_earlier_generator_are_not_reused(tmp_path, encoder):
    """After an upgrade (another maker), neither the exact context nor a near one reuses the old
    generator's adapters; the old generator still finds its own, and maker=None sees everything."""
    with AdapterStore(tmp_path) as store:
        old_gen, new_gen = Generator(), Generator()
        old = AdapterCache(store, encoder, old_gen, THRESHOLDS, maker="gen@aaaa")
        made = old.get_or_create("task", FR_A, owner="t", base_model=BASE)
        new = AdapterCache(store, encoder, new_gen, THRESHOLDS, maker="gen@bbbb")
        exact = new.get_or_create("task", FR_A, owner="t", base_model=BASE)
        near = new.get_or_create("task", FR_B, owner="t", base_model=BASE)
        assert exact.how == "generated" and exact.record.id != made.record.id
        assert near.how == "near" and near.record.id == exact.record.id  # its own, not the old one
        assert [c for _, c in new_gen.asked] == [FR_A]
        assert old.get_or_create("task", FR_A, owner="t", base_model=BASE).record.id == made.record.id
        assert store.get(made.record.id).metadata["maker"] == "gen@aaaa"
        anyone = AdapterCache(store, encoder, Generator(), THRESHOLDS)
        assert anyone.get_or_create("task", FR_A, owner="t", base_model=BASE).cache_hit
