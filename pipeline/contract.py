"""The raw data contract: items and events, as JSON Lines, CSV or Parquet.

items:  item_id, title, leaf_category, top_category, brand (may be empty), shop, [price]
events: user_id, ts (epoch seconds or ISO-8601), [session_id], query ('' when the
        behaviour had no search), item_id, action in {click, cart, collect, purchase}

A search is (user_id, ts, query) with a non-empty query; its positives are the items
clicked or purchased under it (the events carrying that user, ts and query).

Every value is checked, so one bad record costs that record and never the run: ids and
names are strings or integers without control characters, texts are valid Unicode, and
a time must fall in the plausible range (`TsRange`), which catches milliseconds, a year
typed wrong and clocks far in the future.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterator

from features.spec import BEHAVIOUR_ACTIONS

ITEM_REQUIRED = ("item_id", "title", "leaf_category", "top_category", "shop")
ITEM_OPTIONAL = ("brand", "price")
EVENT_REQUIRED = ("user_id", "ts", "item_id", "action")
EVENT_OPTIONAL = ("session_id", "query")
REQUIRED = {"items": ITEM_REQUIRED, "events": EVENT_REQUIRED}
FORMATS = ("jsonl", "csv", "parquet")
EXTENSIONS = {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "parquet": (".parquet",)}
# Text formats may be compressed; Beam and `open_text` decompress by these suffixes.
COMPRESSIONS = (".gz", ".bz2", ".zst", ".zstd", ".deflate", ".xz", ".lzma")
# Free text: line breaks, tabs and other control characters become spaces (the tokenizer
# reads them as spaces anyway). Ids and names must not hold them: they would split a
# vocabulary file's lines.
TEXT_FIELDS = ("title", "query")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Either of the two above: one search clears a clean value (the common case).
_SUSPECT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

# The plausible event times: from EARLIEST_DATE to one day after the job starts.
EARLIEST_DATE = date(2000, 1, 1)
FUTURE_DAYS = 1
_UNITS = (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))


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


@dataclass(frozen=True)
class TsRange:
    """Plausible event times, epoch seconds [start, end). `ebr preprocess --earliest-date
    / --latest-date` widen it; `default()` is EARLIEST_DATE .. now + FUTURE_DAYS."""

    start: int
    end: int

    @classmethod
    def default(cls, earliest: date | None = None, latest: date | None = None, now: datetime | None = None):
        now = now or datetime.now(timezone.utc)
        first = earliest or EARLIEST_DATE
        last = latest or (now + timedelta(days=FUTURE_DAYS)).date()
        if last < first:
            raise ValueError(f"the latest plausible date {last} is before the earliest {first}")
        return cls(_day_start(first), _day_start(last + timedelta(days=1)))

    def describe(self) -> str:
        return f"{_iso(self.start)} .. {_iso(self.end - 1)}"

    def check(self, ts: int, shown) -> int:
        if self.start <= ts < self.end:
            return ts
        for unit, scale in _UNITS:
            if self.start <= ts / scale < self.end:
                raise BadRecord("bad_ts", f"ts {shown!r} looks like {unit}; the contract wants epoch seconds")
        side = "before" if ts < self.start else "after"
        raise BadRecord("bad_ts", f"ts {shown!r} is {side} the plausible range {self.describe()} "
                                  "(ebr preprocess --earliest-date / --latest-date widen it)")


def _day_start(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(record: dict, field: str, required: bool) -> str:
    value = record.get(field)
    if value.__class__ is str:  # the common case, checked with one search
        value = value.strip()
        if value and not _SUSPECT.search(value):
            return value
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        if required:
            raise BadRecord(f"missing_{field}", f"field {field!r} is missing")
        return ""
    if isinstance(value, str):
        pass
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("bad_encoding", f"field {field!r} is not UTF-8: {value[:40]!r}") from None
    else:
        kind = "a float" if isinstance(value, float) else f"{type(value).__name__}"
        raise BadRecord("bad_type", f"field {field!r} is {kind} ({str(value)[:40]!r}); expected a string or an integer")
    value = value.strip()
    if _SURROGATE.search(value):
        raise BadRecord("bad_encoding", f"field {field!r} holds a lone surrogate, not valid Unicode: {value[:40]!r}")
    bad = _CONTROL.search(value)
    if bad:
        if field not in TEXT_FIELDS:
            raise BadRecord("control_character",
                            f"field {field!r} holds the control character U+{ord(bad.group()):04X}: {value[:40]!r}")
        value = " ".join(_CONTROL.sub(" ", value).split())
    if required and not value:
        raise BadRecord(f"missing_{field}", f"field {field!r} is empty")
    return value


def parse_ts(value, plausible: TsRange | None = None) -> int:
    """Epoch seconds (int, float or number string) or ISO-8601 (UTC when no offset), as
    whole seconds; with `plausible`, also inside that range (else `bad_ts` saying why)."""
    if isinstance(value, bool):
        raise BadRecord("bad_ts", f"ts {value!r} is not a time")
    if isinstance(value, datetime):  # Parquet timestamp columns
        ts = _datetime_ts(value, value)
    elif isinstance(value, (int, float)):
        ts = _number_ts(value, value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            ts = _number_ts(float(text) if any(c in text for c in ".eE") else int(text), text)
        else:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise BadRecord("bad_ts", f"ts {text[:60]!r} is neither epoch seconds nor ISO-8601") from None
            ts = _datetime_ts(dt, text)
    else:
        raise BadRecord("bad_ts", f"ts is {type(value).__name__} ({str(value)[:40]!r}), not a time")
    return plausible.check(ts, value) if plausible is not None else ts


def _number_ts(value, shown) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRecord("bad_ts", f"ts {shown!r} is not a finite number")
    if value < 0:
        raise BadRecord("bad_ts", f"ts {shown!r} is negative")
    return int(value)


def _datetime_ts(dt: datetime, shown) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        ts = int(dt.timestamp())
    except (OverflowError, ValueError, OSError):
        raise BadRecord("bad_ts", f"ts {shown!r} is out of range") from None
    return ts


def validate_item(record) -> Item:
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"expected an object, got {type(record).__name__}")
    return Item(
        item_id=_text(record, "item_id", True),
        title=_text(record, "title", True),
        leaf_category=_text(record, "leaf_category", True),
        top_category=_text(record, "top_category", True),
        brand=_text(record, "brand", False),
        shop=_text(record, "shop", True),
        price=_price(record.get("price")),
    )


def _price(price) -> float | None:
    if price is None or price == "":
        return None
    if isinstance(price, bool):
        raise BadRecord("bad_price", f"price {price!r} is not a number")
    try:
        value = float(price)
    except (TypeError, ValueError, OverflowError):
        raise BadRecord("bad_price", f"price {str(price)[:40]!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise BadRecord("bad_price", f"price {str(price)[:40]!r} is not a finite number >= 0")
    return value


def validate_event(record, plausible: TsRange | None = None) -> Event:
    """An Event from a raw record, or BadRecord naming the field; `plausible`: see parse_ts."""
    return Event(*event_row(record, plausible))


def event_row(record, plausible: TsRange | None = None) -> tuple:
    """`validate_event`'s fields as a tuple in Event's order (the job's hot path: no
    dataclass is built for each of millions of events)."""
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"expected an object, got {type(record).__name__}")
    if record.get("ts") is None or record.get("ts") == "":
        raise BadRecord("missing_ts", "field 'ts' is missing")
    action = _text(record, "action", True).lower()
    if action not in BEHAVIOUR_ACTIONS:
        raise BadRecord("bad_action", f"action {action[:40]!r} not in {BEHAVIOUR_ACTIONS}")
    return (
        _text(record, "user_id", True),
        parse_ts(record["ts"], plausible),
        _text(record, "item_id", True),
        action,
        _text(record, "query", False),
        _text(record, "session_id", False),
    )


def format_of(path: str) -> str:
    """"jsonl", "csv" or "parquet" from the file name; text formats may end in a
    compression suffix (`events.jsonl.gz`)."""
    name = path.lower()
    for fmt, exts in EXTENSIONS.items():
        if name.endswith(exts) or (fmt != "parquet" and name.endswith(tuple(e + c for e in exts for c in COMPRESSIONS))):
            return fmt
    raise ValueError(f"{path}: unknown format; use .jsonl, .csv or .parquet (text formats also compressed: "
                     f"{', '.join(COMPRESSIONS)})")


def table_patterns(base: str, name: str, sep: str = os.sep) -> list[str]:
    """Glob patterns of one table's files: `name.*`, shards `name-*.*` and `name/*.*`."""
    return [f"{base}{sep}{name}.*", f"{base}{sep}{name}-*.*", f"{base}{sep}{name}{sep}*.*"]


