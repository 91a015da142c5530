"""Demonstrations with swapped labels (hyperadapter.data.relabel) and how the sampler uses them."""

from __future__ import annotations

import re

import pytest
import torch

from hyperadapter.data.builders import demonstrations
from hyperadapter.data.relabel import SYMBOLS, derangement, label_set, relabelled, remap_query
from hyperadapter.data.schema import ContextRecord, Query, write_records
from hyperadapter.evaluation.harness import EvalConfig, eval_records, load_eval_config
from hyperadapter.training.examples import MOVED, REMAPPED, SYMBOLIC, ExampleSampler
from hyperadapter.training.recipe import load_recipe
from tests.conftest import perturb_generator

SENTIMENT = ["negative", "neutral", "positive"]


def classification(name: str, n: int = 30) -> ContextRecord:
    """A task whose queries all choose among the same three labels."""
    queries = [Query(input=f"{name} review number {i}", answers=[SENTIMENT[i % 3]], choices=list(SENTIMENT),
                     label=i % 3) for i in range(n)]
    return ContextRecord(id=f"t/{name}", kind="task", group=name, source="test", context=f"Rate the {name}.",
                         metric="choice", queries=queries[:10], support=queries[10:])


def generation(name: str, n: int = 30) -> ContextRecord:
    queries = [Query(input=f"Say {name} {i}", answers=[f"{name} {i}"]) for i in range(n)]
    return ContextRecord(id=f"t/{name}", kind="task", group=name, source="test", context=f"Repeat {name}.",
                         metric="generation", queries=queries[:10], support=queries[10:])


def shown(context: str) -> dict[str, str]:
    """The demonstrated (input -> output) pairs of a demonstrations context."""
    return dict(re.findall(r"Input: (.*)\nOutput: (.*)", context))


def truth(input: str) -> str:
    return SENTIMENT[int(input.rsplit(" ", 1)[1]) % 3]


def test_label_sets_and_derangements():
    assert label_set(classification("film")) == tuple(SENTIMENT)
    assert label_set(generation("echo")) is None
    mixed = classification("mixed")
    mixed.queries[0] = Query(input="odd", answers=["a"], choices=["a", "b"], label=0)
    assert label_set(mixed) is None  # choices that differ by query are no label set

    mapping = derangement(tuple(SENTIMENT), "seed")
    assert sorted(mapping.values()) == SENTIMENT and all(k != v for k, v in mapping.items())
    assert mapping == derangement(tuple(SENTIMENT), "seed")
    q = classification("film").queries[1]
    swapped = remap_query(q, mapping)
    assert swapped.label == q.label and swapped.target == mapping[q.target] != q.target
    assert swapped.answers == [mapping[q.answers[0]]] and swapped.input == q.input


def test_sampler_swaps_labels_of_demonstrations_and_queries_alike_and_contrasts_the_two_labellings():
    records = {"demonstrations": list(demonstrations([classification("film"), generation("echo")]))}
    sampler = ExampleSampler(records, {"demonstrations": 1.0}, seed=4, remap_share=0.5)
    assert set(sampler.labels) == {"demos/t/film"}
    examples = sampler.sample(60, 2)
    swapped = [e for e in examples if e.context_key.endswith(REMAPPED)]
    plain_film = [e for e in examples if e.context_key.startswith("demos/t/film#") and e not in swapped]
    assert swapped and plain_film

    for e in swapped:
        pairs = shown(e.context)
        assert pairs and all(out != truth(inp) for inp, out in pairs.items())  # every label moved
        assert e.choices[e.label] != truth(e.input)
        # the query answers by the same permutation its demonstrations show
        variant = int(e.context_key.split("#")[1].removesuffix(REMAPPED))
        assert e.choices[e.label] == sampler._mapping("demos/t/film", variant)[truth(e.input)]
    assert all(all(out == truth(inp) for inp, out in shown(e.context).items()) for e in plain_film)

    wrong = dict(sampler.wrong_contexts(examples, ("demonstrations",)))
    for i, e in enumerate(examples):
        if not e.context_key.startswith("demos/t/film#"):
            # another task's demonstrations, as before: here the only other one, plainly labelled
            assert wrong[i].context_key.startswith("demos/t/film#") and not wrong[i].context_key.endswith(REMAPPED)
            continue
        w = wrong[i]
        # the same demonstration set under the other labelling: same inputs, other outputs
        assert w.context_key.removesuffix(REMAPPED) == e.context_key.removesuffix(REMAPPED)
        assert w.context_key.endswith(REMAPPED) != e.context_key.endswith(REMAPPED)
        assert shown(w.context).keys() == shown(e.context).keys() and shown(w.context) != shown(e.context)
        assert (w.input, w.choices, w.label) == (e.input, e.choices, e.label)


