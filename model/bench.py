"""Model benchmark at the paper's dimensions: training and user-tower throughput, FLOPs
per example from TensorFlow's profiler, and how close that is to this CPU's matmul peak.

    make bench-model                      # python -m model.bench
    python -m model.bench --items 200000 --rounds 3   # lighter

d = 128, batch 256, the sequence lengths of features.spec (query 32/32/12 tokens, 10
earlier queries x 8 words, behaviours 50/100/100, titles 32), 512 random negatives and 684
hard negatives, embedding tables of realistic size (default 1M items). Inputs are random
ids with realistic fill (sequences partly padded), so the arithmetic matches real batches.

FLOPs come from `tf.compat.v1.profiler` on the concrete function's graph (registered
`flops` statistics: MatMul, BatchMatMul, element-wise arithmetic, reductions). The
profiler cannot look inside while loops, so the counted graph uses the unrolled LSTM
(`lstm_unroll=True`, same maths); the default while-loop LSTM is timed as well.
Element-wise transcendental ops (exp, tanh, sigmoid) have no registered count, and the
optimiser's sparse row updates have a data-dependent size the profiler skips ("ops no
flops stats due to incomplete shapes"), so the figures are a slight underestimate. The matmul peak is measured in the same run, on the
same threads, with large float32 square matmuls.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

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
    p = argparse.ArgumentParser(prog="python -m model.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=DEFAULT_VOCAB["item_id"], help="item-id vocabulary size")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (the median is reported)")
    p.add_argument("--infer-seconds", type=float, default=5.0, help="time budget per inference measurement")
    p.add_argument("--skip-while-loop", action="store_true", help="do not time the while-loop LSTM variant")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


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
    return out


def graph_flops(tf, concrete) -> int:
    """Total float operations of a concrete function's graph per TensorFlow's profiler."""
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(tf.compat.v1.profiler.profile(concrete.graph, options=opts).total_float_ops)


def time_calls(fn, min_calls: int, seconds: float) -> tuple[float, int]:
    """Seconds per call (after one warm-up call), at least `min_calls` calls or `seconds`."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def matmul_peak(tf, seconds: float = 3.0) -> dict:
    """Best float32 GFLOP/s of square matmuls (the CPU's practical peak for this work)."""
    best = {"gflops": 0.0}
    for n in (1024, 2048, 3072):
        a = tf.random.normal([n, n])
        b = tf.random.normal([n, n])
        f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
        per_call, calls = time_calls(lambda: f().numpy(), 3, seconds / 3)
        gflops = 2 * n**3 / per_call / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": gflops, "n": n, "calls": calls}
    return best


def build(tf, config, sizes):
    from model.mgdspr import build_model, make_optimizer

    model = build_model(config, sizes)
    model.compile(make_optimizer(config))
    model.optimizer.build(model.trainable_variables)  # slot variables now, not in the timed step
    return model


def train_step_fn(tf, model, batch):
    """The compiled training step for `batch`'s shapes."""
    return tf.function(model.train_step).get_concrete_function(batch)


def interleaved_steps(steps: dict, batch, rounds: int, per_round: int) -> dict:
    """Median seconds per step of each compiled step, timed in alternating rounds so that
    load from other processes on a shared machine hits every variant alike."""
    import statistics

    for fn in steps.values():  # warm-up
        fn(batch)["loss"].numpy()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                fn(batch)["loss"].numpy()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def infer_figures(tf, model, batches: dict, seconds: float) -> dict:
    out = {}
    for size, batch in batches.items():
        user = {k: v for k, v in batch.items() if not k.startswith("neg_")}
        fn = tf.function(lambda x: model.user_tower(x, training=False))
        concrete = fn.get_concrete_function(user)
        flops = graph_flops(tf, concrete)
        per_call, calls = time_calls(lambda: concrete(user).numpy(), 5, seconds)
        out[size] = {
            "seconds_per_call": per_call,
            "calls": calls,
            "examples_per_s": size / per_call,
            "flops_per_example": flops / size,
        }
    return out


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
    rows = sum(sizes.values())
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"machine: {machine()}; TensorFlow {tf.__version__}, {threads} intra-op threads")
    print(
        f"model: d={config.embedding_dim}, batch {config.batch_size}, {config.num_random_negatives} random + "
        f"{config.hard_negatives} hard negatives, {rows:,} embedding rows "
        f"({rows * config.embedding_dim * 4 / 2**30:.2f} GiB, as much again in AdaGrad slots)"
    )
    t0 = time.perf_counter()
    peak = matmul_peak(tf)

    train_batch = random_batch(tf, config, config.batch_size, 0, sizes)
    model = build(tf, config, sizes)
    steps = {"unrolled": train_step_fn(tf, model, train_batch)}
    train_flops = graph_flops(tf, steps["unrolled"]) / config.batch_size
    infer = infer_figures(
        tf, model, {1: random_batch(tf, config, 1, 1, sizes), config.batch_size: train_batch}, args.infer_seconds
    )
    if not args.skip_while_loop:
        loop_model = build(tf, config.replace(lstm_unroll=False), sizes)
        steps["while_loop"] = train_step_fn(tf, loop_model, train_batch)
    per_step = interleaved_steps(steps, train_batch, args.rounds, args.train_steps)
    end_peak = matmul_peak(tf)
    peak = max(peak, end_peak, key=lambda p: p["gflops"])
    train = {
        name: {"seconds_per_step": sec, "examples_per_s": config.batch_size / sec, "flops_per_example": train_flops}
        for name, sec in per_step.items()
    }

    print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s (float32 {peak['n']}x{peak['n']}, best of start and end)")
    print()
    print(f"{'measurement':<30} {'examples/s':>11} {'MFLOP/example':>14} {'GFLOP/s':>9} {'% of peak':>10}")
    labels = {"unrolled": "train step (unrolled LSTM)", "while_loop": "train step (while-loop LSTM)"}
    table = [(labels[k], v) for k, v in train.items()] + [(f"user tower, batch {b}", v) for b, v in infer.items()]
    for name, fig in table:
        # The while-loop graph does the same arithmetic as the unrolled one it is credited with.
        g = fig["examples_per_s"] * fig["flops_per_example"] / 1e9
        fig["gflops_per_s"] = g
        print(
            f"{name:<30} {fig['examples_per_s']:>11.1f} {fig['flops_per_example'] / 1e6:>14.1f} "
            f"{g:>9.2f} {100 * g / peak['gflops']:>9.1f}%"
        )
    b1, bn = infer[1], infer[config.batch_size]
    print()
    if "while_loop" in train:
        ratio = train["while_loop"]["examples_per_s"] / train["unrolled"]["examples_per_s"]
        print(f"while-loop / unrolled LSTM training throughput: {ratio:.2f}x")
    print(
        f"user tower batch {config.batch_size} / batch 1 throughput: "
        f"{bn['examples_per_s'] / b1['examples_per_s']:.1f}x; batch-1 latency {1000 * b1['seconds_per_call']:.1f} ms"
    )
    print(f"training / inference FLOPs per example: {train_flops / bn['flops_per_example']:.2f}x")
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "matmul_peak": peak,
                    "train": train,
                    "user_tower": {str(k): v for k, v in infer.items()},
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
