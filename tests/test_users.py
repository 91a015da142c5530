"""Personal adapters: a user's streaming state survives restarts, and a state written by another
generator (the checkpoint was replaced) is never reused: the history is read again."""

from __future__ import annotations

import json

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
