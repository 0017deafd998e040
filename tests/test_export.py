"""`ebr export` and `ebr embed`: the split SavedModels are what TF Serving and the index
need, they compute exactly what the trained towers compute, and versions are atomic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from features.spec import FEATURES, ITEM_FEATURE_NAMES, USER_FEATURE_NAMES

from conftest import TINY_MODEL, ebr

BIN = Path(sys.executable).parent
UNSEEN = "zz-never-seen-token"


@pytest.fixture(scope="module")
def exported(tiny_export, tmp_path_factory):
    """A private copy of the session's export (these tests add versions to its root)."""
    import shutil

    processed, model_dir, root, _ = tiny_export
    mine = tmp_path_factory.mktemp("export") / "exports"
    shutil.copytree(root / "1", mine / "1")
    return processed, model_dir, mine, mine / "1"


def user_batch(processed: str, n: int = 8) -> dict:
    """Real test examples' user features as numpy strings, one row with unseen tokens."""
    import tensorflow as tf

    from features.spec import parse_examples
    from model.data import split_files

    ds = tf.data.TFRecordDataset(split_files(processed, "test"), compression_type="GZIP").take(n).batch(n)
    batch = {k: v.numpy().astype(object) for k, v in parse_examples(next(iter(ds)), USER_FEATURE_NAMES).items()}
    for name in ("query_words", "query_chars", "rt_item_id", "rt_brand"):
        batch[name][0, 0] = UNSEEN.encode()
    batch["his_queries"][0, 0] = f"{UNSEEN} 连衣裙".encode()
    return batch


def in_process_towers(processed, model_dir, batch):
    """What the trained model itself computes: (users [b, d], items [b, d], item ids)."""
    import tensorflow as tf

    from features.spec import parse_examples
    from model.data import split_files, vocab_dir
    from model.lookup import Lookup
    from model.rundir import restore

    model, *_ = restore(str(model_dir), processed)
    lookup = Lookup(vocab_dir(processed))
    users = model.user_tower(lookup({k: tf.constant(v) for k, v in batch.items()}), training=False).numpy()
    ds = tf.data.TFRecordDataset(split_files(processed, "items"), compression_type="GZIP").take(16).batch(16)
    raw = parse_examples(next(iter(ds)), ITEM_FEATURE_NAMES)
    raw["item_id"] = tf.concat([raw["item_id"][:-1], tf.constant([UNSEEN.encode()])], 0)  # an unseen item
    items = model.item_tower(lookup(raw), training=False).numpy()
    return users, items, {k: raw[k].numpy() for k in ("item_id", "title_words")}


# Runs in a fresh interpreter that imports TensorFlow and nothing of the project.
TF_ONLY = textwrap.dedent("""
    import pickle, sys
    import tensorflow as tf
    path, tower, output = sys.argv[1:4]
    inputs = pickle.load(sys.stdin.buffer)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    out = fn(**{k: tf.constant(v.astype(bytes)) for k, v in inputs.items()})[output].numpy()
    project = sorted(m for m in ("features", "model", "pipeline", "serving", "ebr") if m in sys.modules)
    pickle.dump((out, sorted(fn.structured_input_signature[1]), project), sys.stdout.buffer)
""")


def call_in_fresh_tensorflow(path, output, inputs):
    import pickle

    out = subprocess.run([sys.executable, "-c", TF_ONLY, str(path), "tower", output], input=pickle.dumps(inputs),
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return pickle.loads(out.stdout)


def test_towers_load_in_plain_tensorflow_and_match_the_trained_model(exported):
    processed, model_dir, _, version = exported
    batch = user_batch(processed)
    users, items, item_inputs = in_process_towers(processed, model_dir, batch)

    got, names, project = call_in_fresh_tensorflow(version / "user_tower", "user_embedding", batch)
    assert project == []  # nothing of the project was imported to serve it
    assert names == sorted(USER_FEATURE_NAMES)  # user-side features only: nothing of the target item
    assert got.shape == users.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, users, atol=1e-5)  # row 0 has unseen tokens: OOV buckets, not errors

    got, names, _ = call_in_fresh_tensorflow(version / "item_tower", "item_embedding", item_inputs)
    assert names == ["item_id", "title_words"]
    np.testing.assert_allclose(got, items, atol=1e-5)