def test_without_remapping_the_batches_are_what_they_were(tmp_path):
    records = {"demonstrations": list(demonstrations([classification("film"), generation("echo")]))}
    plain = ExampleSampler(records, {"demonstrations": 1.0}, seed=2).sample(20, 2)
    off = ExampleSampler(records, {"demonstrations": 1.0}, seed=2, remap_share=0.0).sample(20, 2)
    assert [(e.context_key, e.input, e.choices) for e in plain] == [(e.context_key, e.input, e.choices) for e in off]
    assert not any(e.context_key.endswith(REMAPPED) for e in plain)

    recipe = tmp_path / "r.toml"
    recipe.write_text("remap_share = 1.5\n")
    with pytest.raises(ValueError, match="remap_share"):
        load_recipe(recipe)


def test_the_harness_scores_held_out_demonstrations_relabelled(tmp_path):
    film, echo = demonstrations([classification("film"), generation("echo")])
    swapped = relabelled(film)
    assert relabelled(echo) is None
    before, after = shown(film.context), shown(swapped.context)
    assert before.keys() == after.keys() and all(after[i] != before[i] == truth(i) for i in before)
    mapping = {truth(i): after[i] for i in before}  # the swap the demonstrations show...
    assert all(q.target == mapping[truth(q.input)] for q in swapped.queries + swapped.support)  # ...the queries ask
    assert relabelled(film) == swapped  # fixed

    write_records(tmp_path / "test" / "demonstrations.jsonl", [film, echo])
    plain = eval_records(tmp_path, EvalConfig(split="test", limit=4), "demonstrations")
    assert [r.id for r in plain] == [film.id, echo.id]
    chosen = eval_records(tmp_path, EvalConfig(split="test", limit=4, relabel=True), "demonstrations")
    assert [r.context for r in chosen] == [swapped.context] and chosen[0].queries == swapped.queries[:4]

    words = eval_records(tmp_path, EvalConfig(split="test", limit=4, relabel=True, relabel_symbols=True),
                         "demonstrations")
    renamed = shown(words[0].context)
    assert renamed.keys() == before.keys() and set(renamed.values()) <= set(SYMBOLS)
    mapping = {truth(i): renamed[i] for i in before}
    assert len(set(mapping.values())) == len(mapping)  # one word per label
    assert all(q.target == mapping[truth(q.input)] and set(q.choices) <= set(SYMBOLS) for q in words[0].queries)
    config = tmp_path / "e.toml"
    config.write_text("relabel_symbols = true\n")
    with pytest.raises(ValueError, match="relabel"):
        load_eval_config(config)


def relabelling_trainer(tmp_path, **recipe):
    """A Trainer (real base, generator nudged off its zero init) on two label tasks and a generation task's
    demonstrations, every labelled set relabelled, demonstrations anchored; `recipe`, more Recipe keys."""
    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    records = list(demonstrations([classification("film"), classification("book"), generation("echo")]))
    for split in ("train", "validation", "test"):
        write_records(tmp_path / "data" / split / "demonstrations.jsonl", records)
    trainer = Trainer(Recipe(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), contexts_per_batch=2,
                             queries_per_context=1, eval_batches=1, kind_weights={"demonstrations": 1.0},
                             remap_share=1.0, anchor_weight=0.5, anchor_kinds=["demonstrations"], bf16=False,
                             **recipe))
    perturb_generator(trainer.generator)
    return trainer, records


