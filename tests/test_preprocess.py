"""The preprocessing job: point-in-time behaviour sequences, the train/test window, dead
letters, vocabularies and reconciling stats; every input format gives the same examples."""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections import Counter
from datetime import date

import pytest

from features import Tokenizer
from features.spec import MAX_LONG_TERM, MAX_REALTIME, MAX_SHORT_TERM
from features.vocab import VOCABS, rank_tokens
from pipeline import contract, runner_guard
from pipeline.timeline import DAY, Timeline, UserEvent, Window, cap_events, day_start, sort_key, user_examples

USER_WORDS = ["阿迪达斯", "耐克", "无印良品", "跑步鞋", "篮球鞋", "连衣裙", "运动鞋", "女装"]
T = day_start(date(2024, 3, 20)) + 12 * 3600  # a search time, noon UTC


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(USER_WORDS)


def ev(ts, item, action="click", query="", session=""):
    positive = action in ("click", "purchase") and bool(query)
    return UserEvent(ts, query, item, action, session, f"leaf_{item}", f"top_{item}", f"brand_{item}", f"shop_{item}",
                     (f"title_{item}",) if positive else ())


def timeline(events):
    return Timeline("u", sorted(events, key=sort_key))


def ids(seq):
    return [e.item_id for e in seq]


# --- point-in-time sequences (pure, no Beam) -------------------------------------------------


def test_sequences_are_point_in_time_with_gap_sessions_and_day_boundaries(tok):
    events = [
        ev(T - 30 * DAY - 1, "old", query="耐克"),  # older than 30 days: in no sequence
        ev(T - 30 * DAY, "lt30", action="collect"),  # exactly 30 days: long-term
        ev(T - 10 * DAY - 1, "lt10", action="cart", query="阿迪达斯 跑步鞋"),
        ev(T - 10 * DAY, "st10"),  # exactly 10 days: short-term
        ev(T - 2 * DAY, "st2", query="连衣裙 红色"),
        ev(T - 5000, "s_old"),
        ev(T - 3200, "s1", query="跑步鞋"),  # 1800 s after s_old: a new session
        ev(T - 1401, "s2", action="purchase", query="跑步鞋"),  # 1799 s after s1: same session
        ev(T, "pos", query="篮球鞋"),  # the search's own click
        ev(T, "same_sec", action="cart"),  # the same second: must not leak
        ev(T, "other", query="耐克 篮球鞋"),  # another search in the same second
        ev(T + 10, "after"),
    ]
    tl = timeline(events)
    search = next(s for s in tl.searches() if s.query == "篮球鞋")
    seqs = tl.sequences_at(search.ts, search.session)
    assert ids(seqs.rt) == ["s2", "s1"]
    assert ids(seqs.st) == ["s_old", "st2", "st10"]
    assert ids(seqs.lt) == ["lt10", "lt30"]
    assert tl.his_queries(T, tok.words) == ["跑步鞋", "连衣裙 红色", "阿迪达斯 跑步鞋", "耐克"]
    # The other search of the same second sees exactly the same past.
    other = next(s for s in tl.searches() if s.query == "耐克 篮球鞋")
    assert tl.sequences_at(other.ts, other.session) == seqs
    # Side information travels with the item, in every sequence.
    assert [e.brand for e in seqs.lt] == ["brand_lt10", "brand_lt30"]


def test_session_id_defines_the_real_time_sequence():
    events = [
        ev(T - 7200, "a_old", session="A"),  # two hours back, but the same session id
        ev(T - 60, "b_recent", session="B"),
        ev(T - 30, "a_recent", session="A"),
        ev(T, "pos", query="跑步鞋", session="A"),
    ]
    tl = timeline(events)
    (search,) = tl.searches()
    seqs = tl.sequences_at(search.ts, search.session)
    assert ids(seqs.rt) == ["a_recent", "a_old"]
    assert ids(seqs.st) == ["b_recent"]
    assert seqs.lt == []


