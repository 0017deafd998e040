"""Reproduce the paper's comparison on a synthetic world: MGDSPR against the alpha-DNN
baseline (an MLP user tower) and the ablations, each trained until its validation recall
stops improving (once at its starting rate, once more at a fifth of it), over several
seeds, evaluated the same way (Recall@K, P_good@K beside its ceiling, filter pass
share@K, overall and per slice) on the test day's report searches.

    python -m benchmarks.reproduce --data data --out reports               # make reproduce
    python -m benchmarks.reproduce --data data --out reports --variants mgdspr,mlp --model-seeds 0 --max-steps 500

Every run is `python -m benchmarks.convergence` in its own process (see there for the
validation/report split and the plateau rule); its run.json stays under
RUNS/<variant>-seed<s>/ (default runs/reproduce/) and is reused on a rerun unless
`--fresh` or its config or stopping rule is no longer the variant's, so an interrupted
comparison resumes where it stopped. Runs go seed by seed (every variant's seed 0 first),
so a partial comparison still covers every variant.

Writes OUT/reproduce.md (the tables, mean and spread over seeds, per slice, the paper's
figures beside ours), OUT/reproduce.json (every run's metrics and curve; paths relative
to the repository) and OUT/reproduce_curves.png (training loss and validation recall).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# The paper's rows, in its order: the baseline, the full model, then one change each.
VARIANTS = ("mlp", "mlp_plain", "mgdspr", "no_mgs", "no_trm", "tau1", "no_mix", "hinge")
DESCRIPTIONS = {
    "mlp": "alpha-DNN baseline (MLP user tower)",
    "mlp_plain": "alpha-DNN baseline trained as a plain two-tower (tau = 1, no I_mix)",
    "mgdspr": "MGDSPR (full model)",
    "no_mgs": "without the multi-grained semantic unit",
    "no_trm": "without the fusion Transformer",
    "tau1": "temperature tau = 1 (paper: 2)",
    "no_mix": "without relevance-improving hard negatives (I_mix)",
    "hinge": "pairwise hinge loss instead of softmax",
}
# What the paper reports for each row against the one above it in its ablation (its
# directions; the one number it gives is MGDSPR against the baseline at K = 1000).
PAPER = {
    "mlp": "the baseline",
    "mlp_plain": "the baseline, trained without the paper's relevance components (the paper does not say how it was)",
    "mgdspr": "Recall@1000 +2.5 points, good rate +13.3% over the baseline",
    "no_mgs": "mgs raises recall and relevance: removing it lowers both",
    "no_trm": "trm raises recall and relevance: removing it lowers both",
    "tau1": "tau = 2 trades a little recall for much more relevance: tau = 1 has a little more recall, less relevance",
    "no_mix": "I_mix trades a little recall for much more relevance: without it, a little more recall, less relevance",
    "hinge": "softmax above the pairwise hinge",
}
PAPER_MARGINS = {"recall_points": 2.5, "p_good_relative": 0.133}
# Settings of every run of the comparison, on top of --config. Its runs train 1,000 to
# 3,500 steps with Adam at 5e-3: a linear warm-up over the first 500 steps steadies the
# Transformers (MGDSPR's spread over seeds a quarter of what it was without, docs/evaluation.md).
COMPARISON_SETTINGS = ("warmup_steps=500",)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    from benchmarks.convergence import add_rule_arguments

    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="data root: the world is DATA/SCALE/{raw,processed} (made if missing)")
    p.add_argument("--out", default="reports", help="where reproduce.md, reproduce.json and reproduce_curves.png go")
    p.add_argument("--runs", default=os.path.join("runs", "reproduce"),
                   help="where each run's run.json and log go (default runs/reproduce)")
    p.add_argument("--scale", default="medium",
                   help="synthetic world scale (default medium: 30,000 items, so K = 1000 is 3.3%% of the pool)")
    p.add_argument("--seed", type=int, default=7, help="world seed (default 7)")
    p.add_argument("--model-seeds", default="0,1,2", help="model/training seeds; tables show mean and spread (default 0,1,2)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--config", default="quick", help="base config of every variant: a preset or a JSON file (default quick)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=list(COMPARISON_SETTINGS),
                   metavar="KEY=VALUE",
                   help="config overrides for every variant, after the comparison's own "
                        f"({' '.join(COMPARISON_SETTINGS)}); a later value of a key wins")
    add_rule_arguments(p)  # every run's stopping rule, as benchmarks.convergence takes it
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, each with cores / JOBS TensorFlow threads (default: 2 on a machine "
                        "of 2 or more cores, else 1). Small models use few cores well: on 2 cores, two runs at "
                        "once finish sooner than the same two one after the other (docs/evaluation.md)")
    p.add_argument("--fresh", action="store_true", help="retrain every run (default: reuse finished runs)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs that have finished (a partial comparison)")
    p.add_argument("--k", default="50,200,1000", help="cut-offs (default 50,200,1000)")
    return p.parse_args(argv)


def relative(path: str) -> str:
    """A path as the report records it: relative to the repository when inside it."""
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO) if full.startswith(REPO + os.sep) else path


def run_logged(cmd: list[str], log_path: str) -> None:
    """Runs `cmd` with its output in `log_path`; a failure raises with the log's tail."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); log {log_path}:\n{tail}")


