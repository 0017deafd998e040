"""Train MGDSPR on the preprocessed TFRecords.

    ebr train --data data/small/processed --model-dir runs/small                 # in-process PS cluster
    ebr train --data D --model-dir M --cluster single --steps 300 --set embedding_dim=16
    TF_CONFIG='{"cluster": {...}, "task": {"type": "worker", "index": 0}}' ebr train --cluster tf-config ...
    horovodrun -np 2 -H localhost:2 --gloo ebr train --cluster horovod --data D --model-dir M

Clusters:
  local-ps   real gRPC servers in this process (--workers, --ps), ParameterServerStrategy:
             embedding tables are sharded across the ps, steps run on the workers.
  tf-config  one process per task, roles from TF_CONFIG: worker and ps tasks serve until
             killed, the chief coordinates training, an optional evaluator task evaluates
             each new checkpoint on the test window. The same command on every pod.
  single     one process, no strategy.
  horovod    synchronous data parallel under horovodrun: gradients averaged across ranks
             every step, initial weights broadcast from rank 0, rank 0 writes checkpoints.

Training runs --steps steps (or --epochs passes over the training examples) in rounds of
--checkpoint-steps steps; after each round the full training state is backed up, so a
killed run restarted with the same command continues from the last backup, not step 0.

MODEL_DIR gets: config.json (the model config), train_info.json (vocabulary dir, final
checkpoint, step counts, timings, weights digest), checkpoints/ (model checkpoints, the
last one is the final weights), backup/ (resume state while training), logs/
(TensorBoard), placement.json (the device of every variable shard; PS clusters only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext

from model.rundir import (
    BACKUP_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    INFO_FILE,
    LOG_DIR,
    PLACEMENT_FILE,
    build,
    check_model_dir,
    write_json,
)

CLUSTERS = ("local-ps", "tf-config", "single", "horovod")
# Steps per remote call on PS clusters: the coordinator's scheduling and the RPC then cost
# once per this many steps.
PS_STEPS_PER_EXECUTION = 10

log = logging.getLogger("ebr.train")


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="processed dir (train/, test/, items/, vocab/ from `ebr preprocess`)")
    p.add_argument("--model-dir", required=True, help="where config, checkpoints, logs and train_info.json go")
    p.add_argument("--cluster", choices=CLUSTERS, default="local-ps", help="how to distribute training (default local-ps)")
    p.add_argument("--steps", type=int, default=None, help="training steps in total (overrides --epochs)")
    p.add_argument("--epochs", type=float, default=10.0,
                   help="passes over the training examples when --steps is not given (default 10)")
    p.add_argument("--config", default=None, help="a preset (paper, quick: tuned for short CPU runs) or a JSON file of MGDSPRConfig fields "
                   "(default: the paper's values)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set embedding_dim=16 temperature=1")
    p.add_argument("--workers", type=int, default=2, help="local-ps: worker servers (default 2)")
    p.add_argument("--ps", type=int, default=2, help="local-ps: parameter servers (default 2)")
    p.add_argument("--checkpoint-steps", type=int, default=200,
                   help="steps between backups / checkpoints (default 200); a killed run resumes from the last one")
    p.add_argument("--min-shard-bytes", type=int, default=None,
                   help="PS clusters: variables above this size are split across the ps (default 256 KiB)")
    p.add_argument("--steps-per-execution", type=int, default=None,
                   help="steps per function call; on PS clusters one call is one remote call from the coordinator "
                        f"to a worker (default: {PS_STEPS_PER_EXECUTION} on PS clusters, else 1)")
    p.add_argument("--fresh", action="store_true", help="delete MODEL_DIR's previous run first instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--profile", action="store_true",
                   help="profile the second round (after tracing) with TensorFlow's profiler into MODEL_DIR/logs "
                        "(TensorBoard's Profile tab; `python -m benchmarks.profile MODEL_DIR/logs` summarises it)")


# ---------------------------------------------------------------------------------------
# Planning


def plan_steps(total: int, checkpoint_steps: int) -> tuple[int, int]:
    """(rounds, steps per round) for `total` steps backed up every <= `checkpoint_steps`:
    Keras epochs of equal length, so rounds * steps_per_round >= total, exceeding it by
    less than `rounds` (none when checkpoint_steps divides total)."""
    if total < 1:
        raise ValueError(f"--steps must be >= 1, got {total}")
    if checkpoint_steps < 1:
        raise ValueError(f"--checkpoint-steps must be >= 1, got {checkpoint_steps}")
    rounds = math.ceil(total / checkpoint_steps)
    return rounds, math.ceil(total / rounds)


def steps_per_execution(args, strategy, per_round: int) -> int:
    """--steps-per-execution, or its default: PS_STEPS_PER_EXECUTION on PS clusters (at most
    a round), 1 elsewhere."""
    if args.steps_per_execution is not None:
        if args.steps_per_execution < 1:
            raise ValueError(f"--steps-per-execution must be >= 1, got {args.steps_per_execution}")
        return args.steps_per_execution
    return min(PS_STEPS_PER_EXECUTION, per_round) if strategy is not None else 1


def train_examples(data_dir: str) -> int:
    """Training examples, from the pipeline's stats.json or by counting the records."""
    from features.io import exists, join, read_text

    stats_path = join(data_dir, "stats.json")
    if exists(stats_path):
        n = json.loads(read_text(stats_path)).get("examples_train")
        if isinstance(n, int) and n > 0:
            return n
    from model.data import count_records, split_files

    return count_records(split_files(data_dir, "train"))


