"""The generator: shapes, zero-init, save/load, streaming == whole, one real training step, and a
two-process `accelerate launch --cpu` run of a tiny recipe on tiny data made here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from hyperadapter.config import REPO_ROOT, default_data_root
from hyperadapter.generator import Generator, GeneratorError
from hyperadapter.generator.config import KIND_IDS
from tests.conftest import (perturb_generator as _perturb, relative_difference, worst_relative_difference,
                            write_tiny_data)


@pytest.fixture(scope="module")
def fresh(base, sentence_encoder):
    return Generator.fresh(base, sentence_encoder, seed=0)


def test_shapes_and_zero_init(base, runtime, fresh):
    adapter = fresh.generate_adapter("Answer questions about the solar system.", "task")
    assert adapter.rank == 8 and adapter.target_modules == ["down_proj", "q_proj", "v_proj"]
    assert len(adapter.weights) == 3 * base.num_layers
    runtime.check(adapter)  # shapes fit the base, no NaN, right base model
    assert all(float(b.abs().max()) == 0.0 for _, b in adapter.weights.values())
    assert any(float(a.abs().max()) > 0.0 for a, _ in adapter.weights.values())
    # a zero update: the adapted model answers exactly like the base
    ids = base.tokenizer(["The sun is a"], return_tensors="pt")
    with torch.no_grad():
        plain = base.model(**ids).logits
        with runtime.activate(adapter):
            adapted = base.model(**ids).logits
    assert torch.equal(plain, adapted)


def test_bad_kind_and_empty_context_are_refused(fresh):
    with pytest.raises(GeneratorError, match="unknown context kind"):
        fresh.generate_adapter("text", "poem")
    with pytest.raises(GeneratorError, match="empty"):
        fresh.generate_adapter("   ", "document")


def test_save_load_round_trip(base, sentence_encoder, tmp_path):
    g = Generator.fresh(base, sentence_encoder, seed=3)
    _perturb(g)
    g.save_pretrained(tmp_path / "g")
    loaded = Generator.from_pretrained(tmp_path / "g", base, sentence_encoder)
    a = g.generate_adapter("Summarise the paragraph in one sentence.", "task")
    b = loaded.generate_adapter("Summarise the paragraph in one sentence.", "task")
    assert all(torch.allclose(a.weights[m][1], b.weights[m][1], atol=1e-6) for m in a.weights)
    assert any(float(b.weights[m][1].abs().max()) > 0 for m in b.weights)
    with pytest.raises(GeneratorError, match="not a generator checkpoint"):
        Generator.from_pretrained(tmp_path, base, sentence_encoder)


def test_adapters_of_one_batch_own_their_tensors_and_save_as_peft_files(base, sentence_encoder, tmp_path):
    """An adapter's layers are views into one buffer per module of its own: nothing shared with the
    batch's other adapters, and safetensors writes it (it refuses tensors that overlap)."""
    from hyperadapter.adapter import Adapter
    g = Generator.fresh(base, sentence_encoder, seed=4)
    _perturb(g)
    first, second = g.generate_many([("task", "Sort the words."), ("document", "The keeper is named Ada.")])
    storages = [{t.untyped_storage().data_ptr() for pair in ad.weights.values() for t in pair} for ad in (first, second)]
    assert not storages[0] & storages[1] and len(storages[0]) == 2 * len(first.target_modules)
    assert all(a.dtype == torch.float16 and a.is_contiguous() and b.is_contiguous() for a, b in first.weights.values())
    loaded = Adapter.load(first.save(tmp_path / "first"))
    assert all(torch.equal(loaded.weights[m][0], a) and torch.equal(loaded.weights[m][1], b)
               for m, (a, b) in first.weights.items())
    alone = g.generate_adapter("The keeper is named Ada.", "document")
    assert all(torch.allclose(alone.weights[m][1].float(), b.float(), rtol=1e-2, atol=1e-3)
               for m, (_, b) in second.weights.items())


def test_inference_shortcuts_give_the_same_adapter_and_follow_weight_changes(base, sentence_encoder, monkeypatch):
    """Prepacked bf16 linears and the remembered query projections are pure speed: the adapter is
    bit for bit the one the plain path makes, and a weight changed in place (as an optimizer step
    does) is seen at once, never a stale cached projection."""
    import hyperadapter.generator.hypernet as hypernet_module
    from hyperadapter.packed import can_pack

    g = _perturb(Generator.fresh(base, sentence_encoder, seed=5))
    text = "Sort the given words alphabetically."
    fast = g.generate_adapter(text, "task")
    with torch.no_grad():
        g.hypernet.query_free.add_(0.05)  # in place: the queries and their projections change
        g.hypernet.heads["q_proj"].weight.mul_(1.5)  # and one packed head
    changed = g.generate_adapter(text, "task")
    monkeypatch.setattr(hypernet_module, "can_pack", lambda: False)
    g.hypernet.__dict__.pop("_frozen_cache", None)
    plain_changed = g.generate_adapter(text, "task")
    for m in fast.weights:
        assert torch.equal(changed.weights[m][0], plain_changed.weights[m][0])
        assert torch.equal(changed.weights[m][1], plain_changed.weights[m][1])
    assert not torch.equal(fast.weights["model.layers.0.self_attn.q_proj"][0],
                           changed.weights["model.layers.0.self_attn.q_proj"][0])
    if can_pack():
        from hyperadapter.packed import PackedLinear
        assert isinstance(g.features_for("task").view.layers[0].mlp.up_proj, PackedLinear)


def test_reading_a_new_context_equals_absorbing_it_into_the_empty_state(base, sentence_encoder):
    """`read` skips the copy head's zero sum: the same state, bit for bit, padding included."""
    g = _perturb(Generator.fresh(base, sentence_encoder, seed=6))
    rows = g._token_features([[g.segment_tokens("Name the capital of the given country.")],
                              [g.segment_tokens("Rex is my dog, and he is three years old.")]], ["task", "conversation"])
    width = max(f.shape[0] for f, _ in rows)
    pad = torch.nn.functional.pad
    feats = torch.stack([pad(f, (0, 0, 0, width - len(f))) for f, _ in rows])
    embs = torch.stack([pad(e, (0, 0, 0, width - len(e))) for _, e in rows])
    mask = torch.stack([pad(torch.ones(len(f), dtype=torch.long), (0, width - len(f))) for f, _ in rows])
    assert int(mask.sum()) < mask.numel()  # one row is padded
    with torch.no_grad():
        ids = torch.tensor([KIND_IDS["task"], KIND_IDS["conversation"]])
        read = g.hypernet.read(feats, mask, embs, ids)
        absorbed = g.hypernet.absorb(g.hypernet.init_state(2), feats, mask, embs, ids)
    for name, x in read.tensors().items():
        assert torch.equal(x, absorbed.tensors()[name]), name
    assert float(read.copy_sum.abs().max()) > 0  # the copy head did read the tokens


