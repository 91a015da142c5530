"""Training recipes: one TOML file per run, read into a dataclass (unknown keys are an error)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hyperadapter.data.schema import KINDS


@dataclass
class Recipe:
    out_dir: str = "runs/generator"
    data_dir: str = ""  # default: <data_root>/data
    base_model: str = "default"
    seed: int = 0
    steps: int = 4000
    contexts_per_batch: int = 4
    queries_per_context: int = 2
    micro_batch: int = 4  # rows per base forward, grouped by length
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    max_prompt_tokens: int = 320
    max_target_tokens: int = 48
    # share of contexts per kind in a batch
    kind_weights: dict[str, float] = field(default_factory=lambda: {
        "task": 0.3, "demonstrations": 0.15, "document": 0.35, "conversation": 0.2})
    # objectives: supervised answers; self-supervised continuation of document text (share of
    # document queries); context distillation from the base that sees the context (KL weight, and
    # the share of steps that pay for the teacher's forward pass)
    selfsup_share: float = 0.25
    # Answers of these kinds are trained with a leading space. A word at the start of a reply is
    # tokenized unlike the same word inside a text ("Lisbon" -> L|is|bon, " Lisbon" -> one token):
    # with the space, the answer's tokens are the very tokens of the context, which is what lets the
    # copy head put a name or a span from a chat or a document into the reply. Scoring normalises
    # whitespace, so a leading space costs nothing.
    lead_space: list[str] = field(default_factory=lambda: ["document", "conversation"])
    # Share of examples whose query is replaced by another task's query (trained to that task's own
    # answer), the context kept: locality, so that an adapter leaves alone what its context is not about.
    unrelated_share: float = 0.0
    unrelated_kinds: list[str] = field(default_factory=lambda: list(KINDS))
    # Contrastive term: for queries of these kinds, the same query under an adapter made from another
    # context of the kind (another task's description) must lose by `contrast_margin` nats, weighted
    # by `contrast_weight` (0: off). Against a generator that learns one adapter for every task. Leave
    # these kinds out of `unrelated_kinds`: that objective asks the opposite of another task's adapter.
    contrast_weight: float = 0.0
    contrast_margin: float = 0.25
    contrast_kinds: list[str] = field(default_factory=lambda: ["task", "demonstrations"])
    # Fixed rewordings per task description drawn in training (1: the description only; see
    # training.examples): against a generator that tells its training tasks apart by wording alone.
    task_variants: int = 1
    # Procedurally generated task descriptions (data.synthetic) added to training, with their
    # demonstrations; a task or demonstrations context is one of them with probability
    # `synthetic_share`. More distinct descriptions than the 161 of the training split.
    synthetic_tasks: int = 0
    synthetic_share: float = 0.0
    # Share of demonstrations contexts drawn from the training tasks with one small label set and shown
    # with their labels swapped (data.relabel); with the contrastive term on, such a context and the
    # same demonstrations unswapped are each other's wrong context. Against adapters that know the
    # task from its inputs and never read the demonstrated answers.
    remap_share: float = 0.0
    # Symbol tuning: those contexts rename their labels to unrelated words (data.relabel.SYMBOLS) instead
    # of swapping them. A swap leaves the task's own labels as a prior that fights the demonstrations (held
    # out, no stage followed a swap); unrelated words leave nothing but the demonstrated pairs. A symbol
    # set's wrong context is the same set with the words assigned the other way round; its queries are
    # not anchored (the base alone knows no such words), and distilled with `distill_remapped`.
    remap_symbols: bool = False
    distill_weight: float = 0.0
    distill_every: int = 4
    # Kinds whose supervised answers are distilled (a distilled query is not also anchored: its teacher
    # is the base that reads its context). The teacher must know more than the student: with
    # the document in its prompt the base scores F1 15.1 against the adapter's 10.4 on test, but with
    # a chat history or a task description in its prompt it scores below the adapter (7.3 recall
    # against 21.4) or below zero-shot, so distilling those would teach the student to be worse.
    distill_kinds: list[str] = field(default_factory=lambda: ["document"])
    # Distil the demonstrations shown with swapped labels or words (remap_share), their ranked choices
    # included, from the base that reads them, in place of the anchor. The base with swapped demonstrations
    # in its prompt follows the swap (held-out probe: 55.9 against 45.8 zero-shot), while the anchor's
    # teacher, the base alone, answers by the task's own labels: anchoring those queries pulls the adapter
    # away from the very labels its demonstrations show. Whether the base reading words is a teacher
    # depends on whether it knows the inputs' classes: on the real label tasks it is not (validation
    # symbols probe 39.1, against 43.1 without the demonstrations). Nor, it turned out, on plain
    # categories: the 86.0 against 53.5 once read here (diagnostics/category_symbols.py) came from sets
    # showing one category whose queries were nearly all of it; shown both categories and asked both,
    # the base reading the set scores 50.2 against 47.5 (configs/eval_diagnostic_category_pairs.toml).
    distill_remapped: bool = False
    # Anchor: KL(base || adapted) at the answer tokens of queries of these kinds (for multiple choice,
    # the right choice's tokens), weighted by `anchor_weight` (0: off). The ranking loss on a Yes/No
    # task is as happy with an adapter that makes "Yes" and "No" the likeliest reply to anything as
    # with one that only orders them; unseen descriptions then get that adapter (bare "Yes." to a
    # generation task). The anchor makes an adapter pay for every change to the base's answer
    # distribution that its answers do not need.
    anchor_weight: float = 0.0
    # Locality by the anchor: the unrelated queries (unrelated_share) are trained by KL(base || adapted)
    # at their answer tokens instead of by another task's gold answer. Gold answers teach a
    # document's or a chat's adapter to do other tasks, and ranked Yes/No answers teach it to reply
    # a bare "Yes." to anything (11.5% of replies under an unrelated adapter on test); what locality
    # asks is the base's own answer. (Model card: stages 10 and 11 did not lower them on validation;
    # stage 11, shipped with it, gives 2.1% on test against stage 7's 11.5%.)
    anchor_unrelated: bool = False
    anchor_kinds: list[str] = field(default_factory=lambda: ["task", "demonstrations"])
    # Locality queries from a fixed pool of this many training task queries, each generation query
    # answered by the base's own greedy reply (training.locality) instead of its gold answer (0: any
    # query of any other task, gold answers). With anchor_unrelated, the anchor then holds an
    # unrelated adapter to the text the base writes. (Stages 17 and 18: better locality on validation,
    # worse on test; not shipped.)
    locality_replies: int = 0
    # Share of chats cut to one or two of the user's messages that state a fact (data.builders.
    # short_history). Trained on whole histories only, a chat adapter from one message answered every
    # prompt with the name it held ("Pepper Pepper ...").
    short_history_share: float = 0.0
    short_history_lines: list[int] = field(default_factory=lambda: [1, 2])  # messages kept, drawn evenly
    # Share of those cuts that keep the assistant's reply after each kept message, as real short
    # chats do. (Stage 19 trained on such cuts; alone they did not mend short chats: model card.)
    short_history_replies: float = 0.0
    # Share of documents cut to their first few sentences (data.builders.short_document), drawn evenly
    # from short_document_sentences, with the questions the cut still answers. Trained on whole
    # paragraphs only, a one-sentence document's adapter looped (15% of replies); stage 44 trained on
    # such cuts and they did not mend it (model card).
    short_document_share: float = 0.0
    short_document_sentences: list[int] = field(default_factory=lambda: [1, 2, 3])
    # generator architecture (GeneratorConfig fields)
    generator: dict = field(default_factory=dict)
    init_from: str = ""  # start from an existing generator checkpoint
    # bookkeeping
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 4
    # every `harness_every` steps, the evaluation harness scores the generator on a few held-out
    # *validation* contexts per kind (what the answer loss cannot show: accuracy, ROUGE-L, F1)
    harness_every: int = 0
    harness_contexts: dict[str, int] = field(default_factory=lambda: {
        "task": 12, "demonstrations": 6, "document": 16, "conversation": 16})
    harness_queries: int = 4
    save_every: int = 250
    feature_cache_items: int = 20000
    threads: int = 0
    bf16: bool = True  # the base runs under bfloat16 autocast (see training.objectives)


def load_recipe(path: str | Path, **overrides) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    raw = tomllib.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"recipe {path}: unknown keys {sorted(unknown)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    recipe = Recipe(**raw)
    if not recipe.short_history_lines or min(recipe.short_history_lines) < 1:
        raise ValueError(f"recipe {path}: short_history_lines must list message counts of at least 1")
    if not recipe.short_document_sentences or min(recipe.short_document_sentences) < 1:
        raise ValueError(f"recipe {path}: short_document_sentences must list sentence counts of at least 1")
    if not 0.0 <= recipe.short_document_share <= 1.0:
        raise ValueError(f"recipe {path}: short_document_share is a share, between 0 and 1")
    if not 0.0 <= recipe.remap_share <= 1.0:
        raise ValueError(f"recipe {path}: remap_share is a share, between 0 and 1")
    if not 0.0 <= recipe.short_history_replies <= 1.0:
        raise ValueError(f"recipe {path}: short_history_replies is a share, between 0 and 1")
    return recipe
