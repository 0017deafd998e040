"""The raw data contract: validation names the field, timestamps parse both ways."""
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
