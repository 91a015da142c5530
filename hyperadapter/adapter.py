"""The Adapter value: per-module LoRA factors, saved and loaded in PEFT's format.

A module's update is `delta_W = scaling * B @ A` with `A [r, in]`, `B [out, r]`, `scaling = alpha / r`.
On disk an adapter is a PEFT folder (`adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.<module path>.lora_A.weight` / `lora_B.weight`), so `peft`, vLLM and LoRAX read what
we write and we read what `peft` trains. Our own metadata rides in the safetensors header.
A document's adapter may also carry `Routes`: one adapter per sentence with the sentence's embedding, so that a
question is answered with the adapter of its nearest sentence (model card, diagnostic 10). They ride in a third
file, `adapter_routes.safetensors`, which `peft`, vLLM and LoRAX ignore: they apply the one adapter. A user's
routes grow by a few messages at a time, so theirs may span several such files, listed in `adapter_routes.json`:
a new adapter hard-links the files its predecessor already wrote instead of writing every route again.
Adapters are never pickled: safetensors only.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from hyperadapter.durable import fsync_path, swap_in_dir

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ROUTES_NAME = "adapter_routes.safetensors"
ROUTES_PARTS = "adapter_routes.json"  # routes in several files: their names, in order, and what each holds
_PART_NAME = re.compile(r"^adapter_routes(\.[1-9][0-9]{0,5})?\.safetensors$")
PEFT_PREFIX = "base_model.model."
MAX_RANK = 256
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


class AdapterError(ValueError):
    """An adapter is malformed, or does not fit the base model it is meant for."""


@dataclass
class Adapter:
    """LoRA factors for a set of linear modules of one base model."""

    weights: dict[str, tuple[Tensor, Tensor]]  # module path -> (A [r, in], B [out, r])
    alpha: float
    base_model: str
    metadata: dict[str, str] = field(default_factory=dict)
    routes: "Routes | None" = None  # a document's sentence adapters, picked per question

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _ in self.weights.values())

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def target_modules(self) -> list[str]:
        return sorted({path.rsplit(".", 1)[-1] for path in self.weights})

    @property
    def nbytes(self) -> int:
        own = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.weights.values())
        return own + (self.routes.nbytes if self.routes is not None else 0)

    def delta_weight(self, module: str) -> Tensor:
        a, b = self.weights[module]
        return self.scaling * (b.float() @ a.float())

    # ---------------------------------------------------------------- validation
    def validate(self, linear_shapes: Mapping[str, tuple[int, int]] | None = None,
                 base_model: str | None = None, max_rank: int = MAX_RANK) -> None:
        """Raise AdapterError naming the first problem: empty, ranks, shapes, modules, NaN/Inf, base model."""
        if not self.weights:
            raise AdapterError("adapter has no LoRA weights")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise AdapterError(f"lora_alpha must be a positive finite number, got {self.alpha}")
        if base_model is not None and self.base_model and self.base_model != base_model:
            raise AdapterError(f"adapter was made for base model {self.base_model!r}, not {base_model!r}")
        for module, (a, b) in self.weights.items():
            if a.dim() != 2 or b.dim() != 2:
                raise AdapterError(f"{module}: lora_A and lora_B must be matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
            r = a.shape[0]
            if not 1 <= r <= max_rank:
                raise AdapterError(f"{module}: rank {r} is outside 1..{max_rank}")
            if b.shape[1] != r:
                raise AdapterError(f"{module}: lora_A has rank {r} but lora_B {tuple(b.shape)} has {b.shape[1]}")
            if linear_shapes is not None:
                if module not in linear_shapes:
                    raise AdapterError(f"{module}: no such linear module in the base model")
                fan_in, fan_out = linear_shapes[module]
                if a.shape[1] != fan_in or b.shape[0] != fan_out:
                    raise AdapterError(
                        f"{module}: shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the base's "
                        f"{fan_in} -> {fan_out} (expected A [r, {fan_in}], B [{fan_out}, r])")
                if r > min(fan_in, fan_out):
                    raise AdapterError(f"{module}: rank {r} exceeds min(in, out) = {min(fan_in, fan_out)}")
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise AdapterError(f"{module}: weights contain NaN or Inf")

    # ---------------------------------------------------------------- PEFT format
    def peft_config(self) -> dict:
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "rank_pattern": {},
            "alpha_pattern": {},
            "modules_to_save": None,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a PEFT folder atomically: a temp folder renamed into place (an old one is replaced)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        if len({a.shape[0] for a, _ in self.weights.values()}) > 1:
            raise AdapterError("adapters with mixed ranks cannot be saved; pad or compress them first")
        tensors: dict[str, Tensor] = {}
        for module, (a, b) in sorted(self.weights.items()):
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.detach().contiguous().cpu()
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.detach().contiguous().cpu()
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            save_file(tensors, tmp / WEIGHTS_NAME,
                      metadata={"format": "pt", "hyperadapter": json.dumps(self.metadata, sort_keys=True)})
            (tmp / CONFIG_NAME).write_text(json.dumps(self.peft_config(), indent=2))
            if self.routes is not None:
                self.routes.save(tmp)
            for f in tmp.iterdir():
                fsync_path(f)
            swap_in_dir(tmp, directory)
            fsync_path(directory.parent)  # the rename itself is durable only once the folder is synced
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Adapter":
        """Read a PEFT LoRA folder (ours or one `peft` trained). Per-module rank/alpha patterns and
        rsLoRA scaling are folded into B so that one global `alpha / r` holds for every module."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise AdapterError(f"{directory} is not a PEFT adapter folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{config_path}: not valid JSON ({exc})") from exc
        if config.get("peft_type", "LORA") != "LORA":
            raise AdapterError(f"{directory}: peft_type {config.get('peft_type')!r} is not LORA")
        if config.get("use_dora"):
            raise AdapterError(f"{directory}: DoRA adapters are not supported")
        if config.get("fan_in_fan_out"):
            raise AdapterError(f"{directory}: fan_in_fan_out (Conv1D) adapters are not supported")
        if config.get("bias", "none") != "none":
            raise AdapterError(f"{directory}: LoRA bias={config['bias']!r} is not supported")
        try:
            tensors = load_file(weights_path)
            with safe_open(weights_path, "pt") as f:
                header = f.metadata() or {}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise AdapterError(f"{weights_path}: cannot read safetensors ({exc})") from exc
        metadata = json.loads(header.get("hyperadapter", "{}"))

        parts: dict[str, dict[str, Tensor]] = {}
        for key, tensor in tensors.items():
            m = _KEY.match(key)
            if m is None:
                raise AdapterError(f"{weights_path}: unsupported tensor {key!r} (only LoRA A/B of linear modules)")
            parts.setdefault(m["module"], {})[m["ab"]] = tensor
        r0 = int(config.get("r", 8))
        alpha0 = float(config.get("lora_alpha", r0))
        rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        rslora = bool(config.get("use_rslora"))
        scaled: dict[str, tuple[Tensor, Tensor, float]] = {}
        for module, ab in parts.items():
            if set(ab) != {"A", "B"}:
                raise AdapterError(f"{module}: needs both lora_A and lora_B")
            r_declared = _pattern_value(rank_pattern, module, r0)
            alpha = _pattern_value(alpha_pattern, module, alpha0)
            scaled[module] = (ab["A"], ab["B"], alpha / math.sqrt(r_declared) if rslora else alpha / r_declared)
        rank = max((a.shape[0] for a, _, _ in scaled.values()), default=r0)
        weights: dict[str, tuple[Tensor, Tensor]] = {}
        for module, (a, b, scale) in scaled.items():
            if a.dim() == 2 and b.dim() == 2 and a.shape[0] < rank:  # mixed ranks: zero-pad to the largest
                a = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])])
                b = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1)
            # our scaling is alpha0 / rank for every module; fold any difference into B (same update)
            factor = scale / (alpha0 / rank)
            weights[module] = (a, b if factor == 1.0 else b * factor)
        base_model = config.get("base_model_name_or_path") or ""
        routes = Routes.load_folder(directory, base_model)
        return cls(weights=weights, alpha=alpha0, base_model=base_model, metadata=metadata, routes=routes)

    def as_saved(self, directory: str | os.PathLike) -> "Adapter":
        """This adapter as `Adapter.load(directory)` gives it back after `save(directory)`, without reading it:
        the same tensors, the header's metadata, its routes' files those in `directory` (read from their
        headers alone). A user's 128 routes take ~50 ms to load; the store keeps what it has just written."""
        routes = self.routes
        if routes is not None:
            routes = Routes([Adapter(a.weights, a.alpha, self.base_model) for a in routes.adapters],
                            routes.vectors.float(), routes.words, Routes.files_in(Path(directory)))
        return Adapter(self.weights, self.alpha, self.base_model, json.loads(json.dumps(self.metadata)), routes)

    # ---------------------------------------------------------------- arithmetic
    @staticmethod
    def combine(parts: Iterable[tuple["Adapter", float]], rank: int | None = None,
                metadata: dict[str, str] | None = None) -> "Adapter":
        """The weighted sum of adapters' updates, as one adapter (ranks concatenated, so exact);
        with `rank`, compressed to that rank by a truncated SVD of each module's update."""
        parts = list(parts)
        if not parts:
            raise AdapterError("combine needs at least one adapter")
        base_model = parts[0][0].base_model
        modules = sorted({m for adapter, _ in parts for m in adapter.weights})
        total_rank = sum(adapter.rank for adapter, _ in parts)
        weights: dict[str, tuple[Tensor, Tensor]] = {}
        for module in modules:
            a_blocks, b_blocks = [], []
            for adapter, w in parts:
                if module in adapter.weights:
                    a, b = adapter.weights[module]
                    a_blocks.append(a.float())
                    b_blocks.append(b.float() * (w * adapter.scaling))
            a_cat, b_cat = torch.cat(a_blocks), torch.cat(b_blocks, dim=1)  # scaling folded into B
            if a_cat.shape[0] < total_rank:
                pad = total_rank - a_cat.shape[0]
                a_cat = torch.cat([a_cat, a_cat.new_zeros(pad, a_cat.shape[1])])
                b_cat = torch.cat([b_cat, b_cat.new_zeros(b_cat.shape[0], pad)], dim=1)
            weights[module] = (a_cat, b_cat)
        combined = Adapter(weights, alpha=float(total_rank), base_model=base_model, metadata=metadata or {})
        return combined.compressed(rank) if rank is not None and rank < total_rank else combined

    def compressed(self, rank: int) -> "Adapter":
        """Best rank-`rank` approximation of every module's update (QR of both factors, SVD of the core)."""
        return Adapter.compress_all([self], rank)[0]

    @staticmethod
    def compress_all(adapters: list["Adapter"], rank: int, dtype: torch.dtype = torch.float32) -> list["Adapter"]:
        """`compressed(rank)` of each of `adapters` (the same modules and shapes), batched over all modules of one
        shape in all of them (best_rank)."""
        modules = list(adapters[0].weights)
        by_shape: dict[tuple, list[str]] = {}
        for module in modules:
            a, b = adapters[0].weights[module]
            by_shape.setdefault((tuple(a.shape), tuple(b.shape)), []).append(module)
        weights: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in adapters]
        scalings = torch.tensor([ad.scaling for ad in adapters])
        for group in by_shape.values():  # rows: adapter-major, then the group's modules
            a = torch.stack([ad.weights[m][0] for ad in adapters for m in group]).float()  # [n, r, in]
            b = torch.stack([ad.weights[m][1] for ad in adapters for m in group]).float()  # [n, out, r]
            a_new, b_new = best_rank(a, b * scalings.repeat_interleave(len(group))[:, None, None], rank)
            a_new, b_new = a_new.to(dtype), b_new.to(dtype)
            for row, (i, m) in enumerate((i, m) for i in range(len(adapters)) for m in group):
                weights[i][m] = (a_new[row], b_new[row])
        return [Adapter({m: w[m] for m in modules}, alpha=float(rank), base_model=ad.base_model,
                        metadata=dict(ad.metadata)) for w, ad in zip(weights, adapters)]

    def to(self, dtype: torch.dtype) -> "Adapter":
        return Adapter({m: (a.to(dtype), b.to(dtype)) for m, (a, b) in self.weights.items()},
                       self.alpha, self.base_model, dict(self.metadata), self.routes)


