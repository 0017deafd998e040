"""The training input pipeline: gzipped TFRecords -> id batches for the sampled softmax.

One element per step is ONE dict:

    user features      query_chars [b, 32], ..., rt_item_id [b, 50], ...   (int64 ids)
    positive item      item_id [b], title_words [b, 32], leaf_cat [b], ...  (int64 ids)
    random negatives   neg_item_id [n], neg_title_words [n, 32], ...        (int64 ids)
    item_log_q         [b] float32: log of the positive's share of training positives,
                       i.e. of its chance to show up as an in-batch negative
    neg_item_log_q     [n] float32: the same for the random items
                       (both only with exact item ids; with hashed or pre-mapped ones
                       the model looks them up by row, see `row_log_q`)

b = batch size, n = `config.num_random_negatives` (random catalog items from `OUT/items/`).
Strings are mapped to ids by `model.lookup.Lookup` inside the pipeline, so under a
parameter-server strategy the tables live with each worker's input pipeline.
"""
from __future__ import annotations

import glob
import math
import os

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.io import exists, join, read_lines
from features.spec import ITEM_FEATURE_NAMES, SAMPLED_ITEM_PREFIX, USER_FEATURE_NAMES, parse_examples

ITEM_FREQ_FILE = "item_freq.tsv"
LOG_Q = "item_log_q"
TRAIN_FEATURES = USER_FEATURE_NAMES + ITEM_FEATURE_NAMES
SHUFFLE_BUFFER = 20_000


def split_files(data_dir: str, split: str) -> list[str]:
    """The gzipped TFRecord shards of `split` (train, test or items) under a processed dir."""
    pattern = os.path.join(data_dir, split, "*.tfrecord.gz")
    files = sorted(tf.io.gfile.glob(pattern) if "://" in data_dir else glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} files; run `ebr preprocess` to make {data_dir}")
    return files


def vocab_dir(data_dir: str) -> str:
    return join(data_dir, "vocab")


def count_records(files: list[str]) -> int:
    """Records in gzipped TFRecord files (a full read; used once to size epochs)."""
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def item_freqs(path: str):
    """(item_id, count) of each line of `item_freq.tsv` (item_id \\t count); a malformed
    line is an error naming it."""
    for n, line in enumerate(read_lines(path), 1):
        key, sep, count = line.rpartition("\t")
        try:
            value = int(count)
        except ValueError:
            value = -1
        if not sep or not key or value < 0:
            raise ValueError(f"{path}:{n}: expected 'item_id<TAB>count', got {line!r}")
        yield key, value


def read_item_freq(path: str) -> tuple[int, int]:
    """(distinct items, total positives) of `item_freq.tsv`."""
    items = total = 0
    for _, value in item_freqs(path):
        items += 1
        total += value
    return items, total


def row_log_q(path: str, lookup, chunk: int = 1 << 20):
    """log q of every item-id row, float32 [1 + item_id_buckets], for item ids that are
    hashed or pre-mapped (`lookup`: a `model.lookup.Lookup` with item_ids "hash" or
    "integer"), where a string table of every item (`LogQ`) would not fit a worker.

    Each item's training-positive count goes to its row (items sharing a hashed row share
    its count, as they share its embedding); a row with none gets the log of one count, as
    in `LogQ`. Reads `item_freq.tsv` in chunks, so 10^8 items need only the array. The
    model keeps it in a non-trainable table sharded over the parameter servers
    (`MGDSPR.set_item_log_q`)."""
    import numpy as np

    if getattr(lookup, "item_ids", "vocab") == "vocab":
        raise ValueError("row_log_q is for hashed or pre-mapped item ids; exact ids use LogQ")
    if not exists(path):
        raise FileNotFoundError(f"no item frequencies at {path}; run `ebr preprocess` first")
    rows = 1 + lookup.item_id_buckets
    counts = np.zeros(rows, np.float64)
    keys, values = [], []

    def flush():
        ids = lookup.ids("item_id", tf.constant(keys)).numpy()
        counts[:] += np.bincount(ids, weights=values, minlength=rows)
        keys.clear()
        values.clear()

    for key, value in item_freqs(path):
        keys.append(key)
        values.append(value)
        if len(keys) >= chunk:
            flush()
    if keys:
        flush()
    total = counts.sum()
    if total <= 0:
        raise ValueError(f"{path}: no training positives counted")
    return (np.log(np.maximum(counts, 1.0)) - math.log(total)).astype(np.float32)


class LogQ(tf.Module):
    """log q(item): item's training-positive count over all training positives, from
    `item_freq.tsv`; items not in the file get the log of one count (they were never a
    positive, so they can only be rarer than the rarest that was)."""

    def __init__(self, path: str):
        super().__init__(name="log_q")
        if not exists(path):
            raise FileNotFoundError(f"no item frequencies at {path}; run `ebr preprocess` first")
        _, total = read_item_freq(path)
        if total <= 0:
            raise ValueError(f"{path}: no training positives counted")
        self.log_total = math.log(total)
        init = tf.lookup.TextFileInitializer(
            path, tf.string, 0, tf.int64, 1, delimiter="\t", name="item_freq_init"
        )
        self.table = tf.lookup.StaticHashTable(init, default_value=1, name="item_freq")

    def __call__(self, item_ids: tf.Tensor) -> tf.Tensor:
        counts = tf.cast(tf.maximum(self.table.lookup(item_ids), 1), tf.float32)
        return tf.math.log(counts) - self.log_total


