"""Locality queries answered by the base itself.

Locality asks an adapter to leave alone what its context says nothing about: another task's query
under a chat's adapter should get the reply the base would give. Trained on that task's gold answer
(teacher-forced, a few words), the anchor never sees the adapter's free-running replies, and those
drifted: under stage 16's chat adapters, test replies to unrelated generation tasks repeated
themselves or stopped short (ROUGE-L 6.8 against the base's 14.4). Here a fixed pool of training
task queries carries, for each generation query, the base's own greedy reply as its answer, so the
anchor holds the adapted model to the base's distribution along the text the base actually writes.
Multiple-choice queries keep their right choice (the harness ranks choices, it does not generate).

The pool is generated once per run folder and kept there as one JSON file (resuming reuses it).
Stages 17 and 18 trained with it: a chat's adapter was level with the base on the 33 validation
tasks, but worse than before on the test tasks (model card, Training), so it is not in the shipped
recipe.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tqdm import tqdm

from hyperadapter.base import Base
from hyperadapter.data.prompts import query_prompt
from hyperadapter.data.schema import ContextRecord, Query
from hyperadapter.runtime import GenerationParams, LoraRuntime
from hyperadapter.training.objectives import truncate_input


def sample_locality_queries(tasks: list[ContextRecord], n: int, seed: int) -> list[tuple[str, Query]]:
    """n (task id, query) pairs drawn evenly over `tasks` (a task at random, then one of its queries)."""
    rng = random.Random(f"locality:{seed}")
    usable = [t for t in tasks if t.queries or t.support]
    if not usable:
        raise ValueError("no task with queries to draw locality queries from")
    out = []
    for _ in range(n):
        task = rng.choice(usable)
        out.append((task.id, rng.choice(task.queries + task.support)))
    return out


def base_replied(base: Base, runtime: LoraRuntime, pool: list[tuple[str, Query]], max_prompt_tokens: int,
                 max_new_tokens: int, path: Path, batch_size: int = 16) -> list[tuple[str, Query]]:
    """`pool` with each generation query's answer replaced by the base's greedy reply to the prompt
    training puts to it; read from `path` when it holds this very pool, written there otherwise."""
    key = [[task, q.input] for task, q in pool]
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("queries") == key and saved.get("max_new_tokens") == max_new_tokens:
            return _answered(pool, saved["replies"])
    todo = [q for _, q in pool if not q.choices]
    prompts = [query_prompt(base, truncate_input(base, q.input, max_prompt_tokens)) for q in todo]
    params = GenerationParams(max_new_tokens=max_new_tokens)
    replies: list[str] = []
    for s in tqdm(range(0, len(prompts), batch_size), desc="base replies for locality", unit="batch"):
        replies += runtime.generate(prompts[s:s + batch_size], None, params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"queries": key, "max_new_tokens": max_new_tokens, "replies": replies}))
    tmp.replace(path)
    return _answered(pool, replies)


def _answered(pool: list[tuple[str, Query]], replies: list[str]) -> list[tuple[str, Query]]:
    """`pool` with its generation queries' answers replaced by `replies`, in order."""
    it = iter(replies)
    return [(task, q if q.choices else Query(q.input, [next(it)])) for task, q in pool]
