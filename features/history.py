"""A user's history and the user-tower features it gives at a time t: one implementation
for the preprocessing job (training examples) and for serving (the user feature store).

    from features.history import UserHistory, user_features
    history = UserHistory.from_json(record)            # a value of OUT/user_store
    feats = user_features(history, t=1773100000, session_id="s42",
                          recent=[{"ts": 1773099990, "item_id": "i7", "leaf_cat": "跑步鞋",
                                   "top_cat": "运动鞋", "brand": "耐克", "shop": "s3"}])
    feats["rt_item_id"]   # ["i7", ...]: newest first, MAX_REALTIME long, padded with ""

For a search at second t in session s, using only behaviours strictly before t:

    real-time  rt: behaviours of session s, newest first, at most MAX_REALTIME
    short-term st: t - SHORT_TERM_DAYS days <= ts < t, not in rt, newest first, <= MAX_SHORT_TERM
    long-term  lt: t - LONG_TERM_DAYS days <= ts < t, not in rt or st, newest first, <= MAX_LONG_TERM
    his_queries:   distinct earlier queries, newest first, <= MAX_HIS_QUERIES, each its first
                   MAX_HIS_QUERY_WORDS words joined by ' '

`select_sequences`, `his_queries_at` and the session rule below are the implementation:
`pipeline.timeline` runs them over a user's whole timeline to build training examples,
`user_features` over a stored `UserHistory`. A session is the event's session id when it
has one, else a run of events with gaps under SESSION_GAP_SECONDS ("gap:<n>").

A `UserHistory` is bounded: the behaviours of the last LONG_TERM_DAYS days that a sequence
can use (`history_indices`) and the distinct queries `his_queries` can use
(`history_queries`), at two cuts: one second after the user's last event (serving: any
request after the data) and the user's last search with a positive (so the store can be
checked against that search's training example). Its JSON form (`to_json`) is parallel
lists over a table of distinct strings: about 3 kB for a typical user, and never more
than 600 behaviours and 20 queries however heavy the user.
"""
from __future__ import annotations

import bisect
import json
from itertools import accumulate
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from features.spec import (
    BEHAVIOUR_ACTIONS,
    BEHAVIOUR_SEQUENCES,
    ITEM_FIELDS,
    LONG_TERM_DAYS,
    MAX_HIS_QUERIES,
    MAX_HIS_QUERY_WORDS,
    MAX_LONG_TERM,
    MAX_REALTIME,
    MAX_SHORT_TERM,
    PAD,
    SESSION_GAP_SECONDS,
    SHORT_TERM_DAYS,
)

DAY = 86400
# Behaviours one cut of a history keeps: every sequence full (rt's session may add more).
HISTORY_BEHAVIOURS = MAX_REALTIME + MAX_SHORT_TERM + MAX_LONG_TERM
# The user-tower features a history gives (the query_* features come from the request).
HISTORY_FEATURE_NAMES = ("his_queries",) + tuple(f"{p}_{f}" for p in BEHAVIOUR_SEQUENCES for f in ITEM_FIELDS)

# The user feature store, as `ebr preprocess` writes it and `serving.user_store` reads it:
# OUT/user_store/users.sqlite with table users (user_id -> UserHistory.to_json() as UTF-8)
# and table meta (key -> JSON value: format, record_version, as_of, latest_event_ts, users,
# built).
USER_STORE_DIR = "user_store"
USER_STORE_FILE = "users.sqlite"
USER_STORE_FORMAT = "ebr-user-store/1"
USER_STORE_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE users (user_id TEXT NOT NULL, history BLOB NOT NULL)",
)
# Built after the rows are in: one sort instead of 10^8 random B-tree inserts.
USER_STORE_INDEX = "CREATE UNIQUE INDEX users_by_id ON users (user_id)"
USER_STORE_LOOKUP = "SELECT history FROM users WHERE user_id = ?"


class Behaviour(NamedTuple):
    """One stored behaviour: the item with its side information, the action, and the
    session (`session_id` as logged, `gap_session` the gap-rule session number)."""

    ts: int
    item_id: str
    leaf_cat: str
    top_cat: str
    brand: str
    shop: str
    action: str
    session_id: str = ""
    gap_session: int = 0


