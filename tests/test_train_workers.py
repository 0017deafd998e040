"""Parameter-server workers read distinct streams: on a real in-process cluster (gRPC
servers), each worker's iterator, built as `model.fit` builds it, is recorded on that
worker; the two hold different batches and disjoint shards that together are the
training set, and draw different random negatives.

The cluster runs in a child interpreter (this file run as a script): a process that has
coordinated a cluster keeps its eager context bound to it, which later tests must not share."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Tiny model config: only the input pipeline is exercised.
SMALL = ["embedding_dim=16", "num_heads=2", "transformer_ff_dim=32", "batch_size=100",
         "num_random_negatives=8", "hard_negatives=16"]
KEY_FEATURES = ("item_id", "query_words", "rt_item_id")


def _keys(tf, batch):
    """[b, k] int64: the positive item, query words and real-time behaviours of each example."""
    return tf.concat([tf.reshape(batch[f], [tf.shape(batch[f])[0], -1]) for f in KEY_FEATURES], axis=1)


def record_worker_streams(data: str, out: str) -> tuple:
    """Runs the two-worker cluster and saves what each worker's iterator gave to `out` (.npz).
    Returns the coordinator and the remote function, which the caller keeps until it exits."""
    import features  # noqa: F401
    import numpy as np
    import tensorflow as tf

    from model.cluster import parameter_server_strategy, start_local_cluster
    from model.config import load_config
    from model.data import dataset_fn

    config = load_config(None, SMALL)
    examples = json.loads(Path(data, "stats.json").read_text())["examples_train"]
    # Enough steps for every worker to pass over its half of the data at least twice.
    steps = 4 * examples // config.batch_size + 1

    strategy = parameter_server_strategy(start_local_cluster(num_workers=2, num_ps=1))
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    creator = tf.keras.utils.experimental.DatasetCreator(dataset_fn(data, config, num_workers=2))
    # As model.fit does with a DatasetCreator under a ParameterServerStrategy.
    per_worker = coordinator.create_per_worker_dataset(
        lambda: strategy.distribute_datasets_from_function(creator, options=creator.input_options))
    iterators = iter(per_worker)

    @tf.function
    def record(iterator):
        batch = next(iterator)
        return tf.distribute.coordinator.experimental_get_current_worker_index(), _keys(tf, batch), batch["neg_item_id"]

    # Each call runs once on every worker, with that worker's own iterator (the per-worker
    # slice); one batch a call keeps every remote call short.
    calls = [coordinator._create_per_worker_resources(record, args=(iterators,)) for _ in range(steps)]
    fetched = [[tuple(np.asarray(v) for v in r.fetch()) for r in call._values] for call in calls]
    recorded = [(fetched[0][w][0], np.stack([f[w][1] for f in fetched]), np.stack([f[w][2] for f in fetched]))
                for w in range(2)]
    np.savez(out, **{f"{name}{i}": value for i, r in enumerate(recorded)
                     for name, value in zip(("worker", "keys", "negatives"), r)})
    return coordinator, record


def test_parameter_server_workers_read_distinct_streams(tiny_world, tmp_path):
    import features  # noqa: F401
    import numpy as np
    import tensorflow as tf

    from model.config import load_config
    from model.data import make_dataset

    data = tiny_world[1]
    config = load_config(None, SMALL)
    examples = json.loads(Path(data, "stats.json").read_text())["examples_train"]
    whole = make_dataset(data, config, batch_size=examples, repeat=False, shuffle=False, with_log_q=False)
    everything = Counter(tuple(row) for row in _keys(tf, next(iter(whole))).numpy().tolist())

    out = tmp_path / "streams.npz"
    run = subprocess.run([sys.executable, __file__, str(data), str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    saved = np.load(out)
    recorded = [tuple(saved[f"{name}{i}"] for name in ("worker", "keys", "negatives")) for i in range(2)]

    assert [int(w) for w, _, _ in recorded] == [0, 1]
    seen = [{tuple(row) for batch in keys for row in batch.tolist()} for _, keys, _ in recorded]
    # Different batches: no batch of one worker is a batch of the other.
    batches = [{tuple(map(tuple, batch.tolist())) for batch in keys} for _, keys, _ in recorded]
    assert not batches[0] & batches[1]
    # Shards that together are the training set and share only examples the data holds
    # more than once (the same search, click and history in both files).
    assert seen[0] | seen[1] == set(everything)
    repeated = {key for key, count in everything.items() if count > 1}
    assert seen[0] - repeated and seen[1] - repeated and seen[0] & seen[1] <= repeated
    # Different random negatives (each worker's own seed).
    negatives = [neg for _, _, neg in recorded]
    assert (negatives[0] != negatives[1]).any(axis=1).all()


if __name__ == "__main__":
    import faulthandler
    import os

    faulthandler.dump_traceback_later(240, exit=True)  # a hang prints every thread's stack
    # Deleting a function registered on the in-process workers can block for good (seen on
    # one core, about one run in ten), and the servers cannot be stopped: keep the function
    # alive and leave without TensorFlow's teardown.
    alive = record_worker_streams(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
