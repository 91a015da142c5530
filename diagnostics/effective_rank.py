"""How many of a generated adapter's rank slots it really uses, per kind, on validation contexts.

Why: a document's sentence adapters compressed to rank 4, 2 and 1 answered every validation paragraph's questions
exactly as at rank 8 (configs/eval_validation_documents_routed.toml). For each kind this makes the adapters of
`--contexts` validation contexts with the shipped generator and reports, over their (layer, module) updates
delta_W = scaling * B @ A:
  - the share of delta_W's energy (squared singular values) in its first singular value: 1.0 is rank 1;
  - the relative error of its best rank-1 approximation (Adapter.compressed(1)): ||delta_1 - delta|| / ||delta||;
  - the effective rank exp(entropy of the normalised squared singular values) (Roy & Vetterli, 2007).
  python diagnostics/effective_rank.py [--contexts 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.data.schema import KINDS, load_split  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402


def spectrum(adapter) -> list[tuple[float, float, float]]:
    """Per (layer, module): (top-1 energy share, rank-1 relative error, effective rank)."""
    rank1 = adapter.compressed(1)
    out = []
    for module in adapter.weights:
        delta = adapter.delta_weight(module)
        energy = torch.linalg.svdvals(delta) ** 2
        p = energy / energy.sum()
        effective = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        error = float((rank1.delta_weight(module) - delta).norm() / delta.norm())
        out.append((float(p[0]), error, effective))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    generator = Generator.from_pretrained(settings.generator, base, SentenceEncoder(), int8=True)
    print(f"{'kind':16} {'contexts':>8} {'top-1 energy, median (min)':>28} {'rank-1 error, median (max)':>28} "
          f"{'effective rank, median (max)':>30}")
    for kind in KINDS:
        records = load_split(settings.prepared_data_dir, "validation", kind)[:args.contexts]
        rows = [r for a in generator.generate_many([(kind, rec.context) for rec in records]) for r in spectrum(a)]
        share, error, effective = zip(*rows)
        print(f"{kind:16} {len(records):8d} {statistics.median(share):19.5f} ({min(share):.5f}) "
              f"{statistics.median(error):19.5f} ({max(error):.5f}) "
              f"{statistics.median(effective):21.3f} ({max(effective):.3f})")


if __name__ == "__main__":
    main()
