"""A generator checkpoint whose shared weights are one kind's own weights, e.g. the shipped chats' (stage 35).

Why: the chat kind's keyed, competing copy slots learned to write a stated fact into an adapter ("my sister is
Clara" -> " Clara" when asked about the sister). A demonstrated pair ("banana -> river") is the same shape of thing,
so a diagnostic can start demonstrations from those weights instead of stage 16's. The other kinds' own weights
are dropped; the config keeps everything else (a training recipe's [generator] table then sets routing and layers).
  python diagnostics/kind_as_shared.py checkpoints/smollm2-135m-generator conversation runs/diagnostic-chat-weights
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.generator.config import GeneratorConfig  # noqa: E402
from hyperadapter.generator.model import (CONFIG, WEIGHTS, checkpoint_name, split_own_weights,  # noqa: E402
                                          write_checkpoint)


def main(source: Path, kind: str, out: Path) -> None:
    config = GeneratorConfig.load(source / CONFIG)
    if kind not in config.own_weights:
        raise SystemExit(f"{source} holds no own weights for {kind!r} (own: {config.own_weights})")
    _, per_kind = split_own_weights(load_file(source / WEIGHTS), config.own_weights)
    config.own_weights = []
    write_checkpoint(out, per_kind[kind], config, {"shared_from": {kind: checkpoint_name(source)}})
    print(f"wrote {out}: {kind}'s weights as the shared ones")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
