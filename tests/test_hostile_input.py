"""The job against input it did not expect: every record is counted, no record crashes the
run, unusable input fails loudly before or after the job, and the steps that would not
survive a large catalog (a bot user, a hot item, a huge vocabulary) stay linear and flat."""
from __future__ import annotations

import bz2
import glob
import gzip
import json
import os
import random
import re
import tracemalloc
from collections import Counter
from datetime import date

import pytest

from features import Tokenizer
from features.vocab import VOCABS, rank_tokens
from pipeline import contract, preprocess
from pipeline.timeline import DAY, Timeline, UserEvent, Window, day_start, sort_key, user_examples

D = {n: day_start(date(2024, 2, 29)) + n * DAY + 10 * 3600 for n in range(9)}  # day n, 10:00 UTC
TITLES = ["阿迪达斯 跑步鞋 男", "耐克 跑步鞋", "耐克 篮球鞋", "连衣裙 红色 夏季", "连衣裙 碎花"]
ITEMS = [
    {"item_id": f"i{n}", "title": t, "leaf_category": t.split()[-1], "top_category": "鞋服", "brand": "", "shop": "s"}
    for n, t in enumerate(TITLES)
]
QUERIES = ["跑步鞋", "耐克 跑步鞋", "连衣裙", "篮球鞋"]


def _jsonl(records) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in records]


def valid_events(rng: random.Random, n: int) -> list[dict]:
    """Searches with clicks over days 1..8 by a few users; the latest event is on day 8."""
    out = [{"user_id": "u0", "ts": D[8] + 5, "query": "跑步鞋", "item_id": "i1", "action": "click"},
           {"user_id": "u0", "ts": D[1], "query": "跑步鞋", "item_id": "i0", "action": "click"}]
    for _ in range(n - 2):
        out.append({"user_id": f"u{rng.randrange(4)}", "ts": D[rng.randrange(1, 8)] + rng.randrange(3600),
                    "query": rng.choice(QUERIES), "item_id": f"i{rng.randrange(len(ITEMS))}",
                    "action": rng.choice(["click", "click", "purchase", "cart"])})
    return out


def hostile_events(rng: random.Random) -> list[tuple[str, str]]:
    """(line, reason) pairs, one per class of hostile input."""
    ok = {"user_id": "h", "ts": D[3], "item_id": "i1", "action": "click", "query": "跑步鞋"}

    def variant(**change):
        return json.dumps({**ok, **change}, ensure_ascii=False)

    cases = [
        (variant(ts=D[3] * 1000), "bad_ts"),  # milliseconds
        (variant(ts=str(D[3] * 1_000_000)), "bad_ts"),  # microseconds, as a string
        (variant(ts=4_000_000_000), "bad_ts"),  # 2096: far in the future
        (variant(ts="2090-01-01T00:00:00Z"), "bad_ts"),
        (variant(ts=86_400), "bad_ts"),  # 1970: before any plausible log
        (variant(ts="-1709200000"), "bad_ts"),
        (variant(ts="1e400"), "bad_ts"),
        (variant(ts=1e308).replace("1e+308", "1e999"), "bad_ts"),  # overflows to inf
        (variant(ts=0).replace('"ts": 0', '"ts": Infinity'), "bad_ts"),
        (variant(ts=0).replace('"ts": 0', '"ts": NaN'), "bad_ts"),
        (variant(user_id="x").replace('"x"', '"\\ud800"'), "bad_encoding"),  # a lone surrogate
        (variant(query="x").replace('"x"', '"\\udfff tail"'), "bad_encoding"),
        (json.dumps({k: v for k, v in ok.items() if k != "user_id"} | {"note": "x"}).replace('"x"', '"\\ud83d"'),
         "missing_user_id"),  # the surrogate sits in a field nobody reads; the dead letter still writes
        (variant(user_id="u\n1"), "control_character"),
        (variant(item_id="i\t1"), "control_character"),
        (variant(session_id="s\x00"), "control_character"),
        (variant(item_id={"x": 1}), "bad_type"),
        (variant(item_id=[1]), "bad_type"),
        (variant(user_id=True), "bad_type"),
        (variant(item_id=1.5), "bad_type"),
        (variant(action="like"), "bad_action"),
        (variant(item_id="nope"), "unknown_item"),
        ('{"user_id": "u1", ', "bad_json"),
        ("[" * 100_000 + "]" * 100_000, "bad_json"),  # nested too deeply for the parser
        (variant(ts=0).replace('"ts": 0', '"ts": 1' + "0" * 5000), "bad_json"),  # too many digits for an int
        ("[1, 2]", "not_an_object"),
        ('"just a string"', "not_an_object"),
    ]
    rng.shuffle(cases)
    return cases


