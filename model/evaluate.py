"""Evaluate a trained model the way the paper does, on the test window (the day after the
training days) against the full item pool.

    ebr eval --data data/small/processed --model-dir runs/small --out reports/small

For every test search (examples grouped by search_id; the search's clicked or purchased
items are its ground truth) the user tower embeds the query and user, the item tower embeds
every item in `DATA/items/`, and the exact top-K by inner product is found by brute force.

  Recall@K      share of the search's positives found in its top-K, averaged over searches
  P_good@K      share of the top-K relevant to the query by the synthetic ground truth
                (`--truth`, default `RAW/truth` next to the processed dir): the item's leaf
                category is the query's, and its brand too when the query names one
  Filter pass   share of the top-K that pass the relevance control: the brand / category
                intents `features.intent` finds in the query by dictionary match of the
                catalog's names and of aliases mined from its titles (our Num_prank)

Writes OUT/metrics.json, OUT/metrics.png and OUT/intents.json (the relevance control's
dictionary), and prints a table.
"""
from __future__ import annotations

import json
import logging
import os
import time
import weakref

DEFAULT_KS = (50, 200, 1000)
log = logging.getLogger("ebr.eval")


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="processed dir (test/, items/, vocab/)")
    p.add_argument("--model-dir", required=True, help="a trained model dir (config.json, train_info.json, checkpoints/)")
    p.add_argument("--out", required=True, help="where metrics.json and metrics.png go")
    p.add_argument("--truth", default=None,
                   help="ground-truth dir with queries.jsonl and items.jsonl (default: RAW/truth next to DATA)")
    p.add_argument("--k", default=",".join(map(str, DEFAULT_KS)), help="comma-separated cut-offs (default 50,200,1000)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint path (default: the final one in train_info.json)")
    p.add_argument("--batch-size", type=int, default=256, help="searches scored per matmul (default 256)")


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in str(text).split(",") if k.strip()}))
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k needs positive cut-offs, got {text!r}")
    return ks


def default_truth_dir(data_dir: str) -> str | None:
    """`data/small/raw/truth` for `data/small/processed`, when it exists."""
    parent = os.path.dirname(os.path.abspath(data_dir.rstrip("/")))
    for cand in (os.path.join(parent, "raw", "truth"), os.path.join(parent, "truth")):
        if os.path.isdir(cand):
            return cand
    return None


def read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON: {e.msg}") from None
    return out


