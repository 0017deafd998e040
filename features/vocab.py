"""Vocabularies: which exist, where the pipeline writes them, and how the model maps
strings to ids in-graph.

Layout of `OUT/vocab/`: one `<name>.txt` per vocabulary, one token per line, most frequent
first (ties broken by token), only tokens seen at least `min_count` times. Id 0 is the
mask ("" padding), ids 1..n the file's tokens, and `oov_buckets` hashed ids follow for
unseen tokens, so one SavedModel accepts tokens that were not in the training data.
"""
from __future__ import annotations

from dataclasses import dataclass

from features.io import join, read_lines


@dataclass(frozen=True)
class Vocab:
    name: str
    min_count: int
    oov_buckets: int
    doc: str


VOCABS: dict[str, Vocab] = {
    v.name: v
    for v in (
        Vocab("word", 2, 100, "jieba words of queries and titles"),
        Vocab("char", 2, 20, "characters of queries and titles"),
        Vocab("bigram", 2, 100, "character bigrams of queries and titles"),
        Vocab("item_id", 1, 1000, "catalog item ids"),
        Vocab("leaf_cat", 1, 10, "leaf categories"),
        Vocab("top_cat", 1, 5, "top categories"),
        Vocab("brand", 1, 50, "brands"),
        Vocab("shop", 1, 100, "shops"),
    )
}


def vocab_path(vocab_dir: str, name: str) -> str:
    if name not in VOCABS:
        raise KeyError(f"unknown vocabulary {name!r}; known: {sorted(VOCABS)}")
    return join(vocab_dir, f"{name}.txt")


def load_vocab(vocab_dir: str, name: str) -> list[str]:
    return read_lines(vocab_path(vocab_dir, name))


def table_size(vocab_dir: str, name: str) -> int:
    """Rows an embedding table for this vocabulary needs: mask + tokens + OOV buckets."""
    return 1 + len(load_vocab(vocab_dir, name)) + VOCABS[name].oov_buckets


def rank_tokens(counts: dict[str, int], min_count: int) -> list[str]:
    """Tokens kept in a vocabulary file, in file order: count desc, then token."""
    kept = [(t, c) for t, c in counts.items() if c >= min_count and t != ""]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return [t for t, _ in kept]