# Column of each ITEM_FIELDS entry in a Behaviour tuple.
BEHAVIOUR_COLUMNS = tuple(Behaviour._fields.index(f) for f in ITEM_FIELDS)


class Sequences(NamedTuple):
    rt: list
    st: list
    lt: list


# --- sessions ------------------------------------------------------------------------------


def gap_sessions(ts: Sequence[int]) -> list[int]:
    """The gap-rule session number of each behaviour (`ts` in time order): 0 for the first,
    one more whenever SESSION_GAP_SECONDS or more passed since the previous behaviour."""
    out = []
    n = 0
    prev = None
    for t in ts:
        if prev is not None and t - prev >= SESSION_GAP_SECONDS:
            n += 1
        prev = t
        out.append(n)
    return out


def session_label(session_id: str, gap_session: int) -> str:
    """The session a behaviour belongs to: its session id when logged, else its gap session."""
    return f"id:{session_id}" if session_id else f"gap:{gap_session}"


# --- the point-in-time features --------------------------------------------------------------


def select_sequences(items: Sequence, ts: Sequence[int], sessions: Sequence[str], t: int, session: str,
                     session_start: int = 0) -> Sequences:
    """rt, st and lt: lists of `items` strictly before `t`, newest first. `items`, `ts`
    (seconds) and `sessions` (labels) are parallel and in time order; `session` is the
    search's label; `session_start` (the index of its first behaviour, if known) only lets
    the scan stop early.

    "Not in rt" means not in the emitted, truncated rt: a session longer than MAX_REALTIME
    spills its older behaviours into st, and an overfull st spills into lt."""
    rt: list = []
    st: list = []
    lt: list = []
    short_from = t - SHORT_TERM_DAYS * DAY
    long_from = t - LONG_TERM_DAYS * DAY
    i = bisect.bisect_left(ts, t) - 1
    while i >= 0:
        e = items[i]
        if ts[i] < long_from:
            break
        if len(rt) < MAX_REALTIME and sessions[i] == session:
            rt.append(e)
        elif ts[i] >= short_from and len(st) < MAX_SHORT_TERM:
            st.append(e)
        elif len(lt) < MAX_LONG_TERM:
            lt.append(e)
        elif len(rt) == MAX_REALTIME or i <= session_start:
            break  # st and lt are full and no older behaviour of the session is left
        i -= 1
    return Sequences(rt, st, lt)


def select_sequence_indices(ts: Sequence[int], session_indices: Sequence[int], t: int) -> Sequences:
    """`select_sequences` as indices into the behaviours, without walking them one by one:
    `ts` in time order, `session_indices` the ascending indices of the search's session.
    The same answer (a test compares them on random timelines) in a few bisections and
    slices: rt is the session's newest MAX_REALTIME behaviours in the long-term range; the
    others, newest first, fill st while they are short-term and then lt. A sequence of
    consecutive indices comes back as a `range` (newest first), any other as a list."""
    hi = bisect.bisect_left(ts, t)  # behaviours strictly before t
    lo = bisect.bisect_left(ts, t - LONG_TERM_DAYS * DAY)
    if hi <= lo:
        return Sequences([], [], [])
    a = bisect.bisect_left(session_indices, lo)
    b = bisect.bisect_left(session_indices, hi)
    rt_from = max(a, b - MAX_REALTIME)
    rt = session_indices[rt_from:b][::-1]
    short = bisect.bisect_left(ts, t - SHORT_TERM_DAYS * DAY)
    # Short-term behaviours outside rt: those in [max(short, lo), hi) less rt's share of them.
    rt_short = b - bisect.bisect_left(session_indices, short, rt_from, b)
    n_st = min(MAX_SHORT_TERM, hi - short - rt_short)  # short >= lo
    need = n_st + MAX_LONG_TERM
    if not rt or rt[-1] >= hi - len(rt) and rt[0] == hi - 1:  # rt, if any, is the newest run
        start = hi - len(rt) - 1
        rest = range(start, max(lo, start - need + 1) - 1, -1)
    else:
        taken = set(rt)
        rest = [i for i in range(hi - 1, max(lo, hi - need - len(rt)) - 1, -1) if i not in taken][:need]
    return Sequences(_as_run(rt), rest[:n_st], rest[n_st:need])


def _as_run(indices: list[int]):
    """Newest-first indices as a range when they are consecutive."""
    if indices and indices[0] - indices[-1] == len(indices) - 1:
        return range(indices[0], indices[-1] - 1, -1)
    return indices


