"""Offline batch generation (`hyperadapter batch`): adapters per second batched beside one at a time,
and the share of an input with repeats that the cache serves.

    python benchmarks/batch.py                 # 1,000 contexts (some 15-20 minutes on 2 cores)
    python benchmarks/batch.py --n 200         # scaled down
    python benchmarks/batch.py --generator checkpoints/smollm2-135m-generator --threads 2

The contexts are synthetic but varied and all distinct: product-manual paragraphs (document), task
descriptions (task) and input/output demonstrations (demonstrations), from seeded templates.
Every run goes through `hyperadapter.batch.run_batch`, the code behind the CLI, end to end (parse,
cache lookups, batched encode and generation, store writes, the copy into DIR/<id>/, the manifest),
in this process with the models loaded once and a fresh store and output folder per run; the time
is the run's own (model loading excluded).

1. throughput: the same n contexts with `--no-reuse` (every context generated), `--batch-size 32`
   and 8 (the CLI's default) beside `--batch-size 1`; to show where the time goes, the generator
   alone (`generate_many`) on up to 64 of them (ordered by length, as the batch job orders them),
   32 at a time beside one at a time; and, for scale, what a
   shell loop over `hyperadapter adapter create` costs per context (a process each; `--cli-calls`).
2. cache: n lines of which 60% are distinct contexts, 30% exact repeats of them and 10% near repeats
   (changed case and whitespace), shuffled; `--batch-size 32` with reuse. The ideal share served by
   the cache is 40% (each distinct context generated once).
Without a trained generator (`--generator`, else settings.generator) a fresh untrained one is saved
to a temp folder and used: its cost per adapter is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.batch import run_batch  # noqa: E402
from hyperadapter.config import default_data_root, load_settings  # noqa: E402

BRANDS = ["Aquila", "Borealis", "Cinder", "Dunmore", "Elkhorn", "Fenwick", "Galloway", "Harrow", "Islay", "Juniper",
          "Kestrel", "Larkspur", "Morrow", "Northgate", "Oakridge", "Pellston"]
PRODUCTS = ["blender", "electric kettle", "wireless router", "smart thermostat", "cordless drill", "e-bike",
            "dishwasher", "mirrorless camera", "laser printer", "heat pump", "robot lawn mower", "coffee grinder",
            "baby monitor", "air purifier", "smart door lock", "home projector", "sewing machine", "treadmill",
            "rice cooker", "label printer", "dehumidifier", "induction hob", "espresso machine", "solar inverter"]
MANUAL = [
    "To reset the {p}, hold the {b} button for {n} seconds until the status light blinks {c}.",
    "Clean the {part} every {n} weeks with a damp cloth; never use solvents or abrasive pads.",
    "If the display shows error E{e}, unplug the {p}, wait {n} minutes and check that the {part} is seated.",
    "The {p} draws at most {w} watts; connect it to a grounded outlet and not to an extension lead.",
    "Firmware updates install overnight when the {p} is idle and connected to the app.",
    "The warranty covers the {part} for {y} years from purchase when the unit is registered online.",
    "For quiet operation choose mode {m}; it lowers the speed and extends the {part}'s life.",
    "Store the {p} between {t1} and {t2} degrees Celsius, away from direct sunlight and moisture.",
    "Replace the {part} when the indicator turns {c}; genuine spares are listed on page {n}.",
    "Children must not use the {p} unsupervised, and the {part} stays hot for {n} minutes after use.",
]
PARTS = ["filter", "battery pack", "blade assembly", "water tank", "drive belt", "heating element", "power supply",
         "sensor module", "brush roll", "nozzle", "gasket", "fan unit"]
COLOURS = ["red", "amber", "green", "blue", "white", "twice", "three times"]
TASK_VERBS = ["Translate", "Summarise", "Classify", "Rewrite", "Proofread", "Explain", "Extract the key facts from",
              "Answer questions about", "Write a short reply to", "Turn into bullet points", "Score from 1 to 5",
              "Detect the language of", "Find the named people in", "Simplify for a child"]
TASK_OBJECTS = ["a customer complaint", "a product review", "a legal clause", "a news headline", "a recipe",
                "a support ticket", "a medical leaflet", "an email to a landlord", "a job advert", "a poem",
                "a sports report", "a tweet", "a meeting transcript", "a scientific abstract", "a travel blog post",
                "a bank statement line", "an invoice", "a privacy policy", "a school essay", "a song lyric"]
TASK_STYLES = ["Reply in French.", "Use at most {n} words.", "Keep a formal tone.",
               "Answer in JSON with a 'label' key.", "Be friendly and concise.", "Quote the original where useful.",
               "Reply in German.", "Use British spelling.",
               "Mention the {b} brand guidelines.", "Add a one-line summary first."]
DEMOS = [
    ("{a} + {b}", lambda a, b: a + b), ("{a} times {b}", lambda a, b: a * b), ("{a} minus {b}", lambda a, b: a - b),
    ("{a} km in miles", lambda a, b: round(a * 0.621, 1)),
    ("{a} Celsius in Fahrenheit", lambda a, b: round(a * 1.8 + 32)),
    ("the larger of {a} and {b}", lambda a, b: max(a, b)), ("{a} modulo {b}", lambda a, b: a % max(b, 1)),
]
WORDS = ["river", "lantern", "orchard", "compass", "harbour", "meadow", "glacier", "violin", "canyon", "falcon",
         "pepper", "marble", "thunder", "ribbon", "saddle", "walnut", "beacon", "quartz", "ember", "willow"]


def make_context(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["document", "task", "demonstrations"])
    if kind == "document":
        product, brand = rng.choice(PRODUCTS), rng.choice(BRANDS)
        model = f"{rng.choice('ABCDKLMRSXZ')}{rng.randint(100, 9999)}"
        head = f"{brand} {product} model {model}: owner's manual, section {rng.randint(1, 12)}."
        sentences = [s.format(p=product, b=rng.choice(["power", "reset", "mode", "start"]), n=rng.randint(2, 30),
                              c=rng.choice(COLOURS), part=rng.choice(PARTS), e=rng.randint(1, 99),
                              w=rng.randint(20, 3000), y=rng.randint(1, 10), m=rng.randint(1, 5),
                              t1=rng.randint(-10, 10), t2=rng.randint(20, 45))
                     for s in rng.sample(MANUAL, rng.randint(3, 5))]
        return kind, " ".join([head, *sentences])
    if kind == "task":
        style = " ".join(s.format(n=rng.randint(20, 200), b=rng.choice(BRANDS)) for s in rng.sample(TASK_STYLES, 2))
        return kind, f"{rng.choice(TASK_VERBS)} {rng.choice(TASK_OBJECTS)} about {rng.choice(WORDS)}s. {style}"
    if rng.random() < 0.5:
        template, fn = rng.choice(DEMOS)
        pairs = [(rng.randint(1, 99), rng.randint(1, 99)) for _ in range(rng.randint(3, 5))]
        lines = [f"Input: {template.format(a=a, b=b)}\nOutput: {fn(a, b)}" for a, b in pairs]
    else:
        op = rng.choice([("plural", lambda w: w + "s"), ("reversed", lambda w: w[::-1]), ("upper case", str.upper),
                         ("first letter", lambda w: w[0]), ("length", lambda w: str(len(w)))])
        lines = [f"Input: {op[0]} of {w}\nOutput: {op[1](w)}" for w in rng.sample(WORDS, rng.randint(3, 5))]
    return kind, "\n".join(lines)


def distinct_contexts(n: int, rng: random.Random) -> list[tuple[str, str]]:
    seen, out = set(), []
    while len(out) < n:
        kind, text = make_context(rng)
        if (kind, text) not in seen:
            seen.add((kind, text))
            out.append((kind, text))
    return out


def near_copy(text: str, rng: random.Random) -> str:
    """The same text with its case and whitespace changed (the cache's key ignores both; its hash only whitespace)."""
    changed = text.lower() if rng.random() < 0.5 else text.upper()
    return "  " + changed.replace(" ", "  ", 3) + "\n"


def with_repeats(n: int, rng: random.Random) -> tuple[list[tuple[str, str]], int]:
    n_unique = round(n * 0.6)
    unique = distinct_contexts(n_unique, rng)
    n_near = round(n * 0.1)
    rows = list(unique)
    rows += [rng.choice(unique) for _ in range(n - n_unique - n_near)]
    rows += [(k, near_copy(t, rng)) for k, t in (rng.choice(unique) for _ in range(n_near))]
    rng.shuffle(rows)
    return rows, n_unique


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"kind": k, "context": c}) + "\n" for k, c in rows))