def input_pipeline(input_context=None, num_workers: int = 0):
    """(pipelines, this pipeline's index) for sharding. Under a parameter-server strategy
    (`num_workers` > 0) every worker's dataset function gets the same input context (one
    pipeline, id 0), so the index is the worker's own, read when the function runs on that
    worker (a tensor): each worker then reads its own shard with its own seed. Otherwise
    the index comes from `input_context` (a horovod rank), or (1, 0) without one."""
    if num_workers > 0:
        return num_workers, tf.distribute.coordinator.experimental_get_current_worker_index()
    if input_context is not None:
        return input_context.num_input_pipelines, input_context.input_pipeline_id
    return 1, 0


def shuffled(ds: tf.data.Dataset, buffer: int, seed) -> tf.data.Dataset:
    """`ds.shuffle`, reshuffled every pass, with `seed` an int or a tensor (a worker's own)."""
    if not tf.is_tensor(seed):
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    # tf.data folds a tensor seed into the graph seed in Python, which fails when that is
    # 0; the worker's seed alone decides the order.
    graph = tf.compat.v1.get_default_graph()
    saved, graph.seed = graph.seed, None
    try:
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    finally:
        graph.seed = saved


def _records(files: list[str], pipeline: tuple, shuffle: bool, seed) -> tf.data.Dataset:
    """Serialized examples of `files`, sharded for input pipeline `pipeline` = (count, index):
    by file when there are enough files, else by record (every pipeline reads everything,
    keeps its share)."""
    n_pipes, pipe = pipeline
    ds = tf.data.Dataset.from_tensor_slices(files)
    by_file = n_pipes > 1 and len(files) >= n_pipes
    if by_file:
        ds = ds.shard(n_pipes, pipe)
    if shuffle:
        ds = shuffled(ds, len(files), seed)
    # In order even when shuffled: a seed then fixes the batches (the comparison's reruns
    # and paired seeds rest on it); the input pipeline is not what bounds a step.
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if n_pipes > 1 and not by_file:
        ds = ds.shard(n_pipes, pipe)
    return ds


def sampled_items(data_dir: str, num: int, lookup, seed=None, log_q=None) -> tf.data.Dataset:
    """An endless stream of batches of `num` random catalog items, features prefixed `neg_`
    (ids). Uniform over the whole catalog: shuffled, repeated, batched. Not sharded: every
    worker samples from every item (with its own seed), so no worker's negatives are biased
    towards part of the catalog."""
    files = split_files(data_dir, "items")
    ds = _records(files, (1, 0), True, seed)
    ds = shuffled(ds, SHUFFLE_BUFFER, seed).repeat()
    ds = ds.batch(num, drop_remainder=True)

    def parse(serialized):
        raw = parse_examples(serialized, ITEM_FEATURE_NAMES)
        out = {SAMPLED_ITEM_PREFIX + k: v for k, v in lookup(raw).items()}
        if log_q is not None:  # their popularity, for the log-Q of the two samplers' union
            out[SAMPLED_ITEM_PREFIX + LOG_Q] = log_q(raw["item_id"])
        return out

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def make_dataset(
    data_dir: str,
    config,
    input_context=None,
    split: str = "train",
    batch_size: int | None = None,
    repeat: bool = True,
    shuffle: bool = True,
    with_log_q: bool = True,
    num_workers: int = 0,
) -> tf.data.Dataset:
    """Training batches (see the module docstring) for one input pipeline.

    `input_context`: a `tf.distribute.InputContext` (per rank under horovod) to shard the
    files; `num_workers` > 0: this is one of that many parameter-server workers, sharded and
    seeded by the index of the worker it runs on (see `input_pipeline`). `batch_size`
    defaults to the per-replica share of `config.batch_size`. Call inside a
    `DatasetCreator` function so that the lookup tables are created on the worker that
    reads the data."""
    from model.lookup import Lookup

    if batch_size is None:
        batch_size = (
            input_context.get_per_replica_batch_size(config.batch_size) if input_context else config.batch_size
        )
    pipeline = input_pipeline(input_context, num_workers)
    # A different order and different random negatives per worker or rank.
    seed = config.seed + 1000 * pipeline[1]
    lookup = Lookup(vocab_dir(data_dir), config)
    # Hashed or pre-mapped item ids: the model looks log q up itself (MGDSPR.item_log_q),
    # with no string table of every item on the worker.
    exact = getattr(config, "item_ids", "vocab") == "vocab"
    log_q = LogQ(join(vocab_dir(data_dir), ITEM_FREQ_FILE)) if with_log_q and exact else None

    ds = _records(split_files(data_dir, split), pipeline, shuffle, seed)
    if shuffle:
        ds = shuffled(ds, SHUFFLE_BUFFER, seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)

    def parse(serialized):
        feats = parse_examples(serialized, TRAIN_FEATURES)
        out = lookup(feats)
        if log_q is not None:
            out[LOG_Q] = log_q(feats["item_id"])
        return out

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if config.num_random_negatives > 0:
        negs = sampled_items(data_dir, config.num_random_negatives, lookup, seed, log_q)
        ds = tf.data.Dataset.zip((ds, negs)).map(lambda a, b: {**a, **b})
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_fn(data_dir: str, config, **kwargs):
    """A `DatasetCreator` function: `fn(input_context) -> make_dataset(...)`; pass
    `num_workers` under a parameter-server strategy (see `make_dataset`)."""

    def fn(input_context=None):
        return make_dataset(data_dir, config, input_context, **kwargs)

    return fn