def sequence_features(seqs: Sequences, columns: Sequence[int] = BEHAVIOUR_COLUMNS) -> dict:
    """rt_/st_/lt_ item_id, leaf_cat, top_cat, brand, shop tuples (newest first, unpadded);
    `columns`: the position of each ITEM_FIELDS entry in the sequences' tuples."""
    out = {}
    for prefix, seq in zip(BEHAVIOUR_SEQUENCES, seqs):
        cols = list(zip(*seq)) if seq else None
        for field, col in zip(ITEM_FIELDS, columns):
            out[f"{prefix}_{field}"] = cols[col] if cols else ()
    return out


def his_query_text(words: Sequence[str]) -> str:
    """A query as `his_queries` holds it: its first MAX_HIS_QUERY_WORDS words joined by ' '."""
    return " ".join(words[:MAX_HIS_QUERY_WORDS])


def his_queries_at(log: Sequence[tuple[int, str]], log_ts: Sequence[int], t: int,
                   text_of: Callable[[str], str] | None = None) -> list[str]:
    """Distinct query texts before `t`, newest first, at most MAX_HIS_QUERIES. `log`:
    (ts, query) in time order, `log_ts` its times; `text_of` turns a logged query into its
    `his_query_text` (None: the log holds texts already). Empty texts are left out."""
    out: list[str] = []
    seen: set[str] = set()
    i = bisect.bisect_left(log_ts, t) - 1
    while i >= 0 and len(out) < MAX_HIS_QUERIES:
        query = log[i][1]
        text = query if text_of is None else text_of(query)
        if text and text not in seen:
            seen.add(text)
            out.append(text)
        i -= 1
    return out


class RecentQueries:
    """`his_queries_at` for search times that come in order, in time linear in the log: a
    user who repeats one query 16,000 times would make each search walk back over all the
    earlier repeats. Keeps the distinct texts by their newest use, at most MAX_HIS_QUERIES
    (an evicted text comes back when used again). An earlier `t` than the last call starts
    over, so any order of calls gives `his_queries_at`'s answer."""

    def __init__(self, log: Sequence[tuple[int, str]], text_of: Callable[[str], str] | None = None):
        self.log, self.text_of = log, text_of
        self._start()

    def _start(self):
        self.next = 0  # log entries before this index are in `recent`
        self.t = None
        self.recent: dict[str, None] = {}  # insertion order = order of newest use

    def at(self, t: int) -> list[str]:
        if self.t is not None and t < self.t:
            self._start()
        self.t = t
        log, recent, text_of = self.log, self.recent, self.text_of
        i = self.next
        while i < len(log) and log[i][0] < t:
            query = log[i][1]
            text = query if text_of is None else text_of(query)
            if text:
                recent.pop(text, None)
                recent[text] = None
                if len(recent) > MAX_HIS_QUERIES:
                    del recent[next(iter(recent))]
            i += 1
        self.next = i
        return list(reversed(recent))


# --- bounding a history ----------------------------------------------------------------------


def history_indices(ts: Sequence[int], sessions: Sequence[str], cuts: Iterable[tuple[int, str]]) -> list[int]:
    """Indices (ascending) of the behaviours `select_sequences` can use at each cut
    (t, session): the newest HISTORY_BEHAVIOURS of the LONG_TERM_DAYS days before t, and
    the newest MAX_REALTIME of `session` in those days. Any behaviour outside them is
    never selected at that cut, so the features there are the same from the kept ones."""
    keep: set[int] = set()
    for t, session in cuts:
        long_from = t - LONG_TERM_DAYS * DAY
        newest = in_session = 0
        i = bisect.bisect_left(ts, t) - 1
        while i >= 0 and ts[i] >= long_from and (newest < HISTORY_BEHAVIOURS or in_session < MAX_REALTIME):
            same = sessions[i] == session
            if newest < HISTORY_BEHAVIOURS or (same and in_session < MAX_REALTIME):
                keep.add(i)
            newest += 1
            in_session += same
            i -= 1
    return sorted(keep)


