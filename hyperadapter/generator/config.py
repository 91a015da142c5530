"""The generator's hyper-parameters, saved beside its weights as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

KIND_IDS = {"task": 0, "demonstrations": 1, "document": 2, "conversation": 3}


@dataclass
class GeneratorConfig:
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    num_layers: int = 30
    hidden_size: int = 576
    # short module name -> (path template with {layer}, in_features, out_features)
    modules: dict[str, list] = field(default_factory=lambda: {
        "q_proj": ["model.layers.{layer}.self_attn.q_proj", 576, 576],
        "v_proj": ["model.layers.{layer}.self_attn.v_proj", 576, 192],
        "down_proj": ["model.layers.{layer}.mlp.down_proj", 1536, 576],
    })
    rank: int = 8
    alpha: float = 16.0
    feature_layer: int = 8  # the base is run up to this layer over the context (cost vs depth of features)
    # Kinds read at another layer than feature_layer, e.g. {"task": 4}: a one-line description is
    # read at half the cost of layer 8, while a chat history keeps the depth that tells who has which
    # cat (stage 13: layer 4 for every kind cost conversations ~5 points of recall).
    kind_layers: dict[str, int] = field(default_factory=dict)
    chunk_tokens: int = 256  # context is read in independent chunks of this many tokens
    latent: int = 256
    heads: int = 4
    mlp_blocks: int = 2
    sentence_dim: int = 384
    copy_modules: list[str] = field(default_factory=lambda: ["down_proj"])  # B columns get copied token embeddings
    copy_dim: int = 64
    # The copied embeddings (norm ~3) must move a residual stream whose norm is ~10^2-10^3, and Adam
    # moves a parameter by ~lr per step whatever its gradient: the gain is learned as raw * copy_scale
    # so that it can reach the needed size in hundreds of steps, not tens of thousands.
    copy_scale: float = 200.0
    copy_features: bool = True  # the copy attention's pooled features inform each slot's latent (hypernet.py)
    # how sharply a (layer, module)'s rank slots compete for each token they copy (hypernet.py); 0: not at all
    copy_compete: float = 0.0
    # Width of each copy slot's key: its pooled copied features go through a shared map to this many
    # numbers and a per-layer map to the module's input, and join the slot's A row, so that the
    # question about a fact fires the slot that copied it (hypernet.py); 0: no keys
    copy_keys: int = 0
    # The per-layer key maps are learned as raw * copy_key_scale, for copy_scale's reason: scaled like
    # the A rows (x ~0.03), 120 steps left the keys 1% of the rows (stage 23)
    copy_key_scale: float = 1.0
    # The kinds whose copy slots compete (copy_compete) and carry keys (copy_keys); the others copy as
    # without them. Stages 21-25 routed every kind: chats gained, tasks and documents lost (model card)
    routed_kinds: list[str] = field(default_factory=lambda: list(KIND_IDS))
    # Kinds whose adapters come from their own copy of the hypernetwork's weights (stored as
    # `kind.<kind>.<tensor>` beside the shared ones; `hyperadapter graft`); the other kinds share one.
    # Stages 15-29 traded kinds against each other through shared weights (documents against chats,
    # chats against locality): a kind with weights of its own can be trained and shipped alone,
    # every other kind's adapters unchanged bit for bit.
    own_weights: list[str] = field(default_factory=list)
    use_sentence: bool = True
    use_tokens: bool = True

    def __post_init__(self) -> None:
        for name in ("kind_layers", "routed_kinds", "own_weights"):
            unknown = sorted(set(getattr(self, name)) - set(KIND_IDS))
            if unknown:
                raise ValueError(f"{name} names unknown kinds {unknown}; the kinds are {', '.join(KIND_IDS)}")
        if self.copy_keys and not self.copy_features:
            raise ValueError("copy_keys needs copy_features: a slot's key is made from the features it copied")
        if self.copy_keys < 0:
            raise ValueError(f"copy_keys must be 0 (off) or a positive width, not {self.copy_keys}")

    def changed(self, other: "GeneratorConfig", ignore: tuple[str, ...] = ()) -> list[str]:
        """The settings (but those in `ignore`) on which `other` differs from this config."""
        mine, theirs = asdict(self), asdict(other)
        return sorted(k for k in mine if k not in ignore and mine[k] != theirs[k])

    def layer_for(self, kind: str) -> int:
        """The base layer whose hidden states a context of this kind is read from."""
        return int(self.kind_layers.get(kind, self.feature_layer))

    @property
    def feature_layers(self) -> list[int]:
        """Every layer some kind is read from, shallowest first."""
        return sorted({self.layer_for(k) for k in KIND_IDS})

    @property
    def module_names(self) -> list[str]:
        return sorted(self.modules)

    def module_path(self, name: str, layer: int) -> str:
        return self.modules[name][0].format(layer=layer)

    def shape(self, name: str) -> tuple[int, int]:
        _, fan_in, fan_out = self.modules[name]
        return int(fan_in), int(fan_out)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "GeneratorConfig":
        raw = json.loads(Path(path).read_text())
        raw.setdefault("copy_scale", 1.0)  # checkpoints written before copy_scale existed learned the gain unscaled
        raw.setdefault("copy_features", False)  # nor did they pool copied features
        return cls(**raw)

    @classmethod
    def for_base(cls, base, target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"), **kw) -> "GeneratorConfig":
        """Read module shapes off a loaded base model (any HF causal LM with `model.layers.N.*`)."""
        shapes = base.linear_shapes()
        modules = {}
        for name in target_modules:
            path = next((p for p in shapes if p.startswith("model.layers.0.") and p.endswith("." + name)), None)
            if path is None:
                raise ValueError(f"base model has no module {name!r} in its first layer")
            fan_in, fan_out = shapes[path]
            modules[name] = [path.replace("model.layers.0.", "model.layers.{layer}.", 1), fan_in, fan_out]
        return cls(base_model=base.model_id, num_layers=base.num_layers, hidden_size=base.config.hidden_size,
                   modules=modules, **kw)
