"""Locality training data: chats cut to one or two messages, and locality queries answered by the
real base's own replies, cached beside the run; the harness's short-history option."""

from __future__ import annotations

import json

import pytest

from hyperadapter.data.builders import short_history
from hyperadapter.data.prompts import query_prompt
from hyperadapter.data.schema import ContextRecord, Query, load_split
from hyperadapter.runtime import GenerationParams
from hyperadapter.training.examples import ExampleSampler
from hyperadapter.training.locality import base_replied, sample_locality_queries
from tests.conftest import write_tiny_data

CHAT = ContextRecord(
    "user/c1/0", "conversation", "c1", "fixture",
    "user: hi there. My sister's name is Ramona.\n"
    "assistant: Nice to meet you.\n"
    "user: I like films. I live in Porto.\n"
    "assistant: Porto is lovely.\n"
    "user: Also, I play the cello.\n"
    "user: see you.",
    "fact", [Query("What is my sister's name?", ["Ramona"]), Query("Which city do I live in?", ["Porto"]),
             Query("Which instrument do I play?", ["cello"])])


@pytest.mark.parametrize("lines", [1, 2, 5])
def test_short_history_keeps_fact_stating_user_messages_and_their_questions(lines):
    cuts = [short_history(CHAT, lines, v) for v in range(6)]
    for cut in cuts:
        kept = cut.context.splitlines()
        assert len(kept) == min(lines, 3) and all(line in CHAT.context.splitlines() for line in kept)
        assert all(line.startswith("user:") for line in kept)
        assert [CHAT.context.index(line) for line in kept] == sorted(CHAT.context.index(line) for line in kept)
        assert len(cut.queries) == len(kept) and all(q.target in cut.context for q in cut.queries)
        assert cut.id == f"{CHAT.id}#short{lines}.{cuts.index(cut)}" and cut.kind == "conversation"
    assert short_history(CHAT, lines, 3) == cuts[3]  # a variant is fixed
    if lines < 3:
        assert len({c.context for c in cuts}) > 1  # variants differ
    with pytest.raises(ValueError, match="conversation"):
        short_history(ContextRecord("t", "task", "g", "fixture", "Do it.", "generation", []), 1)


def test_short_history_with_replies_keeps_the_assistants_answer_after_each_kept_message():
    cut = short_history(CHAT, 3, 0, replies=True)
    assert cut.context.splitlines() == [  # the last fact's message has no reply after it
        "user: hi there. My sister's name is Ramona.", "assistant: Nice to meet you.",
        "user: I like films. I live in Porto.", "assistant: Porto is lovely.", "user: Also, I play the cello."]
    assert cut.id == f"{CHAT.id}#short3r.0" and len(cut.queries) == 3
    two = short_history(CHAT, 2, 1, replies=True)
    plain = short_history(CHAT, 2, 1)
    assert [line for line in two.context.splitlines() if line.startswith("user:")] == plain.context.splitlines()
    assert two.queries == plain.queries and two.id != plain.id  # cached apart


def test_sampler_draws_the_recipes_message_counts_and_reply_share():
    sampler = ExampleSampler({"conversation": [CHAT]}, {"conversation": 1.0}, seed=5, short_history_share=1.0,
                             short_history_lines=(3,), short_history_replies=0.5, lead_space=("conversation",))
    keys = [e.context_key for e in sampler.sample(100, 1)]
    assert all("#short3" in k for k in keys)
    with_replies = sum("#short3r." in k for k in keys)
    assert 25 < with_replies < 75  # about half