def history_queries(log: Sequence[tuple[int, str]], log_ts: Sequence[int], cuts: Iterable[int],
                    text_of: Callable[[str], str]) -> list[tuple[int, str]]:
    """(ts, text) entries (time order) that `his_queries_at` can use at each cut time: per
    cut, the newest entry of each of the last MAX_HIS_QUERIES distinct texts before it."""
    keep: dict[int, str] = {}
    for t in cuts:
        seen: set[str] = set()
        i = bisect.bisect_left(log_ts, t) - 1
        while i >= 0 and len(seen) < MAX_HIS_QUERIES:
            text = text_of(log[i][1])
            if text and text not in seen:
                seen.add(text)
                keep[i] = text
            i -= 1
    return [(log[i][0], keep[i]) for i in sorted(keep)]


# --- the record --------------------------------------------------------------------------

RECORD_VERSION = 1
_ACTION_CODES = {a: str(i) for i, a in enumerate(BEHAVIOUR_ACTIONS)}
_new_tuple = tuple.__new__


def _deltas(values: Sequence[int]) -> list[int]:
    return [b - a for a, b in zip([0, *values], values)]


class UserHistory:
    """What the store holds for one user, as parallel columns (one entry per behaviour, time
    order; within a second, the pipeline's event order): `ts`, `item` (a row of `items`,
    each an (item_id, leaf_cat, top_cat, brand, shop) tuple), `actions` (one digit per
    behaviour, the index in BEHAVIOUR_ACTIONS), `session_id`, `gap_session`; and `queries`,
    (ts, his_query_text) in time order, a text possibly twice (its newest use before each
    cut). Columns, because a lookup then decodes a record without building an object per
    behaviour; `behaviours` gives Behaviour tuples."""

    __slots__ = ("ts", "item", "items", "actions", "session_id", "gap_session", "queries")

    def __init__(self, behaviours: Iterable[Behaviour] = (), queries: Iterable[tuple[int, str]] = ()):
        rows: dict[tuple, int] = {}
        self.ts, self.item, self.session_id, self.gap_session = [], [], [], []
        actions = []
        for n, b in enumerate(behaviours):
            if self.ts and b.ts < self.ts[-1]:
                raise ValueError(f"behaviour {n}: ts {b.ts} is before the previous one's; behaviours go in time order")
            if b.action not in _ACTION_CODES:
                raise ValueError(f"behaviour {n}: action {b.action!r} is not one of {BEHAVIOUR_ACTIONS}")
            key = (b.item_id, b.leaf_cat, b.top_cat, b.brand, b.shop)
            self.item.append(rows.setdefault(key, len(rows)))
            self.ts.append(b.ts)
            actions.append(_ACTION_CODES[b.action])
            self.session_id.append(b.session_id)
            self.gap_session.append(b.gap_session)
        self.items = list(rows)
        self.actions = "".join(actions)
        self.queries = [tuple(q) for q in queries]

    @property
    def behaviours(self) -> tuple[Behaviour, ...]:
        return tuple(
            _new_tuple(Behaviour, (ts,) + self.items[row] + (BEHAVIOUR_ACTIONS[int(code)], sid, gap))
            for ts, row, code, sid, gap in zip(self.ts, self.item, self.actions, self.session_id, self.gap_session)
        )

    def __len__(self) -> int:
        return len(self.ts)

    def __eq__(self, other) -> bool:
        if not isinstance(other, UserHistory):
            return NotImplemented
        return self.behaviours == other.behaviours and self.queries == other.queries

    def __repr__(self) -> str:
        return f"UserHistory({len(self)} behaviours, {len(self.queries)} queries)"

    def to_json(self) -> str:
        """Compact JSON: every distinct string once in "w", then parallel lists of indices
        and time deltas, e.g. {"v":1,"w":["i7","跑步鞋","运动鞋","耐克","s3","s9"],
        "i":[0,1,2,3,4],"b":[0,0],"t":[1773099990,40],"a":"03","e":[5,5],"g":[17,0],
        "qt":[1773099990],"q":["耐克 跑步鞋"]}. i: 5 string indices per distinct item
        (ITEM_FIELDS order); per behaviour: b item row, t time (the first absolute, then
        deltas), a action digit, e session id, g gap session (deltas); qt, q: query times
        (deltas) and texts."""
        strings: dict[str, int] = {}
        rows = [strings.setdefault(v, len(strings)) for item in self.items for v in item]
        sessions = [strings.setdefault(v, len(strings)) for v in self.session_id]
        record = {
            "v": RECORD_VERSION,
            "w": list(strings),
            "i": rows,
            "b": self.item,
            "t": _deltas(self.ts),
            "a": self.actions,
            "e": sessions,
            "g": _deltas(self.gap_session),
            "qt": _deltas([ts for ts, _ in self.queries]),
            "q": [text for _, text in self.queries],
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "UserHistory":
        """The inverse of `to_json`; a malformed record raises ValueError saying what is wrong."""
        try:
            r = json.loads(text)
        except ValueError as e:
            raise ValueError(f"user history record is not JSON: {e}") from None
        if not isinstance(r, dict) or r.get("v") != RECORD_VERSION:
            got = r.get("v") if isinstance(r, dict) else type(r).__name__
            raise ValueError(f"user history record version {got!r}, expected {RECORD_VERSION}")
        h = cls.__new__(cls)
        try:
            w, rows = r["w"], r["i"]
            strings = map(w.__getitem__, rows)
            h.items = list(zip(*[strings] * len(ITEM_FIELDS)))  # 5 consecutive strings an item
            h.ts = list(accumulate(r["t"]))
            h.item, h.actions = r["b"], r["a"]
            h.session_id = list(map(w.__getitem__, r["e"]))
            h.gap_session = list(accumulate(r["g"]))
            h.queries = list(zip(accumulate(r["qt"]), r["q"]))
            n = len(h.ts)
            for name in ("b", "a", "e", "g"):
                if len(r[name]) != n:
                    raise ValueError(f"field {name!r} has {len(r[name])} entries, 't' has {n}")
            if len(r["q"]) != len(r["qt"]) or len(rows) % len(ITEM_FIELDS):
                raise ValueError(f"fields 'q' and 'qt' differ in length, or 'i' is not {len(ITEM_FIELDS)} per item")
            if h.item and not 0 <= min(h.item) <= max(h.item) < len(h.items):
                raise ValueError(f"field 'b' names item rows outside 0..{len(h.items) - 1}")
            if n > 1 and min(r["t"][1:]) < 0:
                raise ValueError("field 't' goes back in time")
            if h.actions.strip("".join(_ACTION_CODES.values())):
                raise ValueError(f"field 'a' has codes outside 0..{len(BEHAVIOUR_ACTIONS) - 1}")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"malformed user history record: {e!s}") from None
        return h