def test_packed_feature_pass_equals_autocast_linears(base, monkeypatch):
    import hyperadapter.packed as packed
    from hyperadapter.generator.encoder import TokenFeatures

    chunks = [base.tokenizer("The river town kept three lighthouses.", add_special_tokens=False)["input_ids"],
              base.tokenizer("Rex is my dog.", add_special_tokens=False)["input_ids"]]
    fast, mask, _ = TokenFeatures(base, 4)(chunks)
    monkeypatch.setattr(packed, "can_pack", lambda: False)
    plain, _, _ = TokenFeatures(base, 4)(chunks)
    keep = mask.bool()
    assert torch.equal(fast[keep], plain[keep])


def test_context_changes_the_adapter(base, sentence_encoder):
    g = Generator.fresh(base, sentence_encoder, seed=1)
    _perturb(g)
    a = g.generate_adapter("My dog is called Rex.", "conversation")
    b = g.generate_adapter("I work as a carpenter in Oslo.", "conversation")
    m = next(iter(a.weights))
    assert not torch.allclose(a.weights[m][1], b.weights[m][1])


@pytest.mark.parametrize("compete,keys,int8", [(0.0, 0, False), (10.0, 8, False), (0.0, 0, True)])
def test_streaming_update_equals_reading_the_whole_history(base, sentence_encoder, compete, keys, int8):
    # small chunks: several boundaries; int8: as served where bf16 is slow (float32 elsewhere)
    g = Generator.fresh(base, sentence_encoder, seed=2, chunk_tokens=32, copy_compete=compete, copy_keys=keys,
                        int8=int8)
    _perturb(g)
    messages = ["user: Hi there, my dog is called Rex.\n", "assistant: Hello! Rex is a fine name.\n",
                "user: " + "I love long walks by the sea, especially in autumn. " * 6 + "\n",
                "user: Also, I live in Oslo.\n"]
    stream = g.stream("conversation")
    for m in messages:
        stream = g.append(stream, [m])
        assert len(stream.tail) < g.config.chunk_tokens  # constant-size state: never more than one chunk kept
    incremental = g.adapter_from_stream(stream)
    whole = g.generate_adapter(messages, "conversation")
    # The documented bound (generator.model): equal up to bf16 rounding (of the features, where a chunk
    # read alone or beside others in a padded batch rounds differently, and of the heads' matmuls), a
    # relative error under 1e-2 per factor; leaving out one message moves them far more.
    missing = g.generate_adapter(messages[:2] + messages[3:], "conversation")
    for m in whole.weights:
        for x, y, z in zip(incremental.weights[m], whole.weights[m], missing.weights[m]):
            assert (x - y).norm() <= 1e-2 * y.norm(), m
            assert (z - y).norm() > 5e-2 * y.norm(), m
    tensors, meta = stream.to_tensors()
    restored = type(stream).from_tensors(tensors, meta)
    again = g.adapter_from_stream(g.append(restored, ["user: bye\n"]))
    direct = g.generate_adapter(messages + ["user: bye\n"], "conversation")
    m = next(iter(direct.weights))
    assert (again.weights[m][1] - direct.weights[m][1]).norm() <= 1e-2 * direct.weights[m][1].norm()


def test_competing_copy_slots_keep_agreeing_slots_and_split_the_tokens_they_disagree_on():
    from hyperadapter.generator.config import GeneratorConfig
    from hyperadapter.generator.hypernet import HyperNetwork
    config = GeneratorConfig(num_layers=1, hidden_size=16, rank=2, latent=16, heads=2, copy_dim=4,
                             modules={"down_proj": ["model.layers.{layer}.mlp.down_proj", 24, 16]})
    net = HyperNetwork(config)
    net.config.copy_compete = 1.0
    weights = lambda scores: torch.softmax(scores, -1)  # over tokens, as the copy head reads them
    same = torch.tensor([[[2.0, 0.0, 1.0], [2.0, 0.0, 1.0]]])  # [B=1, N=2 slots, T=3 tokens]
    assert torch.allclose(weights(net._compete(same)), weights(same))  # agreeing slots: unchanged
    split = torch.tensor([[[2.0, 1.0, -3.0], [1.0, 2.0, -3.0]]])  # each likes both tokens, one more
    before, after = weights(split), weights(net._compete(split))
    assert after[0, 0, 0] > before[0, 0, 0] + 0.1 and after[0, 1, 1] > before[0, 1, 1] + 0.1
    assert after[0, 0, 1] < before[0, 0, 1] and after[0, 1, 0] < before[0, 1, 0]  # less of the other's token
    close = torch.tensor([[[2.0, 1.95, -3.0], [1.95, 2.0, -3.0]]])  # slots that barely disagree
    net.config.copy_compete = 50.0
    sharp = weights(net._compete(close))
    assert sharp[0, 0, 0] > 0.9 and sharp[0, 1, 1] > 0.9  # a sharp competition still splits them
    assert torch.allclose(weights(net._compete(same)), weights(same))
    net.config.copy_compete = 0.0
    assert torch.allclose(net._compete(split), split)  # no competition at 0


