"""`ebr convert jdsearch`: the JDsearch layout to the raw data contract, exactly."""
import argparse
import json
import os
import shutil

import pytest

from pipeline import contract, convert

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "jdsearch")
A = 1673179200  # 2023-01-08T12:00:00Z, the default anchor: every test search happens then


def _records(path):
    out = []
    for loc, rec in contract.iter_raw(path):
        assert not isinstance(rec, contract.BadRecord), loc
        out.append(rec)
    return out


def _events(path):
    return [
        (e.user_id, e.ts, e.query, e.item_id, e.action)
        for e in (contract.validate_event(r) for r in _records(path))
    ]


EXPECTED_EVENTS = [
    # u1: history gaps 0, 100, 20 and 3000 to the test search -> A-3120, A-3020, A-3000.
    ("u1", A - 3120, "41 43", "102", "click"),
    ("u1", A - 3020, "", "104", "cart"),
    ("u1", A - 3000, "44", "101", "purchase"),
    # ... its test search "41\x1842": label 1.0 -> click, 3.0 -> purchase, 0.0 is an impression.
    ("u1", A, "41 42", "101", "click"),
    ("u1", A, "41 42", "103", "purchase"),
    # u3 (no history): its only labelled candidate (cart) is product 999, missing -> dropped.
    # u4: FLW on missing 999 at A-86460 dropped; two clicks under one search at A-60.
    ("u4", A - 60, "48 49", "103", "click"),
    ("u4", A - 60, "48 49", "105", "click"),
    ("u4", A, "46 47", "104", "click"),
    # u7: ORD on missing 998 at A-7800 dropped; a cart without a search at A-600.
    ("u7", A - 600, "", "102", "cart"),
    ("u7", A, "50", "102", "purchase"),
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("jd"))
    stats = convert.convert_jdsearch(FIXTURE, out, fmt="jsonl", progress=False)
    return out, stats


def test_fixture_is_in_the_published_layout():
    with open(os.path.join(FIXTURE, "user_behavior_data.txt"), "rb") as f:
        raw = f.read()
    assert b"\x18" in raw and raw.startswith(b"query\tcandidate_wid_list\t")
    with open(os.path.join(FIXTURE, "product_meta_data.txt"), "rb") as f:
        assert f.readline().rstrip(b"\n").split(b"\t")[-1] == b"shop_id"


def test_events_exact_with_times_rebuilt_from_gaps(converted):
    out, _ = converted
    assert _events(os.path.join(out, "events.jsonl")) == EXPECTED_EVENTS


def test_items_exact(converted):
    out, _ = converted
    items = [contract.validate_item(r) for r in _records(os.path.join(out, "items.jsonl"))]
    got = [(i.item_id, i.title, i.leaf_category, i.top_category, i.brand, i.shop, i.price) for i in items]
    assert got == [
        ("101", "11 12 13", "1000", "1", "7", "501", None),  # term ids joined by spaces
        ("102", "11 14", "1000", "1", "7", "501", None),
        ("103", "15 16 17", "2000", "2", "", "502", None),  # no brand
        ("104", "22 23 39", "200", "2", "8", "502", None),  # empty name: brand + category names; leaf = cate_id_3
        ("105", "18 19", "2001", "2", "8", "unknown", None),  # no shop id
    ]


def test_missing_products_counted_and_written_aside(converted):
    out, stats = converted
    with open(os.path.join(out, "missing_items.txt")) as f:
        assert f.read() == "999\t2\n998\t1\n"
    assert stats["missing_items"] == 2
    assert stats["events"]["dropped_missing_item"] == 3
    assert stats["events"]["written"] == {"click": 5, "cart": 2, "purchase": 3}


def test_malformed_rows_go_to_dead_letter(converted):
    out, stats = converted
    with open(os.path.join(out, "dead_letter.jsonl")) as f:
        dead = [json.loads(line) for line in f]
    assert [(d["file"], d["line"], d["reason"]) for d in dead] == [
        ("product_meta_data.txt", 7, "bad_columns"),
        ("product_meta_data.txt", 8, "duplicate_wid"),
        ("user_behavior_data.txt", 3, "history_length_mismatch"),
        ("user_behavior_data.txt", 6, "bad_history_type"),
        ("user_behavior_data.txt", 7, "candidate_label_mismatch"),
    ]
    assert dead[3]["text"].split("\t")[5] == "VIEW"  # the raw line travels with the reason
    assert stats["products"] == {"rows": 7, "items_written": 5, "bad_rows": {"bad_columns": 1, "duplicate_wid": 1},
                                 "without_shop": 1}
    assert stats["behaviour"]["rows"] == 7 and stats["behaviour"]["users_written"] == 4
    assert stats["behaviour"]["impressions"] == 3
    assert stats["behaviour"]["test_searches_without_positive"] == 1  # u3: a cart is not a positive
    with open(os.path.join(out, "convert_stats.json")) as f:
        assert json.load(f)["behaviour"]["bad_rows"] == stats["behaviour"]["bad_rows"]


def test_placeholder_policy_keeps_events_and_adds_catalog_rows(tmp_path):
    stats = convert.convert_jdsearch(FIXTURE, str(tmp_path), fmt="parquet", missing="placeholder", progress=False)
    items = {i.item_id: i for i in (contract.validate_item(r) for r in _records(str(tmp_path / "items.parquet")))}
    assert items["999"].title == "unknown" and items["999"].leaf_category == "unknown" and items["999"].brand == ""
    assert "998" in items and stats["placeholder_items"] == 2
    events = _events(str(tmp_path / "events.parquet"))
    assert ("u3", A, "45", "999", "cart") in events
    assert ("u4", A - 86460, "", "999", "collect") in events
    assert ("u7", A - 7800, "50 51", "998", "purchase") in events
    assert len(events) == len(EXPECTED_EVENTS) + 3
    assert stats["events"]["dropped_missing_item"] == 0


