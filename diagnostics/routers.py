"""How often each router sends a question to a sentence that holds its answer (no decoding).

Why: routed sentence adapters with an oracle router score 12.4 on validation against 10.7 with the packaged
encoder's cosine, which finds the answer's sentence for 75.4% of the questions (diagnostic 10). Candidates,
scored per question over the paragraph's sentences (z-scored within the paragraph when combined):
  - cos: the packaged sentence encoder's cosine (what the service routes by);
  - lex: the question's content words (stop words dropped, cut to 5 letters) found in the sentence, each
    weighted by log(1 + sentences / sentences holding it);
  - lm: the base's mean log-probability of " Question: <q>" after the sentence (query likelihood).
  python diagnostics/routers.py --config configs/eval_validation_documents_routed.toml
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from routed_sentences import answer_holders  # noqa: E402

from hyperadapter.base import Base, load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation.harness import eval_records, load_eval_config  # noqa: E402
from hyperadapter.generator.routed import sentence_groups, unit_embeddings  # noqa: E402

STOP = set("the a an of in on at to for by with and or is was were are be been what which who whom whose when where "
           "why how did does do that this these those it its as from than then into about after before during".split())


def words(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP}


def lexical(pieces: list[str], question: str) -> torch.Tensor:
    df = Counter(w for p in pieces for w in words(p))
    asked = words(question)
    return torch.tensor([sum(math.log(1 + len(pieces) / df[w]) for w in asked & words(p)) for p in pieces],
                        dtype=torch.float)


@torch.no_grad()
def query_likelihood(base: Base, pieces: list[str], question: str) -> torch.Tensor:
    tok = base.tokenizer
    asked = tok(" Question: " + question, add_special_tokens=False)["input_ids"]
    rows = [tok(p, add_special_tokens=False)["input_ids"][-120:] + asked for p in pieces]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id or 0)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    logp = F.log_softmax(base.model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], -1)
    picked = logp.gather(-1, ids[:, 1:, None])[..., 0]
    return torch.stack([picked[i, len(r) - len(asked) - 1:len(r) - 1].mean() for i, r in enumerate(rows)])


def z(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + 1e-6) if len(x) > 1 else x * 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings()
    base, encoder = load_base(settings.base_model, settings.models_dir), SentenceEncoder()
    hits, n = Counter(), 0
    for record in eval_records(settings.prepared_data_dir, load_eval_config(args.config), "document"):
        pieces = sentence_groups(record.context)
        vectors = unit_embeddings(encoder, pieces)
        for q in record.queries:
            holders = answer_holders(pieces, q.answers)
            if not holders:
                continue
            n += 1
            cos, lex = vectors @ unit_embeddings(encoder, [q.input])[0], lexical(pieces, q.input)
            lm = query_likelihood(base, pieces, q.input)
            for name, score in {"cos": cos, "lex": lex, "lm": lm, "cos + 0.5 lex": z(cos) + 0.5 * z(lex),
                                "cos + lm": z(cos) + z(lm), "cos + 0.5 lex + 0.5 lm": z(cos) + 0.5 * (z(lex) + z(lm))
                                }.items():
                hits[name] += int(score.argmax()) in holders
    print(f"{n} questions whose answer a sentence holds")
    for name, hit in hits.items():
        print(f"{name:24} {hit / n:.3f}")


if __name__ == "__main__":
    main()