EMPTY_HISTORY = UserHistory()


# --- serving: a request's features -----------------------------------------------------------


def user_features(history: UserHistory | None, t: int, session_id: str | None = None,
                  recent: Sequence[Mapping | Behaviour] | None = None, tokenizer=None) -> dict[str, list[str]]:
    """The history features (HISTORY_FEATURE_NAMES) of a search at second `t`, exactly as
    the training pipeline builds them: newest first, each a list padded with "" (or
    truncated) to its `features.spec` length. `history` None is the empty history.

    `session_id`: the request's session. Given, rt holds that session's behaviours. Not
    given, the 30-minute rule: the request (and each recent behaviour without a session id)
    continues the session of the behaviour before it when that is under
    SESSION_GAP_SECONDS old, else starts a new one; on logs without session ids this is
    the pipeline's gap rule.

    `recent`: behaviours the request carries, newest first (dicts with ts, item_id and
    optionally leaf_cat, top_cat, brand, shop, action (default click), session_id, query;
    or Behaviour tuples). They happened before the request: one stamped at or after t counts
    as t - 1. One equal to a stored behaviour (ts, item_id, action) is dropped. A recent
    query joins his_queries and needs `tokenizer` (a features.Tokenizer)."""
    if history is None:
        history = EMPTY_HISTORY
    if recent:
        history = _merge_recent(history, recent, t, session_id, tokenizer)
    ts, sids, gaps = history.ts, history.session_id, history.gap_session
    # The request's session as a flag per behaviour: select_sequences compares labels
    # with ==, and flags spare building a label string per behaviour.
    i = bisect.bisect_left(ts, t) - 1
    if session_id:
        in_session = [s == session_id for s in sids]
    elif i >= 0 and t - ts[i] < SESSION_GAP_SECONDS:  # continues the session before it
        if sids[i]:
            in_session = [s == sids[i] for s in sids]
        else:
            in_session = [not s and g == gaps[i] for s, g in zip(sids, gaps)]
    else:
        in_session = [False] * len(ts)  # a new session: nothing is real-time
    start = in_session.index(True) if True in in_session else len(ts)
    seqs = select_sequences(history.item, ts, in_session, t, True, start)
    items = history.items
    out = {"his_queries": _padded(his_queries_at(history.queries, [q[0] for q in history.queries], t),
                                  MAX_HIS_QUERIES)}
    for prefix, rows in zip(BEHAVIOUR_SEQUENCES, seqs):
        length = BEHAVIOUR_SEQUENCES[prefix]
        columns = list(zip(*[items[r] for r in rows])) if rows else [()] * len(ITEM_FIELDS)
        for field, values in zip(ITEM_FIELDS, columns):
            out[f"{prefix}_{field}"] = _padded(values, length)
    return out