def test_swapped_demonstrations_are_distilled_from_the_base_that_reads_them_not_anchored(tmp_path):
    """With distill_remapped, a query of swapped demonstrations (a ranked choice) takes its KL from the
    base with those demonstrations in its prompt instead of the anchor's from the base alone; plain
    demonstrations keep the anchor and are not distilled."""
    trainer, _ = relabelling_trainer(tmp_path, distill_weight=1.0, distill_every=1)
    examples = trainer.sampler.sample(4, 1)
    swapped = [e for e in examples if e.context_key.endswith(REMAPPED)]
    assert len(swapped) == len(examples) and all(e.choices for e in swapped)
    plain = [trainer.sampler._relabelled(e) for e in swapped]  # the same queries, under the plain demonstrations
    assert all(not p.context_key.endswith(REMAPPED) and p.choices == e.choices for p, e in zip(plain, swapped))
    with torch.no_grad():
        off = trainer.losses(swapped, True)
        trainer.recipe.distill_remapped = True
        on = trainer.losses(swapped, True)
        unswapped = trainer.losses(plain, True)
    assert float(off["distill"]) == 0.0 and float(off["anchor"]) > 0.0
    assert float(on["anchor"]) == 0.0 and float(on["distill"]) > 0.0
    assert float(on["answer"]) == pytest.approx(float(off["answer"]), rel=1e-5)
    assert float(unswapped["distill"]) == 0.0 and float(unswapped["anchor"]) > 0.0
    # the teacher reads the swapped demonstrations: not the base alone, so not the anchor's KL
    assert float(on["distill"]) != pytest.approx(float(off["anchor"]), rel=1e-3)


def test_symbol_tuning_renames_labels_to_unrelated_words_and_contrasts_the_other_assignment():
    records = {"demonstrations": list(demonstrations([classification("film"), generation("echo")]))}
    sampler = ExampleSampler(records, {"demonstrations": 1.0}, seed=5, remap_share=0.5, remap_symbols=True)
    examples = sampler.sample(60, 2)
    symbolic = [e for e in examples if e.context_key.endswith(SYMBOLIC)]
    assert symbolic and not any(e.context_key.endswith(REMAPPED) for e in examples)
    wrong = dict(sampler.wrong_contexts(examples, ("demonstrations",)))
    for e in symbolic:
        pairs = shown(e.context)
        words = {truth(i): w for i, w in pairs.items()}  # the renaming the demonstrations show
        assert pairs and set(words.values()) <= set(SYMBOLS)
        assert all(words[truth(i)] == w for i, w in pairs.items())  # one word per label...
        assert len(set(words.values())) == len(words)  # ...and another for each label
        assert set(e.choices) <= set(SYMBOLS)
        variant = int(e.context_key.split("#")[1].removesuffix(SYMBOLIC))
        full = sampler._symbols("demos/t/film", variant)  # the shown pairs may not show every label
        assert e.choices[e.label] == full[truth(e.input)] and words.items() <= full.items()
        # the wrong context: the same inputs and words, each input showing another word than here
        w = wrong[examples.index(e)]
        assert w.context_key == e.context_key + MOVED
        other = shown(w.context)
        assert other.keys() == pairs.keys() and set(other.values()) <= set(full.values())
        assert all(other[i] != pairs[i] for i in pairs)
        assert (w.input, w.choices, w.label) == (e.input, e.choices, e.label)
    # plain sets keep the swapped labelling as their wrong context
    plain = [i for i, e in enumerate(examples) if e.context_key.startswith("demos/t/film#") and e not in symbolic]
    assert plain and all(wrong[i].context_key.endswith(REMAPPED) for i in plain)


def test_symbol_queries_are_not_anchored_and_distilled_only_when_asked(tmp_path):
    """The base alone knows nothing of the words a symbol set answers by: such queries get no anchor,
    while the same queries plainly labelled keep it. With distill_remapped their teacher is the base
    that reads the set."""
    trainer, records = relabelling_trainer(tmp_path, remap_symbols=True, distill_weight=1.0, distill_every=1)
    symbolic = trainer.sampler.sample(4, 1)
    assert all(e.context_key.endswith(SYMBOLIC) and set(e.choices) <= set(SYMBOLS) for e in symbolic)
    plain = trainer.sampler.examples_for(records[0], 4)
    with torch.no_grad():
        words = trainer.losses(symbolic, True)
        labels = trainer.losses(plain, True)
        trainer.recipe.distill_remapped = True
        taught = trainer.losses(symbolic, True)
    assert float(words["anchor"]) == 0.0 and float(words["distill"]) == 0.0 and float(words["answer"]) > 0.0
    assert float(labels["anchor"]) > 0.0 and float(labels["distill"]) == 0.0
    assert float(taught["distill"]) > 0.0 and float(taught["anchor"]) == 0.0
    assert float(taught["answer"]) == pytest.approx(float(words["answer"]), rel=1e-5)

    recipe = tmp_path / "r.toml"  # the two keys together are a recipe now, not an error
    recipe.write_text("remap_share = 0.5\nremap_symbols = true\ndistill_remapped = true\n")
    loaded = load_recipe(recipe)
    assert loaded.remap_symbols and loaded.distill_remapped
