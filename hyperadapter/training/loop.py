"""The generator's training loop, on `accelerate`: one process here, the same code under
`accelerate launch` on many.

Each step samples contexts of mixed kinds, builds their adapters with the hypernetwork (context
features come from a cache: the base is frozen, so a context's features never change), applies
them through the runtime to prompts that do NOT contain the context, and minimises the answer loss,
plus, optionally: KL to the base that sees the context (distillation), KL from the base alone (an
anchor), and a contrastive term (the same query under an adapter made from another context must do
worse). Checkpoints hold the accelerate state (for resume) and a plain generator folder (for use);
the loss and validation figures go to log.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from hyperadapter.base import load_base
from hyperadapter.config import load_settings
from hyperadapter.data.builders import demonstrations
from hyperadapter.data.prompts import context_prompt, query_prompt
from hyperadapter.data.schema import KINDS, load_split
from hyperadapter.data.synthetic import sentences_of, synthetic_tasks
from hyperadapter.embedding import SentenceEncoder
from hyperadapter.generator import Generator
from hyperadapter.generator.config import KIND_IDS
from hyperadapter.runtime import LoraRuntime
from hyperadapter.training.examples import REMAPPED, SYMBOLIC, Example, ExampleSampler
from hyperadapter.training.locality import base_replied, sample_locality_queries
from hyperadapter.training.objectives import item_losses_and_kl, truncate_input
from hyperadapter.training.recipe import Recipe


class FeatureCache:
    """LRU of per-context (token features fp16, token ids) and sentence embeddings: the base is
    frozen, so a context's features never change (they are computed under bf16 autocast, as in
    serving: generator.encoder)."""

    def __init__(self, generator: Generator, max_items: int):
        self.generator = generator
        self.max_items = max_items
        self.items: OrderedDict[tuple[str, str], tuple] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, examples: list[Example]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        # keyed by kind too: the kind decides the layer a context is read from (kind_layers)
        missing = [k for k in dict.fromkeys(_key(e) for e in examples) if k not in self.items]
        by_key = {_key(e): e for e in examples}
        if missing:
            self.misses += len(missing)
            sentences = (self.generator.sentence_encoder.encode([by_key[k].context for k in missing])
                         if self.generator.sentence_encoder is not None else torch.zeros(len(missing), 384))
            features = self.generator.context_features([[by_key[k].context] for k in missing],
                                                       [by_key[k].kind for k in missing])
            for key, sentence, feats in zip(missing, sentences, features):
                self.items[key] = (feats, sentence)
        self.hits += len(examples) - len(missing)
        out_feats, out_sent = [], []
        for e in examples:
            self.items.move_to_end(_key(e))
            feats, sentence = self.items[_key(e)]
            out_feats.append(feats)
            out_sent.append(sentence)
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        return out_feats, torch.stack(out_sent)


def _key(example: Example) -> tuple[str, str]:
    return example.kind, example.context_key


def _pad_features(features: list[tuple[torch.Tensor, torch.Tensor]], embed) -> tuple[torch.Tensor, ...]:
    """Cached (features, token ids) per context -> padded features, mask and token embeddings."""
    width = max(1, max(f.shape[0] for f, _ in features))
    pad = torch.nn.functional.pad
    feats = torch.stack([pad(f.float(), (0, 0, 0, width - f.shape[0])) for f, _ in features])
    mask = torch.stack([pad(torch.ones_like(ids), (0, width - ids.shape[0])) for _, ids in features])
    ids = torch.stack([pad(ids, (0, width - ids.shape[0])) for _, ids in features])
    return feats, mask, embed(ids)


# [generator] keys a run that continues a checkpoint (init_from) may change: neither changes a
# parameter's shape. Any other key that differs from the checkpoint's would be ignored: an error.
CONTINUABLE = {"copy_scale", "copy_compete", "routed_kinds", "feature_layer", "kind_layers"}
# ... and keys that add parameters that start at zero (the same outputs until trained)
GROWABLE = {"copy_keys", "copy_key_scale"}


class Trainer:
    def __init__(self, recipe: Recipe):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe = recipe
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        self.accelerator = Accelerator(cpu=True)
        set_seed(recipe.seed + self.accelerator.process_index)
        settings = load_settings()
        self.out = Path(recipe.out_dir)
        self.base = load_base(recipe.base_model, settings.models_dir)
        self.runtime = LoraRuntime(self.base)
        encoder = SentenceEncoder()
        if recipe.init_from:
            self.generator = Generator.from_pretrained(recipe.init_from, self.base, encoder)
            config = self.generator.config
            if config.own_weights:
                raise ValueError(f"init_from {recipe.init_from} has weights of its own for "
                                 f"{', '.join(config.own_weights)}; training continues shared weights only: train "
                                 "from the checkpoints it was grafted from, then graft again")
            changed = sorted(k for k, v in recipe.generator.items()
                             if k not in CONTINUABLE | GROWABLE and getattr(config, k, object()) != v)
            if changed:
                raise ValueError(f"init_from keeps the checkpoint's architecture: [generator] may change only "
                                 f"{', '.join(sorted(CONTINUABLE | GROWABLE))} when continuing, not {', '.join(changed)}")
            if GROWABLE & recipe.generator.keys():
                self.generator.hypernet.add_copy_keys(int(recipe.generator.get("copy_keys", config.copy_keys)),
                                                      recipe.generator.get("copy_key_scale"))
            self.generator.hypernet.requires_grad_(True)
            if "copy_compete" in recipe.generator:  # no parameter of its own: the same weights, competing
                config.copy_compete = float(recipe.generator["copy_compete"])
            if "routed_kinds" in recipe.generator:  # nor has routing by kind
                kinds = list(recipe.generator["routed_kinds"])
                dataclasses.replace(config, routed_kinds=kinds)  # the config's own checks, first
                config.routed_kinds = kinds
            if "copy_scale" in recipe.generator:  # continuing with a faster-learning copy gain
                self.generator.hypernet.set_copy_scale(float(recipe.generator["copy_scale"]))
            if "feature_layer" in recipe.generator or "kind_layers" in recipe.generator:
                # continuing on shallower (cheaper) features, for every kind or for some
                layer = recipe.generator.get("feature_layer")
                self.generator.read_from_layer(None if layer is None else int(layer),
                                               recipe.generator.get("kind_layers"))
        else:
            self.generator = Generator.fresh(self.base, encoder, seed=recipe.seed, **recipe.generator)
        self.data_dir = data_dir = Path(recipe.data_dir) if recipe.data_dir else settings.prepared_data_dir
        self._harness_base: dict[str, float] | None = None
        # task records are also where locality queries come from, even in a run that trains no task
        wanted = {k for k in KINDS if recipe.kind_weights.get(k, 0) > 0} | ({"task"} if recipe.unrelated_share > 0 else set())
        train = {k: load_split(data_dir, "train", k) for k in KINDS if k in wanted}
        self.sampler = ExampleSampler(train, recipe.kind_weights, seed=recipe.seed + 1000 * self.accelerator.process_index,
                                      selfsup_share=recipe.selfsup_share, lead_space=tuple(recipe.lead_space),
                                      unrelated_share=recipe.unrelated_share,
                                      unrelated_kinds=tuple(recipe.unrelated_kinds),
                                      task_variants=recipe.task_variants,
                                      synthetic=self._synthetic(train), synthetic_share=recipe.synthetic_share,
                                      short_history_share=recipe.short_history_share,
                                      short_history_lines=recipe.short_history_lines,
                                      short_history_replies=recipe.short_history_replies,
                                      short_document_share=recipe.short_document_share,
                                      short_document_sentences=recipe.short_document_sentences,
                                      remap_share=recipe.remap_share, remap_symbols=recipe.remap_symbols,
                                      locality_pool=self._locality_pool(train.get("task") or []))
        val = {k: load_split(data_dir, "validation", k) for k in train}
        self.val_examples = self._fixed_examples(val)
        self.cache = FeatureCache(self.generator, recipe.feature_cache_items)
        params = [p for p in self.generator.hypernet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.generator.hypernet, self.optimizer, self.scheduler)
        self.step = 0

    def _anchor_only(self, example: Example) -> bool:
        """Whether `example` is trained by the anchor alone (Recipe.anchor_unrelated)."""
        return self.recipe.anchor_unrelated and example.objective == "unrelated"

    def _distilled_remapped(self, example: Example) -> bool:
        """Whether `example` is a query of relabelled demonstrations (swapped, or words) that
        Recipe.distill_remapped distils."""
        return (self.recipe.distill_remapped and example.kind == "demonstrations"
                and example.context_key.endswith((REMAPPED, SYMBOLIC)))

    @staticmethod
    def _symbolic(example: Example) -> bool:
        """Whether `example` is a query of demonstrations whose labels are unrelated words (Recipe.remap_symbols):
        the base alone gives them no distribution worth anchoring to."""
        return example.kind == "demonstrations" and example.context_key.endswith(SYMBOLIC)

    def _synthetic(self, train: dict[str, list]) -> dict[str, list]:
        """Generated tasks and their demonstrations (data.synthetic), inputs from training documents."""
        r = self.recipe
        if r.synthetic_tasks <= 0 or r.synthetic_share <= 0:
            return {}
        documents = train.get("document") or load_split(self.data_dir, "train", "document")
        tasks = synthetic_tasks(r.synthetic_tasks, sentences_of(documents), seed=r.seed)
        return {"task": tasks, "demonstrations": list(demonstrations(tasks, r.seed))}

    def _locality_pool(self, tasks: list) -> list:
        """Locality queries with the base's own replies (Recipe.locality_replies), generated once per run
        folder by the main process."""
        r = self.recipe
        if r.locality_replies <= 0 or r.unrelated_share <= 0:
            return []
        pool = sample_locality_queries(tasks, r.locality_replies, r.seed)
        with self.accelerator.main_process_first():
            return base_replied(self.base, self.runtime, pool, r.max_prompt_tokens, r.max_target_tokens,
                                self.out / "locality_replies.json")

    def _lr_factor(self, step: int) -> float:
        r = self.recipe
        if step < r.warmup_steps:
            return (step + 1) / r.warmup_steps
        progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _fixed_examples(self, val: dict) -> dict[str, list[Example]]:
        sampler = ExampleSampler(val, {k: 1.0 for k in val}, seed=12345, selfsup_share=0.0,
                                 lead_space=tuple(self.recipe.lead_space))
        r = self.recipe
        n = r.eval_batches * r.contexts_per_batch
        out = {}
        for kind, records in val.items():
            rng = random.Random(kind)
            picked = rng.sample(records, min(n, len(records)))
            out[kind] = [e for rec in picked for e in sampler.examples_for(rec, r.queries_per_context)]
        return out

    # ------------------------------------------------------------ one step
    def losses(self, examples: list[Example], with_distill: bool,
               wrong: Sequence[tuple[int, Example]] = ()) -> dict[str, torch.Tensor]:
        """Generated adapters for every example's context, then the answer (and distillation) loss.
        `wrong`: (row, that row's query with another context) pairs for the contrastive term."""
        everything = list(examples) + [e for _, e in wrong]
        features, sentences = self.cache.get(everything)
        feats, mask, emb = _pad_features(features, self.generator.embed)
        kinds = torch.tensor([KIND_IDS[e.kind] for e in everything])
        factors = self.model(feats, mask, emb, sentences, kinds, use_tokens=self.generator.config.use_tokens)
        return self.objective(everything, self.generator.runtime_factors(factors), with_distill,
                              [row for row, _ in wrong])

    def objective(self, examples: list[Example], runtime_factors: dict | None,
                  with_distill: bool = False, wrong_rows: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """The loss of the base under per-example factors (None: the base alone). Rows are sorted by
        length into micro-batches of similar length: padding a 40-token question to a 300-token task
        input would triple the base's work. Each example weighs the same, whatever its objective.

        The last len(wrong_rows) examples are the queries of rows `wrong_rows` under adapters made
        from another context of the same kind. They are not in the answer loss; the contrastive term
        asks each right adapter to beat its wrong one by `contrast_margin` nats on the same query, so
        a generator that makes one adapter for every task description pays for it."""
        r = self.recipe
        n = len(examples) - len(wrong_rows)
        inputs = [truncate_input(self.base, e.input, r.max_prompt_tokens) for e in examples]
        prompts = [query_prompt(self.base, x) for x in inputs]
        lengths = [len(self.base.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(examples)), key=lengths.__getitem__)
        groups = [order[i:i + r.micro_batch] for i in range(0, len(order), r.micro_batch)]
        per_item = torch.zeros(len(examples))
        distill_total = torch.zeros(())
        distill = with_distill and r.distill_weight > 0 and runtime_factors is not None
        anchor_total = torch.zeros(())
        anchor = r.anchor_weight > 0 and runtime_factors is not None and self.model.training  # not in validation
        for rows in groups:
            def factors_of(index: list[int], rows=rows) -> dict | None:  # positions within `rows`
                if runtime_factors is None:
                    return None
                at = torch.tensor([rows[i] for i in index])
                return {m: (a[at], b[at]) for m, (a, b) in runtime_factors.items()}

            # distilled: supervised answers only (a continuation of a chunk the teacher reads in its
            # prompt is a copy, and a locality query is no question about the context), and swapped
            # demonstrations (Recipe.distill_remapped); the teacher is the base with the context in its prompt
            distilled = {j: context_prompt(self.base, examples[i].kind, examples[i].context, inputs[i])
                         for j, i in enumerate(rows) if distill and i < n
                         and ((examples[i].objective == "supervised" and examples[i].kind in r.distill_kinds)
                              or self._distilled_remapped(examples[i]))}
            # the anchor: the base without context is the teacher, on the group's own answers; a distilled
            # query has the base that reads its context as its teacher instead, and a query answered by
            # unrelated words has none
            anchored = [j for j, i in enumerate(rows) if anchor and i < n and examples[i].objective != "selfsup"
                        and (examples[i].kind in r.anchor_kinds or self._anchor_only(examples[i]))
                        and j not in distilled and not self._symbolic(examples[i])]
            losses, anchor_kl, distill_kl = item_losses_and_kl(
                self.base, self.runtime, [prompts[i] for i in rows], [examples[i] for i in rows], factors_of,
                r.max_target_tokens, r.bf16, anchored, distilled)
            per_item = per_item.index_put((torch.tensor(rows),), losses)
            anchor_total = anchor_total + anchor_kl.sum() / n
            distill_total = distill_total + distill_kl.sum() / n
        # queries trained by the anchor alone do not count toward the answer loss
        keep = torch.tensor([0.0 if self._anchor_only(e) and anchor else 1.0 for e in examples[:n]])
        out = {"answer": (per_item[:n] * keep).sum() / keep.sum().clamp(min=1.0)}
        out["total"] = out["answer"]
        if distill:
            out["distill"] = distill_total
            out["total"] = out["total"] + r.distill_weight * distill_total
        if anchor:
            out["anchor"] = anchor_total
            out["total"] = out["total"] + r.anchor_weight * anchor_total
        if len(wrong_rows):
            gap = per_item[n:] - per_item[torch.tensor(list(wrong_rows))]  # wrong minus right, per query
            out["contrast"] = torch.relu(r.contrast_margin - gap).mean()
            out["gap"] = gap.mean().detach()
            out["total"] = out["total"] + r.contrast_weight * out["contrast"]
        return out

    def train_step(self) -> dict[str, float]:
        r = self.recipe
        self.model.train()
        examples = self.sampler.sample(r.contexts_per_batch, r.queries_per_context)
        wrong = self.sampler.wrong_contexts(examples, r.contrast_kinds) if r.contrast_weight > 0 else []
        losses = self.losses(examples, with_distill=r.distill_every > 0 and self.step % r.distill_every == 0,
                             wrong=wrong)
        self.accelerator.backward(losses["total"])
        if r.grad_clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), r.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Answer loss on fixed validation contexts: with generated adapters, with adapters generated
        from the wrong context (another context of the same kind: if this is not worse, the generator
        ignores its input), and with the base alone."""
        self.model.eval()
        r = self.recipe
        out = {}
        n = r.contexts_per_batch * r.queries_per_context
        for kind, examples in self.val_examples.items():
            gen, wrong, base = [], [], []
            for s in range(0, len(examples), n):
                chunk = examples[s:s + n]
                gen.append(self.losses(chunk, with_distill=False)["answer"])
                shift = r.queries_per_context % len(chunk) or 1
                swapped = [dataclasses.replace(e, context_key=o.context_key, context=o.context)
                           for e, o in zip(chunk, chunk[shift:] + chunk[:shift])]
                wrong.append(self.losses(swapped, with_distill=False)["answer"])
                base.append(self.objective(chunk, None)["answer"])
            out[f"val_{kind}"] = float(torch.stack(gen).mean())
            out[f"val_{kind}_wrong"] = float(torch.stack(wrong).mean())
            out[f"val_{kind}_base"] = float(torch.stack(base).mean())
        return out

    @torch.no_grad()
    def validate_with_harness(self) -> dict[str, float]:
        """The harness on a few validation contexts per kind: the generator as it is now, and (once,
        for reference) the base alone. Scores go to the log as harness_<kind> / harness_<kind>_base."""
        from hyperadapter.evaluation.harness import EvalConfig, Harness
        from hyperadapter.evaluation.systems import AdapterSystem, BaseSystem

        r = self.recipe
        self.model.eval()
        hypernet = self.accelerator.unwrap_model(self.model)
        generator = Generator(self.generator.config, hypernet, self.base, self.generator.sentence_encoder,
                              name=f"step-{self.step}")
        config = EvalConfig(split="validation", kinds=sorted(self.val_examples), max_contexts=r.harness_contexts,
                            limit=r.harness_queries, max_new_tokens=32)
        systems = [AdapterSystem(self.base, lambda kind, ctx: generator.generate_adapter(ctx, kind))]
        if self._harness_base is None:
            systems.append(BaseSystem(self.base))
        results = Harness(self.base, self.runtime, config, self.data_dir).run(systems)["systems"]
        if self._harness_base is None:
            self._harness_base = {f"harness_{k}_base": v["score"] for k, v in results["base"].items()}
        return {**{f"harness_{k}": v["score"] for k, v in results["generated"].items()}, **self._harness_base}

    # ------------------------------------------------------------ checkpoints
    def save(self, final: bool = False) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state_dir = self.out / "state"
            self.accelerator.save_state(str(state_dir))
            (self.out / "step.json").write_text(json.dumps({"step": self.step}))
            hypernet = self.accelerator.unwrap_model(self.model)
            self.generator.hypernet = hypernet
            self.generator.save_pretrained(self.out / "generator", extra={"step": self.step, "final": final})
        self.accelerator.wait_for_everyone()

    def maybe_resume(self) -> None:
        step_file = self.out / "step.json"
        if step_file.is_file() and (self.out / "state").is_dir():
            self.accelerator.load_state(str(self.out / "state"))
            self.step = json.loads(step_file.read_text())["step"]
            self.sampler.rng.seed(self.recipe.seed + self.step + 1000 * self.accelerator.process_index)
            self.accelerator.print(f"resumed from step {self.step}")

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> Path:
        r = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        if self.accelerator.is_main_process:
            (self.out / "recipe.json").write_text(json.dumps(
                {**r.__dict__, "num_processes": self.accelerator.num_processes}, indent=2, default=str))
        self.maybe_resume()
        bar = tqdm(total=r.steps, initial=self.step, desc="train", disable=not self.accelerator.is_main_process)
        running: dict[str, float] = {}
        start = time.time()
        while self.step < r.steps:
            losses = self.train_step()
            for k, v in losses.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in running.items() if k != "total"})
            if self.step % r.log_every == 0:
                self.log({"step": self.step, "time": round(time.time() - start, 1), **losses,
                          "lr": self.scheduler.get_last_lr()[0], "cache_hits": self.cache.hits,
                          "cache_misses": self.cache.misses})
            if r.eval_every and self.step % r.eval_every == 0:
                metrics = self.validate()
                self.log({"step": self.step, **metrics})
                bar.write(" ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
            if r.harness_every and self.step % r.harness_every == 0 and self.accelerator.is_main_process:
                metrics = self.validate_with_harness()
                self.log({"step": self.step, **metrics})
                bar.write(" ".join(f"{k}={v:.1f}" for k, v in metrics.items()))
            if r.save_every and self.step % r.save_every == 0:
                self.save()
        bar.close()
        self.save(final=True)
        return self.out / "generator"


def train(recipe: Recipe) -> Path:
    return Trainer(recipe).run()
