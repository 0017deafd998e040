"""Where a training step's time goes: a summary of a TensorFlow profile (`ebr train
--profile` writes one for the second round into MODEL_DIR/logs).

    ebr train --data D --model-dir M --cluster local-ps --steps 30 --checkpoint-steps 10 --profile
    python -m benchmarks.profile M/logs                 # the newest profile under M/logs
    python -m benchmarks.profile M/logs --top 40

Reads the `*.xplane.pb` the profiler wrote (every thread of the profiled process: under
local-ps that includes the in-process workers and parameter servers) and prints the op
types that took the most time, summed over all threads, with their share of the summed
op time and of the profiled wall time times the cores (the CPU time available). Ops that
wait (a `_Recv` for a tensor from another task, a `RemoteCall`) count their waiting too,
which is how a profile shows time spent on the network rather than in arithmetic.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from collections import defaultdict

# Op kernels are recorded as "op_name:OpType"; runtime events ("ExecutorState::Process",
# "Iterator::Prefetch", "EagerExecute") are not ops.
_OP = re.compile(r"^(?P<name>[^:\s#]+):(?P<type>[A-Za-z0-9_]+)$")


def newest_profile(logdir: str) -> str:
    """The newest `*.xplane.pb` under `logdir`, with a clear error when there is none."""
    found = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not found:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir}; run `ebr train ... --profile` first")
    return max(found, key=os.path.getmtime)


def op_times(path: str, by_name: bool = False) -> tuple[dict[str, float], dict[str, int], float]:
    """({op type: summed seconds}, {op type: count}, wall seconds of the profile); keyed by
    op name (e.g. `.../ReadVariableOp`) instead of type when `by_name`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    start, end = None, None
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                match = _OP.match(names.get(event.metadata_id, ""))
                if not match or match["name"] == "EagerService":  # the coordinator's RPC waits, not ops
                    continue
                begin = line.timestamp_ns * 1e-9 + event.offset_ps * 1e-12
                start = begin if start is None else min(start, begin)
                end = begin + event.duration_ps * 1e-12 if end is None else max(end, begin + event.duration_ps * 1e-12)
                key = match["name"] if by_name else match["type"]
                seconds[key] += event.duration_ps * 1e-12
                counts[key] += 1
    return dict(seconds), dict(counts), (end - start) if start is not None else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("logdir", help="a directory holding a profile (MODEL_DIR/logs), or an .xplane.pb file")
    p.add_argument("--top", type=int, default=25, help="op types to list (default 25)")
    p.add_argument("--by-name", action="store_true", help="list op names (which variable, which layer) instead of types")
    args = p.parse_args(argv)
    path = args.logdir if args.logdir.endswith(".xplane.pb") else newest_profile(args.logdir)
    seconds, counts, wall = op_times(path, args.by_name)
    total = sum(seconds.values())
    cpu = wall * (os.cpu_count() or 1)
    print(f"profile {path}: {wall:.2f} s wall, {total:.2f} s summed over op kernels "
          f"({100 * total / cpu:.0f}% of {cpu:.2f} CPU seconds available)")
    width = 90 if args.by_name else 36
    print(f"{'op name' if args.by_name else 'op type':<{width}} {'count':>8} {'seconds':>9} {'% of ops':>9}")
    for name, secs in sorted(seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{name[-width:]:<{width}} {counts[name]:>8} {secs:>9.3f} {100 * secs / total:>8.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