def check_table_files(paths: list[str], raw_dir: str, name: str) -> list[str]:
    """The files matching one table's patterns, checked: at least one, every extension
    known, one format. A file named like the table with an unknown extension is an error
    rather than skipped, so no shard goes unread."""
    paths = sorted(set(paths))
    if not paths:
        raise FileNotFoundError(f"no {name} file in {raw_dir} (expected {name}.jsonl, {name}.csv or {name}.parquet)")
    for p in paths:
        format_of(p)  # raises, naming the file
    fmts = {format_of(p) for p in paths}
    if len(fmts) > 1:
        raise ValueError(f"{name} files in {raw_dir} mix formats {sorted(fmts)}")
    return paths


def find_inputs(raw_dir: str, name: str) -> list[str]:
    """The files of one input (`items` or `events`) in a local raw directory: `name.<ext>`
    or shards `name-*.<ext>` / `name/*.<ext>`, all of one format (see check_table_files)."""
    paths = [p for pattern in table_patterns(raw_dir.rstrip(os.sep), name) for p in glob.glob(pattern)]
    return check_table_files([p for p in paths if os.path.isfile(p)], raw_dir, name)


def check_columns(path: str, name: str, columns: list[str]) -> None:
    """A CSV header or Parquet schema must name every required field of its table."""
    missing = [f for f in REQUIRED[name] if f not in columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} (required in {name}); "
                         f"the file has {columns}")


