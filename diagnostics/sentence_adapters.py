"""A document's adapter as the sum of its sentences' adapters (no training).

Why: with the served penalties, the shipped generator's adapter of a document cut to its first sentence scores
F1 15.3 on that sentence's questions (validation), against base+context 23.2 there: two thirds of reading it.
The adapter of a whole paragraph scores 8.3, against about half of reading it. A generator of fixed width
seems to keep one sentence better than six. Here each sentence (or each `--group` sentences) gets its own
adapter and the document's adapter is their sum, ranks concatenated (Adapter.combine: exact), each scaled by
`--weight`: 1 (the plain sum), mean (1/n) or sqrt (1/sqrt n). Rank grows with the document (rank 8 per piece).
`--weight centred` (added after "one" and "mean" were read: the plain sum scored 1.9, the mean 8.2): the sum minus
n - 1 copies of a common adapter, the mean of the sentence adapters of `--common-docs` training paragraphs
compressed to rank `--common-rank`. If a sentence's adapter is a part every context shares (the kind's manner of
answering) plus the sentence's own, the plain sum repeats the shared part n times; this keeps it once.
  python diagnostics/sentence_adapters.py --config configs/eval_validation_whole_documents_stronger.toml \\
      --out results/validation-documents-sentence-sum [--weight one|mean|sqrt] [--group 1] [--wrong]
It writes "sentence adapters summed (<weight>, <group>)", and with `--wrong` the same from another paragraph.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_memory import parsed, run_harness  # noqa: E402

from hyperadapter.adapter import Adapter  # noqa: E402
from hyperadapter.data.schema import load_split  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation.systems import AdapterSystem  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.generator.routed import sentence_groups as pieces  # noqa: E402

WEIGHTS = {"one": lambda n: 1.0, "mean": lambda n: 1.0 / n, "sqrt": lambda n: 1.0 / math.sqrt(n)}


def common_adapter(generator: Generator, documents: list[str], group: int, rank: int) -> Adapter:
    """The mean of the sentence adapters of `documents`, compressed to `rank`."""
    parts = [p for d in documents for p in pieces(d, group)]
    adapters = [a for i in range(0, len(parts), 16)
                for a in generator.generate_many([("document", p) for p in parts[i:i + 16]])]
    return Adapter.combine([(a, 1.0 / len(adapters)) for a in adapters], rank=rank)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help='an eval config with kinds = ["document"]')
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weight", choices=sorted(WEIGHTS) + ["centred"], default="one")
    parser.add_argument("--group", type=int, default=1, help="sentences per adapter")
    parser.add_argument("--wrong", action="store_true", help="also score another paragraph's summed adapter")
    parser.add_argument("--generator", default=None)
    parser.add_argument("--common-docs", type=int, default=64)
    parser.add_argument("--common-rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args, config, settings, base = parsed(parser)
    generator = Generator.from_pretrained(args.generator or config.generator or settings.generator, base,
                                          SentenceEncoder(), int8=True)

    common = None
    if args.weight == "centred":
        data_dir = Path(config.data_dir) if config.data_dir else settings.prepared_data_dir
        train = [r.context for r in load_split(data_dir, "train", "document")[:args.common_docs]]
        common = common_adapter(generator, train, args.group, args.common_rank)

    def make(kind: str, context: str) -> Adapter:
        parts = pieces(context, args.group)
        adapters = generator.generate_many([(kind, p) for p in parts])
        if common is not None:
            return Adapter.combine([(a, 1.0) for a in adapters] + [(common, 1.0 - len(parts))])
        w = WEIGHTS[args.weight](len(parts))
        return Adapter.combine([(a, w) for a in adapters])

    name = f"sentence adapters summed ({args.weight}, {args.group})"
    systems = [AdapterSystem(base, make, name=name)]
    if args.wrong:
        systems.append(AdapterSystem(base, make, name=name, wrong=True))
    run_harness(base, config, settings, systems, args.out)


if __name__ == "__main__":
    main()
