"""A router trained on training-split documents: does it find a question's sentence more often than the cosine?

Why: routed sentence adapters score 12.4 on validation with an oracle router against 10.7 with the packaged
encoder's cosine, which finds the answer's sentence for 75.4% of the questions (diagnostic 10;
diagnostics/routers.py). This learns, on training paragraphs only, a score over a paragraph's sentences
  score(q, s) = cos(q, s) + (U q) . (V s)      (U, V: [64, 384], zero at the start: the cosine)
from the packaged embeddings alone (what the service stores per route), trained with a softmax over each
paragraph's sentences towards the sentences that hold the question's answer. It reports how often the top
sentence holds the answer on the validation questions of `--config`, beside the cosine. No decoding.
  python diagnostics/trained_router.py --config configs/eval_validation_documents_routed.toml [--paragraphs 3000]
      [--diagonal] [--lr 3e-3]
With --diagonal the learned part is only a weight per embedding dimension (384 numbers instead of 49,152).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from routed_sentences import answer_holders  # noqa: E402

from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.data.schema import load_split  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation.harness import eval_records, load_eval_config  # noqa: E402
from hyperadapter.generator.routed import sentence_groups, unit_embeddings  # noqa: E402


def examples(encoder: SentenceEncoder, records) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """(question vector, the paragraph's sentence vectors, the sentences holding an answer) per question."""
    out = []
    for r in records:
        pieces = sentence_groups(r.context)
        asked = [(q, answer_holders(pieces, q.answers)) for q in r.queries]
        asked = [(q, holders) for q, holders in asked if holders and len(pieces) > 1]
        if not asked:
            continue
        vectors = unit_embeddings(encoder, pieces)
        questions = unit_embeddings(encoder, [q.input for q, _ in asked])
        out += [(questions[j], vectors, holders) for j, (_, holders) in enumerate(asked)]
    return out


class Router(torch.nn.Module):
    def __init__(self, dim: int = 384, width: int = 64):
        super().__init__()
        self.u = torch.nn.Parameter(torch.zeros(width, dim))
        self.v = torch.nn.Parameter(torch.randn(width, dim) * 0.05)
        self.temperature = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, question: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        return sentences @ question + (sentences @ self.v.T) @ (self.u @ question)


class DiagonalRouter(torch.nn.Module):
    """sum_i w_i q_i s_i: the cosine with each embedding dimension reweighted (w = 1 at the start)."""

    def __init__(self, dim: int = 384):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(dim))
        self.temperature = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, question: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        return sentences @ (self.w * question)


def accuracy(score, data) -> float:
    return sum(int(score(q, s).argmax()) in holders for q, s, holders in data) / len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--paragraphs", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--diagonal", action="store_true", help="reweight the cosine's dimensions only (384 numbers)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)
    settings, encoder = load_settings(), SentenceEncoder()
    train_records = load_split(settings.prepared_data_dir, "train", "document")
    train = examples(encoder, random.sample(train_records, min(args.paragraphs, len(train_records))))
    held = examples(encoder, eval_records(settings.prepared_data_dir, load_eval_config(args.config), "document"))
    router = DiagonalRouter() if args.diagonal else Router()
    optimiser = torch.optim.Adam(router.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        random.shuffle(train)
        total = 0.0
        for q, s, holders in train:
            logp = torch.log_softmax(router.temperature * router(q, s), -1)
            loss = -torch.logsumexp(logp[holders], -1)  # any sentence that holds the answer is right
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss)
        with torch.no_grad():
            print(f"epoch {epoch + 1}: loss {total / len(train):.3f}, training questions found "
                  f"{accuracy(router, train[:2000]):.3f}, validation {accuracy(router, held):.3f}")
    print(f"{len(train)} training questions, {len(held)} validation questions; validation: cosine "
          f"{accuracy(lambda q, s: s @ q, held):.3f}, trained {accuracy(torch.no_grad()(router), held):.3f}")


if __name__ == "__main__":
    main()
