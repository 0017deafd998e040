"""features/: the tokenizer, the spec and the vocabulary helpers that every stage shares."""
import pickle

import pytest

from features import FEATURES, Tokenizer, normalize
from features import spec
from features.vocab import VOCABS, rank_tokens


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(["阿迪达斯", "连衣裙", "T恤", "New Balance"])


def test_normalize_full_width_case_punctuation():
    assert normalize("ＡＤＩＤＡＳ，跑鞋！！") == "adidas 跑鞋"
    assert normalize("  Nike\t运动鞋\u3000男 ") == "nike 运动鞋 男"
    assert normalize("") == ""


def test_user_dictionary_keeps_brands_and_categories_whole(tok):
    assert tok.words("阿迪达斯连衣裙") == ("阿迪达斯", "连衣裙")
    # lower-casing turns T恤 into t恤, which only the user dictionary keeps whole
    assert "t恤" in tok.words("春季新款简约圆领打底衬衫长袖T恤女")
    assert "t恤" not in Tokenizer().words("春季新款简约圆领打底衬衫长袖T恤女")


def test_chars_and_bigrams_do_not_cross_spaces(tok):
    t = tok.tokenize("耐克 跑鞋")
    assert t.chars == ("耐", "克", "跑", "鞋")
    assert t.bigrams == ("耐克", "跑鞋")


def test_deterministic_and_picklable(tok):
    texts = ["夏季新款雪纺连衣裙女", "adidas跑鞋男", "纯棉短袖T恤"]
    again = pickle.loads(pickle.dumps(tok))
    assert [again.tokenize(t) for t in texts] == [tok.tokenize(t) for t in texts]
    # user-word order must not matter
    other = Tokenizer(["T恤", "New Balance", "连衣裙", "阿迪达斯"])
    assert [other.tokenize(t) for t in texts] == [tok.tokenize(t) for t in texts]


def test_user_dict_round_trip(tok, tmp_path):
    tok.save(str(tmp_path))
    assert Tokenizer.load(str(tmp_path)).user_words == tok.user_words
    with pytest.raises(FileNotFoundError, match="user_dict.txt"):
        Tokenizer.load(str(tmp_path / "missing"))


def test_every_string_feature_with_tokens_names_a_vocabulary():
    for f in FEATURES.values():
        if f.group in ("user", "item"):
            assert f.vocab in VOCABS, f.name


def test_example_round_trip_pads_and_truncates():
    long_title = [f"w{i}" for i in range(spec.MAX_TITLE_WORDS + 5)]
    raw = spec.to_example({"item_id": "i1", "title_words": long_title, "ts": 7, "query_words": ["a"]})
    parsed = spec.parse_examples([raw], ["item_id", "title_words", "ts", "query_words", "brand"])
    assert parsed["title_words"].shape == (1, spec.MAX_TITLE_WORDS)
    assert parsed["title_words"][0, -1].numpy() == f"w{spec.MAX_TITLE_WORDS - 1}".encode()
    assert parsed["query_words"].numpy()[0].tolist()[:2] == [b"a", b""]
    assert parsed["ts"].numpy().tolist() == [7]
    assert parsed["brand"].numpy().tolist() == [b""]  # missing scalar -> padding
    with pytest.raises(KeyError, match="unknown feature"):
        spec.to_example({"titel_words": ["x"]})


def test_rank_tokens_min_count_and_order():
    counts = {"b": 3, "a": 3, "c": 1, "": 9, "d": 2}
    assert rank_tokens(counts, 2) == ["a", "b", "d"]


def test_recent_queries_answer_as_his_queries_at_in_any_order_of_times():
    import random

    from features.history import RecentQueries, his_queries_at

    rng = random.Random(1)
    log = sorted((rng.randrange(200), rng.choice("abcdefghijklmnopq") * rng.randrange(0, 3)) for _ in range(400))
    log_ts = [t for t, _ in log]
    recent = RecentQueries(log, str.upper)
    times = sorted(rng.randrange(-5, 210) for _ in range(150)) + [rng.randrange(210) for _ in range(50)]
    for t in times:  # mostly forward, as the job asks; then at random, which starts over
        assert recent.at(t) == his_queries_at(log, log_ts, t, str.upper), t


def test_term_units_make_terms_the_characters_and_term_pairs_the_bigrams(tmp_path):
    tok = Tokenizer([], text_units="terms")
    terms = ("1203", "88", "4071")
    assert tok.tokenize("１２03\x18 88  4071") == (terms, ("1203_88", "88_4071"), terms)
    tok.save(str(tmp_path))
    assert Tokenizer.load(str(tmp_path)).text_units == "terms"
    with pytest.raises(ValueError, match="text_units"):
        Tokenizer([], text_units="bytes")