def test_copy_keys_added_to_a_trained_generator_change_nothing_until_trained_then_steer_copy_rows(tmp_path, base, sentence_encoder):
    from hyperadapter.generator.config import GeneratorConfig
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    checkpoint = _perturb(Generator.fresh(base, sentence_encoder, seed=3)).save_pretrained(tmp_path / "gen")
    chat = "user: My sister is called Clara.\nuser: My dog is called Rex.\n"
    before = Generator.from_pretrained(checkpoint, base, sentence_encoder).generate_adapter(chat, "conversation")
    common = dict(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), init_from=str(checkpoint),
                  contexts_per_batch=2, queries_per_context=1, eval_batches=1, lr=1e-2, warmup_steps=1)
    trainer = Trainer(Recipe(**common, generator={"copy_keys": 8}))
    keyed = trainer.generator
    assert keyed.config.copy_keys == 8
    with torch.no_grad():
        grown = keyed.generate_adapter(chat, "conversation")
    for m in before.weights:  # zero-initialised keys: the very same adapter
        for x, y in zip(before.weights[m], grown.weights[m]):
            assert torch.equal(x, y), m
    loss = trainer.losses(trainer.sampler.sample(2, 1), False)["total"]
    trainer.accelerator.backward(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in keyed.hypernet.copy_key_out.values())
    trainer.optimizer.step()
    with torch.no_grad():
        trained = keyed.generate_adapter(chat, "conversation")
    # the keys join the A rows of the copy module (down_proj) only; what B writes is another matter
    assert not torch.allclose(trained.weights["model.layers.3.mlp.down_proj"][0],
                              before.weights["model.layers.3.mlp.down_proj"][0])
    keyed.save_pretrained(tmp_path / "keyed")
    again = Generator.from_pretrained(tmp_path / "keyed", base, sentence_encoder)
    assert again.config.copy_keys == 8
    with torch.no_grad():
        reloaded = again.generate_adapter(chat, "conversation")
    for m in trained.weights:
        for x, y in zip(trained.weights[m], reloaded.weights[m]):
            assert torch.allclose(x, y), m
    with pytest.raises(ValueError, match="already has copy keys"):
        Trainer(Recipe(**{**common, "init_from": str(tmp_path / "keyed")}, generator={"copy_keys": 4}))
    with pytest.raises(ValueError, match="already has copy keys 8 wide at scale 1.0, not 8 at 2.0"):
        Trainer(Recipe(**{**common, "init_from": str(tmp_path / "keyed")}, generator={"copy_key_scale": 2.0}))
    with pytest.raises(ValueError, match="copy_features"):
        GeneratorConfig(copy_keys=8, copy_features=False)
    keyed_common = {**common, "init_from": str(tmp_path / "keyed")}
    routed = Trainer(Recipe(**keyed_common, generator={"routed_kinds": ["conversation"]}))
    assert routed.generator.config.routed_kinds == ["conversation"]
    with pytest.raises(ValueError, match="unknown kinds"):
        Trainer(Recipe(**keyed_common, generator={"routed_kinds": ["poem"]}))


def test_routing_by_kind_leaves_the_other_kinds_as_without_competition_and_keys(base, sentence_encoder):
    from hyperadapter.generator.config import GeneratorConfig
    g = _perturb(Generator.fresh(base, sentence_encoder, seed=5, copy_compete=10.0, copy_keys=8))
    items = [("task", "Name the capital of the given country."),
             ("conversation", "user: My sister is called Clara.\nuser: My dog is called Rex.\n")]
    every_kind = g.generate_many(items)
    g.config.routed_kinds = ["conversation"]
    chats_only = g.generate_many(items)
    g.config.copy_compete = 0.0
    with torch.no_grad():
        for p in g.hypernet.copy_key_out.values():
            p.zero_()
    unrouted = g.generate_many(items)
    for m in unrouted[0].weights:
        for routed, plain in zip(chats_only[0].weights[m], unrouted[0].weights[m]):
            assert torch.equal(routed, plain), m  # the task reads as with neither
        for routed, before in zip(chats_only[1].weights[m], every_kind[1].weights[m]):
            assert torch.equal(routed, before), m  # the chat as before
    down = "model.layers.3.mlp.down_proj"  # and both did act here: on the task before, on the chat now
    assert not torch.allclose(every_kind[0].weights[down][0], unrouted[0].weights[down][0])
    assert not torch.allclose(chats_only[1].weights[down][0], unrouted[1].weights[down][0])
    with pytest.raises(ValueError, match="routed_kinds names unknown kinds"):
        GeneratorConfig(routed_kinds=["poem"])


def test_a_checkpoint_name_changes_with_its_config_as_well_as_its_weights(tmp_path, base, sentence_encoder):
    from hyperadapter.generator.model import CONFIG, checkpoint_name
    directory = Generator.fresh(base, sentence_encoder, seed=7).save_pretrained(tmp_path / "gen")
    before = checkpoint_name(directory)
    assert before.startswith("gen@") and checkpoint_name(directory) == before
    config = json.loads((directory / CONFIG).read_text())
    (directory / CONFIG).write_text(json.dumps({**config, "routed_kinds": ["conversation"]}))
    assert checkpoint_name(directory) != before  # the same weights, other adapters: not the cache's old name


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(tmp_path):
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    trainer = Trainer(Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), lr=3e-3,
                             warmup_steps=1, contexts_per_batch=2, queries_per_context=2, eval_batches=1))
    examples = trainer.sampler.sample(2, 2)
    with torch.no_grad():
        before = float(trainer.losses(examples, False)["answer"])
    for _ in range(3):
        loss = trainer.losses(examples, False)["total"]
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    with torch.no_grad():
        after = float(trainer.losses(examples, False)["answer"])
    assert after < before - 0.05, (before, after)


def test_a_continued_run_may_read_a_shallower_layer_but_not_change_the_architecture(tmp_path, base, sentence_encoder):
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    checkpoint = _perturb(Generator.fresh(base, sentence_encoder, seed=2)).save_pretrained(tmp_path / "gen")
    common = dict(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), init_from=str(checkpoint),
                  contexts_per_batch=2, queries_per_context=1, eval_batches=1)
    # rank is the checkpoint's own: allowed; the feature layer changes what the generator reads
    trainer = Trainer(Recipe(**common, generator={"feature_layer": 4, "rank": 8}))
    shallow = trainer.generator
    assert shallow.config.feature_layer == 4 and shallow.features_for("conversation").layer == 4
    deep = Generator.from_pretrained(checkpoint, base, sentence_encoder)
    assert deep.config.feature_layer == 8
    m = next(iter(deep.generate_adapter("My dog is called Rex.", "conversation").weights))
    a = deep.generate_adapter("My dog is called Rex.", "conversation").weights[m][0]
    b = shallow.generate_adapter("My dog is called Rex.", "conversation").weights[m][0]
    assert not torch.allclose(a, b)
    shallow.save_pretrained(tmp_path / "saved")  # and it is saved with the layer it was trained on
    assert Generator.from_pretrained(tmp_path / "saved", base, sentence_encoder).config.feature_layer == 4
    with pytest.raises(ValueError, match="rank"):
        Trainer(Recipe(**common, generator={"rank": 4}))
    with pytest.raises(GeneratorError, match="outside"):
        shallow.read_from_layer(99)


