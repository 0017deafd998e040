"""The PTransforms and DoFns of the preprocessing job (`pipeline.preprocess.run` composes them).

Data flow (every arrow a named step):

    items  -> ReadRecords -> (item_id, item)  --+
    events -> ReadRecords -> (item_id, event) --+-> JoinCatalog (GroupByKey on item_id)
                                                      |-> item features -> OUT/items
                                                      '-> (user_id, enriched event)
                                                             -> BuildExamples (GroupByKey on user_id)
                                                                  -> OUT/train, OUT/test, OUT/users
    every step -> dead letters -> OUT/dead_letter;  tallies -> vocabularies, item_freq, counts

Tallies (counts, token counts, item frequencies) are summed per bundle inside each DoFn and
emitted once per bundle: a title's 60-odd tokens would otherwise be 60 elements each. Token
counts go out split into VOCAB_SHARDS shards by a stable hash of the token, so every shard
of every vocabulary is merged, filtered by its minimum count and sorted on its own worker;
`WriteVocabularies` then merges the sorted shards into one file in a streamed pass.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import os
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from operator import attrgetter

import apache_beam as beam
import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from features import io as fio
from features.spec import MAX_TITLE_WORDS, POSITIVE_ACTIONS
from features.tokenizer import Tokenizer
from features.vocab import VOCABS, vocab_path
from pipeline import contract
from pipeline.encode import ExampleEncoder, TimelineEncoder
from pipeline.timeline import DEFAULT_MAX_USER_EVENTS, UserEvent, Window, search_parts, user_timeline
from pipeline.user_store import user_history_line

ITEM_FREQ_FILE = "item_freq.tsv"
STATS_KEY = "stats"
ITEM_FREQ_KEY = "item_freq"
VOCAB_KEY = "vocab/"  # + vocabulary name
# Token counts travel in this many shards per vocabulary, so no worker holds a whole one.
VOCAB_SHARDS = 128
# A sorted shard up to this many tokens travels as an element, a larger one as a file.
INLINE_RUN_TOKENS = 50_000
# Files are read in ranges of this size, so even one large events file feeds every worker.
READ_BUNDLE_BYTES = 16 << 20

# Validated records travel between steps as plain tuples (Beam codes them natively);
# `dataclasses.astuple` deep-copies every field and cost 5 us a record.
_ITEM_TUPLE = attrgetter(*(f.name for f in dataclasses.fields(contract.Item)))
_EVENT_ORDER = ("user_id", "ts", "item_id", "action", "query", "session_id")
_ENRICHED_ORDER = (
    "ts", "query", "item_id", "action", "session_id", "leaf_cat", "top_cat", "brand", "shop", "title_words"
)
# The join tells catalog rows from events by their length (no tag to wrap every event in).
ITEM_LEN, EVENT_LEN = len(dataclasses.fields(contract.Item)), len(dataclasses.fields(contract.Event))
# The join unpacks event tuples and builds UserEvent tuples positionally, for speed.
assert tuple(f.name for f in dataclasses.fields(contract.Event)) == _EVENT_ORDER
assert UserEvent._fields == _ENRICHED_ORDER
assert ITEM_LEN != EVENT_LEN

# One tokenizer per worker process for a given user dictionary: building jieba's prefix
# dictionary and adding the user words costs about a second.
_TOKENIZERS: dict[tuple, Tokenizer] = {}


def tokenizer_for(user_words, text_units: str = "chars") -> Tokenizer:
    key = (text_units, tuple(user_words))
    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = _TOKENIZERS[key] = Tokenizer(key[1], text_units=text_units)
    return tok


def dead_letter(source: str, reason: str, detail: str, record, file: str | None = None) -> dict:
    """The dead-letter record written to OUT/dead_letter/*.jsonl."""
    out = {"source": source, "reason": reason, "detail": detail, "record": record}
    if file:
        out["file"] = file
    return out


def dead_letter_json(d: dict) -> str:
    """One dead-letter line. Text that is not valid Unicode (a lone surrogate escaped in
    the input's JSON) stays escaped, so writing the line cannot fail."""
    text = json.dumps(d, ensure_ascii=False, sort_keys=True, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(d, ensure_ascii=True, sort_keys=True, default=str)
    return text


# --- progress ---------------------------------------------------------------------------------

# Counters the driver prints while the job runs (`pipeline.preprocess.Progress`): each
# worker process writes its totals to <progress dir>/<pid>.json every few seconds.
PROGRESS_KEYS = ("items_in", "events_in", "events_valid", "users", "examples_train", "examples_test")
PROGRESS_SECONDS = 2.0
_progress_lock = threading.Lock()
_progress_done: Counter = Counter()  # finished bundles of this process
_progress_live: dict[int, Counter] = {}  # bundles in flight, by DoFn instance
_progress_last = [0.0]


def _flush_progress(directory: str | None, force: bool = False) -> None:
    now = time.monotonic()
    if not directory or (not force and now - _progress_last[0] < PROGRESS_SECONDS):
        return
    _progress_last[0] = now
    with _progress_lock:
        total = Counter(_progress_done)
        for live in list(_progress_live.values()):
            for key in PROGRESS_KEYS:
                total[key] += live.get(key, 0)
    path = os.path.join(directory, f"{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({k: total[k] for k in PROGRESS_KEYS}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # progress is best effort; the job's outputs are not


class _TallyingDoFn(beam.DoFn):
    """A DoFn that sums tallies over its bundle and emits them on the "tallies" output
    once per bundle as ((key, shard), Counter); reports progress when given a local
    directory for it."""

    progress_dir: str | None = None

    def start_bundle(self):
        self.tallies: dict[str, Counter] = defaultdict(Counter)
        self._stats = self.tallies[STATS_KEY]
        if self.progress_dir and not os.path.isdir(self.progress_dir):
            self.progress_dir = None  # a remote worker: the driver's directory is not here
        if self.progress_dir:
            with _progress_lock:
                _progress_live[id(self)] = self._stats

    def finish_bundle(self):
        if self.progress_dir:
            with _progress_lock:
                _progress_live.pop(id(self), None)
                for key in PROGRESS_KEYS:
                    _progress_done[key] += self._stats.get(key, 0)
            _flush_progress(self.progress_dir, force=True)
        for key, counts in self.tallies.items():
            for shard_key, shard in shard_tallies(key, counts):
                yield TaggedOutput("tallies", WindowedValue((shard_key, shard), MIN_TIMESTAMP, (GlobalWindow(),)))

    def tick(self):
        if self.progress_dir:
            _flush_progress(self.progress_dir)

    def count(self, name: str, n: int = 1):
        self._stats[name] += n

    def dead(self, source, reason, detail, record, file=None):
        self.count(f"dead_letter/{source}/{reason}")
        return TaggedOutput("dead", dead_letter(source, reason, detail, record, file))


def token_shard(token: str) -> int:
    """A token's shard: the same in every worker process (Python's hash() is not)."""
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) % VOCAB_SHARDS


def shard_tallies(key: str, counts: Counter):
    """((key, shard), Counter) pairs of one bundle's tally; the stats stay one shard."""
    if not counts:
        return
    if key == STATS_KEY:
        yield (key, 0), counts
        return
    shards: dict[int, Counter] = defaultdict(Counter)
    for token, n in counts.items():
        shards[token_shard(token)][token] = n
    yield from (((key, s), c) for s, c in shards.items())


class ParseRecords(_TallyingDoFn):
    """(file, raw line bytes | Parquet row dict) -> (item_id, validated record as a tuple),
    or a dead letter naming the reason (bad_encoding, bad_json, bad_csv, missing_<field>,
    bad_type, control_character, bad_ts, bad_action, ...). Blank lines are not records
    (counted in `blank_lines`); a carriage return inside a line ends a record, as in any
    universal-newline reader (counted in `lines_split_at_cr`)."""

    def __init__(self, source: str, fmt: str, headers: dict[str, list[str]], plausible=None,
                 progress_dir: str | None = None):
        self.source = source
        self.fmt = fmt
        self.headers = headers
        self.plausible = plausible
        self.progress_dir = progress_dir

    def setup(self):
        # record -> (item_id, the validated record as a tuple in its dataclass's order)
        if self.source == "items":
            def validate(record):
                item = contract.validate_item(record)
                return item.item_id, _ITEM_TUPLE(item)
        else:
            plausible = self.plausible

            def validate(record):
                row = contract.event_row(record, plausible)
                return row[2], row  # Event order: user_id, ts, item_id, ...
        self.validate = validate

    def process(self, element):
        path, raw = element
        if self.fmt == "parquet":
            yield from self._record(path, raw, raw)
            return
        try:
            text = raw.decode("utf-8")
            if text[:1] == "\ufeff":  # a byte-order mark may open the file ("utf-8-sig" decodes slower)
                text = text[1:]
        except UnicodeDecodeError as e:
            self.count(f"{self.source}_in")
            yield self.dead(self.source, "bad_encoding", str(e), raw.decode("utf-8", "replace"), path)
            return
        text = text.rstrip("\r\n")
        parts = text.split("\r") if "\r" in text else (text,)
        if len(parts) > 1:
            self.count("lines_split_at_cr")
        for line in parts:
            if not line.strip():
                self.count("blank_lines")
                continue
            if self.fmt == "jsonl":
                record = contract.parse_json_line(line)
            else:
                record = contract.parse_csv_line(line, self._header(path))
            yield from self._record(path, record, line)

    def _record(self, path, record, shown):
        self.count(f"{self.source}_in")
        if self._stats[f"{self.source}_in"] & 4095 == 0:
            self.tick()
        try:
            if isinstance(record, contract.BadRecord):
                raise record
            keyed = self.validate(record)
        except contract.BadRecord as e:
            yield self.dead(self.source, e.reason, e.detail, _jsonable(shown), path)
            return
        yield keyed

    def _header(self, path):
        header = self.headers.get(path)
        if header is None:
            raise ValueError(f"no CSV header known for {path}; known: {sorted(self.headers)}")
        return header


def _jsonable(value):
    """Parquet rows can hold timestamps or bytes; dead letters are JSON."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


class ReadRecords(beam.PTransform):
    """Reads one input (`items` or `events`) in any contract format, compressed text
    included; outputs "valid" (item_id, record tuple), "dead" and "tallies". JSON Lines
    and CSV are read line by line so that one bad line is dead-lettered with its reason,
    not fatal. `plausible`: the events' contract.TsRange."""

    def __init__(self, source: str, paths: list[str], fmt: str, headers: dict[str, list[str]] | None = None,
                 plausible=None, progress_dir: str | None = None):
        super().__init__()
        self.source, self.paths, self.fmt, self.headers = source, paths, fmt, headers or {}
        self.plausible, self.progress_dir = plausible, progress_dir

    def expand(self, pbegin):
        files = pbegin | "Files" >> beam.Create(self.paths)
        if self.fmt == "parquet":
            raw = files | "ReadParquet" >> beam.io.ReadAllFromParquet(with_filename=True)
        else:
            raw = files | "ReadLines" >> beam.io.ReadAllFromText(
                coder=coders.BytesCoder(),  # decoded per line, so bad UTF-8 is one dead letter
                with_filename=True,
                skip_header_lines=1 if self.fmt == "csv" else 0,
                desired_bundle_size=READ_BUNDLE_BYTES,
                compression_type=CompressionTypes.AUTO,  # .gz, .bz2, .zst, ... by suffix
            )
        parse = ParseRecords(self.source, self.fmt, self.headers, self.plausible, self.progress_dir)
        return raw | "ParseAndValidate" >> beam.ParDo(parse).with_outputs("dead", "tallies", main="valid")


def catalog_names(item: tuple) -> list[str]:
    """The names that go into the tokenizer's user dictionary: brand, leaf and top category."""
    it = contract.Item(*item)
    return [n for n in (it.brand, it.leaf_category, it.top_category) if n]


class _JoinCatalogFn(_TallyingDoFn):
    """(item_id, catalog rows and events) -> the item's features (output "items"), its
    events enriched with the side information and keyed by user (main output), dead
    letters for duplicate items and for events of unknown items.

    Two passes over the grouped values: the first keeps only the catalog rows, the second
    streams the events, so a hot item's millions of events are never held at once (the
    runner pages a large group in; CoGroupByKey would build a list of them)."""

    def __init__(self, text_units: str = "chars", progress_dir: str | None = None):
        self.text_units = text_units
        self.progress_dir = progress_dir

    def setup(self):
        self.tokenizer = None

    def start_bundle(self):
        super().start_bundle()
        self.latest = None  # the bundle's latest event time, for ComputeWindow

    def finish_bundle(self):
        yield from super().finish_bundle()
        if self.latest is not None:
            yield TaggedOutput("latest", WindowedValue(self.latest, MIN_TIMESTAMP, (GlobalWindow(),)))

    def process(self, element, user_words):
        item_id, values = element
        items = sorted((v for v in values if len(v) == ITEM_LEN),
                       key=lambda it: tuple("" if v is None else str(v) for v in it))
        if not items:
            for ev in values:
                e = contract.Event(*ev)
                yield self.dead("events", "unknown_item", f"item_id {e.item_id!r} is not in the catalog",
                                dataclasses.asdict(e))
            return
        if self.tokenizer is None:
            self.tokenizer = tokenizer_for(user_words, self.text_units)
        item = contract.Item(*items[0])
        for dup in items[1:]:
            yield self.dead(
                "items",
                "duplicate_item",
                f"item_id {item_id!r} appears {len(items)} times in the catalog; kept the first in sorted order",
                dataclasses.asdict(contract.Item(*dup)),
            )
        tokens = self.tokenizer.tokenize_once(item.title)  # a title is seen once: no cache
        title_words = tokens.words[:MAX_TITLE_WORDS]
        features = {
            "item_id": item.item_id,
            "title_words": title_words,
            "leaf_cat": item.leaf_category,
            "top_cat": item.top_category,
            "brand": item.brand,
            "shop": item.shop,
        }
        self.count("items_valid")
        self._count_item_tokens(features, tokens)
        yield TaggedOutput("items", features)
        side = (item.leaf_category, item.top_category, item.brand, item.shop)
        n = 0
        latest = self.latest if self.latest is not None else -1
        for ev in values:
            if len(ev) != EVENT_LEN:
                continue
            user_id, ts, _, action, query, session_id = ev  # contract.Event order
            n += 1
            if ts > latest:
                latest = ts
            positive = action in POSITIVE_ACTIONS and bool(query)
            yield user_id, (ts, query, item.item_id, action, session_id, *side, title_words if positive else ())
        self.latest = latest if latest >= 0 else self.latest
        self.count("events_valid", n)
        self.tick()

    def _count_item_tokens(self, features, tokens):
        t = self.tallies
        t[VOCAB_KEY + "word"].update(tokens.words)
        t[VOCAB_KEY + "char"].update(tokens.chars)
        t[VOCAB_KEY + "bigram"].update(tokens.bigrams)
        for name in ("item_id", "leaf_cat", "top_cat", "brand", "shop"):
            t[VOCAB_KEY + name][features[name]] += 1


class JoinCatalog(beam.PTransform):
    """Joins events to the catalog by item_id (the catalog can be far too large for a side
    input): catalog rows and events go into one GroupByKey, and the join reads each group
    twice (see _JoinCatalogFn). Input: {"items": (item_id, item), "events": (item_id,
    event)}. Outputs: main (user_id, UserEvent tuple), "items" (item feature dicts),
    "latest" (each bundle's latest event time), "dead", "tallies"."""

    def __init__(self, user_words, text_units: str = "chars", progress_dir: str | None = None):
        super().__init__()
        self.user_words, self.text_units, self.progress_dir = user_words, text_units, progress_dir

    def expand(self, inputs):
        join = _JoinCatalogFn(self.text_units, self.progress_dir)
        return (
            (inputs["items"], inputs["events"])
            | "CatalogAndEvents" >> beam.Flatten()
            | "GroupByItem" >> beam.GroupByKey()
            | "Enrich" >> beam.ParDo(join, beam.pvalue.AsSingleton(self.user_words)).with_outputs(
                "items", "latest", "dead", "tallies", main="events"
            )
        )


class _BuildExamplesFn(_TallyingDoFn):
    """(user_id, events) -> serialized tf.train.Examples on the "train" / "test" outputs,
    and the user's history record (one line of OUT/users) on the "users" output."""

    def __init__(self, max_user_events: int, text_units: str = "chars", progress_dir: str | None = None):
        self.max_user_events = max_user_events
        self.text_units = text_units
        self.progress_dir = progress_dir

    def setup(self):
        self.tokenizer = None
        self.window = None
        self.encoder = TimelineEncoder()

    def process(self, element, window, user_words):
        user_id, events = element
        if window is None:  # no event at all and no --test-date: nothing to build
            return
        if self.tokenizer is None:
            self.tokenizer = tokenizer_for(user_words, self.text_units)
            self.window = Window.from_dict(window)
        t = self.tallies
        vocab_counts = {name: t[VOCAB_KEY + name] for name in ("word", "char", "bigram")}
        timeline = user_timeline(user_id, (UserEvent._make(e) for e in events), t[STATS_KEY], self.max_user_events)
        parts = search_parts(timeline, self.window, self.tokenizer, t[STATS_KEY],
                             vocab_counts=vocab_counts, item_freq=t[ITEM_FREQ_KEY])
        # The examples of one search share all but the item features (about 95% of the
        # bytes); serialised protobuf messages concatenate into their merge, so the shared
        # part is serialised once per search (see TimelineEncoder).
        for split, example in self.encoder.examples(timeline, self.window, parts):
            yield TaggedOutput(split, example)
        # The user's events are grouped here already: the feature store's record comes
        # from the same timeline, so nothing is grouped by user twice.
        yield TaggedOutput("users", user_history_line(user_id, timeline.history(self.tokenizer.words)))
        self.tick()


class BuildExamples(beam.PTransform):
    """Groups enriched events by user and builds one example per (search, positive) with
    point-in-time behaviour sequences (see `pipeline.timeline`). Outputs "train", "test"
    (serialized examples), "users" (one history line per user, `user_history_line`) and
    "tallies"."""

    def __init__(self, window, user_words, max_user_events: int = DEFAULT_MAX_USER_EVENTS,
                 text_units: str = "chars", progress_dir: str | None = None):
        super().__init__()
        self.window, self.user_words, self.max_user_events = window, user_words, max_user_events
        self.text_units, self.progress_dir = text_units, progress_dir

    def expand(self, user_events):
        return (
            user_events
            | "GroupByUser" >> beam.GroupByKey()
            | "Examples" >> beam.ParDo(
                _BuildExamplesFn(self.max_user_events, self.text_units, self.progress_dir),
                beam.pvalue.AsSingleton(self.window),
                beam.pvalue.AsSingleton(self.user_words),
            ).with_outputs("train", "test", "users", "tallies")
        )


def _max_or_none(values):
    return max((v for v in values if v is not None), default=None)


class ComputeWindow(beam.PTransform):
    """The join's per-bundle latest event times -> one dict: the train/test window
    (`Window.to_dict`, test date defaulting to the UTC date of the latest event) plus
    `latest_event_ts`; the window is None when there is no event and no test date. Times
    outside the plausible range never get here (`contract.TsRange`), so one wild clock
    cannot move the window."""

    def __init__(self, test_date, train_days: int, test_days: int):
        super().__init__()
        self.test_date, self.train_days, self.test_days = test_date, train_days, test_days

    def expand(self, latest_times):
        return (
            latest_times
            | "Latest" >> beam.CombineGlobally(_max_or_none)
            | "Window" >> beam.Map(_window_dict, self.test_date, self.train_days, self.test_days)
        )


def _window_dict(latest_ts, test_date, train_days, test_days):
    from pipeline.timeline import utc_date

    if test_date is None and latest_ts is None:
        return None
    d = test_date if test_date is not None else utc_date(latest_ts)
    return {**Window(d, train_days, test_days).to_dict(), "latest_event_ts": latest_ts}


class UserDictionary(beam.PTransform):
    """Valid catalog items -> the sorted list of distinct brand and category names."""

    def expand(self, items):
        return (
            items
            | "Names" >> beam.FlatMap(lambda kv: catalog_names(kv[1]))
            | "Distinct" >> beam.Distinct()
            | "List" >> beam.combiners.ToList()
            | "Sorted" >> beam.Map(sorted)
        )


class MergeCounts(beam.CombineFn):
    """Sums Counters."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, counts):
        acc.update(counts)
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        acc = next(accumulators, None)
        if acc is None:
            return Counter()
        for other in accumulators:
            acc.update(other)
        return acc

    def extract_output(self, acc):
        return acc


def _rank_key(count_token):
    count, token = count_token
    return -count, token


class _SortShardFn(beam.DoFn):
    """((key, shard), Counter) -> (key, sorted run): the shard's tokens of at least the
    vocabulary's minimum count as (count, token) in file order (count desc, then token).
    A run longer than INLINE_RUN_TOKENS is written to a file under the work directory and
    travels as its path; the stats tally is written to counts.json."""

    def __init__(self, work_dir: str):
        self.work_dir = work_dir

    def process(self, element):
        (key, shard), counts = element
        if key == STATS_KEY:
            fio.write_text(fio.join(self.work_dir, "counts.json"), json.dumps(dict(counts), sort_keys=True))
            return
        min_count = 1 if key == ITEM_FREQ_KEY else VOCABS[key[len(VOCAB_KEY):]].min_count
        run = sorted(((c, t) for t, c in counts.items() if c >= min_count and t != ""), key=_rank_key)
        if len(run) <= INLINE_RUN_TOKENS:
            yield key, ("inline", run)
            return
        path = fio.join(self.work_dir, "runs", f"{key.replace('/', '-')}-{shard:05d}.tsv")
        fio.write_lines(path, (f"{c}\t{t}" for c, t in run))
        yield key, ("file", path)


def _read_run(run):
    kind, value = run
    if kind == "inline":
        yield from value
        return
    with fio.open_text(value) as f:
        for line in f:
            count, token = line.rstrip("\n").split("\t", 1)
            yield int(count), token


class _MergeRunsFn(beam.DoFn):
    """(key, sorted runs) -> the vocabulary file (or item_freq.tsv), written in one
    streamed pass of a k-way merge; yields {what: size} for stats.json."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def process(self, element):
        key, runs = element
        merged = heapq.merge(*(_read_run(r) for r in runs), key=_rank_key)
        vocab_dir = fio.join(self.out_dir, "vocab")
        size = [0]

        def lines(fmt):
            for count, token in merged:
                size[0] += 1
                yield fmt(count, token)

        if key == ITEM_FREQ_KEY:
            fio.write_lines(fio.join(vocab_dir, ITEM_FREQ_FILE), lines(lambda c, t: f"{t}\t{c}"))
            yield {"item_freq_items": size[0]}
        else:
            name = key[len(VOCAB_KEY):]
            fio.write_lines(vocab_path(vocab_dir, name), lines(lambda c, t: t))
            yield {f"vocab/{name}": size[0]}


class WriteTallies(beam.PTransform):
    """Merges the tallies of every step and writes the vocabularies (`features.vocab`
    order and min counts), item_freq.tsv and the counts behind stats.json. Each shard
    of a vocabulary is merged, filtered and sorted apart; one worker per vocabulary then
    merges the sorted shards into its file, streaming. Every vocabulary file is written,
    even when empty. Outputs {what: size} dicts."""

    def __init__(self, out_dir: str, work_dir: str):
        super().__init__()
        self.out_dir, self.work_dir = out_dir, work_dir

    def expand(self, tallies):
        keys = [STATS_KEY, ITEM_FREQ_KEY] + [VOCAB_KEY + name for name in VOCABS]
        seeds = tallies.pipeline | "EveryFile" >> beam.Create([((k, 0), Counter()) for k in keys])
        return (
            (tallies, seeds)
            | "All" >> beam.Flatten()
            | "Merge" >> beam.CombinePerKey(MergeCounts())
            | "SortShards" >> beam.ParDo(_SortShardFn(self.work_dir))
            | "GroupShards" >> beam.GroupByKey()
            | "MergeShards" >> beam.ParDo(_MergeRunsFn(self.out_dir))
        )


_ITEM_ENCODER = ExampleEncoder()


def item_example(features: dict) -> bytes:
    """The serialised item-tower example of one catalog item."""
    return _ITEM_ENCODER.encode(features)


def save_user_dict(user_words, vocab_dir: str, text_units: str = "chars") -> dict:
    """Saves the tokenizer the job used (its user dictionary) next to the vocabularies."""
    tokenizer = tokenizer_for(user_words, text_units)
    tokenizer.save(vocab_dir)
    return {"user_dict": len(tokenizer.user_words)}


def write_json(value, path: str) -> None:
    fio.write_text(path, json.dumps(value, sort_keys=True, ensure_ascii=False))


def merge_dicts(dicts) -> dict:
    out = {}
    for d in dicts:
        out.update(d)
    return out


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's checksum: CRC32C, rotated right by 15 bits plus a constant, little-endian."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
    """One record in TFRecord framing: length, its checksum, the data, its checksum."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc32c(length) + data + _masked_crc32c(data)


class _TFRecordSink(filebasedsink.FileBasedSink):
    """Gzipped TFRecord shards, framed here (CRC32C in C, `google-crc32c`) and written
    through Beam's file systems, so the job's workers never load TensorFlow (it cost each
    worker 5 s and 600 MB) and any location Beam can write takes the records. Beam owns
    temp files, sharding, compression and the final rename."""

    def __init__(self, file_path_prefix: str, num_shards: int):
        super().__init__(
            file_path_prefix,
            coder=coders.BytesCoder(),
            file_name_suffix=".tfrecord.gz",
            num_shards=num_shards,
            compression_type=CompressionTypes.GZIP,
        )

    def write_encoded_record(self, file_handle, encoded_value):
        file_handle.write(tfrecord(encoded_value))


class WriteTFRecords(beam.PTransform):
    """Serialized examples -> `<dir>/part-SSSSS-of-NNNNN.tfrecord.gz` (num_shards 0: the
    runner decides; at least one shard, empty when there is nothing to write)."""

    def __init__(self, directory: str, num_shards: int = 0):
        super().__init__()
        self.directory, self.num_shards = directory, num_shards

    def expand(self, serialized):
        return serialized | "Write" >> beam.io.Write(_TFRecordSink(fio.join(self.directory, "part"), self.num_shards))


class WriteUserHistories(beam.PTransform):
    """History lines -> `<dir>/part-SSSSS-of-NNNNN.tsv.gz` (gzipped; num_shards 0: the
    runner decides)."""

    def __init__(self, directory: str, num_shards: int = 0):
        super().__init__()
        self.directory, self.num_shards = directory, num_shards

    def expand(self, lines):
        return lines | "Write" >> beam.io.WriteToText(
            fio.join(self.directory, "part"), file_name_suffix=".tsv.gz", num_shards=self.num_shards
        )


class WriteDeadLetters(beam.PTransform):
    """Dead-letter dicts -> `<dir>/part-*.jsonl`, one JSON object per line."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def expand(self, dead):
        return (
            dead
            | "ToJson" >> beam.Map(dead_letter_json)
            | "Write" >> beam.io.WriteToText(fio.join(self.directory, "part"), file_name_suffix=".jsonl")
        )
