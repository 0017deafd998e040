"""The raw data contract: validation names the field, timestamps parse both ways."""
import os

import pytest

from pipeline import contract
from pipeline.contract import BadRecord, parse_ts, validate_event, validate_item


def test_parse_ts_epoch_and_iso():
    assert parse_ts(1700000000) == 1700000000
    assert parse_ts("1700000000") == 1700000000
    assert parse_ts("2023-11-14T22:13:20Z") == 1700000000
    assert parse_ts("2023-11-14T22:13:20") == 1700000000  # no offset -> UTC
    assert parse_ts("2023-11-15T06:13:20+08:00") == 1700000000
    for bad in ("yesterday", -5, True, float("nan")):
        with pytest.raises(BadRecord) as e:
            parse_ts(bad)
        assert e.value.reason == "bad_ts"


def test_validate_event_names_the_field():
    ok = validate_event({"user_id": "u", "ts": 5, "item_id": "i", "action": "Click", "query": " 连衣裙 "})
    assert (ok.action, ok.query, ok.session_id) == ("click", "连衣裙", "")
    cases = [
        ({"ts": 5, "item_id": "i", "action": "click"}, "missing_user_id"),
        ({"user_id": "u", "item_id": "i", "action": "click"}, "missing_ts"),
        ({"user_id": "u", "ts": 5, "item_id": "", "action": "click"}, "missing_item_id"),
        ({"user_id": "u", "ts": 5, "item_id": "i", "action": "like"}, "bad_action"),
        ({"user_id": "u", "ts": "soon", "item_id": "i", "action": "click"}, "bad_ts"),
        (["not", "a", "dict"], "not_an_object"),
    ]
    for record, reason in cases:
        with pytest.raises(BadRecord) as e:
            validate_event(record)
        assert e.value.reason == reason


def test_validate_item_brand_may_be_empty():
    item = validate_item({"item_id": 1, "title": "t", "leaf_category": "l", "top_category": "t", "shop": "s"})
    assert (item.item_id, item.brand, item.price) == ("1", "", None)
    with pytest.raises(BadRecord) as e:
        validate_item({"item_id": 1, "title": "t", "leaf_category": "l", "top_category": "t", "shop": "s", "price": "x"})
    assert e.value.reason == "bad_price"


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_write_then_read_every_format(tmp_path, ext):
    rows = [{"user_id": "u1", "ts": 1, "item_id": "i1", "action": "click", "query": "a,b \"q\""},
            {"user_id": "u2", "ts": 2, "item_id": "i2", "action": "cart", "query": ""}]
    cols = ("user_id", "ts", "item_id", "action", "query")
    path = tmp_path / f"events.{ext}"
    contract.write_records(str(path), rows, cols)
    assert contract.find_inputs(str(tmp_path), "events") == [str(path)]
    got = [validate_event(r) for _, r in contract.iter_raw(str(path))]
    assert [(e.user_id, e.ts, e.query) for e in got] == [("u1", 1, 'a,b "q"'), ("u2", 2, "")]


