"""The tokenizer shared by the pipeline and serving: normalisation, jieba words,
character unigrams and character bigrams.

    >>> tok = Tokenizer(["阿迪达斯", "连衣裙"])
    >>> tok.tokenize("阿迪达斯 连衣裙！").words
    ('阿迪达斯', '连衣裙')

Pre-tokenised sources (JDsearch's texts are anonymised term ids: `"1203 88 4071"`) use
`text_units="terms"`: each space-separated term is a word and also the unit the "chars"
feature holds, and two adjacent terms joined by "_" make a bigram, since the characters
of a term id mean nothing.
"""
from __future__ import annotations

import json
import logging
import os
import unicodedata
from functools import lru_cache
from typing import Iterable, NamedTuple

from features.io import exists as _exists, read_lines as _read_lines, read_text as _read_text
from features.io import write_lines as _write_lines

USER_DICT_FILE = "user_dict.txt"
SETTINGS_FILE = "tokenizer.json"  # {"text_units": ...}; absent in older vocab directories
TEXT_UNITS = ("chars", "terms")
TERM_BIGRAM_JOINER = "_"  # normalize() turns "_" into a space, so no term contains it


class Tokens(NamedTuple):
    chars: tuple[str, ...]
    bigrams: tuple[str, ...]
    words: tuple[str, ...]


def normalize(text: str) -> str:
    """Full-width to half-width (NFKC), lower case, punctuation and symbols to spaces,
    whitespace collapsed. `"ＡＤＩＤＡＳ，跑鞋"` -> `"adidas 跑鞋"`."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        out.append(" " if cat[0] in "PSZC" else ch)
    return " ".join("".join(out).split())


def char_ngrams(normalized: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Character unigrams and bigrams; bigrams do not cross whitespace."""
    chunks = normalized.split()
    chars = tuple(c for chunk in chunks for c in chunk)
    bigrams = tuple(chunk[i : i + 2] for chunk in chunks for i in range(len(chunk) - 1))
    return chars, bigrams


class Tokenizer:
    """jieba segmentation with a user dictionary (the catalog's brands and category
    names, so `阿迪达斯` or `连衣裙` stay whole). Deterministic: user words are added in
    sorted order and nothing depends on global jieba state. Results are memoised, since
    queries repeat heavily in search logs."""

    def __init__(self, user_words: Iterable[str] = (), cache_size: int = 200_000, text_units: str = "chars"):
        import jieba

        if text_units not in TEXT_UNITS:
            raise ValueError(f"text_units must be one of {TEXT_UNITS}, not {text_units!r}")
        jieba.setLogLevel(logging.WARNING)
        self.text_units = text_units
        self.user_words = tuple(sorted({w for w in (normalize(u) for u in user_words) if w}))
        self._jieba = jieba.Tokenizer()
        self._jieba.initialize()
        for word in self.user_words:
            if " " not in word:  # jieba never emits a token containing a space
                self._jieba.add_word(word)
        self.tokenize = lru_cache(maxsize=cache_size)(self._tokenize)

    def _tokenize(self, text: str) -> Tokens:
        norm = normalize(text)
        if self.text_units == "terms":
            terms = tuple(norm.split())
            bigrams = tuple(f"{a}{TERM_BIGRAM_JOINER}{b}" for a, b in zip(terms, terms[1:]))
            return Tokens(terms, bigrams, terms)
        chars, bigrams = char_ngrams(norm)
        words = tuple(w for w in self._jieba.cut(norm, HMM=True) if w.strip())
        return Tokens(chars, bigrams, words)

    def tokenize_once(self, text: str) -> Tokens:
        """`tokenize` without the memo cache, for text seen once (a catalog title), which
        would only evict the queries that repeat."""
        return self._tokenize(text)

    def words(self, text: str) -> tuple[str, ...]:
        return self.tokenize(text).words

    def save(self, directory: str) -> str:
        """Writes the user dictionary next to the vocabularies; `load` reads it back."""
        path = os.path.join(directory, USER_DICT_FILE)
        _write_lines(path, self.user_words)
        _write_lines(os.path.join(directory, SETTINGS_FILE), [json.dumps({"text_units": self.text_units})])
        return path

    @classmethod
    def load(cls, directory: str) -> "Tokenizer":
        path = os.path.join(directory, USER_DICT_FILE)
        if not _exists(path):
            raise FileNotFoundError(f"no tokenizer user dictionary at {path}; run `ebr preprocess` first")
        settings = os.path.join(directory, SETTINGS_FILE)
        text_units = json.loads(_read_text(settings))["text_units"] if _exists(settings) else "chars"
        return cls(_read_lines(path), text_units=text_units)

    def __getstate__(self):  # pickled into Beam workers: ship the words, rebuild jieba there
        return {"user_words": self.user_words, "text_units": self.text_units}

    def __setstate__(self, state):
        self.__init__(state["user_words"], text_units=state.get("text_units", "chars"))