def test_sampler_cuts_a_share_of_chats_to_short_histories(tmp_path):
    chats = [CHAT] + [ContextRecord(f"user/c{i}/0", "conversation", f"c{i}", "fixture",
                                    f"user: hello\nassistant: hi\nuser: I play the harp {i}.", "fact",
                                    [Query("Which instrument do I play?", ["harp"])]) for i in range(2, 5)]
    sampler = ExampleSampler({"conversation": chats}, {"conversation": 1.0}, seed=3, short_history_share=0.5,
                             lead_space=("conversation",))
    examples = sampler.sample(200, 1)
    short = [e for e in examples if "#short" in e.context_key]
    assert 60 < len(short) < 140  # about half
    whole = {r.id: r.context for r in chats}
    for e in short:
        own = whole[e.context_key.split("#")[0]]
        assert len(e.context.splitlines()) <= 2 and all(line in own.splitlines() for line in e.context.splitlines())
        assert e.target.strip() in e.context  # asked only about what the cut still says
    assert all(e.context == whole[e.context_key] for e in examples if e not in short)
    assert not any("#short" in e.context_key
                   for e in ExampleSampler({"conversation": chats}, {"conversation": 1.0}).sample(50, 1))


def test_locality_queries_carry_the_bases_own_replies_and_are_cached(base, runtime, tmp_path, monkeypatch):
    write_tiny_data(tmp_path / "data")
    tasks = load_split(tmp_path / "data", "train", "task")
    tasks[0].queries.append(Query("Pick one.", ["b"], choices=["a", "b"], label=1))
    pool = sample_locality_queries(tasks, 40, seed=0)
    assert len({task for task, _ in pool}) > 3 and pool == sample_locality_queries(tasks, 40, seed=0)
    pool = [p for p in pool if not p[1].choices][:3] + [(tasks[0].id, tasks[0].queries[-1])]
    path = tmp_path / "run" / "locality_replies.json"
    replied = base_replied(base, runtime, pool, 64, 8, path)
    params = GenerationParams(max_new_tokens=8)
    expected = runtime.generate([query_prompt(base, q.input) for _, q in pool[:3]], None, params)
    assert [q.target for _, q in replied[:3]] == expected
    assert [q.input for _, q in replied] == [q.input for _, q in pool] and [t for t, _ in replied] == [t for t, _ in pool]
    assert replied[3][1] == pool[3][1]  # multiple choice keeps its right choice
    assert json.loads(path.read_text())["replies"] == expected

    def no_generation(*args, **kwargs):
        raise AssertionError("the saved replies should have been read")
    monkeypatch.setattr(runtime, "generate", no_generation)
    assert base_replied(base, runtime, pool, 64, 8, path) == replied
    with pytest.raises(AssertionError, match="saved replies"):  # another pool is generated anew
        base_replied(base, runtime, pool[:2], 64, 8, path)


def test_unrelated_queries_come_from_the_locality_pool_and_another_task(tmp_path):
    write_tiny_data(tmp_path / "data")
    records = {k: load_split(tmp_path / "data", "train", k) for k in ("task", "conversation", "document")}
    pool = [(t.id, Query(f"{t.id}: say something", [f"the base's reply for {t.id}"])) for t in records["task"]]
    sampler = ExampleSampler(records, {"conversation": 1.0, "document": 1.0}, unrelated_share=1.0,
                             locality_pool=pool, lead_space=("conversation", "document"))
    by_input = {q.input: (task, q.target) for task, q in pool}
    examples = sampler.sample(30, 1)
    assert all(e.objective == "unrelated" for e in examples)
    assert {(e.input, e.target) for e in examples} <= {(q.input, q.target) for _, q in pool}  # no lead space
    assert len({e.input for e in examples}) > 2
    assert all(by_input[e.input][0] != e.context_key for e in examples)


def test_harness_cuts_chats_to_history_lines(tmp_path):
    from hyperadapter.evaluation.harness import EvalConfig, eval_records
    write_tiny_data(tmp_path / "data")
    whole = eval_records(tmp_path / "data", EvalConfig(split="validation"), "conversation")
    cut = eval_records(tmp_path / "data", EvalConfig(split="validation", history_lines=1), "conversation")
    assert [r.id + "#short1.0" for r in whole] == [r.id for r in cut]
    assert all(r.context == r.context.splitlines()[-1] and r.queries[0].target in r.context for r in cut)
    assert all(len(r.context.splitlines()) == 3 for r in whole)
    replied = eval_records(tmp_path / "data", EvalConfig(split="validation", history_lines=1, history_replies=True),
                           "conversation")
    assert [r.id + "#short1r.0" for r in whole] == [r.id for r in replied]
    assert [r.queries for r in replied] == [r.queries for r in cut]
    tasks = eval_records(tmp_path / "data", EvalConfig(split="validation", history_lines=1), "task")
    assert [r.context for r in tasks] == [r.context for r in load_split(tmp_path / "data", "validation", "task")]