def test_full_sequences_spill_into_the_next_one():
    recent = [ev(T - 10 * (i + 1), f"r{i}") for i in range(60)]  # one session, r0 newest
    hourly = [ev(T - DAY - 3600 * i, f"h{i}") for i in range(110)]  # one session each
    tl = timeline(recent + hourly + [ev(T, "pos", query="跑步鞋")])
    search = tl.searches()[0]
    seqs = tl.sequences_at(search.ts, search.session)
    assert ids(seqs.rt) == [f"r{i}" for i in range(MAX_REALTIME)]
    assert ids(seqs.st) == [f"r{i}" for i in range(50, 60)] + [f"h{i}" for i in range(90)]
    assert len(seqs.st) == MAX_SHORT_TERM
    assert ids(seqs.lt) == [f"h{i}" for i in range(90, 110)]
    assert len(seqs.lt) < MAX_LONG_TERM


def test_one_example_per_positive_with_the_strongest_action(tok):
    window = Window(date(2024, 3, 20), 7, 1)
    events = [
        ev(T - 100, "seen"),
        ev(T, "i1", query="跑步鞋"),
        ev(T, "i1", action="purchase", query="跑步鞋"),
        ev(T, "i2", query="跑步鞋"),
        ev(T, "i3", action="cart", query="跑步鞋"),
        ev(T + 60, "i4", action="collect", query="连衣裙"),  # a search with no positive
    ]
    counts = Counter()
    out = list(user_examples("u", events, window, tok, counts))
    assert [(s, e["item_id"], e["action"]) for s, e in out] == [("test", "i1", "purchase"), ("test", "i2", "click")]
    ex = out[0][1]
    assert ex["search_id"] == f"u|{T}|跑步鞋"
    assert ex["day"] == 8 and ex["ts"] == T and ex["user_id"] == "u"
    assert ex["title_words"] == ("title_i1",) and ex["leaf_cat"] == "leaf_i1"
    assert ex["query_words"] == ("跑步鞋",) and ex["query_chars"] == ("跑", "步", "鞋")
    assert ex["query_bigrams"] == ("跑步", "步鞋")
    assert ex["rt_item_id"] == ("seen",) and ex["rt_shop"] == ("shop_seen",)
    assert counts["searches"] == 2 and counts["positives"] == 2
    assert counts["search_without_positive"] == 1
    assert counts["examples_test"] == 2 and counts["searches_test"] == 1


def test_window_days_split_train_test_and_outside(tok):
    window = Window(date(2024, 3, 8), train_days=7, test_days=1)
    at = {
        "before": day_start(date(2024, 3, 1)) - 1,
        "day1": day_start(date(2024, 3, 1)),
        "day7": day_start(date(2024, 3, 8)) - 1,
        "day8": day_start(date(2024, 3, 8)),
        "after": day_start(date(2024, 3, 9)),
    }
    events = [ev(ts, name, query="跑步鞋") for name, ts in at.items()]
    counts = Counter()
    vocab = {"word": Counter(), "char": Counter(), "bigram": Counter()}
    item_freq = Counter()
    out = list(user_examples("u", events, window, tok, counts, vocab_counts=vocab, item_freq=item_freq))
    assert [(s, e["item_id"], e["day"]) for s, e in out] == [("train", "day1", 1), ("train", "day7", 7), ("test", "day8", 8)]
    assert counts["positive_outside_window"] == 2
    assert counts["positives"] == counts["examples_train"] + counts["examples_test"] + counts["positive_outside_window"]
    # Query text counts for the vocabularies only before the test window.
    assert vocab["word"]["跑步鞋"] == 3
    assert item_freq == Counter({"day1": 1, "day7": 1})
    two_test_days = Window(date(2024, 3, 8), train_days=7, test_days=2)
    assert two_test_days.split_of(at["after"]) == "test" and two_test_days.day_of(at["after"]) == 9
    assert window.to_dict()["train_first_day"] == "2024-03-01" and window.to_dict()["test_last_day"] == "2024-03-08"