def test_kinds_read_at_their_own_layers_share_one_copy_of_the_base(tmp_path, base, sentence_encoder):
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    checkpoint = _perturb(Generator.fresh(base, sentence_encoder, seed=2)).save_pretrained(tmp_path / "gen")
    recipe = Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), init_from=str(checkpoint),
                    contexts_per_batch=2, queries_per_context=1, eval_batches=1,
                    generator={"kind_layers": {"task": 4, "document": 4}})
    mixed = Trainer(recipe).generator
    deep = Generator.from_pretrained(checkpoint, base, sentence_encoder)
    assert [mixed.config.layer_for(k) for k in ("task", "demonstrations", "document", "conversation")] == [4, 8, 4, 8]
    # the layer-4 pass is a view over the first 4 of the layer-8 pass's bf16 layers, not a copy
    shallow, full = mixed.features_for("task").view.layers, mixed.features_for("conversation").view.layers
    assert len(shallow) == 4 and len(full) == 8 and all(a is b for a, b in zip(shallow, full))
    chat, task = ["My dog is called Rex.", "I live in Lyon."], "Translate the sentence into French."
    # one batch of mixed kinds: each context is read at its own kind's layer
    together = mixed.generate_many([("conversation", chat), ("task", task)])
    alone_chat, alone_task = mixed.generate_adapter(chat, "conversation"), mixed.generate_adapter(task, "task")
    deep_chat, deep_task = deep.generate_adapter(chat, "conversation"), deep.generate_adapter(task, "task")
    assert worst_relative_difference(together[0], alone_chat) < 2e-2
    assert worst_relative_difference(together[1], alone_task) < 2e-2
    # conversation: still layer 8 (up to rounding: the shared sentence encoder may have embedded
    # these texts before, beside other texts, at another padded width)
    assert worst_relative_difference(alone_chat, deep_chat) < 1e-2
    m = "model.layers.0.self_attn.q_proj"
    assert not torch.allclose(alone_task.weights[m][0].float(), deep_task.weights[m][0].float(), rtol=1e-2, atol=1e-3)
    # the stream reads a conversation at its kind's layer too
    stream = mixed.append(mixed.stream("conversation"), chat)
    streamed = mixed.adapter_from_stream(stream)
    assert torch.allclose(streamed.weights[m][0].float(), alone_chat.weights[m][0].float(), rtol=1e-2, atol=1e-3)
    mixed.save_pretrained(tmp_path / "saved")
    assert Generator.from_pretrained(tmp_path / "saved", base, sentence_encoder).config.kind_layers == {"task": 4, "document": 4}
    with pytest.raises(GeneratorError, match="unknown kinds"):
        mixed.read_from_layer(kind_layers={"poem": 4})
    with pytest.raises(GeneratorError, match="outside"):
        mixed.read_from_layer(kind_layers={"task": 0})


def test_lead_space_makes_answer_tokens_the_contexts_own(base, tmp_path):
    """A name at the start of a reply tokenizes unlike the same name in a text; with the recipe's
    lead space the answer's tokens are tokens of the context (what the copy head can emit)."""
    from hyperadapter.data.schema import load_split
    from hyperadapter.training.examples import ExampleSampler
    write_tiny_data(tmp_path / "data")
    records = {"conversation": load_split(tmp_path / "data", "train", "conversation")}

    def answer_tokens_in_context(lead_space):
        sampler = ExampleSampler(records, {"conversation": 1.0}, lead_space=lead_space)
        found = []
        for e in sampler.sample(6, 1):
            context = set(base.tokenizer(e.context, add_special_tokens=False)["input_ids"])
            answer = base.tokenizer(e.target, add_special_tokens=False)["input_ids"]
            found.append(all(t in context for t in answer))
        return found

    assert all(answer_tokens_in_context(("conversation",)))
    assert not any(answer_tokens_in_context(()))


def test_unrelated_queries_keep_the_context_and_take_another_tasks_query(tmp_path):
    from hyperadapter.data.schema import load_split
    from hyperadapter.training.examples import ExampleSampler
    write_tiny_data(tmp_path / "data")
    records = {k: load_split(tmp_path / "data", "train", k) for k in ("task", "conversation")}
    sampler = ExampleSampler(records, {"task": 1.0, "conversation": 1.0}, unrelated_share=1.0,
                             lead_space=("conversation",))
    pairs = {(q.input, q.target): r.id for r in records["task"] for q in r.queries + r.support}  # one word per task
    contexts = {r.id: r.context for rs in records.values() for r in rs}
    for e in sampler.sample(20, 1):
        assert e.objective == "unrelated" and e.context == contexts[e.context_key]
        assert pairs[(e.input, e.target)] != e.context_key  # another task's query with its answer, no lead space
    assert ExampleSampler(records, {"task": 1.0}, unrelated_share=0.0).sample(5, 1)[0].objective != "unrelated"


def test_unrelated_queries_go_only_with_the_recipes_kinds(tmp_path):
    from hyperadapter.data.schema import load_split
    from hyperadapter.training.examples import ExampleSampler
    write_tiny_data(tmp_path / "data")
    records = {k: load_split(tmp_path / "data", "train", k) for k in ("task", "conversation")}
    sampler = ExampleSampler(records, {"task": 1.0, "conversation": 1.0}, unrelated_share=1.0,
                             unrelated_kinds=("conversation",))
    objectives = {(e.kind, e.objective) for e in sampler.sample(30, 1)}
    assert objectives == {("task", "supervised"), ("conversation", "unrelated")}


def test_wrong_contexts_keep_the_query_and_take_another_record_of_the_kind(tmp_path):
    from hyperadapter.data.schema import load_split
    from hyperadapter.training.examples import ExampleSampler
    write_tiny_data(tmp_path / "data")
    records = {k: load_split(tmp_path / "data", "train", k) for k in ("task", "demonstrations", "document")}
    sampler = ExampleSampler(records, {k: 1.0 for k in records})
    examples = sampler.sample(30, 1)
    wrong = sampler.wrong_contexts(examples, ("task", "demonstrations"))
    assert {examples[i].kind for i, _ in wrong} == {"task", "demonstrations"}
    assert len(wrong) == sum(e.kind != "document" for e in examples)
    for i, w in wrong:
        e = examples[i]
        assert (w.kind, w.input, w.target, w.objective) == (e.kind, e.input, e.target, e.objective)
        assert w.context_key.split("#")[0] != e.context_key.split("#")[0] and w.context != e.context
        assert (e.target.strip() in e.context) and (e.target.strip() not in w.context)  # one fruit per task