def with_fresh_store(services, settings, store_dir: Path):
    from hyperadapter.retrieval.cache import AdapterCache
    from hyperadapter.retrieval.store import AdapterStore
    store = AdapterStore(store_dir, index_factory=settings.cache_index, max_adapters=settings.cache_max_adapters,
                         max_bytes=settings.cache_max_bytes)
    cache = AdapterCache.from_settings(settings, store, services.encoder, services.cache.generate)
    return dataclasses.replace(services, store=store, cache=cache)


def timed_run(services, settings, work: Path, name: str, input_path: Path, batch_size: int, reuse: bool) -> dict:
    svc = with_fresh_store(services, settings, work / f"store-{name}")
    out = work / f"out-{name}"
    try:
        summary = run_batch(input_path, out, settings=settings, services_factory=lambda: svc, batch_size=batch_size,
                            reuse=reuse, progress=False)
        hows = Counter(json.loads(line)["how"] for line in (out / "manifest.jsonl").read_text().splitlines())
        generated = svc.store.count()
    finally:
        svc.store.close()
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / f"store-{name}", ignore_errors=True)
    assert summary.failed == 0, f"{summary.failed} lines failed"
    print(f"  {name}: {summary.done} adapters in {summary.seconds:.1f} s", file=sys.stderr, flush=True)
    return {"done": summary.done, "seconds": summary.seconds, "hits": summary.cache_hits, "hows": hows,
            "generated": generated}