class Truth:
    """Synthetic ground truth: the intent behind each query and the true fields of items."""

    def __init__(self, truth_dir: str):
        from features.tokenizer import normalize

        self.dir, self._flags = truth_dir, None
        qpath, ipath = os.path.join(truth_dir, "queries.jsonl"), os.path.join(truth_dir, "items.jsonl")
        if not os.path.exists(qpath):
            raise FileNotFoundError(f"no {qpath}; --truth must hold the generator's queries.jsonl")
        self.queries: dict[str, dict] = {}
        for n, q in enumerate(read_jsonl(qpath), 1):
            if "query" not in q or "leaf_category" not in q:
                raise ValueError(f"{qpath}:{n}: needs 'query' and 'leaf_category'")
            self.queries[normalize(q["query"])] = q
        self.items: dict[str, dict] = {}
        if os.path.exists(ipath):
            for n, it in enumerate(read_jsonl(ipath), 1):
                if "item_id" not in it:
                    raise ValueError(f"{ipath}:{n}: needs 'item_id'")
                self.items[str(it["item_id"])] = it

    def query(self, text: str) -> dict | None:
        from features.tokenizer import normalize

        return self.queries.get(normalize(text))

    def search_flags(self) -> dict:
        """{(user_id, ts): {phenomenon: bool}} from the per-search truth
        (`searches.jsonl` or `searches.parquet`), or {} when the world has none."""
        if self._flags is None:
            self._flags = {}
            jsonl, parquet = (os.path.join(self.dir, f"searches.{ext}") for ext in ("jsonl", "parquet"))
            if os.path.exists(jsonl):
                rows = read_jsonl(jsonl)
            elif os.path.exists(parquet):
                import pyarrow.parquet as pq

                rows = pq.read_table(parquet, columns=["user_id", "ts", *SEARCH_PHENOMENA]).to_pylist()
            else:
                rows = []
            for r in rows:
                self._flags[(str(r["user_id"]), int(r["ts"]))] = {k: bool(r.get(k)) for k in SEARCH_PHENOMENA}
        return self._flags

    def true_fields(self, fields) -> tuple:
        """(leaf categories, brands) of a pool's items (its raw fields) by their true
        attributes, as `relevant` reads them: two object arrays [N]."""
        import numpy as np

        leafs, brands = [], []
        for item_id, leaf, brand in zip(fields["item_id"], fields["leaf_cat"], fields["brand"]):
            t = self.items.get(str(item_id))
            leafs.append(leaf if t is None else t.get("leaf_category", leaf))
            brands.append(brand if t is None else t.get("brand", brand) or "")
        return np.array(leafs, dtype=object), np.array(brands, dtype=object)

    @staticmethod
    def pool_counts(true_leafs, true_brands) -> tuple[dict, dict]:
        """(items per leaf, items per (leaf, brand)) of a pool, from its `true_fields`:
        how many relevant items a query can find there."""
        from collections import Counter

        return dict(Counter(true_leafs)), dict(Counter(zip(true_leafs, true_brands)))

    def relevant_in_pool(self, q: dict, counts: tuple[dict, dict]) -> int:
        """Items of the pool relevant to query intent `q` (`counts` from `pool_counts`)."""
        leafs, brands = counts
        want = q.get("brand") or ""
        return brands.get((q["leaf_category"], want), 0) if want else leafs.get(q["leaf_category"], 0)

    def relevant(self, q: dict, item_id: str, leaf_cat: str, brand: str) -> bool:
        """The item's leaf category is the query's, and so is its brand when the query names one."""
        t = self.items.get(item_id)
        if t is not None:
            leaf_cat = t.get("leaf_category", leaf_cat)
            brand = t.get("brand", brand) or ""
        if leaf_cat != q["leaf_category"]:
            return False
        want = q.get("brand") or ""
        return not want or brand == want


# ---------------------------------------------------------------------------------------
# Model loading and embedding


def embed_items(model, data_dir: str, batch_size: int = 1024):
    """Item tower over every item of `DATA/items/`: (embeddings [N, d] float32, fields)
    where fields holds the raw item_id, brand, leaf_cat, top_cat string arrays [N] and
    title_words [N] (tuples of words)."""
    import numpy as np
    import tensorflow as tf

    from features.spec import ITEM_FEATURE_NAMES, parse_examples
    from model.data import split_files, vocab_dir
    from model.lookup import Lookup

    lookup = Lookup(vocab_dir(data_dir), getattr(model, "config", None))
    ds = tf.data.TFRecordDataset(split_files(data_dir, "items"), compression_type="GZIP")
    ds = ds.batch(batch_size).map(lambda s: parse_examples(s, ITEM_FEATURE_NAMES)).prefetch(2)
    embs, fields, titles = [], {k: [] for k in ("item_id", "brand", "leaf_cat", "top_cat")}, []
    for raw in ds:
        embs.append(model.item_tower(lookup(raw), training=False).numpy())
        for k in fields:
            fields[k].append(raw[k].numpy())
        titles += [tuple(w.decode("utf-8") for w in row if w) for row in raw["title_words"].numpy()]
    emb = np.concatenate(embs).astype(np.float32)
    fields = {k: np.array([b.decode("utf-8") for b in np.concatenate(v)], dtype=object) for k, v in fields.items()}
    fields["title_words"] = np.empty(len(titles), dtype=object)
    fields["title_words"][:] = titles
    _, first = np.unique(fields["item_id"], return_index=True)
    if len(first) != len(emb):  # the pool must hold each item once, or top-K double counts
        first = np.sort(first)
        emb, fields = emb[first], {k: v[first] for k, v in fields.items()}
    return emb, fields


_TOWERS = weakref.WeakKeyDictionary()