def test_task_variants_reword_the_description_and_keep_the_tasks_queries(tmp_path):
    """Variant 0 is the description; the others are fixed (the same text every time: their features
    are cached under their key), drawn from the description's own words (plus, at times, one of the
    task's solved examples), and keyed by the task so that wrong contexts still come from other tasks."""
    from hyperadapter.data.schema import ContextRecord, Query, load_split
    from hyperadapter.training.examples import ExampleSampler
    description = ("Read the sentence about a fruit. Answer with the name of the fruit in lower case. "
                   "Say nothing else, and do not explain the answer.")
    support = [Query(f"The {f} is ripe.", [f]) for f in ("apple", "pear", "plum", "fig")]
    record = ContextRecord(id="t/fruit", kind="task", group="g", source="s", context=description,
                           metric="generation", queries=support[:2], support=support[2:])
    assert ExampleSampler._task_variant(record, 0) == ("t/fruit", description)
    variants = [ExampleSampler._task_variant(record, v) for v in range(1, 9)]
    assert variants == [ExampleSampler._task_variant(record, v) for v in range(1, 9)]
    assert [key for key, _ in variants] == [f"t/fruit#{v}" for v in range(1, 9)]
    assert len({text for _, text in variants} | {description}) > 4
    words = set(description.split())
    for _, text in variants:
        wording, _, example = text.partition("\n\n")
        assert set(wording.split()) <= words and len(wording.split()) >= len(description.split()) // 2
        assert not example or example in {f"Input: {q.input}\nOutput: {q.target}" for q in record.support}
    assert any("\n\nInput: " in text for _, text in variants)

    write_tiny_data(tmp_path / "data")
    records = {"task": load_split(tmp_path / "data", "train", "task")}
    sampler = ExampleSampler(records, {"task": 1.0}, task_variants=4)
    examples = sampler.sample(40, 1)
    contexts = {r.id: r for r in records["task"]}
    assert {e.context_key.partition("#")[2] for e in examples} == {"", "1", "2", "3"}
    for e in examples:
        task = contexts[e.context_key.split("#")[0]]
        assert any(q.input == e.input for q in task.queries + task.support)
    for i, w in sampler.wrong_contexts(examples, ("task",)):
        assert w.context_key.split("#")[0] != examples[i].context_key.split("#")[0]

    # without variants no extra random draw: the fixed validation examples stay what they were
    import random
    plain = ExampleSampler({"task": [record]}, {"task": 1.0}, seed=7)
    plain.examples_for(record, 1)
    reference = random.Random(7)
    reference.choice(record.queries + record.support)
    assert plain.rng.getstate() == reference.getstate()


def test_contrastive_term_is_the_margin_on_each_querys_right_and_wrong_adapters_and_training_widens_it(tmp_path):
    """The term is mean(relu(margin - (loss under the wrong adapter - loss under the right one))),
    each query scored as if alone; a few steps on it make right adapters beat wrong ones."""
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    trainer = Trainer(Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), lr=3e-3,
                             warmup_steps=1, contexts_per_batch=4, queries_per_context=1, eval_batches=1,
                             kind_weights={"task": 1.0}, contrast_weight=1.0, contrast_margin=0.5, bf16=False))
    examples = trainer.sampler.sample(4, 1)
    wrong = trainer.sampler.wrong_contexts(examples, ("task",))
    assert len(wrong) == 4

    def gaps() -> torch.Tensor:
        with torch.no_grad():
            return torch.tensor([float(trainer.losses([w], False)["answer"] - trainer.losses([examples[i]], False)["answer"])
                                 for i, w in wrong])

    with torch.no_grad():
        together = trainer.losses(examples, False, wrong)
    before = gaps()
    assert float(together["contrast"]) == pytest.approx(float(torch.relu(0.5 - before).mean()), abs=1e-4)
    assert float(together["total"]) == pytest.approx(float(together["answer"] + together["contrast"]), abs=1e-6)
    for _ in range(4):
        trainer.accelerator.backward(trainer.losses(examples, False, wrong)["contrast"])
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert float(gaps().mean()) > float(before.mean()) + 0.1, (before, gaps())


def test_anchor_is_the_kl_from_the_base_and_zero_for_a_fresh_generator(tmp_path):
    """KL(base || adapted) on the answer tokens: nothing for a generator that leaves the base alone,
    positive once the answer loss has moved the adapters, and training on it moves them back."""
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    trainer = Trainer(Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), lr=3e-3,
                             warmup_steps=1, contexts_per_batch=4, queries_per_context=1, eval_batches=1,
                             kind_weights={"task": 1.0}, anchor_weight=0.5, bf16=False))
    examples = trainer.sampler.sample(4, 1)

    def step(loss: str) -> dict:
        out = trainer.losses(examples, False)
        trainer.accelerator.backward(out[loss])
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        return out

    fresh = step("answer")
    assert float(fresh["anchor"]) == pytest.approx(0.0, abs=1e-5)
    assert float(fresh["total"]) == pytest.approx(float(fresh["answer"]), abs=1e-5)
    for _ in range(3):
        moved = step("answer")
    assert float(moved["anchor"]) > 1e-3
    assert float(moved["total"]) == pytest.approx(float(moved["answer"] + 0.5 * moved["anchor"]), abs=1e-5)
    for _ in range(4):
        last = step("anchor")
    assert float(last["anchor"]) < float(moved["anchor"]), (moved["anchor"], last["anchor"])
    trainer.model.eval()
    with torch.no_grad():
        assert "anchor" not in trainer.losses(examples, False)  # validation scores answers only


def test_unrelated_queries_can_be_trained_by_the_anchor_alone(tmp_path):
    """With anchor_unrelated, a locality query (another task's query under a chat's adapter) leaves
    the answer loss and is pulled toward the base's own answer instead."""
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    trainer = Trainer(Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), contexts_per_batch=4,
                             queries_per_context=1, eval_batches=1, kind_weights={"task": 1.0, "conversation": 1.0},
                             unrelated_share=1.0, unrelated_kinds=["conversation"], anchor_weight=0.5,
                             anchor_kinds=["task"], anchor_unrelated=True, bf16=False))
    _perturb(trainer.generator)
    examples = trainer.sampler.sample(12, 1)
    own = [e for e in examples if e.objective != "unrelated"]
    assert own and len(own) < len(examples) and all(e.kind == "conversation" for e in examples if e not in own)
    with torch.no_grad():
        on = trainer.losses(examples, False)
        alone = trainer.losses(own, False)
        trainer.recipe.anchor_unrelated = False
        off = trainer.losses(examples, False)
    assert float(on["answer"]) == pytest.approx(float(alone["answer"]), rel=1e-4)
    assert float(off["answer"]) != pytest.approx(float(on["answer"]), rel=1e-3)
    # the unrelated queries' KL joins the anchor (each query weighs 1/len(examples) in both)
    assert float(on["anchor"]) > float(off["anchor"]) + 1e-4