def test_trainer_draws_locality_queries_with_base_replies_from_its_run_folder(tmp_path):
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    write_tiny_data(tmp_path / "data")
    recipe = Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), contexts_per_batch=4,
                    queries_per_context=1, eval_batches=1, kind_weights={"task": 1.0, "conversation": 1.0},
                    unrelated_share=1.0, unrelated_kinds=["conversation"], anchor_unrelated=True,
                    locality_replies=6, max_target_tokens=6, short_history_share=1.0)
    trainer = Trainer(recipe)
    saved = json.loads((tmp_path / "run" / "locality_replies.json").read_text())
    assert len(trainer.sampler.locality_pool) == 6 == len(saved["replies"])
    replies = {q.input: q.target for _, q in trainer.sampler.locality_pool}
    chats = [e for e in trainer.sampler.sample(20, 1) if e.kind == "conversation"]
    assert chats and all(e.objective == "unrelated" and e.target == replies[e.input] for e in chats)
    assert all("#short" in e.context_key for e in chats)


def test_eval_cli_refuses_a_negative_history_length(tmp_path, capsys):
    from hyperadapter.cli import main
    config = tmp_path / "eval.toml"
    config.write_text('split = "validation"\n')
    assert main(["eval", "--config", str(config), "--history-lines", "-1"]) == 2
    assert "--history-lines" in capsys.readouterr().err
    assert main(["eval", "--config", str(config), "--history-replies"]) == 2
    assert "--history-replies needs --history-lines" in capsys.readouterr().err


def test_recipe_refuses_empty_or_zero_short_cut_lengths_and_shares_above_one(tmp_path):
    from hyperadapter.training.recipe import load_recipe
    path = tmp_path / "r.toml"
    for bad, message in (("short_history_lines = []", "short_history_lines"),
                         ("short_history_lines = [0, 2]", "short_history_lines"),
                         ("short_history_replies = 1.5", "short_history_replies"),
                         ("short_document_sentences = []", "short_document_sentences"),
                         ("short_document_sentences = [1, 0]", "short_document_sentences"),
                         ("short_document_share = 1.5", "short_document_share")):
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            load_recipe(path)


def test_sampler_cuts_a_share_of_documents_to_their_first_sentences():
    doc = ContextRecord("d1", "document", "article", "fixture",
                        "Varnholm lies on the Esk. Its mayor is Ann Bell. In 1887 a bridge was built.", "squad",
                        [Query("Which river?", ["Esk"]), Query("Who is mayor?", ["Ann Bell"])],
                        support=[Query("When was the bridge built?", ["1887"])])
    sampler = ExampleSampler({"document": [doc]}, {"document": 1.0}, seed=4, selfsup_share=0.0,
                             short_document_share=0.5, short_document_sentences=(1, 2))
    examples = sampler.sample(200, 1)
    short = [e for e in examples if "#first" in e.context_key]
    assert 60 < len(short) < 140  # about half
    assert {e.context_key for e in short} == {"d1#first1", "d1#first2"}
    for e in short:
        assert doc.context.startswith(e.context) and len(e.context) < len(doc.context)
        assert e.target in e.context  # asked only what the cut still says: never the bridge's year
    assert all(e.context == doc.context for e in examples if e not in short)
    # a cut that keeps no question of the document is not used: the whole one is
    unanswered = ContextRecord("d2", "document", "article", "fixture", "A preface. Its mayor is Ann Bell.", "squad",
                               [Query("Who is mayor?", ["Ann Bell"])])
    only_first = ExampleSampler({"document": [unanswered]}, {"document": 1.0}, selfsup_share=0.0,
                                short_document_share=1.0, short_document_sentences=(1,))
    assert {e.context_key for e in only_first.sample(20, 1)} == {"d2"}
