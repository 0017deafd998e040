"""Lookup: strings -> ids in-graph, the id layout of features.vocab, SavedModel-ready."""
import numpy as np
import pytest
import tensorflow as tf

from features.io import write_lines
from features.spec import MAX_HIS_QUERIES, MAX_HIS_QUERY_WORDS
from features.vocab import VOCABS, vocab_path
from model.lookup import Lookup

WORDS = ["连衣裙", "红色", "阿迪达斯", "跑步鞋"]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("vocab"))
    tokens = {name: [f"{name}_{i}" for i in range(3)] for name in VOCABS}
    tokens["word"] = WORDS
    tokens["brand"] = []  # a vocabulary can be empty: everything is then an OOV bucket
    for name, toks in tokens.items():
        write_lines(vocab_path(d, name), toks)
    return d


def test_ids_follow_the_vocab_layout(vocab_dir):
    lookup = Lookup(vocab_dir)
    n, k = len(WORDS), VOCABS["word"].oov_buckets
    assert lookup.table_sizes["word"] == 1 + n + k
    assert lookup.table_sizes["brand"] == 1 + VOCABS["brand"].oov_buckets
    out = lookup({"query_words": tf.constant([["红色", "连衣裙", "没见过", ""]])})
    ids = out["query_words"].numpy()[0]
    assert ids.dtype == np.int64
    assert ids[0] == 2 and ids[1] == 1 and ids[3] == 0  # file order from 1; "" is the mask
    assert n + 1 <= ids[2] <= n + k  # unseen: a hashed OOV bucket after the tokens
    # The same unseen token always lands in the same bucket.
    again = lookup({"title_words": tf.constant([["没见过"]])})["title_words"].numpy()[0, 0]
    assert again == ids[2]
    brand = lookup({"brand": tf.constant(["耐克", ""])})["brand"].numpy()
    assert 1 <= brand[0] <= VOCABS["brand"].oov_buckets and brand[1] == 0


def test_sampled_items_meta_and_ids_pass(vocab_dir):
    lookup = Lookup(vocab_dir)
    feats = {
        "neg_item_id": tf.constant(["item_id_2", "item_id_0"]),
        "neg_title_words": tf.constant([["跑步鞋", ""], ["", ""]]),
        "rt_shop": tf.constant([["shop_1", "shop_9", ""]]),
        "query": tf.constant(["红色 连衣裙"]),  # no vocabulary: unchanged
        "ts": tf.constant([5], tf.int64),
        "item_id": tf.constant([7], tf.int64),  # already ids: unchanged
    }
    out = lookup(feats)
    assert out["neg_item_id"].numpy().tolist() == [3, 1]
    assert out["neg_title_words"].numpy().tolist() == [[4, 0], [0, 0]]
    rt = out["rt_shop"].numpy()[0]
    assert rt[0] == 2 and rt[1] > 3 and rt[2] == 0
    assert out["query"].dtype == tf.string and out["ts"] is feats["ts"] and out["item_id"] is feats["item_id"]


def test_historical_queries_split_into_word_ids(vocab_dir):
    lookup = Lookup(vocab_dir)
    many = " ".join(["红色"] * (MAX_HIS_QUERY_WORDS + 3))
    his = [["阿迪达斯 跑步鞋", " 红色  连衣裙 ", many] + [""] * (MAX_HIS_QUERIES - 3)]
    ids = lookup({"his_queries": tf.constant(his)})["his_queries"].numpy()
    assert ids.shape == (1, MAX_HIS_QUERIES, MAX_HIS_QUERY_WORDS)
    assert ids[0, 0].tolist() == [3, 4] + [0] * (MAX_HIS_QUERY_WORDS - 2)
    assert ids[0, 1].tolist() == [2, 1] + [0] * (MAX_HIS_QUERY_WORDS - 2)  # stray spaces make no words
    assert ids[0, 2].tolist() == [2] * MAX_HIS_QUERY_WORDS  # longer queries are cut
    assert not ids[0, 3:].any()


def test_missing_vocab_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Lookup(str(tmp_path))


