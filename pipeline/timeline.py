"""One user's timeline -> the training examples of their searches (pure Python, no Beam).

The preprocessing job groups every valid event by user, enriches it with the item's side
information and hands the user's events here. For a search by user u at time t with query q:

    real-time  rt: behaviours of the same session, newest first, at most MAX_REALTIME
    short-term st: t - SHORT_TERM_DAYS days <= ts < t, not in rt, newest first, <= MAX_SHORT_TERM
    long-term  lt: t - LONG_TERM_DAYS days <= ts < t, not in rt or st, newest first, <= MAX_LONG_TERM
    his_queries:   the user's distinct earlier queries (ts < t), newest first, <= MAX_HIS_QUERIES

Only behaviours strictly before t are used: anything at the same second as the search,
including the search's own clicks, cannot leak into its features. "Not in rt" means not
in the emitted (truncated) rt sequence, so a session longer than MAX_REALTIME spills its
older behaviours into st, and an overfull st spills into lt. Nothing older than
LONG_TERM_DAYS is used by any sequence, the real-time one included.

The selection itself lives in `features.history`, shared with serving, which runs it
over the bounded history the job writes per user (`Timeline.history`).
"""
from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Iterator, NamedTuple

from features import history as fh
from features.history import DAY, Sequences  # noqa: F401  (DAY, Sequences: part of this module's API)
from features.spec import ITEM_FIELDS, POSITIVE_ACTIONS

# A user with more valid events than this (a crawler, a shared test account) keeps only the
# newest ones: the window is at the end of the log, and one user must not exhaust a worker.
DEFAULT_MAX_USER_EVENTS = 200_000


class UserEvent(NamedTuple):
    """One valid behaviour joined with its item's side information. `title_words` is
    carried only by events that can be a positive (click/purchase under a query), since
    only positives need the item tower's title features."""

    ts: int
    query: str
    item_id: str
    action: str
    session_id: str
    leaf_cat: str
    top_cat: str
    brand: str
    shop: str
    title_words: tuple = ()


def sort_key(e: UserEvent) -> tuple:
    """Time order with a deterministic tiebreak, so input order never changes the output."""
    return (e.ts, e.query, e.item_id, e.action, e.session_id)


def utc_date(ts: int) -> date:
    return datetime.fromtimestamp(ts, tz=timezone.utc).date()


