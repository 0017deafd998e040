"""The synthetic world: contract-valid files, determinism, and the properties the
model's effects rely on (one intent per query, controlled click noise, lasting
personal taste, titles and queries built from the category/brand lexicon)."""
import argparse
import collections
import filecmp
import itertools
import json
import os
from datetime import datetime, timezone

import pytest

from features import normalize
from pipeline import contract, synth

SEED = int(os.environ.get("SYNTH_TEST_SEED", "3"))


def _load(out: str, name: str, validate):
    paths = contract.find_inputs(out, name)
    recs = []
    for path in paths:
        for loc, rec in contract.iter_raw(path):
            assert not isinstance(rec, contract.BadRecord), loc
            recs.append(validate(rec))
    return recs


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class World:
    """A generated world read back from its files."""

    def __init__(self, out: str, summary: dict):
        self.out, self.summary = out, summary
        self.items = _load(out, "items", contract.validate_item)
        self.events = _load(out, "events", contract.validate_event)
        self.truth_items = {r["item_id"]: r for r in _jsonl(os.path.join(out, "truth", "items.jsonl"))}
        self.queries = {r["query"]: r for r in _jsonl(os.path.join(out, "truth", "queries.jsonl"))}
        with open(os.path.join(out, "truth", "lexicon.json"), encoding="utf-8") as f:
            self.lexicon = json.load(f)
        with open(os.path.join(out, "world.json"), encoding="utf-8") as f:
            self.world = json.load(f)
        day1 = datetime.fromisoformat(self.world["day1"]).replace(tzinfo=timezone.utc)
        self.day1_ts = int(day1.timestamp())

    def relevant(self, item_id: str, query: str) -> bool:
        it, q = self.truth_items[item_id], self.queries[query]
        return (
            it["leaf_category"] == q["leaf_category"]
            and q["brand"] in ("", it["brand"])
            and q["colour"] in ("", it["colour"])
            and q["style"] in ("", it["style"])
        )

    def search_clicks(self):
        return [e for e in self.events if e.action == "click" and e.query]

    def noise_share(self) -> float:
        clicks = self.search_clicks()
        return sum(not self.relevant(e.item_id, e.query) for e in clicks) / len(clicks)


def _make(tmp_path_factory, **kw) -> World:
    out = str(tmp_path_factory.mktemp("synth"))
    return World(out, synth.generate(out, progress=False, **kw))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _make(tmp_path_factory, scale="tiny", seed=SEED)


def test_files_follow_the_contract(tiny):
    s = tiny.summary
    assert len(tiny.items) == s["items"] == 300
    assert len(tiny.events) == s["events"]
    assert len({e.user_id for e in tiny.events}) == s["users"] == 60
    ids = {i.item_id for i in tiny.items}
    assert len(ids) == len(tiny.items) == len(tiny.truth_items) and ids == set(tiny.truth_items)
    assert {e.item_id for e in tiny.events} <= ids
    assert all(i.price and i.price > 0 for i in tiny.items)
    assert all(e.session_id.startswith(e.user_id + "-") for e in tiny.events)
    searches = {(e.user_id, e.ts, e.query) for e in tiny.events if e.query}
    assert len(searches) == s["searches"]
    assert collections.Counter(e.action for e in tiny.events) == s["actions"]
    assert {e.action for e in tiny.events if not e.query} == set(synth.ACTIONS)  # behaviours without a search
    for item in tiny.items:  # catalog and truth agree
        truth = tiny.truth_items[item.item_id]
        assert (item.leaf_category, item.top_category, item.brand) == (
            truth["leaf_category"], truth["top_category"], truth["brand"])


