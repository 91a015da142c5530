"""The multi-task LoRA baseline: one adapter trained on the training split of every kind, with the
context absent from the prompt, exactly the queries the generator is trained on. It shows what
training data alone buys without reading the context (answer format, priors)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hyperadapter.base import load_base
from hyperadapter.config import load_settings
from hyperadapter.data.schema import KINDS, Query, load_split
from hyperadapter.runtime import LoraRuntime
from hyperadapter.training.examples import ExampleSampler
from hyperadapter.training.lora import train_lora


@dataclass
class MultitaskRecipe:
    trainer: str = "multitask-lora"
    out_dir: str = "runs/multitask-lora"
    data_dir: str = ""
    base_model: str = "default"
    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    rank: int = 8
    seed: int = 0
    kind_weights: dict[str, float] = field(default_factory=lambda: {
        "task": 0.3, "demonstrations": 0.15, "document": 0.35, "conversation": 0.2})
    threads: int = 0  # torch threads (0: torch's default)
    lead_space: list[str] = field(default_factory=lambda: ["document", "conversation"])  # as the generator's recipe


def load_multitask_recipe(path: str | Path, **overrides) -> MultitaskRecipe:
    raw = tomllib.loads(Path(path).read_text())
    unknown = set(raw) - {f.name for f in dataclasses.fields(MultitaskRecipe)}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return MultitaskRecipe(**raw)


def train_multitask(recipe: MultitaskRecipe) -> Path:
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    settings = load_settings()
    base = load_base(recipe.base_model, settings.models_dir)
    runtime = LoraRuntime(base)
    data_dir = Path(recipe.data_dir) if recipe.data_dir else settings.prepared_data_dir
    train = {k: load_split(data_dir, "train", k) for k in KINDS if recipe.kind_weights.get(k, 0) > 0}
    sampler = ExampleSampler(train, recipe.kind_weights, seed=recipe.seed, selfsup_share=0.0,
                             lead_space=tuple(recipe.lead_space))
    pairs = [Query(e.input, [e.target], list(e.choices) or None, e.label if e.choices else None)
             for e in sampler.sample(recipe.steps * recipe.batch_size, 1)]
    adapter = train_lora(base, runtime, pairs, steps=recipe.steps, lr=recipe.lr, batch_size=recipe.batch_size,
                         rank=recipe.rank, seed=recipe.seed, progress=True,
                         metadata={"kind": "multitask", "steps": recipe.steps})
    return adapter.save(Path(recipe.out_dir))
