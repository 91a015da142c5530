"""`hyperadapter eval`: score systems on held-out contexts, with per-query cost.

Per context, a system picks an adapter and a prompt per query; the frozen base answers. Multiple
choice queries are scored by the summed log-likelihood of each choice (accuracy); generation
queries by greedy decoding (ROUGE-L and exact match); documents by SQuAD F1; conversations by fact
recall. A context's score is its queries' mean; a kind's score is the mean over its contexts.
Cost per query: prompt tokens processed and wall-clock latency.
"""

from __future__ import annotations

import dataclasses
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from hyperadapter.adapter import Adapter
from hyperadapter.base import Base
from hyperadapter.data.builders import short_document, short_history
from hyperadapter.data.relabel import relabelled
from hyperadapter.data.schema import KINDS, ContextRecord, load_split
from hyperadapter.embedding import SentenceEncoder
from hyperadapter.evaluation import metrics
from hyperadapter.evaluation.systems import System
from hyperadapter.generator.routed import route
from hyperadapter.runtime import GenerationParams, LoraRuntime
from hyperadapter.scoring import choice_logprobs

PRIMARY = {"choice": "accuracy", "generation": "rouge_l", "squad": "f1", "fact": "recall"}


@dataclass
class EvalConfig:
    out_dir: str = "results/eval"
    data_dir: str = ""
    split: str = "test"
    kinds: list[str] = field(default_factory=lambda: ["task", "demonstrations", "document", "conversation"])
    max_contexts: dict[str, int] = field(default_factory=dict)  # per kind; missing or 0 = all
    limit: int = 8  # queries per context
    max_new_tokens: int = 32
    # decoding penalties for every system alike (runtime.GenerationParams); choose them on validation
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # kinds whose replies must open with a space-led token, for every system alike (GenerationParams.lead_space)
    lead_space: list[str] = field(default_factory=list)
    systems: list[str] = field(default_factory=lambda: [
        "base", "base+context", "generated", "generated-wrong", "multitask-lora", "per-task-lora"])
    generator: str = ""  # default: the shipped checkpoint
    multitask_lora: str = "runs/multitask-lora"
    task_lora_steps: int = 80
    task_lora_batch: int = 8  # examples per oracle step (steps x batch = the oracle's training budget)
    task_lora_dir: str = "runs/oracle-lora"  # trained oracles are kept here and reused ("" = never saved)
    blend_k: int = 4  # the blend system: top-k catalogue neighbours
    blend_catalogue: int = 300  # training contexts per kind in its catalogue
    batch_size: int = 16
    seed: int = 0
    # Chats cut to this many of the user's fact-stating messages (data.builders.short_history), as
    # conversation contexts and as the unrelated contexts of generated-unrelated; 0: whole histories.
    history_lines: int = 0
    history_replies: bool = False  # with history_lines: keep the assistant's reply after each kept message
    # Documents cut to their first this many sentences (data.builders.short_document), asked only the
    # questions they still answer: the short text a user may post; 0: whole paragraphs.
    document_sentences: int = 0
    # Demonstrations relabelled (data.relabel.relabelled): only the tasks with one small label set, each
    # shown and asked with its labels swapped. An adapter that reads its demonstrations follows the swap.
    relabel: bool = False
    # With relabel: rename the labels to unrelated words (data.relabel.SYMBOLS) instead of swapping them;
    # no task's own labels are then left to answer by, only the demonstrated pairs.
    relabel_symbols: bool = False
    # The kind whose adapters generated-unrelated puts on every context; "": a chat's for tasks,
    # demonstrations and documents, a document's for chats (systems.UnrelatedContextSystem)
    unrelated_kind: str = ""
    # The generated systems make a document's adapter as the service does, with its sentence routes (the
    # settings' document_route_rank and document_max_routes), and each query is answered by the adapter of the
    # sentence nearest to it (hyperadapter.generator.routed); false: the one adapter, as results before
    # 2026-12-05 were made
    document_routes: bool = False
    # the weight of a query's words in its route (Settings.route_words); 0, the cosine alone, as results
    # before the words were weighed were made
    route_words: float = 0.0


