"""bf16 only where the CPU multiplies it in hardware: elsewhere the same code runs in float32, and
serving (only serving) in int8, each context rounded on its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hyperadapter.packed as packed


def test_bf16_follows_the_cpu_and_can_be_forced(monkeypatch):
    monkeypatch.setenv("HYPERADAPTER_BF16", "0")
    assert not packed.fast_bf16()
    with packed.cpu_autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (nn.Linear(8, 4)(torch.ones(2, 8))).dtype == torch.float32
    layer = nn.Sequential(nn.Linear(8, 4))
    packed.bf16_linears(layer)
    assert layer[0].weight.dtype == torch.float32 and isinstance(layer[0], nn.Linear)

    monkeypatch.setenv("HYPERADAPTER_BF16", "1")
    assert packed.fast_bf16()
    with packed.cpu_autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with packed.cpu_autocast(enabled=False):  # a caller can still ask for float32
        assert not torch.is_autocast_enabled("cpu")
    packed.bf16_linears(layer, pack=False)
    assert layer[0].weight.dtype == torch.bfloat16

    monkeypatch.delenv("HYPERADAPTER_BF16")  # unforced: what oneDNN reports for this CPU
    assert packed.fast_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_the_feature_pass_is_float32_where_bf16_is_slow(base, monkeypatch):
    from hyperadapter.generator.encoder import TokenFeatures
    monkeypatch.setenv("HYPERADAPTER_BF16", "0")
    features = TokenFeatures(base, 2)
    assert all(p.dtype == torch.float32 for p in features.view.layers.parameters())
    ids = base.tokenizer("Rex is my dog.", add_special_tokens=False)["input_ids"]
    out, mask, _ = features([ids])
    with torch.no_grad():  # the base's own float32 hidden states at layer 2, through its final norm as the view's
        hidden = base.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        want = base.model.model.norm(hidden)
    torch.testing.assert_close(out[0, :len(ids)], want, rtol=1e-4, atol=1e-4)


def _int8_modules(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, packed.Int8Linear)]


def _relative_error(a, b) -> float:
    return max(float((a.delta_weight(m) - b.delta_weight(m)).norm() / b.delta_weight(m).norm()) for m in a.weights)


@pytest.mark.skipif(not packed.can_int8(), reason="this torch build has no fbgemm int8 linear")
def test_int8_is_for_serving_where_bf16_is_slow(base, monkeypatch, tmp_path):
    from hyperadapter.generator import Generator
    from tests.conftest import perturb_generator
    monkeypatch.setenv("HYPERADAPTER_BF16", "0")
    monkeypatch.delenv("HYPERADAPTER_INT8", raising=False)
    assert packed.fast_int8()
    perturb_generator(Generator.fresh(base, None, seed=5)).save_pretrained(tmp_path / "g")
    served = Generator.from_pretrained(tmp_path / "g", base, None, int8=True)
    plain = Generator.from_pretrained(tmp_path / "g", base, None)  # as training loads it
    layers = next(iter(served.features.values())).view.layers
    converted = _int8_modules(layers)
    assert converted and any(n.endswith("q_proj") for n in converted)
    assert not any(n.endswith("down_proj") for n in converted)  # kept float32 (FLOAT32_LINEARS)
    assert not _int8_modules(next(iter(plain.features.values())).view.layers)

    text = "Answer the arithmetic question with a single number."
    int8, float32 = served.generate_adapter(text, "task"), plain.generate_adapter(text, "task")
    assert any(k.startswith("int8:") for k in served.hypernet._frozen_cache)  # the heads ran in int8
    assert not any(k.startswith("int8:") for k in plain.hypernet.__dict__.get("_frozen_cache", {}))
    assert 1e-4 < _relative_error(int8, float32) < 0.2  # rounded, not another adapter

    monkeypatch.setenv("HYPERADAPTER_INT8", "0")  # turned off: float32, bit for bit
    off = Generator.from_pretrained(tmp_path / "g", base, None, int8=True)
    assert not _int8_modules(next(iter(off.features.values())).view.layers)
    again = off.generate_adapter(text, "task")
    assert all(torch.equal(again.weights[m][1], float32.weights[m][1]) for m in float32.weights)

    monkeypatch.delenv("HYPERADAPTER_INT8")
    monkeypatch.setenv("HYPERADAPTER_BF16", "1")  # where bf16 is fast, bf16 is used instead
    assert not packed.fast_int8()


@pytest.mark.skipif(not packed.can_int8(), reason="this torch build has no fbgemm int8 linear")
def test_int8_adapters_do_not_depend_on_their_batch_mates(base, monkeypatch):
    """int8 rounds each context by its own activations (packed.Int8Linear), not its batch's."""
    from hyperadapter.generator import Generator
    from tests.conftest import perturb_generator
    monkeypatch.setenv("HYPERADAPTER_BF16", "0")
    monkeypatch.delenv("HYPERADAPTER_INT8", raising=False)
    g = perturb_generator(Generator.fresh(base, None, seed=6, chunk_tokens=32, int8=True))
    story = " ".join(f"The {i}th keeper of the lighthouse at Varnholm was called Ada {i}." for i in range(12))
    items = [("task", "Sort the words."), ("document", story), ("document", "The keeper is named Ada.")]
    together = g.generate_many(items)
    for (kind, text), made in zip(items, together):
        alone = g.generate_adapter(text, kind)
        assert _relative_error(made, alone) < 5e-3, (kind, text[:20])
