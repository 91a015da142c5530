"""A document as one adapter per sentence, and each question answered with the adapter of the sentence nearest to
it: by the packaged sentence encoder's cosine and the content words they share (model card, diagnostics 10 and 12;
as served, test F1 11.3, by the cosine alone 11.0, against 8.9 for the paragraph's own adapter). Made with no training
from the shipped generator. Sentence adapters are picked, never added: summed or averaged they are no better than
the paragraph's adapter (diagnostic 8).

The service stores them beside the document's one adapter (`Adapter.routes`) and routes each request by its
question (`route`); the one adapter is what a PEFT export applies.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.functional import normalize

from hyperadapter.adapter import Adapter, Routes
from hyperadapter.data.builders import split_sentences
from hyperadapter.embedding import SentenceEncoder
from hyperadapter.generator.model import Generator, GeneratorError


def sentence_groups(text: str, group: int = 1) -> list[str]:
    """`text`'s sentences, `group` to a piece (the whole text if it has no sentence break)."""
    sentences = [s for s in split_sentences(text) if s.strip()]
    return [" ".join(sentences[i:i + group]) for i in range(0, len(sentences), group)] or [text]


def unit_embeddings(encoder: SentenceEncoder, texts: list[str]) -> Tensor:
    """[texts, dim]: the sentence embeddings of `texts`, each of norm 1 (their dot is the cosine)."""
    return normalize(encoder.encode(texts).float(), dim=-1)


# Words that say what a question asks, not what about: they never pick a sentence.
STOP_WORDS = frozenset("the a an of in on at to for by with and or is was were are be been what which who whom whose "
                       "when where why how did does do that this these those it its as from than then into about "
                       "after before during".split())
WORD_PREFIX = 4  # words are cut to their first letters, a stemmer that costs nothing ("rebuilt" ~ "rebuild");
# 4 found the most answers on training questions (diagnostics/lexical_router.py)


def word_keys(text: str, stop: frozenset[str] = STOP_WORDS) -> Tensor:
    """The sorted int64 keys of `text`'s content words (lower case, `stop` words dropped, cut to WORD_PREFIX
    letters), each a stable 8-byte hash: what a route keeps of its sentence, the words' keys and not the text."""
    words = {w[:WORD_PREFIX] for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in stop}
    keys = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little", signed=True)
            for w in words]
    return torch.tensor(sorted(keys), dtype=torch.int64)


def clauses(sentence: str, longest: int, shortest: int = 8) -> list[str]:
    """`sentence` whole if it has at most `longest` words, else cut after its commas and semicolons into parts of
    at least `shortest` words each (a part too short joins the one before it, or the one after)."""
    if len(sentence.split()) <= longest:
        return [sentence]
    parts: list[str] = []
    for part in re.split(r"(?<=[,;])\s+", sentence):
        if parts and len(parts[-1].split()) < shortest:
            parts[-1] += " " + part
        else:
            parts.append(part)
    if len(parts) > 1 and len(parts[-1].split()) < shortest:
        tail = parts.pop()
        parts[-1] += " " + tail
    return parts


def pieces_for(text: str, max_routes: int, longest: int = 0) -> list[str]:
    """One piece per sentence (with `longest` > 0, a longer sentence cut into its clauses), or, past `max_routes`
    pieces, as few consecutive pieces to a route as keep within it."""
    pieces = sentence_groups(text)
    if longest > 0:
        pieces = [c for s in pieces for c in clauses(s, longest)]
    if len(pieces) <= max_routes:
        return pieces
    group = math.ceil(len(pieces) / max_routes)
    return [" ".join(pieces[i:i + group]) for i in range(0, len(pieces), group)]


def routes_from(encoder: SentenceEncoder, pieces: list[str], adapters: list[Adapter]) -> Routes:
    """Routes over `pieces` and their adapters: each piece's unit embedding and word keys."""
    return Routes(adapters, unit_embeddings(encoder, pieces), [word_keys(p) for p in pieces])


def document_routes(generator: Generator, text: str, group: int = 1, rank: int | None = None) -> Routes:
    """Each piece's document adapter (one batched generator call; with `rank`, each at its best approximation of
    that rank) and sentence embedding."""
    if generator.sentence_encoder is None:
        raise GeneratorError("routing needs the generator's sentence encoder")
    if not text.strip():
        raise GeneratorError("context is empty")
    pieces = sentence_groups(text, group)
    return routes_from(generator.sentence_encoder, pieces,
                       generator.generate_many([("document", p) for p in pieces], rank=rank))