def stale_settings(result: str, config: str, settings: list[str], rule: dict | None = None) -> str:
    """'' when the run at `result` (a run.json) is missing or was trained with the config
    `config` + `settings` give today (and, given `rule`, stopped by that rule:
    `benchmarks.convergence.stopping_rule`); else the fields that differ, "key: then ->
    now", so a changed default never passes an old run off as the new model's."""
    from model.config import load_config

    if not os.path.exists(result):
        return ""
    with open(result, encoding="utf-8") as f:
        run = json.load(f)
    then, now = run.get("config", {}), json.loads(load_config(config, settings).to_json())
    changed = [(k, then.get(k), now.get(k)) for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if rule is not None:
        was = run.get("rule", {})
        changed += [(k, was.get(k), v) for k, v in rule.items() if was.get(k) != v]
    return ", ".join(f"{k}: {a} -> {b}" for k, a, b in changed)


def run_variant(name: str, seed: int, processed: str, args) -> dict:
    from benchmarks.convergence import rule_flags, stopping_rule
    from model.config import ABLATIONS

    if name not in ABLATIONS:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(ABLATIONS)}")
    run_dir = os.path.join(args.runs, f"{name}-seed{seed}")
    result = os.path.join(run_dir, "run.json")
    ablation = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in ABLATIONS[name].items()]
    settings = list(args.overrides) + [f"seed={seed}"] + ablation
    rule = stopping_rule(args)
    stale = stale_settings(result, args.config, settings, rule)
    if stale:
        print(f"{name} seed {seed}: its finished run had another config or stopping rule ({stale}); "
              "training it again", flush=True)
    if args.fresh or stale or not os.path.exists(result):
        os.makedirs(run_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.convergence", "--data", processed, "--out", run_dir,
               "--config", args.config, *rule_flags(rule), "--k", args.k, "--threads", str(args.threads),
               "--set", *settings]
        run_logged(cmd, os.path.join(run_dir, "run.log"))
    with open(result, encoding="utf-8") as f:
        run = json.load(f)
    return {"variant": name, "seed": seed, "settings": settings, "run_dir": relative(run_dir), **run}


