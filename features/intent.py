"""Query understanding for the relevance control: the brand and category intents a query
names, found by dictionary match of the catalog's brand and category names in the query's
words. Items whose structured fields contradict an intent are filtered out after
retrieval (the paper's relevance control module; the share that survives is our Num_prank).

    intents = IntentMatcher.from_vocab_dir("OUT/vocab")
    q = intents.match("阿迪达斯 跑步鞋 男")   # QueryIntent(brands={'阿迪达斯'}, leaf_cats={'跑步鞋'}, ...)
    q.passes(brand="耐克", leaf_cat="跑步鞋", top_cat="运动鞋")   # False: wrong brand

Names are compared after `features.tokenizer.normalize` (case, width, punctuation), and a
name may span several query words ("new balance", or a name jieba splits in two), so every
run of up to `max_span` consecutive words is tried, longest first, left to right, without
overlap. Serving loads the same matcher from the exported vocabulary directory.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from features.io import exists, join, read_lines, read_text, write_text
from features.tokenizer import Tokenizer, normalize

# The vocabularies whose tokens are catalog names, by intent kind.
INTENT_VOCABS = {"brand": "brand", "leaf_cat": "leaf_cat", "top_cat": "top_cat"}
MAX_SPAN = 4
# Title words become aliases of a brand / leaf category when at least this many catalog
# items carry them and at least this share of those items has that one value.
ALIAS_MIN_ITEMS = 3
ALIAS_MIN_PURITY = 0.9


@dataclass(frozen=True)
class QueryIntent:
    """The catalog values a query names, per field (raw catalog spelling). An empty set
    means the query says nothing about that field, so it constrains nothing."""

    brands: frozenset = field(default_factory=frozenset)
    leaf_cats: frozenset = field(default_factory=frozenset)
    top_cats: frozenset = field(default_factory=frozenset)
    # Words with several readings that the rest of the query does not settle (a brand that
    # is also a category name): one frozenset of (kind, name) per word; any reading passes.
    either: tuple = ()
    # Names read as ordinary words: a brand the catalog never sells in the query's category.
    ignored: frozenset = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return not (self.brands or self.leaf_cats or self.top_cats or self.either)

    def passes(self, brand: str, leaf_cat: str, top_cat: str) -> bool:
        """True when an item with these fields matches every intent the query names."""
        if self.brands and brand not in self.brands:
            return False
        if self.leaf_cats and leaf_cat not in self.leaf_cats:
            return False
        if self.top_cats and top_cat not in self.top_cats:
            return False
        fields = {"brands": brand, "leaf_cats": leaf_cat, "top_cats": top_cat}
        return all(any(fields[kind] == name for kind, name in readings) for readings in self.either)

    def mask(self, brand, leaf_cat, top_cat):
        """`passes` over aligned arrays of many items at once: bool [n]."""
        import numpy as np

        fields = {"brands": np.asarray(brand, dtype=object), "leaf_cats": np.asarray(leaf_cat, dtype=object),
                  "top_cats": np.asarray(top_cat, dtype=object)}
        keep = np.ones(len(fields["brands"]), dtype=bool)
        for kind, values in fields.items():
            wanted = getattr(self, kind)
            if wanted:
                keep &= np.isin(values, list(wanted))
        for readings in self.either:
            any_reading = np.zeros(len(keep), dtype=bool)
            for kind, name in readings:
                any_reading |= fields[kind] == name
            keep &= any_reading
        return keep

    def to_dict(self) -> dict:
        out = {k: sorted(getattr(self, k)) for k in ("brands", "leaf_cats", "top_cats")}
        if self.either:
            out["either"] = [sorted(f"{k}:{n}" for k, n in r) for r in self.either]
        if self.ignored:
            out["ignored"] = sorted(self.ignored)
        return out


class IntentMatcher:
    """Dictionary matcher over catalog brand, leaf-category and top-category names, and
    optionally over aliases mined from the catalog's titles (see `from_catalog`)."""

    def __init__(
        self,
        brands: Iterable[str] = (),
        leaf_cats: Iterable[str] = (),
        top_cats: Iterable[str] = (),
        tokenizer: Tokenizer | None = None,
        max_span: int = MAX_SPAN,
        aliases: Mapping[str, Mapping[str, str]] | None = None,
        brand_leafs: Mapping[str, Iterable[str]] | None = None,
        leaf_tops: Mapping[str, str] | None = None,
    ):
        # normalized name -> raw catalog names (two raw spellings may normalize alike)
        self.names: dict[str, dict[str, set[str]]] = {"brands": {}, "leaf_cats": {}, "top_cats": {}}
        for kind, values in (("brands", brands), ("leaf_cats", leaf_cats), ("top_cats", top_cats)):
            for raw in values:
                key = normalize(raw)
                if key:
                    self.names[kind].setdefault(key, set()).add(raw)
        # kind -> {alias: raw catalog name}; an alias never shadows a real name
        self.aliases: dict[str, dict[str, str]] = {"brands": {}, "leaf_cats": {}, "top_cats": {}}
        for kind, table in (aliases or {}).items():
            for alias, raw in table.items():
                key = normalize(alias)
                if key and not any(key in t for t in self.names.values()):
                    self.aliases[kind][key] = raw
                    self.names[kind].setdefault(key, set()).add(raw)
        # What the catalog sells, for telling a brand from a common word: brand -> its leaf
        # categories, leaf -> top category. Empty when unknown (then no reading is dropped).
        self.brand_leafs = {b: frozenset(ls) for b, ls in (brand_leafs or {}).items()}
        self.leaf_tops = dict(leaf_tops or {})
        all_names = {n for table in self.names.values() for n in table}
        # With the names in jieba's user dictionary, a name stays one word where it can.
        self.tokenizer = tokenizer or Tokenizer(all_names)
        self.max_span = max_span

    @classmethod
    def from_vocab_dir(cls, vocab_dir: str, tokenizer: Tokenizer | None = None) -> "IntentMatcher":
        """Builds the matcher from the brand / leaf_cat / top_cat vocabularies the pipeline
        wrote (their tokens are the catalog's names)."""
        values = {}
        for kind, vocab in INTENT_VOCABS.items():
            path = join(vocab_dir, f"{vocab}.txt")
            if not exists(path):
                raise FileNotFoundError(f"no {vocab} vocabulary at {path}; run `ebr preprocess` first")
            values[kind] = read_lines(path)
        return cls(values["brand"], values["leaf_cat"], values["top_cat"], tokenizer)

    @classmethod
    def from_items(cls, items: Iterable[Mapping[str, str]], tokenizer: Tokenizer | None = None) -> "IntentMatcher":
        """From catalog records with `brand`, `leaf_cat` (or `leaf_category`) and `top_cat`
        (or `top_category`)."""
        brands, leafs, tops = set(), set(), set()
        brand_leafs: dict[str, set] = defaultdict(set)
        leaf_tops: dict[str, str] = {}
        for item in items:
            brand = item.get("brand") or ""
            leaf = item.get("leaf_cat") or item.get("leaf_category") or ""
            top = item.get("top_cat") or item.get("top_category") or ""
            brands.add(brand)
            leafs.add(leaf)
            tops.add(top)
            if brand and leaf:
                brand_leafs[brand].add(leaf)
            if leaf and top:
                leaf_tops.setdefault(leaf, top)
        return cls(brands, leafs, tops, tokenizer, brand_leafs=brand_leafs, leaf_tops=leaf_tops)

    @classmethod
    def from_catalog(
        cls,
        items: Iterable[Mapping],
        min_items: int = ALIAS_MIN_ITEMS,
        min_purity: float = ALIAS_MIN_PURITY,
    ) -> "IntentMatcher":
        """Catalog names plus aliases mined from titles: a title word (two characters or
        more, not itself a name) carried by >= `min_items` items of which >= `min_purity`
        share one brand becomes that brand's alias ("huawei" -> 华为); failing that, one
        leaf category's ("裙子" -> 连衣裙). Records need brand, leaf_cat and top_cat (or the
        raw contract's *_category) and `title_words` (a list) or `title` (raw text)."""
        items = list(items)
        base = cls.from_items(items)
        n_items: Counter = Counter()
        by_brand: dict[str, Counter] = defaultdict(Counter)
        by_leaf: dict[str, Counter] = defaultdict(Counter)
        for item in items:
            words = item.get("title_words")
            if words is None:
                words = base.tokenizer.words(item.get("title") or "")
            leaf = item.get("leaf_cat") or item.get("leaf_category") or ""
            for w in {normalize(w) for w in words}:
                n_items[w] += 1
                by_brand[w][item.get("brand") or ""] += 1
                by_leaf[w][leaf] += 1
        known = {n for t in base.names.values() for n in t}
        aliases: dict[str, dict[str, str]] = {"brands": {}, "leaf_cats": {}}
        for w, n in n_items.items():
            if n < min_items or len(w) < 2 or w in known or " " in w:
                continue
            brand, nb = by_brand[w].most_common(1)[0]
            leaf, nl = by_leaf[w].most_common(1)[0]
            if brand and nb / n >= min_purity:
                aliases["brands"][w] = brand
            elif leaf and nl / n >= min_purity:
                aliases["leaf_cats"][w] = leaf
        names = {k: {r for rs in t.values() for r in rs} for k, t in base.names.items()}
        return cls(names["brands"], names["leaf_cats"], names["top_cats"], aliases=aliases,
                   brand_leafs=base.brand_leafs, leaf_tops=base.leaf_tops)

    def to_json(self) -> str:
        """Names and aliases, for `from_json` (serving loads the matcher eval used)."""
        names = {k: sorted({r for rs in t.values() for r in rs}) for k, t in self.names.items()}
        for kind, table in self.aliases.items():  # aliases are stored apart, not as names
            names[kind] = sorted(set(names[kind]) - set(table.values()) | {
                r for key, rs in self.names[kind].items() if key not in table for r in rs})
        return json.dumps({"names": names, "aliases": self.aliases,
                           "brand_leafs": {b: sorted(ls) for b, ls in self.brand_leafs.items()},
                           "leaf_tops": self.leaf_tops}, ensure_ascii=False, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "IntentMatcher":
        d = json.loads(text)
        n = d["names"]
        return cls(n["brands"], n["leaf_cats"], n["top_cats"], aliases=d.get("aliases"),
                   brand_leafs=d.get("brand_leafs"), leaf_tops=d.get("leaf_tops"))

    def save(self, path: str) -> None:
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "IntentMatcher":
        if not exists(path):
            raise FileNotFoundError(f"no intent dictionary at {path}")
        return cls.from_json(read_text(path))

    def match(self, query: str) -> QueryIntent:
        """The intents named in `query` (raw text; it is normalized and segmented here).

        Each matched word gives its readings, (kind, catalog name) pairs. A word with one
        kind of reading is an intent. When the catalog's brand -> category knowledge is
        there, a brand that sells in none of the query's named categories is read as an
        ordinary word ("苹果 水果": fruit, not the phone maker) and ignored, and a word
        that names both a brand and a category keeps the readings consistent with the
        rest of the query: one left is an intent, several become an `either`."""
        words = self.tokenizer.words(query)
        spans: list[set[tuple[str, str]]] = []
        i = 0
        while i < len(words):
            step = 1
            for span in range(min(self.max_span, len(words) - i), 0, -1):
                piece = words[i : i + span]
                readings = set()
                # Chinese names are written without spaces, Latin ones with; try both.
                for key in {"".join(piece), " ".join(piece)}:
                    for kind, table in self.names.items():
                        readings |= {(kind, raw) for raw in table.get(key, ())}
                if readings:
                    spans.append(readings)
                    step = span
                    break
            i += step
        return self._resolve(spans)

    def _consistent(self, kind: str, name: str, fixed: dict) -> bool:
        """Whether reading (kind, name) can hold together with the settled intents."""
        if not (self.brand_leafs and self.leaf_tops):
            return True
        if kind == "brands":
            sells = self.brand_leafs.get(name, frozenset())
            if fixed["leaf_cats"] and not sells & fixed["leaf_cats"]:
                return False
            return not fixed["top_cats"] or any(self.leaf_tops.get(leaf) in fixed["top_cats"] for leaf in sells)
        if kind == "leaf_cats":
            if fixed["leaf_cats"] and name not in fixed["leaf_cats"]:
                return False
            if fixed["top_cats"] and self.leaf_tops.get(name) not in fixed["top_cats"]:
                return False
            return not fixed["brands"] or any(name in self.brand_leafs.get(b, ()) for b in fixed["brands"])
        # a top category
        if fixed["top_cats"] and name not in fixed["top_cats"]:
            return False
        return not fixed["leaf_cats"] or any(self.leaf_tops.get(leaf) == name for leaf in fixed["leaf_cats"])

    def _resolve(self, spans: list[set[tuple[str, str]]]) -> QueryIntent:
        fixed: dict[str, set[str]] = {"brands": set(), "leaf_cats": set(), "top_cats": set()}
        ambiguous = []
        for readings in spans:
            kinds = {k for k, _ in readings}
            if len(kinds) == 1:
                fixed[next(iter(kinds))] |= {n for _, n in readings}
            else:
                ambiguous.append(readings)
        ignored = set()
        # Categories settle first; a brand that sells in none of them is an ordinary word.
        for brand in sorted(fixed["brands"]):
            if not self._consistent("brands", brand, {**fixed, "brands": set()}):
                fixed["brands"].discard(brand)
                ignored.add(brand)
        either = []
        for readings in ambiguous:
            kept = {(k, n) for k, n in readings if self._consistent(k, n, fixed)}
            if not kept:
                ignored |= {n for _, n in readings}
            elif len({k for k, _ in kept}) == 1:
                fixed[next(iter(kept))[0]] |= {n for _, n in kept}
            else:
                either.append(frozenset(kept))
        return QueryIntent(frozenset(fixed["brands"]), frozenset(fixed["leaf_cats"]), frozenset(fixed["top_cats"]),
                           tuple(either), frozenset(ignored))
