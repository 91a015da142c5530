"""What two of the generator's latency measures buy, each switched off in turn, in one process.

  - the sentence encoder on a side thread beside the base's feature pass (off: one after the other);
  - input widths padded to multiples of 16 (off: each text's own width). oneDNN builds a kernel for
    every new input shape, so this shows on texts of lengths the process has not seen yet, as in real
    traffic: every run here is a one-sentence description of a length not used before.
The variants take turns run by run, so the machine's drift falls on all alike; p50 and the ratios.
Run: .venv/bin/python benchmarks/latency_ablation.py [--runs 40] [--generator DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hyperadapter.generator.encoder as encoder_module  # noqa: E402
import hyperadapter.generator.model as model_module  # noqa: E402
from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402

WORDS = ("short", "clear", "formal", "plain", "polite", "exact", "brief", "simple", "direct", "careful")


class InlineExecutor:
    """An executor that runs the job at once, on the caller's thread."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future


def description(i: int, variant: int) -> str:
    """A description of a length no earlier run had (words added by run), new text per variant."""
    extra = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(i))
    return f"Classify the sentiment of the given movie review as positive or negative ({variant}), in {extra} words."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--generator", help="generator checkpoint (default: the shipped one)")
    args = ap.parse_args()
    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    generator = Generator.from_pretrained(args.generator or settings.generator, base, SentenceEncoder())
    side, bucket = model_module._SIDE, encoder_module.bucket
    padded_encoder = generator.sentence_encoder.tokenizer.pad

    def set_variant(parallel: bool, buckets: bool) -> None:
        model_module._SIDE = side if parallel else InlineExecutor()
        encoder_module.bucket = bucket if buckets else (lambda width, step=None: width)
        generator.sentence_encoder.tokenizer.pad = (
            padded_encoder if buckets else lambda *a, **k: padded_encoder(*a, **{**k, "pad_to_multiple_of": None}))

    variants = {"as shipped": (True, True), "encoder not beside the feature pass": (False, True),
                "widths not padded to 16": (True, False)}
    times = {name: [] for name in variants}
    generator.generate_adapter(description(0, 0), "task")
    for i in range(1, args.runs + 1):
        for v, (name, flags) in enumerate(variants.items()):
            set_variant(*flags)
            text = description(i, v)
            start = time.perf_counter()
            generator.generate_adapter(text, "task")
            times[name].append(time.perf_counter() - start)
    set_variant(True, True)
    shipped = statistics.median(times["as shipped"])
    print(f"\ngenerator {generator.name}; {args.runs} one-sentence descriptions of new lengths, taking turns\n")
    print(f"{'variant':40} {'p50 ms':>8}   vs as shipped")
    for name, xs in times.items():
        print(f"{name:40} {1000 * statistics.median(xs):8.1f}   x{statistics.median(xs) / shipped:.2f}")


if __name__ == "__main__":
    main()