def day_start(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class Window:
    """The train/test window: `train_days` days before `test_date`, then `test_days`
    days from it (UTC days). Day indices are 1-based, so with 7 + 1 the test day is 8."""

    test_date: date
    train_days: int = 7
    test_days: int = 1

    def __post_init__(self):
        if self.train_days < 1 or self.test_days < 1:
            raise ValueError(f"train_days and test_days must be >= 1, got {self.train_days}, {self.test_days}")

    @cached_property
    def start(self) -> int:
        """First second of the first training day (epoch seconds, inclusive)."""
        return day_start(self.test_date - timedelta(days=self.train_days))

    @cached_property
    def test_start(self) -> int:
        return day_start(self.test_date)

    @cached_property
    def end(self) -> int:
        """First second after the last test day (exclusive)."""
        return day_start(self.test_date + timedelta(days=self.test_days))

    def day_of(self, ts: int) -> int | None:
        """1-based window day of `ts`, or None outside the window."""
        if not self.start <= ts < self.end:
            return None
        return (ts - self.start) // DAY + 1

    def split_of(self, ts: int) -> str | None:
        """"train", "test" or None (outside the window)."""
        if not self.start <= ts < self.end:
            return None
        return "train" if ts < self.test_start else "test"

    def to_dict(self) -> dict:
        first = self.test_date - timedelta(days=self.train_days)
        return {
            "test_date": self.test_date.isoformat(),
            "train_days": self.train_days,
            "test_days": self.test_days,
            "train_first_day": first.isoformat(),
            "train_last_day": (self.test_date - timedelta(days=1)).isoformat(),
            "test_first_day": self.test_date.isoformat(),
            "test_last_day": (self.test_date + timedelta(days=self.test_days - 1)).isoformat(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Window":
        return cls(date.fromisoformat(d["test_date"]), int(d["train_days"]), int(d["test_days"]))


def cap_events(events: Iterable[UserEvent], max_events: int) -> tuple[list[UserEvent], int]:
    """The newest `max_events` events in time order, and how many older ones were cut.
    Memory stays O(max_events) however many events the iterable yields."""
    heap: list[tuple] = []
    cut = 0
    for e in events:
        item = (sort_key(e), e)
        if len(heap) < max_events:
            heapq.heappush(heap, item)
        else:
            cut += 1
            if item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)
    return [e for _, e in sorted(heap, key=lambda x: x[0])], cut


class Search(NamedTuple):
    """(user, ts, query) with its positives: item_id -> (event, action), action being
    "purchase" when the item was purchased under the search, else "click"."""

    ts: int
    query: str
    session: str
    positives: dict


class Timeline:
    """A user's events in time order with session labels; answers point-in-time
    questions about the behaviours and queries before a given second."""

    def __init__(self, user_id: str, events: list[UserEvent]):
        self.user_id = user_id
        self.events = events  # sorted by sort_key
        self.ts = [e.ts for e in events]
        # A session label per event: its session_id when given, else its gap session.
        self.gap_sessions = fh.gap_sessions(self.ts)
        self.sessions = [fh.session_label(e.session_id, g) for e, g in zip(events, self.gap_sessions)]
        self.session_indices: dict[str, list[int]] = {}  # label -> its behaviours' indices, ascending
        for i, label in enumerate(self.sessions):
            self.session_indices.setdefault(label, []).append(i)
        # Every distinct (ts, query) with a query, in time order: the user's query log.
        self.query_log: list[tuple[int, str]] = []
        for e in events:
            if e.query and (not self.query_log or self.query_log[-1] != (e.ts, e.query)):
                self.query_log.append((e.ts, e.query))
        self.query_ts = [ts for ts, _ in self.query_log]
        self._searches: list[Search] | None = None
        self._recent_queries: fh.RecentQueries | None = None  # searches ask in time order: linear
        self._recent_words_of = None

    def searches(self) -> list[Search]:
        """Every search (distinct ts, query with a non-empty query) in time order; a
        search whose events were all cart/collect has no positives."""
        if self._searches is not None:
            return self._searches
        out: dict[tuple[int, str], Search] = {}
        for e, label in zip(self.events, self.sessions):
            if not e.query:
                continue
            key = (e.ts, e.query)
            search = out.get(key)
            if search is None:
                search = out[key] = Search(e.ts, e.query, label, {})
            if e.action in POSITIVE_ACTIONS:
                _, action = search.positives.get(e.item_id, (e, "click"))
                search.positives[e.item_id] = (e, "purchase" if "purchase" in (action, e.action) else "click")
        self._searches = list(out.values())
        return self._searches

    def sequences_at(self, t: int, session: str) -> Sequences:
        """rt, st and lt behaviours strictly before `t` (lists of UserEvent, newest first)."""
        session_start = self.session_indices.get(session, [len(self.events)])[0]
        return fh.select_sequences(self.events, self.ts, self.sessions, t, session, session_start)

    def sequence_indices_at(self, t: int, session: str) -> Sequences:
        """`sequences_at` as indices into `events` (`features.history.select_sequence_indices`)."""
        return fh.select_sequence_indices(self.ts, self.session_indices.get(session, ()), t)

    def his_queries(self, t: int, words_of) -> list[str]:
        """Distinct earlier queries (ts < t), newest first, each its first
        MAX_HIS_QUERY_WORDS words joined by ' '; queries without words are left out."""
        if self._recent_queries is None or self._recent_words_of != words_of:  # bound methods compare equal
            self._recent_queries = fh.RecentQueries(self.query_log, lambda q: fh.his_query_text(words_of(q)))
            self._recent_words_of = words_of
        return self._recent_queries.at(t)

    def history(self, words_of) -> fh.UserHistory:
        """The user's record for the feature store: every behaviour and query the features
        can use one second after the user's last event (any later request) and at their
        last search with a positive (so the record reproduces that search's example)."""
        if not self.events:
            return fh.EMPTY_HISTORY
        cuts = [(self.ts[-1] + 1, self.sessions[-1])]
        last = next((s for s in reversed(self.searches()) if s.positives), None)
        if last is not None:
            cuts.append((last.ts, last.session))
        behaviours = []
        for i in fh.history_indices(self.ts, self.sessions, cuts):
            e = self.events[i]
            behaviours.append(fh.Behaviour(e.ts, e.item_id, e.leaf_cat, e.top_cat, e.brand, e.shop, e.action,
                                           e.session_id, self.gap_sessions[i]))
        queries = fh.history_queries(self.query_log, self.query_ts, [t for t, _ in cuts],
                                     lambda q: fh.his_query_text(words_of(q)))
        return fh.UserHistory(behaviours, tuple(queries))


# Column of each ITEM_FIELDS entry in a UserEvent tuple.
ITEM_COLUMNS = tuple(UserEvent._fields.index(f) for f in ITEM_FIELDS)


def sequence_features(seqs: Sequences) -> dict:
    """rt_/st_/lt_ item_id, leaf_cat, top_cat, brand, shop lists (newest first)."""
    return fh.sequence_features(seqs, ITEM_COLUMNS)


def user_searches(
    user_id: str,
    events: Iterable[UserEvent],
    window: Window,
    tokenizer,
    counts: Counter,
    *,
    max_events: int = DEFAULT_MAX_USER_EVENTS,
    vocab_counts: dict[str, Counter] | None = None,
    item_freq: Counter | None = None,
) -> Iterator[tuple[str, dict, list[dict]]]:
    """Yields (split, search features, [positive item features]) for every search of the
    user inside the window that has a positive: split is "train" or "test", the search
    features (query, history, behaviour sequences, meta) are shared by all its examples,
    and each positive adds item_id, title_words, leaf_cat, top_cat, brand, shop and action.
    Positives are in item_id order.

    Tallies into `counts`: users, users_capped, events_over_user_cap, searches,
    searches_train, searches_test, positives, examples_train, examples_test,
    search_without_positive, positive_outside_window (= positive_before_window +
    positive_after_window), positive_query_without_tokens.
    `vocab_counts["word" | "char" | "bigram"][token]` counts the query tokens of searches
    before the test window (test-time text never shapes a vocabulary);
    `item_freq[item_id]` counts training examples per positive item.
    """
    timeline = user_timeline(user_id, events, counts, max_events)
    yield from timeline_searches(timeline, window, tokenizer, counts, vocab_counts=vocab_counts, item_freq=item_freq)


def user_timeline(user_id: str, events: Iterable[UserEvent], counts: Counter,
                  max_events: int = DEFAULT_MAX_USER_EVENTS) -> Timeline:
    """The Timeline of the user's newest `max_events` events; tallies users, users_capped
    and events_over_user_cap into `counts`."""
    kept, cut = cap_events(events, max_events)
    counts["users"] += 1
    if cut:
        counts["users_capped"] += 1
        counts["events_over_user_cap"] += cut
    return Timeline(user_id, kept)


class SearchParts(NamedTuple):
    """A search inside the window with a positive, before its features are assembled:
    `sequences` holds indices into the timeline's events (rt, st, lt, newest first),
    `positives` (event, action) pairs in item_id order."""

    split: str
    search: Search
    tokens: object  # features.tokenizer.Tokens of the query
    his_queries: list
    sequences: Sequences
    positives: list


def search_parts(
    timeline: Timeline,
    window: Window,
    tokenizer,
    counts: Counter,
    *,
    vocab_counts: dict[str, Counter] | None = None,
    item_freq: Counter | None = None,
) -> Iterator[SearchParts]:
    """The searches `timeline_searches` turns into features, as SearchParts; tallies as
    in `user_searches`. The job serialises these directly (`pipeline.encode.TimelineEncoder`)."""
    test_start = window.test_start
    for search in timeline.searches():
        counts["searches"] += 1
        split = window.split_of(search.ts)
        tokens = tokenizer.tokenize(search.query)
        if vocab_counts is not None and search.ts < test_start:
            vocab_counts["word"].update(tokens.words)
            vocab_counts["char"].update(tokens.chars)
            vocab_counts["bigram"].update(tokens.bigrams)
        if not search.positives:
            counts["search_without_positive"] += 1
            continue
        n = len(search.positives)
        counts["positives"] += n
        if split is None:
            counts["positive_outside_window"] += n
            # Before the window by design (history); after it, a sign of a wrong --test-date.
            counts["positive_before_window" if search.ts < window.start else "positive_after_window"] += n
            continue
        if not tokens.chars:  # the query was all punctuation: nothing for the user tower to read
            counts["positive_query_without_tokens"] += n
            continue
        counts[f"searches_{split}"] += 1
        counts[f"examples_{split}"] += n
        item_ids = sorted(search.positives)
        if item_freq is not None and split == "train":
            item_freq.update(item_ids)
        yield SearchParts(
            split,
            search,
            tokens,
            timeline.his_queries(search.ts, tokenizer.words),
            timeline.sequence_indices_at(search.ts, search.session),
            [search.positives[item_id] for item_id in item_ids],
        )


def timeline_searches(timeline: Timeline, window: Window, tokenizer, counts: Counter,
                      **tallies) -> Iterator[tuple[str, dict, list[dict]]]:
    """`user_searches` over a Timeline already built (see there); `tallies`:
    vocab_counts, item_freq."""
    user_id = timeline.user_id
    events = timeline.events
    for p in search_parts(timeline, window, tokenizer, counts, **tallies):
        search = p.search
        seqs = Sequences(*([events[i] for i in idx] for idx in p.sequences))
        shared = {
            "query_chars": p.tokens.chars,
            "query_bigrams": p.tokens.bigrams,
            "query_words": p.tokens.words,
            "his_queries": p.his_queries,
            **sequence_features(seqs),
            "search_id": f"{user_id}|{search.ts}|{search.query}",
            "user_id": user_id,
            "query": search.query,
            "ts": search.ts,
            "day": window.day_of(search.ts),
        }
        positives = [
            {
                "item_id": e.item_id,
                "title_words": e.title_words,
                "leaf_cat": e.leaf_cat,
                "top_cat": e.top_cat,
                "brand": e.brand,
                "shop": e.shop,
                "action": action,
            }
            for e, action in p.positives
        ]
        yield p.split, shared, positives


def user_examples(user_id: str, events: Iterable[UserEvent], window: Window, tokenizer, counts: Counter,
                  **kwargs) -> Iterator[tuple[str, dict]]:
    """Yields ("train" | "test", example) for every positive of every search of the user
    inside the window: one example per (search, positive item), features named as in
    `features.spec`. Arguments and tallies as in `user_searches`."""
    for split, shared, positives in user_searches(user_id, events, window, tokenizer, counts, **kwargs):
        for positive in positives:
            yield split, {**shared, **positive}
