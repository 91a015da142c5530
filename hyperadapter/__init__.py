"""hyperadapter: turn context into LoRA adapters for a frozen language model, cache them, serve them.

Modules: `config` (settings), `base` (the frozen model), `adapter` (the Adapter value, PEFT format),
`runtime` (many adapters per batch, no weight mutation); packages `generator`, `retrieval`,
`training`, `data`, `evaluation`, `api`; `cli` is the command line.
"""

__version__ = "0.1.0"
