"""`ebr train` end to end on the tiny synthetic world: the input pipeline, every cluster
kind (single, in-process PS, TF_CONFIG processes, horovod), checkpoints that survive a
SIGKILL, and `ebr eval` on a model trained on parameter servers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Tiny model: the tests check the machinery, not the quality.
SMALL = ["embedding_dim=16", "num_heads=2", "transformer_ff_dim=32", "batch_size=32",
         "num_random_negatives=32", "hard_negatives=16"]
BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def ebr(*args, timeout=300, check=True, env=None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "ebr", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env=env or _env())
    if check and out.returncode != 0:
        raise AssertionError(f"ebr {' '.join(map(str, args))} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def train_args(data, model_dir, cluster, steps, *extra) -> list[str]:
    args = ["train", "--data", data, "--model-dir", model_dir, "--cluster", cluster, "--steps", steps,
            "--no-progress", *extra, "--set", *SMALL]
    return [str(a) for a in args]


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ps_run(tiny_world, tmp_path_factory):
    """A model trained on the in-process cluster (2 workers, 2 ps)."""
    model_dir = tmp_path_factory.mktemp("ps_run")
    ebr(*train_args(tiny_world[1], model_dir, "local-ps", 60, "--checkpoint-steps", 30, "--min-shard-bytes", 256))
    return model_dir


# ---------------------------------------------------------------------------------------


def test_input_pipeline_batches(tiny_world):
    import numpy as np
    import tensorflow as tf

    from features.spec import ITEM_FEATURE_NAMES, SAMPLED_ITEM_PREFIX, USER_FEATURE_NAMES
    from model.config import load_config
    from model.data import LOG_Q, make_dataset
    from model.lookup import Lookup

    data = tiny_world[1]
    config = load_config(None, SMALL)
    sizes = Lookup(f"{data}/vocab").table_sizes
    batch = next(iter(make_dataset(data, config)))
    b, n = config.batch_size, config.num_random_negatives
    for name in USER_FEATURE_NAMES + ITEM_FEATURE_NAMES:
        assert batch[name].dtype == tf.int64 and batch[name].shape[0] == b, name
    for name in ITEM_FEATURE_NAMES:
        assert batch[SAMPLED_ITEM_PREFIX + name].shape[0] == n, name
    assert batch["his_queries"].shape == (b, 10, 8)
    ids = batch["item_id"].numpy()
    assert (ids > 0).all() and (ids < sizes["item_id"]).all()  # real items, not padding or OOV
    log_q = batch[LOG_Q].numpy()
    assert log_q.shape == (b,) and np.isfinite(log_q).all() and (log_q < 0).all()


def test_input_pipelines_shard_the_examples(tiny_world):
    """Two workers' pipelines see disjoint halves that together are the whole training set."""
    import tensorflow as tf

    from model.config import load_config
    from model.data import make_dataset

    config = load_config(None, SMALL + ["num_random_negatives=0"])

    def keys(ctx):
        ds = make_dataset(tiny_world[1], config, ctx, batch_size=1, repeat=False, shuffle=False, with_log_q=False)
        return [tuple(int(x) for x in tf.concat([e["item_id"], e["query_words"][0], e["rt_item_id"][0]], 0))
                for e in ds]

    all_ = keys(None)
    parts = [keys(tf.distribute.InputContext(2, i, 1)) for i in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(all_)
    assert len(parts[0]) > 0 and len(parts[1]) > 0


def test_single_process_training(tiny_world, tmp_path):
    out = ebr(*train_args(tiny_world[1], tmp_path, "single", 90, "--checkpoint-steps", 30, "--profile"))
    info = read_json(tmp_path / "train_info.json")
    assert info["steps"] == 90 and info["initial_step"] == 0 and info["complete"]
    assert read_json(tmp_path / "config.json")["embedding_dim"] == 16
    assert Path(info["checkpoint"] + ".index").exists()
    assert info["vocab_dir"] == os.path.abspath(f"{tiny_world[1]}/vocab")
    assert info["losses"][-1] < info["losses"][0]  # it learns
    assert list((tmp_path / "logs").rglob("events.out.tfevents*"))  # TensorBoard
    # --profile recorded the second round; its summary finds the model's matmuls.
    from benchmarks.profile import newest_profile, op_times

    seconds, counts, wall = op_times(newest_profile(str(tmp_path / "logs")))
    assert wall > 0 and any("MatMul" in op for op in seconds)
    assert "trained to step 90" in out.stdout
    # A finished run is not redone; another config in the same dir is refused.
    again = ebr(*train_args(tiny_world[1], tmp_path, "single", 90, "--checkpoint-steps", 30))
    assert "already trained" in again.stdout
    bad = ebr(*train_args(tiny_world[1], tmp_path, "single", 90), "temperature=1", check=False)
    assert bad.returncode == 2 and "different config" in bad.stderr


def test_epochs_size_the_run(tiny_world, tmp_path):
    from model.train import plan_steps

    assert plan_steps(300, 100) == (3, 100)
    assert plan_steps(301, 100) == (4, 76)  # equal rounds, at most rounds - 1 steps more
    with pytest.raises(ValueError, match="--steps"):
        plan_steps(0, 10)
    examples = read_json(f"{tiny_world[1]}/stats.json")["examples_train"]
    ebr("train", "--data", tiny_world[1], "--model-dir", tmp_path, "--cluster", "single", "--epochs", 2,
        "--checkpoint-steps", 1000, "--no-progress", "--set", *SMALL)
    assert read_json(tmp_path / "train_info.json")["steps"] == -(-2 * examples // 32)


def test_local_ps_cluster_shards_embeddings(ps_run):
    info = read_json(ps_run / "train_info.json")
    assert info["cluster"] == "local-ps" and info["steps"] == 60
    placement = read_json(ps_run / "placement.json")
    # Every embedding table is split across both parameter servers ...
    tables = {k: v for k, v in placement.items() if "embeddings" in k}
    assert tables
    for name, devices in tables.items():
        assert len(devices) == 2, name
        assert {d.split("/device")[0] for d in devices} == {"/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"}
    # ... and nothing lives on the coordinator or the workers.
    assert all("/job:ps/" in d for devices in placement.values() for d in devices)


def test_hashed_item_ids_keep_log_q_on_the_parameter_servers(tiny_world, tmp_path):
    """With hashed item ids no worker holds a string table of item frequencies: the input
    pipeline sends none, the model's row table of log q is sharded over both ps, and it
    holds row_log_q's values after training (non-trainable)."""
    import numpy as np
    import tensorflow as tf

    from model.config import load_config
    from model.data import ITEM_FREQ_FILE, LOG_Q, make_dataset, row_log_q
    from model.lookup import Lookup

    hashed = ["item_ids=hash", "item_id_buckets=4096", "catalog_size=1000"]
    config = load_config(None, SMALL + hashed)
    batch = next(iter(make_dataset(tiny_world[1], config)))
    assert LOG_Q not in batch and "neg_" + LOG_Q not in batch
    ebr(*train_args(tiny_world[1], tmp_path, "local-ps", 10, "--checkpoint-steps", 10, "--min-shard-bytes", 256),
        *hashed)
    devices = [d for name, d in read_json(tmp_path / "placement.json").items() if "item_log_q" in name]
    assert len(devices) == 1 and {d.split("/device")[0] for d in devices[0]} == {
        "/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"}
    reader = tf.train.load_checkpoint(read_json(tmp_path / "train_info.json")["checkpoint"])
    keys = [k for k in reader.get_variable_to_shape_map() if "item_log_q" in k and "OPTIMIZER" not in k]
    assert len(keys) == 1
    vocab = f"{tiny_world[1]}/vocab"
    expected = row_log_q(f"{vocab}/{ITEM_FREQ_FILE}", Lookup(vocab, config))
    np.testing.assert_allclose(reader.get_tensor(keys[0])[:, 0], expected, rtol=1e-6)


def test_eval_on_a_model_trained_on_parameter_servers(ps_run, tiny_world, tmp_path):
    """The sharded checkpoint restores into one process; the metrics are sane and written."""
    ebr("eval", "--data", tiny_world[1], "--model-dir", ps_run, "--out", tmp_path, "--k", "10,50,200")
    m = read_json(tmp_path / "metrics.json")
    assert m["truth_dir"] == os.path.join(tiny_world[0], "truth")
    assert m["k"] == [10, 50, 200] and m["step"] == 60
    r = [m["recall"][k] for k in ("10", "50", "200")]
    assert 0 <= r[0] <= r[1] <= r[2] <= 1
    assert m["searches"] > 0 and m["searches_with_truth"] == m["searches"]
    for key in ("p_good", "filter_pass"):
        assert all(0 <= m[key][k] <= 1 for k in ("10", "50", "200"))
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_run_resumes_from_its_last_backup(tiny_world, tmp_path):
    """SIGKILL a real training process mid-run; the same command continues, not from 0."""
    args = [sys.executable, "-m", "ebr", *map(str, train_args(tiny_world[1], tmp_path, "single", 240,
                                                             "--checkpoint-steps", 40))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.time() + 240
        while not (tmp_path / "checkpoints" / "ckpt-80.index").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint at step 80 in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "train_info.json").exists()
    out = ebr(*train_args(tiny_world[1], tmp_path, "single", 240, "--checkpoint-steps", 40))
    info = read_json(tmp_path / "train_info.json")
    assert 80 <= info["initial_step"] < 240 and info["initial_step"] % 40 == 0
    assert f"resumed from step {info['initial_step']}" in out.stdout
    assert info["steps"] == 240 and info["steps_this_run"] == 240 - info["initial_step"]


def _tf_config_run(data, tmp_path, steps, evaluator=False):
    """Runs chief + 2 workers + 2 ps (+ an evaluator), each its own OS process with its
    own TF_CONFIG; returns the model dir after the chief finished."""
    from model.cluster import local_cluster_spec

    cluster = local_cluster_spec(num_workers=2, num_ps=2, chief=True)
    model_dir = tmp_path / "run"
    tasks = [(job, i, {"cluster": cluster, "task": {"type": job, "index": i}})
             for job in ("ps", "worker") for i in range(len(cluster[job]))]
    if evaluator:  # a sidecar: needs no place in the training cluster
        tasks.append(("evaluator", 0, {"cluster": {"evaluator": ["localhost:0"]}, "task": {"type": "evaluator", "index": 0}}))
    procs, logs = {}, []
    try:
        for job, i, conf in tasks:
            log = open(tmp_path / f"{job}{i}.log", "w")
            logs.append(log)
            procs[f"{job}{i}"] = subprocess.Popen(
                [sys.executable, "-m", "ebr", *map(str, train_args(data, model_dir, "tf-config", steps))],
                stdout=log, stderr=subprocess.STDOUT, env=_env(TF_CONFIG=json.dumps(conf)))
        chief = {"cluster": cluster, "task": {"type": "chief", "index": 0}}
        ebr(*train_args(data, model_dir, "tf-config", steps, "--checkpoint-steps", steps // 2, "--min-shard-bytes", 256),
            timeout=420, env=_env(TF_CONFIG=json.dumps(chief)))
        for name, p in procs.items():
            if name.startswith(("ps", "worker")):
                assert p.poll() is None, f"{name} died during training"
        if evaluator:
            assert procs["evaluator0"].wait(timeout=300) == 0, "the evaluator failed"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        for log in logs:
            log.close()
    return model_dir


def test_tf_config_cluster_of_processes(tiny_world, tmp_path):
    """chief + 2 workers + 2 ps, each its own OS process with its own TF_CONFIG."""
    model_dir = _tf_config_run(tiny_world[1], tmp_path, 200)
    info = read_json(model_dir / "train_info.json")
    assert info["cluster"] == "tf-config" and info["steps"] == 200
    assert Path(info["checkpoint"] + ".index").exists()
    # The ps processes held the embedding shards: every table has one part on each ps.
    placement = read_json(model_dir / "placement.json")
    table = next(v for k, v in placement.items() if "item_id_embedding/embeddings" in k)
    assert sorted(d.split("/device")[0] for d in table) == ["/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"]
    # Each ps process reported serving, and the checkpoint holds the full item table.
    for i in range(2):
        assert f"ps:{i} serving at" in (tmp_path / f"ps{i}.log").read_text()
    import tensorflow as tf

    shapes = dict(tf.train.list_variables(info["checkpoint"]))
    assert [info["table_sizes"]["item_id"], 16] in shapes.values()


@pytest.mark.slow
def test_tf_config_evaluator_sidecar(tiny_world, tmp_path):
    """An evaluator task evaluates every checkpoint the chief writes, then stops."""
    model_dir = _tf_config_run(tiny_world[1], tmp_path, 100, evaluator=True)
    steps = sorted(int(p.name.split("-")[1]) for p in (model_dir / "eval").iterdir())
    assert steps[-1] == 100
    m = read_json(model_dir / "eval" / "step-100" / "metrics.json")
    assert 0 < m["recall"]["200"] <= 1
    assert list((model_dir / "logs" / "eval").glob("events.out.tfevents*"))


def test_tf_config_errors_are_clear(tiny_world, tmp_path, monkeypatch, capsys):
    from ebr.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(train_args(tiny_world[1], tmp_path, "tf-config", 10)) == 2
    assert "TF_CONFIG" in capsys.readouterr().err
    bad = {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(bad))
    assert main(train_args(tiny_world[1], tmp_path, "tf-config", 10)) == 2
    assert "'chief'" in capsys.readouterr().err


def _horovod_installed() -> bool:
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return (BIN / "horovodrun").exists()


@pytest.mark.skipif(not _horovod_installed(), reason="horovod is not installed; `make horovod` builds it")
def test_horovod_ranks_end_identical(tiny_world, tmp_path):
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
           str(BIN / "ebr"), *map(str, train_args(tiny_world[1], tmp_path, "horovod", 60, "--checkpoint-steps", 30))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    digests = [read_json(tmp_path / f"digest-rank{r}.json") for r in range(2)]
    assert digests[0]["steps"] == digests[1]["steps"] == 60
    assert digests[0]["weights_sha256"] == digests[1]["weights_sha256"]
    info = read_json(tmp_path / "train_info.json")  # rank 0 only
    assert info["ranks"] == 2 and info["examples_per_step"] == 64
    assert info["weights_sha256"] == digests[0]["weights_sha256"]


@pytest.mark.skipif(not _horovod_installed(), reason="horovod is not installed; `make horovod` builds it")
def test_horovod_clips_the_averaged_gradient(tmp_path):
    """Two real ranks apply different gradients; every rank's update is the average gradient
    clipped at its global norm, as one process applying that gradient would: not the
    average of gradients each clipped on its own rank, and with the rows both ranks sent
    for one id summed before the norm is taken."""
    import numpy as np

    grads = [{"dense": [3.0, 0.0, 1.0], "rows": {"0": [2.0, 0.0]}},
             {"dense": [-1.0, 4.0, 1.0], "rows": {"0": [-1.0, 1.0], "2": [0.0, -2.0], "3": [1.0, 1.0]}}]
    clip = 2.0
    (tmp_path / "grads.json").write_text(json.dumps(grads))
    script = Path(__file__).parent / "fixtures" / "horovod_clip_step.py"
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script),
           str(tmp_path / "grads.json"), str(clip), str(tmp_path)]
    env = _env(PYTHONPATH=str(Path(__file__).parent.parent))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def dense(g):
        table = np.zeros([4, 2])
        for row, values in g["rows"].items():
            table[int(row)] = values
        return np.array(g["dense"]), table

    def clipped(w, table):
        norm = np.sqrt((w**2).sum() + (table**2).sum())
        return w * min(1.0, clip / norm), table * min(1.0, clip / norm)

    parts = [dense(g) for g in grads]
    mean = [sum(p[i] for p in parts) / 2 for i in range(2)]
    expected = clipped(*mean)
    per_rank = [sum(clipped(*p)[i] for p in parts) / 2 for i in range(2)]
    assert not np.allclose(expected[0], per_rank[0])  # the rules differ on these gradients
    for r in range(2):
        got = read_json(tmp_path / f"rank{r}.json")
        np.testing.assert_allclose(got["w"], -expected[0], rtol=1e-5)
        np.testing.assert_allclose(got["table"], -expected[1], rtol=1e-5)


def test_clipping_sums_the_rows_of_an_id_first():
    """An embedding gradient with one id looked up twice is clipped at the norm of the
    summed row, the gradient the update applies, not of the two rows apart."""
    import numpy as np
    import tensorflow as tf

    from model.train import summed_clipping

    table = tf.Variable(tf.zeros([3, 2]))
    rows = tf.IndexedSlices(tf.constant([[3.0, 0.0], [-1.0, 0.0]]), tf.constant([1, 1], tf.int64),
                            tf.constant([3, 2], tf.int64))
    optimizer = summed_clipping(tf.keras.optimizers.SGD(1.0, global_clipnorm=1.5))
    assert type(optimizer).__name__ == "SGD"
    optimizer.apply_gradients([(rows, table)])
    np.testing.assert_allclose(table.numpy(), [[0, 0], [-1.5, 0], [0, 0]], rtol=1e-6)  # |3 - 1| = 2 -> 1.5


def test_a_run_to_a_plateau_records_its_curve_and_reports_on_unseen_searches(tiny_world, tmp_path):
    """`benchmarks.convergence` (each run of `make reproduce`): a validation point (recall
    and P_good) every --eval-every steps (the compiled user tower serves every one), the
    best weights kept,
    and the report made on the searches validation never saw."""
    args = ["--data", tiny_world[1], "--out", tmp_path, "--max-steps", 30, "--eval-every", 10, "--patience", 5,
            "--k", "10,50", "--set", *SMALL]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.convergence", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    run = read_json(tmp_path / "run.json")
    assert [c["step"] for c in run["curve"]] == [10, 20, 30] and not run["plateau"]
    assert all(0 <= c["val_recall"] <= 1 for c in run["curve"])
    assert all(0 <= c["val_p_good"] <= 1 for c in run["curve"])  # relevance tracked, not deciding
    best = max(c["val_recall"] for c in run["curve"])
    kept = {c["step"]: c["val_recall"] for c in run["curve"]}[run["best_step"]]
    assert best - 0.002 <= kept <= best  # the last gain of --min-delta is what is kept
    assert all(c["learning_rate"] > 0 for c in run["curve"])
    import tensorflow as tf

    from benchmarks.convergence import is_validation
    from features.spec import parse_examples
    from model.data import split_files

    ds = tf.data.TFRecordDataset(split_files(tiny_world[1], "test"), compression_type="GZIP")
    ids = {s.decode() for b in ds.batch(512) for s in parse_examples(b, ("search_id",))["search_id"].numpy()}
    report = [s for s in ids if not is_validation(s)]
    assert 0 < len(report) < len(ids) and run["report_searches"] == len(report)
    assert run["metrics"]["k"] == [10, 50]
    assert 0 <= run["metrics"]["recall"]["10"] <= run["metrics"]["recall"]["50"] <= 1


def test_a_seed_fixes_the_order_of_the_training_batches(tiny_world):
    """Two pipelines with one seed give the same batches, files interleaved in order (the
    comparison's reruns and paired seeds rest on it); another seed gives another order."""
    import features  # noqa: F401
    import numpy as np

    from model.config import load_config
    from model.data import make_dataset, split_files

    data = tiny_world[1]
    assert len(split_files(data, "train")) >= 2  # more than one file to interleave

    def batches(seed):
        ds = make_dataset(data, load_config(None, SMALL + [f"seed={seed}"]), batch_size=8)
        return [np.concatenate([b["item_id"].numpy().ravel(), b["neg_item_id"].numpy().ravel()])
                for b, _ in zip(ds, range(12))]

    first, again, other = batches(3), batches(3), batches(4)
    assert all((a == b).all() for a, b in zip(first, again))
    assert any((a != b).any() for a, b in zip(first, other))


@pytest.mark.parametrize("warmup_steps", [0, 5])
def test_a_plateau_decays_the_rate_from_the_best_weights_then_stops_the_run(monkeypatch, warmup_steps):
    """The comparison's stopping rule (`benchmarks.convergence`): the first plateau goes
    back to the best weights and multiplies the learning rate by --decay; after the decays
    are spent, --patience evaluations without a gain of --min-delta stop the run, and the
    weights kept are the last gain's. With a warm-up, the decay lowers the rate it rises to."""
    from benchmarks import convergence
    from model.config import MGDSPRConfig, make_optimizer

    scripted = iter([0.50, 0.60, 0.601, 0.65, 0.70, 0.701, 0.69])  # 0.601, 0.701: below --min-delta
    monkeypatch.setattr(convergence, "validation_metrics", lambda *a, **k: (next(scripted), None))

    class Model:
        def __init__(self):
            self.optimizer = make_optimizer(MGDSPRConfig(optimizer="adam", learning_rate=0.005,
                                                         warmup_steps=warmup_steps))
            self.weights, self.stop_training = [0], False

        def get_weights(self):
            return list(self.weights)

        def set_weights(self, weights):
            self.weights = list(weights)

    args = convergence.parse_args(["--data", "unused", "--out", "unused", "--eval-every", "10"])
    assert (args.decay, args.decays, args.patience) == (0.2, 1, 1)
    plateau = convergence._plateau_callback()(args, time.time())
    plateau.searches = []  # read once per run; the scripted metrics need none
    model = Model()
    plateau.set_model(model)
    rates = []
    for epoch in range(7):
        model.weights = [epoch + 1]  # the weights after this epoch's steps
        plateau.on_epoch_begin(epoch)
        plateau.on_epoch_end(epoch, {"loss": 1.0})
        rates.append(round(convergence.learning_rate(model.optimizer), 6))
        if model.stop_training:
            break
    assert plateau.decay_steps == [30]  # 0.601 is no gain over 0.60: decay, from step 20's weights
    assert rates == [0.005, 0.005, 0.001, 0.001, 0.001, 0.001]
    assert model.stop_training and epoch == 5  # 0.701: the first evaluation without a gain after the decay
    assert (plateau.best_step, plateau.best_weights) == (50, [5])
    assert [c["learning_rate"] for c in plateau.curve][:3] == pytest.approx([0.005, 0.005, 0.005])


def test_the_compiled_user_tower_of_evaluation_lives_and_dies_with_its_model(tiny_world):
    """Evaluations during a run reuse one traced tower and, read once, the searches; a
    model that is gone (the sidecar moves on to the next checkpoint) takes its cache entry
    with it."""
    import gc

    from model import evaluate
    from model.config import load_config
    from model.data import vocab_dir
    from model.lookup import Lookup
    from model.rundir import build

    config = load_config(None, SMALL)
    model, _ = build(config, Lookup(vocab_dir(tiny_world[1]), config).table_sizes)
    first, queries, positives = evaluate.embed_searches(model, tiny_world[1])
    # a run's validation points read the searches once and embed them at every point
    searches = evaluate.read_searches(tiny_world[1])
    again, queries_again, positives_again = evaluate.embed_searches(model, tiny_world[1], searches=searches)
    (entry,) = evaluate._TOWERS[model].values()
    assert entry.experimental_get_tracing_count() == 1 and (first == again).all()
    assert (queries, positives) == (queries_again, positives_again) and len(queries) > 1
    del model, entry
    gc.collect()
    assert len(evaluate._TOWERS) == 0


@pytest.mark.parametrize("use_trm", [True, False])
def test_the_fusion_report_measures_what_the_user_vector_reads(tiny_world, use_trm):
    """`benchmarks.fusion`: the [CLS] row's attention shares and its own add up to one, and
    a branch the fusion gives no weight moves the user vector by nothing while the query
    rows move it."""
    from benchmarks.fusion import BRANCHES, format_report, inspect
    from model.config import load_config
    from model.data import vocab_dir
    from model.lookup import Lookup
    from model.rundir import build

    config = load_config(None, SMALL + [f"use_trm={use_trm}"])
    model, _ = build(config, Lookup(vocab_dir(tiny_world[1]), config).table_sizes)
    first = inspect(model, tiny_world[1], searches=40)
    assert first["searches"] == 40 and "| h_real |" in format_report(first, "tiny")
    if use_trm:
        total = first["cls_attention"] + sum(first[b]["attention"] for b in BRANCHES)
        assert total == pytest.approx(1.0, abs=1e-5)
        return
    assert first["cls_attention"] is None and first["h_short"]["moved"] > 0
    kernel, bias = model.user_tower.fusion.project.get_weights()
    d = config.embedding_dim
    kernel[6 * d: 12 * d] = 0.0  # the concatenation's weights of the six h_real rows
    model.user_tower.fusion.project.set_weights([kernel, bias])
    second = inspect(model, tiny_world[1], searches=40)
    assert second["h_real"]["moved"] == pytest.approx(0.0, abs=1e-6)
    assert second["q_mgs"]["moved"] > 1e-3