def test_over_active_users_keep_their_newest_events(tok):
    events = [ev(T - 100 * i, f"i{i}", query="跑步鞋") for i in range(10)]
    kept, cut = cap_events(reversed(events), 4)
    assert [e.item_id for e in kept] == ["i3", "i2", "i1", "i0"] and cut == 6
    counts = Counter()
    out = list(user_examples("u", events, Window(date(2024, 3, 20)), tok, counts, max_events=4))
    assert len(out) == 4
    assert counts["events_over_user_cap"] == 6 and counts["users_capped"] == 1
    assert out[-1][1]["his_queries"] == ["跑步鞋"]


def test_queries_without_words_are_skipped_and_counted(tok):
    counts = Counter()
    out = list(user_examples("u", [ev(T, "i1", query="！！")], Window(date(2024, 3, 20)), tok, counts))
    assert out == [] and counts["positive_query_without_tokens"] == 1 and counts["positives"] == 1


# --- the Beam job -----------------------------------------------------------------------------

D = {n: day_start(date(2024, 2, 29)) + n * DAY + 10 * 3600 for n in range(9)}  # D[n]: day n, 10:00 UTC

ITEMS = [
    {"item_id": "i1", "title": "阿迪达斯 跑步鞋 男", "leaf_category": "跑步鞋", "top_category": "运动鞋", "brand": "阿迪达斯", "shop": "sa"},
    {"item_id": "i2", "title": "耐克 跑步鞋", "leaf_category": "跑步鞋", "top_category": "运动鞋", "brand": "耐克", "shop": "sb"},
    {"item_id": "i3", "title": "耐克 篮球鞋", "leaf_category": "篮球鞋", "top_category": "运动鞋", "brand": "耐克", "shop": "sb"},
    {"item_id": "i4", "title": "连衣裙 红色 夏季", "leaf_category": "连衣裙", "top_category": "女装", "brand": "", "shop": "sc"},
    {"item_id": "i5", "title": "连衣裙 碎花", "leaf_category": "连衣裙", "top_category": "女装", "brand": "无印良品", "shop": "sc"},
]
EVENTS = [
    {"user_id": "u1", "ts": D[1], "query": "跑步鞋", "item_id": "i1", "action": "click"},
    {"user_id": "u1", "ts": D[3], "query": "", "item_id": "i2", "action": "cart"},
    {"user_id": "u1", "ts": D[7], "query": "耐克 跑步鞋", "item_id": "i2", "action": "click"},
    {"user_id": "u1", "ts": D[7], "query": "耐克 跑步鞋", "item_id": "i2", "action": "purchase"},
    {"user_id": "u1", "ts": D[7], "query": "耐克 跑步鞋", "item_id": "i1", "action": "click"},
    {"user_id": "u1", "ts": D[8], "query": "篮球鞋", "item_id": "i3", "action": "click"},
    {"user_id": "u2", "ts": D[0], "query": "连衣裙", "item_id": "i4", "action": "click"},  # before the window
    {"user_id": "u2", "ts": D[8], "query": "连衣裙 红色", "item_id": "i4", "action": "click", "session_id": "x"},
    {"user_id": "u2", "ts": D[8], "query": "连衣裙 红色", "item_id": "i5", "action": "cart", "session_id": "x"},
    {"user_id": "u2", "ts": D[8] + 60, "query": "碎花", "item_id": "i5", "action": "collect", "session_id": "x"},
]
ITEM_COLUMNS = ("item_id", "title", "leaf_category", "top_category", "brand", "shop")
EVENT_COLUMNS = ("user_id", "ts", "session_id", "query", "item_id", "action")
BAD_ITEM_LINES = [
    "{not json",
    json.dumps({"item_id": "i6", "title": "x", "top_category": "t", "shop": "s"}),
    json.dumps({**ITEMS[4], "title": "连衣裙 碎花 重复"}, ensure_ascii=False),
]
BAD_EVENT_LINES = [
    "[1, 2",
    json.dumps({"ts": D[2], "item_id": "i1", "action": "click"}),
    json.dumps({"user_id": "u3", "ts": "tuesday", "item_id": "i1", "action": "click"}),
    json.dumps({"user_id": "u3", "ts": D[2], "item_id": "i1", "action": "like"}),
    json.dumps({"user_id": "u3", "ts": D[2], "query": "跑步鞋", "item_id": "i99", "action": "click"}, ensure_ascii=False),
    json.dumps({"user_id": "u3", "ts": D[2], "item_id": "", "action": "click"}),
]


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_job(raw, out, **kwargs):
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.preprocess import run

    return run(str(raw), str(out), pipeline=TestPipeline(), quiet=True, **kwargs)