def model_weights(model) -> list:
    """The model's variables without metric state (a loss tracker's running total differs
    per horovod rank and is no weight)."""
    metric_vars = {id(v) for m in model.metrics for v in m.variables}
    return [v for v in model.variables if id(v) not in metric_vars]


def weights_digest(variables) -> str:
    """sha256 over the names and float bytes of `variables` (sorted by name); equal digests
    mean bit-identical weights."""
    h = hashlib.sha256()
    for v in sorted(variables, key=lambda v: v.name):
        h.update(v.name.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Horovod


def horovod_module():
    try:
        import horovod.tensorflow as hvd
    except ImportError as e:
        raise ValueError(f"--cluster horovod needs horovod (run `make horovod`): {e}") from None
    return hvd


def summed_clipping(optimizer):
    """The same optimizer, clipping at the global norm of the gradient it applies. Keras
    clips a sparse (embedding) gradient as it comes, one row per lookup, so an id looked up
    k times enters the norm as k rows rather than their sum; here rows are summed per id
    first (which Keras does anyway right after clipping). The class keeps its name."""
    base = type(optimizer)

    class SummedClipping(base):
        def _clip_gradients(self, grads):
            return super()._clip_gradients(self._deduplicate_sparse_grad(grads))

    SummedClipping.__name__ = SummedClipping.__qualname__ = base.__name__
    return rebuilt(SummedClipping, optimizer)


def rebuilt(cls, optimizer):
    """An optimizer of class `cls` with `optimizer`'s settings. A learning-rate schedule (a
    warm-up) is handed over as it is, with its variables, not rebuilt from its config."""
    from model.config import rate_schedule

    config, schedule = optimizer.get_config(), rate_schedule(optimizer)
    if schedule is not None:
        config["learning_rate"] = schedule
    return cls.from_config(config)


def allreduce_optimizer(optimizer, hvd):
    """The same optimizer with gradients averaged across horovod ranks before every update,
    so its clipping (of a `summed_clipping` optimizer: the global norm of the gradient
    applied) sees the averaged gradient, as one process would. Sparse gradients from
    embedding lookups stay sparse: summed per id on each rank, then allgathered (each
    distinct row crosses the network once). Wrapping apply_gradients covers any
    train_step; the class keeps its name so checkpoints load without horovod."""
    base = type(optimizer)

    class Allreduced(base):
        def apply_gradients(self, grads_and_vars, *args, **kwargs):
            grads, variables = zip(*grads_and_vars)
            grads = self._deduplicate_sparse_grad(grads)
            reduced = []
            for i, (g, v) in enumerate(zip(grads, variables)):
                if g is not None:
                    g = hvd.allreduce(g, op=hvd.Average, name=f"grad_{i}")
                reduced.append((g, v))
            return super().apply_gradients(reduced, *args, **kwargs)

    Allreduced.__name__ = Allreduced.__qualname__ = base.__name__
    return rebuilt(Allreduced, optimizer)


# ---------------------------------------------------------------------------------------
# Callbacks


def _callbacks_module():
    import features  # noqa: F401
    import tensorflow as tf

    class RankAwareBackup(tf.keras.callbacks.BackupAndRestore):
        """BackupAndRestore where only `writer` writes; every process restores from the
        same backup, so all horovod ranks resume at the same step."""

        def __init__(self, backup_dir, writer: bool):
            super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=writer)
            self.writer = writer

        def _backup(self, epoch, batch=0):
            if self.writer:
                super()._backup(epoch, batch)

    class Broadcast(tf.keras.callbacks.Callback):
        """horovod: rank 0's weights and optimizer state to every rank before the first step
        (after any restore), so all ranks start identical."""

        def __init__(self, hvd):
            super().__init__()
            self.hvd = hvd

        def on_train_begin(self, logs=None):
            self.hvd.broadcast_variables(self.model.variables, root_rank=0)
            self.hvd.broadcast_variables(self.model.optimizer.variables, root_rank=0)

    class Checkpoints(tf.keras.callbacks.Callback):
        """Model checkpoints (weights + optimizer) after every round, numbered by step; the
        last one is the final model that eval and export load."""

        def __init__(self, directory: str, max_to_keep: int = 3):
            super().__init__()
            self.directory = directory
            self.max_to_keep = max_to_keep
            self.manager = None

        def _manager(self):
            if self.manager is None:
                ckpt = tf.train.Checkpoint(model=self.model)
                self.manager = tf.train.CheckpointManager(ckpt, self.directory, self.max_to_keep)
            return self.manager

        def save(self) -> str:
            step = int(self.model.optimizer.iterations.numpy())
            manager = self._manager()
            latest = manager.latest_checkpoint
            if latest and latest.rsplit("-", 1)[-1] == str(step):  # saved at this step already
                return latest
            return manager.save(checkpoint_number=step)

        def on_epoch_end(self, epoch, logs=None):
            self.save()

    class Recorder(tf.keras.callbacks.Callback):
        """Step counts and wall time per round (a round ends after the cluster has finished
        its steps, so the times are real under asynchronous PS training)."""

        def __init__(self, steps_per_round: int, examples_per_step: int, total: int, progress: bool,
                     per_batch: bool, chief: bool):
            super().__init__()
            self.chief = chief
            # Under a PS strategy steps are only scheduled per batch; counting happens per round.
            self.per_batch = per_batch
            self._supports_tf_logs = True  # per-batch hooks must not pull the loss to the host
            self.steps_per_round = steps_per_round
            self.examples_per_step = examples_per_step
            self.total = total
            self.progress = progress
            self.round_times: list[float] = []
            self.losses: list[float] = []
            self.initial_step = 0
            self.bar = None

        def on_train_begin(self, logs=None):
            self.initial_step = int(self.model.optimizer.iterations.numpy())
            if self.initial_step and self.chief:
                log.info("resumed from the backup at step %d", self.initial_step)
                print(f"resumed from step {self.initial_step}", flush=True)
            if self.progress:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=self.initial_step, unit="step", desc="train",
                                dynamic_ncols=True, mininterval=1.0)
            self.t_start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def _implements_train_batch_hooks(self):
            return self.per_batch and self.progress

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            self.round_times.append(time.perf_counter() - self.t0)
            loss = float((logs or {}).get("loss", float("nan")))
            self.losses.append(loss)
            step = int(self.model.optimizer.iterations.numpy())
            rate = self.steps_per_round * self.examples_per_step / max(self.round_times[-1], 1e-9)
            if self.bar is not None:
                self.bar.n = step
                self.bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{rate:.0f}")
                self.bar.refresh()
            elif self.chief:
                log.info("step %d/%d loss %.4f (%.0f examples/s)", step, self.total, loss, rate)

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()

        def summary(self) -> dict:
            times = self.round_times
            # The first round includes tracing and warm-up; leave it out when there are more.
            steady = times[1:] if len(times) > 1 else times
            secs = sum(steady)
            steps = self.steps_per_round * len(steady)
            return {
                "round_seconds": [round(t, 3) for t in times],
                "losses": self.losses,
                "examples_per_sec": steps * self.examples_per_step / secs if secs > 0 else None,
                "steps_per_sec": steps / secs if secs > 0 else None,
                "train_seconds": round(time.perf_counter() - self.t_start, 3),
            }

    class Profile(tf.keras.callbacks.Callback):
        """TensorFlow's profiler over one round (the second: the first traces and warms
        up). It records every thread of this process, so under local-ps the in-process
        workers' and parameter servers' ops too."""

        def __init__(self, logdir: str, round_index: int = 1):
            super().__init__()
            self.logdir, self.round_index = logdir, round_index

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == self.round_index:
                tf.profiler.experimental.start(self.logdir)

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.round_index:
                tf.profiler.experimental.stop()

    return RankAwareBackup, Broadcast, Checkpoints, Recorder, Profile


