"""Query understanding for the relevance control: brand and category intents by dictionary
match of catalog names in the query's words."""
import pytest

from features.intent import IntentMatcher, QueryIntent


@pytest.fixture(scope="module")
def matcher():
    return IntentMatcher(
        brands=["阿迪达斯", "耐克", "New Balance", "优衣库"],
        leaf_cats=["跑步鞋", "连衣裙", "T恤"],
        top_cats=["运动鞋", "女装"],
    )


def test_brand_and_leaf_category_found(matcher):
    q = matcher.match("阿迪达斯跑步鞋男")
    assert q.brands == {"阿迪达斯"}
    assert q.leaf_cats == {"跑步鞋"}
    assert q.top_cats == frozenset()


def test_names_match_after_normalisation_and_across_words(matcher):
    # full-width, upper case and a two-word Latin brand
    q = matcher.match("ＮＥＷ  balance 跑步鞋")
    assert q.brands == {"New Balance"}  # the catalog's spelling comes back
    q = matcher.match("优衣库 t恤 女")
    assert q.brands == {"优衣库"} and q.leaf_cats == {"T恤"}


def test_query_without_names_has_no_intent_and_passes_everything(matcher):
    q = matcher.match("夏季 新款 透气")
    assert q.empty
    assert q.passes(brand="耐克", leaf_cat="连衣裙", top_cat="女装")


def test_filter_rejects_items_that_contradict_an_intent(matcher):
    q = matcher.match("阿迪达斯 跑步鞋")
    assert q.passes(brand="阿迪达斯", leaf_cat="跑步鞋", top_cat="运动鞋")
    assert not q.passes(brand="耐克", leaf_cat="跑步鞋", top_cat="运动鞋")  # wrong brand
    assert not q.passes(brand="阿迪达斯", leaf_cat="T恤", top_cat="女装")  # wrong category
    assert not q.passes(brand="", leaf_cat="跑步鞋", top_cat="运动鞋")  # unbranded


def test_top_category_intent(matcher):
    q = matcher.match("女装 春季")
    assert q == QueryIntent(top_cats=frozenset({"女装"}))
    assert q.passes("", "连衣裙", "女装") and not q.passes("", "跑步鞋", "运动鞋")


def test_built_from_the_pipeline_vocabularies(tmp_path):
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "brand.txt").write_text("耐克\n阿迪达斯\n", encoding="utf-8")
    (vocab / "leaf_cat.txt").write_text("跑步鞋\n", encoding="utf-8")
    (vocab / "top_cat.txt").write_text("运动鞋\n", encoding="utf-8")
    m = IntentMatcher.from_vocab_dir(str(vocab))
    assert m.match("耐克跑步鞋").to_dict() == {"brands": ["耐克"], "leaf_cats": ["跑步鞋"], "top_cats": []}
    (vocab / "brand.txt").unlink()
    with pytest.raises(FileNotFoundError, match="brand"):
        IntentMatcher.from_vocab_dir(str(vocab))


def test_aliases_mined_from_titles():
    items = [{"brand": "华为", "leaf_cat": "手机", "top_cat": "数码", "title_words": ["huawei", "华为", "5G", "智能手机"]}
             for _ in range(4)]
    items += [{"brand": "小米", "leaf_cat": "手机", "top_cat": "数码", "title_words": ["xiaomi", "智能手机", "5G"]}
              for _ in range(3)]
    items += [{"brand": "", "leaf_cat": "连衣裙", "top_cat": "女装", "title_words": ["裙子", "夏季"]} for _ in range(3)]
    items += [{"brand": "", "leaf_cat": "T恤", "top_cat": "女装", "title_words": ["夏季", "短袖"]} for _ in range(2)]
    m = IntentMatcher.from_catalog(items, min_items=3, min_purity=0.9)
    assert m.aliases["brands"] == {"huawei": "华为", "xiaomi": "小米"}
    # "5g" and "智能手机" span two brands but one category; "夏季" spans two categories;
    # "短袖" is on too few items
    assert m.aliases["leaf_cats"] == {"5g": "手机", "智能手机": "手机", "裙子": "连衣裙"}
    q = m.match("Huawei 智能手机")
    assert q.brands == {"华为"} and q.leaf_cats == {"手机"}
    assert m.match("夏季 裙子").leaf_cats == {"连衣裙"}
    # The dictionary round-trips through JSON (eval writes it, serving loads it).
    again = IntentMatcher.from_json(m.to_json())
    assert again.names == m.names and again.aliases == m.aliases
