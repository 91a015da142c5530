"""A document as one adapter per sentence, and each question answered with the adapter of the sentence nearest
to it (no training).

Why: diagnostic 8 found that one sentence's adapter holds that sentence better (F1 15.3 on its own questions,
validation, served penalties) than a paragraph's adapter holds the paragraph (8.3), but that sentence adapters
do not add up: summed they break the model, averaged they are worth the paragraph's adapter. So pick one instead
of adding: the question's sentence embedding (the packaged encoder) against each sentence's, and the nearest
sentence's adapter answers. A question then costs one sentence-encoder pass, no context in its prompt.
Each question is decoded on its own (its adapter is its own); a context's row holds its questions' mean, under
the paragraph's id, so `hyperadapter compare` pairs it with the paragraph's own adapter in another run.
  python diagnostics/routed_sentences.py --config configs/eval_validation_documents_routed.toml \\
      --out results/validation-documents-routed [--which both|right|wrong] [--threads 1] [--routing] [--group 2] \\
      [--rank 4] [--oracle] [--route-kind conversation]
It writes "routed sentence adapters", and the same routed among another paragraph's sentences.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_memory import parsed  # noqa: E402

from hyperadapter.adapter import Adapter  # noqa: E402
from hyperadapter.data.schema import ContextRecord  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation import report  # noqa: E402
from hyperadapter.evaluation.harness import Harness, eval_records  # noqa: E402
from hyperadapter.evaluation.names import WRONG_SUFFIX  # noqa: E402
from hyperadapter.evaluation.systems import System  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.adapter import Routes  # noqa: E402
from hyperadapter.generator.routed import document_routes, routes_from, sentence_groups, unit_embeddings  # noqa: E402
from hyperadapter.runtime import LoraRuntime  # noqa: E402


class RoutedSentences(System):
    """Per question (a record holding one query): the adapter of the document's sentence nearest to it."""

    kinds = ("document",)

    def __init__(self, base, generator: Generator, wrong: bool = False, group: int = 1, rank: int | None = None,
                 oracle: bool = False, route_kind: str = "document"):
        super().__init__(base)
        self.generator, self.wrong, self.group, self.rank, self.oracle = generator, wrong, group, rank, oracle
        self.route_kind = route_kind
        self.name = "routed sentence adapters" + (f" ({group} sentences each)" if group > 1 else "") + (
            f" (rank {rank})" if rank else "") + (" (oracle routing)" if oracle else "") + (
            f" ({route_kind} kind)" if route_kind != "document" else "") + (
            WRONG_SUFFIX if wrong else "")
        self.partner: dict[str, str] = {}  # document id -> the document whose sentences it routes among
        self.contexts: dict[str, str] = {}
        self.made: dict[str, Routes] = {}

    def prepare(self, records: list[ContextRecord]) -> None:
        ids = list(dict.fromkeys(r.id for r in records))
        self.contexts = {r.id: r.context for r in records}
        n = len(ids)
        self.partner = {d: ids[(i + max(1, n // 2)) % n] if self.wrong and n > 1 else d for i, d in enumerate(ids)}

    def adapter(self, record: ContextRecord) -> Adapter:
        doc = self.partner[record.id]
        if doc not in self.made and self.route_kind == "conversation":  # each sentence as a user's message
            pieces = sentence_groups(self.contexts[doc], self.group)
            made = self.generator.generate_many([("conversation", [f"user: {p}\n"]) for p in pieces], rank=self.rank)
            self.made = {doc: routes_from(self.generator.sentence_encoder, pieces, made)}
        if doc not in self.made:  # one document at a time: its questions come one after another
            self.made = {doc: document_routes(self.generator, self.contexts[doc], self.group, self.rank)}
        routes, query = self.made[doc], record.queries[0]
        if self.oracle:  # a bound, not a system: the first piece that holds an answer, when one does
            pieces = sentence_groups(self.contexts[doc], self.group)
            holders = answer_holders(pieces, query.answers)
            if holders:
                return routes.adapters[holders[0]]
        question = unit_embeddings(self.generator.sentence_encoder, [query.input])[0]
        return routes.adapters[routes.nearest(question)[0]]


def answer_holders(pieces: list[str], answers: list[str]) -> list[int]:
    """The pieces that hold one of `answers` word for word."""
    return [i for i, p in enumerate(pieces) if any(a and a in p for a in answers)]


def routing(encoder: SentenceEncoder, records: list[ContextRecord], group: int = 1) -> dict[str, float]:
    """How often the sentence nearest to a question holds one of its answers (questions whose answer some
    sentence holds), and chance: the share of the paragraph's sentences that hold it."""
    hits = chance = n = 0
    for r in records:
        parts = sentence_groups(r.context, group)
        vectors = unit_embeddings(encoder, parts)
        for q in r.queries:
            holders = answer_holders(parts, q.answers)
            if holders:
                question = unit_embeddings(encoder, [q.input])[0]
                hits += int((vectors @ question).argmax()) in holders
                chance += len(holders) / len(parts)
                n += 1
    return {"questions": n, "nearest holds the answer": hits / max(n, 1), "chance": chance / max(n, 1)}


class PerQueryHarness(Harness):
    """Scores each query of a context as a context of its own, then folds them back into the context's row."""

    def score_context(self, system, record: ContextRecord) -> dict:
        rows = [super(PerQueryHarness, self).score_context(system, dataclasses.replace(record, queries=[q]))
                for q in record.queries]
        n = len(rows)

        def mean(key):
            values = [r[key] for r in rows if r[key] is not None]
            return sum(values) / len(values) if values else None
        return {**rows[0], "score": mean("score"), "em": mean("em"), "looped": mean("looped"),
                "stray_yes_no": mean("stray_yes_no"), "queries": n, "prompt_tokens": mean("prompt_tokens"),
                "latency_ms": mean("latency_ms"), "samples": [s for r in rows for s in r["samples"]][:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help='an eval config with kinds = ["document"]')
    parser.add_argument("--out", type=Path, help="where the results go (not with --routing)")
    parser.add_argument("--generator", default=None)
    parser.add_argument("--which", choices=("both", "right", "wrong"), default="both",
                        help="score only one of the two systems (two processes at one thread each)")
    parser.add_argument("--group", type=int, default=1, help="sentences per adapter")
    parser.add_argument("--rank", type=int, default=None, help="compress each sentence's adapter to this rank")
    parser.add_argument("--oracle", action="store_true",
                        help="a bound: route each question to a sentence that holds its answer, where one does")
    parser.add_argument("--routing", action="store_true",
                        help="only print how often the nearest sentence holds the question's answer")
    parser.add_argument("--route-kind", choices=("document", "conversation"), default="document",
                        help="the kind each sentence's adapter is made as (conversation: the sentence as a user's "
                             "message, read by the chat kind's own weights)")
    parser.add_argument("--threads", type=int, default=2)
    args, config, settings, base = parsed(parser)
    data_dir = Path(config.data_dir) if config.data_dir else settings.prepared_data_dir
    if args.routing:
        found = routing(SentenceEncoder(), eval_records(data_dir, config, "document"), args.group)
        print({k: round(v, 3) for k, v in found.items()})
        return
    if args.out is None:
        parser.error("--out is needed to score")
    generator = Generator.from_pretrained(args.generator or config.generator or settings.generator, base,
                                          SentenceEncoder(), int8=True)
    systems = [RoutedSentences(base, generator, wrong=wrong, group=args.group, rank=args.rank,
                               oracle=args.oracle, route_kind=args.route_kind)
               for wrong in (False, True) if args.which == "both" or (args.which == "wrong") == wrong]
    PerQueryHarness(base, LoraRuntime(base), config, data_dir).run(
        systems, on_score=lambda partial: report.write(partial, args.out))


if __name__ == "__main__":
    main()
