"""Frozen linears in bfloat16, laid out once for oneDNN's CPU kernels; and whether to use bf16 at all.
Where bf16 is slow, frozen linears in int8 for inference instead (see `fast_int8`).

bf16 is used only where the CPU has bf16 matmul kernels (`fast_bf16`: AVX512-BF16, AMX or
AVX-NE-CONVERT, as oneDNN reports). Elsewhere torch emulates them: on an AVX2-only AMD EPYC a bf16
linear of the feature pass took 6x its float32 time (65 against 11 ms) and a training step ~20x
(291 s), so there `cpu_autocast` is a no-op and `bf16_linears` leaves weights in float32: the same
code, float32 numbers.

A plain bf16 `F.linear` makes oneDNN re-lay the weight out for its AMX/AVX512 kernels on every
call; with a few rows of input (a one-sentence context) that is a large share of the work. Here
the layout is done once, with the prepacked-linear ops that torch.compile's CPU backend emits
(`mkldnn._reorder_linear_weight` / `mkldnn._linear_pointwise`): the same numbers bit for bit, and
the base's 8-layer feature pass over 19 tokens ~15% faster here. Inference only (no gradients
through a packed weight). Builds without oneDNN keep plain bf16 linears. Also the one width step
(`bucket`) inputs are padded to, so that oneDNN's kernel for each input shape is built once.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import torch
from torch import Tensor, nn


_FAST_BF16: bool | None = None


def fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (oneDNN's check, made once). The environment
    variable HYPERADAPTER_BF16=0 or 1 overrides it (e.g. to compare both on one machine)."""
    global _FAST_BF16
    forced = os.environ.get("HYPERADAPTER_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if _FAST_BF16 is None:
        try:
            _FAST_BF16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (RuntimeError, AttributeError):
            _FAST_BF16 = False
    return _FAST_BF16


def cpu_autocast(enabled: bool = True) -> torch.autocast:
    """bf16 autocast on the CPU where it is fast (`fast_bf16`); elsewhere a disabled one: float32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and fast_bf16())


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, rows_hint: int = 64):
        super().__init__()
        weight = linear.weight.detach().to(torch.bfloat16)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "")


# Where bf16 runs (through oneDNN), input widths (tokens per row) are padded to multiples of this.
# oneDNN builds a kernel for every new input shape (~1-3 ms for one linear there, several times its
# matmul) and keeps only the last 1,024: with a width per text length, real traffic of varied
# lengths keeps building them. Padded widths repeat. Used by the generator's feature pass and by the
# sentence encoder. float32 and int8 (fbgemm) build nothing per shape: on an AVX2-only CPU a new
# width took no longer than a seen one, and padding a one-sentence text from ~20 tokens to 32 cost
# ~5 ms of a ~60 ms adapter, so there widths are not padded (`width_step`).
WIDTH_STEP = 16


def width_step() -> int:
    """WIDTH_STEP where bf16 is used (`fast_bf16`), else 1."""
    return WIDTH_STEP if fast_bf16() else 1


def bucket(width: int, step: int | None = None) -> int:
    """`width` rounded up to a multiple of `step` (default: `width_step()`)."""
    step = width_step() if step is None else step
    return -(-width // step) * step


def _works(check) -> bool:
    """`check()`'s truth, or False if this torch build lacks what it calls."""
    try:
        return bool(check())
    except (RuntimeError, AttributeError, ImportError, AssertionError):
        return False


@functools.cache
def can_pack() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (checked once, on a tiny layer)."""
    probe, x = nn.Linear(8, 4), torch.ones(2, 8)
    return _works(lambda: torch.equal(PackedLinear(probe)(x), nn.functional.linear(
        x.bfloat16(), probe.weight.bfloat16(), probe.bias.bfloat16())))


def bf16_linears(module: nn.Module, pack: bool = True) -> nn.Module:
    """Every nn.Linear inside `module` made bfloat16, in place: a PackedLinear where the build can,
    else the same Linear with bf16 weights (for use under bf16 autocast). Where bf16 is slow
    (`fast_bf16`), nothing changes: the module stays float32, as `cpu_autocast` runs it."""
    if not fast_bf16():
        return module
    pack = pack and can_pack()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if pack:
                setattr(parent, name, PackedLinear(child))
            else:
                child.weight.data = child.weight.data.to(torch.bfloat16)
                if child.bias is not None:
                    child.bias.data = child.bias.data.to(torch.bfloat16)
    return module


# ---------------------------------------------------------------- int8, where bf16 is slow
# On a CPU without bf16 kernels, fbgemm's dynamic int8 linear (weights int8 per output channel,
# each input quantised on the fly) is the fast path left: here (AVX2 AMD EPYC) a one-sentence
# adapter takes 48.8 ms against float32's 58.9 (the heads 14.5 against 21.0, the feature pass 13.1
# against 19.4). Its error is small where inputs are normalised and larger where a few activations
# are far out (the base's down_proj inputs), so callers choose which linears to convert. It goes
# through torch.ao's quantize_dynamic: deprecated in favour of torchao, whose int8 CPU matmul
# (torch._int_mm) is ~40x slower than float32 here; with torch pinned it works, and `can_int8`
# falls back to float32 once it does not.

@functools.cache
def can_int8() -> bool:
    """Whether this torch build has fbgemm's dynamic int8 linear (checked once, on a tiny layer)."""
    probe, x = nn.Linear(8, 4), torch.ones(2, 8)
    return _works(lambda: "fbgemm" in torch.backends.quantized.supported_engines
                  and torch.allclose(Int8Linear(probe)(x), probe(x), atol=0.1))


def fast_int8() -> bool:
    """Whether serving uses int8 linears: where bf16 is not fast (`fast_bf16`) and the build can
    (`can_int8`). HYPERADAPTER_INT8=0 turns it off (float32, as training runs)."""
    return os.environ.get("HYPERADAPTER_INT8") != "0" and not fast_bf16() and can_int8()


class Int8Linear(nn.Module):
    """An inference-only int8 copy of a linear: fbgemm's dynamic quantisation, weights per output
    channel, applied to each row of the input's first dimension on its own. fbgemm scales a whole
    input by one number, so a chunk read beside others would round by their largest activation: a
    chat's adapter streamed message by message then differed from the whole history's by up to 7%
    (one factor), where row by row it is 0.2%, as a context is never changed by its batch-mates."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        import warnings

        from torch.ao import quantization

        with warnings.catch_warnings():  # the deprecation notice (see above), once per layer
            warnings.simplefilter("ignore")
            self.inner = quantization.quantize_dynamic(nn.Sequential(linear),  # a copy: not in place
                                                       {nn.Linear: quantization.per_channel_dynamic_qconfig},
                                                       dtype=torch.qint8)[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 1 or x.shape[0] == 1:
            return self.inner(x)
        return torch.cat([self.inner(row) for row in x.split(1)])


def int8_linears(module: nn.Module, keep: Sequence[str] = ()) -> nn.Module:
    """Every nn.Linear inside `module` made an int8 copy (`Int8Linear`), in place, but those whose
    attribute name is in `keep`."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name not in keep:
                setattr(parent, name, Int8Linear(child))
    return module