def read_examples(out, split):
    import tensorflow as tf

    from features.spec import parse_examples

    files = sorted(glob.glob(os.path.join(out, split, "part-*.tfrecord.gz")))
    assert files, f"no {split} shards"
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    parsed = parse_examples(records) if records else {}
    return records, {k: v.numpy() for k, v in parsed.items()}


def strings(row):
    return [v.decode() for v in row if v]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    raw = root / "raw"
    raw.mkdir()
    write_jsonl(raw / "items.jsonl", ITEMS, BAD_ITEM_LINES)
    write_jsonl(raw / "events.jsonl", EVENTS, ["", *BAD_EVENT_LINES])  # a blank line is no record
    out = root / "out"
    runner_guard.uninstall()  # so that test_the_job_guards_beams_data_plane sees this run install it
    stats = run_job(raw, out, test_date="2024-03-08", shards=2)
    return stats, str(out)


def test_the_job_guards_beams_data_plane(job):
    assert runner_guard.installed()


def test_stats_count_and_reconcile(job):
    stats, out = job
    assert json.loads(open(os.path.join(out, "stats.json"), encoding="utf-8").read()) == stats
    assert (stats["items_in"], stats["items_valid"]) == (8, 5)
    assert (stats["events_in"], stats["events_valid"]) == (16, 10)
    assert (stats["users"], stats["searches"], stats["positives"]) == (2, 6, 6)
    assert (stats["examples_train"], stats["examples_test"]) == (3, 2)
    assert (stats["searches_train"], stats["searches_test"]) == (2, 2)
    assert stats["skipped"]["positive_outside_window"] == 1
    assert stats["skipped"]["search_without_positive"] == 1
    assert stats["reconcile"] == {"items": True, "events": True, "positives": True, "users": True}
    assert stats["user_store"]["users"] == 2 and stats["user_store"]["as_of"] == D[8] + 61
    assert stats["window"]["train_first_day"] == "2024-03-01" and stats["window"]["test_first_day"] == "2024-03-08"
    assert stats["vocab"]["item_id"] == 5 and stats["item_freq_items"] == 2