# ---------------------------------------------------------------------------------------
# Training


def run(args, config, mode: str, strategy=None, hvd=None, num_workers: int = 0) -> int:
    """Trains in this process: the coordinator of a PS cluster of `num_workers` workers
    (`strategy`), one horovod rank (`hvd`), or a single process."""
    import features  # noqa: F401
    import tensorflow as tf

    from features.io import exists, join
    from features.vocab import vocab_path
    from model.cluster import sharded_over, variable_placement
    from model.data import dataset_fn, make_dataset, vocab_dir
    from model.lookup import Lookup, hash_collisions

    rank = hvd.rank() if hvd else 0
    size = hvd.size() if hvd else 1
    chief = rank == 0
    model_dir = args.model_dir
    # Per-rank seeds: dropout noise and data order differ across ranks, and the initial
    # weights too, until rank 0's are broadcast (so that broadcast is what makes them agree).
    tf.keras.utils.set_random_seed(config.seed + rank)

    done = check_model_dir(model_dir, config.to_json(), args.fresh) if chief else None
    if hvd:
        # Every rank takes rank 0's view of the dir, after rank 0 has checked (or cleared) it.
        done = hvd.broadcast_object(done, root_rank=0, name="model_dir_state")
    examples_per_step = config.batch_size * size
    total = args.steps or math.ceil(args.epochs * train_examples(args.data) / examples_per_step)
    rounds, per_round = plan_steps(total, min(args.checkpoint_steps, total))
    if done and done.get("complete"):
        if done.get("steps", 0) >= rounds * per_round:
            print(f"{model_dir} is already trained to step {done['steps']}; --fresh to retrain", flush=True)
            return 0
        raise ValueError(f"{model_dir} holds a finished run of {done.get('steps')} steps; "
                         "use --fresh to retrain with more steps, or another --model-dir")
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        write_json(join(model_dir, CONFIG_FILE), json.loads(config.to_json()))
    log.info("training %d steps (%d rounds of %d), %d examples per step, cluster %s",
             rounds * per_round, rounds, per_round, examples_per_step, mode)

    table_sizes = Lookup(vocab_dir(args.data), config).table_sizes
    collisions = None
    if chief and config.item_ids == "hash" and exists(vocab_path(vocab_dir(args.data), "item_id")):
        collisions = hash_collisions(vocab_dir(args.data), config.item_id_buckets)
        print(f"item ids hashed into {collisions['buckets']:,} rows: {collisions['colliding_items']:,} of "
              f"{collisions['items']:,} items share a row ({100 * collisions['collision_rate']:.2f}%, "
              f"{100 * collisions['expected_collision_rate']:.2f}% expected)", flush=True)
    with strategy.scope() if strategy else nullcontext():
        model, optimizer = build(config, table_sizes, args.data)
        optimizer = summed_clipping(optimizer)
        if hvd:
            optimizer = allreduce_optimizer(optimizer, hvd)
        model.compile(optimizer=optimizer, steps_per_execution=steps_per_execution(args, strategy, per_round))
        optimizer.build(model.trainable_variables)

    if strategy is not None:
        placement = variable_placement(model.variables)
        write_json(join(model_dir, PLACEMENT_FILE), placement)
        sharded = sharded_over(placement)
        log.info("%d of %d variables sharded across the ps: %s", len(sharded), len(placement),
                 "; ".join(f"{k} -> {', '.join(v)}" for k, v in sharded.items()))
        # Each worker shards and seeds its input by its own index (model.data.input_pipeline).
        data = tf.keras.utils.experimental.DatasetCreator(dataset_fn(args.data, config, num_workers=num_workers))
    elif hvd:
        ctx = tf.distribute.InputContext(num_input_pipelines=size, input_pipeline_id=rank, num_replicas_in_sync=1)
        data = make_dataset(args.data, config, ctx, batch_size=config.batch_size)
    else:
        data = make_dataset(args.data, config)

    RankAwareBackup, Broadcast, Checkpoints, Recorder, Profile = _callbacks_module()
    checkpoints = Checkpoints(join(model_dir, CHECKPOINT_DIR))
    recorder = Recorder(per_round, examples_per_step, rounds * per_round,
                        progress=chief and not args.no_progress, per_batch=strategy is None, chief=chief)
    callbacks = [RankAwareBackup(join(model_dir, BACKUP_DIR), writer=chief)]
    if hvd:
        callbacks.append(Broadcast(hvd))
    callbacks.append(recorder)
    if chief:
        callbacks += [checkpoints, tf.keras.callbacks.TensorBoard(join(model_dir, LOG_DIR), update_freq="epoch")]
        if args.profile:
            callbacks.append(Profile(join(model_dir, LOG_DIR)))

    model.fit(data, epochs=rounds, steps_per_epoch=per_round, callbacks=callbacks, verbose=0)

    steps = int(optimizer.iterations.numpy())
    weights = model_weights(model)
    digest = weights_digest(weights)
    if hvd:
        per_variable = {v.name: hashlib.sha256(v.numpy().tobytes()).hexdigest()[:16] for v in weights}
        write_json(join(model_dir, f"digest-rank{rank}.json"),
                    {"rank": rank, "steps": steps, "weights_sha256": digest, "variables": per_variable})
    if chief:
        final = checkpoints.save()
        info = {
            "complete": True,
            "cluster": mode,
            "ranks": size,
            "data_dir": os.path.abspath(args.data),
            "vocab_dir": os.path.abspath(vocab_dir(args.data)),
            "checkpoint": os.path.abspath(final),
            "table_sizes": table_sizes,
            "item_id_hash": collisions,
            "steps": steps,
            "initial_step": recorder.initial_step,
            "steps_this_run": steps - recorder.initial_step,
            "batch_size": config.batch_size,
            "examples_per_step": examples_per_step,
            "weights_sha256": digest,
            **recorder.summary(),
        }
        write_json(join(model_dir, INFO_FILE), info)
        print(f"trained to step {steps}; final checkpoint {final}", flush=True)
    if hvd:
        hvd.join()
    return 0