def test_lookup_survives_a_savedmodel_round_trip(vocab_dir, tmp_path):
    module = tf.Module()
    module.lookup = Lookup(vocab_dir)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)])
    def words(x):
        return module.lookup({"query_words": x})["query_words"]

    module.words = words
    path = str(tmp_path / "saved")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    x = tf.constant([["阿迪达斯", "未知词", ""]])
    np.testing.assert_array_equal(loaded.words(x).numpy(), words(x).numpy())
    # The vocabulary travelled as an asset of the SavedModel.
    assert tf.io.gfile.glob(f"{path}/assets/word.txt")


def test_hashed_item_ids_need_no_table_and_report_their_collisions(vocab_dir):
    from model.config import MGDSPRConfig
    from model.lookup import hash_collisions

    config = MGDSPRConfig(item_ids="hash", item_id_buckets=5, catalog_size=3)
    lookup = Lookup(vocab_dir, config)
    assert "item_id" not in lookup.tables and lookup.table_sizes["item_id"] == 1 + 5
    assert lookup.table_sizes["word"] == Lookup(vocab_dir).table_sizes["word"]  # other vocabularies stay exact
    feats = {"item_id": tf.constant(["item_id_0", "never_seen", ""]), "rt_item_id": tf.constant([["item_id_0", ""]])}
    out = lookup(feats)
    ids = out["item_id"].numpy()
    assert 1 <= ids[0] <= 5 and 1 <= ids[1] <= 5 and ids[2] == 0  # unseen items hash too; "" stays the mask
    assert out["rt_item_id"].numpy().tolist() == [[ids[0], 0]]  # the same item, the same row everywhere
    # Three items in five rows: the report counts the items sharing a row with another.
    rows = tf.strings.to_hash_bucket_fast(["item_id_0", "item_id_1", "item_id_2"], 5).numpy().tolist()
    report = hash_collisions(vocab_dir, 5)
    assert report["items"] == 3 and report["colliding_items"] == sum(rows.count(r) > 1 for r in rows)
    assert report["expected_collision_rate"] == pytest.approx(1 - 0.8**2)
    assert hash_collisions(vocab_dir, 1)["collision_rate"] == 1.0  # one row: every item collides


