"""hyperadapter: turn context into LoRA adapters for a frozen language model, cache them, serve them.

Modules: `config` (settings), `base` (the frozen model), `adapter` (the Adapter value, PEFT format),
`runtime` (many adapters per batch, no weight mutation); packages `generator`, `retrieval`,
`training`, `data`, `evaluation`, `api`; `cli` is the command line.
"""

import os

# OpenMP threads that busy-wait turn a 9 ms encode into 500 ms as soon as another process shares the
# cores (seen on 2-core machines); passive waiting costs little when the machine is ours alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
