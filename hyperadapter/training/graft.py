"""Weights of one's own for a kind: `graft_kind` puts another checkpoint's weights under one kind.

A kind trained alone (stage 30: documents only, from stage 16) gives better adapters of that kind
and worse ones of the others: the hypernetwork's weights are shared. Grafted, the result makes that
kind's adapters with the donor's weights and every other kind's with the base checkpoint's, bit for
bit (GeneratorConfig.own_weights). Stages 15-29 each traded one kind against another; with a graft,
a change to one kind is judged on that kind alone. No base model is loaded to make it.

A donor may also bring routing for its kind (competing copy slots, copy keys: stage 31 trained them
for documents alone) onto a checkpoint that routes no kind. The result then routes that kind only,
and the other weights grow zero keys that no unrouted kind reads: their adapters stay bit for bit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file

from hyperadapter.generator.config import KIND_IDS, GeneratorConfig
from hyperadapter.generator.hypernet import HyperNetwork
from hyperadapter.generator.model import (CONFIG, WEIGHTS, checkpoint_name, holds_checkpoint, own_weights_state,
                                          split_own_weights, write_checkpoint)


# Settings of how copy slots are routed (hypernet.py): a donor may bring its own for its kind
ROUTING = ("copy_compete", "copy_keys", "copy_key_scale", "routed_kinds")


class GraftError(ValueError):
    pass


def routed(config: GeneratorConfig) -> list[str]:
    """The kinds whose copy slots compete or carry keys under `config` (none when neither is on)."""
    return list(config.routed_kinds) if config.copy_compete or config.copy_keys else []


def _routing_for(config: GeneratorConfig, donor: GeneratorConfig, kind: str) -> GeneratorConfig | None:
    """The grafted checkpoint's config when the donor brings routing for `kind`; None when it does not."""
    if all(getattr(config, k) == getattr(donor, k) for k in ROUTING):
        return None
    if routed(config):
        differ = ", ".join(k for k in ROUTING if getattr(config, k) != getattr(donor, k))
        raise GraftError(f"the donor routes its copy slots otherwise ({differ}); a graft brings routing only "
                         f"onto a checkpoint that routes no kind, and this one routes {', '.join(routed(config))}")
    if kind not in routed(donor):
        return None  # the donor copies for its kind without routing, as the base does for every kind
    brought = {k: getattr(donor, k) for k in ROUTING if k != "routed_kinds"}
    return dataclasses.replace(config, routed_kinds=[kind], **brought)


def graft_kind(base: str | Path, kind: str, donor: str | Path, out: str | Path, compact: bool = False) -> Path:
    """Write to `out` the checkpoint `base` with `donor`'s shared weights as the weights of `kind`
    (replacing any `base` had for it), and its routing for `kind` if it has any (see the module doc).
    `compact` stores every kind's own weights as float16 differences from the shared ones (about half
    the room; generator.model.DELTA_PREFIX): the other kinds' adapters are then close to, not bit for
    bit, what they were when their own weights were whole.
    Refuses an unknown kind, a donor of other settings or with kinds of its own weights, and an `out`
    that already holds a checkpoint."""
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
    changed = config.changed(donor_config, ignore=("own_weights", *ROUTING))
    if changed:
        raise GraftError(f"{donor} has other settings than {base}: {', '.join(changed)}")
    routing = _routing_for(config, donor_config, kind)
    tensors = load_file(base / WEIGHTS)
    shared, per_kind = split_own_weights(tensors, config.own_weights)
    donor_tensors = load_file(donor / WEIGHTS)
    if routing is not None:  # the base's weights grow the donor's (zero) keys, read by no kind they serve
        config = routing
        wanted = {k: v.shape for k, v in HyperNetwork(config).state_dict().items()}
        shared = _grown(shared, wanted)
        per_kind = {k: _grown(own, wanted) for k, own in per_kind.items()}
    if donor_tensors.keys() != shared.keys() or any(donor_tensors[k].shape != v.shape for k, v in shared.items()):
        raise GraftError(f"{donor} has other tensors than {base}")
    per_kind[kind] = donor_tensors
    state = own_weights_state(shared, per_kind, compact)
    config.own_weights = sorted(per_kind, key=list(KIND_IDS).index)
    return write_checkpoint(out, state, config, {"grafted": {kind: names["donor"]}, "onto": names["base"]})


def _grown(tensors: dict[str, torch.Tensor], wanted: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """`tensors` plus zeros for the names in `wanted` they lack."""
    return {**tensors, **{k: torch.zeros(shape) for k, shape in wanted.items() if k not in tensors}}
