"""The synthetic world: contract-valid files, determinism, and the properties the
model's effects rely on (one intent per query, controlled click noise, lasting
personal taste, titles and queries built from the category/brand lexicon, and the
phenomena of docs/synthetic_world.md: misspellings, new spellings on the test day,
intents that follow the user's history)."""
import argparse
import collections
import filecmp
import itertools
import json
import os
from datetime import datetime, timezone

import pytest

from features import Tokenizer, normalize
from features.tokenizer import char_ngrams
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

    def __init__(self, out: str, summary: dict, events: bool = True):
        self.out, self.summary = out, summary
        self.items = _load(out, "items", contract.validate_item)
        self.events = _load(out, "events", contract.validate_event) if events else None
        self.truth_items = {r["item_id"]: r for r in _jsonl(os.path.join(out, "truth", "items.jsonl"))}
        self.queries = {r["query"]: r for r in _jsonl(os.path.join(out, "truth", "queries.jsonl"))}
        with open(os.path.join(out, "truth", "lexicon.json"), encoding="utf-8") as f:
            self.lexicon = json.load(f)
        with open(os.path.join(out, "world.json"), encoding="utf-8") as f:
            self.world = json.load(f)
        with open(os.path.join(out, "truth", "spellings.json"), encoding="utf-8") as f:
            self.spellings = json.load(f)
        self.searches = _searches(out)
        self._respelled = {s["query"]: s["query"].replace(s["typo_word"], s["typo_of"], 1)
                           for s in self.searches if s["typo"]}
        day1 = datetime.fromisoformat(self.world["day1"]).replace(tzinfo=timezone.utc)
        self.day1_ts = int(day1.timestamp())
        self.test_day_ts = self.day1_ts + (self.world["days"] - 1) * 86400

    def spelled(self, query: str) -> str:
        """The query with its misspelled word (if any) written correctly."""
        return self._respelled.get(query, query)

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


def _searches(out: str) -> list[dict]:
    path = os.path.join(out, "truth", "searches.jsonl")
    if os.path.exists(path):
        return _jsonl(path)
    import pyarrow.parquet as pq

    return pq.read_table(os.path.join(out, "truth", "searches.parquet")).to_pylist()


def _make(tmp_path_factory, events: bool = True, **kw) -> World:
    out = str(tmp_path_factory.mktemp("synth"))
    return World(out, synth.generate(out, progress=False, **kw), events=events)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _make(tmp_path_factory, scale="tiny", seed=SEED)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    # Enough test-day searches to measure the new-spelling share; its events are not read.
    return _make(tmp_path_factory, events=False, scale="small", seed=SEED)


def _tokenizer(world: World) -> Tokenizer:
    """The tokenizer `ebr preprocess` builds: the catalog's brand and category names as user words."""
    return Tokenizer({n for i in world.items for n in (i.brand, i.leaf_category, i.top_category) if n})


def _bigrams(text: str) -> set:
    return set(char_ngrams(normalize(text))[1])


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
    for rel in ("items.jsonl", "events.jsonl", "truth/items.jsonl", "truth/queries.jsonl", "truth/searches.jsonl",
                "truth/spellings.json", "world.json"):
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
    _assert_intents_are_written(tiny)
    assert tiny.summary["queries_respelled"] == 0  # no query fell back to its canonical form


