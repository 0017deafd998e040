"""Split a trained MGDSPR into the two SavedModels that serve it.

    from model.export import export_towers
    info = export_towers("runs/small", "data/small/processed", "exports/.tmp-3")

writes, under the given directory:

    user_tower/    SavedModel, signature `serving_default`: the tokenised query, the
                   earlier queries and the behaviour sequences as string tensors named
                   after `features.spec.USER_FEATURES` -> `user_embedding` [b, d].
                   Vocabulary lookups run in-graph (the vocabulary files are SavedModel
                   assets); only standard TensorFlow ops, so TF Serving loads it as it is.
                   `assets.extra/tf_serving_warmup_requests` holds PredictionLog records
                   built from real examples, which TF Serving replays before serving.
    item_tower/    SavedModel, signature `serving_default`: `item_id` [b], `title_words`
                   [b, 32] strings -> `item_embedding` [b, d] (re-embedding the catalog).

Only user-side features are inputs of the user tower: nothing of the target item reaches
it. The tokenizer runs in the caller (jieba is Python): `features.Tokenizer` gives the
chars, bigrams and words.
"""
from __future__ import annotations

import json
import os

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.spec import FEATURES, USER_FEATURE_NAMES

USER_TOWER = "user_tower"
ITEM_TOWER = "item_tower"
USER_OUTPUT = "user_embedding"
ITEM_OUTPUT = "item_embedding"
ITEM_INPUTS = ("item_id", "title_words")
SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_RECORDS = 32


def input_specs(names) -> dict:
    """{name: tf.TensorSpec([None] + shape, tf.string, name)} for features of `names`."""
    return {n: tf.TensorSpec([None, *FEATURES[n].shape], tf.string, name=n) for n in names}


class ServingTower(tf.Module):
    """A tower behind its in-graph lookup: raw strings in, one embedding out."""

    def __init__(self, tower, lookup, names, output: str):
        super().__init__(name=f"{tower.name}_serving")
        # The tower's variables, not the Keras model itself: saving a Keras model would
        # also trace every layer's call for Keras' own loader, which serving never uses.
        self.weights = list(tower.variables)
        self.lookup = lookup
        self.names = tuple(names)
        self.output = output

        def serve(inputs):
            return {output: tower(lookup(dict(inputs)), training=False)}

        self.serve = tf.function(serve, input_signature=[input_specs(self.names)])

    def signature(self):
        # Keyword inputs, named after the features, as TF Serving expects.
        specs = input_specs(self.names)
        return tf.function(lambda **kw: self.serve(kw)).get_concrete_function(**specs)


def save_tower(module: ServingTower, path: str) -> None:
    tf.saved_model.save(module, path, signatures={SIGNATURE: module.signature()})


def warmup_requests(examples: dict, model_name: str = USER_TOWER, records: int = WARMUP_RECORDS) -> list[bytes]:
    """Serialized PredictionLog records (TF Serving's warm-up format), one request per
    example row, from a dict of string arrays [n, ...] of the user features."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    n = min(records, len(next(iter(examples.values()))))
    out = []
    for i in range(n):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE)
        )
        for name in USER_FEATURE_NAMES:
            request.inputs[name].CopyFrom(tf.make_tensor_proto(examples[name][i : i + 1]))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        out.append(log.SerializeToString())
    return out


def write_warmup(saved_model_dir: str, records: list[bytes]) -> str:
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    return path


def sample_user_features(data_dir: str, n: int = WARMUP_RECORDS) -> dict:
    """The user features of the first `n` test examples (else training examples) as numpy
    string arrays: real requests, as a tokenizer in front of the tower would build them."""
    from features.spec import parse_examples
    from model.data import split_files

    for split in ("test", "train"):
        try:
            files = split_files(data_dir, split)
        except FileNotFoundError:
            continue
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n).batch(n)
        for batch in ds:
            parsed = parse_examples(batch, USER_FEATURE_NAMES)
            return {k: v.numpy() for k, v in parsed.items()}
    raise FileNotFoundError(f"no test or train examples under {data_dir} to build warm-up requests from")


def export_towers(model_dir: str, data_dir: str, out_dir: str, checkpoint: str | None = None) -> dict:
    """Writes OUT/user_tower and OUT/item_tower; returns what the manifest needs."""
    from model.data import vocab_dir
    from model.lookup import Lookup
    from model.rundir import load_trained, restore

    model, config, path, step = restore(model_dir, data_dir, checkpoint)
    _, info = load_trained(model_dir)
    lookup = Lookup(vocab_dir(data_dir), config)
    save_tower(ServingTower(model.user_tower, lookup, USER_FEATURE_NAMES, USER_OUTPUT), os.path.join(out_dir, USER_TOWER))
    save_tower(ServingTower(model.item_tower, lookup, ITEM_INPUTS, ITEM_OUTPUT), os.path.join(out_dir, ITEM_TOWER))
    sample = sample_user_features(data_dir)
    write_warmup(os.path.join(out_dir, USER_TOWER), warmup_requests(sample))
    return {
        "checkpoint": path,
        "step": step,
        "config": json.loads(config.to_json()),
        "embedding_dim": config.embedding_dim,
        "model": config.model,
        "weights_sha256": info.get("weights_sha256"),
        "table_sizes": lookup.table_sizes,
        "warmup_records": len(next(iter(sample.values()))),
    }
