"""Weights of one's own for a kind: `graft_kind` puts another checkpoint's weights under one kind.

A kind trained alone (stage 30: documents only, from stage 16) gives better adapters of that kind
and worse ones of the others: the hypernetwork's weights are shared. Grafted, the result makes that
kind's adapters with the donor's weights and every other kind's with the base checkpoint's, bit for
bit (GeneratorConfig.own_weights). Stages 15-29 each traded one kind against another; with a graft,
a change to one kind is judged on that kind alone. No base model is loaded to make it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from hyperadapter.generator.config import KIND_IDS, GeneratorConfig
from hyperadapter.generator.model import CONFIG, OWN_PREFIX, WEIGHTS, checkpoint_name, split_own_weights


class GraftError(ValueError):
    pass


def graft_kind(base: str | Path, kind: str, donor: str | Path, out: str | Path) -> Path:
    """Write to `out` the checkpoint `base` with `donor`'s shared weights as the weights of `kind`
    (replacing any `base` had for it). Refuses an unknown kind, a donor of other settings or with
    kinds of its own weights, and an `out` that already holds a checkpoint."""
    base, donor, out = Path(base), Path(donor), Path(out)
    if kind not in KIND_IDS:
        raise GraftError(f"unknown context kind {kind!r}; use one of {', '.join(KIND_IDS)}")
    if (out / WEIGHTS).exists() or (out / CONFIG).exists():
        raise GraftError(f"{out} already holds a checkpoint; choose another folder")
    names = {"base": checkpoint_name(base), "donor": checkpoint_name(donor)}
    config, donor_config = GeneratorConfig.load(base / CONFIG), GeneratorConfig.load(donor / CONFIG)
    if donor_config.own_weights:
        raise GraftError(f"{donor} has weights of its own for {', '.join(donor_config.own_weights)}; "
                         "graft from a checkpoint with shared weights only")
    mine, theirs = asdict(config), asdict(donor_config)
    changed = sorted(k for k in mine if k != "own_weights" and mine[k] != theirs[k])
    if changed:
        raise GraftError(f"{donor} has other settings than {base}: {', '.join(changed)}")
    tensors = load_file(base / WEIGHTS)
    shared, per_kind = split_own_weights(tensors, config.own_weights)
    donor_tensors = load_file(donor / WEIGHTS)
    if donor_tensors.keys() != shared.keys() or any(donor_tensors[k].shape != v.shape for k, v in shared.items()):
        raise GraftError(f"{donor} has other tensors than {base}")
    per_kind[kind] = donor_tensors
    state = dict(shared)
    for k, own in per_kind.items():
        state.update({OWN_PREFIX.format(kind=k) + name: v.contiguous() for name, v in own.items()})
    config.own_weights = sorted(per_kind, key=list(KIND_IDS).index)

    out.mkdir(parents=True, exist_ok=True)
    extra = {"grafted": {kind: names["donor"]}, "onto": names["base"]}
    # temp files then renames, as Generator.save_pretrained: an interrupted run leaves no half checkpoint
    save_file(state, out / (WEIGHTS + ".tmp"), metadata={"format": "pt", "extra": json.dumps(extra)})
    config.save(out / (CONFIG + ".tmp"))
    (out / (WEIGHTS + ".tmp")).replace(out / WEIGHTS)
    (out / (CONFIG + ".tmp")).replace(out / CONFIG)
    return out
