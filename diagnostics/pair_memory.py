"""Demonstrations read pair by pair: a LoRA written straight from each shown input's state and its output's word.

Why: diagnostics 1-5 (configs/diagnostic_category_symbols*.toml) found that the trained generator, which pools
a context's token features, does not tell a demonstration set from its twin (the same inputs and outputs,
assigned the other way round). This builds, with no training, the adapter a reader that keeps pairs apart
could write, to see whether a LoRA of this shape can carry a demonstrated mapping at all:
  - key of a pair: the base's down_proj input at the answer position of its input, prompted as a query is
    (data.prompts.query_prompt), in each layer of `--layers`; less the mean over a few fixed everyday prompts,
    less the set's mean (with two or more outputs), and orthogonal to the everyday mean (so that no slot
    fires on every position alike);
  - value: the input embedding of its output's first token (the LM head is tied to it), less the outputs' mean;
  - one rank slot per distinct output: A = its pairs' keys summed, over the keys' mean square norm;
    B = its unit value x gain / number of layers. More than eight outputs: the best rank-8 approximation
    (Adapter.compressed).
Sets whose outputs all differ (free text, nothing repeats) get no adapter: there is no label set to recall.
  python diagnostics/pair_memory.py --config configs/eval_diagnostic_category_pairs.toml \\
      --out results/diagnostic-category-pairs-pair-memory [--layers 18:28] [--gain 200] [--generator DIR]
It writes results as `hyperadapter eval` does (for `hyperadapter compare`): "pair memory", with a wrong task's
set, and with the twin set (two-output sets only: its outputs swapped; a reader that binds answers every query
the other way). `--generator DIR`: the pair memory's slots added to that generator's adapters (Adapter.combine).
`--keys-in-context`: each key read where the set is read whole, in one pass (at the end of the pair's "Output:"),
as a trained reader would see it, instead of from its input asked again as a query.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.adapter import Adapter  # noqa: E402
from hyperadapter.base import Base, load_base  # noqa: E402
from hyperadapter.config import Settings  # noqa: E402
from hyperadapter.data.builders import format_demonstrations  # noqa: E402
from hyperadapter.data.prompts import query_prompt  # noqa: E402
from hyperadapter.data.relabel import remap_outputs  # noqa: E402
from hyperadapter.data.schema import Query  # noqa: E402
from hyperadapter.evaluation import report  # noqa: E402
from hyperadapter.evaluation.harness import Harness, load_eval_config  # noqa: E402
from hyperadapter.evaluation.systems import AdapterSystem  # noqa: E402
from hyperadapter.packed import cpu_autocast  # noqa: E402
from hyperadapter.runtime import LoraRuntime  # noqa: E402

PAIR = re.compile(r"Input: (.*?)\nOutput: (.*?)(?=\n\nInput: |\Z)", re.S)
MAX_RANK = 8
EVERYDAY = ["The weather is nice today.", "What is the capital of France?", "Tell me a story about a dog.",
            "How do I cook rice?", "2 + 2 = ?", "Translate 'hello' into Spanish.",
            "Is this review positive? Great film.",
            "Summarise: the meeting moved to Tuesday.", "Who wrote Hamlet?", "apple", "The stock market fell by 3%.",
            "Why is the sky blue?", "I love this product!", "Name a colour.", "Is 7 a prime number?", "car"]


def pairs(context: str) -> list[tuple[str, str]]:
    return [(i.strip(), o.strip()) for i, o in PAIR.findall(context)]


def twin(context: str) -> str:
    """The same set with its two outputs swapped (unchanged unless it has exactly two)."""
    outputs = sorted({o for _, o in pairs(context)})
    if len(outputs) != 2:
        return context
    return remap_outputs(context, dict(zip(outputs, reversed(outputs))))


class PairMemory:
    """`in_context`: each pair's key read where the set itself is read whole (at the end of its "Output:"),
    one pass over the context as the generator reads it, instead of from its input re-prompted as a query."""

    def __init__(self, base: Base, layers: list[int], gain: float, in_context: bool = False):
        self.base, self.layers, self.gain, self.in_context = base, layers, gain, in_context
        everyday = (self.context_keys(format_demonstrations([Query(e, ["x"]) for e in EVERYDAY])) if in_context
                    else self.query_keys(EVERYDAY))
        self.everyday = {layer: k.mean(0) for layer, k in everyday.items()}

    @torch.no_grad()
    def states(self, texts: list[str], positions) -> dict[int, torch.Tensor]:
        """Per layer, down_proj's inputs at `positions(text, encoding)` (an index or a list) of each text, stacked."""
        got: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        blocks = self.base.model.model.layers
        at: list = []  # the positions of the text being read

        def read(module, args, layer: int) -> None:
            got[layer].append(args[0][0, at[0]].float().reshape(-1, args[0].shape[-1]))
        hooks = [blocks[layer].mlp.down_proj.register_forward_pre_hook(
            lambda module, args, layer=layer: read(module, args, layer)) for layer in self.layers]
        try:
            for text in texts:  # one at a time: no padding to keep off the positions read
                enc = self.base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                at[:] = [positions(text, enc)]
                with cpu_autocast():
                    self.base.model.model(input_ids=torch.tensor([enc["input_ids"]]), use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        return {layer: torch.cat(k) for layer, k in got.items()}

    def query_keys(self, inputs: list[str]) -> dict[int, torch.Tensor]:
        """[len(inputs), intermediate] per layer: each input prompted as a query, at its last position."""
        return self.states([query_prompt(self.base, text) for text in inputs], lambda text, enc: -1)

    def context_keys(self, context: str) -> dict[int, torch.Tensor]:
        """[pairs, intermediate] per layer: the context read whole, at the last token of each "\nOutput:"."""
        def positions(text: str, enc) -> list[int]:
            ends = [m.end() for m in re.finditer(r"\nOutput:", text)]
            return [max(i for i, (_, stop) in enumerate(enc["offset_mapping"]) if stop <= end) for end in ends]
        return self.states([context], positions)

    def centred(self, layer: int, keys: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Keys less the everyday prompts' mean and `shift` (a set's mean, already less the everyday mean),
        orthogonal to the everyday mean, so that no slot fires on every position alike."""
        keys = keys - self.everyday[layer]
        if shift is not None:
            keys = keys - shift
        common = self.everyday[layer] / self.everyday[layer].norm()
        return keys - (keys @ common)[:, None] * common

    def write(self, keys: dict[int, torch.Tensor], targets: list[int], max_rank: int = MAX_RANK) -> Adapter:
        """The down_proj slots that raise token targets[i] where a state resembles keys[layer][i]: one slot per
        distinct target (its keys summed), its value the target's unit input embedding x gain / layers; keys
        centred on their set when there are two or more targets; past `max_rank`, the best rank-`max_rank` fit."""
        outputs = sorted(set(targets))
        values = self.base.model.get_input_embeddings().weight[torch.tensor(outputs)].float()
        if len(outputs) > 1:
            values = values - values.mean(0)
        values = values / values.norm(dim=1, keepdim=True).clamp_min(1e-6)
        weights = {}
        for layer, k in keys.items():
            k = self.centred(layer, k, (k - self.everyday[layer]).mean(0) if len(outputs) > 1 else None)
            a = torch.stack([k[[i for i, t in enumerate(targets) if t == out]].sum(0) for out in outputs])
            a = a / (k.norm(dim=1) ** 2).mean().clamp_min(1e-6)
            weights[f"model.layers.{layer}.mlp.down_proj"] = (a, values.T * (self.gain / len(self.layers)))
        adapter = Adapter(weights, alpha=float(len(outputs)), base_model=self.base.model_id)  # scaling 1
        return adapter.compressed(max_rank) if len(outputs) > max_rank else adapter

    def __call__(self, kind: str, context: str) -> Adapter | None:
        shown = pairs(context)
        tok = self.base.tokenizer
        firsts = [(tok(o, add_special_tokens=False)["input_ids"] or [tok.eos_token_id])[0] for _, o in shown]
        if len(set(firsts)) == len(firsts):
            return None
        keys = self.context_keys(context) if self.in_context else self.query_keys([i for i, _ in shown])
        return self.write(keys, firsts)


def added_to(generator, memory):
    """The generator's adapter with the memory's slots appended to its down_proj factors."""
    def make(kind: str, context: str) -> Adapter:
        adapter, extra = generator.generate_adapter(context, kind), memory(kind, context)
        return adapter if extra is None else Adapter.combine([(adapter, 1.0), (extra, 1.0)])
    return make


def memory_parser(description: str, kind: str) -> argparse.ArgumentParser:
    """The options every memory diagnostic takes (this one's and document_memory.py's)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help=f"an eval config with kinds = [\"{kind}\"]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", default="18:28", help="first:last+1 of the layers whose down_proj is written")
    parser.add_argument("--gain", type=float, default=200.0)
    parser.add_argument("--generator", default=None, help="add the memory's slots to this generator's adapters")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 beside another job on two cores)")
    return parser


