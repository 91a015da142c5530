"""Contexts of one kind read by the generator as another kind, e.g. demonstrations as a task description.

Why: a demonstrations set's adapter scores what the base does (validation 19.1 against 16.4 for the base, but its
wrong-context control 17.3; test 25.2, level with the base) and hardly depends on which set it was made from, while
a task description's adapter does depend on its description. Tasks and demonstrations share every weight but the
kind embedding (both read at layer 4), so this asks, with no training, whether the task kind reads a
demonstrations set better than its own kind does.
  python diagnostics/read_as_kind.py --config configs/eval_validation_demonstrations_as_task.toml \\
      --out results/validation-demonstrations-as-task --as-kind task [--threads 1]
It writes "generated, read as <kind>" and the same with another context's adapter, as `hyperadapter eval` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_memory import parsed, run_harness  # noqa: E402

from hyperadapter.data.schema import KINDS  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation.systems import AdapterSystem  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--as-kind", choices=KINDS, required=True)
    parser.add_argument("--generator", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args, config, settings, base = parsed(parser)
    generator = Generator.from_pretrained(args.generator or config.generator or settings.generator, base,
                                          SentenceEncoder(), int8=True)

    def make(kind: str, context: str):
        return generator.generate_adapter(context, args.as_kind)

    name = f"generated, read as {args.as_kind}"
    run_harness(base, config, settings, [AdapterSystem(base, make, name=name),
                                         AdapterSystem(base, make, name=name, wrong=True)], args.out)


if __name__ == "__main__":
    main()