def test_distillation_reaches_only_supervised_answers_of_its_kinds(tmp_path):
    """Context distillation (Recipe.distill_kinds) takes the supervised answers of its kinds only: a
    batch without such answers distils nothing, a document chunk's continuation (a copy for a teacher
    that reads the chunk) is left out, and a supervised document answer is distilled."""
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    trainer = Trainer(Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), contexts_per_batch=4,
                             queries_per_context=1, eval_batches=1, kind_weights={"task": 1.0, "document": 1.0},
                             distill_weight=1.0, distill_kinds=["document"], bf16=False))
    _perturb(trainer.generator)
    examples = trainer.sampler.sample(16, 1)
    distilled = [e for e in examples if e.kind == "document" and e.objective == "supervised"]
    assert distilled
    # the tiny documents are too short to be cut into a chunk and its continuation: made by hand
    continuation = dataclasses.replace(distilled[0], input="The keeper of lighthouse", target=" 0 is named",
                                       objective="selfsup")
    rest = [e for e in examples if e not in distilled] + [continuation]
    assert any(e.kind == "task" and e.objective == "supervised" for e in rest)
    with torch.no_grad():
        assert float(trainer.losses(rest, True)["distill"]) == 0.0
        mixed = float(trainer.losses(examples, True)["distill"])
        assert mixed > 0.0
        trainer.recipe.distill_kinds = ["task"]
        assert float(trainer.losses(examples, True)["distill"]) != pytest.approx(mixed, rel=1e-3)


def test_anchor_and_distillation_from_the_shared_answer_pass_equal_a_separate_kl(base, runtime):
    """item_losses_and_kl reuses the adapted pass of an item's answer loss for its anchor and its
    distillation: the same KL as a separate distill_loss on that item alone (teacher: the base on the
    same prompt, or on the prompt given for distillation), and the same answer losses as
    item_losses; items not asked for get 0."""
    from hyperadapter.training.objectives import (Scored, distill_loss, encode_pairs, item_losses,
                                                  item_losses_and_kl)
    prompts = ["The capital of France is", "Is the sky green? Answer:", "Two plus two is", "My favourite colour is"]
    items = [Scored(" Paris"), Scored(" No", (" Yes", " No"), 1), Scored(" four, of course"), Scored(" blue")]
    teachers = {1: "The sky is blue, never green. Is the sky green? Answer:",
                3: "I love the sea and the sky. My favourite colour is"}
    torch.manual_seed(0)
    factors = {}
    for path, (fan_in, fan_out) in base.linear_shapes().items():
        if path.startswith(("model.layers.0.", "model.layers.1.")) and path.endswith(("q_proj", "down_proj")):
            factors[path] = (torch.randn(len(items), 4, fan_in) * 0.2, torch.randn(len(items), fan_out, 4) * 0.2)

    def factors_of(rows):
        at = torch.tensor(rows)
        return {m: (a[at], b[at]) for m, (a, b) in factors.items()}

    losses, anchor, distill = item_losses_and_kl(base, runtime, prompts, items, factors_of, anchored=[0, 1, 2],
                                                 distilled=teachers)
    assert torch.allclose(losses, item_losses(base, runtime, prompts, items, factors_of), atol=1e-5)
    for i in range(len(items)):
        student = encode_pairs(base, [prompts[i]], [items[i].target])
        for kl, teacher_prompt in ((anchor, prompts[i] if i in (0, 1, 2) else None),
                                   (distill, teachers.get(i))):
            if teacher_prompt is None:
                assert float(kl[i]) == 0.0
                continue
            teacher = encode_pairs(base, [teacher_prompt], [items[i].target])
            separate = distill_loss(base, runtime, student, teacher, factors_of([i]))
            assert float(separate) > 1e-3
            assert float(kl[i]) == pytest.approx(float(separate), rel=1e-4, abs=1e-6)