def run_all(todo: list[tuple[str, int]], run, jobs: int) -> dict[tuple[str, int], dict]:
    """`run(name, seed)` for every (variant, seed) of `todo`, `jobs` at a time, started in
    `todo`'s order (seed-major: the runs that finish first cover every variant); prints
    each result as it comes. A failed run raises after the runs under way finish, and
    nothing more is started."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm import tqdm

    done: dict[tuple[str, int], dict] = {}
    queue = list(todo)
    bar = tqdm(total=len(todo), desc=f"runs ({jobs} at once)", unit="run")
    # Each run is its own process; the threads only wait on them. A run starts only when
    # one has finished well, so a failure starts nothing new.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        under_way: dict = {}
        while queue or under_way:
            while queue and len(under_way) < jobs:
                name, seed = queue.pop(0)
                under_way[pool.submit(run, name, seed)] = (name, seed)
            finished, _ = wait(under_way, return_when=FIRST_COMPLETED)
            for future in finished:
                name, seed = under_way.pop(future)
                r = future.result()  # raises; the with-block waits for the runs under way
                done[(name, seed)] = r
                m = r["metrics"]
                bar.update()
                bar.write(f"{name:>8} seed {seed}: {r['steps']} steps (best {r['best_step']})  "
                          + "  ".join(f"R@{k} {m['recall'][str(k)]:.4f}" for k in m["k"]) + "  "
                          + "  ".join(f"P_good@{k} {m['p_good'][str(k)] or 0:.4f}" for k in m["k"]))
    bar.close()
    return done


METRICS = (("recall", "Recall@K"), ("p_good", "P_good@K"), ("filter_pass", "filter pass share@K"))
# Recall@K split by the clicks' relevance to the query (ground truth); runs made before the
# split have neither, and their cells read "-".
RECALL_SPLIT = ("recall_relevant", "recall_irrelevant")


def _stats(values) -> dict | None:
    import numpy as np

    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}


def aggregate(runs: list[dict]) -> dict:
    """One variant's runs over seeds -> mean and spread (sample std) of every metric,
    overall and per slice, and the per-seed runs."""
    first = runs[0]
    ks = [str(k) for k in first["metrics"]["k"]]
    out = {"variant": first["variant"], "description": DESCRIPTIONS.get(first["variant"], first["variant"]),
           "paper": PAPER.get(first["variant"], ""), "seeds": [r["seed"] for r in runs], "metrics": {},
           "slices": {}, "per_seed": runs}
    for key in ("recall", "p_good", "p_good_ceiling", "filter_pass", *RECALL_SPLIT):
        out["metrics"][key] = {k: _stats([r["metrics"].get(key, {}).get(k) for r in runs]) for k in ks}
    out["metrics"]["positives_relevant"] = _stats([r["metrics"].get("positives_relevant") for r in runs])
    for name in first["metrics"].get("slices", {}):
        entry = {"searches": first["metrics"]["slices"][name]["searches"]}
        for key in ("recall", "p_good", "p_good_ceiling"):
            entry[key] = {k: _stats([r["metrics"]["slices"][name][key].get(k) for r in runs]) for k in ks}
        out["slices"][name] = entry
    out["steps"] = _stats([r["steps"] for r in runs])
    out["best_step"] = _stats([r["best_step"] for r in runs])
    out["train_seconds"] = _stats([r["train_seconds"] for r in runs])
    out["plateaued"] = sum(bool(r["plateau"]) for r in runs)
    return out


def _cell(st) -> str:
    if st is None:
        return "-"
    text = f"{100 * st['mean']:.2f}"
    if st["n"] > 1:
        text += f" ± {100 * st['std']:.2f}"
    return text


SLICE_TEXT = {
    "unseen_word": "queries with a word not in the training vocabulary (characters and bigrams must carry them)",
    "long_history": "users with >= 50 long-term behaviours (personalisation)",
    "branded": "queries that name a brand",
    "typo": "misspelled queries (characters and bigrams)",
    "new_spelling": "brand spellings first seen on the test day (characters and bigrams)",
    "history_intent": "category-only queries whose clicks follow the session's or the user's brand (history)",
}


def relevance_along(result: dict) -> tuple[str, str]:
    """(validation P_good@50 at the kept step, its peak with the step) as table cells,
    mean over the seeds whose curve recorded it ("-" when none did)."""
    import numpy as np

    kept, peak, at = [], [], []
    for run in result["per_seed"]:
        points = [(c["step"], c["val_p_good"]) for c in run["curve"] if c.get("val_p_good") is not None]
        if not points:
            continue
        kept.append(dict(points).get(run["best_step"], np.nan))
        step, value = max(points, key=lambda p: p[1])
        peak.append(value)
        at.append(step)
    if not kept:
        return "-", "-"
    steps = "/".join(str(s) for s in at)
    return f"{100 * np.nanmean(kept):.2f}", f"{100 * np.mean(peak):.2f} ({steps})"


# The variants whose recall sets the levels of "relevance at equal recall".
LEVEL_VARIANTS = ("mlp", "mgdspr")


def recall_levels(results: list[dict]) -> list[float]:
    """The validation recall every seed of the baseline reaches, and every seed of
    MGDSPR: for each of LEVEL_VARIANTS present, the lowest of its seeds' best validation
    recall, rounded down to a whole percent."""
    import math

    levels = set()
    for r in results:
        if r["variant"] not in LEVEL_VARIANTS:
            continue
        bests = [max(c["val_recall"] for c in p["curve"]) for p in r["per_seed"] if p.get("curve")]
        if bests:
            levels.add(math.floor(100 * min(bests) + 1e-9) / 100)
    return sorted(levels)


def relevance_at_recall(result: dict, level: float) -> str:
    """Validation P_good@50 at validation recall >= `level`, as a table cell: for each
    seed the best of its evaluations that reach the level, mean over the seeds that do
    ("never" when none does; "(n of m)" when some do not)."""
    import numpy as np

    best, seeds = [], 0
    for run in result["per_seed"]:
        points = [c for c in run.get("curve", []) if c.get("val_p_good") is not None]
        if not points:
            continue
        seeds += 1
        reached = [c["val_p_good"] for c in points if c["val_recall"] >= level]
        if reached:
            best.append(max(reached))
    if not seeds:
        return "-"
    if not best:
        return "never"
    return f"{100 * np.mean(best):.2f}" + ("" if len(best) == seeds else f" ({len(best)} of {seeds})")


def paired_differences(run: dict, full: dict, key: str, k: str) -> dict | None:
    """`run`'s metric minus MGDSPR's (`full`), seed by seed over the seeds both have:
    mean and sample std of the differences. Same-seed runs share the data order, so the
    pairs cancel part of the seed's noise."""
    mine = {p["seed"]: p["metrics"][key].get(k) for p in run["per_seed"]}
    theirs = {p["seed"]: p["metrics"][key].get(k) for p in full["per_seed"]}
    diffs = [mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))
             if mine[s] is not None and theirs[s] is not None]
    return _stats(diffs)


