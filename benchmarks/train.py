"""Training throughput, side by side in one run: the input pipeline alone, then `ebr train`
single-process, on the in-process parameter-server cluster (2 workers, 2 ps) and under
horovod (2 ranks), on the medium synthetic world (generated and preprocessed if missing).

    python -m benchmarks.train --data data                    # make bench-train
    python -m benchmarks.train --data data --steps 60 --set embedding_dim=64

Each training run does --steps steps in 3 rounds; the first round (tracing, warm-up) is left
out of its examples/s. Examples per step: the batch size, times the ranks for horovod
(synchronous data parallel); a PS worker's step is a whole batch, the workers run
concurrently. Prints a table with ratios to single-process and the machine's 1-minute load
when each setup started (on a shared machine the setups, run one after another, can meet
different loads), then whether local-ps reaches 0.8x and horovod 0.95x of single; writes
OUT/bench_train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="data root: the world is DATA/SCALE/processed (made if missing)")
    p.add_argument("--scale", default="medium", help="synthetic world scale (default medium)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int, default=60, help="training steps per configuration (default 60, 3 rounds)")
    p.add_argument("--pipeline-batches", type=int, default=60, help="batches timed for the input pipeline (default 60)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (default: the paper's config)")
    p.add_argument("--modes", default="single,local-ps,horovod", help="which training setups to run")
    p.add_argument("--out", default="reports", help="where bench_train.json goes")
    return p.parse_args(argv)


def pipeline_rate(processed: str, config, batches: int) -> dict:
    """examples/s of make_dataset alone (read, parse, lookup, log q, random negatives)."""
    from model.data import make_dataset

    it = iter(make_dataset(processed, config))
    for _ in range(5):  # fill the prefetch buffers and trace the map functions
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    secs = time.perf_counter() - t0
    return {"batches": batches, "seconds": round(secs, 3), "examples_per_sec": batches * config.batch_size / secs}


def train_rate(mode: str, processed: str, steps: int, overrides: list[str], workdir: str) -> dict:
    bindir = Path(sys.executable).parent
    model_dir = os.path.join(workdir, mode)
    args = ["train", "--data", processed, "--model-dir", model_dir, "--cluster", mode, "--steps", str(steps),
            "--checkpoint-steps", str(max(1, steps // 3)), "--no-progress", "--fresh"]
    if overrides:
        args += ["--set", *overrides]
    if mode == "horovod":
        cmd = [str(bindir / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", str(bindir / "ebr"), *args]
    else:
        cmd = [sys.executable, "-m", "ebr", *args]
    load = os.getloadavg()[0]  # other jobs on a shared machine slow one mode and not another
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}
    with open(os.path.join(model_dir, "train_info.json"), encoding="utf-8") as f:
        info = json.load(f)
    return {
        "examples_per_sec": info["examples_per_sec"],
        "steps_per_sec": info["steps_per_sec"],
        "examples_per_step": info["examples_per_step"],
        "round_seconds": info["round_seconds"],
        "wall_seconds": round(wall, 1),
        "load_at_start": round(load, 1),
    }


def horovod_available() -> bool:
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return (Path(sys.executable).parent / "horovodrun").exists()


def main(argv=None) -> int:
    import features  # noqa: F401
    from pipeline.prepare import prepare_data
    from model.config import load_config

    args = parse_args(argv)
    config = load_config(None, args.overrides)
    _, processed, stats = prepare_data(args.data, args.scale, args.seed)
    from benchmarks.machine import summary
    from benchmarks.reproduce import relative

    machine = summary()
    print(f"bench-train on {machine}; world {processed} ({stats.get('examples_train')} training examples); "
          f"batch {config.batch_size}, d {config.embedding_dim}, {config.num_random_negatives} random negatives",
          flush=True)

    results = {"input pipeline": pipeline_rate(processed, config, args.pipeline_batches)}
    print(f"  input pipeline: {results['input pipeline']['examples_per_sec']:.0f} examples/s", flush=True)
    workdir = tempfile.mkdtemp(prefix="bench_train_")
    try:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            if mode == "horovod" and not horovod_available():
                results[mode] = {"error": "horovod not installed (make horovod)"}
            else:
                results[mode] = train_rate(mode, processed, args.steps, args.overrides, workdir)
            r = results[mode]
            print(f"  {mode}: " + (f"{r['examples_per_sec']:.0f} examples/s" if "error" not in r else r["error"][:200]),
                  flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    base = results.get("single", {}).get("examples_per_sec")
    labels = {"input pipeline": "input pipeline alone", "single": "single process",
              "local-ps": "local-ps (2 workers, 2 ps)", "horovod": "horovod (2 ranks)"}
    print(f"\n{'setup':<28} {'examples/s':>11} {'steps/s':>8} {'ex/step':>8} {'vs single':>10} {'load':>6}")
    for name, r in results.items():
        if "error" in r:
            print(f"{labels.get(name, name):<28} {'-':>11} {'-':>8} {'-':>8} {'-':>10}  ({r['error'][:60]})")
            continue
        eps = r["examples_per_sec"]
        sps = r.get("steps_per_sec")
        ratio = f"{eps / base:.2f}x" if base else "-"
        print(f"{labels.get(name, name):<28} {eps:>11.0f} {('-' if sps is None else f'{sps:.2f}'):>8} "
              f"{r.get('examples_per_step', config.batch_size):>8} {ratio:>10} {r.get('load_at_start', '-'):>6}")
    goals = {"local-ps": 0.8, "horovod": 0.95}
    for name, goal in goals.items():
        eps = results.get(name, {}).get("examples_per_sec")
        if base and eps:
            verdict = "met" if eps / base >= goal else "not met"
            print(f"{labels[name]}: {eps / base:.2f}x single (goal >= {goal}x: {verdict})")
    os.makedirs(args.out, exist_ok=True)
    report = {"machine": machine, "world": relative(processed), "steps": args.steps,
              "config": json.loads(config.to_json()), "results": results}
    with open(os.path.join(args.out, "bench_train.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
