"""Build the configured systems and run the harness (what `hyperadapter eval` calls)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hyperadapter.config import Settings
from hyperadapter.data.schema import require_split
from hyperadapter.evaluation import report
from hyperadapter.evaluation.harness import EvalConfig, Harness
from hyperadapter.evaluation.names import GENERATOR_SYSTEMS, RESULT_NAMES, SYSTEM_NAMES
from hyperadapter.evaluation.systems import (AdapterSystem, BaseSystem, ContextInPromptSystem,
                                             FixedAdapterSystem, PerTaskLoraSystem)

if TYPE_CHECKING:
    from hyperadapter.adapter import Adapter


def catalogue_blender(generator, data_dir: Path, per_kind: int, k: int, tmp_root: Path):
    """The cache's blend mode as a `(kind, context) -> Adapter` function: a store is filled with
    adapters generated for up to `per_kind` training contexts of each kind (the "catalogue"), and
    a held-out context gets the similarity-weighted sum of its k nearest catalogue adapters."""
    from hyperadapter.data.schema import load_split
    from hyperadapter.retrieval.cache import AdapterCache
    from hyperadapter.retrieval.store import AdapterStore

    store = AdapterStore(tmp_root / "catalogue")
    encoder = generator.sentence_encoder
    # thresholds above 1: never reuse a neighbour as is, always blend (blend_min_similarity 0)
    cache = AdapterCache(store, encoder, lambda kind, ctx: generator.generate_adapter(ctx, kind),
                         {kind: 1.01 for kind in ("task", "demonstrations", "document", "conversation")},
                         blend_k=k, blend_min_similarity=0.0)
    filled: set[str] = set()

    def fill(kind: str) -> None:
        records = load_split(data_dir, "train", kind)
        step = max(1, len(records) // per_kind)
        items = [(kind, r.context) for r in records[::step][:per_kind]]
        for s in range(0, len(items), 16):
            cache.get_or_create_many(items[s:s + 16], owner="catalogue", base_model=generator.config.base_model,
                                     generate_many=generator.generate_many)
        filled.add(kind)

    def make(kind: str, context: str):
        if kind not in filled:
            fill(kind)
        result = cache.get_or_create(kind, context, owner="catalogue", base_model=generator.config.base_model)
        adapter = store.load(result.record.id)
        store.delete(result.record.id)  # keep the catalogue to training contexts only
        return adapter
    return make


def served(generator, settings: Settings):
    """`(kind, context) -> Adapter` as the service makes it: a document's with its sentence routes."""
    from hyperadapter.generator.routed import generate_served
    return lambda kind, context: generate_served(generator, [(kind, context)], settings)[0]


def load_multitask_lora(config: EvalConfig) -> "Adapter":
    """The multi-task LoRA baseline the config names, or a FileNotFoundError saying how to train it."""
    from hyperadapter.adapter import Adapter
    path = Path(config.multitask_lora)
    if not path.is_dir():
        raise FileNotFoundError(f"multi-task LoRA {path} not found: train it with "
                                "`hyperadapter train --config configs/multitask_lora.toml`")
    return Adapter.load(path)


def build_systems(config: EvalConfig, settings: Settings, base, runtime, generator=None,
                  data_dir: Path | None = None) -> list:
    unknown = set(config.systems) - set(SYSTEM_NAMES)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEM_NAMES)}")
    systems = []
    if GENERATOR_SYSTEMS & set(config.systems) and generator is None:
        from hyperadapter.embedding import SentenceEncoder
        from hyperadapter.generator import Generator
        # as the service serves it (int8 where bf16 is slow; HYPERADAPTER_INT8=0 for float32)
        generator = Generator.from_pretrained(config.generator or settings.generator, base, SentenceEncoder(), int8=True)
    for name in config.systems:
        if name == "base":
            systems.append(BaseSystem(base))
        elif name == "base+context":
            systems.append(ContextInPromptSystem(base))
        elif name in ("generated", "generated-wrong"):
            systems.append(AdapterSystem(base, served(generator, settings) if config.document_routes else
                                         lambda kind, ctx: generator.generate_adapter(ctx, kind),
                                         wrong=name == "generated-wrong"))
        elif name == "generated-unrelated":
            from hyperadapter.evaluation.harness import eval_records
            from hyperadapter.evaluation.systems import UnrelatedContextSystem

            def others(kind: str) -> list:
                return eval_records(data_dir or settings.prepared_data_dir, config, kind)

            systems.append(UnrelatedContextSystem(base, lambda kind, ctx: generator.generate_adapter(ctx, kind), others,
                                                  partner_kind=config.unrelated_kind))
        elif name == "multitask-lora":
            systems.append(FixedAdapterSystem(base, load_multitask_lora(config), RESULT_NAMES["multitask-lora"]))
        elif name in ("generated+multitask", "generated+multitask-wrong"):
            # the generated adapter on top of the multi-task LoRA: ranks concatenated, each at its own scaling
            from hyperadapter.adapter import Adapter
            shared = load_multitask_lora(config)
            def on_shared(kind: str, ctx: str, shared: Adapter = shared) -> Adapter:
                return Adapter.combine([(generator.generate_adapter(ctx, kind), 1.0), (shared, 1.0)])
            systems.append(AdapterSystem(base, on_shared, name=RESULT_NAMES["generated+multitask"],
                                         wrong=name.endswith("-wrong")))
        elif name == "blend":
            import tempfile
            tmp = Path(tempfile.mkdtemp(prefix="blend-catalogue-"))
            make = catalogue_blender(generator, data_dir or settings.prepared_data_dir, config.blend_catalogue,
                                     config.blend_k, tmp)
            system = AdapterSystem(base, make, name=f"blend of {config.blend_k} nearest training adapters")
            systems.append(system)
        elif name == "per-task-lora":
            systems.append(PerTaskLoraSystem(base, runtime, steps=config.task_lora_steps, seed=config.seed,
                                             batch_size=config.task_lora_batch, save_dir=config.task_lora_dir or None))
    return systems


def run_eval(config: EvalConfig, settings: Settings, base=None, runtime=None, generator=None) -> dict:
    from hyperadapter.base import load_base
    from hyperadapter.runtime import LoraRuntime

    data_dir = Path(config.data_dir) if config.data_dir else settings.prepared_data_dir
    for kind in config.kinds:  # the data first: without it nothing else (a baseline to train, say) helps
        require_split(data_dir, config.split, kind)
    base = base or load_base(settings.base_model, settings.models_dir)
    runtime = runtime or LoraRuntime(base)
    systems = build_systems(config, settings, base, runtime, generator, data_dir)
    out = Path(config.out_dir)
    written: dict = {}

    def save(partial: dict) -> None:  # after every (system, kind): a run cut short keeps what it finished
        written.update(report.write(partial, out))

    results = Harness(base, runtime, config, data_dir).run(systems, on_score=save)
    return written or report.write(results, out)
