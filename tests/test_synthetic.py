"""Generated training tasks (hyperadapter.data.synthetic) and how the sampler mixes them in."""

from __future__ import annotations

import random
import re

from hyperadapter.data.builders import demonstrations
from hyperadapter.data.schema import ContextRecord, Query, load_split
from hyperadapter.data.synthetic import sentences_of, synthetic_tasks
from hyperadapter.training.examples import ExampleSampler
from tests.conftest import write_tiny_data

NOUNS = ["harbour", "Oslo", "river", "teacher", "the museum", "a garden", "Maria", "engine", "the city", "(1998)"]
VERBS = ["opened", "was built by", "is near", "describes", "lies in", "was sold to", "faces", "follows"]


def sentences(n: int = 400) -> list[str]:
    """Sentences of varied length with and without digits, commas, capitals and parentheses."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        words = [rng.choice(NOUNS), rng.choice(VERBS), rng.choice(NOUNS)]
        words += rng.sample(["and", "of", "the", "in", "with", "for", "its", "old", "new", "stone"], rng.randint(0, 9))
        if rng.random() < 0.4:
            words.append(f"in {1900 + i % 100}")
        if rng.random() < 0.4:
            words.insert(2, "however,")
        out.append(" ".join(words).capitalize() + ".")
    return out


def quoted(text: str) -> list[str]:
    return re.findall(r'"([^"]+)"', text)


def test_tasks_are_distinct_reproducible_and_split_into_queries_and_support():
    tasks = synthetic_tasks(80, sentences(), seed=3)
    assert len(tasks) == 80 and len({t.context for t in tasks}) == 80
    assert [t.context for t in tasks] == [t.context for t in synthetic_tasks(80, sentences(), seed=3)]
    assert [t.context for t in tasks] != [t.context for t in synthetic_tasks(80, sentences(), seed=4)]
    assert {t.metric for t in tasks} == {"choice", "generation"}
    for t in tasks:
        assert t.kind == "task" and t.queries and t.support
        assert not {q.input for q in t.queries} & {q.input for q in t.support}


def test_label_tasks_answer_with_the_two_words_their_description_names_and_use_both():
    tasks = [t for t in synthetic_tasks(80, sentences(), seed=1) if t.metric == "choice"]
    assert len(tasks) > 20
    for t in tasks:
        pool = t.queries + t.support
        a, b = pool[0].choices
        assert {a, b} <= set(quoted(t.context)) and a != b  # the description spells out both labels
        assert all(q.choices == [a, b] and q.target == q.answers[0] for q in pool)
        assert {q.target for q in pool} == {a, b}  # balanced enough that both occur
        if "contains a digit" in t.context:
            assert all((q.target == a) == any(c.isdigit() for c in q.input) for q in pool)


def test_generation_answers_follow_what_the_description_says():
    tasks = [t for t in synthetic_tasks(200, sentences(), seed=2) if t.metric == "generation"]
    checked = set()
    for t in tasks:
        for q in t.queries + t.support:
            words = q.input.split()
            if t.context.startswith("Replace every"):
                old, new = quoted(t.context)
                assert q.target.split() == [new if w == old else w for w in words] and old in words
                checked.add("replace")
            elif "at the end" in t.context:
                assert q.target == f"{q.input} {quoted(t.context)[0]}"
                checked.add("append")
            elif t.context.startswith("Reverse"):
                bare = [w.strip(".,;:!?\"'()") for w in words]
                assert q.target.split() == [w for w in reversed(bare) if w]
                checked.add("reverse")
            elif "capital letters" in t.context:
                assert q.target == q.input.upper()
                checked.add("upper")
    assert checked == {"replace", "append", "reverse", "upper"}


def test_sentences_of_documents_keep_plain_sentences_of_the_wanted_length():
    doc = ContextRecord("d", "document", "d", "s", "Short one. This sentence has exactly seven words in it. "
                        "Café names are not ascii at all here.", "squad", [Query("q", ["a"])])
    assert sentences_of([doc]) == ["This sentence has exactly seven words in it."]


def test_the_sampler_draws_generated_tasks_at_their_share_and_contrasts_them_with_each_other(tmp_path):
    write_tiny_data(tmp_path / "data")
    records = {k: load_split(tmp_path / "data", "train", k) for k in ("task", "demonstrations")}
    tasks = synthetic_tasks(30, sentences(), seed=0)
    synthetic = {"task": tasks, "demonstrations": list(demonstrations(tasks))}
    weights = {"task": 1.0, "demonstrations": 1.0}

    def generated(key: str) -> bool:
        return key.split("#")[0].removeprefix("demos/").startswith("syn/")

    sampler = ExampleSampler(records, weights, seed=1, synthetic=synthetic, synthetic_share=0.5)
    examples = sampler.sample(200, 1)
    share = sum(generated(e.context_key) for e in examples) / len(examples)
    assert 0.35 < share < 0.65
    assert {e.kind for e in examples if generated(e.context_key)} == {"task", "demonstrations"}
    wrong = sampler.wrong_contexts(examples, ("task", "demonstrations"))
    assert len(wrong) == len(examples)
    assert all(generated(w.context_key) == generated(examples[i].context_key) for i, w in wrong)

    # without generated tasks (or at share 0) the batches are what they were before they existed
    plain = ExampleSampler(records, weights, seed=1).sample(20, 1)
    off = ExampleSampler(records, weights, seed=1, synthetic=synthetic, synthetic_share=0.0).sample(20, 1)
    assert [(e.context_key, e.input) for e in plain] == [(e.context_key, e.input) for e in off]