def test_malformed_records_are_dead_lettered_with_their_reason(job):
    stats, out = job
    assert stats["dead_letter_by_source"] == {
        "items": {"bad_json": 1, "missing_leaf_category": 1, "duplicate_item": 1},
        "events": {"bad_json": 1, "missing_user_id": 1, "bad_ts": 1, "bad_action": 1, "unknown_item": 1, "missing_item_id": 1},
    }
    dead = []
    for path in glob.glob(os.path.join(out, "dead_letter", "part-*.jsonl")):
        dead += [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    assert len(dead) == 9
    by_reason = {(d["source"], d["reason"]): d for d in dead}
    assert by_reason[("items", "bad_json")]["record"] == "{not json"
    assert by_reason[("events", "bad_json")]["record"] == "[1, 2"
    assert by_reason[("events", "bad_ts")]["detail"].startswith("ts 'tuesday'")
    assert by_reason[("events", "unknown_item")]["record"]["item_id"] == "i99"
    assert by_reason[("items", "duplicate_item")]["record"]["item_id"] == "i5"
    assert all(d["detail"] for d in dead)


def test_examples_parse_with_the_feature_spec(job):
    _, out = job
    records, train = read_examples(out, "train")
    assert len(records) == 3
    rows = sorted(
        (int(train["day"][i]), train["item_id"][i].decode(), i) for i in range(len(records))
    )
    assert [(d, item) for d, item, _ in rows] == [(1, "i1"), (7, "i1"), (7, "i2")]
    i = rows[2][2]  # day 7, "耐克 跑步鞋", i2 clicked and purchased
    assert train["action"][i].decode() == "purchase"
    assert train["search_id"][i].decode() == f"u1|{D[7]}|耐克 跑步鞋"
    assert strings(train["query_words"][i]) == ["耐克", "跑步鞋"]
    assert strings(train["his_queries"][i]) == ["跑步鞋"]
    assert strings(train["rt_item_id"][i]) == []
    assert strings(train["st_item_id"][i]) == ["i2", "i1"]
    assert strings(train["st_brand"][i]) == ["耐克", "阿迪达斯"]
    assert strings(train["title_words"][i]) == ["耐克", "跑步鞋"]
    assert train["brand"][i].decode() == "耐克" and train["shop"][i].decode() == "sb"

    records, test = read_examples(out, "test")
    by_item = {test["item_id"][i].decode(): i for i in range(len(records))}
    assert sorted(by_item) == ["i3", "i4"]
    i = by_item["i3"]
    assert int(test["day"][i]) == 8
    # Same-second events sort by (query, item, action): newest first reverses that.
    assert strings(test["st_item_id"][i]) == ["i2", "i2", "i1", "i2", "i1"]
    assert strings(test["his_queries"][i]) == ["耐克 跑步鞋", "跑步鞋"]
    j = by_item["i4"]  # u2 on day 8: the day-0 behaviour is 8 days old, so short-term
    assert strings(test["st_item_id"][j]) == ["i4"] and strings(test["his_queries"][j]) == ["连衣裙"]

    records, items = read_examples(out, "items")
    assert sorted(v.decode() for v in items["item_id"]) == ["i1", "i2", "i3", "i4", "i5"]


def test_vocabularies_respect_min_counts_and_order(job, tok):
    _, out = job
    vocab_dir = os.path.join(out, "vocab")

    def lines(name):
        return open(os.path.join(vocab_dir, name), encoding="utf-8").read().split("\n")[:-1]

    # Words of every title and of the queries before the test window (day 0 .. day 7).
    train_queries = ["跑步鞋", "耐克 跑步鞋", "连衣裙"]
    words = Counter(w for text in [it["title"] for it in ITEMS] + train_queries for w in tok.words(text))
    assert lines("word.txt") == rank_tokens(words, VOCABS["word"].min_count)
    assert "连衣裙" in lines("word.txt")  # two titles and a training query
    assert "碎花" not in lines("word.txt")  # one title; the test-day query does not count
    assert "篮球鞋" not in lines("word.txt")
    chars = lines("char.txt")
    assert chars and all(len(c) == 1 for c in chars)
    assert lines("item_id.txt") == ["i1", "i2", "i3", "i4", "i5"]
    assert lines("brand.txt") == ["耐克", "无印良品", "阿迪达斯"]  # count desc, then token; "" never
    assert lines("leaf_cat.txt") == ["跑步鞋", "连衣裙", "篮球鞋"]
    assert lines("item_freq.tsv") == ["i1\t2", "i2\t1"]
    assert set(lines("user_dict.txt")) == {"阿迪达斯", "耐克", "无印良品", "跑步鞋", "篮球鞋", "连衣裙", "运动鞋", "女装"}
    for name in VOCABS:
        assert os.path.exists(os.path.join(vocab_dir, f"{name}.txt"))
    assert Tokenizer.load(vocab_dir).user_words == tok.user_words


def test_outputs_are_gzipped_shards(job):
    _, out = job
    shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "train", "*")))
    assert shards == ["part-00000-of-00002.tfrecord.gz", "part-00001-of-00002.tfrecord.gz"]
    with gzip.open(os.path.join(out, "train", shards[0]), "rb") as f:
        f.read()  # a real gzip stream (possibly empty)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """The clean world in JSON Lines, CSV and Parquet, each preprocessed (default test date)."""
    results = {}
    for ext in ("jsonl", "csv", "parquet"):
        root = tmp_path_factory.mktemp(ext)
        raw = root / "raw"
        contract.write_records(str(raw / f"items.{ext}"), ITEMS, ITEM_COLUMNS)
        contract.write_records(str(raw / f"events.{ext}"), EVENTS, EVENT_COLUMNS)
        stats = run_job(raw, root / "out")
        results[ext] = (stats, str(root / "out"))
    return results


