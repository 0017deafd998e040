"""The search behind the `quick` preset: a few optimiser and score-scale settings, each
trained for the same short budget on the small world, ranked by validation recall.

    python -m benchmarks.tune --data data --out reports          # reports/tuning.md, tuning.json
    python -m benchmarks.tune --candidates paper,adam-2e-3 --steps 300

Each candidate is the `quick` preset with a few fields changed (or the paper's optimiser
on the quick model), run by `benchmarks.convergence` with a fixed step budget (no early
stop), so the ranking compares equal budgets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# name -> overrides on top of the quick preset
CANDIDATES = {
    "paper-optimizer": ["optimizer=adagrad", "learning_rate=0.1"],
    "adagrad-lr0.5": ["optimizer=adagrad", "learning_rate=0.5"],
    "adam-1e-3": ["optimizer=adam", "learning_rate=0.001"],
    "adam-2e-3": ["optimizer=adam", "learning_rate=0.002"],
    "adam-5e-3": ["optimizer=adam", "learning_rate=0.005"],
    "adam-2e-3-scale16": ["optimizer=adam", "learning_rate=0.002", "score_scale=16"],
    "adam-2e-3-scale64": ["optimizer=adam", "learning_rate=0.002", "score_scale=64"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="data root (the world is DATA/SCALE/processed, made if missing)")
    p.add_argument("--out", default="reports", help="where tuning.md and tuning.json go")
    p.add_argument("--runs", default=os.path.join("runs", "tune"), help="each candidate's run dir")
    p.add_argument("--scale", default="small", help="world scale (default small)")
    p.add_argument("--seed", type=int, default=7, help="world seed (default 7)")
    p.add_argument("--steps", type=int, default=600, help="training steps per candidate (default 600)")
    p.add_argument("--eval-every", type=int, default=150, help="steps between validation points (default 150)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated subset of " + ",".join(CANDIDATES))
    p.add_argument("--fresh", action="store_true", help="rerun candidates that already have a result")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from benchmarks.machine import summary
    from benchmarks.reproduce import relative, run_logged
    from pipeline.prepare import prepare_data

    args = parse_args(argv)
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidate(s) {unknown}; choose from {','.join(CANDIDATES)}")
    t0 = time.time()
    _, processed, _ = prepare_data(args.data, args.scale, args.seed)
    results = []
    for name in names:
        run_dir = os.path.join(args.runs, name)
        result = os.path.join(run_dir, "run.json")
        if args.fresh or not os.path.exists(result):
            os.makedirs(run_dir, exist_ok=True)
            cmd = [sys.executable, "-m", "benchmarks.convergence", "--data", processed, "--out", run_dir,
                   "--config", "quick", "--eval-every", str(args.eval_every), "--max-steps", str(args.steps),
                   "--patience", str(10**6), "--decays", "0", "--set", *CANDIDATES[name]]  # constant rates
            run_logged(cmd, os.path.join(run_dir, "run.log"))
        with open(result, encoding="utf-8") as f:
            run = json.load(f)
        best = max(run["curve"], key=lambda c: c["val_recall"])
        results.append({"candidate": name, "overrides": CANDIDATES[name], "best_val_recall": best["val_recall"],
                        "best_step": best["step"], "final_loss": run["curve"][-1]["loss"],
                        "curve": run["curve"], "test_recall": run["metrics"]["recall"],
                        "test_p_good": run["metrics"]["p_good"], "train_seconds": run["train_seconds"]})
        print(f"{name:>20}: validation Recall@200 {best['val_recall']:.4f} at step {best['step']}", flush=True)
    results.sort(key=lambda r: -r["best_val_recall"])
    report = {"world": relative(processed), "steps": args.steps, "results": results, "machine": summary(),
              "seconds": round(time.time() - t0, 1)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tuning.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    lines = ["# The search behind the `quick` preset", "",
             f"World `{report['world']}`; every candidate is the `quick` preset with the overrides shown, trained "
             f"{args.steps} steps (seed 0), ranked by its best validation Recall@200 (a fifth of the test day's "
             "searches); Recall@50 and P_good@50 on the other four fifths at the best step.", "",
             "| candidate | overrides | validation Recall@200 | at step | Recall@50 | P_good@50 | final loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['candidate']} | `{' '.join(r['overrides'])}` | {100 * r['best_val_recall']:.2f} | "
                     f"{r['best_step']} | {100 * r['test_recall']['50']:.2f} | {100 * (r['test_p_good']['50'] or 0):.2f} | "
                     f"{r['final_loss']:.3f} |")
    lines += ["", f"{report['seconds'] / 60:.0f} min on {report['machine']}.", ""]
    with open(os.path.join(args.out, "tuning.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