def _padded(values: Sequence[str], length: int) -> list[str]:
    values = list(values[:length])
    return values + [PAD] * (length - len(values))


def _recent_behaviour(r: Mapping | Behaviour, where: str, t: int, session_id: str | None) -> tuple[Behaviour, str]:
    """A recent behaviour and its query; `gap_session` is set when merged."""
    if isinstance(r, Behaviour):
        r, query = r._asdict(), ""
    elif isinstance(r, Mapping):
        query = r.get("query") or ""
    else:
        raise ValueError(f"{where}: expected a dict or a Behaviour, got {type(r).__name__}")
    item_id = r.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"{where}.item_id: a non-empty string is required, got {item_id!r}")
    raw_ts = r.get("ts")
    try:
        ts = int(raw_ts)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.ts: epoch seconds required, got {raw_ts!r}") from None
    action = r.get("action") or "click"
    if action not in BEHAVIOUR_ACTIONS:
        raise ValueError(f"{where}.action: {action!r} is not one of {BEHAVIOUR_ACTIONS}")
    side = []
    for field in ("leaf_cat", "top_cat", "brand", "shop"):
        value = r.get(field) or ""
        if not isinstance(value, str):
            raise ValueError(f"{where}.{field}: a string is required, got {value!r}")
        side.append(value)
    if not isinstance(query, str):
        raise ValueError(f"{where}.query: a string is required, got {query!r}")
    own_session = r.get("session_id") or session_id or ""
    return Behaviour(min(ts, t - 1), item_id, *side, action, own_session, 0), query


def _continues(prev: Behaviour | None, ts: int) -> bool:
    return prev is not None and ts - prev.ts < SESSION_GAP_SECONDS


def _merge_recent(history: UserHistory, recent, t: int, session_id: str | None, tokenizer) -> UserHistory:
    """Stored + recent behaviours (and queries) in time order; recent ones come after
    stored ones of the same second, and among themselves keep their newest-first order."""
    parsed = [_recent_behaviour(r, f"recent[{i}]", t, session_id) for i, r in enumerate(recent)]
    asked = next((i for i, (_, q) in enumerate(parsed) if q), None)
    if asked is not None and tokenizer is None:
        raise ValueError(f"recent[{asked}].query: a tokenizer is needed to turn recent queries into his_queries")
    stored = list(history.behaviours)
    seen = {(b.ts, b.item_id, b.action) for b in stored}
    fresh = []
    for b, query in reversed(parsed):  # oldest first; the sort below is stable within a second
        key = (b.ts, b.item_id, b.action)
        if key not in seen:
            seen.add(key)
            fresh.append((b, query))
    fresh.sort(key=lambda bq: bq[0].ts)
    merged: list[Behaviour] = []
    queries = list(history.queries)
    j = 0
    for b, query in fresh:
        while j < len(stored) and stored[j].ts <= b.ts:
            merged.append(stored[j])
            j += 1
        prev = merged[-1] if merged else None
        if _continues(prev, b.ts):
            b = b._replace(session_id=b.session_id or prev.session_id, gap_session=prev.gap_session)
        else:
            b = b._replace(gap_session=prev.gap_session + 1 if prev else 0)
        merged.append(b)
        if query:
            text = his_query_text(tokenizer.words(query))
            if text:
                queries.append((b.ts, text))
    merged.extend(stored[j:])
    queries.sort(key=lambda q: q[0])  # stable: stored queries first within a second
    return UserHistory(merged, queries)
