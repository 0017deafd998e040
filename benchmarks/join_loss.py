"""Does every valid event reach the catalog join? A reproduction of the large world's
missing events (docs/benchmarks.md, "Records lost inside the runner").

    python -m benchmarks.join_loss --raw data/large/raw              # about 8 minutes on 2 cores
    python -m benchmarks.join_loss --raw data/large/raw --unguarded  # Beam as it comes: loses events
    python -m benchmarks.join_loss --raw data/medium/raw --mode in_memory

Runs the job's own read and validation (`ReadEvents`), user dictionary and catalog join
(`JoinCatalog`) on the DirectRunner and nothing after them, and prints three counts: the
valid events read, the events the join emitted, and the events it tallied as valid. The
three are equal when nothing is lost. Without the job's guard (`--unguarded`), on the
large world in multi-processing mode, the join is handed fewer events than were read, by
an amount that varies from run to run: Beam's data plane drops what the runner writes
during a blocked periodic flush (`pipeline.runner_guard`). Exit status 1 when they differ.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def _valid_tally(kv) -> int:
    from pipeline.transforms import STATS_KEY

    (key, _), counter = kv
    return counter.get("events_valid", 0) if key == STATS_KEY else 0


def count_join(raw_dir: str, beam_args: list[str], guarded: bool = True) -> dict:
    """{"read": valid events read, "emitted": events the join emitted, "tallied": events
    it counted as valid, "seconds": wall time}. `guarded`: with the job's data-plane guard
    (pipeline.runner_guard), as the job runs; False runs Beam as it comes."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import contract, runner_guard
    from pipeline import transforms as T
    from pipeline.preprocess import job_inputs

    if not guarded:
        runner_guard.uninstall()
    elif not runner_guard.install():
        print("this Beam has no time-buffered data stream to guard", file=sys.stderr)

    items, item_fmt, item_headers = job_inputs(raw_dir, "items")
    events, event_fmt, event_headers = job_inputs(raw_dir, "events")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        def write(pcoll, name):
            return pcoll | f"Write{name}" >> beam.io.WriteToText(os.path.join(tmp, name), shard_name_template="")

        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", *beam_args])) as p:
            it = p | "ReadItems" >> T.ReadRecords("items", items, item_fmt, item_headers)
            ev = p | "ReadEvents" >> T.ReadRecords("events", events, event_fmt, event_headers,
                                                   contract.TsRange.default())
            words = it.valid | "UserDictionary" >> T.UserDictionary()
            joined = {"items": it.valid, "events": ev.valid} | "JoinCatalog" >> T.JoinCatalog(words)
            write(ev.valid | "CountRead" >> beam.combiners.Count.Globally(), "read")
            write(joined.events | "CountEmitted" >> beam.combiners.Count.Globally(), "emitted")
            write(joined.tallies | "Valid" >> beam.Map(_valid_tally) | "SumValid" >> beam.CombineGlobally(sum),
                  "tallied")
        counts = {}
        for name in ("read", "emitted", "tallied"):
            with open(os.path.join(tmp, name), encoding="utf-8") as f:
                counts[name] = int(f.read())
    counts["seconds"] = time.perf_counter() - start
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True, help="a raw directory (items.* and events.*)")
    parser.add_argument("--mode", default="multi_processing", choices=("multi_processing", "in_memory"),
                        help="DirectRunner running mode (default multi_processing)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="multi_processing workers")
    parser.add_argument("--unguarded", action="store_true",
                        help="run without the job's data-plane guard (pipeline.runner_guard), as Beam comes")
    args = parser.parse_args(argv)
    beam_args = [f"--direct_running_mode={args.mode}"]
    if args.mode == "multi_processing":
        beam_args.append(f"--direct_num_workers={args.workers}")
    c = count_join(args.raw, beam_args, guarded=not args.unguarded)
    lost = c["read"] - c["emitted"]
    guard = "unguarded" if args.unguarded else "guarded"
    print(f"{args.raw} ({args.mode}, {guard}): {c['read']:,} valid events read, {c['emitted']:,} emitted by the join, "
          f"{c['tallied']:,} tallied by it; {lost:,} lost; {c['seconds']:.0f} s")
    return 0 if c["read"] == c["emitted"] == c["tallied"] else 1


if __name__ == "__main__":
    sys.exit(main())
