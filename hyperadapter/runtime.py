"""Apply adapters to the frozen base without touching its weights, many adapters per batch.

Forward hooks on the base's linear modules add `x @ A_row^T @ B_row^T` for each batch row, with every
row's factors gathered into one [rows, r, in] / [rows, out, r] stack and applied with two batched
matmuls (the S-LoRA / Punica idea in plain PyTorch). Rows without an adapter get zero factors. No
merging, no weight mutation, no per-request model copies: the base tensors are only ever read.

`DecodeBatch` runs KV-cached decoding for rows that may join and leave between steps (the serving
engine's continuous batching); `generate` is the simple front door built on it.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from hyperadapter.adapter import Adapter, AdapterError
from hyperadapter.base import Base

Factors = tuple[Tensor, Tensor]  # A: [rows, r, in] or [r, in]; B: [rows, out, r] or [out, r]; scaling folded in


class LoraRuntime:
    """Owns the hooks on one base model. Use `activate(...)` around any forward pass."""

    def __init__(self, base: Base):
        self.base = base
        self.shapes = base.linear_shapes()
        # The active factors are per thread: a server thread decoding and another generating an
        # adapter (which runs the base too) never see each other's adapters.
        self._local = threading.local()
        self._handles = []
        for name, module in base.model.named_modules():
            if name in self.shapes:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            factors = getattr(self._local, "active", None)
            factors = factors.get(name) if factors else None
            if factors is None:
                return output
            a, b = factors
            x = inputs[0]
            if a.dim() == 2:  # one adapter shared by every row
                return output + (x @ a.transpose(0, 1)) @ b.transpose(0, 1)
            return output + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------------ activation
    def check(self, adapter: Adapter) -> None:
        """Validate an adapter against this base (shapes, modules, NaN, identity)."""
        adapter.validate(self.shapes, base_model=self.base.model_id)

    def stack(self, adapters: Sequence[Adapter | None] | Adapter | None) -> dict[str, Factors]:
        """Per-module factors for a batch: one adapter for all rows, or one (or None) per row."""
        dtype = next(self.base.model.parameters()).dtype
        if adapters is None:
            return {}
        if isinstance(adapters, Adapter):
            return {m: (a.to(dtype), (b * adapters.scaling).to(dtype)) for m, (a, b) in adapters.weights.items()}
        rows = list(adapters)
        distinct = {id(a) for a in rows}
        if len(distinct) == 1:
            return self.stack(rows[0])
        present = [a for a in rows if a is not None]
        if not present:
            return {}
        rank = max(a.rank for a in present)
        modules = sorted({m for a in present for m in a.weights})
        stacks: dict[str, Factors] = {}
        for m in modules:
            fan_in, fan_out = self.shapes[m]
            a_stack = torch.zeros(len(rows), rank, fan_in, dtype=dtype)
            b_stack = torch.zeros(len(rows), fan_out, rank, dtype=dtype)
            for i, adapter in enumerate(rows):
                if adapter is not None and m in adapter.weights:
                    a, b = adapter.weights[m]
                    a_stack[i, : a.shape[0]] = a
                    b_stack[i, :, : b.shape[1]] = b * adapter.scaling
            stacks[m] = (a_stack, b_stack)
        return stacks

    @contextlib.contextmanager
    def activate(self, adapters: Sequence[Adapter | None] | Adapter | None = None,
                 factors: dict[str, Factors] | None = None) -> Iterator[None]:
        """Within the block, forward passes add the given adapters (or precomputed/differentiable factors)."""
        previous = getattr(self._local, "active", None)
        self._local.active = factors if factors is not None else self.stack(adapters)
        try:
            yield
        finally:
            self._local.active = previous

    # ------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], adapters: Sequence[Adapter | None] | Adapter | None = None,
                 params: "GenerationParams | Sequence[GenerationParams] | None" = None) -> list[str]:
        """Generate a completion for every prompt (already chat-formatted), all rows in one batch."""
        if isinstance(adapters, Adapter) or adapters is None:
            adapters = [adapters] * len(prompts)
        if params is None or isinstance(params, GenerationParams):
            params = [params or GenerationParams()] * len(prompts)
        if not (len(prompts) == len(adapters) == len(params)):
            raise ValueError("prompts, adapters and params must have the same length")
        rows = [Row(self.encode(p), a, q) for p, a, q in zip(prompts, adapters, params)]
        batch = DecodeBatch(self)
        batch.add(rows)
        while batch.rows:
            batch.step()
        return [r.text for r in rows]

    def stream(self, prompt: str, adapter: Adapter | None = None,
               params: "GenerationParams | None" = None) -> Iterator[str]:
        """Yield the text of one completion piece by piece as tokens are decoded."""
        row = Row(self.encode(prompt), adapter, params or GenerationParams())
        batch = DecodeBatch(self)
        batch.add([row])
        while True:
            emitted = row.take_new_text()
            if emitted:
                yield emitted
            if row.finished:
                break
            batch.step()
        tail = row.take_new_text()
        if tail:
            yield tail

    def encode(self, text: str) -> list[int]:
        return self.base.tokenizer(text, add_special_tokens=False)["input_ids"]

    def space_led(self, vocab: int) -> Tensor:
        """[vocab] bool: the tokens whose text begins with a space (as wide as the logits; computed once)."""
        mask = getattr(self, "_space_led", None)
        if mask is None or mask.shape[0] != vocab:
            tok = self.base.tokenizer
            texts = tok.batch_decode([[i] for i in range(min(len(tok), vocab))])
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[:len(texts)] = torch.tensor([t.startswith(" ") for t in texts])
            self._space_led = mask
        return mask

    @property
    def stop_ids(self) -> set[int]:
        ids = {self.base.tokenizer.eos_token_id}
        gen_eos = getattr(self.base.model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return {i for i in ids if i is not None}


@dataclass
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    # OpenAI's penalties, on the tokens generated so far (not the prompt's, as OpenAI and vLLM do):
    # a token's logit drops by frequency_penalty per earlier use plus presence_penalty once used.
    # Greedy decoding gets them too. They break loops ("the pan with the pan with ..."), but on the
    # validation split they moved the generated adapters' document F1 and fact recall by no more than
    # the noise (presence 2.0: F1 +0.3 +- 0.2, recall +0.0), so the harness leaves them at 0. On short
    # documents and chats, where the loops are, they help: the service's defaults, hyperadapter.decoding.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks), as vLLM's ignore_eos
    # A chat reply starts without whitespace. Adapters trained to copy a word from their context emit
    # its in-text token, which carries a leading space (" Lisbon"); a plain completion keeps it.
    strip_leading: bool = False
    # The reply's first token must begin with a space (a lone space too: " 1887" is " ", "1", ...).
    # Document and chat answers were trained so (`lead_space` in the recipes), while the chat
    # template's prior opens a reply with a bare "The". strip_leading then drops the space. On 256
    # validation paragraphs it left document F1 where it was (-0.1 +- 0.3), so nothing turns it on.
    lead_space: bool = False


@dataclass
class Row:
    """One sequence being decoded: its prompt, adapter, sampling state and output so far."""

    prompt_ids: list[int]
    adapter: Adapter | None
    params: GenerationParams
    output_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    text: str = ""
    _emitted: int = 0
    _generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.params.temperature > 0:
            self._generator = torch.Generator()
            self._generator.manual_seed(self.params.seed if self.params.seed is not None
                                        else int(torch.randint(0, 2**62, ()).item()))

    def take_new_text(self) -> str:
        new = self.text[self._emitted:]
        self._emitted = len(self.text)
        return new


def _penalised(logits: Tensor, rows: Sequence[Row]) -> Tensor:
    """`logits` [rows, vocab] less each row's frequency and presence penalties on its output so far."""
    for i, row in enumerate(rows):
        p = row.params
        if row.output_ids and (p.frequency_penalty or p.presence_penalty):
            used, counts = torch.tensor(row.output_ids).unique(return_counts=True)
            logits[i, used] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
    return logits


