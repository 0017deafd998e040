"""The demo: a small synthetic world, preprocessed by the Beam job, with a short summary.

    python -m ebr.demo --scale small --seed 7 --data data

Each stage is skipped when its output already exists for the same scale and seed, so
`make demo` is cheap to rerun; `--fresh` redoes everything.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)


def _world_matches(raw_dir: str, scale: str, seed: int) -> bool:
    path = os.path.join(raw_dir, "world.json")
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        world = json.load(f)
    return world.get("scale") == scale and world.get("seed") == seed


def prepare_data(data_dir: str, scale: str, seed: int, fresh: bool = False) -> tuple[str, str, dict]:
    """Generates and preprocesses the world unless already done; returns (raw, processed, stats)."""
    from pipeline import preprocess, synth

    root = os.path.join(data_dir, scale)
    raw, processed = os.path.join(root, "raw"), os.path.join(root, "processed")
    if fresh or not _world_matches(raw, scale, seed):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.time()
        print(f"[1/2] generating the {scale} synthetic world (seed {seed}) in {raw}", flush=True)
        summary = synth.generate(raw, scale=scale, seed=seed)
        print(f"      {summary.get('items')} items, {summary.get('users')} users, "
              f"{summary.get('events')} events in {time.time() - t0:.1f} s", flush=True)
    else:
        print(f"[1/2] world in {raw} is up to date (scale {scale}, seed {seed})", flush=True)
    stats_path = os.path.join(processed, "stats.json")
    if fresh or not os.path.exists(stats_path):
        shutil.rmtree(processed, ignore_errors=True)
        t0 = time.time()
        print(f"[2/2] preprocessing with Beam (DirectRunner) into {processed}", flush=True)
        preprocess.run(raw, processed, quiet=True)
        print(f"      done in {time.time() - t0:.1f} s", flush=True)
    else:
        print(f"[2/2] {processed} is up to date", flush=True)
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)
    return raw, processed, stats


def print_summary(processed: str, stats: dict) -> None:
    rows = [
        ("events in", stats.get("events_in")),
        ("valid events", stats.get("events_valid")),
        ("searches", stats.get("searches")),
        ("training examples (days 1-7)", stats.get("examples_train")),
        ("test examples (day 8)", stats.get("examples_test")),
        ("dead letters", sum((stats.get("dead_letter") or {}).values())),
        ("skipped", json.dumps(stats.get("skipped") or {}, ensure_ascii=False)),
    ]
    vocab = stats.get("vocab") or stats.get("vocab_sizes") or {}
    if vocab:
        rows.append(("vocabulary sizes", ", ".join(f"{k} {v}" for k, v in sorted(vocab.items()))))
    width = max(len(r[0]) for r in rows)
    print(f"\nSummary of {processed}:")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebr.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="small", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data", default="data", help="root folder; the world goes to DATA/SCALE/")
    parser.add_argument("--fresh", action="store_true", help="regenerate and reprocess even if present")
    args = parser.parse_args(argv)
    _, processed, stats = prepare_data(args.data, args.scale, args.seed, args.fresh)
    print_summary(processed, stats)
    print(f"\nNext: `make train` trains MGDSPR on {processed} (in-process parameter-server "
          f"cluster) and evaluates it on the test day into reports/{args.scale}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