def test_csv_and_parquet_give_the_same_examples_as_jsonl(formats):
    def outputs(out):
        return {split: sorted(read_examples(out, split)[0]) for split in ("train", "test", "items")}

    jsonl_stats, jsonl_out = formats["jsonl"]
    assert jsonl_stats["window"]["test_date"] == "2024-03-08"  # the date of the latest event
    assert (jsonl_stats["examples_train"], jsonl_stats["examples_test"]) == (3, 2)
    expected = outputs(jsonl_out)
    for ext in ("csv", "parquet"):
        stats, out = formats[ext]
        assert outputs(out) == expected, ext
        assert {k: v for k, v in stats.items() if k not in ("inputs", "seconds", "step_seconds")} == {
            k: v for k, v in jsonl_stats.items() if k not in ("inputs", "seconds", "step_seconds")
        }
        assert stats["inputs"]["events"]["format"] == ext


def test_bad_arguments_are_clear_errors(tmp_path):
    from pipeline.preprocess import run

    with pytest.raises(ValueError, match="--test-date"):
        run(str(tmp_path), str(tmp_path / "out"), test_date="08/03/2024")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no items file"):
        run(str(tmp_path), str(out))
    assert (out / "stats.json").exists()  # a failed start leaves earlier outputs alone


def test_command_line_passes_beam_options_through(job, tmp_path, capsys):
    import argparse

    from pipeline import preprocess

    raw = os.path.join(os.path.dirname(job[1]), "raw")
    stale = tmp_path / "out" / "train" / "part-00007-of-00009.tfrecord.gz"  # from an earlier run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    parser = argparse.ArgumentParser()
    preprocess.add_arguments(parser)
    args, extra = parser.parse_known_args(
        ["--raw", raw, "--out", str(tmp_path / "out"), "--test-date", "2024-03-08", "--direct_running_mode=in_memory"]
    )
    args.extra_args = extra
    assert preprocess.main(args) == 0
    summary = capsys.readouterr().out
    assert "examples train 3  test 2" in summary and "dead letters 9" in summary
    assert json.load(open(tmp_path / "out" / "stats.json"))["examples_train"] == 3
    assert not stale.exists()


def test_end_to_end_on_a_tiny_synthetic_world(tmp_path):
    from features.spec import PAD
    from pipeline.preprocess import run
    from pipeline.synth import generate

    world = generate(str(tmp_path / "raw"), "tiny", seed=3, progress=False)
    stats = run(str(tmp_path / "raw"), str(tmp_path / "out"), beam_args=["--direct_running_mode=in_memory"], quiet=True)
    assert stats["reconcile"] == {"items": True, "events": True, "positives": True, "users": True}
    assert stats["events_in"] == world["events"] and stats["items_valid"] == world["items"]
    assert stats["searches"] == world["searches"]
    assert sum(stats["dead_letter"].values()) == 0
    assert stats["window"]["train_first_day"] == world["day1"]  # synth's day 1 is the window's day 1
    assert stats["examples_train"] > 0 and stats["examples_test"] > 0
    out = str(tmp_path / "out")
    _, train = read_examples(out, "train")
    _, test = read_examples(out, "test")
    assert set(train["day"].tolist()) <= set(range(1, 8)) and set(test["day"].tolist()) == {8}
    assert len(train["item_id"]) == stats["examples_train"]
    # The history is real: most training searches see earlier behaviours and queries.
    assert (train["st_item_id"][:, 0] != PAD.encode()).mean() > 0.5
    assert (train["his_queries"][:, 0] != PAD.encode()).mean() > 0.5
    _, items = read_examples(out, "items")
    assert set(train["item_id"].tolist()) <= set(items["item_id"].tolist())
    freq = [line.split("\t") for line in open(os.path.join(out, "vocab", "item_freq.tsv"), encoding="utf-8")]
    assert sum(int(n) for _, n in freq) == stats["examples_train"]


