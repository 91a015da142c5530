import json
import shutil

import pytest
import torch

from hyperadapter.adapter import ROUTES_NAME, Adapter, AdapterError, Routes
from tests.conftest import make_adapter, relative_difference


def test_save_load_roundtrip_is_exact(base, tmp_path):
    adapter = make_adapter(base, 0)
    adapter.metadata["kind"] = "task"
    adapter.save(tmp_path / "a")
    loaded = Adapter.load(tmp_path / "a")
    assert loaded.alpha == adapter.alpha and loaded.rank == 8 and loaded.base_model == base.model_id
    assert loaded.metadata == adapter.metadata
    assert loaded.target_modules == ["q_proj", "v_proj"]
    for name, (a, b) in adapter.weights.items():
        assert torch.equal(loaded.weights[name][0], a) and torch.equal(loaded.weights[name][1], b)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16.0


def _with_routes(base, n: int = 3) -> Adapter:
    adapter = make_adapter(base, 0)
    parts = [make_adapter(base, 10 + i, rank=4, alpha=4.0).to(torch.float16) for i in range(n)]
    adapter.routes = Routes(parts, torch.nn.functional.normalize(torch.randn(n, 384), dim=-1))
    return adapter


def test_routes_travel_beside_the_peft_files_and_load_back_exactly(base, tmp_path):
    adapter = _with_routes(base)
    adapter.save(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                                  ROUTES_NAME]
    loaded = Adapter.load(tmp_path / "a")
    assert Routes.count(tmp_path / "a") == 3 and Routes.count(tmp_path) == 0
    assert torch.equal(loaded.routes.vectors, adapter.routes.vectors)
    for mine, back in zip(adapter.routes.adapters, loaded.routes.adapters):
        assert back.alpha == 4.0 and back.rank == 4 and back.base_model == base.model_id
        for name, (a, b) in mine.weights.items():
            assert torch.equal(back.weights[name][0], a) and torch.equal(back.weights[name][1], b)
        back.validate(base.linear_shapes(), base_model=base.model_id)
    assert loaded.nbytes == adapter.nbytes > make_adapter(base, 0).nbytes
    # the nearest sentence is the one whose vector the question lies closest to
    question = torch.nn.functional.normalize(adapter.routes.vectors[2] + 0.1 * adapter.routes.vectors[0], dim=0)
    index, cosine = loaded.routes.nearest(question)
    assert index == 2 and 0.9 < cosine < 1.0
    with pytest.raises(AdapterError, match="dimension 384"):
        loaded.routes.nearest(torch.ones(768))
    # one adapter without routes writes no routes file (and a save replaces an old one's)
    make_adapter(base, 1).save(tmp_path / "a")
    assert not (tmp_path / "a" / ROUTES_NAME).exists() and Adapter.load(tmp_path / "a").routes is None


def test_routes_keep_their_sentences_word_keys_and_weigh_them_beside_the_cosine(base, tmp_path):
    from hyperadapter.generator.routed import word_keys
    sentences = ["The mill was rebuilt by Ida Wren.", "The club plays in green shirts.", "The bakery sells rye bread."]
    adapter = _with_routes(base)
    adapter.routes.words = [word_keys(s) for s in sentences]
    adapter.save(tmp_path / "a")
    loaded = Adapter.load(tmp_path / "a").routes
    assert all(torch.equal(a, b) for a, b in zip(loaded.words, adapter.routes.words))
    # the question's embedding lies nearest sentence 0, its words are sentence 2's
    vectors = loaded.vectors
    question = torch.nn.functional.normalize(vectors[0] + 0.8 * vectors[2], dim=0)
    keys = word_keys("Which bread does the bakery sell?")
    assert loaded.nearest(question)[0] == 0 and loaded.nearest(question, keys, 0.0)[0] == 0
    index, cosine = loaded.nearest(question, keys, 2.0)
    assert index == 2 and cosine == pytest.approx(float(vectors[2] @ question), abs=1e-6)
    # words every sentence holds pick none of them; so do no words at all
    assert loaded.nearest(question, word_keys("the the the"), 2.0)[0] == 0
    assert loaded.nearest(question, word_keys("mill club bakery"), 2.0)[0] == 0
    # routes saved without words route by the cosine, whatever the weight
    adapter.routes.words = None
    adapter.save(tmp_path / "b")
    assert Adapter.load(tmp_path / "b").routes.words is None
    assert Adapter.load(tmp_path / "b").routes.nearest(question, keys, 2.0)[0] == 0


