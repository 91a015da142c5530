"""bf16 only where the CPU multiplies it in hardware: elsewhere the same code runs in float32."""

from __future__ import annotations

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