def _assert_intents_are_written(world: World) -> None:
    """The intent is written in the query: a word for its category and for each attribute,
    once a misspelled word is spelled right; a new spelling stands for its brand."""
    leaf_words = {c["name"]: [c["name"], *c["synonyms"]] for c in world.lexicon["leaf_categories"]}
    brand_words = {b["name"]: [b["name"], *b["aliases"]] for b in world.lexicon["brands"]}
    new_spelled = {s["query"] for s in world.searches if s["new_spelling"]}
    for q, t in world.queries.items():
        nq = normalize(world.spelled(q))
        brand = brand_words.get(t["brand"], []) + [world.spellings["new_spellings"].get(t["brand"])] * (q in new_spelled)
        assert any(normalize(w) in nq for w in leaf_words[t["leaf_category"]]), q
        assert not t["brand"] or any(normalize(w) in nq for w in brand), q
        assert t["colour"] in nq and t["style"] in nq, q
        assert t["top_category"] == next(c["top_category"] for c in world.lexicon["leaf_categories"]
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
        nq = normalize(tiny.spelled(q))
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


def test_phenomena_appear_at_their_configured_shares(small):
    s = small.searches
    assert len(s) == small.summary["searches"]
    branded_test_day = [x for x in s if x["ts"] >= small.test_day_ts and small.queries[x["query"]]["brand"]]
    shares = {
        "typo": sum(x["typo"] for x in s) / len(s),
        "new_spelling": sum(x["new_spelling"] for x in branded_test_day) / len(branded_test_day),
        "history_intent": sum(x["history_intent"] for x in s) / len(s),
    }
    assert shares == pytest.approx(small.summary["phenomena"]["realised"], abs=1e-12)
    # ~27k searches: sd ~0.002 for typo and history intent; ~230 branded test-day searches: sd ~0.024.
    assert abs(shares["typo"] - synth.TYPO) < 0.008
    assert abs(shares["history_intent"] - synth.HISTORY_INTENT) < 0.01
    assert abs(shares["new_spelling"] - synth.NEW_SPELLING) < 0.08
    # Misspelled brands and misspelled category words; brands from the session and from taste.
    brand_words = {normalize(w) for b in small.lexicon["brands"] for w in (b["name"], *b["aliases"])}
    brand_typos = sum(normalize(x["typo_of"]) in brand_words for x in s if x["typo"])
    assert 0.1 < brand_typos / sum(x["typo"] for x in s) < 0.5
    sources = collections.Counter(x["history_source"] for x in s if x["history_intent"])
    assert sources["session"] > 300 and sources["favourite"] > 300


@pytest.mark.parametrize("knob", ["typo", "new_spelling", "history_intent"])
def test_a_phenomenon_is_absent_when_its_knob_is_zero(tmp_path, knob):
    out = str(tmp_path)
    others = {"typo", "new_spelling", "history_intent"} - {knob}
    # The others raised, so that even the tiny world's ~70 test-day searches carry new spellings.
    summary = synth.generate(out, scale="tiny", seed=SEED, progress=False, **{knob: 0.0}, **dict.fromkeys(others, 0.5))
    w = World(out, summary, events=False)
    assert not any(x[knob] for x in w.searches)
    assert summary["phenomena"]["searches"][knob] == 0
    assert all(summary["phenomena"]["searches"][k] > 0 for k in others)  # only this one is switched off
    _assert_intents_are_written(w)  # and no unflagged misspelling or new spelling slipped in


def test_misspelled_queries_tokenise_to_an_unseen_word_sharing_characters(tiny):
    tok = _tokenizer(tiny)
    typos = [x for x in tiny.searches if x["typo"]]
    assert len(typos) > 100
    variants = collections.defaultdict(set)
    shares_bigram = 0
    for x in typos:
        q, wrong, right = x["query"], x["typo_word"], x["typo_of"]
        assert wrong in q and normalize(wrong) != normalize(right), x
        correct = tiny.spelled(q)
        # jieba sees a word the right spelling does not have; characters still match.
        assert set(tok.words(q)) - set(tok.words(correct)), (q, correct)
        assert set(normalize(wrong)) & set(normalize(right)), x
        shares_bigram += bool(_bigrams(q) & _bigrams(correct))
        variants[normalize(right)].add(normalize(wrong))
    assert shares_bigram > 0.5 * len(typos)
    # Stable: a word has a few fixed misspellings (listed in truth/spellings.json), reused across searches.
    listed = {normalize(k): {normalize(v) for v in vs} for k, vs in tiny.spellings["misspellings"].items()}
    assert all(v <= listed[k] and len(v) <= synth.TYPO_VARIANTS for k, v in variants.items())
    assert len({x["typo_word"] for x in typos}) < 0.8 * len(typos)


def test_new_spellings_appear_only_on_the_test_day(small):
    tok = _tokenizer(small)
    new = small.spellings["new_spellings"]
    for b in small.lexicon["brands"]:  # an abbreviation: characters and a bigram of the name or alias
        spelling = new[b["name"]]
        assert _bigrams(spelling) & (_bigrams(b["name"]) | set().union(*map(_bigrams, b["aliases"]))), spelling
    flagged = [x for x in small.searches if x["new_spelling"]]
    assert len(flagged) > 15 and all(x["ts"] >= small.test_day_ts for x in flagged)
    seen = {w for i in small.items for w in tok.words(i.title)}
    for q in {x["query"] for x in small.searches if x["ts"] < small.test_day_ts}:
        words = set(tok.words(q))
        assert not words & {normalize(v) for v in new.values()}, q
        seen |= words
    for x in flagged:
        assert normalize(new[small.queries[x["query"]]["brand"]]) in normalize(x["query"]), x
        assert set(tok.words(x["query"])) - seen, x  # a word never seen in a title or an earlier query


def test_history_intents_name_the_category_and_click_the_remembered_brand(tiny):
    hist = [x for x in tiny.searches if x["history_intent"]]
    assert len(hist) > 100
    clicks, session = collections.defaultdict(list), collections.defaultdict(list)
    for e in tiny.search_clicks():
        clicks[(e.user_id, e.ts, e.query)].append(e.item_id)
    for x in tiny.searches:
        session[x["session_id"]].append(x)
    # A user's brands per top category in all their other sessions: what their behaviours show.
    brands, own = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for e in tiny.events:
        it = tiny.truth_items[e.item_id]
        brands[(e.user_id, it["top_category"])][it["brand"]] += bool(it["brand"])
        own[(e.session_id, it["top_category"])][it["brand"]] += bool(it["brand"])
    favourite = favourite_is_top = 0
    for x in hist:
        t = tiny.queries[x["query"]]
        assert (t["brand"], t["colour"], t["style"]) == ("", "", ""), x  # the query names only the category
        relevant = [i for i in clicks[(x["user_id"], x["ts"], x["query"])] if tiny.relevant(i, x["query"])]
        assert relevant and {tiny.truth_items[i]["brand"] for i in relevant} == {x["history_brand"]}, x
        if x["history_source"] == "session":
            named = [tiny.queries[y["query"]]["brand"] for y in session[x["session_id"]] if y["ts"] < x["ts"]]
            assert [b for b in named if b][-1] == x["history_brand"], x  # the latest brand the session named
        else:
            favourite += 1
            top = tiny.queries[x["query"]]["top_category"]
            counts = brands[(x["user_id"], top)] - own[(x["session_id"], top)]
            favourite_is_top += bool(counts) and counts.most_common(1)[0][0] == x["history_brand"]
    # The favourite brand is the one the user's other sessions show most (of 5 per top category).
    assert favourite > 100 and favourite_is_top > 0.6 * favourite


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
    with pytest.raises(ValueError, match="typo"):
        synth.generate(str(tmp_path), typo=1.5)
    with pytest.raises(ValueError, match="history_intent"):
        synth.generate(str(tmp_path), history_intent=-0.1)


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
    # The per-search truth is written chunk by chunk too, one row per search.
    assert os.path.exists(tmp_path / "truth" / "searches.parquet")
    assert {(s["user_id"], s["ts"], s["query"]) for s in w.searches} == {
        (e.user_id, e.ts, e.query) for e in w.events if e.query}
    assert len(w.searches) == summary["searches"]


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--scale", "tiny", "--seed", "1", "--out", str(tmp_path), "--format", "csv",
                              "--noise", "0.1", "--typo", "0.2", "--new-spelling", "0", "--history-intent", "0.3",
                              "--no-progress"])
    assert synth.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["noise"] == 0.1 and os.path.exists(tmp_path / "events.csv")
    ph = summary["phenomena"]
    assert (ph["typo"], ph["new_spelling"], ph["history_intent"]) == (0.2, 0.0, 0.3)
    assert ph["searches"]["new_spelling"] == 0 and ph["searches"]["typo"] > 0
    assert os.path.exists(tmp_path / "truth" / "searches.jsonl")
    defaults = parser.parse_args(["--out", str(tmp_path)])
    assert (defaults.typo, defaults.new_spelling, defaults.history_intent) == (0.08, 0.15, 0.1)


@pytest.mark.slow
def test_small_scale_sizes(tmp_path):
    summary = synth.generate(str(tmp_path), scale="small", seed=7, fmt="parquet", progress=False)
    assert summary["items"] == 3000 and summary["users"] == 600
    assert 50_000 <= summary["events"] <= 80_000
    assert abs(summary["noise_realised"] - 0.2) < 0.01


def test_a_world_from_before_the_phenomena_is_not_reused(tmp_path):
    """prepare_data reuses a world only if it was made with today's phenomena."""
    import json

    from pipeline import synth
    from pipeline.prepare import _world_matches

    world = {"scale": "tiny", "seed": 7}
    (tmp_path / "world.json").write_text(json.dumps(world), encoding="utf-8")
    assert not _world_matches(str(tmp_path), "tiny", 7)
    world["phenomena"] = {"typo": synth.TYPO, "new_spelling": synth.NEW_SPELLING, "history_intent": synth.HISTORY_INTENT}
    (tmp_path / "world.json").write_text(json.dumps(world), encoding="utf-8")
    assert _world_matches(str(tmp_path), "tiny", 7)
    assert not _world_matches(str(tmp_path), "tiny", 8)