def test_word_keys_are_the_content_words_cut_short_and_stable():
    from hyperadapter.generator.routed import word_keys
    keys = word_keys("Who rebuilt the mill?")
    assert len(keys) == 2 and torch.equal(keys, word_keys("the MILL, rebuilding... who?"))
    assert keys.dtype == torch.int64 and torch.equal(keys, keys.sort().values)
    assert len(word_keys("what is the of")) == 0 and not torch.equal(keys, word_keys("Who rebuilt the mall?"))


def test_broken_routes_are_refused_with_their_reason(base, tmp_path):
    with pytest.raises(AdapterError, match="one sentence vector per adapter"):
        Routes([make_adapter(base, 1)], torch.zeros(2, 384))
    _with_routes(base).save(tmp_path / "a")
    (tmp_path / "a" / ROUTES_NAME).write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="cannot read sentence routes"):
        Adapter.load(tmp_path / "a")
    with pytest.raises(AdapterError, match="cannot read sentence routes"):
        Routes.count(tmp_path / "a")
    with pytest.raises(AdapterError, match="one set of word keys per adapter"):
        Routes([make_adapter(base, 1)], torch.zeros(1, 384), [torch.zeros(2), torch.zeros(1)])
    routes = _with_routes(base).routes
    routes.words = [torch.arange(3), torch.arange(2), torch.arange(4)]
    tensors = {"vectors": routes.vectors, "words": torch.arange(9), "word_counts": torch.tensor([3, 2, 3])}
    (tmp_path / "r").mkdir()
    routes.save(tmp_path / "r")
    from safetensors.torch import load_file, save_file
    saved = load_file(tmp_path / "r" / ROUTES_NAME)
    save_file({**saved, **tensors}, tmp_path / "r" / ROUTES_NAME, metadata={"lora_alpha": "4.0"})
    with pytest.raises(AdapterError, match="word keys that do not match its 3 routes"):
        Routes.load(tmp_path / "r" / ROUTES_NAME, base.model_id)


def _grown(routes: Routes, base, seed: int, keep: int = 100) -> Routes:
    """`routes` joined with one new route (made from `seed`), the most recent `keep`."""
    new = Routes([make_adapter(base, seed, rank=4, alpha=4.0).to(torch.float16)],
                 torch.nn.functional.normalize(torch.randn(1, 384), dim=-1), [torch.tensor([seed])])
    return Routes.joined(routes, new, keep)


def _same_routes(a: Routes, b: Routes) -> bool:
    return (torch.equal(a.vectors, b.vectors) and all(torch.equal(x, y) for x, y in zip(a.words, b.words, strict=True))
            and all(torch.equal(x.weights[m][i], y.weights[m][i]) for x, y in zip(a.adapters, b.adapters, strict=True)
                    for m in x.weights for i in (0, 1)))


def test_a_grown_routes_links_the_files_its_predecessor_wrote_and_writes_only_the_new(base, tmp_path):
    adapter = _with_routes(base, 2)
    adapter.routes.words = [torch.tensor([0]), torch.tensor([1])]
    adapter.save(tmp_path / "0")
    inodes = {}
    for step in range(1, 8):  # one route more each time, as a user's messages arrive one by one
        before = Adapter.load(tmp_path / str(step - 1))
        adapter.routes = _grown(before.routes, base, 100 + step)
        adapter.save(tmp_path / str(step))
        loaded = Adapter.load(tmp_path / str(step))
        assert _same_routes(loaded.routes, adapter.routes) and Routes.count(tmp_path / str(step)) == 2 + step
        files = sorted((tmp_path / str(step)).glob("adapter_routes*.safetensors"))
        inodes[step] = {f.stat().st_ino for f in files}
        # files hold routes as a binary counter's digits: [2, 1], [4], [4, 1], [4, 2], [4, 2, 1], [8], [8, 1]
        assert [f.count for f in loaded.routes.files] == [[2, 1], [4], [4, 1], [4, 2], [4, 2, 1], [8], [8, 1]][step - 1]
    assert inodes[7] & inodes[6] and inodes[5] & inodes[4]  # the unmerged files are linked, not written again
    for step in range(7):
        shutil.rmtree(tmp_path / str(step))
    assert _same_routes(Adapter.load(tmp_path / "7").routes, adapter.routes)  # a link outlives the old folder