def paired_table(results: list[dict], full: dict, ks: list[str]) -> list[str]:
    """Markdown lines: every variant minus MGDSPR, paired by seed, in points."""
    cols = [("recall", ks[0]), ("recall", ks[-1]), ("p_good", ks[0]), ("p_good", ks[-1])]
    lines = ["", "## Each variant minus MGDSPR, seed by seed", "",
             "Points, mean ± sample standard deviation of the per-seed differences (the seeds both have). "
             "A difference within about twice its spread over a few seeds is not established.", "",
             "| variant | seeds | " + " | ".join(f"{'Recall' if key == 'recall' else 'P_good'}@{k}" for key, k in cols)
             + " |", "|---|---:|" + "---:|" * len(cols)]
    for r in results:
        if r is full:
            continue
        cells = [paired_differences(r, full, key, k) for key, k in cols]
        n = max((c["n"] for c in cells if c), default=0)
        text = ["-" if c is None else f"{100 * c['mean']:+.2f}" + (f" ± {100 * c['std']:.2f}" if c["n"] > 1 else "")
                for c in cells]
        lines.append(f"| {r['variant']} | {n} | " + " | ".join(text) + " |")
    spread = [full["metrics"][key].get(k) for key, k in cols]
    lines.append("| *MGDSPR's own spread over seeds (std)* | " + str(len(full["per_seed"])) + " | "
                 + " | ".join("-" if st is None or st["n"] < 2 else f"{100 * st['std']:.2f}" for st in spread) + " |")
    return lines


def rule_text(report: dict) -> str:
    """The stopping rule in words (reports written before the decay had none)."""
    gain = f"a gain of at least {100 * report.get('min_delta', 0.002):g} points"
    every = f"validation Recall@{report['monitor_k']} is measured every {report['eval_every']} steps"
    patience = report["patience"]
    stops = ("the next evaluation without such a gain stops" if patience == 1
             else f"{patience} evaluations without such a gain stop")
    decays = report.get("decays", 0)
    if decays:
        times = "once" if decays == 1 else f"{decays} times"
        return (f"{every}; an evaluation without {gain} goes back to the run's best weights and multiplies its "
                f"learning rate by {report['decay']:g} ({times}); after that, {stops} the run (at most "
                f"{report['max_steps']} steps), and its best weights are kept.")
    return (f"{every}; {stops.replace('such a gain', gain)} the run (at most {report['max_steps']} steps), and "
            "its best weights are kept.")


