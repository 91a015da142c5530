"""What padding input widths buys the generator's latency, switched off in turn, in one process.

Input widths are padded to multiples of 16 (off: each text's own width). oneDNN builds a kernel for
every new input shape, so this shows on texts of lengths the process has not seen yet, as in real
traffic: every run here is a one-sentence description of a length not used before. The variants
take turns run by run, so the machine's drift falls on all alike; p50 and the ratio.

An earlier variant ran the sentence encoder on a side thread beside the feature pass. It cannot be
measured in one process: once a second thread has run torch ops, libgomp has more threads than
cores and every op in the process is slower, the other variants' too (here it made the side thread
look 8% faster). Across processes it was 1.3-1.6x slower, so it was removed; the comparison is two
checkouts' `benchmarks/generate_latency.py`, run in turn (the model card gives the commands).
Run: .venv/bin/python benchmarks/latency_ablation.py [--runs 40] [--generator DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hyperadapter.generator.encoder as encoder_module  # noqa: E402
from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402

WORDS = ("short", "clear", "formal", "plain", "polite", "exact", "brief", "simple", "direct", "careful")


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
    bucket = encoder_module.bucket
    padded_encoder = generator.sentence_encoder.tokenizer.pad

    def set_variant(buckets: bool) -> None:
        encoder_module.bucket = bucket if buckets else (lambda width, step=None: width)
        generator.sentence_encoder.tokenizer.pad = (
            padded_encoder if buckets else lambda *a, **k: padded_encoder(*a, **{**k, "pad_to_multiple_of": None}))

    variants = {"as shipped": True, "widths not padded to 16": False}
    times = {name: [] for name in variants}
    generator.generate_adapter(description(0, 0), "task")
    for i in range(1, args.runs + 1):
        for v, (name, buckets) in enumerate(variants.items()):
            set_variant(buckets)
            text = description(i, v)
            start = time.perf_counter()
            generator.generate_adapter(text, "task")
            times[name].append(time.perf_counter() - start)
    set_variant(True)
    shipped = statistics.median(times["as shipped"])
    print(f"\ngenerator {generator.name}; {args.runs} one-sentence descriptions of new lengths, taking turns\n")
    print(f"{'variant':40} {'p50 ms':>8}   vs as shipped")
    for name, xs in times.items():
        print(f"{name:40} {1000 * statistics.median(xs):8.1f}   x{statistics.median(xs) / shipped:.2f}")


if __name__ == "__main__":
    main()