def test_dropping_the_oldest_routes_skips_them_in_a_linked_file_and_a_lost_file_is_written_again(base, tmp_path):
    adapter = _with_routes(base, 4)
    adapter.routes.words = [torch.tensor([i]) for i in range(4)]
    adapter.save(tmp_path / "a")
    adapter.routes = _grown(Adapter.load(tmp_path / "a").routes, base, 50, keep=4)  # the oldest one dropped
    adapter.save(tmp_path / "b")
    listed = json.loads((tmp_path / "b" / "adapter_routes.json").read_text())["parts"]
    assert listed == [{"file": ROUTES_NAME, "skip": 1, "count": 3}, {"file": "adapter_routes.1.safetensors",
                                                                      "skip": 0, "count": 1}]
    assert (tmp_path / "b" / ROUTES_NAME).stat().st_ino == (tmp_path / "a" / ROUTES_NAME).stat().st_ino
    loaded = Adapter.load(tmp_path / "b").routes
    assert _same_routes(loaded, adapter.routes) and Routes.count(tmp_path / "b") == 4
    assert [int(w) for w in loaded.words] == [1, 2, 3, 50]
    # the predecessor deleted before the save: its routes are written from memory instead
    grown = _grown(loaded, base, 60, keep=4)
    shutil.copytree(tmp_path / "b", tmp_path / "d")
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    adapter.routes = grown
    adapter.save(tmp_path / "c")
    assert _same_routes(Adapter.load(tmp_path / "c").routes, grown)
    # a list that names a file outside the folder's routes, or says a file holds what it does not, is refused
    listing = tmp_path / "d" / "adapter_routes.json"
    parts = json.loads(listing.read_text())["parts"]
    for bad, reason in (([{**parts[0], "file": "../../adapter_model.safetensors"}] + parts[1:], "parts must be"),
                        ([{**parts[0], "count": parts[0]["count"] + 1}] + parts[1:], "is listed with"),
                        ("not json", "not a list of routes files")):
        listing.write_text(bad if isinstance(bad, str) else json.dumps({"parts": bad}))
        with pytest.raises(AdapterError, match=reason):
            Adapter.load(tmp_path / "d")
        with pytest.raises(AdapterError, match=reason):
            Routes.count(tmp_path / "d")


