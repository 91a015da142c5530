"""Settings: one dataclass, read from a TOML file, then overridden by HYPERADAPTER_* variables.

Precedence (last wins): defaults < config file < environment. Nested tables map to
`section_key` names, e.g. `[cache] threshold_task = 0.95` or `HYPERADAPTER_CACHE_THRESHOLD_TASK=0.95`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GENERATOR = REPO_ROOT / "checkpoints" / "smollm2-135m-generator"
ENV_PREFIX = "HYPERADAPTER_"


def default_data_root() -> Path:
    return Path(os.environ.get("HYPERADAPTER_DATA_ROOT", "~/.cache/hyperadapter")).expanduser()


@dataclass
class Settings:
    data_root: Path = field(default_factory=default_data_root)
    # "default" is the packaged SmolLM2-135M-Instruct; otherwise a local folder or a name in the local HF cache.
    base_model: str = "default"
    generator: str = str(DEFAULT_GENERATOR)
    torch_threads: int = 0  # 0: torch's own choice

    # adapter cache (retrieval)
    cache_index: str = "Flat"  # a FAISS factory string, e.g. "HNSW32"
    cache_threshold_task: float = 0.97
    cache_threshold_demonstrations: float = 0.98
    cache_threshold_document: float = 0.985
    cache_threshold_conversation: float = 1.01  # > 1: personal adapters are only reused on an exact match
    cache_max_adapters: int = 100_000
    cache_max_bytes: int = 20 * 2**30
    cache_blend_k: int = 0  # > 0: on a near miss, blend the top-k neighbours instead of generating

    # documents: beside a document's adapter, one per sentence (at most document_max_routes, sentences grouped
    # past that: an adapter holds two sentences less well than one), each compressed to document_route_rank; a
    # request is answered with the adapter of the sentence nearest to its question (hyperadapter.generator.routed;
    # model card, diagnostic 10). Rank 1 scores as rank 8 (the generator's updates are rank 1 in all but name)
    # in an eighth of the bytes: 0.24 MB a sentence. route_words: how much the question's words shared
    # with a sentence (or a chat's message) weigh beside the cosine (Routes.nearest; 0: the cosine alone). 3.0 was
    # chosen on training-split questions (diagnostics/lexical_router.py): validation F1 +0.4 +- 0.3 on 256 fresh
    # paragraphs, the answer's sentence found for 81.9% of questions against 74.7%; chats' recall +2.6 +- 2.3.
    document_routes: bool = True
    document_route_rank: int = 1
    document_max_routes: int = 128
    route_words: float = 3.0
    document_route_clauses: int = 0  # > 0: a sentence of more words is routed as its clauses (routed.clauses)
    # chats: beside a user's adapter, one route per message of the user's (the most recent
    # conversation_max_routes; 0: none), each at conversation_route_rank (0: as generated), routed like a
    # document's (api.users; model card, diagnostic 13: test recall 56.8 against 32.3 for the chat's one adapter)
    conversation_max_routes: int = 128
    conversation_route_rank: int = 1

    # api
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: str = ""  # "key1:tenant1,key2:tenant2"; empty means no auth, loopback only
    max_request_bytes: int = 2 * 2**20
    max_context_chars: int = 200_000
    max_batch_size: int = 16
    max_queue: int = 64
    request_timeout_s: float = 300.0
    max_new_tokens_limit: int = 1024
    threads: int = 32

    @property
    def store_dir(self) -> Path:
        return self.data_root / "store"

    @property
    def models_dir(self) -> Path:
        return self.data_root / "models"

    @property
    def prepared_data_dir(self) -> Path:
        return self.data_root / "data"

    def __post_init__(self):
        if self.document_route_rank < 1:
            raise ValueError(f"setting document_route_rank must be at least 1, got {self.document_route_rank}")
        if self.document_max_routes < 2:
            raise ValueError(f"setting document_max_routes must be at least 2, got {self.document_max_routes}")
        if self.conversation_max_routes < 0 or self.conversation_route_rank < 0:
            raise ValueError("settings conversation_max_routes and conversation_route_rank must be 0 or more, got "
                             f"{self.conversation_max_routes} and {self.conversation_route_rank}")
        if self.document_route_clauses < 0:
            raise ValueError(f"setting document_route_clauses must be 0 or more, got {self.document_route_clauses}")
        if not 0 <= self.route_words < math.inf:
            raise ValueError(f"setting route_words must be a finite number at least 0, got "
                             f"{self.route_words}")

    def cache_threshold(self, kind: str) -> float:
        return float(getattr(self, f"cache_threshold_{kind}"))

    def api_key_tenants(self) -> dict[str, str]:
        """Parse `api_keys` ("key:tenant,...") into {key: tenant}."""
        out: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in self.api_keys.split(","))):
            key, _, tenant = item.partition(":")
            if not key or not tenant:
                raise ValueError(f"api_keys entry {item!r} is not of the form key:tenant")
            out[key] = tenant
        return out


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def _coerce(field_type: Any, raw: Any, name: str) -> Any:
    kind = field_type if isinstance(field_type, type) else {"Path": Path, "int": int, "float": float,
                                                             "str": str, "bool": bool}.get(str(field_type))
    try:
        if kind is bool and isinstance(raw, str):
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if kind is Path:
            return Path(str(raw)).expanduser()
        return kind(raw) if kind else raw
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {name}: cannot read {raw!r} as {getattr(kind, '__name__', kind)}") from exc


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file (if any), then HYPERADAPTER_* variables, then keyword overrides."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        for name, raw in _flatten(tomllib.loads(p.read_text())).items():
            if name not in fields:
                raise ValueError(f"config file {p}: unknown setting {name!r}")
            values[name] = raw
    for name in fields:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name, raw in list(values.items()):
        if name not in fields:
            raise ValueError(f"unknown setting {name!r}")
        values[name] = _coerce(fields[name].type, raw, name)
    return Settings(**values)