def write_world(raw, rng, hostile, valid):
    """Items as one file; events over a plain shard (opened by a byte-order mark, with a
    line holding two records split by a bare CR and blank lines), a gzip and a bzip2 shard."""
    raw.mkdir(parents=True)
    bad_items = [
        ('{"item_id": "i9", "title": "x", "leaf_category": "a\\nb", "top_category": "t", "shop": "s"}',
         "control_character"),
        ('{"item_id": {"id": 9}, "title": "x", "leaf_category": "a", "top_category": "t", "shop": "s"}', "bad_type"),
    ]
    (raw / "items.jsonl").write_text("\n".join(_jsonl(ITEMS) + [line for line, _ in bad_items]) + "\n",
                                     encoding="utf-8")
    lines = _jsonl(valid[2:]) + [line for line, _ in hostile]
    rng.shuffle(lines)
    thirds = [lines[i::3] for i in range(3)]
    split_at_cr = "\r".join(_jsonl(valid[:2]))
    plain = "\ufeff" + "\n".join(thirds[0] + ["", "   ", split_at_cr]) + "\r\n"
    (raw / "events-0.jsonl").write_text(plain, encoding="utf-8", errors="surrogatepass")
    with gzip.open(raw / "events-1.jsonl.gz", "wt", encoding="utf-8", errors="surrogatepass") as f:
        f.write("\n".join(thirds[1]) + "\n")
    with bz2.open(raw / "events-2.jsonl.bz2", "wb") as f:
        f.write(("\n".join(thirds[2]) + "\n").encode("utf-8") + b"\xff\xfe not utf-8\n")
    return bad_items


def run_job(raw, out, **kwargs):
    from apache_beam.testing.test_pipeline import TestPipeline

    return preprocess.run(str(raw), str(out), pipeline=TestPipeline(), **{"quiet": True, **kwargs})


def dead_letters(out) -> list[dict]:
    dead = []
    for path in glob.glob(os.path.join(out, "dead_letter", "part-*")):
        with open(path, encoding="utf-8") as f:
            dead += [json.loads(line) for line in f]
    return dead


def test_fuzzed_mixture_finishes_reconciles_and_dead_letters_every_bad_record(tmp_path, capsys, monkeypatch):
    from pipeline import transforms

    seed = int(os.environ.get("EBR_FUZZ_SEED", "7"))
    rng = random.Random(seed)
    hostile = hostile_events(rng)
    valid = valid_events(rng, rng.randrange(30, 60))
    bad_items = write_world(tmp_path / "raw", rng, hostile, valid)
    monkeypatch.setattr(preprocess.Progress, "PRINT_SECONDS", 0.2)
    monkeypatch.setattr(transforms, "PROGRESS_SECONDS", 0.0)
    stats = run_job(tmp_path / "raw", tmp_path / "out", quiet=False)

    assert stats["reconcile"] == {"items": True, "events": True, "positives": True, "users": True}, seed
    expected = Counter(reason for _, reason in hostile) + Counter({"bad_encoding": 1})  # the bzip2 shard's last line
    assert stats["dead_letter_by_source"]["events"] == dict(expected), seed
    assert stats["dead_letter_by_source"]["items"] == dict(Counter(r for _, r in bad_items))
    assert (stats["events_in"], stats["events_valid"]) == (len(valid) + len(hostile) + 1, len(valid))
    assert stats["read"] == {"blank_lines": 2, "lines_split_at_cr": 1}
    # No implausible time moved the window: the test day is the latest valid event's.
    assert stats["window"]["test_date"] == "2024-03-08" and stats["window"]["latest_event"] == "2024-03-08T10:00:05Z"

    dead = dead_letters(str(tmp_path / "out"))
    assert len(dead) == sum(expected.values()) + len(bad_items)
    got = Counter((d["reason"], d["record"] if isinstance(d["record"], str) else d["record"]["item_id"]) for d in dead)
    for line, reason in hostile:
        key = (reason, "nope") if reason == "unknown_item" else (reason, line)
        assert got[key] >= 1, (seed, reason, line[:80])
    assert all(d["detail"] and d["source"] in ("items", "events") for d in dead)
    details = {d["record"]: d["detail"] for d in dead if isinstance(d["record"], str)}
    assert "looks like milliseconds" in details[next(line for line, _ in hostile if str(D[3] * 1000) in line)]

    printed = capsys.readouterr().out
    assert re.search(r"read items [1-9].* events [1-9]", printed)  # progress lines while running
    assert "dead letters" in printed