def test_example_encoder_writes_the_message_to_example_writes():
    import random

    from tensorflow.core.example import example_pb2

    from features.spec import FEATURES, to_example
    from pipeline.encode import ExampleEncoder

    rng = random.Random(0)
    words = ["跑步鞋", "i7", "", "ｘ", "a b", "耐克" * 40, "\u00e9"]
    encoder = ExampleEncoder(cache_strings=5)  # a small cache is cleared on the way
    for _ in range(30):
        values = {}
        for name, f in FEATURES.items():
            if rng.random() < 0.3:
                continue
            if f.dtype == "int64":
                values[name] = rng.choice([0, 1, 1709900000, 2**40, -3])
            elif f.length is None:
                values[name] = rng.choice(words)
            else:
                values[name] = tuple(rng.choice(words) for _ in range(rng.randrange(f.length + 5)))
        got, want = encoder.encode(values), to_example(values)
        assert example_pb2.Example.FromString(got) == example_pb2.Example.FromString(want)
        head, tail = dict(list(values.items())[:10]), dict(list(values.items())[10:])
        merged = example_pb2.Example.FromString(encoder.encode(head) + encoder.encode(tail))
        assert merged == example_pb2.Example.FromString(want)
    with pytest.raises(KeyError, match="unknown feature"):
        encoder.encode({"query_char": ["a"]})


def random_timeline(rng, n: int, span: int) -> list[UserEvent]:
    """n events over `span` seconds before T: bursts in one second, session ids that
    interleave, gap sessions, searches with several positives."""
    events = []
    for _ in range(n):
        ts = T - rng.randrange(span)
        if rng.random() < 0.3:
            ts -= ts % rng.choice([60, 3600])
        session = rng.choice(["", "", "a", "b", f"s{rng.randrange(40)}"])
        query = rng.choice(["", "跑步鞋", "耐克 篮球鞋", "连衣裙", "！！", f"q{rng.randrange(30)}"])
        item = f"i{rng.randrange(200)}"
        action = rng.choice(["click", "click", "purchase", "cart", "collect"])
        events.append(ev(ts, item, action, query, session))
    return sorted(events, key=sort_key)


def test_sequence_indices_select_what_the_walk_selects():
    """The bisecting selection the job uses gives `select_sequences`' answer (the walk
    serving runs over a bounded history), full, spilled and interleaved sessions included."""
    import random

    rng = random.Random(3)
    shapes = set()
    for _ in range(400):
        events = random_timeline(rng, rng.choice([0, 1, 8, 60, 300, 700]), rng.choice([3600, DAY, 12 * DAY, 60 * DAY]))
        tl = Timeline("u", events)
        for t in rng.sample([e.ts for e in events] + [T + 1, T - 40 * DAY], min(5, len(events) + 2)):
            session = rng.choice(tl.sessions + ["id:none"]) if events else "id:none"
            want = tl.sequences_at(t, session)
            got = tl.sequence_indices_at(t, session)
            assert [[tl.events[i] for i in seq] for seq in got] == list(map(list, want))
            shapes.add(tuple(len(seq) == full for seq, full in zip(want, (MAX_REALTIME, MAX_SHORT_TERM, MAX_LONG_TERM))))
            shapes.add(tuple(type(seq).__name__ for seq in got))
    # Every sequence was seen full, and both the one-slice and the listed form came back.
    assert {s for s in shapes if isinstance(s[0], bool) and any(s)} and ("range", "range", "range") in shapes
    assert any("list" in s for s in shapes if isinstance(s[0], str))
    for k in range(3):
        assert any(s[k] is True for s in shapes if isinstance(s[0], bool))