def test_saved_model_cli_lists_the_documented_signature(exported):
    out = subprocess.run([str(BIN / "saved_model_cli"), "show", "--dir", str(exported[3] / "user_tower"),
                          "--tag_set", "serve", "--signature_def", "serving_default"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in USER_FEATURE_NAMES:
        shape = ", ".join(["-1", *map(str, FEATURES[name].shape)])
        assert f"inputs['{name}'] tensor_info:\n      dtype: DT_STRING\n      shape: ({shape})" in out.stdout
    assert "outputs['user_embedding'] tensor_info:\n      dtype: DT_FLOAT\n      shape: (-1, 16)" in out.stdout
    assert "item_id'" not in out.stdout.replace("rt_item_id'", "").replace("st_item_id'", "").replace("lt_item_id'", "")


def test_graphs_hold_standard_ops_only(exported):
    """TF Serving has no Python: no py_function may hide in any graph or function."""
    from tensorflow.core.protobuf import saved_model_pb2

    for tower in ("user_tower", "item_tower"):
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString((exported[3] / tower / "saved_model.pb").read_bytes())
        graph = sm.meta_graphs[0].graph_def
        ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
        assert ops and not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
        assets = set(os.listdir(exported[3] / tower / "assets"))
        assert {"word.txt", "item_id.txt"} <= assets  # vocabularies travel with the model


def test_warmup_requests_are_real_examples_in_tf_serving_format(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported[3] / "user_tower" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert 0 < len(logs) <= 1000  # TF Serving reads at most 1000
    fn = tf.saved_model.load(str(exported[3] / "user_tower")).signatures["serving_default"]
    for log in logs[:3]:
        req = log.predict_log.request
        assert req.model_spec.signature_name == "serving_default" and set(req.inputs) == set(USER_FEATURE_NAMES)
        inputs = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
        assert any(inputs["query_words"][0])  # a real query, not padding
        assert fn(**inputs)["user_embedding"].shape == (1, 16)


def test_item_embeddings_cover_the_catalog_and_load_in_two_lines(exported):
    import pyarrow.parquet as pq

    processed, _, _, version = exported
    table = pq.read_table(version / "item_embeddings")
    vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(table), -1)
    with open(os.path.join(processed, "stats.json"), encoding="utf-8") as f:
        items_valid = json.load(f)["items_valid"]
    assert vectors.shape == (items_valid, 16) and np.isfinite(vectors).all()
    assert len(set(table["item_id"].to_pylist())) == items_valid
    assert set(table.column_names) == {"item_id", "leaf_cat", "top_cat", "brand", "shop", "embedding", "title"}
    assert all(table["title"].to_pylist())  # the title words, for people reading results
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["items"] == items_valid and manifest["embedding_dim"] == 16 and manifest["version"] == 1
    assert manifest["step"] == 30 and manifest["config"]["embedding_dim"] == 16
    # vectors are the item tower's, row by row
    import tensorflow as tf

    from features.spec import parse_examples
    from model.data import split_files
    from serving.embed import Tower

    rows = {i: r for r, i in enumerate(table["item_id"].to_pylist())}
    ds = tf.data.TFRecordDataset(split_files(processed, "items"), compression_type="GZIP").batch(1000)
    raw = {k: v.numpy() for k, v in parse_examples(next(iter(ds)), ITEM_FEATURE_NAMES).items()}
    got = Tower(str(version / "item_tower"), "item_embedding")(raw)
    for j, item in enumerate(raw["item_id"][:50]):
        np.testing.assert_allclose(vectors[rows[item.decode()]], got[j], atol=1e-6)
    # serving's own loader agrees
    from serving.embeddings import ItemEmbeddings

    emb = ItemEmbeddings.load(str(version / "item_embeddings"))
    assert len(emb) == items_valid and emb.dim == 16 and list(emb.ids[:3]) == table["item_id"].to_pylist()[:3]


def test_vocab_and_manifest_checksums(exported):
    import hashlib

    from features import Tokenizer
    from features.intent import IntentMatcher

    version = exported[3]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["checksums"], "no checksums"
    for rel, digest in manifest["checksums"].items():
        assert hashlib.sha256((version / rel).read_bytes()).hexdigest() == digest, rel
    assert "user_tower/saved_model.pb" in manifest["checksums"]
    Tokenizer.load(str(version / "vocab"))  # serving rebuilds the pipeline's tokenizer from the export
    intents = IntentMatcher.load(str(version / "vocab" / "intents.json"))
    assert not intents.match("连衣裙").empty


def test_a_new_version_never_touches_the_old_one(exported, tmp_path):
    processed, model_dir, root, version = exported
    before = {p: p.stat().st_mtime_ns for p in version.rglob("*")}
    # A failing export (no such checkpoint) leaves neither a version nor a temporary dir behind.
    bad = subprocess.run([sys.executable, "-m", "ebr", "export", "--model-dir", str(model_dir), "--data", processed,
                          "--out", str(root), "--checkpoint", str(tmp_path / "ckpt-9"), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert sorted(os.listdir(root)) == ["1"]
    out = ebr("export", "--model-dir", model_dir, "--data", processed, "--out", root, "--no-progress")
    assert "version 2" in out.stdout and sorted(os.listdir(root)) == ["1", "2"]
    assert json.loads((root / "2" / "manifest.json").read_text())["version"] == 2
    assert {p: p.stat().st_mtime_ns for p in version.rglob("*")} == before


def test_embed_dumps_user_and_item_vectors(exported, tmp_path):
    import pyarrow.parquet as pq

    processed, _, _, version = exported
    ebr("embed", "--export", version, "--tower", "user", "--data", processed, "--out", tmp_path / "u.parquet",
        "--no-progress")
    users = pq.read_table(tmp_path / "u.parquet")
    with open(os.path.join(processed, "stats.json"), encoding="utf-8") as f:
        assert len(users) == json.load(f)["examples_test"]
    assert {"search_id", "user_id", "query", "embedding"} <= set(users.column_names)
    batch = user_batch(processed)
    batch = {k: v[1:] for k, v in batch.items()}  # rows 1.. are untouched test examples, in file order
    from serving.embed import Tower

    expect = Tower(str(version / "user_tower"), "user_embedding")(batch)
    got = users["embedding"].combine_chunks().flatten().to_numpy().reshape(len(users), -1)[1:8]
    np.testing.assert_allclose(got, expect, atol=1e-5)
    ebr("embed", "--export", version, "--tower", "item", "--data", processed, "--out", tmp_path / "i.parquet",
        "--no-progress", "--limit", 50)
    assert len(pq.read_table(tmp_path / "i.parquet")) == 50


def test_a_run_with_hashed_item_ids_evaluates_and_exports(tiny_world, tmp_path):
    """item_ids=hash (no item-id table, for catalogs of 10^8): the same commands train,
    evaluate and export it, and the exported towers embed every catalog item."""
    import pyarrow.parquet as pq

    from serving.embed import Tower

    _, processed = tiny_world
    items = json.loads(Path(processed, "stats.json").read_text())["items_valid"]
    run, root = tmp_path / "run", tmp_path / "exports"
    ebr("train", "--data", processed, "--model-dir", run, "--cluster", "single", "--steps", 20, "--no-progress",
        "--set", *TINY_MODEL, "item_ids=hash", f"item_id_buckets={4 * items}", f"catalog_size={items}")
    ebr("eval", "--data", processed, "--model-dir", run, "--out", tmp_path / "eval", "--k", "10,50")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["searches"] > 0 and 0 <= metrics["recall"]["10"] <= metrics["recall"]["50"] <= 1
    ebr("export", "--model-dir", run, "--data", processed, "--out", root, "--no-progress")
    manifest = json.loads((root / "1" / "manifest.json").read_text())
    assert manifest["config"]["item_ids"] == "hash" and manifest["table_sizes"]["item_id"] == 1 + 4 * items  # + the padding row
    vectors = pq.read_table(root / "1" / "item_embeddings")
    assert len(vectors) == manifest["items"] == items
    user = Tower(str(root / "1" / "user_tower"), "user_embedding")(user_batch(processed))
    np.testing.assert_allclose(np.linalg.norm(user, axis=1), 1.0, atol=1e-4)
