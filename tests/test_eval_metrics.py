"""The paper's metrics on hand-checkable inputs: exact top-K, Recall@K, P_good@K, filter pass."""
import json

import numpy as np
import pytest

from features.intent import IntentMatcher
from model.evaluate import Truth, default_truth_dir, format_table, parse_ks, retrieval_metrics, top_k


def test_top_k_is_exact_and_batched():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(500, 8)).astype(np.float32)
    got = top_k(users, items, 20, batch_size=16)
    want = np.argsort(-(users @ items.T), axis=1)[:, :20]
    assert got.shape == (37, 20)
    np.testing.assert_array_equal(got, want)
    assert top_k(users, items, 10_000).shape == (37, 500)  # K capped at the pool


@pytest.fixture
def world(tmp_path):
    truth = tmp_path / "truth"
    truth.mkdir()
    with open(truth / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in [
            {"query": "耐克 跑步鞋", "leaf_category": "跑步鞋", "top_category": "运动鞋", "brand": "耐克"},
            {"query": "连衣裙", "leaf_category": "连衣裙", "top_category": "女装", "brand": ""},
        ]:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    (truth / "items.jsonl").write_text("", encoding="utf-8")
    fields = {
        "item_id": np.array(["a", "b", "c", "d"], dtype=object),
        "brand": np.array(["耐克", "阿迪达斯", "", "耐克"], dtype=object),
        "leaf_cat": np.array(["跑步鞋", "跑步鞋", "连衣裙", "T恤"], dtype=object),
        "top_cat": np.array(["运动鞋", "运动鞋", "女装", "女装"], dtype=object),
    }
    return Truth(str(truth)), fields


def test_recall_p_good_and_filter_pass(world):
    truth, fields = world
    intents = IntentMatcher(fields["brand"], fields["leaf_cat"], fields["top_cat"])
    topk = np.array([[1, 0, 3, 2], [2, 0, 1, 3]])  # item indices, best first
    queries = ["耐克 跑步鞋", "连衣裙"]
    positives = [{"a", "zz"}, {"c"}]  # "zz" is not in the pool: it can never be found
    m = retrieval_metrics(topk, fields, queries, positives, (1, 2, 4), truth, intents)
    # search 0 finds a at rank 2 (1 of 2 positives); search 1 finds c at rank 1
    assert m["recall"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.75), "4": pytest.approx(0.75)}
    # relevant: search 0 -> only a (nike running shoe); search 1 -> only c (a dress)
    assert m["p_good"]["1"] == pytest.approx((0 + 1) / 2)
    assert m["p_good"]["2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["p_good"]["4"] == pytest.approx((0.25 + 0.25) / 2)
    # filter: query 0 names brand 耐克 + leaf 跑步鞋 -> only a passes; query 1 names leaf 连衣裙 -> only c
    assert m["filter_pass"]["2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["searches"] == 2 and m["searches_with_truth"] == 2 and m["searches_with_intent"] == 2
    assert m["positives_in_pool"] == pytest.approx(0.75)
    assert "Recall@K" in format_table(m)
    # Recall split by the truth: search 0's a is relevant (found at rank 2), its zz is not
    # (outside the pool, never found); search 1's c is relevant (rank 1) and it has no other.
    assert m["recall_relevant"] == {"1": pytest.approx(0.5), "2": pytest.approx(1.0), "4": pytest.approx(1.0)}
    assert m["recall_irrelevant"] == {"1": pytest.approx(0.0), "2": pytest.approx(0.0), "4": pytest.approx(0.0)}
    assert m["positives_relevant"] == pytest.approx((1 / 2 + 1) / 2)
    assert "relevant to the query (75.0% of a search's) 0.5000 1.0000 1.0000; the others (noise) 0.0000" in format_table(m)


def test_p_good_ceiling_and_slices(world):
    """The ceiling is what a perfect model scores: the pool holds one nike running shoe
    (a) and one dress (c), so each query can fill at most one of its top K with relevant
    items. Slices average the same per-search figures over their members."""
    truth, fields = world
    topk = np.array([[1, 0, 3, 2], [2, 0, 1, 3]])
    queries, positives = ["耐克 跑步鞋", "连衣裙"], [{"a", "zz"}, {"c"}]
    m = retrieval_metrics(topk, fields, queries, positives, (1, 2, 4), truth, None,
                          slices={"branded": np.array([True, False]), "none": np.array([False, False])})
    assert m["p_good_ceiling"] == {"1": pytest.approx(1.0), "2": pytest.approx(0.5), "4": pytest.approx(0.25)}
    assert m["p_good"]["4"] == pytest.approx(m["p_good_ceiling"]["4"])  # both relevant items are in every top 4
    branded = m["slices"]["branded"]
    assert branded["searches"] == 1
    assert branded["recall"] == {"1": pytest.approx(0.0), "2": pytest.approx(0.5), "4": pytest.approx(0.5)}
    assert branded["p_good"]["1"] == pytest.approx(0.0) and branded["p_good_ceiling"]["1"] == pytest.approx(1.0)
    assert m["slices"]["none"]["searches"] == 0 and m["slices"]["none"]["recall"]["1"] is None
    with pytest.raises(ValueError, match="slice 'bad'"):
        retrieval_metrics(topk, fields, queries, positives, (1,), truth, None, slices={"bad": np.array([True])})


def test_cutoffs_and_truth_dir(tmp_path):
    assert parse_ks("1000,50,200") == (50, 200, 1000)
    with pytest.raises(ValueError, match="--k"):
        parse_ks("50,x")
    (tmp_path / "small" / "raw" / "truth").mkdir(parents=True)
    (tmp_path / "small" / "processed").mkdir()
    assert default_truth_dir(str(tmp_path / "small" / "processed")) == str(tmp_path / "small" / "raw" / "truth")
    assert default_truth_dir(str(tmp_path)) is None


def test_bad_truth_file_names_the_line(tmp_path):
    (tmp_path / "queries.jsonl").write_text('{"query": "x", "leaf_category": "y"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"queries.jsonl:2"):
        Truth(str(tmp_path))


def test_search_flags_come_from_the_worlds_per_search_truth(world, tmp_path):
    truth, _ = world
    assert truth.search_flags() == {}  # a world without per-search truth: no such slices
    rows = [{"user_id": "u1", "ts": 100, "query": "连衣群", "typo": True, "new_spelling": False, "history_intent": False},
            {"user_id": "u2", "ts": 200, "query": "连衣裙", "typo": False, "new_spelling": False, "history_intent": True}]
    with open(tmp_path / "truth" / "searches.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    flags = Truth(str(tmp_path / "truth")).search_flags()
    assert flags[("u1", 100)]["typo"] and not flags[("u1", 100)]["history_intent"]
    assert flags[("u2", 200)]["history_intent"]


def _scalar_metrics(topk, fields, queries, positives, ks, truth, intents):
    """The metrics by their definitions, one Python test per retrieved item."""
    ids, brands, leafs, tops = (fields[k] for k in ("item_id", "brand", "leaf_cat", "top_cat"))
    out = {key: [] for key in ("recall", "p_good", "filter_pass", "recall_relevant", "recall_irrelevant")}
    where = {item_id: i for i, item_id in enumerate(ids)}
    for row, query, pos in zip(topk, queries, positives):
        out["recall"].append([sum(ids[i] in pos for i in row[:k]) / len(pos) for k in ks])
        q = truth.query(query)
        if q is not None:
            out["p_good"].append([np.mean([truth.relevant(q, ids[i], leafs[i], brands[i]) for i in row[:k]])
                                  for k in ks])
            good = {p for p in pos if p in where and truth.relevant(q, p, leafs[where[p]], brands[where[p]])}
            for key, group in (("recall_relevant", good), ("recall_irrelevant", pos - good)):
                if group:
                    out[key].append([sum(ids[i] in group for i in row[:k]) / len(group) for k in ks])
        intent = intents.match(query)
        out["filter_pass"].append([np.mean([intent.passes(brands[i], leafs[i], tops[i]) for i in row[:k]])
                                   for k in ks])
    return {key: {str(k): float(np.mean([v[j] for v in vals])) for j, k in enumerate(ks)} for key, vals in out.items()}


def test_metrics_over_whole_rows_equal_the_per_item_definitions(tmp_path):
    """retrieval_metrics compares integer codes over whole top-K rows; on a random pool
    (true attributes that differ from the catalog's for some items, queries with and
    without a brand, names the pool does not hold, ambiguous names) it must score what
    Truth.relevant and QueryIntent.passes score item by item."""
    rng = np.random.default_rng(3)
    brand_names, leaf_names = ["耐克", "阿迪达斯", "李宁", "安踏", ""], ["跑步鞋", "篮球鞋", "连衣裙", "T恤", "李宁"]
    n = 400
    fields = {
        "item_id": np.array([f"i{i}" for i in range(n)], dtype=object),
        "brand": rng.choice(brand_names, n).astype(object),
        "leaf_cat": rng.choice(leaf_names, n).astype(object),
        "top_cat": rng.choice(["鞋", "女装", "男装"], n).astype(object),
    }
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    queries_truth = [{"query": f"{b} {l}".strip(), "leaf_category": l, "brand": b}
                     for b in brand_names + ["彪马"] for l in leaf_names]
    with open(truth_dir / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in queries_truth)
    with open(truth_dir / "items.jsonl", "w", encoding="utf-8") as f:  # a third relabelled by the truth
        for i in rng.choice(n, n // 3, replace=False):
            f.write(json.dumps({"item_id": f"i{i}", "leaf_category": str(rng.choice(leaf_names)),
                                "brand": str(rng.choice(brand_names))}, ensure_ascii=False) + "\n")
    truth = Truth(str(truth_dir))
    intents = IntentMatcher(fields["brand"], fields["leaf_cat"], fields["top_cat"])
    searches = 60
    queries = [str(rng.choice([q["query"] for q in queries_truth] + ["不知道", "鞋", "李宁 女装"]))
               for _ in range(searches)]
    positives = [set(rng.choice(fields["item_id"], rng.integers(1, 4))) | ({"gone"} if s % 7 == 0 else set())
                 for s in range(searches)]
    topk = np.stack([rng.permutation(n)[:50] for _ in range(searches)])
    for s, query in enumerate(queries):  # most searches also click an item relevant to them, found at a random rank
        q = truth.query(query)
        good = [i for i in range(n) if q and truth.relevant(q, fields["item_id"][i], fields["leaf_cat"][i],
                                                              fields["brand"][i])]
        if good and s % 4:
            i = int(rng.choice(good))
            positives[s].add(fields["item_id"][i])
            if i not in topk[s]:
                topk[s, rng.integers(50)] = i
    ks = (1, 5, 20, 50)
    got = retrieval_metrics(topk, fields, queries, positives, ks, truth, intents)
    want = _scalar_metrics(topk, fields, queries, positives, ks, truth, intents)
    assert got["searches_with_truth"] < searches  # some queries have no truth
    for key in ("recall", "p_good", "filter_pass", "recall_relevant", "recall_irrelevant"):
        assert got[key] == {k: pytest.approx(v) for k, v in want[key].items()}, key
    assert 0 < got["recall_relevant"]["50"] < 1 and 0 < got["recall_irrelevant"]["50"] < 1
    assert 0 < got["p_good"]["50"] < 1 and 0 < got["filter_pass"]["50"] < 1
