"""Train one model until its validation recall stops improving, then evaluate its best
weights on the held-out searches. One process per run (`benchmarks.reproduce` starts it).

    python -m benchmarks.convergence --data data/medium/processed --out runs/reproduce/mgdspr-seed0 \
        --config quick --set seed=0

The test day's searches are split by a stable hash of `search_id`: a fifth is the
validation set that decides when to stop and which weights to keep; the other four
fifths are the report set, never seen before the final evaluation. Every `--eval-every`
steps the run records the mean training loss, validation Recall@K and (with ground truth)
validation P_good@50. An evaluation without a gain of `--min-delta` is a plateau: the
first `--decays` plateaus each go back to the best weights so far and multiply the
learning rate by `--decay` (a converged run at a high rate, then refined at a low one);
after those, `--patience` evaluations without a gain stop the run, as does `--max-steps`.

Writes OUT/run.json: the curve, the best step, the report set's metrics (with the
standard slices and the P_good ceiling), the config and the timings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

VALIDATION_SHARE = 5  # one search in 5 is validation


def is_validation(search_id: str) -> bool:
    return zlib.crc32(search_id.encode("utf-8")) % VALIDATION_SHARE == 0


def add_rule_arguments(p) -> None:
    """The stopping rule's options (`RULE_KEYS`), shared with `benchmarks.reproduce`."""
    p.add_argument("--eval-every", type=int, default=250, help="steps between validation evaluations (default 250)")
    p.add_argument("--patience", type=int, default=1,
                   help="evaluations without a gain before stopping, once the decays are spent (default 1)")
    p.add_argument("--decay", type=float, default=0.2,
                   help="on a plateau, back to the best weights and the learning rate times this (default 0.2)")
    p.add_argument("--decays", type=int, default=1,
                   help="plateaus met with a decay before one stops the run (default 1; 0 = stop on the first "
                        "--patience plateau at a constant rate)")
    p.add_argument("--min-delta", type=float, default=0.002, help="a gain smaller than this is no gain (default 0.002)")
    p.add_argument("--max-steps", type=int, default=4000, help="stop here even without a plateau (default 4000)")
    p.add_argument("--monitor-k", type=int, default=200, help="validation Recall@K that decides (default 200)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="processed dir (train/, test/, items/, vocab/)")
    p.add_argument("--out", required=True, help="where run.json goes")
    p.add_argument("--config", default="quick", help="a preset (paper, quick) or a JSON file (default quick)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    add_rule_arguments(p)
    p.add_argument("--k", default="10,50,200,1000", help="cut-offs of the final evaluation")
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow's threads (intra- and inter-op); 0: its default, every core. benchmarks.reproduce "
                        "--jobs N gives each of its N concurrent runs cores / N")
    return p.parse_args(argv)


RELEVANCE_K = 50  # the validation curve's P_good@K beside its recall


def validation_metrics(model, data_dir: str, k: int, truth=None, searches=None) -> tuple[float, float | None]:
    """(Recall@k, P_good@RELEVANCE_K or None without ground truth) on the validation
    searches (`searches`: `model.evaluate.read_searches` of them, read once per run).
    Relevance is tracked along the run but never decides it: a run stopped at another
    step has another balance of the two."""
    from model.evaluate import embed_items, embed_searches, retrieval_metrics, top_k

    items, fields = embed_items(model, data_dir)
    users, queries, positives = embed_searches(model, data_dir, select=is_validation, searches=searches)
    ks = sorted({k, RELEVANCE_K})
    m = retrieval_metrics(top_k(users, items, max(ks)), fields, queries, positives, ks, truth)
    return m["recall"][str(k)], m["p_good"][str(RELEVANCE_K)] if truth is not None else None


RULE_KEYS = ("eval_every", "patience", "min_delta", "max_steps", "monitor_k", "decay", "decays")


def stopping_rule(args) -> dict:
    """The settings that decide when a run stops and which weights it keeps (run.json's
    "rule"; a comparison retrains a run whose rule is no longer its own)."""
    return {key: getattr(args, key) for key in RULE_KEYS}


def rule_flags(rule: dict) -> list[str]:
    """The command-line flags that give a run `rule` (a `stopping_rule`)."""
    return [part for key, value in rule.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def learning_rate(optimizer) -> float:
    """The rate the optimizer trains at once any warm-up is over (`model.config.rate_variable`)."""
    import numpy as np

    from model.config import rate_variable

    return float(np.asarray(rate_variable(optimizer)))


def _plateau_callback():
    import features  # noqa: F401
    import tensorflow as tf

    from model.config import rate_variable

    class Plateau(tf.keras.callbacks.Callback):
        """After every epoch of `eval_every` steps: the curve point, the best weights so
        far, and a stop after `patience` epochs without a gain of `min_delta`."""

        def __init__(self, args, started: float, truth=None):
            super().__init__()
            self.args, self.started, self.truth = args, started, truth
            self.curve, self.best, self.best_weights, self.since_best = [], -1.0, None, 0
            self.decays_left, self.decay_steps, self.best_step = args.decays, [], 0
            self.train_seconds, self.epoch_started = 0.0, started
            self.searches = None  # the validation searches, read at the first evaluation

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            self.train_seconds += time.time() - self.epoch_started
            step = (epoch + 1) * self.args.eval_every
            if self.searches is None:
                from model.evaluate import read_searches

                self.searches = read_searches(self.args.data, select=is_validation)
            recall, p_good = validation_metrics(self.model, self.args.data, self.args.monitor_k, self.truth,
                                                self.searches)
            loss = float((logs or {}).get("loss", float("nan")))
            rate = learning_rate(self.model.optimizer)
            self.curve.append({"step": step, "loss": loss, "val_recall": recall, "val_p_good": p_good,
                               "learning_rate": rate, "seconds": round(time.time() - self.started, 1)})
            relevance = "" if p_good is None else f"  P_good@{RELEVANCE_K} {p_good:.4f}"
            print(f"step {step}: loss {loss:.4f}  validation Recall@{self.args.monitor_k} {recall:.4f}{relevance}"
                  f"  lr {rate:.2g}", flush=True)
            if recall > self.best + self.args.min_delta:
                self.best, self.best_weights, self.since_best = recall, self.model.get_weights(), 0
                self.best_step = step
            elif self.decays_left > 0:
                # A plateau at this rate: on from the best weights at a lower one.
                self.decays_left -= 1
                self.model.set_weights(self.best_weights)
                rate_variable(self.model.optimizer).assign(rate * self.args.decay)
                self.decay_steps.append(step)
                print(f"step {step}: plateau; back to the best weights, learning rate {rate:.2g} -> "
                      f"{rate * self.args.decay:.2g}", flush=True)
            else:
                self.since_best += 1
                if self.since_best >= self.args.patience:
                    self.model.stop_training = True

    return Plateau


def main(argv=None) -> int:
    args = parse_args(argv)
    import features  # noqa: F401
    import tensorflow as tf

    from model.config import load_config
    from model.data import make_dataset, vocab_dir
    from model.evaluate import Truth, default_truth_dir, measure, parse_ks
    from model.lookup import Lookup
    from model.rundir import build

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    Plateau = _plateau_callback()

    ks = parse_ks(args.k)
    config = load_config(args.config, args.overrides)
    tf.keras.utils.set_random_seed(config.seed)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    model, optimizer = build(config, Lookup(vocab_dir(args.data), config).table_sizes, args.data)
    model.compile(optimizer=optimizer)
    truth_dir = default_truth_dir(args.data)
    plateau = Plateau(args, time.time(), Truth(truth_dir) if truth_dir else None)
    epochs = -(-args.max_steps // args.eval_every)
    model.fit(make_dataset(args.data, config), steps_per_epoch=args.eval_every, epochs=epochs,
              callbacks=[plateau], verbose=0)
    model.set_weights(plateau.best_weights)
    curve, step = plateau.curve, plateau.curve[-1]["step"]
    best_step = plateau.best_step  # the weights kept: the last gain of at least --min-delta

    metrics, _ = measure(model, args.data, ks, truth_dir, select=lambda s: not is_validation(s))
    run = {
        "config": json.loads(config.to_json()),
        "curve": curve,
        "best_step": best_step,
        "steps": step,
        "plateau": step < args.max_steps,
        "rule": stopping_rule(args),
        "decay_steps": plateau.decay_steps,
        "train_seconds": round(plateau.train_seconds, 1),
        "examples_per_sec": round(step * config.batch_size / max(plateau.train_seconds, 1e-9), 1),
        "seconds": round(time.time() - t0, 1),
        "metrics": metrics,
        "report_searches": metrics["searches"],
    }
    with open(os.path.join(args.out, "run.json"), "w", encoding="utf-8") as f:
        json.dump(run, f, indent=1, ensure_ascii=False, default=float)
    print(f"best step {best_step} of {step}; report set Recall@{ks[-1]} {metrics['recall'][str(ks[-1])]:.4f}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