def _user_tower_fn(model, vocab: str, batch_size: int):
    """A compiled `strings -> lookup -> user tower` for batches of `batch_size`, kept per
    model and vocabulary, so that repeated evaluations during training trace it once (run
    eagerly, the tower's ops cost more to dispatch than to compute)."""
    import tensorflow as tf

    from features.spec import USER_FEATURES
    from model.lookup import Lookup

    key = (vocab, batch_size)
    cached = _TOWERS.setdefault(model, {})
    if key not in cached:
        lookup = Lookup(vocab, getattr(model, "config", None))
        spec = {f.name: tf.TensorSpec([batch_size, *f.shape], tf.as_dtype(f.dtype)) for f in USER_FEATURES}
        owner = weakref.ref(model)  # a strong reference here would keep the cache entry forever

        @tf.function(input_signature=[spec])
        def tower(user):
            return owner().user_tower(lookup(user), training=False)

        cached[key] = tower
    return cached[key]


def read_searches(data_dir: str, batch_size: int = 256, select=None, info: list | None = None):
    """The test window's searches as the user tower reads them: (features {name: [S, ...]}
    of the first example of each search, queries [S], positives: S sets of item ids).
    Reading is over a third of a validation point's time on the medium world (1.5 of 4 s),
    so a caller that evaluates again and again (a run's validation points) reads once.
    `select` and `info` as in `embed_searches`."""
    import numpy as np
    import tensorflow as tf

    from features.spec import USER_FEATURE_NAMES, parse_examples
    from model.data import split_files

    names = USER_FEATURE_NAMES + ("search_id", "query", "item_id", "user_id", "ts")
    ds = tf.data.TFRecordDataset(split_files(data_dir, "test"), compression_type="GZIP")
    ds = ds.batch(batch_size).map(lambda s: parse_examples(s, names)).prefetch(2)
    index: dict[str, int] = {}
    chosen, queries, positives = {k: [] for k in USER_FEATURE_NAMES}, [], []
    for raw in ds:
        sids = [s.decode("utf-8") for s in raw["search_id"].numpy()]
        items = [s.decode("utf-8") for s in raw["item_id"].numpy()]
        qs = [s.decode("utf-8") for s in raw["query"].numpy()]
        new, seen = [], set()
        for i, s in enumerate(sids):  # the first example of each search carries its user features
            if s not in index and s not in seen and (select is None or select(s)):
                seen.add(s)
                new.append(i)
        if new:
            for k in USER_FEATURE_NAMES:
                chosen[k].append(raw[k].numpy()[new])
            if info is not None:
                words = raw["query_words"].numpy()
                long_term = (raw["lt_item_id"].numpy() != b"").sum(axis=1)
                users, times = raw["user_id"].numpy(), raw["ts"].numpy()
            for i in new:
                index[sids[i]] = len(queries)
                queries.append(qs[i])
                positives.append(set())
                if info is not None:
                    info.append({"search_id": sids[i], "long_term": int(long_term[i]),
                                 "user_id": users[i].decode("utf-8"), "ts": int(times[i]),
                                 "query_words": tuple(w.decode("utf-8") for w in words[i] if w)})
        for s, it in zip(sids, items):
            if s in index:
                positives[index[s]].add(it)
    if not queries:
        raise ValueError(f"no test examples in {data_dir}/test")
    return {k: np.concatenate(v) for k, v in chosen.items()}, queries, positives


def embed_searches(model, data_dir: str, batch_size: int = 256, select=None, info: list | None = None,
                   searches=None):
    """User tower over the test window, one row per search: (embeddings [S, d], queries [S],
    positives: list of S sets of item ids). Examples are grouped by search_id.

    `select(search_id) -> bool` keeps a subset of the searches; a list passed as `info`
    receives one dict per search: search_id, user_id, ts, query_words (tuple) and
    long_term (how many long-term behaviours the user had), for slicing the metrics.
    `searches`: what `read_searches` returned, to embed without reading again."""
    import numpy as np

    from model.data import vocab_dir

    tower = _user_tower_fn(model, vocab_dir(data_dir), batch_size)
    chosen, queries, positives = searches or read_searches(data_dir, batch_size, select, info)
    embs = []
    for start in range(0, len(queries), batch_size):
        rows = np.arange(start, min(start + batch_size, len(queries)))
        # The last batch is padded (repeating a row): one traced graph serves every call.
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        embs.append(tower({k: v[padded] for k, v in chosen.items()}).numpy()[: len(rows)])
    return np.concatenate(embs).astype(np.float32), queries, positives


