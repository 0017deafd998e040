"""Model benchmark at the paper's dimensions: training and user-tower throughput, FLOPs
per example from TensorFlow's profiler, and how close that is to this CPU's matmul peak.

    make bench-model                      # python -m benchmarks.model
    python -m benchmarks.model --items 200000 --rounds 3   # lighter

d = 128, batch 256, the sequence lengths of features.spec (query 32/32/12 tokens, 10
earlier queries x 8 words, behaviours 50/100/100, titles 32), 512 random negatives and 684
hard negatives, embedding tables of realistic size (default 1M items). Inputs are random
ids with realistic fill (sequences partly padded), so the arithmetic matches real batches.

FLOPs come from `tf.compat.v1.profiler` on the concrete function's graph (registered
`flops` statistics: MatMul, BatchMatMul, element-wise arithmetic, reductions). The
profiler cannot look inside while loops, so the counted graph uses the unrolled LSTM
(`lstm_unroll=True`, same maths); the model as built (model.fast's LSTM loop and
distinct-id lookups) is timed as well, and for reference the Keras layers it replaced
(RNN(LSTMCell) loop, one gather per looked-up id).
Element-wise transcendental ops (exp, tanh, sigmoid) have no registered count, and the
optimiser's sparse row updates have a data-dependent size the profiler skips ("ops no
flops stats due to incomplete shapes"), so the figures are a slight underestimate.

The matmul peak (large float32 square matmuls) is timed in the same rounds as the model,
alternating with it, so that a machine shared with other jobs slows both alike; medians
over the rounds are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tqdm import tqdm

from benchmarks.machine import summary

# Vocabulary sizes of a large shop (rows before mask and OOV buckets).
DEFAULT_VOCAB = {
    "item_id": 1_000_000,
    "word": 200_000,
    "bigram": 300_000,
    "char": 10_000,
    "shop": 100_000,
    "brand": 50_000,
    "leaf_cat": 5_000,
    "top_cat": 200,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=DEFAULT_VOCAB["item_id"], help="item-id vocabulary size")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=3, help="training steps per timing round")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (the median is reported)")
    p.add_argument("--xla", action="store_true",
                   help="also time the as-built training step compiled with XLA (jit_compile=True)")
    p.add_argument("--skip-keras", action="store_true",
                   help="do not time the reference with the Keras layers model.fast replaced")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def random_batch(tf, config, batch: int, seed: int, sizes: dict) -> dict:
    """Ids shaped like a training batch: every sequence filled to a random length."""
    import numpy as np

    from features.spec import FEATURES, ITEM_FEATURES, MAX_HIS_QUERY_WORDS, SAMPLED_ITEM_PREFIX, USER_FEATURES

    rng = np.random.default_rng(seed)
    out = {}

    def ids(name, shape):
        vocab = FEATURES[name].vocab
        values = rng.integers(1, sizes[vocab], size=shape)
        if len(shape) >= 2:  # fill the front of each sequence, pad the rest
            keep = rng.integers(1, shape[-1] + 1, size=shape[:-1])
            values = np.where(np.arange(shape[-1]) < keep[..., None], values, 0)
        return tf.constant(values, tf.int64)

    for f in USER_FEATURES + ITEM_FEATURES:
        shape = [batch] + list(f.shape) + ([MAX_HIS_QUERY_WORDS] if f.name == "his_queries" else [])
        out[f.name] = ids(f.name, shape)
    for f in ITEM_FEATURES:
        out[SAMPLED_ITEM_PREFIX + f.name] = ids(f.name, [config.num_random_negatives] + list(f.shape))
    out["item_log_q"] = tf.constant(rng.uniform(-12, -4, size=[batch]).astype("float32"))
    out[SAMPLED_ITEM_PREFIX + "item_log_q"] = tf.constant(
        rng.uniform(-12, -4, size=[config.num_random_negatives]).astype("float32"))
    return out


def graph_flops(tf, concrete) -> int:
    """Total float operations of a concrete function's graph per TensorFlow's profiler."""
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(tf.compat.v1.profiler.profile(concrete.graph, options=opts).total_float_ops)


def matmul_fn(tf, n: int):
    """A compiled float32 [n, n] x [n, n] matmul; 2 n^3 FLOPs per call."""
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    return lambda: f().numpy()


def matmul_size(tf) -> int:
    """The square size with the best GFLOP/s on this CPU (a short scan)."""
    best, best_n = 0.0, 1024
    for n in (1024, 2048, 3072):
        fn = matmul_fn(tf, n)
        fn()
        start = time.perf_counter()
        for _ in range(3):
            fn()
        gflops = 3 * 2 * n**3 / (time.perf_counter() - start) / 1e9
        if gflops > best:
            best, best_n = gflops, n
    return best_n


def build(tf, config, sizes, keras_layers: bool = False):
    """The model compiled with the paper's optimiser; `keras_layers`: with the Keras layers
    model.fast replaced swapped in before it is built (RNN(LSTMCell) as a while loop, one
    gather per looked-up id; same maths, docs/scale.md)."""
    from model.fast import keras_lstm
    from model.mgdspr import MGDSPR, build_model, make_optimizer

    if keras_layers:
        model = MGDSPR(config, sizes)
        tables = model.embeddings.tables
        model.embeddings.lookup = lambda vocab, ids: tables[vocab](ids)
        real_time = model.user_tower.real_time
        real_time.lstms = [keras_lstm(config.embedding_dim, f"lstm_{i}") for i in range(len(real_time.lstms))]
        dummy = model.dummy_inputs()
        model.user_tower(dummy, training=False)
        model.item_tower(dummy, training=False)
    else:
        model = build_model(config, sizes)
    model.compile(make_optimizer(config))
    model.optimizer.build(model.trainable_variables)  # slot variables now, not in the timed step
    return model


def interleaved(measures: dict, rounds: int) -> dict:
    """Median seconds per call of each `name -> (fn, calls per round)`, timed in
    alternating rounds: load from other processes on a shared machine then hits every
    measurement, the matmul peak included, alike, and their ratios stay meaningful."""
    import statistics

    for fn, _ in measures.values():  # warm-up (and tracing)
        fn()
    times = {name: [] for name in measures}
    for _ in tqdm(range(rounds), desc="timing rounds", leave=False):
        for name, (fn, calls) in measures.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import features  # noqa: F401
    import tensorflow as tf

    from features.vocab import VOCABS
    from model.config import MGDSPRConfig

    tf.get_logger().setLevel("ERROR")
    vocab = dict(DEFAULT_VOCAB, item_id=args.items)
    sizes = {name: 1 + n + VOCABS[name].oov_buckets for name, n in vocab.items()}
    config = MGDSPRConfig(embedding_dim=args.embedding_dim, batch_size=args.batch_size, lstm_unroll=True)
    b = config.batch_size
    rows = sum(sizes.values())
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"machine: {summary()}; TensorFlow {tf.__version__}, {threads} intra-op threads")
    print(
        f"model: d={config.embedding_dim}, batch {b}, {config.num_random_negatives} random + "
        f"{config.hard_negatives} hard negatives, {rows:,} embedding rows "
        f"({rows * config.embedding_dim * 4 / 2**30:.2f} GiB, as much again in AdaGrad slots)"
    )
    t0 = time.perf_counter()

    train_batch = random_batch(tf, config, b, 0, sizes)
    users = {
        size: {k: v for k, v in batch.items() if not k.startswith("neg_")}
        for size, batch in ((1, random_batch(tf, config, 1, 1, sizes)), (b, train_batch))
    }
    model = build(tf, config, sizes)
    step = tf.function(model.train_step).get_concrete_function(train_batch)
    user_fn = tf.function(lambda x: model.user_tower(x, training=False))
    towers = {size: user_fn.get_concrete_function(x) for size, x in users.items()}
    flops = {"train_unrolled": graph_flops(tf, step) / b}
    flops.update({f"user_{size}": graph_flops(tf, fn) / size for size, fn in towers.items()})
    n = matmul_size(tf)
    measures = {
        "train_unrolled": (lambda: step(train_batch)["loss"].numpy(), args.train_steps),
        f"user_{b}": (lambda: towers[b](users[b]).numpy(), 4 * args.train_steps),
        "user_1": (lambda: towers[1](users[1]).numpy(), 50 * args.train_steps),
        "matmul": (matmul_fn(tf, n), 5),
    }
    built_model = build(tf, config.replace(lstm_unroll=False), sizes)
    built_step = tf.function(built_model.train_step).get_concrete_function(train_batch)
    measures["train_built"] = (lambda: built_step(train_batch)["loss"].numpy(), args.train_steps)
    # Same arithmetic as the unrolled graph; the profiler just cannot count inside the loop.
    flops["train_built"] = flops["train_unrolled"]
    if not args.skip_keras:
        keras_model = build(tf, config.replace(lstm_unroll=False), sizes, keras_layers=True)
        keras_step = tf.function(keras_model.train_step).get_concrete_function(train_batch)
        measures["train_keras"] = (lambda: keras_step(train_batch)["loss"].numpy(), args.train_steps)
        flops["train_keras"] = flops["train_unrolled"]
    if args.xla:
        xla_model = build(tf, config.replace(lstm_unroll=False), sizes)
        xla_step = tf.function(xla_model.train_step, jit_compile=True)
        started = time.perf_counter()
        xla_step(train_batch)["loss"].numpy()
        print(f"XLA compiled the training step in {time.perf_counter() - started:.0f} s")
        measures["train_xla"] = (lambda: xla_step(train_batch)["loss"].numpy(), args.train_steps)
        flops["train_xla"] = flops["train_unrolled"]
    seconds = interleaved(measures, args.rounds)
    peak = 2 * n**3 / seconds.pop("matmul") / 1e9
    examples = {"train_unrolled": b, "train_built": b, "train_keras": b, "train_xla": b, f"user_{b}": b, "user_1": 1}
    figures = {}
    for name, sec in seconds.items():
        per_s = examples[name] / sec
        gflops = per_s * flops[name] / 1e9
        figures[name] = {
            "seconds_per_call": sec,
            "examples_per_s": per_s,
            "flops_per_example": flops[name],
            "gflops_per_s": gflops,
            "share_of_peak": gflops / peak,
        }

    print(f"matmul peak: {peak:.1f} GFLOP/s (float32 {n}x{n}, median of the same timing rounds)")
    print()
    print(f"{'measurement':<30} {'examples/s':>11} {'MFLOP/example':>14} {'GFLOP/s':>9} {'% of peak':>10}")
    labels = {
        "train_unrolled": "train step (unrolled LSTM)",
        "train_built": "train step (as built)",
        "train_keras": "train step (Keras layers)",
        "train_xla": "train step (as built, XLA)",
        f"user_{b}": f"user tower, batch {b}",
        "user_1": "user tower, batch 1",
    }
    for name, label in labels.items():
        if name in figures:
            fig = figures[name]
            print(
                f"{label:<30} {fig['examples_per_s']:>11.1f} {fig['flops_per_example'] / 1e6:>14.1f} "
                f"{fig['gflops_per_s']:>9.2f} {100 * fig['share_of_peak']:>9.1f}%"
            )
    print()
    ratio = figures["train_built"]["examples_per_s"] / figures["train_unrolled"]["examples_per_s"]
    print(f"as built (model.fast's LSTM loop) / unrolled LSTM training throughput: {ratio:.2f}x")
    if "train_keras" in figures:
        ratio = figures["train_built"]["examples_per_s"] / figures["train_keras"]["examples_per_s"]
        print(f"as built / with the Keras layers model.fast replaced, training throughput: {ratio:.2f}x")
    if "train_xla" in figures:
        ratio = figures["train_xla"]["examples_per_s"] / figures["train_built"]["examples_per_s"]
        print(f"as built with XLA / as built, training throughput: {ratio:.2f}x")
    for name in ("train_built", "train_keras", "train_xla"):
        if name in figures:
            share = figures[name]["share_of_peak"]
            print(f"{labels[name]}: {100 * share:.0f}% of the matmul peak (goal >= 50%: "
                  f"{'met' if share >= 0.5 else 'not met'})")
    b1, bn = figures["user_1"], figures[f"user_{b}"]
    print(
        f"user tower batch {b} / batch 1 throughput: {bn['examples_per_s'] / b1['examples_per_s']:.1f}x; "
        f"batch-1 latency {1000 * b1['seconds_per_call']:.1f} ms"
    )
    print(f"training / inference FLOPs per example: {flops['train_unrolled'] / bn['flops_per_example']:.2f}x")
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            report = {"machine": summary(), "matmul_peak_gflops": peak, "matmul_n": n, "figures": figures}
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
