"""Convert a public product-search dataset to the raw data contract.

    ebr convert jdsearch --in JDsearch/ --out data/jd/raw [--format parquet]

JDsearch (Liu et al., SIGIR 2023; JD.com) ships two tab-separated files with a header:

  user_behavior_data.txt  one row per user: query, candidate_wid_list,
      candidate_label_list, history_qry_list, history_wid_list, history_type_list,
      history_time_list. Lists are joined by '_'; texts are anonymised term ids joined
      by the byte 0x18; history_qry_list holds -1 for a behaviour without a search;
      history types are ORD, CLICK, CART, FLW; history_time_list holds the seconds since
      the previous behaviour (the first is 0) and has one more entry than the other
      history lists: the last is the gap to the row's own (test) search. Candidate
      labels: 0 shown only, 1 click, 2 add to cart, 3 purchase.
  product_meta_data.txt   wid, name, brand_id, brand_name, cate_id_1, cate_name_1, ...,
      cate_id_4, cate_name_4, shop_id. Some products in the behaviour file are missing.

(The first release named them release_data.txt and product_data.txt; both are read.)

What is written:

  OUT/items.<ext>   item_id = wid; title = the name's term ids joined by spaces (each term
      id is one word), else the brand and category names when the name is empty;
      leaf_category = the deepest category id given (cate_id_4, else 3, 2, 1);
      top_category = cate_id_1; brand = brand_id ('' when absent); shop = shop_id
      ('unknown' when absent, counted). No price.
  OUT/events.<ext>  user_id = 'u<row>' (1-based data row; the file has no user ids).
      Times are rebuilt from the gaps, aligned so every user's test search happens at
      --anchor (the dataset has no absolute times): behaviour i is at
      anchor - (sum of all gaps - sum of gaps up to i). History behaviours become events
      before the search (ORD -> purchase, CLICK -> click, CART -> cart, FLW -> collect)
      with their own query ('' for -1). Labelled candidates of the test search become
      events under its query at the anchor (1 click, 2 cart, 3 purchase); unlabelled
      candidates are impressions and are only counted. session_id is left empty
      (sessions follow from the time gaps). A behaviour or candidate whose product id is
      empty or -1 is dropped alone and counted (`dropped_bad_wid`); the rest of the user
      stays.
  OUT/source.json   {"source": "jdsearch", "text_units": "terms"}: the texts are term ids,
      so `ebr preprocess` treats each term as a character and adjacent terms as bigrams.
  OUT/missing_items.txt  products referenced by events but absent from the metadata:
      `wid<TAB>events`, most referenced first. With --missing drop (default) their events
      are dropped and counted; with --missing placeholder each gets a catalog row with
      title, categories and shop 'unknown' and no brand, and the events are kept.
  OUT/dead_letter.jsonl  malformed rows: {file, line, reason, detail, text}.
  OUT/convert_stats.json counts of everything read, written, dropped and why.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import datetime, timezone

import features  # noqa: F401  (environment for TensorFlow, set before any TF import)
from pipeline import contract

SOURCES = ("jdsearch",)
OUTPUT_FORMATS = ("jsonl", "parquet")
DEFAULT_ANCHOR = "2023-01-08T12:00:00+00:00"

TERM_SEP = "\x18"
LIST_SEP = "_"
NO_QUERY = "-1"
HISTORY_ACTIONS = {"ORD": "purchase", "CLICK": "click", "CART": "cart", "FLW": "collect"}
LABEL_ACTIONS = {1: "click", 2: "cart", 3: "purchase"}
ABSENT = {"", "-1", "0", "null", "NULL", "\\N", "None"}  # how missing ids show up in dumps

BEHAVIOUR_FILES = ("user_behavior_data.txt", "release_data.txt")
PRODUCT_FILES = ("product_meta_data.txt", "product_data.txt")
BEHAVIOUR_COLUMNS = (
    "query", "candidate_wid_list", "candidate_label_list", "history_qry_list",
    "history_wid_list", "history_type_list", "history_time_list",
)
PRODUCT_COLUMNS = (
    "wid", "name", "brand_id", "brand_name", "cate_id_1", "cate_name_1", "cate_id_2", "cate_name_2",
    "cate_id_3", "cate_name_3", "cate_id_4", "cate_name_4", "shop_id",
)
PLACEHOLDER = "unknown"
SOURCE_FILE = "source.json"  # read by `ebr preprocess` (pipeline.preprocess.SOURCE_FILE)
BATCH_ROWS = 200_000


def terms(text: str) -> str:
    """0x18-joined term ids -> space-joined words."""
    return " ".join(t for t in text.strip().split(TERM_SEP) if t.strip())


def _split(text: str) -> list[str]:
    return text.split(LIST_SEP) if text.strip() else []


def _find(in_dir: str, names: tuple[str, ...]) -> str:
    for name in names:
        path = os.path.join(in_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {' or '.join(names)} in {in_dir}")


def _lines(path: str, expected: tuple[str, ...]):
    """Yields (line number, fields, raw text); checks the header when there is one."""
    with open(path, encoding="utf-8-sig", newline="\n") as f:  # a byte-order mark is not a field
        for n, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            fields = text.split("\t")
            if n == 1 and fields[0] == expected[0]:
                if tuple(fields) != expected:
                    raise ValueError(f"{path}: header {fields} is not the JDsearch layout {list(expected)}")
                continue
            if text.strip():
                yield n, fields, text


def parse_product(fields: list[str]) -> dict:
    """One product_meta_data row -> an item record of the contract; BadRecord if unusable."""
    if len(fields) != len(PRODUCT_COLUMNS):
        raise contract.BadRecord("bad_columns", f"{len(fields)} columns, expected {len(PRODUCT_COLUMNS)}")
    row = dict(zip(PRODUCT_COLUMNS, (f.strip() for f in fields)))
    wid = row["wid"]
    if wid in ABSENT or " " in wid:
        raise contract.BadRecord("bad_wid", f"wid {wid!r}")
    cats = [(row[f"cate_id_{k}"], row[f"cate_name_{k}"]) for k in (1, 2, 3, 4)]
    given = [(cid, name) for cid, name in cats if cid not in ABSENT]
    if not given:
        raise contract.BadRecord("missing_category", f"wid {wid} has no category id")
    title = terms(fields[1]) or " ".join(
        t for t in (terms(row["brand_name"]), terms(given[-1][1])) if t
    )
    if not title:
        raise contract.BadRecord("missing_title", f"wid {wid} has no name, brand name or category name")
    top = row["cate_id_1"] if row["cate_id_1"] not in ABSENT else given[0][0]
    return {
        "item_id": wid,
        "title": title,
        "leaf_category": given[-1][0],
        "top_category": top,
        "brand": "" if row["brand_id"] in ABSENT else row["brand_id"],
        "shop": PLACEHOLDER if row["shop_id"] in ABSENT else row["shop_id"],
        "price": None,
    }


def parse_behaviour(fields: list[str], user_id: str, anchor: int) -> tuple[list[dict], dict]:
    """One user_behavior_data row -> (events of the contract in time order, row counts:
    impressions, history_events (the first events; the rest are the test search's) and
    bad_wids (behaviours and candidates dropped for an empty or -1 product id)). Items are
    not checked against the catalog here. BadRecord if the row is malformed."""
    if len(fields) != len(BEHAVIOUR_COLUMNS):
        raise contract.BadRecord("bad_columns", f"{len(fields)} columns, expected {len(BEHAVIOUR_COLUMNS)}")
    row = dict(zip(BEHAVIOUR_COLUMNS, fields))
    query = terms(row["query"])
    if not query:
        raise contract.BadRecord("empty_query", "the test query has no terms")
    cands, labels = _split(row["candidate_wid_list"]), _split(row["candidate_label_list"])
    if len(cands) != len(labels):
        raise contract.BadRecord("candidate_label_mismatch", f"{len(cands)} candidates, {len(labels)} labels")
    try:
        levels = [int(float(x)) for x in labels]
    except ValueError:
        raise contract.BadRecord("bad_label", f"labels {row['candidate_label_list'][:80]!r}") from None
    if any(lv not in (0, 1, 2, 3) for lv in levels):
        raise contract.BadRecord("bad_label", f"labels outside 0..3: {sorted(set(levels))}")
    h_q, h_w, h_t = _split(row["history_qry_list"]), _split(row["history_wid_list"]), _split(row["history_type_list"])
    if not len(h_q) == len(h_w) == len(h_t):
        raise contract.BadRecord(
            "history_length_mismatch", f"{len(h_q)} queries, {len(h_w)} products, {len(h_t)} types"
        )
    bad_types = sorted({t for t in h_t if t not in HISTORY_ACTIONS})
    if bad_types:
        raise contract.BadRecord("bad_history_type", f"types {bad_types} not in {sorted(HISTORY_ACTIONS)}")
    try:
        gaps = [int(x) for x in _split(row["history_time_list"])]
    except ValueError:
        raise contract.BadRecord("bad_time", f"history_time_list {row['history_time_list'][:80]!r}") from None
    if len(gaps) != len(h_w) + 1:
        raise contract.BadRecord("time_length_mismatch", f"{len(gaps)} times for {len(h_w)} behaviours (+1 expected)")
    if any(g < 0 for g in gaps):
        raise contract.BadRecord("bad_time", "negative time gap")
    total, elapsed, events, bad_wids = sum(gaps), 0, [], 0
    for q, wid, kind, gap in zip(h_q, h_w, h_t, gaps):
        elapsed += gap
        if wid.strip() in ABSENT:
            bad_wids += 1  # one unusable behaviour, not the whole user
            continue
        events.append(
            {
                "user_id": user_id,
                "ts": anchor - (total - elapsed),
                "session_id": "",
                "query": "" if q.strip() == NO_QUERY else terms(q),
                "item_id": wid.strip(),
                "action": HISTORY_ACTIONS[kind],
            }
        )
    history = len(events)
    for wid, lv in zip(cands, levels):
        if lv > 0 and wid.strip() in ABSENT:
            bad_wids += 1
        elif lv > 0:
            events.append(
                {"user_id": user_id, "ts": anchor, "session_id": "", "query": query, "item_id": wid.strip(),
                 "action": LABEL_ACTIONS[lv]}
            )
    counts = {"impressions": sum(lv == 0 for lv in levels), "history_events": history, "bad_wids": bad_wids}
    return events, counts


def convert_jdsearch(
    in_dir: str,
    out_dir: str,
    fmt: str = "parquet",
    anchor: str = DEFAULT_ANCHOR,
    missing: str = "drop",
    progress: bool = True,
) -> dict:
    """Converts a JDsearch directory; returns the statistics also written to
    OUT/convert_stats.json."""
    import pyarrow as pa
    from tqdm import tqdm

    from pipeline.synth import TableWriter, event_schema, item_schema

    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {OUTPUT_FORMATS}")
    if missing not in ("drop", "placeholder"):
        raise ValueError(f"--missing must be drop or placeholder, not {missing!r}")
    anchor_ts = contract.parse_ts(anchor)
    started = time.time()
    behaviour_path, product_path = _find(in_dir, BEHAVIOUR_FILES), _find(in_dir, PRODUCT_FILES)
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "items": os.path.join(out_dir, f"items.{fmt}"),
        "events": os.path.join(out_dir, f"events.{fmt}"),
        "missing_items": os.path.join(out_dir, "missing_items.txt"),
        "dead_letter": os.path.join(out_dir, "dead_letter.jsonl"),
        "stats": os.path.join(out_dir, "convert_stats.json"),
    }
    stats: dict = {
        "source": "jdsearch",
        "anchor": datetime.fromtimestamp(anchor_ts, timezone.utc).isoformat(),
        "missing_policy": missing,
        "products": {"rows": 0, "items_written": 0, "bad_rows": Counter(), "without_shop": 0},
        "behaviour": {
            "rows": 0, "users_written": 0, "bad_rows": Counter(), "impressions": 0,
            "test_searches_without_positive": 0,
        },
        "events": {"written": Counter(), "dropped_missing_item": 0, "dropped_bad_wid": 0},
        "missing_items": 0,
        "placeholder_items": 0,
    }

    def dead(f, file_name: str, line: int, err: contract.BadRecord, text: str, counter: Counter) -> None:
        counter[err.reason] += 1
        rec = {"file": file_name, "line": line, "reason": err.reason, "detail": err.detail, "text": text[:4000]}
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    known: set[str] = set()
    missing_refs: Counter = Counter()
    items_schema, events_schema = item_schema(), event_schema()
    with open(paths["dead_letter"], "w", encoding="utf-8") as dl, TableWriter(paths["items"], items_schema) as items_out:
        # Pass 1: the catalog.
        batch: list[dict] = []
        ps = stats["products"]
        for n, fields, text in tqdm(_lines(product_path, PRODUCT_COLUMNS), desc="products", unit=" rows",
                                    disable=not progress, mininterval=2):
            ps["rows"] += 1
            try:
                item = parse_product(fields)
                if item["item_id"] in known:
                    raise contract.BadRecord("duplicate_wid", f"wid {item['item_id']} already seen")
            except contract.BadRecord as err:
                dead(dl, os.path.basename(product_path), n, err, text, ps["bad_rows"])
                continue
            known.add(item["item_id"])
            ps["without_shop"] += item["shop"] == PLACEHOLDER
            batch.append(item)
            if len(batch) >= BATCH_ROWS:
                items_out.write(pa.Table.from_pylist(batch, schema=items_schema))
                batch = []
        if batch:
            items_out.write(pa.Table.from_pylist(batch, schema=items_schema))
        ps["items_written"] = len(known)

        # Pass 2: users, their histories and test searches.
        bs, es = stats["behaviour"], stats["events"]
        with TableWriter(paths["events"], events_schema) as events_out:
            batch = []
            row = 0
            for n, fields, text in tqdm(_lines(behaviour_path, BEHAVIOUR_COLUMNS), desc="users", unit=" rows",
                                        disable=not progress, mininterval=2):
                row += 1
                bs["rows"] += 1
                try:
                    events, counts = parse_behaviour(fields, f"u{row}", anchor_ts)
                except contract.BadRecord as err:
                    dead(dl, os.path.basename(behaviour_path), n, err, text, bs["bad_rows"])
                    continue
                bs["users_written"] += 1
                bs["impressions"] += counts["impressions"]
                es["dropped_bad_wid"] += counts["bad_wids"]
                test_positive = False
                for i, ev in enumerate(events):
                    if ev["item_id"] not in known:
                        missing_refs[ev["item_id"]] += 1
                        if missing == "drop":
                            es["dropped_missing_item"] += 1
                            continue
                    es["written"][ev["action"]] += 1
                    batch.append(ev)
                    test_positive |= i >= counts["history_events"] and ev["action"] in ("click", "purchase")
                # Counted on what is written: a test search whose positives were all dropped has none.
                bs["test_searches_without_positive"] += not test_positive
                if len(batch) >= BATCH_ROWS:
                    events_out.write(pa.Table.from_pylist(batch, schema=events_schema))
                    batch = []
            if batch:
                events_out.write(pa.Table.from_pylist(batch, schema=events_schema))

        if missing == "placeholder" and missing_refs:
            items_out.write(
                pa.Table.from_pylist(
                    [
                        {"item_id": wid, "title": PLACEHOLDER, "leaf_category": PLACEHOLDER,
                         "top_category": PLACEHOLDER, "brand": "", "shop": PLACEHOLDER, "price": None}
                        for wid in sorted(missing_refs)
                    ],
                    schema=items_schema,
                )
            )
            stats["placeholder_items"] = len(missing_refs)

    with open(paths["missing_items"], "w", encoding="utf-8") as f:
        for wid, count in sorted(missing_refs.items(), key=lambda kv: (-kv[1], kv[0])):
            f.write(f"{wid}\t{count}\n")
    stats["missing_items"] = len(missing_refs)
    stats["events"]["total_written"] = sum(stats["events"]["written"].values())
    with open(os.path.join(out_dir, SOURCE_FILE), "w", encoding="utf-8") as f:
        json.dump({"source": "jdsearch", "text_units": "terms"}, f)
    stats["seconds"] = round(time.time() - started, 2)
    stats["paths"] = paths
    stats = json.loads(json.dumps(stats))  # Counters -> plain dicts
    with open(paths["stats"], "w", encoding="utf-8") as f:
        json.dump(stats, f, ensure_ascii=False, indent=1)
    return stats


def add_arguments(parser) -> None:
    parser.add_argument("source", choices=SOURCES, help="dataset layout to read")
    parser.add_argument("--in", dest="in_dir", required=True, help="directory with the dataset's files")
    parser.add_argument("--out", required=True, help="output directory (raw data contract)")
    parser.add_argument("--format", dest="fmt", choices=OUTPUT_FORMATS, default="parquet",
                        help="items/events file format (default parquet)")
    parser.add_argument("--anchor", default=DEFAULT_ANCHOR,
                        help="time of every user's test search, ISO-8601 or epoch seconds "
                             f"(default {DEFAULT_ANCHOR}); history times count back from it")
    parser.add_argument("--missing", choices=("drop", "placeholder"), default="drop",
                        help="events on products absent from the metadata: drop them (default) "
                             "or keep them with placeholder catalog rows")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args) -> int:
    stats = convert_jdsearch(args.in_dir, args.out, fmt=args.fmt, anchor=args.anchor, missing=args.missing,
                             progress=not args.no_progress)
    print(json.dumps(stats, ensure_ascii=False, indent=1))
    return 0
