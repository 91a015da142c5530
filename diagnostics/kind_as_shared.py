"""A generator checkpoint whose shared weights are one kind's own weights, e.g. the shipped chats' (stage 35).

Why: the chat kind's keyed, competing copy slots learned to write a stated fact into an adapter ("my sister is
Clara" -> " Clara" when asked about the sister). A demonstrated pair ("banana -> river") is the same shape of thing,
so a diagnostic can start demonstrations from those weights instead of stage 16's. The other kinds' own weights
are dropped; the config keeps everything else (a training recipe's [generator] table then sets routing and layers).
  python diagnostics/kind_as_shared.py checkpoints/smollm2-135m-generator conversation runs/diagnostic-chat-weights
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.generator.model import split_own_weights  # noqa: E402


def main(source: Path, kind: str, out: Path) -> None:
    config = json.loads((source / "generator_config.json").read_text())
    if kind not in config.get("own_weights", []):
        raise SystemExit(f"{source} holds no own weights for {kind!r} (own: {config.get('own_weights', [])})")
    _, per_kind = split_own_weights(load_file(source / "generator.safetensors"), config["own_weights"])
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in per_kind[kind].items()}, out / "generator.safetensors")
    config["own_weights"] = []
    (out / "generator_config.json").write_text(json.dumps(config, indent=2))
    print(f"wrote {out}: {kind}'s weights as the shared ones")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