def _world(raw, events, items=ITEMS, ext="jsonl"):
    contract.write_records(str(raw / f"items.{ext}"), items, tuple(items[0]) if items else ("item_id",))
    cols = ("user_id", "ts", "session_id", "query", "item_id", "action")
    contract.write_records(str(raw / f"events.{ext}"), events, cols)


def test_headers_and_schemas_are_checked_before_the_job(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "csv"
    raw.mkdir()
    _world(raw, valid_events(random.Random(1), 5), ext="csv")
    (raw / "events.csv").write_text("user_id,item_id,action\nu,i0,click\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"events\.csv: no column 'ts' \(required in events\)"):
        preprocess.run(str(raw), str(out), quiet=True)
    assert not out.exists()  # nothing was started

    raw = tmp_path / "parquet"
    raw.mkdir()
    _world(raw, valid_events(random.Random(1), 5), ext="parquet")
    pq.write_table(pa.table({"item_id": [{"a": 1}], "title": ["t"], "leaf_category": ["l"], "top_category": ["t"],
                             "shop": ["s"]}), str(raw / "items.parquet"))
    with pytest.raises(ValueError, match=r"items\.parquet: column 'item_id' has type struct"):
        preprocess.run(str(raw), str(out), quiet=True)
    pq.write_table(pa.table({"item_id": ["i"], "title": ["t"]}), str(raw / "items.parquet"))
    with pytest.raises(ValueError, match=r"items\.parquet: no column 'leaf_category', 'top_category', 'shop'"):
        preprocess.run(str(raw), str(out), quiet=True)

    raw = tmp_path / "mac"
    raw.mkdir()
    _world(raw, valid_events(random.Random(1), 5))
    text = (raw / "events.jsonl").read_text(encoding="utf-8")
    (raw / "events.jsonl").write_text(text.replace("\n", "\r"), encoding="utf-8", newline="")
    with pytest.raises(ValueError, match=r"events\.jsonl: old Mac line ends"):
        preprocess.run(str(raw), str(out), quiet=True)
    (raw / "events.jsonl").write_text(text, encoding="utf-16")
    with pytest.raises(ValueError, match=r"events\.jsonl: UTF-16"):
        preprocess.run(str(raw), str(out), quiet=True)
    (raw / "events.jsonl").write_text(text, encoding="utf-8")
    (raw / "events-1.json.zip").write_text("")
    with pytest.raises(ValueError, match=r"events-1\.json\.zip: unknown format"):
        preprocess.run(str(raw), str(out), quiet=True)


def test_unknown_options_and_unwritable_outputs_fail_at_the_start(tmp_path, capsys):
    from ebr import cli

    raw = tmp_path / "raw"
    raw.mkdir()
    _world(raw, valid_events(random.Random(1), 5))
    with pytest.raises(ValueError, match=r"unknown option --trian-days \(did you mean --train-days\?\)"):
        preprocess.run(str(raw), str(tmp_path / "out"), beam_args=["--trian-days", "3"])
    assert cli.main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "out"), "--trian-days", "3"]) == 2
    assert "unknown option --trian-days" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a local path, but the DataflowRunner's workers"):
        preprocess.run(str(raw), str(tmp_path / "out"), beam_args=["--runner=DataflowRunner", "--project=p"])
    # A file system Beam knows but cannot reach from here (no S3 client configured).
    with pytest.raises(ValueError, match=r"--out s3://bucket/out is not writable"):
        preprocess.run(str(raw), "s3://bucket/out", beam_args=["--runner=DataflowRunner"])
    with pytest.raises(ValueError, match=r"Beam has no file system for nosuch://"):
        preprocess.run(str(raw), "nosuch://bucket/out")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="is not writable"):
        preprocess.run(str(raw), str(blocker / "out"))
    assert not (tmp_path / "out").exists()


