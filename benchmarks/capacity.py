"""The capacity model of docs/scale.md: memory per parameter server, network bytes per step
per worker, the step rate the cluster must sustain and where the bottleneck is, for the
paper's cluster (10^8 items, d = 128, 20 ps, 100 workers, batch 256, AdaGrad, 35M steps in
54 hours), from formulas and from what is measured here.

    python -m benchmarks.capacity --data data                 # medium world (made if missing)
    python -m benchmarks.capacity --data data --model-json reports/bench_model.json --ps 40

Measured here, on one real training batch of the medium world through the model at the
given d: the embedding ids each vocabulary looks up per step and how many of them are
distinct (per lookup call and per step), the dense (non-embedding) weights, the LSTM's
weights and how many time steps it runs. With --model-json (written by `python -m
benchmarks.model --json`) the FLOPs per example too. Everything else is arithmetic, printed
with its formula.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

GB = 1e9
# Rows of the vocabularies other than item_id at Taobao's scale (assumptions, not from the
# paper): words, bigrams and characters of Chinese queries and titles, shops, brands, categories.
PAPER_VOCAB = {"word": 2_000_000, "bigram": 5_000_000, "char": 20_000, "shop": 10_000_000,
               "brand": 1_000_000, "leaf_cat": 10_000, "top_cat": 200}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data", help="data root: the medium world is DATA/medium/processed")
    p.add_argument("--items", type=float, default=1e8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ps", type=int, default=20)
    p.add_argument("--workers", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=float, default=35e6)
    p.add_argument("--hours", type=float, default=54)
    p.add_argument("--nic-gbit", type=float, default=25, help="network per machine, Gbit/s (default 25)")
    p.add_argument("--model-json", help="figures of benchmarks.model (FLOPs per example)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def measure_batch(processed: str, config) -> dict:
    """Per vocabulary, for one real batch through the model: ids looked up, distinct ids per
    lookup call (summed) and distinct ids over the whole step; plus dense and LSTM weights."""
    import numpy as np
    import tensorflow as tf

    from model.data import make_dataset
    from model.lookup import Lookup
    from model.mgdspr import build_model

    lookup = Lookup(f"{processed}/vocab", config)
    model = build_model(config, lookup.table_sizes)
    batch = next(iter(make_dataset(processed, config)))
    calls = defaultdict(list)
    tables = model.embeddings.tables

    def recording(vocab, ids):
        calls[vocab].append(np.asarray(ids).ravel())
        return tables[vocab](ids)

    model.embeddings.lookup = recording
    model.compute_loss(batch, training=True)
    per_vocab = {}
    for vocab, arrays in calls.items():
        real = [a[a != 0] for a in arrays]
        per_vocab[vocab] = {
            "ids": int(sum(a.size for a in arrays)),
            "distinct_per_call": int(sum(np.unique(a).size for a in arrays)),
            "distinct_per_step": int(np.unique(np.concatenate(real)).size),
        }
    embedding_vars = {id(t.embeddings) for t in tables.values()}
    lstm = [v for v in model.trainable_variables if "/lstm_" in v.name]
    rt_steps = int(tf.reduce_max(tf.reduce_sum(tf.cast(batch["rt_item_id"] != 0, tf.int32), axis=1)))
    return {
        "vocab": per_vocab,
        "dense_params": int(sum(v.shape.num_elements() for v in model.trainable_variables
                                if id(v) not in embedding_vars)),
        "lstm_params": int(sum(v.shape.num_elements() for v in lstm)),
        "lstm_steps": rt_steps,
        "table_rows": dict(lookup.table_sizes),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import features  # noqa: F401

    from benchmarks.machine import summary
    from features.spec import MAX_REALTIME
    from model.config import load_config
    from pipeline.prepare import prepare_data

    config = load_config(None, [f"embedding_dim={args.dim}", f"batch_size={args.batch}", *args.overrides])
    _, processed, _ = prepare_data(args.data, "medium", 7)
    m = measure_batch(processed, config)
    d, b, f32 = args.dim, args.batch, 4
    row = d * f32
    print(f"capacity model on {summary()}; measured on one batch of {processed} (d {d}, batch {b}, "
          f"{config.num_random_negatives} random negatives)")

    # -- measured per step ------------------------------------------------------------
    print(f"\n{'vocabulary':<10} {'ids/step':>10} {'distinct/call':>14} {'distinct/step':>14}")
    for vocab, v in sorted(m["vocab"].items()):
        print(f"{vocab:<10} {v['ids']:>10,} {v['distinct_per_call']:>14,} {v['distinct_per_step']:>14,}")
    ids = sum(v["ids"] for v in m["vocab"].values())
    per_call = sum(v["distinct_per_call"] for v in m["vocab"].values())
    per_step = sum(v["distinct_per_step"] for v in m["vocab"].values())
    print(f"{'all':<10} {ids:>10,} {per_call:>14,} {per_step:>14,}   "
          f"(distinct share per call {per_call / ids:.2f}, per step {per_step / ids:.2f})")
    dense = m["dense_params"] * f32
    # Real-time sessions at Taobao fill the feature's length; this world's are shorter.
    steps = max(m["lstm_steps"], MAX_REALTIME)
    lstm_loop = 2 * (steps - 1) * m["lstm_params"] * f32  # re-read every step, forward and backward
    print(f"dense weights {m['dense_params']:,} ({dense / 1e6:.1f} MB); LSTM weights {m['lstm_params']:,}; "
          f"the LSTM ran {m['lstm_steps']} time steps here, counted at {steps}")

    # -- network bytes per step per worker ----------------------------------------------
    items = m["vocab"]["item_id"]
    reads_all = ids * row
    reads_distinct = per_call * row
    grads = per_step * (row + 8)  # rows summed per id on the worker (+ int64 index)
    keras = reads_all + lstm_loop + 2 * dense + grads  # RNN(LSTMCell), one gather per lookup
    built = reads_distinct + 2 * dense + grads  # model.fast, as the towers are built
    # A 10^8-item catalog's long tail: assume every item id of a step distinct.
    tail = (items["ids"] - items["distinct_per_call"]) * row + (items["ids"] - items["distinct_per_step"]) * (row + 8)
    print("\nnetwork bytes per step per worker (rows of d float32 = "
          f"{row} B; reads + dense weights both ways + gradient rows):")
    print(f"  with Keras' layers (every lookup's row, LSTM weights read in the loop): "
          f"{reads_all / 1e6:.0f} + {lstm_loop / 1e6:.0f} + {2 * dense / 1e6:.0f} + {grads / 1e6:.0f} "
          f"= {keras / 1e6:.0f} MB")
    print(f"  as built, model.fast (distinct rows once, LSTM weights once): "
          f"{reads_distinct / 1e6:.0f} + {2 * dense / 1e6:.0f} + {grads / 1e6:.0f} = {built / 1e6:.0f} MB")
    print(f"  as built, every item id distinct (a long tail): {(built + tail) / 1e6:.0f} MB")

    # -- the paper's cluster ------------------------------------------------------------
    rate = args.steps / (args.hours * 3600)
    per_worker = rate / args.workers
    print(f"\npaper's cluster: {args.steps:.3g} steps in {args.hours:g} h = {rate:.0f} steps/s "
          f"= {per_worker:.2f} steps/s per worker ({1 / per_worker:.2f} s per step)")
    rows = dict(PAPER_VOCAB, item_id=int(args.items))
    table_bytes = sum(rows.values()) * row
    memory = 2 * (table_bytes + dense) / args.ps  # + AdaGrad accumulator of the same size
    print(f"memory per ps: 2 x (({' + '.join(f'{k} {v:.3g}' for k, v in sorted(rows.items()))}) rows x {row} B "
          f"+ dense) / {args.ps} ps = {memory / GB:.1f} GB (weights + AdaGrad accumulators)")
    log_q = 4 * args.items / args.ps
    print(f"  + the log-q table with pre-mapped or hashed item ids: 4 B x {args.items:.3g} rows / {args.ps} ps "
          f"= {log_q / 1e6:.0f} MB per ps")
    nic = args.nic_gbit / 8 * GB
    for label, per_step_bytes in (("with Keras' layers", keras), ("as built", built),
                                  ("as built, item ids distinct", built + tail)):
        w = per_step_bytes * per_worker
        ps = per_step_bytes * rate / args.ps
        print(f"  {label}: {w / GB:.2f} GB/s per worker, {ps / GB:.2f} GB/s per ps "
              f"({100 * ps / nic:.0f}% of a {args.nic_gbit:g} Gbit/s link)")
    top = m["vocab"].get("top_cat")
    if top:
        hot = {"with Keras' layers": top["ids"] * row * rate, "as built": top["distinct_per_call"] * row * rate}
        print("  top_cat is too small to shard, so one ps serves every worker's rows: "
              + ", ".join(f"{k} {v / GB:.2f} GB/s ({100 * v / nic:.0f}% of the link)" for k, v in hot.items()))
    if args.model_json:
        with open(args.model_json, encoding="utf-8") as f:
            figures = json.load(f)["figures"]
        flops = figures["train_unrolled"]["flops_per_example"]
        need = flops * b * per_worker
        print(f"compute per worker: {flops / 1e6:.0f} MFLOP/example x {b} x {per_worker:.2f} steps/s "
              f"= {need / 1e9:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