def test_validate_cli_scores_a_checkpoint_and_a_fresh_one_equals_the_base(tmp_path, base, sentence_encoder, capsys):
    from hyperadapter.cli import main
    write_tiny_data(tmp_path / "data")
    Generator.fresh(base, sentence_encoder, seed=0).save_pretrained(tmp_path / "fresh")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'data_dir = "{tmp_path / "data"}"\ncontexts_per_batch = 2\nqueries_per_context = 1\n'
                      'kind_weights = {task = 1.0, document = 1.0}\n')
    assert main(["validate", "--config", str(recipe), "--generator", str(tmp_path / "fresh"), "--batches", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {f"val_{k}{s}" for k in ("task", "document") for s in ("", "_wrong", "_base")}
    for kind in ("task", "document"):  # a fresh generator's adapters are zero: the base's loss exactly
        assert metrics[f"val_{kind}"] == metrics[f"val_{kind}_wrong"] == metrics[f"val_{kind}_base"] > 0
    assert main(["validate", "--config", str(recipe), "--generator", str(tmp_path / "nowhere")]) == 2
    assert "not a generator folder" in capsys.readouterr().err


def test_distillation_loss_is_zero_when_student_sees_the_same_prompt(base, runtime):
    from hyperadapter.training.objectives import distill_loss, encode_pairs
    prompts = ["The capital of France is", "Two plus two is"]
    batch = encode_pairs(base, prompts, [" Paris", " four"])
    loss = distill_loss(base, runtime, batch, batch, {})
    assert abs(float(loss)) < 1e-5


def test_two_process_accelerate_launch_smoke(tmp_path):
    write_tiny_data(tmp_path / "data")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'out_dir = "{tmp_path / "run"}"\ndata_dir = "{tmp_path / "data"}"\nsteps = 2\n'
                      'contexts_per_batch = 1\nqueries_per_context = 1\nwarmup_steps = 1\neval_every = 0\n'
                      'save_every = 0\nlog_every = 1\nthreads = 1\n[generator]\nlatent = 64\nmlp_blocks = 1\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # On one machine `accelerate launch --cpu` starts a single process whatever --num_processes says
    # (accelerate 1.x: multi-CPU needs mpirun); `--multi_gpu` goes through torchrun, and the trainer's
    # Accelerator(cpu=True) then runs both processes on the CPU with gloo.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "-m", "hyperadapter.cli", "train", "--config", str(recipe)]
    done = subprocess.run(launcher, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "answer" in r] == [1, 2]  # logged once (main process), every step
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["num_processes"] == 2
    loaded = Generator.from_pretrained(tmp_path / "run" / "generator",
                                       *_base_and_encoder())
    assert loaded.config.latent == 64


def _base_and_encoder():
    from hyperadapter.base import load_base
    from hyperadapter.embedding import SentenceEncoder
    return load_base("default", default_data_root() / "models"), SentenceEncoder()


def test_bf16_training_loss_is_close_to_float32_and_reaches_the_generator(base, runtime, sentence_encoder):
    from hyperadapter.training.objectives import answer_losses, encode_pairs
    g = Generator.fresh(base, sentence_encoder, seed=4)
    with torch.no_grad():  # a small adapter, of the size training starts from (not _perturb's large one)
        for scale in g.hypernet.scale_b.values():
            scale.fill_(0.01)
    g.hypernet.requires_grad_(True)
    batch = encode_pairs(base, ["The capital of France is", "Two plus two is"], [" Paris", " four"])
    losses = []
    for bf16 in (False, True):
        adapter_factors = g.runtime_factors(g.hypernet(*_features(g, ["Facts about France."] * 2)))
        loss = answer_losses(base, runtime, batch, adapter_factors, bf16=bf16).mean()
        loss.backward()
        losses.append(float(loss.detach()))
    assert abs(losses[0] - losses[1]) < 0.05 * losses[0], losses
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.hypernet.scale_b.values())


def _features(g, contexts):
    from hyperadapter.training.loop import _pad_features
    feats, mask, emb = _pad_features(g.context_features([[c] for c in contexts], ["task"] * len(contexts)), g.embed)
    sentence = torch.nn.functional.normalize(g.sentence_encoder.encode(contexts), dim=-1)
    return feats, mask, emb, sentence, torch.zeros(len(contexts), dtype=torch.long)


@pytest.mark.parametrize("compete", [0.0, 10.0])
def test_copy_inspection_gives_the_weights_the_adapter_is_built_from(base, sentence_encoder, compete):
    from hyperadapter.generator.inspect import copy_attention
    from hyperadapter.generator.encoder import token_embeddings
    g = _perturb(Generator.fresh(base, sentence_encoder, seed=4, copy_compete=compete))
    context = "user: My dog is called Rex and I live in Oslo."
    report = copy_attention(g, context, "conversation")
    ids = torch.tensor(g.segment_tokens(context))
    assert report.tokens[1:] == [base.tokenizer.decode([int(t)]) for t in ids] and report.tokens[0] == "<null>"
    assert torch.allclose(report.weights.sum(-1), torch.ones(report.weights.shape[:-1]), atol=1e-5)
    assert 0.0 < report.agreement <= 1.0 + 1e-6
    # the copy head's pooled embeddings in the generator's own state are these weights times the tokens'
    with torch.no_grad():
        feats, _ = g.context_features([[context]], ["conversation"])[0]
        emb = token_embeddings(base, ids[None]).float()
        state = g.hypernet.read(feats.float()[None], torch.ones(1, len(ids), dtype=torch.long), emb,
                                torch.tensor([KIND_IDS["conversation"]]))
    hidden = g.config.hidden_size
    pooled = (state.copy_sum[0, :, :hidden] / state.copy_norm[0, :, None]).reshape(*report.weights.shape[:3], hidden)
    expected = torch.einsum("lmrt,th->lmrh", report.weights[..., 1:], emb[0])
    assert torch.allclose(pooled, expected, atol=1e-4 * float(emb.abs().max()))
    copying = [i for i, m in enumerate(g.config.module_names) if m in g.hypernet.copy_gain]
    assert (report.gains[:, copying] != 0).all() and report.top_tokens(3)[0][0] in report.tokens
    with pytest.raises(ValueError, match="kind"):
        copy_attention(g, context, "poem")


def test_adapter_inspect_cli_prints_one_json_line_and_refuses_an_empty_context(tmp_path, capsys):
    from hyperadapter.cli import main
    assert main(["adapter", "inspect", "--kind", "conversation", "--text", "   "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["adapter", "inspect", "--kind", "conversation", "--text", "user: I play the cello.",
                 "--top", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert len(line["top_copied_tokens"]) == 3 and 0.0 < line["slot_agreement"] <= 1.0


def test_generate_cli_refuses_a_penalty_openai_would_refuse(capsys):
    from hyperadapter.cli import main
    assert main(["generate", "--prompt", "Hi", "--presence-penalty", "2.5"]) == 2
    assert "--presence-penalty" in capsys.readouterr().err


KESSEL = ("The Kessel mill at Drau was rebuilt in 1923 by the carpenter Ida Wren. "
          "The town's football club plays in green shirts. Its bakery sells rye bread every morning.")
KESSEL_QUESTIONS = ["Who rebuilt the mill?", "What colour are the football club's shirts?",
                    "What does the bakery sell?"]


def test_document_routes_answer_each_question_with_its_nearest_sentences_adapter(base, sentence_encoder):
    from hyperadapter.generator.routed import document_routes, route, sentence_groups, word_keys
    from hyperadapter.config import DEFAULT_GENERATOR
    generator = Generator.from_pretrained(DEFAULT_GENERATOR, base, sentence_encoder)
    pieces = sentence_groups(KESSEL)
    routes = document_routes(generator, KESSEL)
    assert len(pieces) == 3 and len(routes.adapters) == 3 and routes.vectors.shape[0] == 3
    assert all(a.metadata["kind"] == "document" for a in routes.adapters)
    assert torch.allclose(routes.vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    # each sentence's adapter is its own (made from that sentence alone, as generate_adapter makes it)
    alone = generator.generate_adapter(pieces[1], "document")
    assert worst_relative_difference(routes.adapters[1], alone) < 0.02
    assert worst_relative_difference(routes.adapters[0], alone) > 0.1
    document = generator.generate_adapter(KESSEL, "document")
    document.routes = routes
    assert all(torch.equal(w, word_keys(p)) for w, p in zip(routes.words, pieces))  # the words, not the text
    for i, question in enumerate(KESSEL_QUESTIONS):
        for words in (0.0, 1.0):
            picked, (index, cosine, count) = route(sentence_encoder, document, question, words)
            assert picked is routes.adapters[i] and index == i and 0 < cosine <= 1 and count == 3
    assert route(sentence_encoder, alone, KESSEL_QUESTIONS[0]) == (alone, None)  # no routes: itself
    assert sentence_groups(KESSEL, 2) == [" ".join(pieces[:2]), pieces[2]]
    with pytest.raises(GeneratorError, match="empty"):
        document_routes(generator, "   ")


def test_generate_with_routes_gives_documents_compressed_routes_in_one_batch(base, sentence_encoder):
    from hyperadapter.generator.routed import generate_with_routes, pieces_for, sentence_groups
    from hyperadapter.config import DEFAULT_GENERATOR
    generator = Generator.from_pretrained(DEFAULT_GENERATOR, base, sentence_encoder)
    one_sentence = "The Kessel mill was rebuilt in 1923."
    items = [("document", KESSEL), ("task", "Say hi politely."), ("document", one_sentence)]
    made = generate_with_routes(generator, items, rank=4, max_routes=32)
    plain = generator.generate_many(items)
    for got, want in zip(made, plain):  # the adapters themselves are what generate_many makes
        assert worst_relative_difference(got, want) < 0.02
    assert made[1].routes is None and made[2].routes is None  # a task, and a document of one sentence
    routes = made[0].routes
    assert len(routes.adapters) == 3 and all(a.rank == 4 and a.alpha == 4.0 for a in routes.adapters)
    assert routes.adapters[0].weights[next(iter(routes.adapters[0].weights))][0].dtype == torch.float16
    # each route is its sentence's adapter compressed to rank 4: the best rank-4 approximation of its update
    sentence = generator.generate_adapter(sentence_groups(KESSEL)[1], "document")
    module = "model.layers.3.mlp.down_proj"
    full, four = sentence.delta_weight(module), routes.adapters[1].delta_weight(module)
    best = sentence.compressed(4).delta_weight(module)
    assert relative_difference(four, best) < 0.02 and relative_difference(four, full) < 1.0
    # past max_routes, sentences are grouped: as few per route as keep within it
    assert pieces_for(KESSEL, 2) == sentence_groups(KESSEL, 2)
    assert len(generate_with_routes(generator, items[:1], rank=8, max_routes=2)[0].routes.adapters) == 2


def test_the_service_gives_a_chat_one_route_per_user_message_and_a_task_none(base, sentence_encoder):
    from hyperadapter.config import DEFAULT_GENERATOR, Settings
    from hyperadapter.generator.routed import generate_served, route
    generator = Generator.from_pretrained(DEFAULT_GENERATOR, base, sentence_encoder)
    chat = "user: My horse is called Atticus.\nassistant: Noted.\nuser: I work as a glassblower in Bergen.\n"
    items = [("conversation", chat), ("task", "Say hi politely."), ("conversation", chat.splitlines(keepends=True))]
    made = generate_served(generator, items, Settings())
    assert made[1].routes is None
    for adapter in (made[0], made[2]):  # a chat given whole or as its messages: the user's two are routed
        assert len(adapter.routes.adapters) == 2 and all(a.rank == 1 for a in adapter.routes.adapters)
        assert route(sentence_encoder, adapter, "What is my horse called?", 3.0)[1].sentence == 0
        assert route(sentence_encoder, adapter, "Where do I work?", 3.0)[1].sentence == 1
    assert generate_served(generator, items[:1], Settings(conversation_max_routes=1))[0].routes.vectors.shape[0] == 1
    assert generate_served(generator, items[:1], Settings(conversation_max_routes=0))[0].routes is None


KESSEL_PIECES = [s + "." for s in KESSEL.rstrip(".").split(". ")]


def test_a_long_sentence_is_routed_as_its_clauses_of_at_least_eight_words():
    from hyperadapter.generator.routed import clauses, pieces_for
    long = ("In 1923, after the spring flood had destroyed most of the old town, the Kessel mill at Drau was rebuilt "
            "by the carpenter Ida Wren, who had trained in Vienna; it still stands.")
    parts = clauses(long, 24)
    assert parts == ["In 1923, after the spring flood had destroyed most of the old town,",
                     "the Kessel mill at Drau was rebuilt by the carpenter Ida Wren,",
                     "who had trained in Vienna; it still stands."]
    assert " ".join(parts) == long and clauses(long, 40) == [long]
    assert clauses("One, two, three, four, five, six, seven, eight, nine, ten.", 5) == [
        "One, two, three, four, five, six, seven, eight, nine, ten."]  # "nine, ten." is too short: rejoined
    text = f"{KESSEL} {long}"
    assert pieces_for(text, 128) == [*KESSEL_PIECES, long] and pieces_for(text, 128, 24) == [*KESSEL_PIECES, *parts]
    assert len(pieces_for(text, 3, 24)) == 3  # past the cap, consecutive pieces share a route


def test_generate_cli_routes_a_stored_document_by_its_prompt(tmp_path, capsys, monkeypatch):
    from hyperadapter.cli import main
    (tmp_path / "models").symlink_to(default_data_root() / "models")
    monkeypatch.setenv("HYPERADAPTER_DATA_ROOT", str(tmp_path))
    assert main(["adapter", "create", "--kind", "document", "--text", KESSEL, "--out", str(tmp_path / "out")]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["routes"] == 3 and (tmp_path / "out" / "adapter_routes.safetensors").is_file()
    asked = ["generate", "--adapter", str(tmp_path / "out"), "--prompt", KESSEL_QUESTIONS[2], "--max-new-tokens", "6"]
    assert main(asked) == 0
    routed = capsys.readouterr()
    assert "routed to sentence 3 of 3" in routed.err and routed.out.strip()
    assert main(asked + ["--no-route"]) == 0
    whole = capsys.readouterr()
    assert "routed" not in whole.err and whole.out.strip()
    assert main(["generate", "--kind", "document", "--text", KESSEL, "--prompt", KESSEL_QUESTIONS[0],
                 "--max-new-tokens", "6"]) == 0  # made (or reused) through the store, and routed the same way
    assert "routed to sentence 1 of 3" in capsys.readouterr().err