def generate_with_routes(generator: Generator, items: Sequence[tuple[str, str]], *, rank: int | None,
                         max_routes: int, longest: int = 0) -> list[Adapter]:
    """generate_many, where each document of more than one piece (pieces_for: sentences, or with `longest`
    their clauses) also gets its routes (at most `max_routes`; with `rank`, each at its best approximation of
    that rank), all pieces' adapters made in one batched call."""
    items = list(items)
    pieces = {i: pieces_for(context, max_routes, longest) for i, (kind, context) in enumerate(items)
              if kind == "document"}
    pieces = {i: p for i, p in pieces.items() if len(p) > 1}
    if pieces and generator.sentence_encoder is None:
        raise GeneratorError("routing needs the generator's sentence encoder")
    adapters = generator.generate_many(items)
    made = generator.generate_many([("document", p) for i in pieces for p in pieces[i]], rank=rank)
    start = 0
    for i, ps in pieces.items():
        adapters[i].routes = routes_from(generator.sentence_encoder, ps, made[start:start + len(ps)])
        start += len(ps)
    return adapters


def user_messages(context: str | Sequence[str]) -> list[str]:
    """A chat's messages from its user ("user: content", one a line, as the service streams them; or its segments
    as given): the ones routed, since the facts asked about are the user's (validation recall 56.8 routing these
    against 55.7 routing every message, for half the routes; model card, diagnostic 13)."""
    lines = context.split("\n") if isinstance(context, str) else [s.rstrip("\n") for s in context]
    return [line for line in lines if line.startswith("user:") and line.strip()]


def message_routes(generator: Generator, chats: Sequence[list[str]], rank: int | None) -> list[Routes | None]:
    """Per chat, one route per message: its own conversation adapter (with `rank`, at its best approximation of
    that rank), embedding and word keys (model card, diagnostic 13); every chat's messages in one batched
    generator call. None for a chat of no messages, or without the sentence encoder."""
    if generator.sentence_encoder is None:
        return [None] * len(chats)
    made = generator.generate_many([("conversation", [m + "\n"]) for ms in chats for m in ms], rank=rank)
    out, start = [], 0
    for ms in chats:
        out.append(routes_from(generator.sentence_encoder, ms, made[start:start + len(ms)]) if ms else None)
        start += len(ms)
    return out


def user_routes(generator: Generator, chats: Sequence[str | Sequence[str]], max_routes: int,
                rank: int | None) -> list[Routes | None]:
    """Per chat, the routes the service keeps: one per message of the user's (user_messages), the most recent
    `max_routes`, each at `rank` (message_routes); a chat made in one go and a user's update alike."""
    return message_routes(generator, [user_messages(c)[-max_routes:] for c in chats], rank)


def generate_served(generator: Generator, items: Sequence[tuple[str, str | Sequence[str]]],
                    settings) -> list[Adapter]:
    """generate_many as the service makes adapters: documents with their sentences' routes and chats with their
    user's messages', unless `settings` turn them off (document_routes, document_route_rank, document_max_routes,
    document_route_clauses; conversation_max_routes, conversation_route_rank)."""
    if settings.document_routes:
        adapters = generate_with_routes(generator, items, rank=settings.document_route_rank,
                                        max_routes=settings.document_max_routes,
                                        longest=settings.document_route_clauses)
    else:
        adapters = generator.generate_many(items)
    chats = [i for i, (kind, _) in enumerate(items) if kind == "conversation"]
    if settings.conversation_max_routes and chats:
        made = user_routes(generator, [items[i][1] for i in chats], settings.conversation_max_routes,
                           settings.conversation_route_rank or None)
        for i, routes in zip(chats, made):
            adapters[i].routes = routes
    return adapters


class Route(NamedTuple):
    sentence: int  # the index of the route whose adapter answers
    similarity: float  # its sentence's cosine to the question
    routes: int  # how many the document has


def route(encoder: SentenceEncoder, adapter: Adapter, question: str,
          words: float = 0.0) -> tuple[Adapter, Route | None]:
    """(the adapter to answer `question` with, the route taken): when `adapter` has routes, the adapter of the
    sentence nearest to the question (Routes.nearest, its words weighing `words`), else `adapter` itself (and
    None)."""
    if adapter.routes is None:
        return adapter, None
    index, cosine = adapter.routes.nearest(unit_embeddings(encoder, [question])[0], word_keys(question), words)
    return adapter.routes.adapters[index], Route(index, cosine, len(adapter.routes.adapters))
