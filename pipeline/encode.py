"""tf.train.Example bytes written straight in protobuf's wire format, for the job's hot loop.

    encoder = ExampleEncoder()
    encoder.encode({"query": "跑步鞋", "rt_item_id": ["i7", "i3"], "ts": 1709900000})

The same message as `features.spec.to_example` (names checked against `features.spec`,
sequences truncated to their length), built without protobuf objects: a search's example
holds about 1,300 strings, mostly ids and categories that recur across searches, so each
string's encoded field is memoised and a feature is one `bytes.join`. Building it through
protobuf's `extend` was half of the job's time.

Wire format: Example{features(1): Features{feature(1): map entry{key(1), value(2):
Feature{bytes_list(1) | float_list(2) | int64_list(3): {value(1)}}}}}; numbers are packed.
"""
from __future__ import annotations

import struct
from typing import Iterator, Mapping

from features.spec import BEHAVIOUR_SEQUENCES, FEATURES, ITEM_FIELDS
from pipeline.timeline import ITEM_COLUMNS

# Memoised encodings per worker; cleared when full so 10^8 distinct ids cannot exhaust memory.
CACHE_STRINGS = 1 << 20


def _varint_slow(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf writes it
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints of 0 .. 2^14 - 1 (every length and small number the job writes), looked up.
_SMALL = [_varint_slow(n) for n in range(1 << 14)]


def _varint(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 16384 else _varint_slow(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag byte, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 16384 else _varint_slow(n)) + payload


_T1, _T2, _T3 = b"\x0a", b"\x12", b"\x1a"  # tags of fields 1, 2, 3 (length-delimited)


def _entry(key: bytes, feature: bytes) -> bytes:
    """One map entry of Features: the encoded name field `key` and a serialised Feature."""
    return _field(_T1, key + _field(_T2, feature))


def _strings_entry(key: bytes, values: list) -> bytes:
    """The map entry of a string feature from its encoded BytesList value fields."""
    return _entry(key, _field(_T1, b"".join(values)))


class ExampleEncoder:
    """Serialised tf.train.Example from a {feature name: value or sequence} mapping."""

    def __init__(self, cache_strings: int = CACHE_STRINGS):
        self.cache_strings = cache_strings
        self._strings: dict = {}
        self._keys = {name: b"\x0a" + _varint(len(name.encode())) + name.encode() for name in FEATURES}

    def _string(self, value) -> bytes:
        """One BytesList value field of a string (or bytes)."""
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(self._strings) >= self.cache_strings:
            self._strings.clear()
        field = self._strings[value] = _field(_T1, data)
        return field

    def feature(self, name: str, value) -> bytes:
        """One map entry of Features: the feature's name and its value list."""
        f = FEATURES.get(name)
        if f is None:
            raise KeyError(f"unknown feature {name!r}; features/spec.py defines the names")
        seq = (value if isinstance(value, (list, tuple)) else list(value))[: f.length] if f.length else [value]
        if f.dtype == "string":
            get = self._strings.get
            return _strings_entry(self._keys[name], [get(v) or self._string(v) for v in seq])
        if f.dtype == "int64":
            values = b"".join([_varint(int(v)) for v in seq])
            feature = _field(_T3, _field(_T1, values) if values else b"")
        else:
            values = struct.pack(f"<{len(seq)}f", *map(float, seq))
            feature = _field(_T2, _field(_T1, values) if values else b"")
        return _entry(self._keys[name], feature)

    def encode(self, values: Mapping[str, object]) -> bytes:
        """The serialised Example; concatenating two gives their merge (protobuf's rule)."""
        feature = self.feature
        return _field(_T1, b"".join([feature(name, value) for name, value in values.items()]))


class TimelineEncoder:
    """The serialised examples of one user's searches, straight from the timeline.

        encoder = TimelineEncoder()
        for split, example in encoder.examples(timeline, window, search_parts(timeline, ...)):
            ...

    The same bytes as `ExampleEncoder.encode({**shared, **positive})` over
    `pipeline.timeline.timeline_searches`' dicts (a test holds them equal), built with
    less work per search: each behaviour's five value fields are encoded once per user,
    not once per sequence it appears in (up to 250 per search); a query's token features
    once per distinct query, an item's features once per item; a sequence feature is then
    one `bytes.join` over the selected indices. Caches are cleared when full.
    """

    def __init__(self, encoder: ExampleEncoder | None = None, cache_entries: int = CACHE_STRINGS // 4):
        self.encoder = encoder or ExampleEncoder()
        self.cache_entries = cache_entries
        self._queries: dict = {}
        self._items: dict = {}
        self._actions: dict = {}
        # (length, map-entry key field) of each behaviour sequence feature, by prefix then field.
        self._sequences = [
            [(FEATURES[f"{prefix}_{field}"].length, self.encoder._keys[f"{prefix}_{field}"]) for field in ITEM_FIELDS]
            for prefix in BEHAVIOUR_SEQUENCES
        ]

    def _columns(self, events) -> list[list[bytes]]:
        """The encoded value field of each event's item_id, leaf_cat, top_cat, brand, shop."""
        get, string = self.encoder._strings.get, self.encoder._string
        return [[get(e[c]) or string(e[c]) for e in events] for c in ITEM_COLUMNS]

    def _memo(self, cache: dict, key, make):
        value = cache.get(key)
        if value is None:
            if len(cache) >= self.cache_entries:
                cache.clear()
            value = cache[key] = make()
        return value

    def _query(self, query: str, tokens) -> tuple[bytes, bytes]:
        """The query's token features (first in an example) and its `query` feature."""
        feature = self.encoder.feature
        return self._memo(self._queries, query, lambda: (
            feature("query_chars", tokens.chars) + feature("query_bigrams", tokens.bigrams)
            + feature("query_words", tokens.words),
            feature("query", query),
        ))

    def _item(self, e) -> bytes:
        """The positive's item features, item_id to shop."""
        feature = self.encoder.feature
        key = (e.item_id, e.leaf_cat, e.top_cat, e.brand, e.shop, tuple(e.title_words))
        return self._memo(self._items, key, lambda: (
            feature("item_id", e.item_id) + feature("title_words", e.title_words)
            + feature("leaf_cat", e.leaf_cat) + feature("top_cat", e.top_cat)
            + feature("brand", e.brand) + feature("shop", e.shop)
        ))

    def _action(self, action: str) -> bytes:
        return self._memo(self._actions, action, lambda: self.encoder.feature("action", action))

    def examples(self, timeline, window, parts) -> Iterator[tuple[str, bytes]]:
        """(split, serialised example) for every positive of every SearchParts in `parts`
        (from `pipeline.timeline.search_parts` over `timeline`)."""
        events = timeline.events
        columns = None
        feature = self.encoder.feature
        user_id = timeline.user_id
        user_entry = feature("user_id", user_id)
        key = self.encoder._keys["search_id"]
        strings_entry = _strings_entry
        last = len(events) - 1
        for p in parts:
            if columns is None:  # once per user with an example
                columns = self._columns(events)
                newest_first = [column[::-1] for column in columns]
            search = p.search
            head, query_entry = self._query(search.query, p.tokens)
            pieces = [head, feature("his_queries", p.his_queries)]
            for indices, specs in zip(p.sequences, self._sequences):
                if type(indices) is range and indices and indices.step == -1:  # consecutive, newest first: one slice
                    first = last - indices.start
                    for column, (length, entry_key) in zip(newest_first, specs):
                        pieces.append(strings_entry(entry_key, column[first:first + min(length, len(indices))]))
                else:
                    for column, (length, entry_key) in zip(columns, specs):
                        pieces.append(strings_entry(entry_key, [column[i] for i in indices[:length]]))
            search_id = f"{user_id}|{search.ts}|{search.query}".encode("utf-8")
            pieces.append(strings_entry(key, [_field(_T1, search_id)]))  # unique: not memoised
            pieces += (user_entry, query_entry, feature("ts", search.ts), feature("day", window.day_of(search.ts)))
            shared = _field(_T1, b"".join(pieces))
            for e, action in p.positives:
                yield p.split, shared + _field(_T1, self._item(e) + self._action(action))
