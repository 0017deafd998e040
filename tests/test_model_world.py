"""MGDSPR on real preprocessing output: a tiny synthetic world, preprocessed by the Beam
job, looked up, fed to the towers, trained."""
import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from features.spec import ITEM_FEATURE_NAMES, SAMPLED_ITEM_PREFIX, USER_FEATURE_NAMES, parse_examples
from model.config import MGDSPRConfig
from model.lookup import Lookup
from model.mgdspr import build_model, make_optimizer

SEED = 3
TINY = dict(embedding_dim=16, num_heads=2, transformer_ff_dim=32, batch_size=32, num_random_negatives=32,
            hard_negatives=16, seed=SEED)


def load_world(out: str) -> dict:
    """The preprocessed world as id tensors: train/test examples and the catalog."""
    lookup = Lookup(os.path.join(out, "vocab"))

    def load(split, names):
        files = sorted(glob.glob(os.path.join(out, split, "*.tfrecord.gz")))
        records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
        assert records, f"no {split} examples"
        ids = lookup(parse_examples(tf.constant(records), names))
        return {k: v for k, v in ids.items() if v.dtype != tf.string}

    return {
        "dir": out,
        "lookup": lookup,
        "train": load("train", USER_FEATURE_NAMES + ITEM_FEATURE_NAMES),
        "test": load("test", USER_FEATURE_NAMES + ITEM_FEATURE_NAMES),
        "items": load("items", ITEM_FEATURE_NAMES),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline import preprocess, synth

    root = tmp_path_factory.mktemp("world")
    raw, out = str(root / "raw"), str(root / "processed")
    synth.generate(raw, "tiny", SEED, progress=False)
    preprocess.run(raw, out, pipeline=TestPipeline(), quiet=True)
    return load_world(out)


def take(feats, idx):
    return {k: tf.gather(v, idx) for k, v in feats.items()}


def test_user_tower_on_a_preprocessed_batch(world):
    batch = take(world["train"], tf.range(64))
    # The batch exercises every branch: queries, earlier queries and all three histories.
    for name in ("query_words", "query_chars", "query_bigrams", "his_queries", "rt_item_id", "st_item_id", "lt_item_id"):
        assert int(tf.math.count_nonzero(batch[name])) > 0, name
    assert batch["his_queries"].shape[1:] == (10, 8)
    model = build_model(MGDSPRConfig(**TINY), world["lookup"].table_sizes)
    users = model.user_tower(batch, training=False).numpy()
    items = model.item_tower(batch, training=False).numpy()
    assert users.shape == (64, 16) and items.shape == (64, 16)
    assert np.all(np.isfinite(users)) and np.all(np.isfinite(items))
    # Different searches get different vectors.
    assert len({tuple(np.round(u, 4)) for u in users}) > 32


def batches(world, cfg, seed):
    """Random training batches with `cfg.num_random_negatives` uniform catalog items."""
    rng = np.random.default_rng(seed)
    n_train = int(world["train"]["item_id"].shape[0])
    n_items = int(world["items"]["item_id"].shape[0])
    while True:
        batch = take(world["train"], rng.choice(n_train, cfg.batch_size, replace=False))
        negatives = take(world["items"], rng.choice(n_items, cfg.num_random_negatives, replace=False))
        batch.update({SAMPLED_ITEM_PREFIX + k: v for k, v in negatives.items()})
        yield batch


def dataset(world, cfg, seed=0):
    first = next(batches(world, cfg, seed))
    spec = {k: tf.TensorSpec([None] + v.shape[1:], v.dtype) for k, v in first.items()}
    return tf.data.Dataset.from_generator(lambda: batches(world, cfg, seed), output_signature=spec)


def recall_at(model, world, k=10):
    """Recall@k of the test searches against the whole catalog."""
    users = model.user_tower(world["test"], training=False).numpy()
    items = model.item_tower(world["items"], training=False).numpy()
    top = np.argsort(-(users @ items.T), axis=1)[:, :k]
    catalog_ids = world["items"]["item_id"].numpy()
    truth = world["test"]["item_id"].numpy()
    return float(np.mean([t in catalog_ids[row] for t, row in zip(truth, top)])), k / len(catalog_ids)


def test_a_few_hundred_steps_lower_the_loss_and_lift_recall_above_chance(world):
    tf.keras.utils.set_random_seed(SEED)
    cfg = MGDSPRConfig(**TINY)
    model = build_model(cfg, world["lookup"].table_sizes)
    model.compile(make_optimizer(cfg))
    before, chance = recall_at(model, world)
    history = model.fit(dataset(world, cfg), steps_per_epoch=50, epochs=6, verbose=0).history["loss"]
    after, _ = recall_at(model, world)
    # Keras reports each epoch's mean loss: the last epoch's must be well below the first's.
    assert history[-1] < 0.85 * history[0], history
    assert after > 4 * chance and after > before + 0.1, (before, after, chance)


def test_the_alpha_dnn_baseline_trains_with_the_same_loss(world):
    tf.keras.utils.set_random_seed(SEED)
    cfg = MGDSPRConfig(**TINY, model="mlp", mlp_hidden_units=(32,))
    model = build_model(cfg, world["lookup"].table_sizes)
    model.compile(make_optimizer(cfg))
    history = model.fit(dataset(world, cfg, seed=1), steps_per_epoch=40, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0], history
    after, chance = recall_at(model, world)
    assert after > 2 * chance, (after, chance)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def train_under_parameter_server_strategy(out: str) -> list[float]:
    """In-process cluster: 2 workers, 2 parameter servers, tables split by a partitioner.
    Returns the per-epoch losses."""
    world = load_world(out)
    ports = _free_ports(4)
    spec = tf.train.ClusterSpec(
        {"worker": [f"localhost:{p}" for p in ports[:2]], "ps": [f"localhost:{p}" for p in ports[2:]]}
    )
    # Each worker needs more inter-op threads than workers, or small machines deadlock.
    worker_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=3)
    servers = [  # noqa: F841  (kept alive while training)
        tf.distribute.Server(spec, job_name=job, task_index=i, protocol="grpc",
                             config=worker_config if job == "worker" else None, start=True)
        for job in ("worker", "ps") for i in range(2)
    ]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=4096, max_shards=2)
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    cfg = MGDSPRConfig(**TINY)
    with strategy.scope():
        model = build_model(cfg, world["lookup"].table_sizes)
        model.compile(make_optimizer(cfg))
    table = model.embeddings.tables["item_id"].embeddings
    assert len(table.variables) == 2, "the item table is not sharded over both parameter servers"

    def dataset_fn(input_context):
        return dataset(world, cfg, seed=input_context.input_pipeline_id)

    return model.fit(
        tf.keras.utils.experimental.DatasetCreator(dataset_fn), steps_per_epoch=30, epochs=3, verbose=0
    ).history["loss"]


@pytest.mark.slow
def test_trains_under_parameter_server_strategy_with_sharded_tables(world):
    # A separate process: connecting to a cluster changes TensorFlow's global context.
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_model_world as t; "
        "print('LOSSES', json.dumps(t.train_under_parameter_server_strategy(sys.argv[2])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(__file__), world["dir"]],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOSSES ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    history = json.loads(lines[-1][len("LOSSES "):])
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history