def test_timeline_encoder_writes_the_bytes_of_the_feature_dicts(tok):
    """The job's example bytes (TimelineEncoder) equal ExampleEncoder's over the feature
    dicts of `timeline_searches`, example for example, with caches cleared on the way."""
    import random

    from pipeline.encode import ExampleEncoder, TimelineEncoder
    from pipeline.timeline import search_parts, timeline_searches, user_timeline

    rng = random.Random(5)
    window = Window(date(2024, 3, 20), train_days=30)
    fast = TimelineEncoder(ExampleEncoder(cache_strings=50), cache_entries=7)
    slow = ExampleEncoder()
    total = 0
    for user in range(40):
        events = random_timeline(rng, rng.choice([1, 20, 200, 600]), rng.choice([DAY, 20 * DAY, 60 * DAY]))
        counts_a, counts_b = Counter(), Counter()
        freq_a, freq_b = Counter(), Counter()
        want = []
        for split, shared, positives in timeline_searches(user_timeline(f"u{user}", events, counts_a), window, tok,
                                                          counts_a, item_freq=freq_a):
            head = slow.encode(shared)
            want += [(split, head + slow.encode(p)) for p in positives]
        tl = user_timeline(f"u{user}", events, counts_b)
        got = list(fast.examples(tl, window, search_parts(tl, window, tok, counts_b, item_freq=freq_b)))
        assert got == want
        assert (counts_a, freq_a) == (counts_b, freq_b)
        total += len(got)
    assert total > 1000


def test_tfrecord_framing_is_what_tensorflows_writer_writes(tmp_path):
    import random

    import tensorflow as tf

    from pipeline.transforms import tfrecord

    rng = random.Random(0)
    records = [b"", b"x", *(rng.randbytes(rng.randrange(1, 5000)) for _ in range(50))]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for r in records:
            w.write(r)
    assert b"".join(map(tfrecord, records)) == (tmp_path / "tf.tfrecord").read_bytes()
    with gzip.open(tmp_path / "ours.tfrecord.gz", "wb") as f:
        f.write(b"".join(map(tfrecord, records)))
    read = tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord.gz"), compression_type="GZIP")
    assert [r.numpy() for r in read] == records


def test_runner_floor_moves_every_event_through_two_shuffles(tiny_world):
    from benchmarks.preprocess import time_runner_floor

    raw = tiny_world[0]
    floor = time_runner_floor(raw, ["--direct_running_mode=in_memory"])
    lines = sum(1 for path in contract.find_inputs(raw, "events") for _ in open(path, encoding="utf-8"))
    assert floor["events"] == lines > 0 and floor["events_per_s"] > 0


def test_counts_that_do_not_reconcile_say_how_many_records_are_missing(job):
    from pipeline.preprocess import print_summary, unreconciled

    stats, out = job
    broken = json.loads(json.dumps(stats))
    broken["events_valid"] -= 7
    broken["reconcile"]["events"] = False
    assert unreconciled(stats) == []
    assert unreconciled(broken) == [
        f"events: {stats['events_in']:,} read, {stats['events_valid'] - 7:,} valid and "
        f"{sum(stats['dead_letter_by_source']['events'].values()):,} dead letters, 7 not accounted for"]
    shown = io.StringIO()
    print_summary(broken, out, file=shown)
    assert "ERROR: records lost inside the job: events:" in shown.getvalue()


def test_join_loss_check_counts_every_event_through_the_catalog_join(tiny_world):
    from benchmarks.join_loss import count_join

    counts = count_join(tiny_world[0], ["--direct_running_mode=in_memory"])
    assert counts["read"] == counts["emitted"] == counts["tallied"] > 0