def test_bad_lines_are_reported_not_raised(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "u"}\n{broken\n', encoding="utf-8")
    records = list(contract.iter_raw(str(path)))
    assert records[0][0].endswith(":1") and isinstance(records[0][1], dict)
    assert isinstance(records[1][1], BadRecord) and records[1][1].reason == "bad_json"
    with pytest.raises(FileNotFoundError, match="no items file"):
        contract.find_inputs(str(tmp_path), "items")


# --- hostile values: each is one BadRecord naming the field, never a crash ---------------------

RANGE = contract.TsRange.default(now=__import__("datetime").datetime(2024, 3, 9, tzinfo=__import__("datetime").timezone.utc))
OK_TS = 1709900000  # 2024-03-08


@pytest.mark.parametrize("value, detail", [
    (float("inf"), "not a finite number"),
    (float("-inf"), "not a finite number"),
    ("1e400", "not a finite number"),
    ("NaN", "neither epoch seconds nor ISO-8601"),
    (OK_TS * 1000, "looks like milliseconds"),
    (str(OK_TS * 1000), "looks like milliseconds"),
    (OK_TS * 1_000_000, "looks like microseconds"),
    (float(OK_TS) * 1e9, "looks like nanoseconds"),
    (10**30, "after the plausible range"),
    ("4102444800", "after the plausible range"),  # 2100-01-01
    ("2031-01-01T00:00:00Z", "after the plausible range"),
    ("-5", "negative"),
    (-1.5, "negative"),
    ("1999-12-31", "before the plausible range"),
    (86400, "before the plausible range"),
    ("0001-01-01T00:00:00+01:00", "before the plausible range"),
    ({"x": 1}, "dict"),
    ([OK_TS], "list"),
    (True, "not a time"),
])
def test_implausible_times_are_bad_ts_with_a_helpful_detail(value, detail):
    with pytest.raises(BadRecord) as e:
        validate_event({"user_id": "u", "ts": value, "item_id": "i", "action": "click"}, RANGE)
    assert e.value.reason == "bad_ts" and detail in e.value.detail


def test_plausible_range_is_inclusive_and_can_be_widened():
    from datetime import date

    assert parse_ts(RANGE.start, RANGE) == RANGE.start and parse_ts(RANGE.end - 1, RANGE) == RANGE.end - 1
    assert parse_ts("2024-03-10T23:59:59Z", RANGE)  # one day after "now" is still plausible
    wide = contract.TsRange.default(date(1990, 1, 1), date(2040, 1, 1))
    assert parse_ts("1995-06-01", wide) == 801964800
    with pytest.raises(ValueError, match="before the earliest"):
        contract.TsRange.default(date(2020, 1, 1), date(2019, 1, 1))


@pytest.mark.parametrize("field, value, reason", [
    ("item_id", {"x": 1}, "bad_type"),
    ("item_id", [1, 2], "bad_type"),
    ("item_id", True, "bad_type"),
    ("item_id", 12.5, "bad_type"),
    ("user_id", 3.0, "bad_type"),
    ("item_id", "i\n2", "control_character"),
    ("user_id", "u\t1", "control_character"),
    ("session_id", "s\x00", "control_character"),
    ("item_id", "i\u20281", "control_character"),
    ("item_id", "i\ud800", "bad_encoding"),
    ("query", "跑步鞋\udfff", "bad_encoding"),
    ("item_id", b"\xff\xfe", "bad_encoding"),
])
def test_wrong_types_control_characters_and_surrogates_are_rejected(field, value, reason):
    record = {"user_id": "u", "ts": OK_TS, "item_id": "i", "action": "click", field: value}
    with pytest.raises(BadRecord) as e:
        validate_event(record, RANGE)
    assert e.value.reason == reason and repr(field) in e.value.detail


def test_free_text_keeps_its_words_across_line_breaks_and_ints_are_ids():
    ev = validate_event({"user_id": 7, "ts": OK_TS, "item_id": 12, "action": "click", "query": "跑步鞋\n\t耐克"}, RANGE)
    assert (ev.user_id, ev.item_id, ev.query) == ("7", "12", "跑步鞋 耐克")
    item = {"item_id": "i", "title": "a\r\nb", "leaf_category": "l\n", "top_category": "t", "shop": "s"}
    assert validate_item(item).title == "a b" and validate_item(item).leaf_category == "l"  # trailing space stripped
    for category in ("l\nx", "l\x00x"):
        with pytest.raises(BadRecord) as e:
            validate_item({**item, "leaf_category": category})
        assert e.value.reason == "control_character"
    for price in (float("inf"), "nan", True, -1, {"p": 1}):
        with pytest.raises(BadRecord) as e:
            validate_item({**item, "price": price})
        assert e.value.reason == "bad_price"


def test_compressed_shards_are_inputs_and_unknown_extensions_are_refused(tmp_path):
    import gzip

    (tmp_path / "events-0.jsonl").write_text('{"a": 1}\n')
    with gzip.open(tmp_path / "events-1.jsonl.gz", "wt") as f:
        f.write('{"a": 2}\n')
    found = contract.find_inputs(str(tmp_path), "events")
    assert [os.path.basename(p) for p in found] == ["events-0.jsonl", "events-1.jsonl.gz"]
    assert [r for _, r in contract.iter_raw(found[1])] == [{"a": 2}]
    assert contract.format_of("x/items.CSV.GZ") == "csv"
    (tmp_path / "events-2.jsonl.zip").write_text("")
    with pytest.raises(ValueError, match=r"events-2\.jsonl\.zip: unknown format"):
        contract.find_inputs(str(tmp_path), "events")
    with pytest.raises(ValueError, match="unknown format"):
        contract.format_of("items.parquet.gz")  # Parquet compresses inside the file


def test_missing_columns_name_the_file_and_the_field():
    with pytest.raises(ValueError, match=r"events\.csv: no column 'ts' \(required in events\)"):
        contract.check_columns("events.csv", "events", contract.csv_columns("\ufeffuser_id,item_id,action\r\n"))
    contract.check_columns("items.csv", "items", ["item_id", "title", "leaf_category", "top_category", "shop"])
