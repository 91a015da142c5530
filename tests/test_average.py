"""`hyperadapter average`: checkpoints averaged tensor by tensor, loadable, and refused when they differ."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from hyperadapter.cli import main
from hyperadapter.generator import Generator
from tests.conftest import perturb_generator


def _saved(base, sentence_encoder, path, seed, **config):
    g = perturb_generator(Generator.fresh(base, sentence_encoder, seed=seed, **config), seed=seed)
    g.save_pretrained(path)
    return g


def test_average_is_the_weighted_mean_of_every_tensor_and_loads_as_a_generator(base, sentence_encoder, tmp_path, capsys):
    a = _saved(base, sentence_encoder, tmp_path / "a", seed=1)
    b = _saved(base, sentence_encoder, tmp_path / "b", seed=2)
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "1,3",
                 "--out", str(tmp_path / "soup")]) == 0
    assert "saved" in capsys.readouterr().out
    soup = Generator.from_pretrained(tmp_path / "soup", base, sentence_encoder)
    sa, sb = a.hypernet.state_dict(), b.hypernet.state_dict()
    for name, value in soup.hypernet.state_dict().items():
        assert torch.allclose(value, 0.25 * sa[name] + 0.75 * sb[name], atol=1e-7), name
    assert not torch.equal(sa["query_free"], sb["query_free"])  # the two really differ
    with safe_open(tmp_path / "soup" / "generator.safetensors", framework="pt") as f:
        extra = json.loads(f.metadata()["extra"])
    assert extra["weights"] == [0.25, 0.75] and [n.split("@")[0] for n in extra["averaged_from"]] == ["a", "b"]
    adapter = soup.generate_adapter("Answer with the opposite word.", "task")
    assert len(adapter.weights) == 3 * base.num_layers


def test_average_keeps_named_tensors_of_the_last_checkpoint(base, sentence_encoder, tmp_path):
    a = _saved(base, sentence_encoder, tmp_path / "a", seed=1)
    b = _saved(base, sentence_encoder, tmp_path / "b", seed=2)
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--keep", "query_free,slot_emb",
                 "--out", str(tmp_path / "soup")]) == 0
    soup = Generator.from_pretrained(tmp_path / "soup", base, sentence_encoder).hypernet.state_dict()
    sa, sb = a.hypernet.state_dict(), b.hypernet.state_dict()
    for kept in ("query_free", "slot_emb"):
        assert not torch.equal(sa[kept], sb[kept]) and torch.equal(soup[kept], sb[kept]), kept
    averaged = [n for n in sa if n not in ("query_free", "slot_emb") and not torch.equal(sa[n], sb[n])]
    assert averaged  # the rest is still the mean, and differs from b's
    for name in averaged:
        assert torch.allclose(soup[name], 0.5 * sa[name] + 0.5 * sb[name], atol=1e-7), name
    with safe_open(tmp_path / "soup" / "generator.safetensors", framework="pt") as f:
        assert json.loads(f.metadata()["extra"])["kept_from_last"] == ["query_free", "slot_emb"]


def test_average_refuses_other_settings_bad_weights_and_an_existing_checkpoint(base, sentence_encoder, tmp_path, capsys):
    _saved(base, sentence_encoder, tmp_path / "a", seed=1)
    _saved(base, sentence_encoder, tmp_path / "b", seed=2)
    _saved(base, sentence_encoder, tmp_path / "deeper", seed=3, feature_layer=6)
    before = (tmp_path / "b" / "generator.safetensors").read_bytes()

    assert main(["average", str(tmp_path / "a"), str(tmp_path / "deeper"), "--out", str(tmp_path / "x")]) == 2
    assert "feature_layer" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "1,-1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "non-negative" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "1 weights for 2 checkpoints" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "half,half",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--keep", "query_free,no_such",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no tensor named no_such" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "b")]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (tmp_path / "b" / "generator.safetensors").read_bytes() == before
    assert not (tmp_path / "x").exists()
