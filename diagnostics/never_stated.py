"""Could a route's own score tell a question about something the user said from one about something they never
said? Routing only, no decoding: the made-up users and chats of diagnostics/long_chats.py.

A routed chat answers every question with its nearest message's adapter, and diagnostic 14 found that a question
about a fact the user never stated gets another message's fact (28-59% of replies) or a loop (12-25%). A gate
would send such questions to the base instead, if some score of the route separates them from questions whose
fact the user did state. Per question, over the user's messages as the service routes them (the packaged
encoder's cosine and the shared words, `route_words` 3): the best cosine, the best routing score's margin over
the second, and the best cosine's z over the messages. Each signal's AUC for stated against never-stated
questions (1.0: a threshold separates them; 0.5: it says nothing), how many never-stated questions a floor on
the best cosine catches where it keeps 90% of the stated ones, and the share of stated questions routed to
their fact's message, with each message's key or with one key per sentence of it (the message's adapter
answering either way), at each history length; `--embed` puts each fact inside a message of small talk, as the
harness's chats do.
  python diagnostics/never_stated.py [--users 64] [--lengths 8,32,128] [--embed]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_chats import chat, make_users  # noqa: E402

from hyperadapter.adapter import _standardised  # noqa: E402
from hyperadapter.config import Settings  # noqa: E402
from hyperadapter.data.builders import split_sentences  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.generator.routed import unit_embeddings, user_messages, word_keys  # noqa: E402


def auc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counted half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def caught(positive: list[float], negative: list[float], keep: float = 0.9) -> float:
    """The share of negatives below the threshold that keeps `keep` of the positives at or above it."""
    threshold = sorted(positive)[int((1 - keep) * len(positive))]
    return sum(n < threshold for n in negative) / len(negative)


def scores(vectors: torch.Tensor, words: list[torch.Tensor], question: torch.Tensor, keys: torch.Tensor,
           weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines, routing scores) of a question over keys, as Routes.nearest scores them."""
    cosines = vectors @ question
    holds = torch.stack([torch.isin(keys, w) for w in words]).float()
    shared = holds @ torch.log1p(len(words) / holds.sum(0).clamp(min=1))
    return cosines, _standardised(cosines) + weight * _standardised(shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--lengths", default="8,32,128")
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--unstated", type=int, default=2)
    parser.add_argument("--embed", action="store_true", help="each fact inside a message of small talk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    encoder, weight = SentenceEncoder(), Settings().route_words
    users = make_users(args.users, args.facts, args.unstated, args.seed)
    print(f"{args.users} made-up users, {args.facts} facts stated{' inside small talk' if args.embed else ''}, "
          f"{args.unstated} never stated; routed by cosine and words (weight {weight})\n")
    print("| user's messages | AUC, best cosine | AUC, score margin | AUC, z of best cosine | never stated caught "
          "by the best cosine, keeping 90% of stated | stated routed right, message keys | sentence keys |")
    print("|---|---|---|---|---|---|---|")
    for length in [int(x) for x in args.lengths.split(",")]:
        signal = {"cos": ([], []), "margin": ([], []), "z": ([], [])}
        right = {"message": [], "sentence": []}
        for user in users:
            lines, at = chat(user, length, args.embed)
            messages = user_messages(lines)
            vectors = unit_embeddings(encoder, messages)
            words = [word_keys(m) for m in messages]
            pieces = [(i, s) for i, m in enumerate(messages) for s in split_sentences(m.removeprefix("user: "))
                      if s.strip()]
            piece_vectors = unit_embeddings(encoder, [s for _, s in pieces])
            piece_words = [word_keys(s) for _, s in pieces]
            questions = [f.question for f in user.facts] + user.unstated
            asked = unit_embeddings(encoder, questions)
            for n, (question, q) in enumerate(zip(questions, asked)):
                keys = word_keys(question)
                cosines, score = scores(vectors, words, q, keys, weight)
                top = score.topk(2)
                best = int(top.indices[0])
                side = 0 if n < len(user.facts) else 1
                signal["cos"][side].append(float(cosines[best]))
                signal["margin"][side].append(float(top.values[0] - top.values[1]))
                signal["z"][side].append(float(_standardised(cosines)[best]))
                if side == 0:
                    right["message"].append(best == at[n])
                    _, piece_score = scores(piece_vectors, piece_words, q, keys, weight)
                    right["sentence"].append(pieces[int(piece_score.argmax())][0] == at[n])
        aucs = " | ".join(f"{auc(*signal[k]):.2f}" for k in ("cos", "margin", "z"))
        found = " | ".join(f"{100 * sum(v) / len(v):.1f}%" for v in right.values())
        print(f"| {length} | {aucs} | {100 * caught(*signal['cos']):.1f}% | {found} |")


if __name__ == "__main__":
    main()