def markdown(report: dict) -> str:
    ks = [str(k) for k in report["k"]]
    rows = {r["variant"]: r for r in report["results"]}
    lines = [
        "# MGDSPR against the alpha-DNN baseline and the ablations",
        "",
        f"World: `{report['world']}` (scale {report['scale']}, seed {report['world_seed']}): "
        f"{report['examples_train']} training examples, {report['items']} items in the pool, "
        f"{report['report_searches']} report searches of the test day (a fifth more decide when to stop). "
        f"Config `{report['config']}`{' with ' + ' '.join(report['overrides']) if report['overrides'] else ''}; "
        f"model seeds {report['model_seeds']}; {rule_text(report)}",
        "",
        "Percent, mean ± sample standard deviation over seeds. Recall@K: share of a test search's "
        "clicked/purchased items in its top-K out of the whole pool. P_good@K: share of the top-K relevant "
        "to the query by the generator's ground truth (leaf category, and brand when the query names one); "
        "its ceiling is what a perfect model would score, min(K, relevant items in the pool) / K per query. "
        "Filter pass: share of the top-K that survive the brand/category relevance control (our Num_prank).",
    ]
    for key, title in METRICS:
        lines += ["", f"## {title}", "", "| variant | " + " | ".join(f"K={k}" for k in ks) + " |",
                  "|---|" + "---:|" * len(ks)]
        for r in report["results"]:
            m = r["metrics"][key]
            lines.append(f"| {r['variant']}: {r['description']} | " + " | ".join(_cell(m.get(k)) for k in ks) + " |")
        if key == "p_good":
            ceiling = report["results"][0]["metrics"]["p_good_ceiling"]
            lines.append("| *ceiling (a perfect model)* | " + " | ".join(_cell(ceiling.get(k)) for k in ks) + " |")
    share = next((r["metrics"]["positives_relevant"] for r in report["results"]
                  if r["metrics"].get("positives_relevant")), None)
    if share:
        lines += ["", "## Recall@K of the relevant clicks and of the noise", "",
                  f"A search's clicks split by the ground truth: on average {100 * share['mean']:.1f}% of them are "
                  "relevant to the query, the rest are noisy clicks. Recall@K over each part (the searches that "
                  "have one): a model that ranks only relevant items finds the first and little of the second, so "
                  "overall Recall@K can rise only as far as the relevant share plus what is found of the noise "
                  "allows. \"-\": a run made before the split.", "",
                  "| variant | " + " | ".join(f"relevant @{k}" for k in ks) + " | "
                  + " | ".join(f"noise @{k}" for k in ks) + " |", "|---|" + "---:|" * (2 * len(ks))]
        for r in report["results"]:
            m = r["metrics"]
            lines.append(f"| {r['variant']} | " + " | ".join(
                _cell(m.get(key, {}).get(k)) for key in RECALL_SPLIT for k in ks) + " |")
    slices = report["results"][0]["slices"] if report["results"] else {}
    for name, entry in slices.items():
        lines += ["", f"## Slice: {SLICE_TEXT.get(name, name)} ({entry['searches']} searches)", "",
                  "| variant | " + " | ".join(f"Recall@{k}" for k in ks) + " | " + " | ".join(f"P_good@{k}" for k in ks) + " |",
                  "|---|" + "---:|" * (2 * len(ks))]
        for r in report["results"]:
            sl = r["slices"].get(name, {})
            lines.append(f"| {r['variant']} | " + " | ".join(_cell(sl.get("recall", {}).get(k)) for k in ks) + " | "
                         + " | ".join(_cell(sl.get("p_good", {}).get(k)) for k in ks) + " |")
    lines += ["", "## Training", "",
              "Validation P_good@50 is recorded along the run (not by runs made before it was): at the kept "
              "step, which validation recall chose, and at its own peak, mean over seeds.", "",
              "| variant | steps (mean) | rate decayed at (per seed) | best step (mean) | runs that plateaued "
              "| train s per run | validation P_good@50 at the kept step | its peak (step) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        kept, peak = relevance_along(r)
        decayed = "/".join(",".join(map(str, p["decay_steps"])) or "-" for p in r["per_seed"] if "decay_steps" in p)
        lines.append(f"| {r['variant']} | {r['steps']['mean']:.0f} | {decayed or '-'} | {r['best_step']['mean']:.0f} | "
                     f"{r['plateaued']} of {len(r['per_seed'])} | {r['train_seconds']['mean']:.0f} | {kept} | {peak} |")
    levels = recall_levels(report["results"])
    if levels:
        monitor = report.get("monitor_k", 200)
        lines += ["", "## Relevance at equal recall", "",
                  "The kept step is where validation recall stopped rising, and a run's relevance peaks earlier, so "
                  "where the plateau falls moves P_good. Read along the curves instead: for each seed the best "
                  f"validation P_good@50 among its evaluations whose validation Recall@{monitor} is at least the "
                  "level, mean over the seeds that reach it. The levels: the recall every seed of "
                  + " and of ".join(f"`{v}`" for v in LEVEL_VARIANTS) + " reaches.", "",
                  "| variant | " + " | ".join(f"Recall@{monitor} >= {100 * lv:.0f}%" for lv in levels) + " |",
                  "|---|" + "---:|" * len(levels)]
        for r in report["results"]:
            lines.append(f"| {r['variant']} | " + " | ".join(relevance_at_recall(r, lv) for lv in levels) + " |")
    lines += ["", "Curves: [reproduce_curves.png](reproduce_curves.png).", "",
              "## Beside the paper", "",
              "| variant | what the paper reports | here, Recall@" + ks[-1] + " / P_good@" + ks[-1] + " vs MGDSPR |",
              "|---|---|---|"]
    full = rows.get("mgdspr")
    for r in report["results"]:
        here = "-"
        if full is not None and r is not full:
            dr = r["metrics"]["recall"][ks[-1]]["mean"] - full["metrics"]["recall"][ks[-1]]["mean"]
            pg, fpg = r["metrics"]["p_good"][ks[-1]], full["metrics"]["p_good"][ks[-1]]
            dp = f"{100 * (pg['mean'] / fpg['mean'] - 1):+.1f}%" if pg and fpg and fpg["mean"] else "-"
            here = f"{100 * dr:+.2f} points / {dp}"
        lines.append(f"| {r['variant']} | {r['paper']} | {here} |")
    if full is not None:
        lines += paired_table(report["results"], full, ks)
    for base in ("mlp", "mlp_plain"):
        if base not in rows or full is None:
            continue
        m, b = full["metrics"], rows[base]["metrics"]
        lines += ["", f"## MGDSPR against the baseline ({base}: {DESCRIPTIONS[base]})", "",
                  f"Paper (Taobao, 10^8 items, K = 1000): Recall +{PAPER_MARGINS['recall_points']} points, good rate "
                  f"+{100 * PAPER_MARGINS['p_good_relative']:.1f}%. Here:", "",
                  "| K | Recall (points) | P_good (relative) | filter pass (relative) |", "|---:|---:|---:|---:|"]
        for k in ks:
            def pts(key):
                if m[key].get(k) is None or b[key].get(k) is None:
                    return "-"
                return f"{100 * (m[key][k]['mean'] - b[key][k]['mean']):+.2f}"

            def rel(key):
                if not b[key].get(k) or not b[key][k]["mean"] or m[key].get(k) is None:
                    return "-"
                return f"{100 * (m[key][k]['mean'] / b[key][k]['mean'] - 1):+.1f}%"

            lines.append(f"| {k} | {pts('recall')} | {rel('p_good')} | {rel('filter_pass')} |")
    if report["runs_finished"] < report["runs"]:
        lines[2:2] = [f"**Partial comparison: {report['runs_finished']} of {report['runs']} runs have finished** "
                      "(the rest resume with the same command); a variant without a run is missing from the tables.", ""]
    per_run = [p["seconds"] for r in report["results"] for p in r["per_seed"]]
    jobs = report.get("jobs", 1)
    at_once = f", {jobs} at a time" if report["runs_made"] and jobs > 1 else ""
    lines += ["", f"Time: {sum(per_run) / 60:.0f} min of runs ({report['runs_finished']} runs; "
              f"{report['runs_made']} made in the last invocation{at_once}, "
              f"which took {report['seconds'] / 60:.0f} min) "
              f"on {report['machine']}.", ""]
    return "\n".join(lines)


def plot_curves(results: list[dict], path: str) -> None:
    """Training loss, validation recall and validation P_good@50 against steps, mean over
    seeds per variant (P_good over the runs that recorded it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_loss, ax_val, ax_good) = plt.subplots(1, 3, figsize=(17, 4.5))
    for r in results:
        curves = [p["curve"] for p in r["per_seed"]]
        steps = sorted({c["step"] for curve in curves for c in curve})
        for ax, key in ((ax_loss, "loss"), (ax_val, "val_recall"), (ax_good, "val_p_good")):
            points = [(st, [c[key] for curve in curves for c in curve if c["step"] == st and c.get(key) is not None])
                      for st in steps]
            points = [(st, float(np.mean(v))) for st, v in points if v]
            if points:
                ax.plot(*zip(*points), marker=".", label=r["variant"])
    ax_loss.set_title("training loss (mean over seeds)")
    ax_val.set_title("validation Recall@200 (mean over seeds)")
    ax_good.set_title("validation P_good@50 (mean over seeds that recorded it)")
    for ax in (ax_loss, ax_val, ax_good):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


INVOCATION_KEYS = ("runs_made", "jobs", "seconds", "machine")


def previous_invocation(path: str, results: list[dict]) -> dict | None:
    """The invocation fields (INVOCATION_KEYS) of the report at `path` when it covers the
    same runs as `results`: `--report-only` rewrites a report without training, and the
    time it states stays that of the invocation that trained its runs. None otherwise."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        old = json.load(f)

    def runs(rs):
        # A run trained again in the same folder has another time: then the old time is not its own.
        return sorted((p["variant"], p["seed"], p.get("run_dir"), p.get("seconds")) for r in rs for p in r["per_seed"])

    if runs(old.get("results", [])) != runs(results) or any(k not in old for k in INVOCATION_KEYS):
        return None
    return {k: old[k] for k in INVOCATION_KEYS}


def main(argv=None) -> int:
    from benchmarks.convergence import stopping_rule
    from benchmarks.machine import summary

    import features  # noqa: F401
    from model.config import load_config
    from model.evaluate import parse_ks
    from pipeline.prepare import prepare_data

    args = parse_args(argv)
    parse_ks(args.k)  # a bad --k or config fails now, not after the first training run
    load_config(args.config, args.overrides)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    seeds = [int(x) for x in str(args.model_seeds).split(",") if x.strip()]
    if not seeds:
        raise SystemExit("--model-seeds needs at least one seed")
    t0 = time.time()
    raw, processed, stats = prepare_data(args.data, args.scale, args.seed)
    os.makedirs(args.out, exist_ok=True)
    jobs = [(v, s) for s in seeds for v in variants]  # seed-major: a partial run covers every variant
    cores = os.cpu_count() or 1
    args.jobs = max(1, args.jobs if args.jobs is not None else min(2, cores))
    args.threads = max(1, cores // args.jobs) if args.jobs > 1 else 0
    todo = [(v, s) for v, s in jobs
            if not args.report_only or os.path.exists(os.path.join(args.runs, f"{v}-seed{s}", "run.json"))]
    made = sum(args.fresh or not os.path.exists(os.path.join(args.runs, f"{v}-seed{s}", "run.json")) for v, s in todo)
    done = run_all(todo, lambda name, seed: run_variant(name, seed, processed, args), args.jobs)
    runs = {v: [done[(v, s)] for s in seeds if (v, s) in done] for v in variants}
    results = [aggregate(runs[v]) for v in variants if runs[v]]
    if not results:
        raise SystemExit(f"no finished runs under {args.runs}")
    first = results[0]["per_seed"][0]
    report = {
        "world": relative(processed),
        "scale": args.scale,
        "world_seed": args.seed,
        "model_seeds": seeds,
        "config": args.config,
        "overrides": list(args.overrides),
        **stopping_rule(args),
        "k": first["metrics"]["k"],
        "items": first["metrics"]["items"],
        "report_searches": first["report_searches"],
        "examples_train": stats.get("examples_train"),
        "results": results,
        "runs": len(jobs),
        "runs_made": int(made),
        "jobs": args.jobs,
        "runs_finished": sum(len(r["per_seed"]) for r in results),
        "seconds": round(time.time() - t0, 1),
        "machine": summary(),
    }
    if args.report_only:
        report.update(previous_invocation(os.path.join(args.out, "reproduce.json"), results) or {})
    with open(os.path.join(args.out, "reproduce.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    plot_curves(results, os.path.join(args.out, "reproduce_curves.png"))
    text = markdown(report)
    with open(os.path.join(args.out, "reproduce.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
