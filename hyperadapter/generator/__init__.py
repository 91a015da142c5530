"""The generator: context encoders (sentence encoder + the frozen base's own hidden states, read in
chunks) and the hypernetwork that maps them to LoRA factors for every target module of every layer.
`Generator.generate_adapter(context, kind) -> Adapter` is the entry point."""

from hyperadapter.generator.config import KIND_IDS, GeneratorConfig
from hyperadapter.generator.model import ContextStream, Generator, GeneratorError

__all__ = ["Generator", "GeneratorConfig", "GeneratorError", "ContextStream", "KIND_IDS"]