def test_calendar_month_of_history_then_eight_days(tiny):
    w = tiny.world
    assert (w["days"], w["history_days"]) == (8, 30)
    ts = [e.ts for e in tiny.events]
    start, end = tiny.day1_ts - 30 * 86400, tiny.day1_ts + 8 * 86400
    assert start <= min(ts) and max(ts) < end
    assert max(ts) >= end - 86400  # day 8 has searches: it is the test day
    days = {(t - tiny.day1_ts) // 86400 + 1 for t in ts}
    assert set(range(1, 9)) <= days and min(days) < 0
    # Events under a search carry the search's own time; a user's events are in time order.
    by_user = collections.defaultdict(list)
    for e in tiny.events:
        by_user[e.user_id].append(e.ts)
    assert all(v == sorted(v) for v in by_user.values())


def test_deterministic_for_a_seed(tiny, tmp_path):
    again = synth.generate(str(tmp_path / "a"), scale="tiny", seed=SEED, progress=False)
    for rel in ("items.jsonl", "events.jsonl", "truth/items.jsonl", "truth/queries.jsonl", "world.json"):
        assert filecmp.cmp(os.path.join(tiny.out, rel), os.path.join(tmp_path, "a", rel), shallow=False), rel
    other = synth.generate(str(tmp_path / "b"), scale="tiny", seed=SEED + 1, progress=False)
    assert not filecmp.cmp(os.path.join(tiny.out, "events.jsonl"), other["paths"]["events"], shallow=False)
    assert again["events"] == tiny.summary["events"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_every_format_holds_the_same_records(tiny, tmp_path, fmt):
    synth.generate(str(tmp_path), scale="tiny", seed=SEED, fmt=fmt, progress=False)
    assert _load(str(tmp_path), "items", contract.validate_item) == tiny.items
    assert _load(str(tmp_path), "events", contract.validate_event) == tiny.events


def test_every_query_maps_to_one_intent(tiny):
    # One truth line per distinct query string, and every searched query has one.
    assert len(tiny.queries) == tiny.summary["distinct_queries"]
    assert {e.query for e in tiny.events if e.query} == set(tiny.queries)
    # Also after the tokenizer's normalisation (full width, case, spaces): what the model sees.
    intents = collections.defaultdict(set)
    for q, t in tiny.queries.items():
        intents[normalize(q)].add((t["leaf_category"], t["brand"], t["colour"], t["style"]))
    assert all(len(v) == 1 for v in intents.values())
    # The intent is written in the query: a word for its category and for each attribute.
    leaf_words = {c["name"]: [c["name"], *c["synonyms"]] for c in tiny.lexicon["leaf_categories"]}
    brand_words = {b["name"]: [b["name"], *b["aliases"]] for b in tiny.lexicon["brands"]}
    for q, t in tiny.queries.items():
        nq = normalize(q)
        assert any(normalize(w) in nq for w in leaf_words[t["leaf_category"]]), q
        assert not t["brand"] or any(normalize(w) in nq for w in brand_words[t["brand"]]), q
        assert t["colour"] in nq and t["style"] in nq, q
        assert t["top_category"] == next(c["top_category"] for c in tiny.lexicon["leaf_categories"]
                                         if c["name"] == t["leaf_category"])


def test_category_words_and_brand_names_are_unique_across_the_tree():
    words = [w for t in synth.TOP_CATEGORIES for lf in t.leaves for w in (lf.name, *lf.synonyms)]
    assert len(words) == len(set(map(normalize, words)))
    brands = [w for t in synth.TOP_CATEGORIES for b in t.brands for w in b]
    assert len(brands) == len(set(map(normalize, brands)))
    assert not set(map(normalize, words)) & set(map(normalize, brands))


def test_categories_have_synonyms_used_in_queries(tiny):
    syn_only, searched = collections.Counter(), collections.Counter()
    for q, t in tiny.queries.items():
        leaf = next(c for c in tiny.lexicon["leaf_categories"] if c["name"] == t["leaf_category"])
        nq = normalize(q)
        searched[leaf["name"]] += 1
        # The category word a query uses is the longest one it contains (纯牛奶 over 牛奶).
        used = max((w for w in [leaf["name"], *leaf["synonyms"]] if normalize(w) in nq), key=len)
        syn_only[leaf["name"]] += used != leaf["name"]
    # Every leaf searched in at least 10 distinct ways is also searched by a synonym.
    common = [leaf for leaf, n in searched.items() if n >= 10]
    assert len(common) >= 10 and all(syn_only[leaf] for leaf in common)
    # Latin aliases are used too, sometimes in full width or capitalised.
    assert any(q != normalize(q) and normalize(q).isascii() is False and any(
        a in normalize(q) for b in tiny.lexicon["brands"] for a in b["aliases"]) for q in tiny.queries)


def test_titles_contain_their_brand_and_category_words(tiny):
    leaf_words = {c["name"]: [c["name"], *c["synonyms"]] for c in tiny.lexicon["leaf_categories"]}
    brand_words = {b["name"]: [b["name"], *b["aliases"]] for b in tiny.lexicon["brands"]}
    for item in tiny.items:
        title = normalize(item.title)
        assert any(normalize(w) in title for w in leaf_words[item.leaf_category]), item
        assert not item.brand or any(normalize(w) in title for w in brand_words[item.brand]), item
    assert 0.05 < sum(not i.brand for i in tiny.items) / len(tiny.items) < 0.3  # some items have no brand
    assert any(item.title != normalize(item.title).replace(" ", "") for item in tiny.items)  # full width etc.
    assert len({i.title for i in tiny.items}) > 0.9 * len(tiny.items)


def test_shops_mostly_sell_one_top_category(tiny):
    tops = collections.defaultdict(collections.Counter)
    for i in tiny.items:
        tops[i.shop][i.top_category] += 1
    dominant = sum(c.most_common(1)[0][1] for c in tops.values())
    assert dominant / len(tiny.items) > 0.8


@pytest.mark.parametrize("noise", [0.0, 0.2, 0.5])
def test_realised_noise_share_matches_the_setting(tmp_path, noise):
    out = str(tmp_path)
    summary = synth.generate(out, scale="tiny", seed=11, noise=noise, progress=False)
    w = World(out, summary)
    share = w.noise_share()  # judged from the files against the ground truth
    assert share == pytest.approx(summary["noise_realised"], abs=1e-12)
    if noise == 0.0:
        assert share == 0.0
    else:
        # ~4000 clicks: binomial sd ~0.008 at 0.2; the tolerance is ~4 sd.
        assert abs(share - noise) < 0.035


def test_noisy_clicks_include_wrong_brand_in_the_right_category(tiny):
    wrong_attr = other_leaf = 0
    for e in tiny.search_clicks():
        if not tiny.relevant(e.item_id, e.query):
            same_leaf = tiny.truth_items[e.item_id]["leaf_category"] == tiny.queries[e.query]["leaf_category"]
            wrong_attr += same_leaf
            other_leaf += not same_leaf
    assert wrong_attr > 50 and other_leaf > 50


def test_different_users_click_different_items_for_the_same_intent(tiny):
    """Chance: if clicks did not depend on who searched, two clicks from two different
    users under the same intent would hit the same item as often as any two clicks under
    that intent do, i.e. with probability sum_i n_i (n_i - 1) / (N (N - 1)) over the
    intent's N relevant clicks (n_i on item i). Personal taste makes cross-user pairs
    agree less often than that, and a user's own repeated searches agree more often."""
    by_intent = collections.defaultdict(list)
    for e in tiny.search_clicks():
        if tiny.relevant(e.item_id, e.query):
            q = tiny.queries[e.query]
            by_intent[(q["leaf_category"], q["brand"], q["colour"], q["style"])].append((e.user_id, e.item_id))
    cross = cross_same = own = own_same = 0
    chance_same = 0.0
    for clicks in by_intent.values():
        n = len(clicks)
        if n < 2:
            continue
        counts = collections.Counter(item for _, item in clicks)
        p_same = sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
        for (u1, i1), (u2, i2) in itertools.combinations(clicks, 2):
            if u1 != u2:
                cross += 1
                cross_same += i1 == i2
                chance_same += p_same
            else:
                own += 1
                own_same += i1 == i2
    assert cross > 10_000 and own > 1_000
    assert cross_same / cross < 0.95 * chance_same / cross
    assert own_same / own > 1.5 * chance_same / cross


def test_history_predicts_what_a_user_clicks(tiny):
    """Users repeat their tastes: a test-window click is far more often an item (or a
    brand) from the user's own month of history than from another user's."""
    hist_items, hist_brands = collections.defaultdict(set), collections.defaultdict(set)
    for e in tiny.events:
        if e.ts < tiny.day1_ts:
            hist_items[e.user_id].add(e.item_id)
            hist_brands[e.user_id].add(tiny.truth_items[e.item_id]["brand"])
    users = sorted({e.user_id for e in tiny.events})
    other = {u: users[(k + 1) % len(users)] for k, u in enumerate(users)}
    window = [e for e in tiny.search_clicks() if e.ts >= tiny.day1_ts]
    assert len(window) > 300
    own = sum(e.item_id in hist_items[e.user_id] for e in window) / len(window)
    theirs = sum(e.item_id in hist_items[other[e.user_id]] for e in window) / len(window)
    assert own > 2 * theirs
    brand = lambda e, u: tiny.truth_items[e.item_id]["brand"] in hist_brands[u]  # noqa: E731
    assert sum(brand(e, e.user_id) for e in window) > 1.5 * sum(brand(e, other[e.user_id]) for e in window)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        synth.generate(str(tmp_path), scale="huge")
    with pytest.raises(ValueError, match="noise"):
        synth.generate(str(tmp_path), noise=0.95)
    with pytest.raises(ValueError, match="format"):
        synth.generate(str(tmp_path), fmt="xml")


def test_chunked_generation_keeps_queries_unique_across_chunks(tmp_path, monkeypatch):
    # The large scale's path: many user chunks appended to one parquet file.
    monkeypatch.setitem(synth.SCALES, "tiny", synth.Scale(600, 90, 3, 12, 50, 13, "parquet"))
    summary = synth.generate(str(tmp_path), scale="tiny", seed=5, progress=False)
    w = World(str(tmp_path), summary)
    assert summary["format"] == "parquet" and len(w.events) == summary["events"]
    assert len({e.user_id for e in w.events}) == 90
    intents = collections.defaultdict(set)
    for q, t in w.queries.items():
        intents[normalize(q)].add((t["leaf_category"], t["brand"], t["colour"], t["style"]))
    assert all(len(v) == 1 for v in intents.values())
    assert {e.query for e in w.events if e.query} == set(w.queries)
    assert any(b["name"] not in {n for t in synth.TOP_CATEGORIES for n, _ in t.brands}
               for b in w.lexicon["brands"])  # generated brands beyond the named ones


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--scale", "tiny", "--seed", "1", "--out", str(tmp_path), "--format", "csv",
                              "--noise", "0.1", "--no-progress"])
    assert synth.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["noise"] == 0.1 and os.path.exists(tmp_path / "events.csv")


@pytest.mark.slow
def test_small_scale_sizes(tmp_path):
    summary = synth.generate(str(tmp_path), scale="small", seed=7, fmt="parquet", progress=False)
    assert summary["items"] == 3000 and summary["users"] == 600
    assert 50_000 <= summary["events"] <= 80_000
    assert abs(summary["noise_realised"] - 0.2) < 0.01