@dataclass(frozen=True)
class RoutesFile:
    """A routes file already on disk whose routes from the `skip`-th on (`count` of them) are some of a Routes'
    routes: a new adapter folder can hard-link it rather than write them again. `path` None: not on disk yet."""

    path: Path | None
    skip: int
    count: int


@dataclass
class Routes:
    """A document's sentence adapters (one per sentence, or per group of sentences), each with its sentence's
    unit embedding. A question is answered with the adapter of the sentence nearest to it; they are picked,
    never added (summed or averaged they are no better than the document's one adapter, diagnostic 8)."""

    adapters: list[Adapter]  # the same modules, rank and alpha
    vectors: Tensor  # [adapters, dim]: each sentence's unit embedding
    # per adapter, its sentence's content-word keys (int64, generator.routed.word_keys): the words, not the text;
    # None in routes made before words were kept, which route by the cosine alone
    words: list[Tensor] | None = None
    # the files on disk that hold the first routes, in order (set by load_folder, kept by joined): save links them
    files: list[RoutesFile] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self):
        if not self.adapters or self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.adapters):
            raise AdapterError(f"routes need one sentence vector per adapter, got {len(self.adapters)} adapters "
                               f"and vectors of shape {tuple(self.vectors.shape)}")
        if self.words is not None and len(self.words) != len(self.adapters):
            raise AdapterError(f"routes need one set of word keys per adapter, got {len(self.words)} for "
                               f"{len(self.adapters)} adapters")
        if sum(f.count for f in self.files) > len(self.adapters):
            raise AdapterError(f"routes files hold {sum(f.count for f in self.files)} routes, more than the "
                               f"{len(self.adapters)} routes")

    @property
    def nbytes(self) -> int:
        words = sum(w.numel() * w.element_size() for w in self.words or [])
        return sum(a.nbytes for a in self.adapters) + self.vectors.numel() * self.vectors.element_size() + words

    def nearest(self, question: Tensor, keys: Tensor | None = None, words: float = 0.0) -> tuple[int, float]:
        """(index, cosine) of the sentence nearest to a question's unit embedding: by the cosine alone, or, with
        the question's word `keys` and a weight `words`, by z(cosine) + words * z(shared words) (z: standardised
        over the document's sentences; routes that kept no words go by the cosine)."""
        if question.shape != self.vectors.shape[1:]:
            raise AdapterError(f"a question embedding of shape {tuple(question.shape)} cannot be routed among "
                               f"sentence vectors of dimension {self.vectors.shape[1]}")
        cosines = self.vectors @ question.to(self.vectors.dtype)
        score = cosines
        if words and keys is not None and self.words is not None:
            score = _standardised(cosines) + words * _standardised(self.shared_words(keys))
        best = int(score.argmax())
        return best, float(cosines[best])

    def shared_words(self, keys: Tensor) -> Tensor:
        """[routes]: per sentence, the question's word `keys` it holds, each weighted by log(1 + sentences /
        sentences holding it), so that a word every sentence has counts for little."""
        holds = torch.stack([torch.isin(keys, w) for w in self.words]).float()  # [routes, question words]
        return holds @ torch.log1p(len(self.words) / holds.sum(0).clamp(min=1))

    @staticmethod
    def joined(old: "Routes", new: "Routes", keep: int) -> "Routes":
        """old's routes then new's, the most recent `keep` of them. The files that hold old's routes stay
        listed (the dropped routes skipped), so a new adapter links them and writes only new's routes. A
        file stays until all its routes are dropped: a folder may hold up to one file's worth of them."""
        adapters = old.adapters + new.adapters
        drop = max(0, len(adapters) - keep)
        files, left = [], drop
        for f in old.files:
            if left >= f.count:
                left -= f.count
                continue
            files.append(RoutesFile(f.path, f.skip + left, f.count - left))
            left = 0
        words = None if old.words is None or new.words is None else (old.words + new.words)[drop:]
        return Routes(adapters[drop:], torch.cat([old.vectors, new.vectors])[drop:], words, files)

    def save(self, directory: Path) -> None:
        """Write the routes into an adapter folder: one file, or, where some are on disk already (`files`),
        those files hard-linked (written again only where a link cannot be made) and the rest in a new file,
        with `adapter_routes.json` listing the files in order. The newest files are merged while the one
        before is no larger (a binary counter): a user's routes stay in a few files, and each route is
        written about log2(routes) times over its life instead of once per update."""
        parts = self._parts()
        if len(parts) == 1 and parts[0].path is None:
            self._write(directory / ROUTES_NAME, 0, len(self.adapters))
            return
        listed, start = [], 0
        for i, part in enumerate(parts):
            name = ROUTES_NAME if i == 0 else f"adapter_routes.{i}.safetensors"
            if part.path is not None and _hard_link(part.path, directory / name):
                listed.append({"file": name, "skip": part.skip, "count": part.count})
            else:
                self._write(directory / name, start, start + part.count)
                listed.append({"file": name, "skip": 0, "count": part.count})
            start += part.count
        (directory / ROUTES_PARTS).write_text(json.dumps({"parts": listed}))

    def _parts(self) -> list[RoutesFile]:
        parts = list(self.files)
        covered = sum(f.count for f in parts)
        if covered < len(self.adapters):
            parts.append(RoutesFile(None, 0, len(self.adapters) - covered))
        while len(parts) > 1 and parts[-2].count <= parts[-1].count:
            last = parts.pop()
            parts[-1] = RoutesFile(None, 0, parts[-1].count + last.count)
        return parts

    def _write(self, path: Path, start: int, stop: int) -> None:
        """One safetensors file of routes [start, stop): per module the adapters' factors stacked
        ([adapters, r, in] and [adapters, out, r]), then the vectors and word keys; alpha in the header."""
        adapters = self.adapters[start:stop]
        first = adapters[0]
        tensors = {f"{module}.lora_{ab}": torch.stack([a.weights[module][i] for a in adapters]).contiguous()
                   for module in sorted(first.weights) for i, ab in enumerate("AB")}
        tensors["vectors"] = self.vectors[start:stop].float().contiguous()
        if self.words is not None:  # ragged: all keys in one tensor, and how many each route has
            words = self.words[start:stop]
            tensors["words"] = torch.cat(words).to(torch.int64).contiguous()
            tensors["word_counts"] = torch.tensor([len(w) for w in words], dtype=torch.int64)
        save_file(tensors, path, metadata={"format": "pt", "lora_alpha": str(first.alpha)})

    @staticmethod
    def count(directory: str | os.PathLike) -> int:
        """How many routes an adapter folder holds (0 without routes), read from the files' headers alone."""
        return sum(part["count"] for part in _listed_parts(Path(directory)))

    @staticmethod
    def files_in(directory: Path) -> list[RoutesFile]:
        """The routes files of an adapter folder, in order, as a Routes loaded from it lists them."""
        return [RoutesFile(directory / p["file"], p["skip"], p["count"]) for p in _listed_parts(directory)]

    @classmethod
    def load_folder(cls, directory: Path, base_model: str) -> "Routes | None":
        """The routes an adapter folder holds (None without), whether in one file or listed in several."""
        loaded, files = [], []
        for part in _listed_parts(directory, read_headers=False):  # each file is read whole just below
            path = directory / part["file"]
            routes = cls.load(path, base_model)
            skip, held = part["skip"], len(routes.adapters)
            count = held - skip if part["count"] is None else part["count"]
            if skip + count != held:
                raise AdapterError(f"{directory / ROUTES_PARTS}: {part['file']} is listed with {skip + count} "
                                   f"routes but holds {held}")
            loaded.append(Routes(routes.adapters[skip:], routes.vectors[skip:],
                                 None if routes.words is None else routes.words[skip:]))
            files.append(RoutesFile(path, skip, count))
        if not loaded:
            return None
        first = loaded[0].adapters[0]
        if any((r.adapters[0].rank, r.adapters[0].alpha, r.vectors.shape[1]) !=
               (first.rank, first.alpha, loaded[0].vectors.shape[1]) for r in loaded):
            raise AdapterError(f"{directory}: routes files of different ranks, alphas or vector sizes")
        words = None if any(r.words is None for r in loaded) else [w for r in loaded for w in r.words]
        return cls([a for r in loaded for a in r.adapters], torch.cat([r.vectors for r in loaded]), words, files)

    @classmethod
    def load(cls, path: Path, base_model: str) -> "Routes":
        """One routes file."""
        try:
            with safe_open(path, "pt") as f:  # one read: the header's alpha and the tensors
                alpha = float((f.metadata() or {})["lora_alpha"])
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise AdapterError(f"{path}: cannot read sentence routes ({exc})") from exc
        vectors = tensors.pop("vectors", None)
        if vectors is None:
            raise AdapterError(f"{path}: no sentence vectors")
        words, counts = tensors.pop("words", None), tensors.pop("word_counts", None)
        if (words is None) != (counts is None) or counts is not None and (
                counts.dim() != 1 or counts.shape[0] != vectors.shape[0] or int(counts.sum()) != words.numel()
                or bool((counts < 0).any())):
            raise AdapterError(f"{path}: word keys that do not match its {vectors.shape[0]} routes")
        stacked: dict[str, dict[str, Tensor]] = {}
        for key, tensor in tensors.items():
            module, _, ab = key.rpartition(".lora_")
            if ab not in ("A", "B") or tensor.dim() != 3 or tensor.shape[0] != vectors.shape[0]:
                raise AdapterError(f"{path}: unexpected tensor {key!r} of shape {tuple(tensor.shape)}")
            stacked.setdefault(module, {})[ab] = tensor
        if not stacked or any(set(ab) != {"A", "B"} for ab in stacked.values()):
            raise AdapterError(f"{path}: every module needs both lora_A and lora_B")
        adapters = [Adapter({m: (ab["A"][i], ab["B"][i]) for m, ab in stacked.items()}, alpha, base_model)
                    for i in range(vectors.shape[0])]
        return cls(adapters, vectors, None if words is None else list(words.split(counts.tolist())))


