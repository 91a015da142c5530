"""A chat as one adapter per message, and each question answered with the adapter of the message nearest to it
(no training).

Why: a chat's adapter recalls more of a short chat than of a long one (test: 51.0 on chats cut to two
fact-stating messages against 35.9 on whole chats), as one sentence's adapter holds its sentence better than a
paragraph's holds the paragraph; routed sentence adapters turned that into +2 F1 on documents (diagnostic 10).
Here each message of a chat ("role: content", as the service streams them) gets its own adapter from the chat
kind's weights, and a question goes to the message whose sentence embedding is nearest to it (the cosine). Each
question is decoded on its own; a chat's row holds its questions' mean under the chat's id, so `hyperadapter
compare` pairs it with the chat's one adapter in another run.
  python diagnostics/routed_messages.py --config configs/eval_validation_chats_routed.toml \\
      --out results/validation-chats-routed [--which right|wrong|both] [--rank 1] [--words 3] [--floor 0.3] \\
      [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_memory import parsed  # noqa: E402
from routed_sentences import PerQueryHarness, RoutedSentences  # noqa: E402

from hyperadapter.adapter import Adapter  # noqa: E402
from hyperadapter.data.schema import ContextRecord  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation import report  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.generator.routed import routes_from, unit_embeddings, word_keys  # noqa: E402
from hyperadapter.runtime import LoraRuntime  # noqa: E402


class RoutedMessages(RoutedSentences):
    """Per question (a record holding one query): the adapter of the chat's message nearest to it."""

    kinds = ("conversation",)

    def __init__(self, base, generator: Generator, wrong: bool = False, rank: int | None = None, words: float = 0.0,
                 floor: float | None = None, users_only: bool = False):
        super().__init__(base, generator, wrong=wrong, rank=rank, route_kind="conversation")
        self.name = self.name.replace("routed sentence adapters", "routed message adapters")
        self.words, self.floor, self.users_only = words, floor, users_only
        self.whole: dict[str, Adapter] = {}

    def adapter(self, record: ContextRecord) -> Adapter:
        chat = self.partner[record.id]
        if chat not in self.made:  # one chat at a time: its questions come one after another
            messages = [m for m in self.contexts[chat].split("\n") if m.strip()
                        and (not self.users_only or m.startswith("user:"))]
            made = self.generator.generate_many([("conversation", [m + "\n"]) for m in messages], rank=self.rank)
            self.made = {chat: routes_from(self.generator.sentence_encoder, messages, made)}
        routes = self.made[chat]
        asked = record.queries[0].input
        question = unit_embeddings(self.generator.sentence_encoder, [asked])[0]
        index, cosine = routes.nearest(question, word_keys(asked), self.words)
        if self.floor is not None and cosine < self.floor:  # no message is near: the chat's one adapter
            if chat not in self.whole:
                self.whole = {chat: self.generator.generate_adapter(self.contexts[chat], "conversation")}
            return self.whole[chat]
        return routes.adapters[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help='an eval config with kinds = ["conversation"]')
    parser.add_argument("--out", type=Path, required=True, help="where the results go")
    parser.add_argument("--which", choices=("both", "right", "wrong"), default="right")
    parser.add_argument("--rank", type=int, default=None, help="compress each message's adapter to this rank")
    parser.add_argument("--words", type=float, default=0.0, help="the weight of shared words beside the cosine")
    parser.add_argument("--users-only", action="store_true", help="routes for the user's messages only")
    parser.add_argument("--floor", type=float, default=None,
                        help="below this cosine to the chosen message, answer with the chat's one adapter")
    parser.add_argument("--threads", type=int, default=2)
    args, config, settings, base = parsed(parser)
    data_dir = Path(config.data_dir) if config.data_dir else settings.prepared_data_dir
    generator = Generator.from_pretrained(config.generator or settings.generator, base, SentenceEncoder(), int8=True)
    systems = [RoutedMessages(base, generator, wrong=wrong, rank=args.rank, words=args.words, floor=args.floor,
                              users_only=args.users_only)
               for wrong in (False, True) if args.which == "both" or (args.which == "wrong") == wrong]
    PerQueryHarness(base, LoraRuntime(base), config, data_dir).run(
        systems, on_score=lambda partial: report.write(partial, args.out))


if __name__ == "__main__":
    main()
