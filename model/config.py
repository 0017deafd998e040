"""Every MGDSPR hyperparameter in one dataclass, the paper's values as defaults.

    cfg = load_config("runs/cfg.json", ["temperature=1.0", "use_mix=false"])
    cfg = load_config("quick")                       # a preset: PRESETS["quick"]
    cfg = MGDSPRConfig(**ABLATIONS["no_mgs"])

A JSON file gives a base, "key=value" overrides are applied on top with the field's type
(bools accept true/false/1/0/yes/no, tuples accept "64,32" or a JSON list), and an unknown
key is an error naming the key, so a typo cannot silently train the wrong model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from typing import Any, Sequence

from features.io import read_text


@dataclass
class MGDSPRConfig:
    """Hyperparameters of the model, its loss and its optimiser.

    Sizes are counts of vectors/units; `embedding_dim` is d of the paper (user tower, item
    tower, every embedding table and the LSTM hidden size)."""

    # -- dimensions ---------------------------------------------------------------------
    embedding_dim: int = 128
    num_heads: int = 8  # heads of every multi-head attention (paper: 8 in the real-time branch)
    query_transformer_layers: int = 1  # Transformer over query words (q_seg_seq)
    fusion_transformer_layers: int = 1  # Transformer over [CLS], Q_mgs, H_real, H_short, H_long
    transformer_ff_dim: int = 256  # hidden units of the Transformers' feed-forward blocks
    lstm_layers: int = 2  # real-time branch, residual connections between layers
    lstm_unroll: bool = False  # unrolled LSTM: a flat graph (FLOP counting), same maths
    dropout: float = 0.2  # on the real-time LSTM's outputs (the paper's place) and the alpha-DNN's layers
    # On attention probabilities and residual branches of every Transformer/self-attention.
    # 0 by default: queries are 1-3 words and the fusion has 25 fixed slots, too few to drop.
    attention_dropout: float = 0.0

    # -- loss ---------------------------------------------------------------------------
    loss: str = "softmax"  # "softmax" (global comparison) | "hinge" (pairwise, the paper's contrast)
    hinge_margin: float = 0.5  # margin of the pairwise hinge on the towers' cosines (dot products if score_scale = 0)
    temperature: float = 2.0  # tau: logits are score_scale * cos(u, i) / tau
    # Both towers end in an L2 normalisation and a score is score_scale * cos(u, i): the
    # logit range is fixed (+-score_scale / tau) instead of hanging on the norms the last
    # layers happen to produce, so tau means what the paper means. 0 = raw dot products.
    score_scale: float = 32.0
    # Random catalog items per batch (`neg_*` features), on top of the batch's other
    # positives. Pool of sampled negatives = batch_size - 1 + num_random_negatives; the
    # hard_negatives are a small share of it (paper: 684 per query, from thousands).
    num_random_negatives: int = 8192
    log_q_correction: bool = True  # subtract log expected sample count from sampled logits
    catalog_size: int = 0  # items random negatives are drawn from; 0 = item_id vocabulary size
    use_mix: bool = True  # relevance-improving hard negatives I_mix
    hard_negatives: int = 684  # N: top-N sampled negatives per query that get mixed
    mix_a: float = 0.4  # alpha ~ U(mix_a, mix_b); alpha near 1 = harder negatives
    mix_b: float = 0.6

    # -- architecture switches (the paper's ablations) ----------------------------------
    model: str = "mgdspr"  # "mgdspr" | "mlp" (the alpha-DNN baseline)
    use_mgs: bool = True  # multi-grained semantic unit; False = mean of query words only
    use_trm: bool = True  # fusion Transformer; False = concatenation + dense
    mlp_hidden_units: tuple[int, ...] = (512, 256)  # alpha-DNN baseline user tower

    # -- optimisation -------------------------------------------------------------------
    batch_size: int = 256
    optimizer: str = "adagrad"  # "adagrad" | "adam" | "sgd"
    learning_rate: float = 0.1
    adagrad_initial_accumulator: float = 0.1
    clip_norm: float = 3.0  # global L2 norm of all gradients; 0 = no clipping
    warmup_steps: int = 0  # the rate rises linearly to learning_rate over these steps; 0 = no warm-up
    seed: int = 0

    # -- item ids at catalog scale (model/lookup.py, docs/scale.md) ---------------------
    item_ids: str = "vocab"  # "vocab" (exact table) | "hash" | "integer" (pre-mapped 0..item_id_buckets-1)
    item_id_buckets: int = 0  # rows of the hashed or pre-mapped item-id space

    def __post_init__(self):
        # JSON gives lists; keep tuples so configs compare and hash predictably.
        self.mlp_hidden_units = tuple(int(u) for u in self.mlp_hidden_units)
        problems = []
        d = self.embedding_dim
        if d <= 0:
            problems.append(f"embedding_dim must be positive, got {d}")
        if self.num_heads <= 0 or d % self.num_heads:
            problems.append(f"embedding_dim ({d}) must be a multiple of num_heads ({self.num_heads})")
        if self.loss not in ("softmax", "hinge"):
            problems.append(f"loss must be 'softmax' or 'hinge', got {self.loss!r}")
        if self.model not in ("mgdspr", "mlp"):
            problems.append(f"model must be 'mgdspr' or 'mlp', got {self.model!r}")
        if self.optimizer not in ("adagrad", "adam", "sgd"):
            problems.append(f"optimizer must be 'adagrad', 'adam' or 'sgd', got {self.optimizer!r}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.score_scale < 0:
            problems.append(f"score_scale must be >= 0 (0 = raw dot products), got {self.score_scale}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.mix_a < self.mix_b <= 1.0:
            problems.append(f"need 0 <= mix_a < mix_b <= 1, got mix_a={self.mix_a}, mix_b={self.mix_b}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if self.num_random_negatives < 0:
            problems.append(f"num_random_negatives must be >= 0, got {self.num_random_negatives}")
        if self.hard_negatives < 1:
            problems.append(f"hard_negatives must be >= 1, got {self.hard_negatives}")
        pool = self.batch_size - 1 + self.num_random_negatives
        if self.use_mix and self.hard_negatives > pool:
            problems.append(
                f"hard_negatives ({self.hard_negatives}) exceeds the sampled negatives per query "
                f"(batch_size - 1 + num_random_negatives = {self.batch_size} - 1 + "
                f"{self.num_random_negatives} = {pool}); raise num_random_negatives to at least "
                f"{self.hard_negatives - self.batch_size + 1} or lower hard_negatives"
            )
        for name in ("query_transformer_layers", "fusion_transformer_layers", "transformer_ff_dim", "lstm_layers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.clip_norm < 0:
            problems.append(f"clip_norm must be >= 0, got {self.clip_norm}")
        if self.catalog_size < 0:
            problems.append(f"catalog_size must be >= 0, got {self.catalog_size}")
        if self.item_ids not in ("vocab", "hash", "integer"):
            problems.append(f"item_ids must be 'vocab', 'hash' or 'integer', got {self.item_ids!r}")
        elif self.item_ids != "vocab" and (self.item_id_buckets < 1 or self.catalog_size < 1):
            problems.append(f"item_ids={self.item_ids!r} needs item_id_buckets >= 1 (rows) and catalog_size >= 1 "
                            f"(items, for log-Q), got {self.item_id_buckets} and {self.catalog_size}")
        if any(u <= 0 for u in self.mlp_hidden_units):
            problems.append(f"mlp_hidden_units must be positive, got {self.mlp_hidden_units}")
        if problems:
            raise ValueError("invalid MGDSPRConfig: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MGDSPRConfig":
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"a config must be a JSON object, got {type(values).__name__}")
        _check_keys(values)
        return cls(**values)

    def replace(self, **changes) -> "MGDSPRConfig":
        _check_keys(changes)
        return dataclasses.replace(self, **changes)


# The paper's ablations (Table 3/4): MGDSPR, without the multi-grained semantic unit,
# without the fusion Transformer, tau = 1, without I_mix, pairwise hinge, alpha-DNN.
ABLATIONS: dict[str, dict[str, Any]] = {
    "mgdspr": {},
    "no_mgs": {"use_mgs": False},
    "no_trm": {"use_trm": False},
    "tau1": {"temperature": 1.0},
    "no_mix": {"use_mix": False},
    "hinge": {"loss": "hinge"},
    "mlp": {"model": "mlp"},
    # The baseline as a plain two-tower: the paper does not say how alpha-DNN was trained;
    # "mlp" shares MGDSPR's loss (tau and I_mix), this one has neither.
    "mlp_plain": {"model": "mlp", "temperature": 1.0, "use_mix": False},
}


# Named starting points for `load_config` (and `--config NAME` on the command line).
# `paper`: the paper's settings, the dataclass defaults. `quick`: tuned for short runs on
# a CPU (minutes, not the paper's 35M steps): a narrower model, Adam, which moves the
# embedding rows from the first step where AdaGrad's accumulator of 0.1 keeps them
# nearly still, and a pool of sampled negatives whose top 64 are hard ones. The search
# behind the values: docs/model.md and reports/tuning.md (`python -m benchmarks.tune`).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {
        "embedding_dim": 64,
        "transformer_ff_dim": 128,
        "batch_size": 128,
        "num_random_negatives": 1024,
        "hard_negatives": 64,
        "optimizer": "adam",
        "learning_rate": 0.005,
    },
}


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(MGDSPRConfig)}


def _check_keys(values: dict) -> None:
    unknown = sorted(set(values) - set(_fields()))
    if unknown:
        raise ValueError(f"unknown MGDSPRConfig key(s) {unknown}; known: {sorted(_fields())}")


def _coerce(key: str, text: str) -> Any:
    """Parses an override's text to the type of field `key`."""
    hints = typing.get_type_hints(MGDSPRConfig)
    kind = hints[key]
    try:
        if kind is bool:
            low = text.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if typing.get_origin(kind) is tuple:
            text = text.strip()
            items = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t.strip()]
            return tuple(int(v) for v in items)
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"override {key}={text!r}: cannot read as {kind}: {e}") from None
    raise ValueError(f"override {key}: unsupported field type {kind}")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """["temperature=1", "use_mix=false"] -> {"temperature": 1.0, "use_mix": False}."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        _check_keys({key: None})
        out[key] = _coerce(key, value)
    return out


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> MGDSPRConfig:
    """The config from a preset name (`PRESETS`: paper, quick) or a JSON file (the paper's
    defaults when `path` is None), then overrides."""
    base: dict[str, Any] = {}
    if path in PRESETS:
        base = dict(PRESETS[path])
    elif path:
        if not path.endswith(".json") and "/" not in path and not os.path.exists(path):
            raise ValueError(f"config {path!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        base = dataclasses.asdict(MGDSPRConfig.from_json(read_text(path)))
    base.update(parse_overrides(overrides))
    return MGDSPRConfig(**base)


def make_optimizer(config: MGDSPRConfig):
    """The paper's optimiser: AdaGrad, initial learning rate 0.1, gradients clipped at a
    global L2 norm of 3 (`global_clipnorm`: applied inside `apply_gradients`, so custom
    loops and gradient-averaging wrappers clip the averaged gradients too)."""
    import features  # noqa: F401
    import tensorflow as tf

    clip = {"global_clipnorm": config.clip_norm} if config.clip_norm > 0 else {}
    rate = warmup_schedule()(config.learning_rate, config.warmup_steps) if config.warmup_steps else config.learning_rate
    if config.optimizer == "adagrad":
        return tf.keras.optimizers.Adagrad(
            learning_rate=rate,
            initial_accumulator_value=config.adagrad_initial_accumulator,
            **clip,
        )
    if config.optimizer == "adam":
        return tf.keras.optimizers.Adam(learning_rate=rate, **clip)
    return tf.keras.optimizers.SGD(learning_rate=rate, **clip)


def warmup_schedule():
    """The class of a linear warm-up: step s (from 0) trains at rate * min(1, (s + 1) / steps).
    The target rate is a variable (`.rate`), so a run can lower it later."""
    import features  # noqa: F401
    import tensorflow as tf

    class Warmup(tf.keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, rate: float, steps: int):
            self.rate = tf.Variable(float(rate), trainable=False, dtype=tf.float32, name="target_learning_rate")
            self.steps = int(steps)

        def __call__(self, step):
            done = tf.cast(step + 1, tf.float32) / float(self.steps)
            return self.rate * tf.minimum(1.0, done)

        def get_config(self):
            return {"rate": float(self.rate.numpy()), "steps": self.steps}

    return Warmup


def rate_schedule(optimizer):
    """The optimizer's learning-rate schedule (a warm-up), or None for a constant rate."""
    import features  # noqa: F401
    import tensorflow as tf

    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if isinstance(schedule, tf.keras.optimizers.schedules.LearningRateSchedule) else None


def rate_variable(optimizer):
    """The variable that sets an optimizer's learning rate from now on: a warm-up's target
    rate, else the rate itself."""
    schedule = rate_schedule(optimizer)
    return optimizer.learning_rate if schedule is None else schedule.rate


__all__ = ["ABLATIONS", "PRESETS", "MGDSPRConfig", "load_config", "make_optimizer", "parse_overrides", "rate_schedule",
           "rate_variable"]
