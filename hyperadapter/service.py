"""The parts a running hyperadapter needs, built once from Settings: the frozen base, the runtime,
the sentence encoder, the generator, the adapter store and the cache in front of it. The CLI, the
batch job and the API all start from here, so they behave the same."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperadapter.base import Base, load_base
from hyperadapter.config import Settings
from hyperadapter.embedding import SentenceEncoder
from hyperadapter.runtime import LoraRuntime


@dataclass
class Services:
    settings: Settings
    base: Base
    runtime: LoraRuntime
    encoder: SentenceEncoder
    generator: object | None
    store: object
    cache: object
    generate_many: object = None  # [(kind, context)] -> [Adapter], batched through the base

    @classmethod
    def create(cls, settings: Settings, load_generator: bool = True) -> "Services":
        from hyperadapter.generator import Generator, GeneratorError
        from hyperadapter.generator.routed import generate_served
        from hyperadapter.retrieval.cache import AdapterCache
        from hyperadapter.retrieval.store import AdapterStore

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        base = load_base(settings.base_model, settings.models_dir)
        runtime = LoraRuntime(base)
        # float32 even where the generator runs int8: an int8 encoder's embeddings were 0.93-0.99 cosine
        # from float32's, as far as the cache's near-match thresholds (0.97-0.985) reach
        encoder = SentenceEncoder()
        generator = None
        if load_generator:
            path = Path(settings.generator)
            if not path.is_dir():
                raise GeneratorError(f"no generator checkpoint at {path}; train one (`hyperadapter train`) "
                                     f"or point HYPERADAPTER_GENERATOR at one")
            generator = Generator.from_pretrained(path, base, encoder, int8=True)
        store = AdapterStore.from_settings(settings)
        lock = threading.Lock()

        def generate_many(items):
            if generator is None:
                raise GeneratorError("this process was started without a generator")
            with lock:  # one generation at a time: they share the base's threads anyway
                return generate_served(generator, items, settings)

        def generate(kind: str, context: str):
            return generate_many([(kind, context)])[0]

        cache = AdapterCache.from_settings(settings, store, encoder, generate,
                                           maker=generator.name if generator is not None else None)
        return cls(settings, base, runtime, encoder, generator, store, cache, generate_many)

    def adapter_for(self, kind: str, context: str, *, owner: str, reuse: bool = True):
        """Create or reuse an adapter for this context (see retrieval.cache for the policy)."""
        return self.cache.get_or_create(kind, context, owner=owner, reuse=reuse, base_model=self.base.model_id)

    def close(self) -> None:
        self.store.close()
