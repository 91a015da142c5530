"""The form and weight of the words in a document's router, chosen on training-split questions alone.

Why: routed sentence adapters score 12.4 on validation with an oracle router against 10.7 with the packaged
encoder's cosine (diagnostic 10), and content-word overlap found the answer's sentence more often than the cosine
(diagnostics/routers.py). This fits, on `--paragraphs` training paragraphs' questions, the router
  z(cosine) + w * z(shared words, each weighted by log(1 + sentences / sentences holding it))
over a grid: words cut to 4, 5 or 6 letters or kept whole, the word score divided by the sentence's length
(BM25's b) or not, and w. It prints each point's training share of questions sent to a sentence holding their
answer, then the best by that share with its share on the validation questions of `--config` (the cosine's
beside it). No decoding.
  python diagnostics/lexical_router.py --config configs/eval_validation_documents_hybrid.toml [--paragraphs 3000]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import re
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from routed_sentences import answer_holders  # noqa: E402

from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.data.schema import load_split  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation.harness import eval_records, load_eval_config  # noqa: E402
from hyperadapter.generator.routed import STOP_WORDS, sentence_groups, unit_embeddings  # noqa: E402


def questions(encoder: SentenceEncoder, records) -> list[tuple[list[str], str, torch.Tensor, list[int]]]:
    """(the paragraph's sentences, the question, its cosines to them, the sentences holding its answer)."""
    out = []
    for r in records:
        pieces = sentence_groups(r.context)
        asked = [(q, answer_holders(pieces, q.answers)) for q in r.queries]
        asked = [(q, holders) for q, holders in asked if holders and len(pieces) > 1]
        if asked:
            cosines = unit_embeddings(encoder, pieces) @ unit_embeddings(encoder, [q.input for q, _ in asked]).T
            out += [(pieces, q.input, cosines[:, j], holders) for j, (q, holders) in enumerate(asked)]
    return out


def words(text: str, prefix: int) -> set[str]:
    return {w[:prefix] if prefix else w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP_WORDS}


def shared(pieces: list[str], question: str, prefix: int, b: float) -> torch.Tensor:
    sets = [words(p, prefix) for p in pieces]
    held = Counter(w for s in sets for w in s)
    score = torch.tensor([sum(math.log1p(len(pieces) / held[w]) for w in words(question, prefix) & s) for s in sets])
    lengths = torch.tensor([max(len(s), 1) for s in sets], dtype=torch.float)
    return score / (1 - b + b * lengths / lengths.mean())


def z(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + 1e-6)


def found(features: list[tuple[torch.Tensor, torch.Tensor, list[int]]], w: float) -> float:
    return sum(int((cos + w * lex).argmax()) in holders for cos, lex, holders in features) / len(features)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--paragraphs", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    settings, encoder = load_settings(), SentenceEncoder()
    train_records = load_split(settings.prepared_data_dir, "train", "document")
    train = questions(encoder, random.sample(train_records, min(args.paragraphs, len(train_records))))
    held = questions(encoder, eval_records(settings.prepared_data_dir, load_eval_config(args.config), "document"))
    cosine = [found([(c, c * 0, h) for _, _, c, h in data], 0) for data in (train, held)]
    print(f"{len(train)} training questions, {len(held)} validation questions; the cosine alone finds "
          f"{cosine[0]:.4f} and {cosine[1]:.4f}")
    best = (0.0, None)
    for prefix, b in itertools.product([4, 5, 6, 0], [0.0, 0.25]):
        features = [(z(c), z(shared(p, q, prefix, b)), h) for p, q, c, h in train]
        for w in [0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 100.0]:
            share = found(features, w)
            print(f"words cut to {prefix or 'whole'}, b {b}, w {w}: training {share:.4f}", flush=True)
            best = max(best, (share, (prefix, b, w)), key=lambda x: x[0])
    prefix, b, w = best[1]
    features = [(z(c), z(shared(p, q, prefix, b)), h) for p, q, c, h in held]
    print(f"chosen on training questions: words cut to {prefix or 'whole'}, b {b}, w {w}: training {best[0]:.4f}, "
          f"validation {found(features, w):.4f}")


if __name__ == "__main__":
    main()