def _listed_parts(directory: Path, read_headers: bool = True) -> list[dict]:
    """An adapter folder's routes files in order, each {"file", "skip", "count"}, checked against the files'
    headers: [] without routes; AdapterError for a list that names other files, or counts they do not hold.
    Without `read_headers` (the caller reads the files itself) the counts are as listed: None for a lone file."""
    listing = directory / ROUTES_PARTS
    if not listing.is_file():
        parts = [{"file": ROUTES_NAME, "skip": 0, "count": None}] if (directory / ROUTES_NAME).is_file() else []
    else:
        try:
            parts = json.loads(listing.read_text())["parts"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterError(f"{listing}: not a list of routes files ({exc})") from exc
        if not isinstance(parts, list) or not parts or not all(
                isinstance(p, dict) and isinstance(p.get("file"), str) and _PART_NAME.match(p["file"])
                and type(p.get("skip")) is int and type(p.get("count")) is int and p["skip"] >= 0 and p["count"] >= 1
                for p in parts):
            raise AdapterError(f"{listing}: parts must be a list of {{file: adapter_routes[.N].safetensors, "
                               f"skip: >= 0, count: >= 1}}")
    for part in parts if read_headers else ():
        path = directory / part["file"]
        try:
            with safe_open(path, "pt") as f:
                held = f.get_slice("vectors").get_shape()[0]
        except Exception as exc:  # missing or damaged
            raise AdapterError(f"{path}: cannot read sentence routes ({exc})") from exc
        if part["count"] is None:
            part["count"] = held
        elif part["skip"] + part["count"] != held:
            raise AdapterError(f"{listing}: {part['file']} is listed with {part['skip'] + part['count']} routes "
                               f"but holds {held}")
    return parts


def _hard_link(source: Path, target: Path) -> bool:
    """Link `source` as `target`; False where it cannot be (deleted meanwhile, on another file system)."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def best_rank(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-`rank` approximation of each update b @ a (a [n, r, in], b [n, out, r], float32, any scaling
    folded into b) as factors (a' [n, rank, in], b' [n, out, rank]) with b' @ a' that approximation (alpha = rank
    gives it scaling 1)."""
    return _best_rank_one(a, b) if rank == 1 else _best_rank_by_cores(a, b, rank)


def _best_rank_by_cores(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """best_rank through r x r cores: with the eigendecompositions B^T B = Vb Lb Vb^T and A A^T = Va La Va^T,
    B A = (B Vb Lb^-1/2) (Lb^1/2 Vb^T Va La^1/2) (La^-1/2 Va^T A), whose outer factors have orthonormal columns and
    rows; the SVD of the middle r x r core gives the best approximation. Only r x r decompositions and thin
    matmuls (QR of the tall factors took twice as long). Directions whose eigenvalue is below 1e-6 of the largest
    carry nothing of the update and are dropped."""
    (lb, vb), (la, va) = torch.linalg.eigh(b.mT @ b), torch.linalg.eigh(a @ a.mT)
    root_b, inv_b = _roots(lb)
    root_a, inv_a = _roots(la)
    core = (root_b[:, :, None] * vb.mT) @ (va * root_a[:, None, :])
    u, s, vh = torch.linalg.svd(core)
    k = min(rank, s.shape[-1])
    root = s[:, :k].sqrt()
    b_new = b.new_zeros(b.shape[0], b.shape[1], rank)
    a_new = a.new_zeros(a.shape[0], rank, a.shape[2])
    b_new[:, :, :k] = b @ (vb @ (inv_b[:, :, None] * u[:, :, :k] * root[:, None, :]))
    a_new[:, :k] = ((root[:, :, None] * vh[:, :k] * inv_a[:, None, :]) @ va.mT) @ a
    return a_new, b_new


def _best_rank_one(a: Tensor, b: Tensor, iterations: int = 30, tolerance: float = 1e-5) -> tuple[Tensor, Tensor]:
    """best_rank at rank 1 by power iteration on r x r matrices: batched small eigh and SVD calls were most of
    the time a document's 84 sentence routes took to make. For M = B A, the top eigenvector x of (A A^T)(B^T B)
    gives M's top left singular vector u = B x / |B x|, and the rank-1 update u (M^T u)^T. The generator's
    updates have one direction (model card, diagnostic 11), so a few steps converge; updates whose x has not
    converged after `iterations` (two top singular values close) go through the cores instead."""
    k = (a @ a.mT) @ (b.mT @ b)  # [n, r, r]
    x = k.sum(-1, keepdim=True)  # k @ ones: a start not orthogonal to the top eigenvector but by accident
    tiny = torch.finfo(a.dtype).tiny
    for _ in range(iterations):
        x = k @ x
        x = x / x.norm(dim=1, keepdim=True).clamp(min=tiny)
    kx = k @ x
    residual = (kx - (x.mT @ kx) * x).norm(dim=1)[:, 0]  # 0 for an eigenvector
    unsettled = residual > tolerance * kx.norm(dim=1)[:, 0]
    u = b @ x  # [n, out, 1]
    u = u / u.norm(dim=1, keepdim=True).clamp(min=tiny)
    w = (u.mT @ b) @ a  # [n, 1, in]: (M^T u)^T
    root = w.norm(dim=-1, keepdim=True).sqrt()  # sqrt of the singular value: split between the factors
    a_new, b_new = w / root.clamp(min=tiny), u * root
    if unsettled.any():
        a_new[unsettled], b_new[unsettled] = _best_rank_by_cores(a[unsettled], b[unsettled], 1)
    return a_new, b_new


def _standardised(x: Tensor) -> Tensor:
    return (x - x.mean()) / (x.std() + 1e-6) if len(x) > 1 else x * 0


def _roots(eigenvalues: Tensor, floor: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(sqrt, 1 / sqrt) of a Gram matrix's eigenvalues, both 0 where one is below `floor` x the largest."""
    kept = eigenvalues > floor * eigenvalues.amax(-1, keepdim=True).clamp(min=torch.finfo(eigenvalues.dtype).tiny)
    root = eigenvalues.clamp(min=0).sqrt() * kept
    return root, torch.where(kept, 1 / root.clamp(min=torch.finfo(root.dtype).tiny), torch.zeros_like(root))


def _pattern_value(pattern: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's rank/alpha patterns match a key as a suffix (or regex) of the module path."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return float(value)
    return float(default)
