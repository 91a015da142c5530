"""Routed sentence adapters with the two nearest sentences' adapters decoded together (their next-token
log-probabilities averaged), against the nearest one alone. A probe, not a system: its own greedy decoder.

Why: the nearest sentence by the packaged encoder holds the answer for 75.4% of the validation questions and one of
the two nearest for 86.6%; routing by an oracle would lift F1 from 10.7 to 12.4 (diagnostic 10). Adapters cannot be
added (diagnostic 8), but two adapters' replies can be mixed token by token (a product of experts): if one of them
knows the answer its tokens may stay on top. With `--gap G`, only questions whose two nearest sentences are within
G in cosine get the pair (the nearest wins by a wide margin when it is right: median 0.15 against 0.05).
With `--mix confident` the pair is not mixed: the adapter more sure of its first token (the higher top
log-probability) answers alone.
Greedy decoding with the served document penalties, as runtime.DecodeBatch does them, on each row's shared output.
  python diagnostics/routed_ensemble.py --config configs/eval_validation_documents_routed.toml [--gap 0.1]
Prints mean SQuAD F1 over the questions for: the nearest alone, and the pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.base import load_base  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.data.prompts import query_prompt  # noqa: E402
from hyperadapter.embedding import SentenceEncoder  # noqa: E402
from hyperadapter.evaluation import metrics  # noqa: E402
from hyperadapter.evaluation.harness import eval_records, load_eval_config  # noqa: E402
from hyperadapter.generator import Generator  # noqa: E402
from hyperadapter.generator.routed import document_routes, unit_embeddings  # noqa: E402
from hyperadapter.runtime import LoraRuntime  # noqa: E402


@torch.inference_mode()
def greedy(base, runtime: LoraRuntime, prompt: str, adapters: list, max_new: int, frequency: float,
           presence: float) -> str:
    """One reply: each step the mean of the adapters' log-probabilities, less the penalties on the reply so far."""
    ids = torch.tensor([base.tokenizer(prompt, add_special_tokens=False)["input_ids"]] * len(adapters))
    stop = runtime.stop_ids
    cache, out, factors = DynamicCache(), [], runtime.stack(adapters)
    with runtime.activate(factors=factors):
        logits = base.model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
    for _ in range(max_new):
        mixed = F.log_softmax(logits.float(), -1).mean(0)
        if out:
            used, counts = torch.tensor(out).unique(return_counts=True)
            mixed[used] -= frequency * counts.float() + presence
        token = int(mixed.argmax())
        if token in stop:
            break
        out.append(token)
        with runtime.activate(factors=factors):
            logits = base.model(input_ids=torch.tensor([[token]] * len(adapters)), past_key_values=cache,
                                use_cache=True).logits[:, -1]
    return base.tokenizer.decode(out, skip_special_tokens=True).strip()


@torch.inference_mode()
def most_confident(base, runtime: LoraRuntime, prompt: str, adapters: list):
    """The adapter whose first next-token distribution has the highest top log-probability."""
    ids = torch.tensor([base.tokenizer(prompt, add_special_tokens=False)["input_ids"]] * len(adapters))
    with runtime.activate(adapters):
        first = F.log_softmax(base.model(input_ids=ids).logits[:, -1].float(), -1)
    return adapters[int(first.amax(-1).argmax())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--gap", type=float, default=1.0, help="pair only when the two nearest are this close")
    ap.add_argument("--mix", choices=("mean", "confident"), default="mean")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config, settings = load_eval_config(args.config), load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    encoder = SentenceEncoder()
    generator = Generator.from_pretrained(settings.generator, base, encoder, int8=True)
    runtime = LoraRuntime(base)
    alone, paired, n_paired = [], [], 0
    for record in eval_records(settings.prepared_data_dir, config, "document"):
        routes = document_routes(generator, record.context, rank=settings.document_route_rank)
        for q in record.queries:
            cos = routes.vectors @ unit_embeddings(encoder, [q.input])[0]
            top = cos.argsort(descending=True).tolist()
            prompt = query_prompt(base, q.input)
            one = greedy(base, runtime, prompt, [routes.adapters[top[0]]], config.max_new_tokens,
                         config.frequency_penalty, config.presence_penalty)
            alone.append(metrics.squad_f1(one, q.answers))
            if len(top) > 1 and cos[top[0]] - cos[top[1]] < args.gap:
                n_paired += 1
                pair = [routes.adapters[i] for i in top[:2]]
                if args.mix == "confident":
                    pair = [most_confident(base, runtime, prompt, pair)]
                two = greedy(base, runtime, prompt, pair, config.max_new_tokens, config.frequency_penalty,
                             config.presence_penalty)
                paired.append(metrics.squad_f1(two, q.answers))
            else:
                paired.append(alone[-1])
    diffs = [b - a for a, b in zip(alone, paired)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    print(f"{len(alone)} questions, {n_paired} paired (gap < {args.gap}, {args.mix}): nearest alone F1 "
          f"{100 * statistics.mean(alone):.1f}, with the pair {100 * statistics.mean(paired):.1f} "
          f"({100 * statistics.mean(diffs):+.1f} +- {100 * se:.1f}, SE over questions)")


if __name__ == "__main__":
    main()