def _left_pad(t: Tensor, length: int, dim: int) -> Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class DecodeBatch:
    """KV-cached decoding of a changing set of rows. Left padding keeps every row's cache the same
    length, so rows that join late are padded in and rows that finish are sliced out."""

    def __init__(self, runtime: LoraRuntime, on_token: Callable[[Row, int], None] | None = None):
        self.runtime = runtime
        self.model = runtime.base.model
        self.tokenizer = runtime.base.tokenizer
        self.stop_ids = runtime.stop_ids
        self.rows: list[Row] = []
        self.cache = None
        self.mask: Tensor | None = None  # [rows, cache_len]: 1 for real tokens
        self.next_tokens: Tensor | None = None  # [rows]: sampled but not yet fed
        self._factors: dict[str, Factors] | None = None
        self.on_token = on_token

    @torch.inference_mode()
    def add(self, rows: Sequence[Row]) -> None:
        """Prefill new rows together, sample their first tokens, merge them into the running batch."""
        if not rows:
            return
        for row in rows:
            if not row.prompt_ids:
                raise ValueError("empty prompt")
            if row.adapter is not None:
                self.runtime.check(row.adapter)
        from transformers import DynamicCache
        length = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, length - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        with self.runtime.activate([r.adapter for r in rows]):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
        first = self._sample(out.logits[:, -1], rows)
        self._merge(list(rows), cache, mask, first)
        self._emit(list(rows), first)

    def _merge(self, rows: list[Row], cache, mask: Tensor, first: Tensor) -> None:
        from transformers import DynamicCache
        if self.cache is None:
            self.rows, self.cache, self.mask, self.next_tokens = rows, cache, mask, first
        else:
            length = max(self.mask.shape[1], mask.shape[1])
            layers = []
            for old, new in zip(self.cache.layers, cache.layers):
                layers.append((torch.cat([_left_pad(old.keys, length, 2), _left_pad(new.keys, length, 2)]),
                               torch.cat([_left_pad(old.values, length, 2), _left_pad(new.values, length, 2)])))
            self.cache = DynamicCache(layers)
            self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(mask, length, 1)])
            self.rows = self.rows + rows
            self.next_tokens = torch.cat([self.next_tokens, first])
        self._factors = None

    @torch.inference_mode()
    def step(self) -> None:
        """Feed every row its last token, sample the next; finished rows leave the batch."""
        self._drop_finished()
        if not self.rows:
            return
        if self._factors is None:
            self._factors = self.runtime.stack([r.adapter for r in self.rows])
        positions = self.mask.sum(-1, keepdim=True)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        with self.runtime.activate(factors=self._factors):
            out = self.model(input_ids=self.next_tokens[:, None], attention_mask=self.mask,
                             position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.next_tokens = self._sample(out.logits[:, -1], self.rows)
        self._emit(self.rows, self.next_tokens)
        self._drop_finished()

    def finish(self, row: Row, reason: str = "cancelled") -> None:
        """Stop a row early (e.g. its client went away); it leaves at the next step."""
        if not row.finished:
            row.finished, row.finish_reason = True, reason

    def _emit(self, rows: Sequence[Row], tokens: Tensor) -> None:
        for row, token in zip(rows, tokens.tolist()):
            if row.finished:
                continue
            if token in self.stop_ids and not row.params.ignore_eos:
                row.finished, row.finish_reason = True, "stop"
            else:
                row.output_ids.append(token)
                row.text = self.tokenizer.decode(row.output_ids, skip_special_tokens=True)
                if row.params.strip_leading:
                    row.text = row.text.lstrip()
                for stop in row.params.stop:
                    cut = row.text.find(stop)
                    if stop and cut >= 0:
                        row.text = row.text[:cut]
                        row.finished, row.finish_reason = True, "stop"
                        break
                if not row.finished and len(row.output_ids) >= row.params.max_new_tokens:
                    row.finished, row.finish_reason = True, "length"
            if self.on_token is not None:
                self.on_token(row, token)

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.finished]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.next_tokens, self._factors = [], None, None, None, None
            return
        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[index]
        self.next_tokens = self.next_tokens[index]
        self.cache.batch_select_indices(index)
        start = int((self.mask.sum(0) > 0).nonzero()[0])  # columns that are padding in every row go
        if start > 0:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        self._factors = None

    def _sample(self, logits: Tensor, rows: Sequence[Row]) -> Tensor:
        logits = _penalised(logits.float(), rows)
        for i, row in enumerate(rows):
            if row.params.lead_space and not row.output_ids:
                logits[i, ~self.runtime.space_led(logits.shape[1])] = float("-inf")
        out = logits.argmax(-1)
        for i, row in enumerate(rows):
            p = row.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / p.temperature, -1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            out[i] = torch.multinomial(probs, 1, generator=row._generator)[0]
        return out


__all__ = ["LoraRuntime", "DecodeBatch", "GenerationParams", "Row", "AdapterError"]
