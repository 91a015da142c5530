"""The generator: context -> Adapter, in one forward pass of the hypernetwork.

`Generator.generate_adapter(context, kind)` and `generate_many([(kind, context), ...])` make
adapters; `stream(kind)` gives a `ContextStream` that takes a context piece by piece (a user's new
messages) and can produce the adapter at any time, keeping only a fixed-size state: the attention
statistics over all complete chunks, the last incomplete chunk's tokens (< chunk_tokens), and the
running sentence-embedding sum. Appending never re-reads old text, and the adapter after any
sequence of appends equals the one made from all segments at once, up to bf16 rounding: of the token
features (a chunk read alone or beside others in one padded batch rounds differently) and of the
heads' matmuls, which run in bf16 at inference (factors within ~0.3% of float32). A relative
difference of ~4e-3 per factor seen, tested against a bound of 1e-2. In float32 they are equal; in
int8 serving (where bf16 is slow: hyperadapter.packed.Int8Linear) ~2e-3 was seen, under the same bound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from hyperadapter.adapter import Adapter, best_rank
from hyperadapter.base import Base
from hyperadapter.generator.config import KIND_IDS, GeneratorConfig
from hyperadapter.generator.encoder import TokenFeatures, feature_passes, token_embeddings
from hyperadapter.generator.hypernet import AttentionState, HyperNetwork
from hyperadapter.packed import cpu_autocast, fast_bf16, fast_int8

WEIGHTS = "generator.safetensors"
# In WEIGHTS, the tensors of a kind with weights of its own (GeneratorConfig.own_weights) are named
# `kind.<kind>.<the shared tensor's name>`.
OWN_PREFIX = "kind.{kind}."
# Or, compact (`own_weights_state(..., compact=True)`), as float16 differences from the shared tensor of
# the same name, `delta.<kind>.<name>`. Own weights are the shared ones after some dozens of steps on one
# kind, so the difference is small, and float16 keeps it to 3 significant digits (the weight itself to
# far more) in half the room: two kinds of their own then fit the 50 MB a shipped checkpoint may take,
# where each float32 copy adds 22 MB. Loaded, they are float32 again (shared + difference).
DELTA_PREFIX = "delta.{kind}."
OWN_DTYPE = torch.float16
# Contexts per hypernetwork pass at inference. Its attention scores and outputs are [contexts, 720
# slots, ...]: a few contexts at a time stay in the CPU's caches, where 32 at once spilled to memory
# and ran slower per context than one at a time (benchmarks/batch.py). The base pass stays batched.
GROUP = 4
# Generated factors are float16: they come out of bf16 matmuls, so float16 (3 more mantissa bits,
# range to 65504; factors here stay below ~100) keeps all they hold, and an adapter takes 1.9 MB on
# disk instead of 3.9 MB (a catalogue of 10,000 is 19 GB, not 39) and half the time to write.
# The runtime, PEFT and vLLM cast LoRA weights to the model's dtype when they load them.
ADAPTER_DTYPE = torch.float16
CONFIG = "generator_config.json"


def _weighted_sum(vectors: Tensor, segments: Sequence[str]) -> tuple[Tensor, float]:
    """Segment embeddings summed with their lengths as weights, and the total weight."""
    weights = torch.tensor([float(max(1, len(s))) for s in segments])
    return (vectors * weights[:, None]).sum(0), float(weights.sum())


class GeneratorError(ValueError):
    pass


def _in_order(groups: list[list[int]], states: list[AttentionState]) -> AttentionState:
    """The groups' states (rows `groups[i]` in `states[i]`) as one state with its rows in order."""
    flat = [i for g in groups for i in g]
    joined = AttentionState.cat(states)
    if flat == list(range(len(flat))):
        return joined
    return joined.take(sorted(range(len(flat)), key=flat.__getitem__))


def holds_checkpoint(directory: Path) -> bool:
    return (directory / WEIGHTS).exists() or (directory / CONFIG).exists()


