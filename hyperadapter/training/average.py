"""Weight averaging of generator checkpoints ("model soup", WiSE-FT): `average_checkpoints`.

A generator continued from another (stage 18 from stage 16, by way of 17) stays in its basin, and
the average of the two often keeps what each does well: stage 18 mended one-message chats and lost
documents and locality, and their average scored above both on validation tasks and chats. Only
checkpoints of one architecture and settings can be averaged, every tensor by the same weights, in
float32. The result is an ordinary checkpoint; no base model is loaded to make it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from hyperadapter.generator.config import GeneratorConfig
from hyperadapter.generator.model import CONFIG, WEIGHTS, checkpoint_name, holds_checkpoint, write_checkpoint


class AverageError(ValueError):
    pass


def _read(directory: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor], str]:
    name = checkpoint_name(directory)
    # settings as the generator reads them: a config written before a setting existed has its default
    return GeneratorConfig.load(directory / CONFIG), load_file(directory / WEIGHTS), name


def average_checkpoints(directories: Sequence[str | Path], weights: Sequence[float] | None,
                        out: str | Path, keep: Sequence[str] = ()) -> Path:
    """Write to `out` the checkpoint whose every tensor is sum_i weights[i] * checkpoint_i's (weights
    default to equal, and are scaled to sum to 1), except the tensors named in `keep`, taken as they
    are from the last checkpoint. `keep` is for parameters the others only hold because they were
    grown to match (copy keys added at zero to an older generator): averaged, such a tensor would be
    the last one's shrunk, or mixed with an untrained draw. Refuses checkpoints whose settings or
    tensors differ, unknown `keep` names, weights that are negative or all zero, and an `out` that
    already holds a checkpoint."""
    directories = [Path(d) for d in directories]
    if len(directories) < 2:
        raise AverageError("give at least two checkpoints to average")
    weights = [1.0] * len(directories) if weights is None else [float(w) for w in weights]
    if len(weights) != len(directories):
        raise AverageError(f"{len(weights)} weights for {len(directories)} checkpoints")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise AverageError(f"weights must be non-negative and not all zero, got {weights}")
    weights = [w / sum(weights) for w in weights]
    out = Path(out)
    if holds_checkpoint(out):
        raise AverageError(f"{out} already holds a checkpoint; choose another folder")

    config, tensors, first = _read(directories[0])
    unknown = sorted(set(keep) - tensors.keys())
    if unknown:
        raise AverageError(f"no tensor named {', '.join(unknown)} to keep; "
                           f"the checkpoints hold {', '.join(sorted(tensors))}")
    dtypes = {k: v.dtype for k, v in tensors.items()}
    total = {k: weights[0] * v.float() for k, v in tensors.items()}
    names = [first]
    for directory, w in zip(directories[1:], weights[1:]):
        other_config, tensors, name = _read(directory)
        changed = config.changed(other_config)
        if changed:
            raise AverageError(f"{directory} has other settings than {directories[0]}: {', '.join(changed)}")
        if tensors.keys() != total.keys() or any(tensors[k].shape != total[k].shape for k in total):
            raise AverageError(f"{directory} has other tensors than {directories[0]}")
        for k, v in tensors.items():
            total[k] += w * v.float()
        names.append(name)
    for k in keep:
        total[k] = tensors[k].float()  # the last checkpoint's, read in the loop above

    extra = {"averaged_from": names, "weights": weights, "kept_from_last": sorted(keep)}
    return write_checkpoint(out, {k: v.to(dtypes[k]) for k, v in total.items()}, config, extra)