def test_unusable_input_fails_loudly_after_the_job_with_stats_written(tmp_path):
    rng = random.Random(3)
    raw = tmp_path / "bad_events"
    raw.mkdir()
    events = [{**e, "ts": e["ts"] * 1000} for e in valid_events(rng, 20)]  # milliseconds throughout
    _world(raw, events)
    with pytest.raises(preprocess.UnusableInput) as e:
        run_job(raw, tmp_path / "out1")
    message = str(e.value)
    assert "events: 0 of 20 records valid (0.0%), below --min-valid-share 0.5; most common reasons: bad_ts 20" in message
    assert "events.jsonl" in message
    stats = json.loads((tmp_path / "out1" / "stats.json").read_text(encoding="utf-8"))
    assert stats["problems"] and stats["dead_letter"] == {"bad_ts": 20}

    raw = tmp_path / "empty_items"
    raw.mkdir()
    _world(raw, valid_events(rng, 5))
    (raw / "items.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(preprocess.UnusableInput, match=r"items: no record in .*items\.jsonl"):
        run_job(raw, tmp_path / "out2", min_valid_share=0)


def test_no_training_example_is_an_error_and_positives_after_the_window_a_warning(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    _world(raw, valid_events(random.Random(4), 20))
    with pytest.raises(preprocess.UnusableInput, match="no training example") as e:
        run_job(raw, tmp_path / "out", test_date="2024-02-01")  # a month before the data
    assert "check --test-date" in str(e.value)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    skipped = stats["skipped"]
    assert skipped["positive_after_window"] == skipped["positive_outside_window"] > 0
    assert skipped["positive_before_window"] == 0
    assert any("after the test window" in w for w in stats["warnings"])


def test_positives_before_and_after_the_window_are_told_apart():
    tok = Tokenizer(["跑步鞋"])
    window = Window(date(2024, 3, 8), 7, 1)
    ev = [UserEvent(ts, "跑步鞋", "i", "click", "", "l", "t", "b", "s", ("w",))
          for ts in (D[0], D[0] + 60, D[4], D[8] + DAY)]  # two before, one inside, one after
    counts = Counter()
    list(user_examples("u", ev, window, tok, counts))
    assert (counts["positive_before_window"], counts["positive_after_window"]) == (2, 1)
    assert counts["positive_outside_window"] == 3


def test_a_bot_repeating_one_query_costs_linear_time():
    tok = Tokenizer(["跑步鞋"])
    calls = Counter()

    def words(text):
        calls["n"] += 1
        return tok.words(text)

    def history_cost(n):
        calls.clear()
        ev = [UserEvent(D[1] + 20 * i, "跑步鞋" if i % 3 else "耐克", "i", "click", "", "l", "t", "b", "s", ())
              for i in range(n)]
        tl = Timeline("bot", sorted(ev, key=sort_key))
        answers = [tl.his_queries(s.ts, words) for s in tl.searches()]
        return calls["n"], answers

    small, answers = history_cost(1000)
    large, _ = history_cost(4000)
    assert answers[0] == [] and answers[1] == ["耐克"] and answers[-1] == ["跑步鞋", "耐克"]
    assert large <= 4.5 * small  # quadratic would be 16x
    assert large <= 2 * 4000


def _reiterable_events(n):
    class Events:
        def __iter__(self):
            yield ("hot", "热门 跑步鞋", "跑步鞋", "鞋", "", "s", None)  # the catalog row, among the events
            for i in range(n):
                yield (f"u{i}", D[1] + i, "hot", "click", "跑步鞋" if i % 2 else "", "")

    return Events()


def test_a_hot_item_streams_through_the_join_in_flat_memory():
    from pipeline.transforms import _JoinCatalogFn

    fn = _JoinCatalogFn()
    fn.setup()
    fn.start_bundle()

    def peak(n):
        tracemalloc.start()
        out = 0
        for _ in fn.process(("hot", _reiterable_events(n)), ["跑步鞋"]):
            out += 1
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, top

    list(fn.process(("hot", _reiterable_events(1)), ["跑步鞋"]))  # builds the tokenizer, untraced
    small, small_peak = peak(500)
    large, large_peak = peak(10_000)
    assert (small, large) == (501, 10_001)  # the item's features, then every event
    assert large_peak < 2 * small_peak + 200_000  # 20x the events, not 20x the memory


def test_titles_are_truncated_at_the_join_and_do_not_fill_the_query_cache():
    from features.spec import MAX_TITLE_WORDS
    from pipeline.transforms import _JoinCatalogFn, tokenizer_for

    title = " ".join(f"词{i}" for i in range(MAX_TITLE_WORDS + 20))
    fn = _JoinCatalogFn()
    fn.setup()
    fn.start_bundle()
    values = [("i1", title, "l", "t", "", "s", None), ("u", D[1], "i1", "click", "跑步鞋", "")]
    cache = tokenizer_for([]).tokenize.cache_info().currsize
    out = list(fn.process(("i1", values), []))
    (features,) = [o.value for o in out if getattr(o, "tag", None) == "items"]
    (event,) = [o for o in out if not hasattr(o, "tag")]
    assert len(features["title_words"]) == MAX_TITLE_WORDS and len(event[1][-1]) == MAX_TITLE_WORDS
    assert tokenizer_for([]).tokenize.cache_info().currsize == cache
    assert sum(fn.tallies["vocab/word"].values()) > MAX_TITLE_WORDS  # the vocabulary still sees every word


def test_vocabularies_merged_from_sorted_shards_equal_one_ranking(tmp_path, monkeypatch):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline import transforms

    monkeypatch.setattr(transforms, "INLINE_RUN_TOKENS", 5)  # most shards travel as files
    monkeypatch.setattr(transforms, "VOCAB_SHARDS", 4)
    rng = random.Random(5)
    bundles = [Counter({f"w{rng.randrange(300)}": rng.randrange(1, 4) for _ in range(200)}) for _ in range(6)]
    items = Counter({f"i{n:04d}": 1 for n in range(500)})
    elements = [e for b in bundles for e in transforms.shard_tallies("vocab/word", b)]
    elements += list(transforms.shard_tallies("vocab/item_id", items))
    elements += list(transforms.shard_tallies("item_freq", bundles[0]))
    elements += list(transforms.shard_tallies("stats", Counter({"users": 3})))
    with TestPipeline() as p:
        _ = p | beam.Create(elements) | transforms.WriteTallies(str(tmp_path), str(tmp_path / ".work"))

    def lines(name):
        return (tmp_path / "vocab" / name).read_text(encoding="utf-8").split("\n")[:-1]

    words = sum(bundles, Counter())
    assert lines("word.txt") == rank_tokens(words, VOCABS["word"].min_count)
    assert lines("item_id.txt") == sorted(items)
    assert lines("item_freq.tsv") == [f"{t}\t{bundles[0][t]}" for t in rank_tokens(bundles[0], 1)]
    assert lines("brand.txt") == []  # every vocabulary file exists
    assert json.loads((tmp_path / ".work" / "counts.json").read_text()) == {"users": 3}
    assert glob.glob(str(tmp_path / ".work" / "runs" / "*"))  # the large shards went through files