def test_pre_mapped_integer_item_ids(vocab_dir):
    from model.config import MGDSPRConfig

    lookup = Lookup(vocab_dir, MGDSPRConfig(item_ids="integer", item_id_buckets=10, catalog_size=10))
    assert lookup.table_sizes["item_id"] == 11
    assert lookup({"item_id": tf.constant(["0", "9", ""])})["item_id"].numpy().tolist() == [1, 10, 0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_id_buckets"):
        lookup({"item_id": tf.constant(["10"])})


def test_item_id_options_are_checked_with_the_field_named():
    from model.config import MGDSPRConfig

    with pytest.raises(ValueError, match="item_ids must be"):
        MGDSPRConfig(item_ids="bloom")
    with pytest.raises(ValueError, match="item_id_buckets"):
        MGDSPRConfig(item_ids="hash", catalog_size=10)
    with pytest.raises(ValueError, match="catalog_size"):
        MGDSPRConfig(item_ids="integer", item_id_buckets=10)


def _item_freq(d, counts: dict) -> str:
    from model.data import ITEM_FREQ_FILE

    path = f"{d}/{ITEM_FREQ_FILE}"
    write_lines(path, [f"{k}\t{v}" for k, v in counts.items()])
    return path


def test_pre_mapped_ids_take_log_q_from_a_row_array_equal_to_the_exact_table(tmp_path, vocab_dir):
    """At 10^8 items the string table of item frequencies cannot sit on every worker: with
    pre-mapped ids each row carries its item's log q, the same value the exact table gives."""
    from model.config import MGDSPRConfig
    from model.data import LogQ, row_log_q

    path = _item_freq(tmp_path, {"0": 6, "3": 3, "7": 1})
    lookup = Lookup(vocab_dir, MGDSPRConfig(item_ids="integer", item_id_buckets=10, catalog_size=10))
    rows = row_log_q(path, lookup, chunk=2)  # chunks smaller than the file: the sums carry over
    exact = LogQ(path)(tf.constant(["0", "3", "7", "5"])).numpy()
    assert rows.shape == (11,) and rows.dtype == np.float32
    np.testing.assert_allclose(rows[[1, 4, 8, 6]], exact, rtol=1e-6)  # row = id + 1; "5" was never a positive
    np.testing.assert_allclose(rows[0], np.log(1 / 10), rtol=1e-6)  # the mask row: one count, like an unseen item
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_id_buckets"):
        row_log_q(_item_freq(tmp_path, {"12": 1}), lookup)  # outside the id space: named, not wrapped
    with pytest.raises(ValueError, match="exact ids use LogQ"):
        row_log_q(path, Lookup(vocab_dir))


def test_hashed_ids_sum_the_counts_of_the_items_sharing_a_row(tmp_path, vocab_dir):
    from model.config import MGDSPRConfig
    from model.data import row_log_q

    items = {f"item_id_{i}": i + 1 for i in range(6)}
    path = _item_freq(tmp_path, items)
    rows = row_log_q(path, Lookup(vocab_dir, MGDSPRConfig(item_ids="hash", item_id_buckets=3, catalog_size=6)))
    hashed = tf.strings.to_hash_bucket_fast(list(items), 3).numpy() + 1
    expected = np.ones(4)  # rows no item hashed to keep one count
    for row in set(hashed.tolist()):
        expected[row] = sum(c for c, h in zip(items.values(), hashed) if h == row)
    np.testing.assert_allclose(rows, np.log(expected / 21), rtol=1e-6)


def test_the_model_looks_log_q_up_by_row_and_gets_the_exact_tables_loss(tmp_path, vocab_dir):
    """The loss of a model with pre-mapped ids, its log q from its own row table, equals the
    loss with the exact table's log q fed in (as the input pipeline does for exact ids)."""
    from model.config import MGDSPRConfig
    from model.data import LogQ, row_log_q
    from model.mgdspr import ITEM_LOG_Q, build_model
    from model.loss import NEGATIVE_LOG_Q

    path = _item_freq(tmp_path, {"0": 6, "3": 3, "7": 1, "8": 2})
    config = MGDSPRConfig(item_ids="integer", item_id_buckets=10, catalog_size=10, embedding_dim=8, num_heads=2,
                          transformer_ff_dim=8, batch_size=4, num_random_negatives=3, hard_negatives=2)
    lookup = Lookup(vocab_dir, config)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, lookup.table_sizes)
    assert model.item_log_q is not None and not model.item_log_q.trainable_weights
    inputs = model.dummy_inputs(batch=4, negatives=3)
    with pytest.raises(ValueError, match="log-q table is empty"):
        model.train_step(inputs)  # an empty table would switch the correction off unseen
    model.set_item_log_q(row_log_q(path, lookup))
    positives, negatives = ["0", "3", "7", "8"], ["5", "0", "9"]
    inputs["item_id"] = lookup.ids("item_id", tf.constant(positives))
    inputs["neg_item_id"] = lookup.ids("item_id", tf.constant(negatives))
    alphas = tf.fill([4, 2], 0.5)  # I_mix's mixing weights, fixed (random by default)
    by_row = model.compute_loss(inputs, alphas=alphas).numpy()
    exact = LogQ(path)
    fed = dict(inputs, **{ITEM_LOG_Q: exact(tf.constant(positives)), NEGATIVE_LOG_Q: exact(tf.constant(negatives))})
    np.testing.assert_allclose(by_row, model.compute_loss(fed, alphas=alphas).numpy(), rtol=1e-6)
    # Without the correction the loss differs: the row table is what changed it.
    plain = dict(inputs, **{ITEM_LOG_Q: tf.zeros([4]), NEGATIVE_LOG_Q: tf.zeros([3])})
    assert abs(model.compute_loss(plain, alphas=alphas).numpy() - by_row) > 1e-3
    with pytest.raises(ValueError, match="rows"):
        model.set_item_log_q(np.zeros(5, np.float32))