def test_anchor_moves_every_timestamp(tmp_path):
    convert.convert_jdsearch(FIXTURE, str(tmp_path), fmt="jsonl", anchor="1000000", progress=False)
    got = _events(str(tmp_path / "events.jsonl"))
    assert [e[1] for e in got] == [e[1] - A + 1_000_000 for e in EXPECTED_EVENTS]


def test_cli_arguments_and_main(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(["jdsearch", "--in", FIXTURE, "--out", str(tmp_path), "--format", "jsonl", "--no-progress"])
    assert args.in_dir == FIXTURE and args.source == "jdsearch"
    assert convert.main(args) == 0
    assert json.loads(capsys.readouterr().out)["events"]["total_written"] == len(EXPECTED_EVENTS)
    with pytest.raises(SystemExit):
        parser.parse_args(["amazon", "--in", FIXTURE, "--out", str(tmp_path)])


def test_clear_errors_for_wrong_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="user_behavior_data.txt"):
        convert.convert_jdsearch(str(tmp_path), str(tmp_path / "out"), progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURE, bad)
    text = (bad / "product_meta_data.txt").read_text(encoding="utf-8").replace("shop_id", "store_id", 1)
    (bad / "product_meta_data.txt").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        convert.convert_jdsearch(str(bad), str(tmp_path / "out2"), progress=False)


def test_first_release_file_names_are_read(tmp_path):
    shutil.copy(os.path.join(FIXTURE, "user_behavior_data.txt"), tmp_path / "release_data.txt")
    shutil.copy(os.path.join(FIXTURE, "product_meta_data.txt"), tmp_path / "product_data.txt")
    convert.convert_jdsearch(str(tmp_path), str(tmp_path / "out"), fmt="jsonl", progress=False)
    assert _events(str(tmp_path / "out" / "events.jsonl")) == EXPECTED_EVENTS


def _hostile_copy(tmp_path, behaviour_rows):
    """The fixture with a byte-order mark before each header and extra behaviour rows."""
    d = tmp_path / "jd"
    d.mkdir()
    for name in ("user_behavior_data.txt", "product_meta_data.txt"):
        with open(os.path.join(FIXTURE, name), encoding="utf-8") as f:
            text = f.read()
        if name.startswith("user"):
            text += "".join(row + "\n" for row in behaviour_rows)
        (d / name).write_text("\ufeff" + text, encoding="utf-8")
    return d


def test_a_bom_header_a_bad_history_wid_and_dropped_test_positives(tmp_path):
    rows = [
        # u8: one history product id is -1: only that behaviour goes, the user and the test search stay.
        "52\t105\t1.0\t52_-1\t101_-1\tCLICK_CLICK\t0_50_100",
        # u9: the test search's only click is on a product missing from the catalog (dropped).
        "53\t999\t1.0\t\t\t\t0",
    ]
    stats = convert.convert_jdsearch(str(_hostile_copy(tmp_path, rows)), str(tmp_path / "out"), fmt="jsonl",
                                     progress=False)
    assert stats["products"]["rows"] == 7 and stats["products"]["items_written"] == 5  # the header is no product
    events = _events(str(tmp_path / "out" / "events.jsonl"))
    assert events[len(EXPECTED_EVENTS):] == [("u8", A - 150, "52", "101", "click"), ("u8", A, "52", "105", "click")]
    assert stats["events"]["dropped_bad_wid"] == 1 and stats["behaviour"]["users_written"] == 6
    # u3 (a cart only) and u9 (its click dropped with the missing product): counted after the drop.
    assert stats["behaviour"]["test_searches_without_positive"] == 2
    with open(tmp_path / "out" / "source.json", encoding="utf-8") as f:
        assert json.load(f) == {"source": "jdsearch", "text_units": "terms"}


def test_preprocess_reads_term_ids_as_the_character_unit(tmp_path):
    from apache_beam.testing.test_pipeline import TestPipeline

    from features import Tokenizer
    from pipeline.preprocess import run

    raw, out = tmp_path / "raw", tmp_path / "out"
    convert.convert_jdsearch(FIXTURE, str(raw), fmt="jsonl", progress=False)
    stats = run(str(raw), str(out), test_date="2023-01-09", pipeline=TestPipeline(), quiet=True)
    assert stats["inputs"]["text_units"] == "terms" and stats["examples_train"] > 0
    import tensorflow as tf

    from features.spec import parse_examples

    chars = (out / "vocab" / "char.txt").read_text(encoding="utf-8").split()
    assert "11" in chars and "1" not in chars  # the term "11", not the digit
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(map(str, (out / "train").glob("part-*"))),
                                                          compression_type="GZIP")]
    train = parse_examples(records)
    by_query = {q.decode(): [b.decode() for b in row if b] for q, row in
                zip(train["query"].numpy(), train["query_bigrams"].numpy())}
    assert by_query["41 43"] == ["41_43"] and by_query["50"] == []
    tok = Tokenizer.load(str(out / "vocab"))  # serving rebuilds the same tokenizer
    assert tok.text_units == "terms" and tok.tokenize("41 43").bigrams == ("41_43",)