def parsed(parser: argparse.ArgumentParser) -> tuple:
    """(args, the eval config, settings, the base model), threads set."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    return args, load_eval_config(args.config), settings, load_base(settings.base_model, settings.models_dir)


def layer_range(spec: str) -> list[int]:
    first, stop = (int(x) for x in spec.split(":"))
    return list(range(first, stop))


def on_generator(directory: str | None, base: Base, memory) -> tuple:
    """`memory` itself, or (with a generator's folder) the generator's adapters with its slots added, and
    whether a generator was used."""
    if not directory:
        return memory, False
    from hyperadapter.embedding import SentenceEncoder
    from hyperadapter.generator import Generator
    return added_to(Generator.from_pretrained(directory, base, SentenceEncoder(), int8=True), memory), True


def run_harness(base: Base, config, settings: Settings, systems: list, out: Path) -> None:
    data_dir = Path(config.data_dir) if config.data_dir else settings.prepared_data_dir
    Harness(base, LoraRuntime(base), config, data_dir).run(systems, on_score=lambda partial: report.write(partial, out))


def main() -> None:
    parser = memory_parser(__doc__.splitlines()[0], "demonstrations")
    parser.add_argument("--keys-in-context", action="store_true",
                        help="read each pair's key inside the set read whole, not from its input asked as a query")
    args, config, settings, base = parsed(parser)
    memory = PairMemory(base, layer_range(args.layers), args.gain, in_context=args.keys_in_context)
    make, generated = on_generator(args.generator, base, memory)
    name = ("generated + pair memory" if generated
            else "pair memory" + (", keys in context" if args.keys_in_context else ""))
    systems = [AdapterSystem(base, make, name=name), AdapterSystem(base, make, name=name, wrong=True),
               AdapterSystem(base, lambda kind, context: make(kind, twin(context)), name=f"{name} (twin set)")]
    run_harness(base, config, settings, systems, args.out)


if __name__ == "__main__":
    main()