def csv_columns(first_line: str) -> list[str]:
    header = next(csv.reader([first_line.lstrip("\ufeff").rstrip("\r\n")]), [])
    return [h.strip() for h in header]


def parquet_columns(f, path: str, name: str) -> list[str]:
    """Column names of a Parquet file (an open binary file); a required column of a nested
    or binary type is a schema error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a Parquet file ({e})") from None
    for field in schema:
        if field.name in REQUIRED[name] and (pa.types.is_nested(field.type) or pa.types.is_boolean(field.type)):
            raise ValueError(f"{path}: column {field.name!r} has type {field.type}; {name} needs strings, "
                             "integers or (for ts) times")
    return list(schema.names)


def open_text(path: str):
    """A local text file for reading, decompressed by its suffix."""
    name = path.lower()
    if name.endswith(".gz"):
        import gzip as module
    elif name.endswith(".bz2"):
        import bz2 as module
    elif name.endswith((".xz", ".lzma")):
        import lzma as module
    elif name.endswith((".zst", ".zstd")):
        import zstandard as module
    elif name.endswith(".deflate"):
        import zlib

        with open(path, "rb") as f:
            return io.StringIO(zlib.decompress(f.read()).decode("utf-8"), newline="")
    else:
        return open(path, encoding="utf-8", newline="")
    return module.open(path, "rt", encoding="utf-8", newline="")


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
    with open_text(path) as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{n}", parse_json_line(line)
        else:
            header = csv_columns(f.readline())
            for n, line in enumerate(f, 2):
                if line.strip():
                    yield f"{path}:{n}", parse_csv_line(line, header)


def parse_json_line(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return BadRecord("bad_json", f"{e.msg} at column {e.colno}")
    except RecursionError:
        return BadRecord("bad_json", "nested too deeply")
    except ValueError as e:  # an integer of more than 4,300 digits
        return BadRecord("bad_json", str(e)[:120])


def parse_csv_line(line: str, header: list[str]):
    try:
        row = next(csv.reader(io.StringIO(line)))
    except (csv.Error, StopIteration) as e:
        return BadRecord("bad_csv", str(e))
    if len(row) != len(header):
        return BadRecord("bad_csv", f"{len(row)} columns, header has {len(header)}")
    return dict(zip(header, row))


def csv_header(path: str) -> list[str]:
    with open_text(path) as f:
        return csv_columns(f.readline())


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
