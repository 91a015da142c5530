"""How long it takes to get an adapter: the generator vs fine-tuning a LoRA of the same shape.

Measured side by side in one run on this machine:
  - p50/p90 generator latency from a one-sentence task description (of varied lengths) and from a
    ~2,000-token document, each run a new text; also with the text's sentence embedding already
    computed, as it is when the generator runs behind the cache (the lookup embeds the context, the
    generator reuses it);
  - wall time to fine-tune a LoRA (same modules, same rank) to the same task (on its labelled examples)
    and to the same document (self-supervised continuation of its text), at the step counts below;
  - the ratio.
Generators run as the service runs them: int8 where the CPU has no fast bf16 (hyperadapter.packed).
Run: .venv/bin/python benchmarks/generate_latency.py [--runs 20] [--lora-steps 80] [--generator DIR ...]
[--float32-beside]
(several --generator: timed side by side, turn by turn, with their ratios; --float32-beside: each
also in float32, where the service would use int8)
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

# One-sentence task descriptions of the lengths users write (7 to 29 tokens, and the run's set
# number); run i takes the i-th in turn, so the runs see varied input widths as real traffic does,
# not one width over and over.
DESCRIPTIONS = [
    "Classify the sentiment of the given movie review as positive or negative.",
    "Translate the sentence into French.",
    "Answer the arithmetic question with a single number.",
    "Given a product review, say whether the customer would buy the product again: answer yes or no.",
    "Extract the name of the city mentioned in the text.",
    "Rewrite the given sentence in the passive voice, keeping its tense and meaning, and do not add any words "
    "that change what it says.",
    "Say which of the two statements is true.",
    "Summarise the paragraph in one short sentence that a child could understand.",
]


def _layers(config) -> str:
    """'8', or '8; task 4, document 4' when some kinds are read at another layer."""
    other = ", ".join(f"{k} {v}" for k, v in sorted(config.kind_layers.items()) if v != config.feature_layer)
    return f"{config.feature_layer}; {other}" if other else str(config.feature_layer)


def _label(generator) -> str:
    return f"{generator.name}, {generator.precision}"


def timed(fns, runs: int, before=None) -> list[list[float]]:
    """Seconds of `fns[k](i)` for runs i = 1..runs (after one warm-up each), the functions taking
    turns run by run so that the machine's drift falls on all of them alike. `before(k, i)`, if
    given, runs first and is not timed (the cache's key encode, which the generator then reuses)."""
    for fn in fns:
        fn(0)
    out = [[] for _ in fns]
    for i in range(1, runs + 1):
        for k, fn in enumerate(fns):
            if before is not None:
                before(k, i)
            start = time.perf_counter()
            fn(i)
            out[k].append(time.perf_counter() - start)
    return out


def long_document(settings, tokenizer, target_tokens: int = 2000, stand_in: list[str] | None = None) -> str:
    """About `target_tokens` of test paragraphs; without prepared data, of `stand_in` paragraphs or of a made-up
    one-sentence paragraph repeated with its numbers changed."""
    try:
        paragraphs = [r.context for r in load_split(settings.prepared_data_dir, "test", "document")]
    except FileNotFoundError:
        paragraphs = stand_in or [f"Paragraph {i}: the river town of Varnholm kept {i} lighthouses along its "
                                  f"northern shore, each tended by a keeper chosen every spring." for i in range(400)]
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
    tokens = lambda i: generator.segment_tokens(describe(i))  # noqa: E731
    features = generator._token_features([[tokens(0)]], ["task"])
    state = generator._absorb_rows(generator.hypernet.init_state(1), features, ["task"])
    sentence = generator.sentence_encoder.encode([describe(0)])
    layers = generator.config.layer_for("task")
    return {
        "sentence encoder (the cache key)": timed([lambda i: generator.sentence_encoder.encode([describe(i)])], runs)[0],
        f"base feature pass ({layers} layers)": timed([lambda i: generator._token_features([[tokens(i)]], ["task"])], runs)[0],
        "hypernetwork attention over the tokens": timed(
            [lambda i: generator._absorb_rows(generator.hypernet.init_state(1), features, ["task"])], runs)[0],
        "hypernetwork heads -> adapter tensors": timed(
            [lambda i: generator._group_adapters(state, sentence, ["task"], [{}])], runs)[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--lora-steps", type=int, default=80)
    ap.add_argument("--generator", action="append",
                    help="generator checkpoint (default: the shipped one); repeat it to time several side by side")
    ap.add_argument("--float32-beside", action="store_true",
                    help="time each generator also in float32, where the service runs it in int8")
    args = ap.parse_args()

    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    runtime = LoraRuntime(base)
    encoder = SentenceEncoder()
    generators = []
    for directory in args.generator or [settings.generator]:
        generators.append(Generator.from_pretrained(directory, base, encoder, int8=True))
        if args.float32_beside and generators[-1].int8:  # int8 here: time float32 beside it
            generators.append(Generator.from_pretrained(directory, base, encoder))
    document = long_document(settings, base.tokenizer)
    doc_tokens = len(base.tokenizer(document, add_special_tokens=False)["input_ids"])

    # every run a context no generator has seen (the sentence encoder, shared, remembers texts)
    def describe(k, i):
        return f"{DESCRIPTIONS[i % len(DESCRIPTIONS)]} Example set {k}.{i}."

    def chapter(k, i):
        return f"Chapter {k}.{i}.\n\n{document}"

    def each(make):  # one function of the run number per generator
        return [lambda i, g=g, k=k: make(g, k, i) for k, g in enumerate(generators)]

    encode = encoder.encode
    # steady state, as a serving process reaches: every width the runs below use has been seen once
    # (the same texts but for the set number's first digit, so never remembered by the encoder)
    for k, g in enumerate(generators):
        for i in [*range(-args.runs, args.runs + 1), *range(10_000, 10_001 + args.runs)]:
            g.generate_adapter(describe(k + 5, i), "task")
    short = timed(each(lambda g, k, i: g.generate_adapter(describe(k, i), "task")), args.runs)
    short_keyed = timed(each(lambda g, k, i: g.generate_adapter(describe(k, -i), "task")), args.runs,
                        before=lambda k, i: encode([describe(k, -i)]))
    stages = [short_stages(g, lambda i, k=k: describe(k, 10_000 + i), args.runs) for k, g in enumerate(generators)]
    runs = max(3, args.runs // 4)
    doc = timed(each(lambda g, k, i: g.generate_adapter(chapter(k, i), "document")), runs)
    doc_keyed = timed(each(lambda g, k, i: g.generate_adapter(chapter(k, -i), "document")), runs,
                      before=lambda k, i: encode([chapter(k, -i)]))
    modules = tuple(generators[0].config.module_names)
    start = time.perf_counter()
    train_lora(base, runtime, task_pairs(settings), steps=args.lora_steps, rank=generators[0].config.rank,
               modules=modules)
    lora_task = time.perf_counter() - start
    start = time.perf_counter()
    train_lora(base, runtime, continuation_pairs(document), steps=args.lora_steps, rank=generators[0].config.rank,
               modules=modules)
    lora_doc = time.perf_counter() - start

    def ms(xs):
        return f"{1000 * statistics.median(xs):8.1f} {1000 * sorted(xs)[int(0.9 * (len(xs) - 1))]:8.1f}"

    print(f"\nrank {generators[0].config.rank} on {', '.join(modules)}; torch threads {torch.get_num_threads()}")
    for k, generator in enumerate(generators):
        print(f"\ngenerator {_label(generator)} (features from layer {_layers(generator.config)})\n")
        print(f"{'context':48} {'p50 ms':>8} {'p90 ms':>8}   goal")
        print(f"{'one-sentence description':48} {ms(short[k])}   <= 20 ms")
        print(f"{'  the same, key already encoded by the cache':48} {ms(short_keyed[k])}")
        for name, xs in stages[k].items():
            print(f"{'    ' + name:48} {ms(xs)}")
        print(f"{f'document ({doc_tokens} tokens)':48} {ms(doc[k])}   <= 1000 ms")
        print(f"{'  the same, key already encoded by the cache':48} {ms(doc_keyed[k])}")
    if len(generators) > 1:
        print("\np50 against the first generator, measured turn by turn in this run:")
        for k, generator in enumerate(generators[1:], 1):
            print(f"  {_label(generator)}: one sentence x{statistics.median(short[k]) / statistics.median(short[0]):.2f}, "
                  f"document x{statistics.median(doc[k]) / statistics.median(doc[0]):.2f}")
    print(f"\nfine-tuning a LoRA of the same shape ({args.lora_steps} steps, batch 8):")
    for k, generator in enumerate(generators):
        print(f"  {_label(generator)}:")
        print(f"    to the task (its labelled examples):        {lora_task:8.1f} s  -> generator is "
              f"{lora_task / statistics.median(short[k]):,.0f}x faster")
        print(f"    to the document (continuation of its text): {lora_doc:8.1f} s  -> generator is "
              f"{lora_doc / statistics.median(doc[k]):,.0f}x faster")


if __name__ == "__main__":
    main()
