"""Personal adapters: a user's streaming state survives restarts, and a state written by another
generator (the checkpoint was replaced) is never reused: the history is read again."""

from __future__ import annotations

import json

import torch

from hyperadapter.adapter import ROUTES_NAME
from hyperadapter.api.users import Users
from hyperadapter.generator import Generator
from hyperadapter.retrieval.store import AdapterStore
from tests.conftest import perturb_generator


def test_a_replaced_generator_rereads_the_history(base, sentence_encoder, tmp_path):
    first = perturb_generator(Generator.fresh(base, sentence_encoder, seed=0, chunk_tokens=16), 0)
    first.name = "first"
    store = AdapterStore(tmp_path / "store")
    users = Users(tmp_path / "users", first, store)
    history = [{"role": "user", "content": "My horse is called Atticus and I live in Bergen."},
               {"role": "assistant", "content": "Noted."}]
    users.append("acme", "ann", history)
    state = tmp_path / "users" / "acme" / "ann" / "state.safetensors"
    assert state.is_file()

    second = perturb_generator(Generator.fresh(base, sentence_encoder, seed=1, chunk_tokens=16), 1)
    second.name = "second"
    users = Users(tmp_path / "users", second, store)  # a restart with another checkpoint
    more = [{"role": "user", "content": "Also, my sister is Clara."}]
    info = users.append("acme", "ann", more)
    got = store.load(info["adapter_id"])
    expected = second.generate_adapter([f"{m['role']}: {m['content']}\n" for m in history + more], "conversation")
    for m in expected.weights:  # equal up to bf16 rounding (the bound of generator.model's streaming)
        x, y = got.weights[m][1].float(), expected.weights[m][1].float()
        assert (x - y).norm() <= 1e-2 * y.norm(), m
    assert info["messages"] == 3
    lines = (tmp_path / "users" / "acme" / "ann" / "messages.jsonl").read_text().splitlines()
    assert [json.loads(x)["content"] for x in lines][-1] == "Also, my sister is Clara."
    assert store.count(owner="acme/user/ann") == 1  # the first generator's adapter was retired
    store.close()


def test_each_user_message_gets_its_own_route_carried_over_to_the_next_adapter_and_capped(base, sentence_encoder,
                                                                                          tmp_path):
    from hyperadapter.generator.routed import route, word_keys
    from tests.conftest import relative_difference
    generator = perturb_generator(Generator.fresh(base, sentence_encoder, seed=0, chunk_tokens=16), 0)
    store = AdapterStore(tmp_path / "store")
    users = Users(tmp_path / "users", generator, store, max_routes=3, route_rank=1)
    first = [{"role": "user", "content": "My horse is called Atticus."}, {"role": "assistant", "content": "Noted."},
             {"role": "user", "content": "I have a red kite."}]
    routes = store.load(users.append("acme", "ann", first)["adapter_id"]).routes
    assert len(routes.adapters) == 2 and all(a.rank == 1 for a in routes.adapters)  # the user's messages only
    own = generator.generate_many([("conversation", ["user: I have a red kite.\n"])], rank=1)[0]  # made from it alone
    module = next(iter(own.weights))
    assert relative_difference(routes.adapters[1].delta_weight(module), own.delta_weight(module)) < 0.02
    more = [{"role": "user", "content": "I work as a glassblower in Bergen."},
            {"role": "assistant", "content": "How lovely."},
            {"role": "user", "content": "My sister is Clara."}]
    info = users.append("acme", "ann", more)
    adapter = store.load(info["adapter_id"])
    assert len(adapter.routes.adapters) == 3 == info["routes"]  # the most recent three: the horse's message dropped
    kept = ["user: I have a red kite.", "user: I work as a glassblower in Bergen.", "user: My sister is Clara."]
    assert all(torch.equal(w, word_keys(m)) for w, m in zip(adapter.routes.words, kept, strict=True))
    assert route(sentence_encoder, adapter, "Where do I work as a glassblower?", 3.0)[1].sentence == 1
    assert route(sentence_encoder, adapter, "What is my sister's name?", 3.0)[1].sentence == 2
    # the next update links the routes file its predecessor wrote (skipping the dropped route), writing one route
    routes_file = store.adapter_dir / info["adapter_id"] / ROUTES_NAME
    inode = routes_file.stat().st_ino
    info = users.append("acme", "ann", [{"role": "user", "content": "I sail a boat called Wren."}])
    folder = store.adapter_dir / info["adapter_id"]
    assert (folder / ROUTES_NAME).stat().st_ino == inode and not routes_file.exists()  # the old adapter retired
    assert json.loads((folder / "adapter_routes.json").read_text())["parts"][0] == {"file": ROUTES_NAME, "skip": 1,
                                                                                    "count": 2}
    assert route(sentence_encoder, store.load(info["adapter_id"]), "What is my sister's name?", 3.0)[1].sentence == 1
    assert store.integrity_check() == []
    part = folder / "adapter_routes.1.safetensors"
    kept = part.read_bytes()
    part.unlink()  # a routes file lost: the store's check names it
    assert any("adapter_routes.1.safetensors" in problem for problem in store.integrity_check())
    part.write_bytes(kept)
    # a restart at another route rank: the old routes are dropped, not stacked with the new ones
    ranked = Users(tmp_path / "users", generator, store, max_routes=3, route_rank=2)
    info = ranked.append("acme", "ann", [{"role": "user", "content": "I have a blue bicycle."}])
    assert [a.rank for a in store.load(info["adapter_id"]).routes.adapters] == [2]
    plain = Users(tmp_path / "plain", generator, store)  # max_routes 0: the one adapter only
    assert store.load(plain.append("acme", "bob", first)["adapter_id"]).routes is None
    store.close()