def write_checkpoint(directory: str | Path, state: dict[str, Tensor], config: GeneratorConfig,
                     extra: dict | None = None) -> Path:
    """Write weights and config to `directory`, each to a temp file then renamed: an interrupted
    write leaves no half checkpoint. (save_pretrained, `average` and `graft` all write through here.)"""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, directory / (WEIGHTS + ".tmp"), metadata={"format": "pt", "extra": json.dumps(extra or {})})
    config.save(directory / (CONFIG + ".tmp"))
    (directory / (WEIGHTS + ".tmp")).replace(directory / WEIGHTS)
    (directory / (CONFIG + ".tmp")).replace(directory / CONFIG)
    return directory


def checkpoint_name(directory: Path) -> str:
    """`<folder>@<first 12 hex digits of the sha256 of the weights and the config>`, the name adapters
    (and the cache) record: a config edited by hand (e.g. `routed_kinds`) changes the adapters, so it
    changes the name too. Raises GeneratorError if `directory` is not a checkpoint."""
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise GeneratorError(f"{directory} is not a generator checkpoint (needs {CONFIG} and {WEIGHTS})")
    digest = hashlib.sha256((directory / WEIGHTS).read_bytes())
    digest.update((directory / CONFIG).read_bytes())
    return f"{directory.name}@{digest.hexdigest()[:12]}"


def check_kind(kind: str) -> int:
    if kind not in KIND_IDS:
        raise GeneratorError(f"unknown context kind {kind!r}; use one of {', '.join(KIND_IDS)}")
    return KIND_IDS[kind]


@dataclass
class ContextStream:
    """A context being read incrementally. Only `committed` chunks are final; the tail is re-read
    (at most chunk_tokens tokens) whenever an adapter is requested or more text arrives."""

    kind: str
    committed: AttentionState
    tail: list[int] = field(default_factory=list)
    sentence_sum: Tensor = field(default_factory=lambda: torch.zeros(384))
    sentence_weight: float = 0.0
    n_tokens: int = 0
    n_segments: int = 0
    generator: str = ""  # the generator that read it: another generator's state means nothing to this one

    def to_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = self.committed.tensors("state.")
        tensors["tail"] = torch.tensor(self.tail, dtype=torch.long)
        tensors["sentence_sum"] = self.sentence_sum
        meta = {"kind": self.kind, "sentence_weight": repr(self.sentence_weight),
                "n_tokens": str(self.n_tokens), "n_segments": str(self.n_segments), "generator": self.generator}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, str]) -> "ContextStream":
        state = AttentionState.from_tensors(tensors, "state.")
        return cls(kind=meta["kind"], committed=state, tail=tensors["tail"].tolist(),
                   sentence_sum=tensors["sentence_sum"], sentence_weight=float(meta["sentence_weight"]),
                   n_tokens=int(meta["n_tokens"]), n_segments=int(meta["n_segments"]),
                   generator=meta.get("generator", ""))