def main(args) -> int:
    import features  # noqa: F401
    import tensorflow as tf


    from model.cluster import (
        DEFAULT_MIN_SHARD_BYTES,
        parameter_server_strategy,
        serve,
        start_local_cluster,
        tf_config_resolver,
    )
    from model.config import load_config

    config = load_config(args.config, args.overrides)
    min_shard = args.min_shard_bytes or DEFAULT_MIN_SHARD_BYTES
    if args.cluster == "tf-config":
        resolver = tf_config_resolver()
        if resolver.task_type in ("worker", "ps"):
            serve(resolver)
            return 0
        if resolver.task_type == "evaluator":
            from model.evaluate import sidecar

            return sidecar(args.data, args.model_dir, config)
        workers = len(resolver.cluster_spec().as_dict()["worker"])
        return run(args, config, "tf-config", parameter_server_strategy(resolver, min_shard), num_workers=workers)
    if args.cluster == "local-ps":
        if args.workers < 1 or args.ps < 1:
            raise ValueError(f"local-ps needs --workers >= 1 and --ps >= 1, got {args.workers} and {args.ps}")
        resolver = start_local_cluster(args.workers, args.ps)
        return run(args, config, "local-ps", parameter_server_strategy(resolver, min_shard), num_workers=args.workers)
    if args.cluster == "horovod":
        hvd = horovod_module()
        hvd.init()
        # Ranks share the machine's cores; without a cap each would start a thread per core.
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
        return run(args, config, "horovod", hvd=hvd)
    return run(args, config, "single")
