"""A document as one adapter per sentence, and each question answered with the adapter of the sentence nearest to
it by the packaged sentence encoder (model card, diagnostic 10: test F1 10.9 against 8.9 for the paragraph's own
adapter). Made with no training from the shipped generator. Sentence adapters are picked, never added: summed or
averaged they are no better than the paragraph's adapter (diagnostic 8).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.nn.functional import normalize

from hyperadapter.adapter import Adapter
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


@dataclass
class RoutedDocument:
    pieces: list[str]
    adapters: list[Adapter]  # one per piece
    vectors: Tensor  # [pieces, dim]: each piece's unit sentence embedding

    def nearest(self, question: Tensor) -> int:
        """The index of the piece nearest to a question's unit embedding."""
        return int((self.vectors @ question).argmax())


def routed_document(generator: Generator, text: str, group: int = 1, rank: int | None = None) -> RoutedDocument:
    """Each piece's document adapter (one batched generator call) and sentence embedding; with `rank`, each
    adapter compressed to that rank (the best approximation of its update, Adapter.compressed)."""
    if generator.sentence_encoder is None:
        raise GeneratorError("routing needs the generator's sentence encoder")
    if not text.strip():
        raise GeneratorError("context is empty")
    pieces = sentence_groups(text, group)
    vectors = unit_embeddings(generator.sentence_encoder, pieces)
    adapters = generator.generate_many([("document", p) for p in pieces])
    if rank is not None:
        adapters = [a.compressed(rank) for a in adapters]
    return RoutedDocument(pieces, adapters, vectors)


def route(generator: Generator, document: RoutedDocument, question: str) -> Adapter:
    """The adapter of the piece of `document` nearest to `question`."""
    return document.adapters[document.nearest(unit_embeddings(generator.sentence_encoder, [question])[0])]
