"""`make reproduce`'s runs one after the other against several at once: the same runs
(variants x seeds, trained from scratch) timed with `--jobs 1` (each run on every core)
and `--jobs N` (N runs at once, cores / N TensorFlow threads each), side by side.

    python -m benchmarks.parallel_runs                                  # mgdspr and mlp, seed 0, 500 steps
    python -m benchmarks.parallel_runs --variants mgdspr,no_trm,tau1,hinge --max-steps 1000

Prints the wall time of each schedule, the ratio, and each run's Recall@1000 under both,
so that a faster schedule is seen to train the same models (TensorFlow's sums over
another number of threads differ in the last bits, so the runs are not bit-identical).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def time_schedule(jobs: int, args, tmp: str) -> dict:
    out = os.path.join(tmp, f"jobs{jobs}")
    cmd = [sys.executable, "-m", "benchmarks.reproduce", "--data", args.data, "--scale", args.scale,
           "--out", out, "--runs", os.path.join(out, "runs"), "--variants", args.variants,
           "--model-seeds", args.model_seeds, "--max-steps", str(args.max_steps),
           "--eval-every", str(args.eval_every), "--patience", str(args.max_steps), "--jobs", str(jobs), "--fresh"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "reproduce.json"), encoding="utf-8") as f:
        report = json.load(f)
    runs = {f"{p['variant']} seed {p['seed']}": p for r in report["results"] for p in r["per_seed"]}
    return {"wall_s": wall, "runs": runs}


def main(argv=None) -> int:
    from benchmarks.machine import summary

    p = argparse.ArgumentParser(prog="python -m benchmarks.parallel_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join("data", "reproduce"), help="data root of the world (made if missing)")
    p.add_argument("--scale", default="medium", help="world scale (default medium, as make reproduce)")
    p.add_argument("--variants", default="mgdspr,mlp", help="variants to train (default mgdspr,mlp)")
    p.add_argument("--model-seeds", default="0", help="seeds (default 0)")
    p.add_argument("--max-steps", type=int, default=500, help="steps of every run (default 500; no early stop)")
    p.add_argument("--eval-every", type=int, default=250, help="steps between validation points (default 250)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once in the second schedule "
                                                                         "(default: cores)")
    args = p.parse_args(argv)
    print(f"machine: {summary()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for jobs in (1, args.jobs):
            print(f"--jobs {jobs}: {args.variants}, seeds {args.model_seeds}, {args.max_steps} steps each ...",
                  flush=True)
            results[jobs] = time_schedule(jobs, args, tmp)
    one, many = results[1], results[args.jobs]
    print(f"\n{'schedule':<22}{'wall s':>9}")
    for jobs, r in results.items():
        print(f"{f'--jobs {jobs}':<22}{r['wall_s']:>9.0f}")
    print(f"\nratio: --jobs {args.jobs} finishes the same runs {one['wall_s'] / many['wall_s']:.2f}x sooner\n")
    print(f"{'run':<22}{'train s, 1':>12}{f'train s, {args.jobs}':>12}{'R@1000, 1':>11}{f'R@1000, {args.jobs}':>11}")
    for name, a in one["runs"].items():
        b = many["runs"][name]
        k = str(a["metrics"]["k"][-1])
        print(f"{name:<22}{a['train_seconds']:>12.0f}{b['train_seconds']:>12.0f}"
              f"{a['metrics']['recall'][k]:>11.4f}{b['metrics']['recall'][k]:>11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
