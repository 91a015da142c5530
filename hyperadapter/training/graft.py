"""Weights of one's own for a kind: `graft_kind` puts another checkpoint's weights under one kind.

A kind trained alone (stage 30: documents only, from stage 16) gives better adapters of that kind
and worse ones of the others: the hypernetwork's weights are shared. Grafted, the result makes that
kind's adapters with the donor's weights and every other kind's with the base checkpoint's, bit for
bit (GeneratorConfig.own_weights). Stages 15-29 each traded one kind against another; with a graft,
a change to one kind is judged on that kind alone. No base model is loaded to make it.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from hyperadapter.generator.config import KIND_IDS, GeneratorConfig
from hyperadapter.generator.model import (CONFIG, OWN_PREFIX, WEIGHTS, checkpoint_name, holds_checkpoint,
                                          split_own_weights, write_checkpoint)


class GraftError(ValueError):
    pass


def graft_kind(base: str | Path, kind: str, donor: str | Path, out: str | Path) -> Path:
    """Write to `out` the checkpoint `base` with `donor`'s shared weights as the weights of `kind`
    (replacing any `base` had for it). Refuses an unknown kind, a donor of other settings or with
    kinds of its own weights, and an `out` that already holds a checkpoint."""
    base, donor, out = Path(base), Path(donor), Path(out)
    if kind not in KIND_IDS:
        raise GraftError(f"unknown context kind {kind!r}; use one of {', '.join(KIND_IDS)}")
    if holds_checkpoint(out):
        raise GraftError(f"{out} already holds a checkpoint; choose another folder")
    names = {"base": checkpoint_name(base), "donor": checkpoint_name(donor)}
    config, donor_config = GeneratorConfig.load(base / CONFIG), GeneratorConfig.load(donor / CONFIG)
    if donor_config.own_weights:
        raise GraftError(f"{donor} has weights of its own for {', '.join(donor_config.own_weights)}; "
                         "graft from a checkpoint with shared weights only")
    changed = config.changed(donor_config, ignore=("own_weights",))
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
        state.update({OWN_PREFIX.format(kind=k) + name: v for name, v in own.items()})
    config.own_weights = sorted(per_kind, key=list(KIND_IDS).index)
    return write_checkpoint(out, state, config, {"grafted": {kind: names["donor"]}, "onto": names["base"]})
