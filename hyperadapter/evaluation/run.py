"""Build the configured systems and run the harness (what `hyperadapter eval` calls)."""

from __future__ import annotations

from pathlib import Path

from hyperadapter.config import Settings
from hyperadapter.evaluation import report
from hyperadapter.evaluation.harness import EvalConfig, Harness
from hyperadapter.evaluation.systems import (AdapterSystem, BaseSystem, ContextInPromptSystem,
                                             FixedAdapterSystem, PerTaskLoraSystem)

SYSTEM_NAMES = ("base", "base+context", "generated", "generated-wrong", "multitask-lora", "per-task-lora")


def build_systems(config: EvalConfig, settings: Settings, base, runtime, generator=None) -> list:
    unknown = set(config.systems) - set(SYSTEM_NAMES)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEM_NAMES)}")
    systems = []
    if {"generated", "generated-wrong"} & set(config.systems) and generator is None:
        from hyperadapter.embedding import SentenceEncoder
        from hyperadapter.generator import Generator
        generator = Generator.from_pretrained(config.generator or settings.generator, base, SentenceEncoder())
    for name in config.systems:
        if name == "base":
            systems.append(BaseSystem(base))
        elif name == "base+context":
            systems.append(ContextInPromptSystem(base))
        elif name in ("generated", "generated-wrong"):
            systems.append(AdapterSystem(base, lambda kind, ctx: generator.generate_adapter(ctx, kind),
                                         wrong=name == "generated-wrong"))
        elif name == "multitask-lora":
            from hyperadapter.adapter import Adapter
            path = Path(config.multitask_lora)
            if not path.is_dir():
                raise FileNotFoundError(f"multi-task LoRA {path} not found: train it with "
                                        "`hyperadapter train --config configs/multitask_lora.toml`")
            systems.append(FixedAdapterSystem(base, Adapter.load(path), "multi-task LoRA"))
        elif name == "per-task-lora":
            systems.append(PerTaskLoraSystem(base, runtime, steps=config.task_lora_steps, seed=config.seed))
    return systems


def run_eval(config: EvalConfig, settings: Settings, base=None, runtime=None, generator=None) -> dict:
    from hyperadapter.base import load_base
    from hyperadapter.runtime import LoraRuntime

    base = base or load_base(settings.base_model, settings.models_dir)
    runtime = runtime or LoraRuntime(base)
    if not config.data_dir:
        config.data_dir = str(settings.prepared_data_dir)
    results = Harness(base, runtime, config).run(build_systems(config, settings, base, runtime, generator))
    report.write(results, Path(config.out_dir))
    return results
