"""Shared fixtures: the real default base model (converted once into the user's cache, as in
production), the runtime on it, and helpers that make small real adapters."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def base():
    from hyperadapter.base import load_base
    return load_base("default")


@pytest.fixture(scope="session")
def runtime(base):
    from hyperadapter.runtime import LoraRuntime
    return LoraRuntime(base)


@pytest.fixture(scope="session")
def sentence_encoder():
    from hyperadapter.embedding import SentenceEncoder
    return SentenceEncoder()


def make_adapter(base, seed: int, modules=("q_proj", "v_proj"), rank: int = 8, scale: float = 0.05,
                 alpha: float = 16.0):
    """A random adapter with the real shapes of `base` (nonzero A and B, so it changes outputs)."""
    from hyperadapter.adapter import Adapter
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, (fan_in, fan_out) in base.linear_shapes().items():
        if name.rsplit(".", 1)[-1] in modules:
            weights[name] = (torch.randn(rank, fan_in, generator=g) * scale,
                             torch.randn(fan_out, rank, generator=g) * scale)
    return Adapter(weights, alpha, base.model_id, {"seed": str(seed)})


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float32."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def worst_relative_difference(a, b) -> float:
    """The largest relative difference over the factors of two adapters of the same modules.
    Elementwise tolerances fail on bf16 CPUs, where a batch and a lone context round differently
    (their factors differ by ~0.5% here); another generator's factors differ by ~100% or more."""
    return max(relative_difference(a.weights[m][i], b.weights[m][i]) for m in a.weights for i in (0, 1))


def perturb_generator(generator, seed: int = 0):
    """Give a fresh generator nonzero output scales (as training would) so its adapters are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(generator.hypernet.scale_b.values()) + list(generator.hypernet.copy_gain.values()):
            p.copy_(torch.rand(p.shape, generator=g) * 0.2 + 0.05)
        for p in generator.hypernet.copy_key_out.values():  # copy keys, if any
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return generator


def write_tiny_data(root):
    """A handful of records of every kind, in the prepared layout, made here."""
    from hyperadapter.data.schema import ContextRecord, Query, write_records
    fruits = ["apple", "pear", "plum", "fig", "kiwi", "lime"]
    for split in ("train", "validation", "test"):
        recs = {
            "task": [ContextRecord(f"t{i}", "task", f"g{i}", "fixture", f"Reply with the word '{w}' whatever the input.",
                                   "generation", [Query(f"Input {j}", [w]) for j in range(6)],
                                   support=[Query(f"Example {j}", [w]) for j in range(4)]) for i, w in enumerate(fruits)],
            "demonstrations": [ContextRecord(f"d{i}", "demonstrations", f"g{i}", "fixture",
                                             f"Input: a\nOutput: {w}\n\nInput: b\nOutput: {w}", "generation",
                                             [Query(f"Input {j}", [w]) for j in range(6)]) for i, w in enumerate(fruits)],
            "document": [ContextRecord(f"doc{i}", "document", f"doc{i}", "fixture",
                                       f"The keeper of lighthouse {i} is named {w.title()}. It stands on a cliff.", "squad",
                                       [Query(f"Who keeps lighthouse {i}?", [w.title()])]) for i, w in enumerate(fruits)],
            "conversation": [ContextRecord(f"u{i}", "conversation", f"u{i}", "fixture",
                                           f"user: hello\nassistant: hi\nuser: my cat is called {w.title()}.", "fact",
                                           [Query("What is the name of my cat?", [w.title()])]) for i, w in enumerate(fruits)],
        }
        for kind, records in recs.items():
            write_records(root / split / f"{kind}.jsonl", records)