def split_own_weights(tensors: dict[str, Tensor], own: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """A checkpoint's tensors -> (shared tensors, {kind: that kind's own tensors, unprefixed, float32}).
    A kind's own tensors may be stored whole or as differences from the shared ones (DELTA_PREFIX)."""
    shared = {k: v for k, v in tensors.items() if not k.startswith(("kind.", "delta."))}
    per_kind = {}
    for kind in own:
        whole, delta = OWN_PREFIX.format(kind=kind), DELTA_PREFIX.format(kind=kind)
        mine = {k[len(whole):]: v for k, v in tensors.items() if k.startswith(whole)}
        for k, v in tensors.items():
            if k.startswith(delta):
                name = k[len(delta):]
                if name not in shared:
                    raise GeneratorError(f"the weights of kind {kind!r} hold a difference from {name!r}, "
                                         "which the shared weights lack")
                mine[name] = shared[name] + v.float()
        per_kind[kind] = mine
    return shared, per_kind


def own_weights_state(shared: dict[str, Tensor], per_kind: dict[str, dict[str, Tensor]],
                      compact: bool = False) -> dict[str, Tensor]:
    """The tensors to save for shared weights and kinds' own ones: own ones whole (float32, exact), or
    with `compact` as float16 differences from the shared ones (see DELTA_PREFIX)."""
    state = dict(shared)
    for kind, own in per_kind.items():
        if compact:
            state.update({DELTA_PREFIX.format(kind=kind) + k: (v.float() - shared[k].float()).to(OWN_DTYPE)
                          for k, v in own.items()})
        else:
            state.update({OWN_PREFIX.format(kind=kind) + k: v for k, v in own.items()})
    return state


class Generator:
    def __init__(self, config: GeneratorConfig, hypernet: HyperNetwork, base: Base, sentence_encoder=None,
                 name: str = "untrained", own_nets: dict[str, HyperNetwork] | None = None, int8: bool = False):
        """`int8`: serve with int8 linears where the CPU has no fast bf16 (hyperadapter.packed.fast_int8,
        decided here once) in the feature pass (but FLOAT32_LINEARS) and the hypernetworks' inference
        linears. The service and the evaluation ask for it; training does not (it stays float32)."""
        if config.base_model != base.model_id:
            raise GeneratorError(f"generator was trained for {config.base_model!r}, base is {base.model_id!r}")
        own_nets = dict(own_nets or {})
        if set(own_nets) != set(config.own_weights):
            raise GeneratorError(f"the config names {sorted(config.own_weights)} as kinds with weights of their "
                                 f"own, but weights were given for {sorted(own_nets)}")
        self.config = config
        self.hypernet = hypernet  # the shared weights (the ones training updates)
        self.own_nets = own_nets
        self.base = base
        self.sentence_encoder = sentence_encoder
        self.name = name
        self.int8 = int8 and fast_int8()
        for net in (hypernet, *own_nets.values()):
            net.int8_inference = self.int8
        self._build_features()

    # ------------------------------------------------------------ construction and files
    @classmethod
    def fresh(cls, base: Base, sentence_encoder=None, seed: int = 0, int8: bool = False,
              **config_overrides) -> "Generator":
        target = config_overrides.pop("target_modules", ("q_proj", "v_proj", "down_proj"))
        config = GeneratorConfig.for_base(base, tuple(target), **config_overrides)
        torch.manual_seed(seed)
        return cls(config, HyperNetwork(config), base, sentence_encoder, int8=int8)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        own = {kind: net.state_dict() for kind, net in self.own_nets.items()}
        return write_checkpoint(directory, own_weights_state(self.hypernet.state_dict(), own), self.config, extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, base: Base, sentence_encoder=None,
                        int8: bool = False) -> "Generator":
        """The generator saved in `directory` (`int8`, for serving: see __init__)."""
        directory = Path(directory)
        name = checkpoint_name(directory)
        config = GeneratorConfig.load(directory / CONFIG)
        shared, per_kind = split_own_weights(load_file(directory / WEIGHTS), config.own_weights)
        nets = {}
        for kind, tensors in [("", shared), *per_kind.items()]:
            net = HyperNetwork(config)  # one config object for all: settings changed in place reach every net
            try:
                net.load_state_dict(tensors)
            except RuntimeError as exc:
                what = f"the weights of kind {kind!r}" if kind else "the shared weights"
                raise GeneratorError(f"{directory}: {what} do not fit its config: {exc}") from exc
            nets[kind] = net.eval().requires_grad_(False)
        hypernet = nets.pop("")
        return cls(config, hypernet, base, sentence_encoder, name=name, own_nets=nets, int8=int8)

    @property
    def precision(self) -> str:
        """What its inference matmuls run in here: "bf16", "int8" or "float32"."""
        return "int8" if self.int8 else "bf16" if fast_bf16() else "float32"

    def net_for(self, kind: str) -> HyperNetwork:
        """The hypernetwork whose weights make adapters of this kind."""
        return self.own_nets.get(kind, self.hypernet)

    def _groups(self, kinds: Sequence[str]) -> list[list[int]]:
        """Row indices in groups of at most GROUP that share one hypernetwork: rows in order, each
        net's rows together (with no kind of its own weights: GROUP consecutive rows, as always)."""
        by_net: dict[int, list[int]] = {}
        for row, kind in enumerate(kinds):
            by_net.setdefault(id(self.net_for(kind)), []).append(row)
        return [rows[g:g + GROUP] for rows in by_net.values() for g in range(0, len(rows), GROUP)]

    def read_from_layer(self, layer: int | None = None, kind_layers: dict[str, int] | None = None) -> None:
        """Read context features from the base's `layer` instead, and the kinds in `kind_layers` from
        theirs (no parameter changes shape, so a trained generator can be continued on shallower,
        cheaper features: training.loop)."""
        try:  # a changed copy first: GeneratorConfig checks the kinds, nothing changes if it fails
            wanted = dataclasses.replace(
                self.config, feature_layer=self.config.feature_layer if layer is None else int(layer),
                kind_layers=self.config.kind_layers if kind_layers is None else {k: int(v) for k, v in kind_layers.items()})
        except ValueError as exc:
            raise GeneratorError(str(exc)) from exc
        for depth in wanted.feature_layers:
            if not 1 <= depth <= self.base.num_layers:
                raise GeneratorError(f"feature layer {depth} is outside the base's 1..{self.base.num_layers}")
        # in place: the hypernetwork holds this same config object
        self.config.feature_layer, self.config.kind_layers = wanted.feature_layer, wanted.kind_layers
        self._build_features()

    def _build_features(self) -> None:
        """One feature pass per layer some kind reads (sharing one copy of the base's layers)."""
        self.features = feature_passes(self.base, self.config.feature_layers, self.int8)

    def features_for(self, kind: str) -> TokenFeatures:
        return self.features[self.config.layer_for(kind)]

    def embed(self, ids: Tensor) -> Tensor:
        return token_embeddings(self.base, ids)

    # ------------------------------------------------------------ tokens and features
    def segment_tokens(self, segment: str) -> list[int]:
        return self.base.tokenizer(segment, add_special_tokens=False)["input_ids"]

    def _sentence(self, segments: Sequence[str]) -> tuple[Tensor, float]:
        """Sum of segment embeddings weighted by length, and the total weight."""
        if self.sentence_encoder is None or not self.config.use_sentence or not segments:
            return torch.zeros(self.config.sentence_dim), 0.0
        return _weighted_sum(self.sentence_encoder.encode(list(segments)), segments)

    def _token_features(self, chunks_per_row: list[list[list[int]]],
                        kinds: Sequence[str]) -> list[tuple[Tensor, Tensor]] | None:
        """Per row (a context of kinds[row]), the features and input embeddings of its real tokens
        from all its chunks, side by side (softmax over all of them is the same); the chunks of all
        rows read at one layer go through the base in one batch. None when the generator does not
        read tokens or there are none."""
        if not self.config.use_tokens or not any(chunks_per_row):
            return None
        hidden = self.config.hidden_size
        per_row: list = [(torch.zeros(0, hidden), torch.zeros(0, hidden))] * len(chunks_per_row)
        for layer, features in self.features.items():
            rows = [r for r, kind in enumerate(kinds) if self.config.layer_for(kind) == layer and chunks_per_row[r]]
            if not rows:
                continue
            feats, mask, emb = features([c for r in rows for c in chunks_per_row[r]])
            i = 0
            for r in rows:
                n = len(chunks_per_row[r])
                keep = mask[i:i + n].reshape(-1).bool()
                per_row[r] = (feats[i:i + n].reshape(-1, hidden)[keep], emb[i:i + n].reshape(-1, hidden)[keep])
                i += n
        return per_row

    def _absorb_rows(self, states: AttentionState | None, rows: list[tuple[Tensor, Tensor]],
                     kinds: Sequence[str]) -> AttentionState:
        """Fold a few rows' token features (from _token_features) into their states (None: new
        contexts, read from nothing); `kinds`, the rows' context kinds."""
        pad = torch.nn.functional.pad
        width = max(f.shape[0] for f, _ in rows)
        f = torch.stack([pad(f, (0, 0, 0, width - f.shape[0])) for f, _ in rows])
        e = torch.stack([pad(e, (0, 0, 0, width - e.shape[0])) for _, e in rows])
        m = torch.stack([pad(torch.ones(x.shape[0], dtype=torch.long), (0, width - x.shape[0])) for x, _ in rows])
        ids = torch.tensor([KIND_IDS[k] for k in kinds])
        net = self.net_for(kinds[0])  # one net for all of them: rows come in _groups
        if states is None:
            return net.read(f, m, e, ids)
        return net.absorb(states, f, m, e, ids)

    def _absorb_chunks(self, states: AttentionState, chunks_per_row: list[list[list[int]]],
                       kinds: Sequence[str]) -> AttentionState:
        """Fold each row's chunks (token id lists) into its state, a group of rows at a time."""
        per_row = self._token_features(chunks_per_row, kinds)
        if per_row is None:
            return states
        groups = self._groups(kinds)
        return _in_order(groups, [self._absorb_rows(states.take(g), [per_row[i] for i in g], [kinds[i] for i in g])
                                  for g in groups])

    def _chunks(self, tokens: list[int]) -> tuple[list[list[int]], list[int]]:
        """Complete chunks, and the incomplete tail."""
        size = self.config.chunk_tokens
        n_full = len(tokens) // size
        return [tokens[i * size:(i + 1) * size] for i in range(n_full)], tokens[n_full * size:]

    # ------------------------------------------------------------ streaming
    def stream(self, kind: str) -> ContextStream:
        check_kind(kind)
        with torch.no_grad():
            state = self.net_for(kind).init_state(1)
        return ContextStream(kind=kind, committed=state, sentence_sum=torch.zeros(self.config.sentence_dim),
                             generator=self.name)

    @torch.no_grad()
    def append(self, stream: ContextStream, segments: Sequence[str]) -> ContextStream:
        """Read more of a context. Cost: the new text plus at most one chunk of old tail."""
        tokens = list(stream.tail)
        for s in segments:
            tokens += self.segment_tokens(s)
        full, tail = self._chunks(tokens)
        committed = self._absorb_chunks(stream.committed, [full], [stream.kind])
        sent, weight = self._sentence(segments)
        return ContextStream(kind=stream.kind, committed=committed.detach(), tail=tail,
                             sentence_sum=stream.sentence_sum + sent, sentence_weight=stream.sentence_weight + weight,
                             n_tokens=stream.n_tokens + len(tokens) - len(stream.tail),
                             n_segments=stream.n_segments + len(segments), generator=stream.generator)

    @torch.no_grad()
    def adapter_from_stream(self, stream: ContextStream, metadata: dict | None = None) -> Adapter:
        return self._adapters_from_streams([stream], [metadata or {}])[0]

    def _adapters_from_streams(self, streams: list[ContextStream], metadatas: list[dict]) -> list[Adapter]:
        states = AttentionState.cat([s.committed for s in streams])
        kinds = [s.kind for s in streams]
        states = self._absorb_chunks(states, [[s.tail] if s.tail else [] for s in streams], kinds)
        sentence = torch.stack([s.sentence_sum / max(s.sentence_weight, 1e-9) for s in streams])
        sentence = torch.nn.functional.normalize(sentence, dim=-1)
        return self._adapters(states, sentence, kinds, metadatas)

    def _adapters(self, states: AttentionState, sentence: Tensor, kinds: list[str],
                  metadatas: Sequence[dict]) -> list[Adapter]:
        out: list = [None] * len(kinds)
        for g in self._groups(kinds):
            for i, adapter in zip(g, self._group_adapters(states.take(g), sentence[g], [kinds[i] for i in g],
                                                          [metadatas[i] for i in g])):
                out[i] = adapter
        return out

    def _group_adapters(self, states: AttentionState, sentence: Tensor, kinds: list[str],
                        metadatas: Sequence[dict], rank: int | None = None) -> list[Adapter]:
        """The hypernetwork's heads for a few contexts (at most GROUP), and their Adapter values (with `rank`,
        each module's update at its best approximation of that rank)."""
        ids = torch.tensor([check_kind(k) for k in kinds])
        net = self.net_for(kinds[0])  # one net for all of them: rows come in _groups
        # bf16 matmuls where the CPU has them (AMX/AVX512-BF16): 27 -> 16 ms for one adapter, factors
        # within 0.3% of float32; the streaming statistics before this stay float32.
        # inference_mode (less per-op overhead than no_grad): _to_adapter's copies, made outside
        # it, are normal tensors, so an adapter never holds an inference tensor.
        with torch.inference_mode(), cpu_autocast():
            factors = net.factors(states, sentence, ids)
        alpha = self.config.alpha
        if rank is not None:
            with torch.inference_mode():
                factors = {m: self._best_rank(a, b, rank) for m, (a, b) in factors.items()}
            alpha = float(rank)
        return [self._to_adapter(factors, i, {"kind": kind, "generator": self.name, **md}, alpha)
                for i, (kind, md) in enumerate(zip(kinds, metadatas))]

    def _best_rank(self, a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        """Factors a [B, L, r, in], b [B, L, out, r] -> their update's best rank-`rank` approximation, scaling
        folded in (adapter.best_rank over all contexts and layers at once)."""
        n, layers = a.shape[:2]
        scaling = self.config.alpha / self.config.rank
        a_new, b_new = best_rank(a.float().flatten(0, 1), b.float().flatten(0, 1) * scaling, rank)
        return a_new.unflatten(0, (n, layers)), b_new.unflatten(0, (n, layers))

    # ------------------------------------------------------------ one-shot
    @torch.no_grad()
    def generate_adapter(self, context: str | Sequence[str], kind: str, metadata: dict | None = None) -> Adapter:
        return self.generate_many([(kind, context)], [metadata or {}])[0]

    @torch.no_grad()
    def generate_many(self, items: Sequence[tuple[str, str | Sequence[str]]],
                      metadatas: Sequence[dict] | None = None, rank: int | None = None) -> list[Adapter]:
        """Batched generation: all contexts' chunks go through the base together. With `rank`, each adapter is
        the best rank-`rank` approximation of its update (alpha = rank; Adapter.compressed), made from the
        hypernetwork's factors a few contexts at a time: a document's 84 sentence routes at rank 1 in a fraction
        of the time that compressing 84 finished adapters takes."""
        if not items:
            return []
        segments_per_item = [[c] if isinstance(c, str) else list(c) for _, c in items]
        for (kind, _), segs in zip(items, segments_per_item):
            check_kind(kind)
            if not any(s.strip() for s in segs):
                raise GeneratorError("context is empty")
        kinds = []
        all_chunks = []
        sentence_inputs = []
        for (kind, _), segs in zip(items, segments_per_item):
            tokens = [t for s in segs for t in self.segment_tokens(s)]
            full, tail = self._chunks(tokens)
            all_chunks.append(full + ([tail] if tail else []))
            sentence_inputs.append(segs)
            kinds.append(kind)
        # The sentence encoder and the base's feature pass are independent, but they run one after
        # the other on this thread: a second thread running torch ops gets its own OpenMP worker,
        # libgomp then has more threads than cores and sends idle workers to sleep at once, and every
        # later op in the process pays to wake them (a one-sentence adapter: 25-33 ms with the
        # encoder on a side thread, 15-22 ms without; benchmarks/generate_latency.py in two
        # checkouts taken in turn, model card, Latency).
        sentence = self._sentence_rows(sentence_inputs)
        per_row = self._token_features(all_chunks, kinds)
        metadatas = list(metadatas or [{}] * len(items))
        out: list = [None] * len(items)
        for g in self._groups(kinds):  # a few contexts at a time from here on (see GROUP)
            group_kinds = [kinds[i] for i in g]
            if per_row is not None:
                states = self._absorb_rows(None, [per_row[i] for i in g], group_kinds)
            else:
                states = self.net_for(group_kinds[0]).init_state(len(g))
            for i, adapter in zip(g, self._group_adapters(states, sentence[g], group_kinds, [metadatas[i] for i in g],
                                                          rank)):
                out[i] = adapter
        return out

    # ------------------------------------------------------------ helpers
    def _sentence_rows(self, segments_per_row: list[list[str]]) -> Tensor:
        """Per row, the unit mean of its segments' sentence embeddings, weighted by length (zeros
        when the generator does not use them)."""
        sentence = torch.zeros(len(segments_per_row), self.config.sentence_dim)
        if self.sentence_encoder is None or not self.config.use_sentence:
            return sentence
        vecs = self.sentence_encoder.encode([s for segs in segments_per_row for s in segs])  # one batch
        i = 0
        for row, segs in enumerate(segments_per_row):
            total, weight = _weighted_sum(vecs[i:i + len(segs)], segs)
            sentence[row] = total / weight
            i += len(segs)
        return torch.nn.functional.normalize(sentence, dim=-1)

    def _to_adapter(self, factors: dict[str, tuple[Tensor, Tensor]], row: int, metadata: dict,
                    alpha: float) -> Adapter:
        """One row of the factors as an Adapter that owns its tensors: per module one contiguous
        ADAPTER_DTYPE copy of all layers (cast, transpose and copy in one op), each layer a view into
        it. Views that do not overlap are what safetensors accepts; a view into the whole group's
        output would keep the group's other adapters alive. (One copy per layer was 180 small ops,
        ~2 ms of a one-sentence adapter.)"""
        weights = {}
        own = {"dtype": ADAPTER_DTYPE, "memory_format": torch.contiguous_format}
        for m, (a, b) in factors.items():
            a, b = a[row].to(**own), b[row].to(**own)
            for layer in range(self.config.num_layers):
                weights[self.config.module_path(m, layer)] = (a[layer], b[layer])
        return Adapter(weights, alpha=alpha, base_model=self.config.base_model,
                       metadata={k: str(v) for k, v in metadata.items()})

    def runtime_factors(self, factors: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
        """Hypernet output -> per-module-path factors for `LoraRuntime.activate(factors=...)`, with the
        LoRA scaling folded into B (differentiable: used in training)."""
        scaling = self.config.alpha / self.config.rank
        out = {}
        for m, (a, b) in factors.items():
            for layer in range(self.config.num_layers):
                out[self.config.module_path(m, layer)] = (a[:, layer], b[:, layer] * scaling)
        return out

    @torch.no_grad()
    def context_features(self, contexts: Sequence[Sequence[str]], kinds: Sequence[str]) -> list[tuple[Tensor, Tensor]]:
        """Per context (given as segments, of kinds[i]): (features [T, H] fp16, token ids [T]),
        chunked as everywhere else, the chunks of all contexts read at one layer in one pass."""
        chunks_per_context = []
        for segments in contexts:
            tokens = [t for s in segments for t in self.segment_tokens(s)]
            full, tail = self._chunks(tokens)
            chunks_per_context.append(full + ([tail] if tail else []))
        per_row = self._token_features(chunks_per_context, kinds)
        out = []
        for r, chunks in enumerate(chunks_per_context):
            ids = torch.tensor([t for c in chunks for t in c], dtype=torch.long)
            # a generator that reads no tokens gets zeros, of the ids' length (they still pad alike)
            feats = per_row[r][0] if per_row is not None else torch.zeros(len(ids), self.config.hidden_size)
            out.append((feats.half(), ids))
        return out
