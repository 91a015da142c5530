"""Our PEFT folders load in the real `peft`, and LoRAs trained by `peft` import into our runtime,
both with the same logits (the session base stays untouched: peft works on its own copy)."""

import pytest
import torch

from hyperadapter.adapter import Adapter
from tests.conftest import make_adapter

PROMPTS = ["The capital of France is", "def add(a, b):\n    return"]


@pytest.fixture(scope="module")
def peft_copy(base):
    from transformers import AutoModelForCausalLM
    from hyperadapter.base import resolve_model_path
    from hyperadapter.config import load_settings
    path, _ = resolve_model_path("default", load_settings().models_dir)
    return lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _ours(base, runtime, adapter, prompts):
    enc = base.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad(), runtime.activate(adapter):
        return base.model(**enc).logits, enc["attention_mask"]


def test_peft_loads_our_adapter_with_the_same_logits(base, runtime, peft_copy, tmp_path):
    from peft import PeftModel
    adapter = make_adapter(base, 3, modules=("q_proj", "v_proj", "down_proj"))
    adapter.save(tmp_path / "ours")
    model = PeftModel.from_pretrained(peft_copy(), tmp_path / "ours").eval()
    enc = base.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = model(**enc).logits
    ours, mask = _ours(base, runtime, adapter, PROMPTS)
    with torch.no_grad():
        plain = base.model(**enc).logits
    real = mask.bool()
    assert (ours[real] - plain[real]).abs().max() > 1e-2  # the adapter really changes the output
    assert torch.allclose(ours[real], theirs[real], atol=2e-4, rtol=1e-4)


def test_lora_trained_by_peft_imports_with_the_same_logits(base, runtime, peft_copy, tmp_path):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model = get_peft_model(peft_copy(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                                   lora_dropout=0.0, task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = base.tokenizer(["Paris is the capital of France."] * 2, return_tensors="pt")
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path / "peft")
    imported = Adapter.load(tmp_path / "peft")
    assert imported.rank == 4 and imported.target_modules == ["o_proj", "q_proj", "v_proj"]
    imported.base_model = base.model_id  # peft records the local folder it loaded from
    runtime.check(imported)
    enc = base.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = model(**enc).logits
    ours, mask = _ours(base, runtime, imported, PROMPTS)
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=2e-4, rtol=1e-4)


def test_rank_and_alpha_patterns_are_folded_into_the_same_update(base, runtime, peft_copy, tmp_path):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2},
                        alpha_pattern={"q_proj": 32}, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(peft_copy(), config).eval()
    model.save_pretrained(tmp_path / "p")
    imported = Adapter.load(tmp_path / "p")
    enc = base.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = model(**enc).logits
    ours, mask = _ours(base, runtime, imported, PROMPTS)
    assert torch.allclose(ours[mask.bool()], theirs[mask.bool()], atol=3e-4, rtol=1e-4)
