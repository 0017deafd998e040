"""What the user tower's fusion reads: for each of its four inputs (Q_mgs, H_real, H_short,
H_long), the [CLS] row's attention share and how far the user vector moves without it.

    python -m benchmarks.fusion --model-dir runs/small --data data/small/processed
    python -m benchmarks.fusion --model-dir runs/no_trm --data data/small/processed --searches 2000

On the first test-window searches (`--searches`, one row each), with the model of a
trained run (`ebr train` / `make train`), it prints per branch:
- `row length`: the mean length of the branch's six rows, and `empty`: the share of
  searches where they are all zero (no such behaviour: zero attention gives exactly zero);
- `attention`: the share of the [CLS] row's attention, averaged over heads and searches,
  in the fusion's first layer (only a fusion Transformer has it; the rest goes to [CLS]);
- `moved`: 1 - cos(user vector, user vector with this branch's rows set to zero), the mean
  over searches: how much the user vector depends on the branch at all. It compares a
  fusion Transformer with the concatenation of `use_trm=False`.
"""
from __future__ import annotations

import argparse
import sys

BRANCHES = ("q_mgs", "h_real", "h_short", "h_long")


def fusion_inputs(model, data_dir: str, searches: int) -> dict:
    """{branch: [S, 6, d]} of the user tower's fusion on the first `searches` test searches."""
    import features  # noqa: F401
    import tensorflow as tf

    from model.data import vocab_dir
    from model.evaluate import read_searches
    from model.lookup import Lookup

    chosen, queries, _ = read_searches(data_dir)
    lookup = Lookup(vocab_dir(data_dir), model.config)
    rows = min(searches, len(queries))
    parts = {b: [] for b in BRANCHES}
    for start in range(0, rows, 256):
        feats = lookup({k: tf.constant(v[start:min(rows, start + 256)]) for k, v in chosen.items()})
        for name, value in model.user_tower.parts(feats).items():
            parts[name].append(value)
    return {b: tf.concat(parts[b], axis=0) for b in BRANCHES}


def cls_attention(fusion, parts: dict):
    """[S, slots] attention of the [CLS] row in the fusion Transformer's first layer,
    averaged over heads (slot 0 is [CLS] itself, then 6 rows per branch in BRANCHES order)."""
    import tensorflow as tf

    block = fusion.blocks[0].attention  # pre-norm: the attention reads normalised rows
    weights = block.attention.probabilities(block.norm(fusion.sequence([parts[b] for b in BRANCHES])))
    return tf.reduce_mean(weights[:, :, 0], axis=1)


def inspect(model, data_dir: str, searches: int = 1000) -> dict:
    """{branch: {"norm", "empty", "attention" (None without a fusion Transformer), "moved"}}."""
    import numpy as np
    import tensorflow as tf

    from model.layers import FusionTransformer

    parts = fusion_inputs(model, data_dir, searches)
    fusion = model.user_tower.fusion
    attention = cls_attention(fusion, parts).numpy() if isinstance(fusion, FusionTransformer) else None
    full = model.user_tower.fuse(parts)
    out = {"searches": int(full.shape[0])}
    for i, branch in enumerate(BRANCHES):
        norms = tf.norm(parts[branch], axis=-1).numpy()  # [S, 6]
        without = model.user_tower.fuse({**parts, branch: tf.zeros_like(parts[branch])})
        cos = tf.reduce_sum(tf.math.l2_normalize(full, -1) * tf.math.l2_normalize(without, -1), -1).numpy()
        out[branch] = {
            "norm": float(norms.mean()),
            "empty": float((norms.max(axis=1) == 0).mean()),
            "attention": None if attention is None else float(attention[:, 1 + 6 * i: 7 + 6 * i].sum(axis=1).mean()),
            "moved": float(np.mean(1.0 - cos)),
        }
    out["cls_attention"] = None if attention is None else float(attention[:, 0].mean())
    return out


def format_report(result: dict, name: str) -> str:
    lines = [f"{name}: {result['searches']} test searches",
             "| branch | row length | empty | [CLS] attention | moved without it (1 - cos) |",
             "|---|---:|---:|---:|---:|"]
    for branch in BRANCHES:
        r = result[branch]
        attention = "-" if r["attention"] is None else f"{100 * r['attention']:.1f}%"
        lines.append(f"| {branch} | {r['norm']:.2f} | {100 * r['empty']:.1f}% | {attention} | {r['moved']:.3f} |")
    if result["cls_attention"] is not None:
        lines.append(f"| [CLS] itself | | | {100 * result['cls_attention']:.1f}% | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="a trained run (ebr train --model-dir)")
    parser.add_argument("--data", required=True, help="the processed data the run was trained on")
    parser.add_argument("--searches", type=int, default=1000, help="test searches to read (default 1000)")
    parser.add_argument("--checkpoint", help="a checkpoint of the run (default: its final one)")
    args = parser.parse_args(argv)
    from model.rundir import restore

    model, config, path, step = restore(args.model_dir, args.data, args.checkpoint)
    if config.model != "mgdspr":
        parser.error(f"{args.model_dir} is a {config.model!r} model; the fusion is MGDSPR's")
    print(format_report(inspect(model, args.data, args.searches), f"{args.model_dir} at step {step}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