def load_eval_config(path: str | Path, **overrides) -> EvalConfig:
    raw = tomllib.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    if set(raw) - names:
        raise ValueError(f"{path}: unknown keys {sorted(set(raw) - names)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    config = EvalConfig(**raw)
    if config.relabel_symbols and not config.relabel:
        raise ValueError(f"{path}: relabel_symbols renames the labels relabel swaps; set relabel = true as well")
    if config.unrelated_kind and config.unrelated_kind not in KINDS:
        raise ValueError(f"unrelated_kind {config.unrelated_kind!r} is not a kind; use one of {', '.join(KINDS)}")
    if config.unrelated_kind in config.kinds:
        raise ValueError(f"unrelated_kind {config.unrelated_kind!r} is also a kind this run scores: an adapter "
                         "of the same kind from another context is the generated-wrong system")
    return config


def eval_records(data_dir: Path, config: EvalConfig, kind: str) -> list[ContextRecord]:
    """The records a run scores for `kind` (`select`ed; chats cut to `history_lines` messages,
    documents to `document_sentences` sentences, demonstrations relabelled with `relabel`)."""
    records = load_split(data_dir, config.split, kind)
    if kind == "document" and config.document_sentences > 0:
        records = [short_document(r, config.document_sentences) for r in records]
    if kind == "conversation" and config.history_lines > 0:
        records = [short_history(r, config.history_lines, replies=config.history_replies) for r in records]
    if kind == "demonstrations" and config.relabel:
        records = [r for r in (relabelled(r, symbols=config.relabel_symbols) for r in records) if r is not None]
    return select(records, config.max_contexts.get(kind, 0), config.limit)


def select(records: list[ContextRecord], n: int, limit: int) -> list[ContextRecord]:
    """n contexts evenly spaced over the (id-sorted) records, so every source is represented and the
    choice is deterministic; `limit` queries each."""
    chosen = [records[i * len(records) // n] for i in range(n)] if n and n < len(records) else records
    return [dataclasses.replace(r, queries=r.queries[:limit]) for r in chosen if r.queries]


@torch.no_grad()
def choice_scores(base: Base, runtime: LoraRuntime, adapter: Adapter | None, prompt: str,
                  choices: list[str], chunk: int = 32) -> list[float]:
    """Summed log-probability of each choice as the reply to `prompt` (scoring.choice_logprobs:
    the prompt is run once per chunk of choices and its KV cache shared by them)."""
    tok = base.tokenizer
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    factors = runtime.stack(adapter)
    scores: list[float] = []
    for s in range(0, len(choices), chunk):
        rows = [tok(c, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for c in choices[s:s + chunk]]
        scores += choice_logprobs(base, runtime, [p], [rows], factors, factors).tolist()
    return scores


class Harness:
    def __init__(self, base: Base, runtime: LoraRuntime, config: EvalConfig, data_dir: Path,
                 encoder: SentenceEncoder | None = None):
        self.base, self.runtime, self.config, self.data_dir = base, runtime, config, Path(data_dir)
        self.encoder = encoder  # routes an adapter's queries when it has sentence routes (made when first needed)

    def per_query(self, adapter: Adapter | None, record: ContextRecord) -> list[Adapter | None]:
        """The adapter each query is answered with: as the service does, the adapter of the sentence nearest to
        the query when `adapter` has sentence routes, else `adapter` itself."""
        if adapter is None or adapter.routes is None:
            return [adapter] * len(record.queries)
        self.encoder = self.encoder or SentenceEncoder()
        return [route(self.encoder, adapter, q.input, self.config.route_words)[0] for q in record.queries]

    def score_context(self, system: System, record: ContextRecord) -> dict:
        adapters = self.per_query(system.adapter(record), record)
        tok = self.base.tokenizer
        scores, extra, prompt_tokens = [], {"em": [], "rouge_l": [], "f1": [], "yes_no": [], "looped": []}, []
        start = time.perf_counter()
        prompts = [system.prompt(record, q.input) for q in record.queries]
        if record.metric == "choice":
            for q, prompt, adapter in zip(record.queries, prompts, adapters):
                s = choice_scores(self.base, self.runtime, adapter, prompt, q.choices)
                scores.append(float(max(range(len(s)), key=s.__getitem__) == q.label))
                prompt_tokens.append(len(tok(prompt, add_special_tokens=False)["input_ids"]))
        else:
            params = GenerationParams(max_new_tokens=self.config.max_new_tokens,
                                      frequency_penalty=self.config.frequency_penalty,
                                      presence_penalty=self.config.presence_penalty,
                                      lead_space=record.kind in self.config.lead_space)
            replies = []
            for s in range(0, len(prompts), self.config.batch_size):
                step = slice(s, s + self.config.batch_size)
                replies += self.runtime.generate(prompts[step], adapters[step], params)
            for q, prompt, reply in zip(record.queries, prompts, replies):
                reply = reply.strip()
                prompt_tokens.append(len(tok(prompt, add_special_tokens=False)["input_ids"]))
                extra["em"].append(metrics.exact_match(reply, q.answers))
                extra["rouge_l"].append(metrics.rouge_l(reply, q.answers))
                extra["f1"].append(metrics.squad_f1(reply, q.answers))
                extra["yes_no"].append(metrics.stray_yes_no(reply, q.answers))
                extra["looped"].append(metrics.looped(reply))
                if record.metric == "squad":
                    scores.append(extra["f1"][-1])
                elif record.metric == "fact":
                    scores.append(metrics.fact_recall(reply, q.answers))
                else:
                    scores.append(extra["rouge_l"][-1])
            extra["replies"] = replies[:3]
        seconds = time.perf_counter() - start
        n = max(1, len(record.queries))
        return {"id": record.id, "group": record.group,  # compare's standard error over groups reads it
                "metric": PRIMARY[record.metric], "score": 100 * sum(scores) / n,
                "em": 100 * sum(extra["em"]) / n if extra["em"] else None,
                "stray_yes_no": 100 * sum(extra["yes_no"]) / n if record.metric == "generation" else None,
                "looped": 100 * sum(extra["looped"]) / n if extra["looped"] else None,
                "queries": len(record.queries), "prompt_tokens": sum(prompt_tokens) / n,
                "latency_ms": 1000 * seconds / n, "samples": extra.get("replies", [])}

    def run(self, systems: list[System], on_score: Callable[[dict], object] | None = None) -> dict:
        """Score every system on every kind; `on_score(results so far)` after each (system, kind), so
        that a long evaluation cut short keeps what it finished."""
        c = self.config
        results: dict = {"config": dataclasses.asdict(c), "systems": {}}
        for kind in c.kinds:
            records = eval_records(self.data_dir, c, kind)
            for system in systems:
                if kind not in system.kinds:
                    continue
                system.adapter_seconds = []
                system.prepare(records)
                rows = [self.score_context(system, r) for r in tqdm(records, desc=f"{kind}: {system.name}")]
                results["systems"].setdefault(system.name, {})[kind] = summarise(rows, system.adapter_seconds)
                if on_score is not None:
                    on_score(results)
        return results


def summarise(rows: list[dict], adapter_seconds: list[float]) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None
    by_metric: dict[str, list[float]] = {}
    for r in rows:
        by_metric.setdefault(r["metric"], []).append(r["score"])
    return {"score": mean([r["score"] for r in rows]), "contexts": len(rows),
            "queries": sum(r["queries"] for r in rows),
            "by_metric": {m: mean(v) for m, v in by_metric.items()},
            "em": mean([r["em"] for r in rows]),
            # generation tasks: % of replies a bare Yes/No where no reference is (metrics.stray_yes_no)
            "stray_yes_no": mean([r.get("stray_yes_no") for r in rows]),
            # every decoded reply: % that loop (metrics.looped); None for multiple choice
            "looped": mean([r.get("looped") for r in rows]),
            "prompt_tokens": mean([r["prompt_tokens"] for r in rows]),
            "latency_ms": mean([r["latency_ms"] for r in rows]),
            "adapter_ms": 1000 * mean(adapter_seconds) if adapter_seconds else None,
            "per_context": rows}
