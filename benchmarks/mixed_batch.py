"""Decode throughput with 16 prompts and 16 distinct adapters, measured side by side in one run:

  ours (mixed batch)       one batch, every row its own adapter (runtime hooks, batched matmuls)
  ours, with penalties     the same, each row with the frequency and presence penalties the service
                           gives a generated document's adapter by default (hyperadapter.decoding)
  peft sequential          one request at a time, `set_adapter` before each
  peft mixed batch         one batch with peft's `adapter_names=[...]`
  base alone               the same batch with no adapter (the ceiling)

Every system decodes exactly --tokens new tokens per prompt (EOS ignored), greedy.
Run: .venv/bin/python benchmarks/mixed_batch.py [--prompts 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.adapter import Adapter  # noqa: E402
from hyperadapter.base import format_prompt, load_base, resolve_model_path  # noqa: E402
from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.decoding import PENALTIES  # noqa: E402
from hyperadapter.runtime import GenerationParams, LoraRuntime  # noqa: E402

MODULES = ("q_proj", "v_proj", "down_proj")


def random_adapter(base, seed: int, rank: int = 8) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    weights = {name: (torch.randn(rank, i, generator=g) * 0.02, torch.randn(o, rank, generator=g) * 0.02)
               for name, (i, o) in base.linear_shapes().items() if name.rsplit(".", 1)[-1] in MODULES}
    return Adapter(weights, 16.0, base.model_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    settings = load_settings()
    base = load_base(settings.base_model, settings.models_dir)
    runtime = LoraRuntime(base)
    tok = base.tokenizer
    prompts = [format_prompt(base, f"Tell me something interesting about the number {i}.") for i in range(args.prompts)]
    adapters = [random_adapter(base, i) for i in range(args.prompts)]
    n_tokens = args.prompts * args.tokens
    params = GenerationParams(max_new_tokens=args.tokens, ignore_eos=True)
    results = {}

    runtime.generate(prompts[:2], adapters[:2], GenerationParams(max_new_tokens=4))  # warm-up
    t = time.perf_counter()
    runtime.generate(prompts, adapters, params)
    results["ours (mixed batch)"] = time.perf_counter() - t

    frequency, presence = PENALTIES["document"]
    t = time.perf_counter()
    runtime.generate(prompts, adapters, dataclasses.replace(params, frequency_penalty=frequency,
                                                            presence_penalty=presence))
    results["ours, with penalties (document's)"] = time.perf_counter() - t

    t = time.perf_counter()
    runtime.generate(prompts, None, params)
    results["base alone (batch)"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        for i, a in enumerate(adapters):
            a.save(Path(tmp) / f"a{i}")
        path, _ = resolve_model_path(settings.base_model, settings.models_dir)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                          Path(tmp) / "a0", adapter_name="a0").eval()
        for i in range(1, len(adapters)):
            model.load_adapter(Path(tmp) / f"a{i}", adapter_name=f"a{i}")
    gen = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        t = time.perf_counter()
        for i, p in enumerate(prompts):
            model.set_adapter(f"a{i}")
            model.generate(**tok([p], return_tensors="pt"), **gen)
        results["peft sequential"] = time.perf_counter() - t
        tok.padding_side = "left"
        batch = tok(prompts, return_tensors="pt", padding=True)
        t = time.perf_counter()
        model.generate(**batch, adapter_names=[f"a{i}" for i in range(len(prompts))], **gen)
        results["peft mixed batch (adapter_names)"] = time.perf_counter() - t

    ours = n_tokens / results["ours (mixed batch)"]
    print(f"\n{args.prompts} prompts x {args.tokens} new tokens, {args.prompts} distinct rank-8 adapters "
          f"on {', '.join(MODULES)}; torch threads {torch.get_num_threads()}\n")
    print(f"{'system':36} {'seconds':>8} {'tokens/s':>9} {'ours / this':>12}")
    for name, seconds in results.items():
        rate = n_tokens / seconds
        print(f"{name:36} {seconds:8.2f} {rate:9.1f} {ours / rate:12.2f}")
    seq = n_tokens / results["peft sequential"]
    base_rate = n_tokens / results["base alone (batch)"]
    print(f"\nours vs peft sequential: {ours / seq:.1f}x (goal >= 4x)")
    print(f"ours vs base alone: {100 * (1 - ours / base_rate):+.1f}% slower (goal <= 25%)")


if __name__ == "__main__":
    main()
