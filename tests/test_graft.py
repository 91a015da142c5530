"""`hyperadapter graft`: one kind's adapters from another checkpoint's weights, the rest unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hyperadapter.cli import main
from hyperadapter.generator import Generator
from tests.conftest import perturb_generator, relative_difference, worst_relative_difference

DOC = "The keeper of the north lighthouse is named Ingrid. It stands on a cliff above the harbour."
TASK = "Answer with the opposite word."
CHAT = ["user: hello", "assistant: hi", "user: my dog is called Rex."]


def _saved(base, sentence_encoder, path, seed, **config):
    g = perturb_generator(Generator.fresh(base, sentence_encoder, seed=seed, **config), seed=seed)
    g.save_pretrained(path)
    return Generator.from_pretrained(path, base, sentence_encoder)


def _same(a, b) -> bool:
    return a.weights.keys() == b.weights.keys() and all(
        torch.equal(a.weights[k][0], b.weights[k][0]) and torch.equal(a.weights[k][1], b.weights[k][1]) for k in a.weights)


def _close(a, b) -> bool:
    return a.weights.keys() == b.weights.keys() and worst_relative_difference(a, b) < 2e-2


def test_a_grafted_kind_uses_the_donor_and_every_other_kind_stays_bit_for_bit(base, sentence_encoder, tmp_path, capsys):
    shared = _saved(base, sentence_encoder, tmp_path / "shared", seed=1)
    donor = _saved(base, sentence_encoder, tmp_path / "donor", seed=2)
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"document={tmp_path / 'donor'}",
                 "--out", str(tmp_path / "grafted")]) == 0
    assert "saved" in capsys.readouterr().out
    grafted = Generator.from_pretrained(tmp_path / "grafted", base, sentence_encoder)
    assert grafted.config.own_weights == ["document"]
    with safe_open(tmp_path / "grafted" / "generator.safetensors", framework="pt") as f:
        extra = json.loads(f.metadata()["extra"])
    assert extra["grafted"]["document"].split("@")[0] == "donor" and extra["onto"].split("@")[0] == "shared"

    # adapters one at a time: the other kinds' are the shared checkpoint's, bit for bit
    assert _same(grafted.generate_adapter(TASK, "task"), shared.generate_adapter(TASK, "task"))
    assert _same(grafted.generate_adapter(CHAT, "conversation"), shared.generate_adapter(CHAT, "conversation"))
    assert _same(grafted.generate_adapter(DOC, "document"), donor.generate_adapter(DOC, "document"))
    assert not _same(grafted.generate_adapter(DOC, "document"), shared.generate_adapter(DOC, "document"))

    # one batch mixing kinds: rows of the two nets go in separate groups and come back in order
    # (a batch pads the base's feature pass, which rounds a little differently: close, not equal)
    items = [("task", TASK), ("document", DOC), ("conversation", CHAT), ("document", DOC + " It is white.")]
    made = grafted.generate_many(items)
    assert [a.metadata["kind"] for a in made] == [k for k, _ in items]
    for adapter, (kind, context) in zip(made, items):
        alone = (donor if kind == "document" else shared).generate_adapter(context, kind)
        other = (shared if kind == "document" else donor).generate_adapter(context, kind)
        assert _close(adapter, alone) and not _close(adapter, other), kind

    # streaming reads a document with the document's weights too, and a round trip keeps them
    stream = grafted.append(grafted.stream("document"), [DOC])
    streamed = grafted.adapter_from_stream(stream)
    a, b = streamed.weights["model.layers.3.mlp.down_proj"][1], made[1].weights["model.layers.3.mlp.down_proj"][1]
    assert relative_difference(a, b) < 2e-2
    grafted.save_pretrained(tmp_path / "again")
    again = Generator.from_pretrained(tmp_path / "again", base, sentence_encoder)
    assert _same(again.generate_adapter(DOC, "document"), grafted.generate_adapter(DOC, "document"))


def test_a_compact_graft_stores_own_weights_as_float16_differences_in_less_room(base, sentence_encoder, tmp_path):
    shared = _saved(base, sentence_encoder, tmp_path / "shared", seed=1)
    donors = {kind: _saved(base, sentence_encoder, tmp_path / kind, seed=seed)
              for kind, seed in (("document", 2), ("conversation", 3))}
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"document={tmp_path / 'document'}",
                 "--out", str(tmp_path / "whole")]) == 0
    for onto, out, compact in (("shared", "one", ["--compact"]), ("whole", "two", []), ("whole", "two-compact", ["--compact"])):
        kind = "document" if out == "one" else "conversation"
        assert main(["graft", str(tmp_path / onto), "--kind", f"{kind}={tmp_path / kind}", "--out",
                     str(tmp_path / out), *compact]) == 0
    size = {d: (tmp_path / d / "generator.safetensors").stat().st_size for d in ("shared", "two", "two-compact")}
    # two kinds of their own: whole, three copies of the weights; compact, two
    assert size["two"] > 2.9 * size["shared"] and size["two-compact"] < 2.1 * size["shared"]
    with safe_open(tmp_path / "two-compact" / "generator.safetensors", framework="pt") as f:
        own = [k for k in f.keys() if not k.startswith(("kind.", "delta."))]
        deltas = [k for k in f.keys() if k.startswith("delta.")]
        assert not [k for k in f.keys() if k.startswith("kind.")]
        assert len(deltas) == 2 * len(own) and all(f.get_tensor(k).dtype == torch.float16 for k in deltas)

    grafted = Generator.from_pretrained(tmp_path / "two-compact", base, sentence_encoder)
    assert grafted.config.own_weights == ["document", "conversation"]
    assert _same(grafted.generate_adapter(TASK, "task"), shared.generate_adapter(TASK, "task"))  # shared: exact
    for kind, context in (("document", DOC), ("conversation", CHAT)):
        made = grafted.generate_adapter(context, kind)
        assert _close(made, donors[kind].generate_adapter(context, kind)), kind
        assert not _close(made, shared.generate_adapter(context, kind)), kind
    one = Generator.from_pretrained(tmp_path / "one", base, sentence_encoder)
    assert _close(one.generate_adapter(DOC, "document"), donors["document"].generate_adapter(DOC, "document"))


def test_a_donor_brings_routing_for_its_kind_alone(base, sentence_encoder, tmp_path, capsys):
    """A donor trained with competing, keyed copy slots for documents (stage 31), grafted onto a
    checkpoint that routes no kind: documents route as in the donor, the other kinds stay bit for bit."""
    shared = _saved(base, sentence_encoder, tmp_path / "shared", seed=1)
    donor = _saved(base, sentence_encoder, tmp_path / "donor", seed=2, copy_compete=10.0, copy_keys=8,
                   routed_kinds=["document"])
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"document={tmp_path / 'donor'}",
                 "--out", str(tmp_path / "grafted")]) == 0
    grafted = Generator.from_pretrained(tmp_path / "grafted", base, sentence_encoder)
    c = grafted.config
    assert (c.copy_compete, c.copy_keys, c.routed_kinds, c.own_weights) == (10.0, 8, ["document"], ["document"])
    assert _same(grafted.generate_adapter(DOC, "document"), donor.generate_adapter(DOC, "document"))
    unrouted = Generator.from_pretrained(tmp_path / "donor", base, sentence_encoder)
    unrouted.config.routed_kinds = ["task"]  # the donor's weights with documents' copy slots unrouted
    assert not _close(unrouted.generate_adapter(DOC, "document"), donor.generate_adapter(DOC, "document"))
    assert _same(grafted.generate_adapter(TASK, "task"), shared.generate_adapter(TASK, "task"))
    assert _same(grafted.generate_adapter(CHAT, "conversation"), shared.generate_adapter(CHAT, "conversation"))

    # routing is brought only onto a checkpoint that routes no kind: the graft routes documents now
    _saved(base, sentence_encoder, tmp_path / "chats", seed=3, copy_compete=10.0, copy_keys=8,
           routed_kinds=["conversation"])
    assert main(["graft", str(tmp_path / "grafted"), "--kind", f"conversation={tmp_path / 'chats'}",
                 "--out", str(tmp_path / "both")]) == 2
    assert "routes no kind, and this one routes document" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


def test_graft_refuses_bad_input_and_training_refuses_a_grafted_checkpoint(base, sentence_encoder, tmp_path, capsys):
    _saved(base, sentence_encoder, tmp_path / "shared", seed=1)
    _saved(base, sentence_encoder, tmp_path / "deeper", seed=3, feature_layer=6)
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"poem={tmp_path / 'shared'}", "--out", str(tmp_path / "x")]) == 2
    assert "unknown context kind 'poem'" in capsys.readouterr().err
    assert main(["graft", str(tmp_path / "shared"), "--kind", "document", "--out", str(tmp_path / "x")]) == 2
    assert "KIND=CHECKPOINT" in capsys.readouterr().err
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"document={tmp_path / 'deeper'}", "--out", str(tmp_path / "x")]) == 2
    assert "feature_layer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"document={tmp_path / 'shared'}", "--out", str(tmp_path / "g")]) == 0
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"task={tmp_path / 'g'}", "--out", str(tmp_path / "y")]) == 2
    assert "weights of its own for document" in capsys.readouterr().err
    before = (tmp_path / "g" / "generator.safetensors").read_bytes()
    assert main(["graft", str(tmp_path / "shared"), "--kind", f"task={tmp_path / 'shared'}", "--out", str(tmp_path / "g")]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (tmp_path / "g" / "generator.safetensors").read_bytes() == before

    from hyperadapter.training.loop import Trainer
    from hyperadapter.training.recipe import Recipe
    with pytest.raises(ValueError, match="weights of its own for document"):
        Trainer(Recipe(init_from=str(tmp_path / "g"), out_dir=str(tmp_path / "run"), steps=1))