def test_save_replaces_atomically_and_leaves_no_temp(base, tmp_path):
    make_adapter(base, 0).save(tmp_path / "a")
    make_adapter(base, 1).save(tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert Adapter.load(tmp_path / "a").metadata["seed"] == "1"


def _first(adapter):
    return next(iter(adapter.weights))


@pytest.mark.parametrize("breakage, message", [
    (lambda ad, m: ad.weights.__setitem__(m, (ad.weights[m][0][:, :100], ad.weights[m][1])), "do not fit"),
    (lambda ad, m: ad.weights.__setitem__("model.layers.0.self_attn.nope_proj", ad.weights[m]), "no such linear module"),
    (lambda ad, m: ad.weights[m][0].__setitem__((0, 0), float("nan")), "NaN or Inf"),
    (lambda ad, m: ad.weights[m][1].__setitem__((0, 0), float("inf")), "NaN or Inf"),
    (lambda ad, m: setattr(ad, "base_model", "someone/else"), "made for base model"),
    (lambda ad, m: ad.weights.__setitem__(m, (torch.zeros(300, ad.weights[m][0].shape[1]),
                                              torch.zeros(ad.weights[m][1].shape[0], 300))), "rank 300"),
    (lambda ad, m: ad.weights.__setitem__(m, (ad.weights[m][0], ad.weights[m][1][:, :4])), "has 4"),
    (lambda ad, m: setattr(ad, "alpha", -1.0), "lora_alpha"),
])
def test_validation_names_the_problem(base, breakage, message):
    adapter = make_adapter(base, 0)
    breakage(adapter, _first(adapter))
    with pytest.raises(AdapterError, match=message):
        adapter.validate(base.linear_shapes(), base_model=base.model_id)


def test_load_rejects_broken_folders(base, tmp_path):
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        Adapter.load(tmp_path)
    make_adapter(base, 0).save(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="cannot read safetensors"):
        Adapter.load(tmp_path / "a")
    make_adapter(base, 0).save(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="DoRA"):
        Adapter.load(tmp_path / "b")


def test_combine_is_the_weighted_sum_and_compress_keeps_the_best_rank(base):
    a, b = make_adapter(base, 1), make_adapter(base, 2)
    m = _first(a)
    combined = Adapter.combine([(a, 0.25), (b, 0.75)])
    expected = 0.25 * a.delta_weight(m) + 0.75 * b.delta_weight(m)
    assert torch.allclose(combined.delta_weight(m), expected, atol=1e-5)
    # compressing to the full rank keeps the update; to a lower rank it matches the truncated SVD
    assert torch.allclose(combined.compressed(16).delta_weight(m), expected, atol=1e-4)
    u, s, vh = torch.linalg.svd(expected)
    best4 = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose(combined.compressed(4).delta_weight(m), best4, atol=1e-4)


def test_compress_all_is_each_ones_best_approximation_also_when_its_slots_coincide(base):
    plain = make_adapter(base, 3)
    collapsed = make_adapter(base, 4)  # every slot the same row and column, as the shipped generator writes them
    for module, (a, b) in collapsed.weights.items():
        collapsed.weights[module] = (a[:1].repeat(8, 1), b[:, :1].repeat(1, 8))
    for rank in (1, 4):
        together = Adapter.compress_all([plain, collapsed], rank, torch.float16)
        for adapter, made in zip((plain, collapsed), together):
            assert made.rank == rank and made.alpha == rank
            for m in adapter.weights:
                assert made.weights[m][0].dtype == torch.float16
                full = adapter.delta_weight(m)
                u, s, vh = torch.linalg.svd(full)
                best = (u[:, :rank] * s[:rank]) @ vh[:rank]
                assert torch.isfinite(made.delta_weight(m)).all()
                assert relative_difference(made.delta_weight(m), best) < 2e-3, (rank, m)
    # a rank-1 update loses nothing at rank 1
    m = _first(collapsed)
    one = Adapter.compress_all([collapsed], 1)[0]
    assert relative_difference(one.delta_weight(m), collapsed.delta_weight(m)) < 1e-4


def test_best_rank_one_matches_the_svd_with_a_clear_top_direction_and_without_one():
    from hyperadapter.adapter import best_rank
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 48, 8, generator=g))
    v, _ = torch.linalg.qr(torch.randn(6, 64, 8, generator=g))
    # top singular value far ahead (the generator's updates), then two equal, then close ones, then none at all
    spectra = torch.tensor([[1, 1e-3, 1e-4, 0, 0, 0, 0, 0], [1, 1, 0.2, 0, 0, 0, 0, 0],
                            [1, 0.999, 0.5, 0.1, 0, 0, 0, 0], [1, 0.5, 0.25, 0.1, 0.05, 0, 0, 0],
                            [2, 1, 1, 1, 1, 1, 1, 1], [0] * 8], dtype=torch.float)
    b, a = u * spectra[:, None, :], v.mT  # b @ a = u diag(s) v^T
    one_a, one_b = best_rank(a, b, 1)
    assert one_a.shape == (6, 1, 64) and one_b.shape == (6, 48, 1)
    made, full = one_b @ one_a, b @ a
    for i in range(6):
        best_error = spectra[i, 1:].pow(2).sum().sqrt()  # Eckart-Young: the rest of the spectrum
        assert (made[i] - full[i]).norm() == pytest.approx(float(best_error), abs=1e-4), i
    assert torch.allclose(made[0], spectra[0, 0] * u[0, :, :1] @ v[0, :, :1].mT, atol=1e-5)
    assert torch.equal(made[5], torch.zeros(48, 64))
