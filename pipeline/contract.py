"""The raw data contract: items and events, as JSON Lines, CSV or Parquet.

items:  item_id, title, leaf_category, top_category, brand (may be empty), shop, [price]
events: user_id, ts (epoch seconds or ISO-8601), [session_id], query ('' when the
        behaviour had no search), item_id, action in {click, cart, collect, purchase}

A search is (user_id, ts, query) with a non-empty query; its positives are the items
clicked or purchased under it (the events carrying that user, ts and query).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from features.spec import BEHAVIOUR_ACTIONS

ITEM_REQUIRED = ("item_id", "title", "leaf_category", "top_category", "shop")
ITEM_OPTIONAL = ("brand", "price")
EVENT_REQUIRED = ("user_id", "ts", "item_id", "action")
EVENT_OPTIONAL = ("session_id", "query")
FORMATS = ("jsonl", "csv", "parquet")


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is a short stable key for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    leaf_category: str
    top_category: str
    brand: str
    shop: str
    price: float | None = None


@dataclass(frozen=True)
class Event:
    user_id: str
    ts: int
    item_id: str
    action: str
    query: str = ""
    session_id: str = ""


def _text(record: dict, field: str, required: bool) -> str:
    value = record.get(field)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        if required:
            raise BadRecord(f"missing_{field}", f"field {field!r} is missing")
        return ""
    value = str(value).strip()
    if required and not value:
        raise BadRecord(f"missing_{field}", f"field {field!r} is empty")
    return value


def parse_ts(value) -> int:
    """Epoch seconds (int, float or digit string) or ISO-8601 (UTC when no offset)."""
    if isinstance(value, bool):
        raise BadRecord("bad_ts", f"ts {value!r} is not a time")
    if isinstance(value, (int, float)):
        if value != value or value < 0:
            raise BadRecord("bad_ts", f"ts {value!r} is not a time")
        return int(value)
    text = str(value).strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRecord("bad_ts", f"ts {text!r} is neither epoch seconds nor ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def validate_item(record) -> Item:
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"expected an object, got {type(record).__name__}")
    price = record.get("price")
    if price in (None, ""):
        price = None
    else:
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise BadRecord("bad_price", f"price {price!r} is not a number") from None
    return Item(
        item_id=_text(record, "item_id", True),
        title=_text(record, "title", True),
        leaf_category=_text(record, "leaf_category", True),
        top_category=_text(record, "top_category", True),
        brand=_text(record, "brand", False),
        shop=_text(record, "shop", True),
        price=price,
    )


def validate_event(record) -> Event:
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"expected an object, got {type(record).__name__}")
    if record.get("ts") in (None, ""):
        raise BadRecord("missing_ts", "field 'ts' is missing")
    action = _text(record, "action", True).lower()
    if action not in BEHAVIOUR_ACTIONS:
        raise BadRecord("bad_action", f"action {action!r} not in {BEHAVIOUR_ACTIONS}")
    return Event(
        user_id=_text(record, "user_id", True),
        ts=parse_ts(record["ts"]),
        item_id=_text(record, "item_id", True),
        action=action,
        query=_text(record, "query", False),
        session_id=_text(record, "session_id", False),
    )


def format_of(path: str) -> str:
    for fmt, exts in (("jsonl", (".jsonl", ".json", ".ndjson")), ("csv", (".csv",)), ("parquet", (".parquet",))):
        if path.endswith(exts):
            return fmt
    raise ValueError(f"{path}: unknown format; use .jsonl, .csv or .parquet")


def find_inputs(raw_dir: str, name: str) -> list[str]:
    """The files of one input (`items` or `events`) in a raw directory: `name.<ext>` or
    shards `name-*.<ext>` / `name/*.<ext>`, all of one format."""
    paths = []
    for pattern in (f"{name}.*", f"{name}-*.*", os.path.join(name, "*.*")):
        paths += [p for p in glob.glob(os.path.join(raw_dir, pattern)) if _known(p)]
    paths = sorted(set(paths))
    if not paths:
        raise FileNotFoundError(f"no {name} file in {raw_dir} (expected {name}.jsonl, {name}.csv or {name}.parquet)")
    fmts = {format_of(p) for p in paths}
    if len(fmts) > 1:
        raise ValueError(f"{name} files in {raw_dir} mix formats {sorted(fmts)}")
    return paths


def _known(path: str) -> bool:
    try:
        format_of(path)
        return True
    except ValueError:
        return False


def iter_raw(path: str) -> Iterator[tuple[str, object]]:
    """Yields (locator, record) per record, where a record is a dict or, for a line that
    does not parse, the raw text wrapped in BadRecord. Locator is `path:line` or `path#row`."""
    fmt = format_of(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=65536):
            for rec in batch.to_pylist():
                yield f"{path}#{row}", rec
                row += 1
        return
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{n}", parse_json_line(line)
        else:
            header = next(csv.reader([f.readline()]))
            for n, line in enumerate(f, 2):
                if line.strip():
                    yield f"{path}:{n}", parse_csv_line(line, header)


def parse_json_line(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return BadRecord("bad_json", f"{e.msg} at column {e.colno}")


def parse_csv_line(line: str, header: list[str]):
    try:
        row = next(csv.reader(io.StringIO(line)))
    except (csv.Error, StopIteration) as e:
        return BadRecord("bad_csv", str(e))
    if len(row) != len(header):
        return BadRecord("bad_csv", f"{len(row)} columns, header has {len(header)}")
    return dict(zip(header, row))


def csv_header(path: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader([f.readline()]))


def write_records(path: str, records: list[dict], columns: tuple[str, ...]) -> None:
    """Writes records in the format the extension names (used by synth and the adapter)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fmt = format_of(path)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [r.get(c) for r in records] for c in columns})
        pq.write_table(table, path)
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({c: r.get(c) for c in columns if c in r}, ensure_ascii=False) + "\n")
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in records:
                w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