def generator_alone(services, contexts: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Milliseconds per adapter of generate_many alone (no cache, no files), 32 at a time and one at a
    time, in total and in its three stages: the sentence encoder, the base model's feature pass, and
    the rest (hypernetwork, Adapter values). Each stage is timed by wrapping the call the generator
    makes, so the stages add up to the total."""
    generator = services.generator
    contexts = sorted(contexts, key=lambda kc: -len(kc[1]))  # as run_batch orders them: less padding
    spent = Counter()

    def timed_stage(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    encode, features = generator.sentence_encoder.encode, generator._token_features
    generator.sentence_encoder.encode = timed_stage("sentence encoder", encode)
    generator._token_features = timed_stage("base feature pass", features)
    out = {}
    try:
        for label, size in (("32 at a time", 32), ("one at a time", 1)):
            generator.sentence_encoder._memory.clear()  # nothing remembered from an earlier run
            services.generate_many(contexts[:2])  # warm-up
            generator.sentence_encoder._memory.clear()
            spent.clear()
            t = time.perf_counter()
            for i in range(0, len(contexts), size):
                services.generate_many(contexts[i:i + size])
            total = time.perf_counter() - t
            per = {k: 1000 * v / len(contexts) for k, v in spent.items()}
            per["hypernetwork and adapter values"] = 1000 * total / len(contexts) - sum(per.values())
            per["total"] = 1000 * total / len(contexts)
            out[label] = per
    finally:
        generator.sentence_encoder.encode = encode
        del generator._token_features  # the method again
    return out


def cli_calls(contexts: list[tuple[str, str]], work: Path, generator: Path, threads: int) -> float:
    """Seconds per context of `hyperadapter adapter create --no-reuse`, one process per context."""
    import os
    import subprocess
    root = work / "root-cli"
    root.mkdir()
    (root / "models").symlink_to(default_data_root() / "models")
    env = {**os.environ, "HYPERADAPTER_DATA_ROOT": str(root), "HYPERADAPTER_GENERATOR": str(generator),
           "HYPERADAPTER_TORCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    for i, (kind, text) in enumerate(contexts):
        (work / f"cli-{i}.txt").write_text(text)
        subprocess.run([sys.executable, "-m", "hyperadapter.cli", "adapter", "create", "--kind", kind, "--file",
                        str(work / f"cli-{i}.txt"), "--no-reuse"], env=env, check=True, capture_output=True)
    return (time.perf_counter() - t) / len(contexts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="contexts per run (default 1000)")
    p.add_argument("--generator", help="generator checkpoint folder (default: settings.generator, else a fresh one)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine may be shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cli-calls", type=int, default=3, help="contexts timed through `hyperadapter adapter create` "
                                                               "(a process each; 0 to skip)")
    args = p.parse_args(argv)
    if args.n < 10:
        p.error("--n must be at least 10")
    command = "python benchmarks/batch.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)

    from hyperadapter.service import Services

    with tempfile.TemporaryDirectory(prefix="hyperadapter-batch-bench-") as tmp:
        work = Path(tmp)
        (work / "root").mkdir()
        (work / "root" / "models").symlink_to(default_data_root() / "models")  # the converted base, shared
        settings = load_settings(data_root=str(work / "root"), torch_threads=args.threads)
        generator = Path(args.generator) if args.generator else Path(settings.generator)
        note = str(generator)
        if not generator.is_dir():
            if args.generator:
                p.error(f"--generator {generator}: no such folder")
            from hyperadapter.base import load_base
            from hyperadapter.embedding import SentenceEncoder
            from hyperadapter.generator import Generator
            generator = work / "fresh-generator"
            base = load_base(settings.base_model, settings.models_dir)
            Generator.fresh(base, SentenceEncoder()).save_pretrained(generator)
            note = f"fresh untrained generator (no checkpoint at {settings.generator}); same cost per adapter"
            print(f"note: {note}", file=sys.stderr)
        settings = dataclasses.replace(settings, generator=str(generator))
        services = Services.create(settings)

        rng = random.Random(args.seed)
        contexts = distinct_contexts(args.n, rng)
        write_jsonl(work / "contexts.jsonl", contexts)
        repeats, n_unique = with_repeats(args.n, rng)
        write_jsonl(work / "repeats.jsonl", repeats)
        kinds = Counter(k for k, _ in contexts)
        chars = sum(len(c) for _, c in contexts) / len(contexts)

        print("running (progress on stderr)...", file=sys.stderr, flush=True)
        batched = timed_run(services, settings, work, "batched", work / "contexts.jsonl", args.batch_size, False)
        medium = timed_run(services, settings, work, "batch8", work / "contexts.jsonl", 8, False)
        single = timed_run(services, settings, work, "single", work / "contexts.jsonl", 1, False)
        stages = generator_alone(services, contexts[:64])
        cached = timed_run(services, settings, work, "repeats", work / "repeats.jsonl", args.batch_size, True)
        services.close()
        per_call = cli_calls(contexts[:args.cli_calls], work, generator, args.threads) if args.cli_calls > 0 else None

    rate_b, rate_s = batched["done"] / batched["seconds"], single["done"] / single["seconds"]
    print(f"# hyperadapter batch: {args.n} contexts ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}; "
          f"{chars:.0f} characters on average), torch threads {args.threads}")
    print(f"# generator: {note}")
    print(f"# command: {command.strip()}")
    print()
    width, lw = 72, 34
    print(f"| {'run':<{lw}} | {'equivalent CLI':<{width}} | {'adapters':>8} | {'seconds':>8} | {'adapters/s':>10} |")
    print(f"|{'-' * (lw + 2)}|{'-' * (width + 2)}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    for size, r in [(args.batch_size, batched), (8, medium), (1, single)]:
        label = f"batch size {size}" + (" (one at a time)" if size == 1 else "")
        cli = f"hyperadapter batch contexts.jsonl --out OUT --batch-size {size} --no-reuse"
        rate = r["done"] / r["seconds"]
        print(f"| {label:<{lw}} | {cli:<{width}} | {r['done']:>8} | {r['seconds']:>8.1f} | {rate:>10.2f} |")
    rate_m = medium["done"] / medium["seconds"]
    print(f"\nbatched / one at a time, end to end: {rate_b / rate_s:.2f}x with batch size {args.batch_size}, "
          f"{rate_m / rate_s:.2f}x with 8 (goal: at least 5x)")
    if per_call:
        print(f"for scale: a shell loop over `hyperadapter adapter create --no-reuse` (one process per context, "
              f"{args.cli_calls} timed): {per_call:.1f} s per context = {1 / per_call:.2f} adapters/s; "
              f"batched is {rate_b * per_call:.0f}x that")
    batched_ms, single_ms = stages["32 at a time"], stages["one at a time"]
    print(f"\ngenerator alone (generate_many on {min(64, args.n)} of the contexts, no cache, no files), ms per adapter: "
          f"the ceiling of any batching, since the generator's arithmetic is per context on a CPU")
    print(f"| {'stage':<34} | {'32 at a time':>12} | {'one at a time':>13} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 14}|{'-' * 15}|{'-' * 8}|")
    for name in ("sentence encoder", "base feature pass", "hypernetwork and adapter values", "total"):
        b, s1 = batched_ms.get(name, 0.0), single_ms.get(name, 0.0)
        print(f"| {name:<34} | {b:>12.1f} | {s1:>13.1f} | {s1 / b if b else float('nan'):>5.2f}x |")
    share = cached["hits"] / cached["done"]
    hows = ", ".join(f"{k} {v}" for k, v in sorted(cached["hows"].items()))
    cli = f"hyperadapter batch repeats.jsonl --out OUT --batch-size {args.batch_size}"
    print(f"\n| {'input with repeats':<{lw}} | {'equivalent CLI':<{width}} | {'lines':>8} | {'seconds':>8} | "
          f"{'cache share':>11} |")
    print(f"|{'-' * (lw + 2)}|{'-' * (width + 2)}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
    print(f"| {'60% distinct, 30% exact, 10% near':<{lw}} | {cli:<{width}} | {cached['done']:>8} | "
          f"{cached['seconds']:>8.1f} | {share:>11.1%} |")
    print(f"\nserved by the cache: {cached['hits']} of {cached['done']} lines ({share:.1%}; ideal "
          f"{1 - n_unique / cached['done']:.0%}); by kind of answer: {hows}; adapters generated: "
          f"{cached['generated']} for {n_unique} distinct contexts; {cached['done'] / cached['seconds']:.2f} lines/s")


if __name__ == "__main__":
    main()
