"""What routed sentence adapters cost beside one adapter per document (model card, diagnostic 10).

A routed document is its one adapter plus one adapter per sentence with each sentence's embedding (the service's
form, `generate_served`, with the settings' rank and cap on routes); a question is answered with the adapter
of the sentence nearest to it. Measured side by side in one run on this machine, with the shipped generator
served as the service serves it (int8 where the CPU has no fast bf16):
  - time to make a paragraph's adapter: one adapter for the whole paragraph, against it with its routes (one
    batched generator call, the sentence embeddings, the compression); the same for a ~2,000-token document;
  - bytes of the adapter (float16, as stored), with its routes;
  - per question: the routing (the question's embedding and the nearest sentence), which the one-adapter form
    does not pay.
Run: .venv/bin/python benchmarks/routed_documents.py [--runs 20]
(without prepared data, made-up paragraphs of the test paragraphs' length stand in, for the long document too;
the output says so)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_latency import long_document, timed  # noqa: E402

from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.data.schema import load_split  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.generator.routed import generate_served, pieces_for, route  # noqa: E402


def p50(xs: list[float]) -> float:
    return 1000 * statistics.median(xs)


SENTENCES = ["The harbour of {town} was dredged in {year} so that larger ships could dock.",
             "Its first mayor, {name}, had been a ferryman before entering politics.",
             "A stone bridge with {n} arches links the old quarter to the market island.",
             "The town's football club, founded by dock workers, plays in {colour} shirts.",
             "Every autumn a fair fills the main square with stalls selling smoked fish.",
             "The cathedral's bell tower was rebuilt after a fire destroyed it in {year2}.",
             "{name} also founded the library, which now holds {n}0,000 books.",
             "Trams returned to the streets in {year3}, running on a single loop line.",
             "The local dialect drops the final consonant of most words."]


def made_up_paragraphs(n: int) -> tuple[list[str], list[str]]:
    """n paragraphs of 5-9 sentences with varied names and numbers, and a question about each: a stand-in of
    about the test paragraphs' length (7.3 sentences) where no data has been prepared."""
    rng = random.Random(0)
    paragraphs, questions = [], []
    for i in range(n):
        values = {"town": f"Varn{i}holm", "year": 1700 + i, "year2": 1800 + i, "year3": 1900 + i, "n": 3 + i % 7,
                  "name": rng.choice(["Ida Wren", "Otto Lind", "Mira Sand", "Hugo Falk"]),
                  "colour": rng.choice(["green", "amber", "navy", "crimson"])}
        chosen = rng.sample(SENTENCES, rng.randint(5, 9))
        paragraphs.append(" ".join(t.format(**values) for t in chosen))
        questions.append(f"When was the harbour of Varn{i}holm dredged?")
    return paragraphs, questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--long-runs", type=int, default=3)
    args = ap.parse_args()
    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    encoder = SentenceEncoder()
    generator = Generator.from_pretrained(settings.generator, base, encoder, int8=True)
    try:
        records = load_split(settings.prepared_data_dir, "test", "document")[:args.runs + 1]
        paragraphs = [r.context for r in records]
        questions = [q.input for r in records for q in r.queries][:args.runs + 1]
        source = "test paragraphs"
    except FileNotFoundError:  # no prepared data (e.g. its source is unreachable): made-up paragraphs
        records = []
        paragraphs, questions = made_up_paragraphs(args.runs + 1)
        source = "made-up paragraphs (no prepared data)"

    def routed(text: str):
        return generate_served(generator, [("document", text)], settings)[0]

    # a new text every run: the sentence encoder keeps what it has embedded
    one, many = timed([lambda i: generator.generate_adapter(paragraphs[i], "document"),
                       lambda i: routed(paragraphs[i])], args.runs)
    pieces = [pieces_for(p, settings.document_max_routes, settings.document_route_clauses) for p in paragraphs[1:]]
    sentences = statistics.mean(map(len, pieces))
    adapter_bytes = generator.generate_adapter(paragraphs[0], "document").nbytes
    routed_bytes = statistics.mean(routed(p).nbytes for p in paragraphs[1:])

    document = long_document(settings, base.tokenizer, stand_in=None if records else made_up_paragraphs(200)[0])
    long_one, long_many = timed([lambda i: generator.generate_adapter(f"{i} {document}", "document"),
                                 lambda i: routed(f"{i} {document}")], args.long_runs)
    long_parts = len(pieces_for(document, settings.document_max_routes, settings.document_route_clauses))

    made = routed(paragraphs[0])
    routing = timed([lambda i: route(encoder, made, questions[i], settings.route_words)], args.runs)[0]

    print(f"\nshipped generator ({generator.precision}), torch threads {torch.get_num_threads()}; routes of rank "
          f"{settings.document_route_rank}, at most {settings.document_max_routes}; {source}; p50 ms\n")
    print(f"{'':44} {'one adapter':>12} {'routed':>12} {'routed / one':>13}")
    print(f"{'paragraph (%.1f routes), make' % sentences:44} {p50(one):12.1f} {p50(many):12.1f} "
          f"{p50(many) / p50(one):13.1f}")
    print(f"{'2,000-token document (%d routes), make' % long_parts:44} {p50(long_one):12.1f} {p50(long_many):12.1f} "
          f"{p50(long_many) / p50(long_one):13.1f}")
    print(f"{'paragraph, MB as stored':44} {adapter_bytes / 1e6:12.2f} {routed_bytes / 1e6:12.2f} "
          f"{routed_bytes / adapter_bytes:13.1f}")
    print(f"{'per question, routing':44} {0.0:12.1f} {p50(routing):12.1f}")


if __name__ == "__main__":
    main()