def top_k(users, items, k: int, batch_size: int = 256):
    """Exact top-k item indices by inner product: [S, k] int, best first (batched matmul)."""
    import numpy as np
    import tensorflow as tf

    k = min(k, items.shape[0])
    item_t = tf.constant(items)
    out = []
    for start in range(0, users.shape[0], batch_size):
        scores = tf.matmul(tf.constant(users[start : start + batch_size]), item_t, transpose_b=True)
        out.append(tf.math.top_k(scores, k=k, sorted=True).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


# ---------------------------------------------------------------------------------------
# Metrics


def retrieval_metrics(topk, item_fields, queries, positives, ks, truth=None, intents=None, slices=None) -> dict:
    """Recall@K, P_good@K and filter pass share@K, averaged over searches.

    topk [S, >= max(ks)] item indices; item_fields: raw string arrays [N]; queries [S];
    positives: S sets of item ids. P_good is averaged over searches whose query has ground
    truth, beside its ceiling `p_good_ceiling`: per query min(K, relevant items in the
    pool) / K, the best any model could score. The filter pass share is over all searches
    (a query without intents passes all). `slices` {name: [S] bool} adds `slices[name]`
    with the same metrics over that subset of the searches.

    With the ground truth, Recall@K is also split by the clicks' relevance to the query:
    `recall_relevant` over the positives the truth calls relevant, `recall_irrelevant`
    over the others (noisy clicks), each averaged over the searches that have such
    positives, and `positives_relevant` is the mean share of a search's positives that
    are relevant. A model that ranks only relevant items can raise Recall@K no higher
    than the relevant clicks allow plus what it finds of the noise."""
    import numpy as np

    ids, brands, leafs, tops = (item_fields[k] for k in ("item_id", "brand", "leaf_cat", "top_cat"))
    kmax = topk.shape[1]
    ks = [k for k in ks if k <= kmax] or [kmax]
    # One row of [len(ks)] values per search (NaN where it has no ground truth or no
    # intents): the overall figures and every slice are means over these.
    rows = {key: np.full((len(queries), len(ks)), np.nan)
            for key in ("recall", "p_good", "p_good_ceiling", "filter_pass", "recall_relevant", "recall_irrelevant")}
    relevant_share = []
    # Every per-item test compares a whole top-K row at once (a Python call per retrieved
    # item was most of the 41 s an evaluation took at 5,662 searches x K = 1000).
    position = {item_id: i for i, item_id in enumerate(ids)}
    ends = np.asarray(ks) - 1
    if truth is not None:
        true_leafs, true_brands = truth.true_fields(item_fields)
        counts = truth.pool_counts(true_leafs, true_brands)

        def relevant(at, q: dict):
            """Whether the pool's items at `at` (an index or an array of them) are relevant to q."""
            ok = true_leafs[at] == q["leaf_category"]
            if q.get("brand"):
                ok &= true_brands[at] == q["brand"]
            return ok

    with_truth = with_intent = 0
    for s, (row, query, pos) in enumerate(zip(topk, queries, positives)):
        found = [position[p] for p in pos if p in position]
        hits = np.cumsum(np.isin(row, found))
        rows["recall"][s] = hits[ends] / len(pos)
        if truth is not None:
            q = truth.query(query)
            if q is not None:
                with_truth += 1
                rel = relevant(row, q)
                n_rel = truth.relevant_in_pool(q, counts)
                rows["p_good"][s] = np.cumsum(rel)[ends] / np.asarray(ks)
                rows["p_good_ceiling"][s] = [min(k, n_rel) / k for k in ks]
                # The positives split as P_good judges items (one outside the pool by the truth alone).
                good = [bool(relevant(position[p], q)) if p in position else truth.relevant(q, p, "", "")
                        for p in pos]
                relevant_share.append(sum(good) / len(pos))
                for key, want in (("recall_relevant", True), ("recall_irrelevant", False)):
                    group = [p for p, g in zip(pos, good) if g == want]
                    if group:
                        hit = np.cumsum(np.isin(row, [position[p] for p in group if p in position]))
                        rows[key][s] = hit[ends] / len(group)
        if intents is not None:
            intent = intents.match(query)
            with_intent += not intent.empty
            rows["filter_pass"][s] = np.cumsum(intent.mask(brands[row], leafs[row], tops[row]))[ends] / np.asarray(ks)

    def mean(table):
        return {str(k): (float(np.nanmean(table[:, j])) if np.isfinite(table[:, j]).any() else None)
                for j, k in enumerate(ks)}

    by_slice = {}
    for name, member in (slices or {}).items():
        member = np.asarray(member, bool)
        if member.shape != (len(queries),):
            raise ValueError(f"slice {name!r} has {member.shape} flags for {len(queries)} searches")
        by_slice[name] = {"searches": int(member.sum()),
                          **{key: mean(rows[key][member]) for key in ("recall", "p_good", "p_good_ceiling")}}

    return {
        "k": ks,
        **{key: mean(table) for key, table in rows.items()},
        "slices": by_slice,
        "searches": len(queries),
        "searches_with_truth": with_truth,
        "searches_with_intent": with_intent,
        "items": int(len(ids)),
        "positives_in_pool": float(np.mean([sum(p in position for p in pos) / len(pos) for pos in positives]))
        if positives else None,
        "positives_relevant": float(np.mean(relevant_share)) if relevant_share else None,
    }


SEARCH_PHENOMENA = ("typo", "new_spelling", "history_intent")
LONG_HISTORY = 50  # long-term behaviours from which a user counts as having a long history


def standard_slices(data_dir: str, queries, info: list[dict], truth=None) -> dict:
    """The slices a component's effect should show in, as [S] bool flags: `unseen_word`
    (a query word not in the training vocabulary: characters and bigrams must carry it),
    `long_history` (>= LONG_HISTORY long-term behaviours: personalisation), `branded`
    (the query names a brand, by the ground truth) and, when the synthetic world's
    per-search truth is there (`truth/searches.*`), `typo`, `new_spelling` and
    `history_intent` (docs/synthetic_world.md)."""
    import numpy as np

    from features.vocab import load_vocab
    from model.data import vocab_dir

    known = set(load_vocab(vocab_dir(data_dir), "word"))
    out = {
        "unseen_word": np.array([any(w not in known for w in i["query_words"]) for i in info], bool),
        "long_history": np.array([i["long_term"] >= LONG_HISTORY for i in info], bool),
    }
    if truth is not None:
        out["branded"] = np.array([bool((truth.query(q) or {}).get("brand")) for q in queries], bool)
        flags = truth.search_flags()
        for name in SEARCH_PHENOMENA:
            if flags:
                out[name] = np.array([bool(flags.get((i["user_id"], i["ts"]), {}).get(name)) for i in info], bool)
    return out


def format_table(metrics: dict) -> str:
    def cell(v):
        return "   -  " if v is None else f"{v:6.4f}"

    lines = [f"{'K':>6}  {'Recall@K':>8}  {'P_good@K':>8}  {'ceiling':>8}  {'filter pass':>11}"]
    for k in metrics["k"]:
        k = str(k)
        lines.append(f"{k:>6}  {cell(metrics['recall'][k]):>8}  {cell(metrics['p_good'][k]):>8}  "
                     f"{cell(metrics.get('p_good_ceiling', {}).get(k)):>8}  {cell(metrics['filter_pass'][k]):>11}")
    if metrics.get("positives_relevant") is not None:
        def row(key):
            return " ".join(cell(metrics[key].get(str(k))).strip() for k in metrics["k"])

        lines.append(f"Recall@K split by the ground truth: the clicks relevant to the query "
                     f"({100 * metrics['positives_relevant']:.1f}% of a search's) {row('recall_relevant')}; "
                     f"the others (noise) {row('recall_irrelevant')}")
    lines.append(f"{metrics['searches']} test searches ({metrics['searches_with_truth']} with ground truth, "
                 f"{metrics['searches_with_intent']} with a brand/category intent), {metrics['items']} items in the pool")
    return "\n".join(lines)


def plot(metrics: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = metrics["k"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("recall", "Recall@K", "o-"), ("p_good", "P_good@K", "s-"),
                              ("filter_pass", "filter pass share@K", "^--")):
        ys = [metrics[key][str(k)] for k in ks]
        if any(y is not None for y in ys):
            ax.plot(ks, [float("nan") if y is None else y for y in ys], style, label=label)
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("K (items retrieved)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "retrieval on the test window")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(model, data_dir: str, ks, truth_dir: str | None = None, batch_size: int = 256, select=None):
    """(metrics, intents) of a model in memory on the test day: every item embedded, the
    searches `select(search_id)` keeps (all by default) embedded and searched exactly,
    scored with the ground truth of `truth_dir` (if any), the standard slices and the
    relevance control mined from the catalog (`intents`)."""
    from features.intent import IntentMatcher

    item_emb, fields = embed_items(model, data_dir)
    info: list[dict] = []
    user_emb, queries, positives = embed_searches(model, data_dir, batch_size, select=select, info=info)
    topk = top_k(user_emb, item_emb, max(ks), batch_size)
    truth = Truth(truth_dir) if truth_dir else None
    slices = standard_slices(data_dir, queries, info, truth)
    # Query understanding from the catalog itself: its names plus aliases mined from titles.
    intents = IntentMatcher.from_catalog(
        {"brand": b, "leaf_cat": l, "top_cat": t, "title_words": w}
        for b, l, t, w in zip(fields["brand"], fields["leaf_cat"], fields["top_cat"], fields["title_words"])
    )
    return retrieval_metrics(topk, fields, queries, positives, ks, truth, intents, slices), intents


def evaluate(data_dir: str, model_dir: str, out_dir: str | None = None, truth_dir: str | None = None,
             ks=DEFAULT_KS, checkpoint: str | None = None, batch_size: int = 256, quiet: bool = False) -> dict:
    """Runs the evaluation; returns the metrics (and writes them when `out_dir` is given)."""
    from model.rundir import restore

    t0 = time.time()
    model, config, path, step = restore(model_dir, data_dir, checkpoint)
    truth_dir = truth_dir or default_truth_dir(data_dir)
    metrics, intents = measure(model, data_dir, ks, truth_dir, batch_size)
    metrics.update({
        "checkpoint": path,
        "step": step,
        "model": config.model,
        "truth_dir": truth_dir,
        "seconds": round(time.time() - t0, 2),
    })
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, ensure_ascii=False)
        intents.save(os.path.join(out_dir, "intents.json"))  # the relevance control's dictionary
        name = "/".join(os.path.abspath(model_dir).split(os.sep)[-2:])
        plot(metrics, os.path.join(out_dir, "metrics.png"), f"{name} @ step {step}: test day, {metrics['items']} items")
    if not quiet:
        print(format_table(metrics), flush=True)
    return metrics


def sidecar(data_dir: str, model_dir: str, config, poll_seconds: float = 5.0) -> int:
    """The evaluator task of a TF_CONFIG cluster: evaluates every new checkpoint of the run
    as it appears (metrics under MODEL_DIR/eval/step-N/, TensorBoard scalars under
    logs/eval) and stops after the final one."""
    import features  # noqa: F401
    import tensorflow as tf

    from model.rundir import CHECKPOINT_DIR, INFO_FILE

    ckpt_dir = os.path.join(model_dir, CHECKPOINT_DIR)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval"))
    seen = set()
    while True:
        info_path = os.path.join(model_dir, INFO_FILE)
        final = None
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
            final = info.get("checkpoint") if info.get("complete") else None
        latest = tf.train.latest_checkpoint(ckpt_dir)
        if latest and latest not in seen:
            seen.add(latest)
            m = evaluate(data_dir, model_dir, None, checkpoint=latest, quiet=True)
            step = m["step"] or 0
            os.makedirs(os.path.join(model_dir, "eval", f"step-{step}"), exist_ok=True)
            with open(os.path.join(model_dir, "eval", f"step-{step}", "metrics.json"), "w", encoding="utf-8") as f:
                json.dump(m, f, indent=2, ensure_ascii=False)
            with writer.as_default(step=step):
                for key in ("recall", "p_good", "filter_pass"):
                    for k, v in m[key].items():
                        if v is not None:
                            tf.summary.scalar(f"{key}@{k}", v)
            writer.flush()
            log.info("evaluated %s: recall %s", latest, m["recall"])
        if final and os.path.abspath(final) in {os.path.abspath(s) for s in seen}:
            return 0
        time.sleep(poll_seconds)


def main(args) -> int:
    if args.truth and not os.path.isdir(args.truth):
        raise FileNotFoundError(f"--truth {args.truth} is not a directory")
    evaluate(args.data, args.model_dir, args.out, args.truth, parse_ks(args.k), args.checkpoint, args.batch_size)
    return 0
