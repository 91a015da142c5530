"""How long it takes to get an adapter: the generator vs fine-tuning a LoRA of the same shape.

Measured side by side in one run on this machine:
  - p50/p90 generator latency from a one-sentence task description and from a ~2,000-token document,
    each run a new text; also with the text's sentence embedding already computed, as it is when the
    generator runs behind the cache (the lookup embeds the context, the generator reuses it);
  - wall time to fine-tune a LoRA (same modules, same rank) to the same task (on its labelled examples)
    and to the same document (self-supervised continuation of its text), at the step counts below;
  - the ratio.
Run: .venv/bin/python benchmarks/generate_latency.py [--runs 20] [--lora-steps 80] [--generator DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.data.schema import load_split  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.runtime import LoraRuntime  # noqa: E402
from hyperadapter.training.lora import train_lora  # noqa: E402

DESCRIPTION = "Classify the sentiment of the given movie review as positive or negative."


def timed(fn, runs: int, before=None) -> list[float]:
    """Seconds of `fn(i)` for runs i = 1..runs (after one warm-up); `before(i)`, if given, runs first
    and is not timed (the cache's key encode, which the generator then reuses)."""
    fn(0)
    out = []
    for i in range(1, runs + 1):
        if before is not None:
            before(i)
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def long_document(settings, tokenizer, target_tokens: int = 2000) -> str:
    try:
        paragraphs = [r.context for r in load_split(settings.prepared_data_dir, "test", "document")]
    except FileNotFoundError:
        paragraphs = [f"Paragraph {i}: the river town of Varnholm kept {i} lighthouses along its northern shore, "
                      f"each tended by a keeper chosen every spring." for i in range(400)]
    text = ""
    for p in paragraphs:
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= target_tokens:
            break
        text += p + "\n\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:target_tokens]
    return tokenizer.decode(ids)


def task_pairs(settings) -> list:
    try:
        return load_split(settings.prepared_data_dir, "test", "task")[0].support
    except (FileNotFoundError, IndexError):
        reviews = ["a delight from start to finish", "dull and far too long", "the cast shines", "a mess"]
        return [(f"Review: {r}", "positive" if i % 2 == 0 else "negative") for i, r in enumerate(reviews * 8)]


def continuation_pairs(text: str, n: int = 64) -> list[tuple[str, str]]:
    words = text.split()
    pairs = []
    for i in range(0, max(1, len(words) - 18), max(1, (len(words) - 18) // n)):
        pairs.append((f"Continue the text: {' '.join(words[i:i + 6])}", " ".join(words[i + 6:i + 18])))
    return pairs[:n]


@torch.no_grad()
def short_stages(generator, describe, runs: int) -> dict[str, list[float]]:
    """Where a one-sentence adapter's time goes, stage by stage (each timed alone, new texts)."""
    offset = 10_000
    text = lambda i: describe(offset + i)  # noqa: E731
    tokens = lambda i: generator.segment_tokens(text(i))  # noqa: E731
    features = generator._token_features([[tokens(0)]])
    state = generator._absorb_rows(generator.hypernet.init_state(1), features)
    sentence = generator.sentence_encoder.encode([text(0)])
    return {
        "sentence encoder (the cache key)": timed(lambda i: generator.sentence_encoder.encode([text(i)]), runs),
        "base feature pass (8 layers)": timed(lambda i: generator._token_features([[tokens(i)]]), runs),
        "hypernetwork attention over the tokens": timed(
            lambda i: generator._absorb_rows(generator.hypernet.init_state(1), features), runs),
        "hypernetwork heads -> adapter tensors": timed(
            lambda i: generator._group_adapters(state, sentence, ["task"], [{}]), runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--lora-steps", type=int, default=80)
    ap.add_argument("--generator", help="generator checkpoint (default: the shipped one)")
    args = ap.parse_args()

    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    runtime = LoraRuntime(base)
    generator = Generator.from_pretrained(args.generator or settings.generator, base, SentenceEncoder())
    document = long_document(settings, base.tokenizer)
    doc_tokens = len(base.tokenizer(document, add_special_tokens=False)["input_ids"])

    # every run a context the generator has not seen (the sentence encoder remembers texts)
    def describe(i):
        return f"{DESCRIPTION} Example set {i}."

    def chapter(i):
        return f"Chapter {i}.\n\n{document}"

    encode = generator.sentence_encoder.encode
    short = timed(lambda i: generator.generate_adapter(describe(i), "task"), args.runs)
    short_keyed = timed(lambda i: generator.generate_adapter(describe(-i), "task"), args.runs,
                        before=lambda i: encode([describe(-i)]))
    stages = short_stages(generator, describe, args.runs)
    runs = max(3, args.runs // 4)
    doc = timed(lambda i: generator.generate_adapter(chapter(i), "document"), runs)
    doc_keyed = timed(lambda i: generator.generate_adapter(chapter(-i), "document"), runs,
                      before=lambda i: encode([chapter(-i)]))
    modules = tuple(generator.config.module_names)
    start = time.perf_counter()
    train_lora(base, runtime, task_pairs(settings), steps=args.lora_steps, rank=generator.config.rank,
               modules=modules)
    lora_task = time.perf_counter() - start
    start = time.perf_counter()
    train_lora(base, runtime, continuation_pairs(document), steps=args.lora_steps, rank=generator.config.rank,
               modules=modules)
    lora_doc = time.perf_counter() - start

    def ms(xs):
        return f"{1000 * statistics.median(xs):8.1f} {1000 * sorted(xs)[int(0.9 * (len(xs) - 1))]:8.1f}"

    print(f"\ngenerator {generator.name}; rank {generator.config.rank} on {', '.join(modules)}; "
          f"torch threads {torch.get_num_threads()}\n")
    print(f"{'context':48} {'p50 ms':>8} {'p90 ms':>8}   goal")
    print(f"{'one-sentence description':48} {ms(short)}   <= 20 ms")
    print(f"{'  the same, key already encoded by the cache':48} {ms(short_keyed)}")
    for name, xs in stages.items():
        print(f"{'    ' + name:48} {ms(xs)}")
    print(f"{f'document ({doc_tokens} tokens)':48} {ms(doc)}   <= 1000 ms")
    print(f"{'  the same, key already encoded by the cache':48} {ms(doc_keyed)}")
    print(f"\nfine-tuning a LoRA of the same shape ({args.lora_steps} steps, batch 8):")
    print(f"  to the task (its labelled examples):      {lora_task:8.1f} s  -> generator is "
          f"{lora_task / statistics.median(short):,.0f}x faster")
    print(f"  to the document (continuation of its text): {lora_doc:8.1f} s  -> generator is "
          f"{lora_doc / statistics.median(doc):,.0f}x faster")


if __name__ == "__main__":
    main()
