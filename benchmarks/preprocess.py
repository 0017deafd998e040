"""Preprocessing benchmark: the Beam job against the tokenizer alone, in one run.

    python -m benchmarks.preprocess --data data              # make bench-preprocess: medium + large
    python -m benchmarks.preprocess --data data --no-large   # the medium world only (a minute)

Generates the medium synthetic world under DATA/medium/raw if it is missing (and the
large one, 1.2M items and ~13.5M events, under DATA/large/raw), runs `ebr preprocess` on the DirectRunner
(multi-processing, one worker per core) into OUT/<scale>/processed (OUT defaults to
DATA), then times the tokenizer alone on the medium world's text and prints everything
with the machine it ran on. Each job runs in its own process, so its figures are its
own: events per second, CPU seconds, the peak memory of the largest worker process and
of the driver, and the seconds each step of the job took (the runner's execution-time
metrics, summed over workers), so the next bottleneck is visible.

What the tokenizer figure measures: a fresh `features.Tokenizer` with the job's user
dictionary (jieba's prefix dictionary build is timed apart), called on every catalog
title and on the query of every event that has one, in file order, with the tokenizer's
memo cache on as in the job (queries repeat, so most calls hit it); and the same texts'
distinct set tokenized without the cache (pure jieba + n-gram cost). Both on one core in
this process. The job tokenizes each title once and each search's query once (plus its
earlier queries, from the cache), so the cached figure is the job's tokenizer cost.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import features  # noqa: F401  (environment for TensorFlow, set before any TF import)
from benchmarks.machine import describe, summary


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the job's worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_texts(raw_dir: str) -> tuple[list[str], list[str], list[str]]:
    """(titles, event queries (non-empty, one per event), user-dictionary names), read
    through the raw data contract like the job reads them (valid records only)."""
    from pipeline import contract
    from pipeline.transforms import catalog_names
    from dataclasses import astuple

    titles, names, queries = [], set(), []
    for path in contract.find_inputs(raw_dir, "items"):
        for _, rec in contract.iter_raw(path):
            try:
                item = contract.validate_item(rec)
            except contract.BadRecord:
                continue
            titles.append(item.title)
            names.update(catalog_names(astuple(item)))
    for path in contract.find_inputs(raw_dir, "events"):
        for _, rec in contract.iter_raw(path):
            try:
                event = contract.validate_event(rec)
            except contract.BadRecord:
                continue
            if event.query:
                queries.append(event.query)
    return titles, queries, sorted(names)


def time_tokenizer(titles: list[str], queries: list[str], names: list[str]) -> dict:
    from features import Tokenizer

    start = time.perf_counter()
    tok = Tokenizer(names)
    init_s = time.perf_counter() - start
    texts = titles + queries
    start = time.perf_counter()
    for text in texts:
        tok.tokenize(text)
    cached_s = time.perf_counter() - start
    distinct = list(dict.fromkeys(texts))
    fresh = Tokenizer(names)
    start = time.perf_counter()
    for text in distinct:
        fresh._tokenize(text)  # no memo cache: jieba and n-grams on every distinct text
    uncached_s = time.perf_counter() - start
    return {
        "init_s": init_s,
        "texts": len(texts),
        "titles": len(titles),
        "queries": len(queries),
        "cached_s": cached_s,
        "texts_per_s": len(texts) / cached_s,
        "distinct_texts": len(distinct),
        "uncached_s": uncached_s,
        "distinct_per_s": len(distinct) / uncached_s,
    }


def time_pipeline(raw_dir: str, out_dir: str, beam_args: list[str]) -> dict:
    """One job in this process; run it in a fresh process (`time_in_subprocess`) so the
    peak memory of its workers is its own."""
    from pipeline.preprocess import run

    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    stats = run(raw_dir, out_dir, beam_args=beam_args, quiet=True)
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "job_s": stats["seconds"],
        "cpu_s": _cpu_seconds() - cpu0,
        "events": stats["events_in"],
        "events_per_s": stats["events_in"] / wall,
        "events_per_cpu_s": stats["events_in"] / max(_cpu_seconds() - cpu0, 1e-9),
        "examples": stats["examples_train"] + stats["examples_test"],
        "examples_per_s": (stats["examples_train"] + stats["examples_test"]) / wall,
        "reconcile": all(stats["reconcile"].values()),
        "step_s": stats.get("step_seconds", {}),
        # ru_maxrss is KiB on Linux; for children, the largest one that has exited
        "peak_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "peak_driver_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def time_in_subprocess(raw_dir: str, out_dir: str, beam_args: list[str]) -> dict:
    import subprocess
    import sys

    code = ("import json, sys; from benchmarks.preprocess import time_pipeline; "
            "print('RESULT ' + json.dumps(time_pipeline(sys.argv[1], sys.argv[2], sys.argv[3:])))")
    out = subprocess.run([sys.executable, "-c", code, raw_dir, out_dir, *beam_args], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"preprocess of {raw_dir} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data", help="data root; the world goes to DATA/<scale>/raw")
    parser.add_argument("--out", default=None, help="output root: OUT/<scale>/processed (default: DATA)")
    parser.add_argument("--scale", default="medium", help="synthetic world scale (default medium)")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=True,
                        help="also the large world (1.2M items, ~13.5M events; generated if missing, which takes "
                             "minutes; the job then takes most of an hour on 2 cores); --no-large skips it")
    parser.add_argument("--seed", type=int, default=7, help="world seed (default 7)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DirectRunner workers (default: cores)")
    parser.add_argument(
        "--also-in-memory", action="store_true", help="also time the single-process DirectRunner mode, for comparison"
    )
    args = parser.parse_args(argv)

    worlds = [args.scale] + (["large"] if args.large and args.scale != "large" else [])
    for scale in worlds:
        raw = os.path.join(args.data, scale, "raw")
        if not os.path.exists(os.path.join(raw, "world.json")):
            from pipeline.synth import generate

            print(f"generating the {scale} world in {raw} ...", flush=True)
            generate(raw, scale, seed=args.seed)

    info = describe()
    print(f"machine: {summary(info)}"
          " (wall times stretch when other work shares the cores; CPU seconds much less)")
    multi = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    runs = {(args.scale, "multi_processing"): multi}
    if args.also_in_memory:
        runs[(args.scale, "in_memory")] = ["--direct_running_mode=in_memory"]
    for scale in worlds[1:]:
        runs[(scale, "multi_processing")] = multi
    results = {}
    for (scale, mode), beam_args in runs.items():
        print(f"preprocess {scale} ({mode}) ...", flush=True)
        raw = os.path.join(args.data, scale, "raw")
        out = os.path.join(args.out or args.data, scale, "processed")
        results[f"{scale}/{mode}"] = time_in_subprocess(raw, out, beam_args)
    raw = os.path.join(args.data, args.scale, "raw")
    print("tokenizer alone ...", flush=True)
    titles, queries, names = read_texts(raw)
    tok = time_tokenizer(titles, queries, names)

    job = results[f"{args.scale}/multi_processing"]
    print()
    print(f"{'':44}{'seconds':>10}{'per second':>14}")
    for key, r in results.items():
        label = f"pipeline, {key}" + (f" ({args.workers} workers)" if key.endswith("multi_processing") else "")
        print(f"{label:44}{r['wall_s']:>10.1f}{r['events_per_s']:>14,.0f} events   "
              f"({r['events']:,} events, {r['examples']:,} examples; {r['cpu_s']:.0f} CPU s, "
              f"{r['events_per_cpu_s']:,.0f} events per CPU s; peak memory: largest worker "
              f"{r['peak_worker_mib']:,.0f} MiB, driver {r['peak_driver_mib']:,.0f} MiB)")
    print(f"{'tokenizer init (jieba + user dict)':44}{tok['init_s']:>10.2f}")
    print(f"{'tokenizer, cached as in the job':44}{tok['cached_s']:>10.1f}{tok['texts_per_s']:>14,.0f} texts    "
          f"({tok['titles']:,} titles + {tok['queries']:,} event queries)")
    print(f"{'tokenizer, no cache, distinct':44}{tok['uncached_s']:>10.1f}{tok['distinct_per_s']:>14,.0f} texts    "
          f"({tok['distinct_texts']:,} distinct texts)")
    share = tok["cached_s"] / job["wall_s"]
    print()
    print(f"ratio: tokenizer throughput / pipeline throughput = {tok['texts_per_s'] / job['events_per_s']:.1f}x; "
          f"the job's tokenizer work ({tok['cached_s']:.1f} s on one core) is {share:.0%} of its wall time")
    if f"{args.scale}/in_memory" in results:
        print(f"ratio: multi-processing / in-memory speed = "
              f"{results[f'{args.scale}/in_memory']['wall_s'] / job['wall_s']:.2f}x")
    for key, r in results.items():
        total = sum(r["step_s"].values()) or 1
        print(f"\nseconds per step, {key} (all workers; share of the steps' total):")
        for step, sec in r["step_s"].items():
            if sec / total >= 0.005:
                print(f"  {step:36}{sec:>10.1f}  {sec / total:>6.1%}")
    report = {"machine": info, "pipeline": results, "tokenizer": tok, "scale": args.scale}
    with open(os.path.join(args.out or args.data, args.scale, "bench_preprocess.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return 0 if all(r["reconcile"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
