"""Generate a synthetic Taobao-like world: catalog, a month of user history plus an
8-day window of search sessions, and the ground truth behind them.

    ebr synth --scale small --seed 7 --out data/small/raw
    ebr synth --scale small --seed 7 --out /tmp/w --typo 0.2 --new-spelling 0.3 --history-intent 0

Output (the raw data contract of `pipeline.contract`, plus ground truth):

    OUT/items.<ext>              item_id, title, leaf_category, top_category, brand, shop, price
    OUT/events.<ext>             user_id, ts, session_id, query, item_id, action
    OUT/truth/items.jsonl        latent item attributes (brand, colour, style, season, ...)
    OUT/truth/queries.jsonl      the intent behind every distinct query string
    OUT/truth/searches.<jsonl|parquet>  one row per search: user_id, ts, session_id, query
                                 and the phenomena it carries (typo, new_spelling, history_intent)
    OUT/truth/lexicon.json       category words and synonyms, brand aliases, colours, styles
    OUT/truth/spellings.json     the fixed misspellings of each word, each brand's new spelling
    OUT/world.json               scale, seed, noise, phenomena, calendar, counts

The world is built so the paper's effects can show: a two-level category tree with
synonyms, brands with Chinese names and Latin aliases, keyword-stacked titles, users
with lasting brand/style/colour/price tastes, queries with varied surface forms,
clicks drawn among the items relevant to the query's intent by personal taste, and a
configurable share of noisy clicks on irrelevant items (a click is not relevance).

Phenomena that each exercise one part of MGDSPR (docs/synthetic_world.md), each a share
set by an argument of `generate` and an `ebr synth` option:

    typo=0.08            searches whose category or brand word is misspelled with one of
                         the word's fixed misspellings: jieba cuts a word the right spelling
                         lacks, characters are shared (the multi-grained semantic unit's
                         chars and bigrams)
    new_spelling=0.15    test-day searches naming a brand that use its new spelling (an
                         abbreviation never seen before day 8: only chars and bigrams match)
    history_intent=0.10  searches naming only the category whose clicks go to the brand an
                         earlier search of the session named, else to the user's favourite
                         (earlier queries and behaviour sequences carry the brand)

Every scale runs the same vectorised code: items as numpy arrays, titles and queries
assembled as Arrow string columns, users simulated in chunks that are written as they
are produced, so memory stays bounded at any size. Deterministic for a seed.
"""
from __future__ import annotations

import csv
import json
import os
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np

import features  # noqa: F401  (environment for TensorFlow, set before any TF import)
from pipeline import contract

# ---------------------------------------------------------------------------------
# The lexicon: category tree, brands and attribute words.
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    name: str  # canonical category word, also the catalog's leaf_category
    synonyms: tuple[str, ...]
    price: float  # typical price in yuan


@dataclass(frozen=True)
class TopCategory:
    name: str
    leaves: tuple[Leaf, ...]
    brands: tuple[tuple[str, str], ...]  # (Chinese canonical name, Latin alias)
    colours: tuple[str, ...]
    styles: tuple[str, ...]
    materials: tuple[str, ...]
    details: tuple[str, ...]  # title-only descriptors (neck line, fit, ...)
    gender: tuple[str, ...] = ()  # words a query or title may append (女, 女士, ...)
    seasonal: bool = False


def _leaves(*specs: tuple[str, str, float]) -> tuple[Leaf, ...]:
    return tuple(Leaf(name, tuple(syn.split()), price) for name, syn, price in specs)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _brands(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(pair.split("/")) for pair in text.split())  # type: ignore[misc]


# Category words and synonyms are unique across all leaves, and brand names and
# aliases across all brands, so every query string has exactly one intent.
TOP_CATEGORIES: tuple[TopCategory, ...] = (
    TopCategory(
        "女装",
        _leaves(
            ("T恤", "短袖 体恤", 59), ("连衣裙", "裙子 长裙", 169), ("衬衫", "衬衣", 99),
            ("半身裙", "短裙 百褶裙", 89), ("针织衫", "毛衣 开衫", 129), ("牛仔裤", "直筒裤", 119),
            ("羽绒服", "棉服 羽绒衣", 399), ("阔腿裤", "宽腿裤", 89),
        ),
        _brands("优衣库/uniqlo 太平鸟/peacebird 伊芙丽/eifini 欧时力/ochirly 韩都衣舍/handu "
                "拉夏贝尔/lachapelle 飒拉/zara 森马/semir"),
        _words("黑色 白色 红色 粉色 蓝色 杏色 卡其色 米白色 灰色 绿色"),
        _words("简约 韩版 宽松 修身 复古 法式 百搭 气质"),
        _words("纯棉 雪纺 真丝 亚麻 羊毛 莫代尔"),
        _words("圆领 V领 长袖 高腰 收腰 打底 显瘦 大码 小个子 中长款"),
        gender=("女", "女士", "女款"),
        seasonal=True,
    ),
    TopCategory(
        "男装",
        _leaves(
            ("polo衫", "保罗衫 翻领衫", 99), ("夹克", "外套 飞行夹克", 259), ("西装", "西服 正装", 499),
            ("休闲裤", "长裤 工装裤", 139), ("卫衣", "连帽衫 套头衫", 149), ("风衣", "大衣 长款风衣", 399),
            ("背心", "马甲", 59), ("羊毛衫", "羊绒衫", 299),
        ),
        _brands("海澜之家/hla 杰克琼斯/jackjones 雅戈尔/youngor 七匹狼/septwolves 罗蒙/romon "
                "利郎/lilang 劲霸/kboxing 九牧王/joeone"),
        _words("黑色 白色 灰色 藏青色 卡其色 蓝色 军绿色"),
        _words("商务 休闲 潮牌 日系 修身 宽松"),
        _words("纯棉 亚麻 羊毛 冰丝 涤纶"),
        _words("立领 长袖 大码 加绒 免烫 青年 中年"),
        gender=("男", "男士", "男款"),
        seasonal=True,
    ),
    TopCategory(
        "鞋靴",
        _leaves(
            ("运动鞋", "跑鞋 跑步鞋", 299), ("帆布鞋", "布鞋", 79), ("高跟鞋", "单鞋 细跟鞋", 159),
            ("马丁靴", "靴子 短靴", 229), ("拖鞋", "凉拖 人字拖", 39), ("板鞋", "小白鞋", 189),
            ("篮球鞋", "球鞋 实战篮球鞋", 399), ("凉鞋", "沙滩鞋", 89),
        ),
        _brands("阿迪达斯/adidas 耐克/nike 李宁/lining 安踏/anta 特步/xtep 斯凯奇/skechers "
                "回力/warrior 百丽/belle"),
        _words("黑色 白色 红色 灰色 蓝色 米白色 粉色"),
        _words("休闲 百搭 复古 增高 韩版 潮流"),
        _words("真皮 网面 头层牛皮 飞织 橡胶"),
        _words("低帮 高帮 厚底 减震 轻便 透气 防滑 男女同款"),
        seasonal=True,
    ),
    TopCategory(
        "数码",
        _leaves(
            ("手机", "智能手机 5G手机", 2999), ("耳机", "蓝牙耳机 无线耳机", 199), ("平板电脑", "平板", 2499),
            ("充电宝", "移动电源", 99), ("智能手表", "手表 运动手表", 899), ("笔记本电脑", "笔记本", 4999),
            ("数据线", "充电线 usb线", 29), ("键盘", "机械键盘", 199),
        ),
        _brands("华为/huawei 小米/xiaomi 苹果/apple 荣耀/honor 联想/lenovo 索尼/sony "
                "漫步者/edifier 倍思/baseus"),
        _words("黑色 白色 银色 金色 蓝色 紫色"),
        _words("轻薄 游戏 商务 降噪 快充 拍照"),
        (),
        _words("5G 大屏 长续航 全面屏 官方 旗舰 新品 国行"),
    ),
    TopCategory(
        "美妆",
        _leaves(
            ("口红", "唇膏 唇釉", 199), ("面膜", "面贴膜", 99), ("粉底液", "粉底", 299),
            ("眼影", "眼影盘", 169), ("防晒霜", "防晒 防晒乳", 129), ("香水", "淡香水 香氛", 499),
            ("洗面奶", "洁面乳 洁面", 69), ("精华液", "精华", 399),
        ),
        _brands("兰蔻/lancome 雅诗兰黛/esteelauder 完美日记/perfectdiary 花西子/florasis "
                "欧莱雅/loreal 迪奥/dior 珀莱雅/proya 自然堂/chando"),
        (),
        _words("保湿 美白 持久 哑光 滋润 控油"),
        (),
        _words("补水 正品 小样 套装 学生 敏感肌"),
    ),
    TopCategory(
        "食品",
        _leaves(
            ("坚果", "干果 每日坚果", 69), ("牛奶", "纯牛奶", 59), ("咖啡", "速溶咖啡 咖啡粉", 79),
            ("茶叶", "绿茶 红茶", 129), ("巧克力", "黑巧", 49), ("方便面", "泡面 速食面", 39),
            ("饼干", "曲奇", 29), ("矿泉水", "饮用水", 29),
        ),
        _brands("三只松鼠/threesquirrels 良品铺子/bestore 百草味/baicaowei 伊利/yili 蒙牛/mengniu "
                "雀巢/nestle 德芙/dove 农夫山泉/nongfu"),
        (),
        _words("原味 香辣 无糖 低脂 进口 网红"),
        (),
        _words("整箱 礼盒 袋装 家庭装 办公室 零食"),
    ),
    TopCategory(
        "家居",
        _leaves(
            ("四件套", "床上四件套 床单被套", 299), ("枕头", "枕芯", 79), ("收纳箱", "收纳盒 整理箱", 59),
            ("毛巾", "浴巾 面巾", 39), ("台灯", "护眼灯 床头灯", 129), ("抱枕", "靠垫 靠枕", 49),
            ("保温杯", "水杯 杯子", 99), ("拖把", "墩布", 69),
        ),
        _brands("宜家/ikea 罗莱/luolai 富安娜/fuanna 水星家纺/mercury 膳魔师/thermos "
                "乐扣乐扣/locknlock 南极人/nanjiren 全棉时代/purcotton"),
        _words("白色 灰色 蓝色 粉色 米白色 绿色"),
        _words("北欧 简约 ins风 日式 加厚 卡通"),
        _words("纯棉 竹纤维 记忆棉 不锈钢 陶瓷"),
        _words("家用 宿舍 卧室 多功能 大容量 网红"),
    ),
    TopCategory(
        "运动户外",
        _leaves(
            ("瑜伽垫", "健身垫", 89), ("跳绳", "计数跳绳", 29), ("帐篷", "露营帐篷", 399),
            ("双肩包", "背包 书包", 199), ("冲锋衣", "登山服", 599), ("哑铃", "健身哑铃", 149),
        ),
        _brands("迪卡侬/decathlon 探路者/toread 骆驼/camel 北面/thenorthface 凯乐石/kailas "
                "牧高笛/mobigarden 始祖鸟/arcteryx 威尔胜/wilson"),
        _words("黑色 蓝色 绿色 灰色 紫色 粉色"),
        _words("专业 轻便 防水 便携 耐磨 户外"),
        _words("尼龙 牛津布 TPE"),
        _words("加厚 男女 学生 大容量 防滑 家用"),
    ),
)

SEASONS = ("春季", "夏季", "秋季", "冬季", "四季")
FRONT_FILLERS = ("【正品】", "【包邮】", "【官方】", "【爆款】", "【热卖】", "【新品】")
END_FILLERS = ("包邮", "正品", "热卖", "特价", "现货")
YEAR_WORDS = ("2026", "２０２６")  # full-width digits, as some sellers type them

# Characters (with pinyin) for brands generated beyond the named ones at larger scales.
_BRAND_SYLLABLES = (
    "星xing 禾he 朵duo 悦yue 森sen 溪xi 岚lan 桐tong 诺nuo 柚you 栀zhi 乔qiao 逸yi 璞pu 朗lang "
    "睿rui 泽ze 凯kai 昊hao 茉mo 菲fei 瑶yao 琪qi 婷ting 彦yan 卓zhuo 橘ju 莓mei 蔓man 萌meng "
    "缇ti 薇wei 韵yun 鹿lu 麦mai 拾shi 沁qin 芊qian 岩yan 舟zhou 陌mo 苒ran 霁ji 棠tang 榆yu "
    "枫feng 黛dai 珂ke 璟jing 骁xiao 驰chi 航hang 澈che 皓hao 琳lin 钰yu 妍yan 甜tian 柠ning"
)

ACTIONS = ("click", "cart", "collect", "purchase")
CLICK, CART, COLLECT, PURCHASE = range(4)

# ---------------------------------------------------------------------------------
# Scales and behaviour parameters.
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    items: int
    users: int
    leaves_per_top: int
    brands_per_top: int
    shops: int
    chunk_users: int  # users simulated (and written) per chunk: bounds memory
    fmt: str  # default output format


SCALES: dict[str, Scale] = {
    "tiny": Scale(300, 60, 3, 5, 40, 60, "jsonl"),
    "small": Scale(3_000, 600, 8, 8, 300, 600, "jsonl"),
    "medium": Scale(30_000, 6_000, 8, 24, 2_000, 3_000, "jsonl"),
    "large": Scale(1_200_000, 120_000, 8, 100, 40_000, 4_000, "parquet"),
}

DAY1 = date(2026, 3, 2)  # first day of the search window (UTC calendar days)
HISTORY_DAYS = 30  # a month of behaviour before day 1
WINDOW_DAYS = 8  # days 1..8: train on 1..7, test on 8
TOTAL_DAYS = HISTORY_DAYS + WINDOW_DAYS
SLOTS_PER_DAY = 12  # sessions start in distinct 2-hour slots, so they never overlap
SLOT_SECONDS = 86_400 // SLOTS_PER_DAY
# Relative session start rate per 2-hour slot of the (UTC) day: quiet nights, busy evenings.
SLOT_WEIGHTS = (0.5, 0.1, 0.1, 0.4, 0.8, 1.0, 1.2, 0.9, 0.9, 1.3, 1.8, 1.4)

SESSIONS_PER_DAY = 0.5  # mean over users; activity is lognormal across users
STEPS_MEAN = 2.3  # steps per session = 1 + Poisson(STEPS_MEAN), at most MAX_STEPS
MAX_STEPS = 8
STEP_GAP_SECONDS = (20, 150)  # a session lasts at most 10 + 7 * 2.5 minutes
SEARCH_SHARE = 0.72  # of steps; the rest are behaviours without a search (feeds, carts)
P_PREF_LEAF = 0.85  # a search is in one of the user's favourite categories
PREF_LEAF_WEIGHTS = (0.55, 0.3, 0.15)
P_QUERY_BRAND, P_QUERY_COLOUR, P_QUERY_STYLE = 0.35, 0.25, 0.2  # intent names the attribute
EXTRA_CLICKS_MEAN = 0.5  # relevant clicks per search = 1 + Poisson(0.5), capped by supply
P_PURCHASE_RELEVANT, P_PURCHASE_PRICE_MATCH, P_PURCHASE_NOISY = 0.08, 0.06, 0.02
P_CART, P_COLLECT = 0.07, 0.04
BROWSE_ACTION_P = (0.70, 0.15, 0.12, 0.03)
NOISE_KIND_P = (0.45, 0.35, 0.20)  # other leaf of the same top / same leaf, wrong attribute / a favourite category
# Personal affinity of a user for an item (log-odds units).
W_POPULARITY, W_BRAND, W_STYLE, W_COLOUR, W_PRICE = 0.5, 2.0, 1.5, 1.0, 1.0
USER_BRAND_ZIPF = 0.6  # exponent of the favourite-brand distribution over brand rank
PRICE_LEVEL_P = (0.15, 0.25, 0.30, 0.20, 0.10)
PRICE_LEVEL_MULT = (0.4, 0.7, 1.0, 1.6, 2.8)
MAX_NOISE = 0.9
NOISE_REDRAWS = 8  # attempts to replace a noisy click that repeats an item of its search
HISTORY_LEAF_TRIES = 4  # leaves of the wanted brand's top category tried after the search's own

# Phenomena that each exercise one part of MGDSPR (docs/synthetic_world.md): their default shares.
TYPO = 0.08  # of searches: the category or brand word is misspelled
NEW_SPELLING = 0.15  # of the test day's searches naming a brand: a spelling never seen before
HISTORY_INTENT = 0.10  # of searches: only the category is named, clicks follow the user's brand
TYPO_VARIANTS = 2  # fixed misspellings per category word and per brand name
P_TYPO_BRAND = 0.5  # a misspelled search naming a brand misspells the brand, else the category word
TYPO_ATTEMPTS = 40  # draws per word to find its misspellings among the rejected ones
P_TYPO_DROP_CJK, P_TYPO_KEY, P_TYPO_DROP_LATIN = 0.3, 0.4, 0.3  # kinds of misspelling (rest: swap)
P_TYPO_HOMOPHONE = 0.8  # a replaced Chinese character is one with a homophone, when the word has one
# Characters a pinyin input method confuses (same syllable): what Chinese typos mostly are.
HOMOPHONES = (
    "恤需须许 袖秀修绣 衣依医 裙群 衫山珊 衬称趁 织之知 仔再在 裤库酷 绒荣融 服福府 棉免眠 "
    "夹加佳 克可客 装庄壮 闲先鲜 帽貌冒 套涛陶 鞋些谐协 靴学雪 拖托脱 跑泡炮 篮蓝兰 球求秋 "
    "机鸡基 耳尔饵 板版办 电店点 脑恼闹 宝保报 表标彪 键件建 盘攀判 红洪宏 膏高糕 膜模磨 "
    "粉分芬 影应英 霜双爽 晒筛 香想相 奶乃耐 精经晶 咖卡 啡非菲 茶查察 巧桥乔 饼并冰 矿况框 "
    "枕真珍 纳那拿 杯背贝 瑜鱼雨 绳声生 篷朋棚 锋风峰 铃领零 灯等登 巾今金 水睡税 帐张账 "
    "尼泥 迪笛敌 斯思丝 达答 优忧 雅亚 兰澜 莱来 乐勒 华化 米迷 联连 索锁 伊衣 德得 蒙盟 "
    "森深 马玛 狼浪 王网 步布 丽力 踏塔 想像 荣容 家佳 牛纽 鼠属 松送 园圆 星心"
)
_OTHER_CHARS = "的一是在有人这中大来上个们到说时地为子生会可下过里后以出"  # for characters without homophones
_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


# ---------------------------------------------------------------------------------
# The world: lexicon tables, catalog and users as numpy arrays.
# ---------------------------------------------------------------------------------


class _TokenTable:
    """Every word a title or query can contain, by integer id; id 0 is ''."""

    def __init__(self):
        self.words: list[str] = [""]
        self._ids: dict[str, int] = {"": 0}

    def id(self, word: str) -> int:
        if word not in self._ids:
            self._ids[word] = len(self.words)
            self.words.append(word)
        return self._ids[word]

    def ids(self, words) -> list[int]:
        return [self.id(w) for w in words]


def _padded(rows: list[list[int]], fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], dtype=np.int64)


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# How a brand's Latin alias is written: latin, Latin, LATIN, full-width LATIN.
_LATIN_FORMS = (str, str.capitalize, str.upper, lambda la: _full_width(la.upper()))


def _generated_brands(count: int, taken: set[str]) -> list[tuple[str, str]]:
    """Extra two-character brands with pinyin aliases, in a fixed order."""
    syl = [(tok[0], tok[1:]) for tok in _BRAND_SYLLABLES.split()]
    rng = np.random.default_rng(20210711)  # fixed: brand names do not depend on the seed
    pairs = [(a, b) for a in range(len(syl)) for b in range(len(syl)) if a != b]
    rng.shuffle(pairs)
    out: list[tuple[str, str]] = []
    for a, b in pairs:
        if len(out) == count:
            break
        zh, latin = syl[a][0] + syl[b][0], syl[a][1] + syl[b][1]
        if zh in taken or latin in taken:
            continue
        taken.update((zh, latin))
        out.append((zh, latin))
    if len(out) < count:
        raise ValueError(f"cannot generate {count} distinct brand names (got {len(out)})")
    return out


def _similar_characters() -> dict[str, str]:
    """Each character of HOMOPHONES -> the characters it is confused with (every group it is in)."""
    out: dict[str, set[str]] = {}
    for group in HOMOPHONES.split():
        for c in group:
            out.setdefault(c, set()).update(group.replace(c, ""))
    return {c: "".join(sorted(v)) for c, v in out.items()}


_SIMILAR = _similar_characters()


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _misspell(word: str, rng) -> str:
    """One misspelling of `word`: a Chinese character replaced by a homophone (another
    character if it has none) or dropped (words of 3+ characters); a Latin word gets a
    letter replaced by a key beside it, a letter dropped, or two letters swapped."""
    cjk = [i for i, c in enumerate(word) if _is_cjk(c)]
    if cjk:
        if len(cjk) >= 3 and rng.random() < P_TYPO_DROP_CJK:
            i = cjk[rng.integers(len(cjk))]
            return word[:i] + word[i + 1 :]
        similar = [i for i in cjk if word[i] in _SIMILAR]
        pool = similar if similar and rng.random() < P_TYPO_HOMOPHONE else cjk
        i = pool[rng.integers(len(pool))]
        alts = _SIMILAR.get(word[i], _OTHER_CHARS)
        return word[:i] + alts[rng.integers(len(alts))] + word[i + 1 :]
    letters = [i for i, c in enumerate(word) if c in "abcdefghijklmnopqrstuvwxyz"]
    if not letters:
        return word
    i, u = letters[rng.integers(len(letters))], rng.random()
    if u < P_TYPO_KEY:
        row = next(r for r in _KEY_ROWS if word[i] in r)
        k = row.index(word[i])
        keys = row[max(k - 1, 0) : k] + row[k + 1 : k + 2]
        return word[:i] + keys[rng.integers(len(keys))] + word[i + 1 :]
    if u < P_TYPO_KEY + P_TYPO_DROP_LATIN and len(word) >= 4:
        return word[:i] + word[i + 1 :]
    j = i + 1 if i + 1 < len(word) else i - 1
    a, b = min(i, j), max(i, j)
    return word[:a] + word[b] + word[a] + word[b + 1 :]


class _Spellings:
    """Spellings no catalog title uses: fixed misspellings of category words and brand
    names, and each brand's new spelling. A spelling is accepted only if it is no word of
    the lexicon and, when it has Chinese characters, contains no category word or brand
    name (so it names no other intent) and, unless it is a new spelling itself, no new
    spelling (so jieba never cuts one out of it before the test day). A Latin spelling only
    has to be new: jieba keeps a Latin run whole."""

    def __init__(self, words, names):
        self.names = {features.normalize(w) for w in names}
        self.new: set[str] = set()
        self.taken = {features.normalize(w) for w in words if w} | self.names

    def accept(self, spelling: str, new: bool = False) -> bool:
        n = features.normalize(spelling)
        subs = {n[i:j] for i in range(len(n)) for j in range(i + 2, len(n) + 1)} if not n.isascii() else set()
        if len(n) < 2 or n in self.taken or subs & self.names or (not new and subs & self.new):
            return False
        self.taken.add(n)
        if new:
            self.new.add(n)
        return True

    def misspellings(self, word: str) -> list[str]:
        """Up to TYPO_VARIANTS misspellings of `word`, drawn from a generator seeded by the
        word itself: the same word is misspelled the same way at every scale and seed."""
        rng = np.random.default_rng(zlib.crc32(word.encode("utf-8")))
        out: list[str] = []
        for _ in range(TYPO_ATTEMPTS):
            if len(out) == TYPO_VARIANTS:
                break
            v = _misspell(word, rng)
            if self.accept(v):
                out.append(v)
        return out

    def new_spelling(self, zh: str, latin: str, prefix_count: dict[str, int]) -> str:
        """A brand's abbreviation: the first two characters of a 3+ character name (阿迪), else
        the shortest prefix of 60%+ of its alias (nik), one no other alias starts with if any,
        else the alias without its vowels (mtng), else the first character and the end of the
        alias (瑶qi)."""
        ks = range(max(3, -(-3 * len(latin) // 5)), len(latin))
        cands = [zh[:2]] if len(zh) >= 3 else []
        cands += [latin[:k] for k in ks if prefix_count[latin[:k]] == 1] + [latin[:k] for k in ks]
        cands.append(latin[0] + "".join(c for c in latin[1:] if c not in "aeiou"))
        cands += [zh[0] + latin[k:] for k in range(len(latin) - 2, 0, -1)]
        for c in cands:
            if self.accept(c, new=True):
                return c
        raise ValueError(f"no new spelling for the brand {zh}/{latin}")


class Lexicon:
    """The words of one world (a scale picks how many leaves and brands), as arrays.

    Leaves, styles and brands are numbered globally and stored top category by top
    category, so `*_lo[top]:*_hi[top]` are a top's contiguous ranges."""

    def __init__(self, scale: Scale):
        tok = _TokenTable()
        self.tokens = tok
        self.tops = [t.name for t in TOP_CATEGORIES]
        leaves: list[Leaf] = []
        leaf_top, brand_top, brands = [], [], []
        styles: list[str] = []
        style_lo, style_hi, brand_lo, brand_hi = [], [], [], []
        colour_words: list[str] = []
        material_words: list[str] = []
        top_colours, top_materials, top_details, top_gender = [], [], [], []
        taken = {w for t in TOP_CATEGORIES for b in t.brands for w in b}
        extra = _generated_brands(
            max(0, scale.brands_per_top - min(len(t.brands) for t in TOP_CATEGORIES)) * len(TOP_CATEGORIES),
            taken,
        )
        for ti, top in enumerate(TOP_CATEGORIES):
            for leaf in top.leaves[: scale.leaves_per_top]:
                leaves.append(leaf)
                leaf_top.append(ti)
            named = list(top.brands[: scale.brands_per_top])
            need = scale.brands_per_top - len(named)
            named += extra[:need]
            extra = extra[need:]
            brand_lo.append(len(brands))
            brands += named
            brand_top += [ti] * len(named)
            brand_hi.append(len(brands))
            style_lo.append(len(styles))
            styles += top.styles
            style_hi.append(len(styles))
            for w in top.colours:
                if w not in colour_words:
                    colour_words.append(w)
            for w in top.materials:
                if w not in material_words:
                    material_words.append(w)
            top_colours.append([colour_words.index(w) for w in top.colours])
            top_materials.append([material_words.index(w) for w in top.materials])
            top_details.append(tok.ids(top.details))
            top_gender.append(tok.ids(top.gender))
        self.leaves = leaves
        self.leaf_names = [lf.name for lf in leaves]
        self.leaf_top = np.array(leaf_top)
        self.leaf_price = np.array([lf.price for lf in leaves], dtype=np.float64)
        self.brands = brands
        self.brand_top = np.array(brand_top)
        self.brand_lo, self.brand_hi = np.array(brand_lo), np.array(brand_hi)
        self.styles = styles
        self.style_lo, self.style_hi = np.array(style_lo), np.array(style_hi)
        self.style_tok = np.array(tok.ids(styles))
        self.colours = colour_words
        self.colour_tok = np.array(tok.ids(colour_words) or [0])
        self.materials = material_words
        self.material_tok = np.array(tok.ids(material_words) or [0])
        self.top_colours, self.top_ncolours = _padded(top_colours)
        self.top_materials, self.top_nmaterials = _padded(top_materials)
        self.top_details, self.top_ndetails = _padded(top_details)
        self.top_gender, self.top_ngender = _padded(top_gender)
        self.top_seasonal = np.array([t.seasonal for t in TOP_CATEGORIES])
        leaves_of_top = [[i for i, t in enumerate(leaf_top) if t == ti] for ti in range(len(self.tops))]
        self.top_leaves, self.top_nleaves = _padded(leaves_of_top)
        self.leaf_pos = np.array([leaves_of_top[t].index(i) for i, t in enumerate(leaf_top)])
        self.season_tok = np.array(tok.ids(SEASONS))
        self.year_tok = np.array(tok.ids(YEAR_WORDS))
        self.front_tok = np.array(tok.ids(FRONT_FILLERS))
        self.end_tok = np.array(tok.ids(END_FILLERS))
        self.new_tok = tok.id("新款")
        # Brand surfaces: zh, latin, Latin, LATIN, full-width LATIN, zh+latin.
        self.brand_surf = np.array([tok.ids([zh, *(form(la) for form in _LATIN_FORMS), zh + la]) for zh, la in brands])
        # Category surfaces: canonical first, then synonyms, then synonym+canonical.
        self.leaf_canon_tok = np.array(tok.ids(self.leaf_names))
        self.leaf_syn, self.leaf_nsyn = _padded([tok.ids(lf.synonyms) for lf in leaves])
        self.leaf_combo, self.leaf_ncombo = _padded(
            [tok.ids([s + lf.name for s in lf.synonyms if lf.name not in s] or [lf.name]) for lf in leaves]
        )
        self.L, self.B, self.C, self.S = len(leaves), len(brands), len(colour_words), len(styles)
        self._build_spellings(tok)

    def _build_spellings(self, tok: _TokenTable) -> None:
        """Each brand's new spelling (`brand_new_tok` [B]), then the fixed misspellings of
        every category word and brand surface a query can use: `typo_tok` [tokens,
        TYPO_VARIANTS] maps a word's token to its misspellings' tokens (0: none)."""
        leaf_words = [w for lf in self.leaves for w in (lf.name, *lf.synonyms)]
        spell = _Spellings(tok.words, leaf_words + [w for b in self.brands for w in b])
        prefix_count = Counter(la[:k] for _, la in self.brands for k in range(1, len(la) + 1))
        self.new_spellings = [spell.new_spelling(zh, la, prefix_count) for zh, la in self.brands]
        self.brand_new_tok = np.array(tok.ids(self.new_spellings))
        self.typos: dict[str, list[str]] = {}
        rows: dict[int, list[int]] = {}
        for word in leaf_words + [zh for zh, _ in self.brands]:
            self.typos[word] = spell.misspellings(word)
            rows[tok.id(word)] = tok.ids(self.typos[word])
        for b, (_, la) in enumerate(self.brands):
            self.typos[la] = spell.misspellings(la)
            for s, form in enumerate(_LATIN_FORMS, start=1):  # the same misspelling in every case and width
                rows[int(self.brand_surf[b, s])] = tok.ids([form(v) for v in self.typos[la]])
        self.typo_tok = np.zeros((len(tok.words), TYPO_VARIANTS), np.int64)
        for src, ids in rows.items():
            if ids:
                self.typo_tok[src] = [ids[j % len(ids)] for j in range(TYPO_VARIANTS)]

    # Intent key: one int64 per (leaf, brand, colour, style); -1 means "not named".
    def intent_key(self, leaf, brand, colour, style) -> np.ndarray:
        key = np.asarray(leaf, dtype=np.int64) * (self.B + 1) + (np.asarray(brand) + 1)
        key = key * (self.C + 1) + (np.asarray(colour) + 1)
        return key * (self.S + 1) + (np.asarray(style) + 1)

    def intent_of(self, key: np.ndarray):
        key, style = np.divmod(np.asarray(key, dtype=np.int64), self.S + 1)
        key, colour = np.divmod(key, self.C + 1)
        leaf, brand = np.divmod(key, self.B + 1)
        return leaf, brand - 1, colour - 1, style - 1

    def canonical_query(self, key: int) -> str:
        """The intent's words, space-separated: unique for an intent by construction."""
        leaf, brand, colour, style = (int(x) for x in self.intent_of(np.array([key])))
        parts = [
            self.brands[brand][0] if brand >= 0 else "",
            self.styles[style] if style >= 0 else "",
            self.colours[colour] if colour >= 0 else "",
            self.leaf_names[leaf],
        ]
        return " ".join(p for p in parts if p)

    def to_json(self) -> dict:
        """What a query-understanding module needs: words for each structured field."""
        return {
            "top_categories": self.tops,
            "leaf_categories": [
                {"name": lf.name, "top_category": self.tops[int(t)], "synonyms": list(lf.synonyms)}
                for lf, t in zip(self.leaves, self.leaf_top)
            ],
            "brands": [
                {"name": zh, "aliases": [la], "top_category": self.tops[int(t)]}
                for (zh, la), t in zip(self.brands, self.brand_top)
            ],
            "colours": self.colours,
            "styles": {
                self.tops[t]: self.styles[self.style_lo[t] : self.style_hi[t]] for t in range(len(self.tops))
            },
        }

    def spellings_json(self) -> dict:
        """The spellings no title uses: misspellings by correct word, new spelling by brand."""
        return {
            "misspellings": {w: v for w, v in self.typos.items() if v},
            "new_spellings": {zh: new for (zh, _), new in zip(self.brands, self.new_spellings)},
        }


def _gumbel(rng, shape) -> np.ndarray:
    return -np.log(-np.log(rng.random(shape) + 1e-12) + 1e-12)


class World:
    """Catalog and users. Items are stored sorted by (leaf, brand) so that a leaf and a
    (leaf, brand) group are contiguous index ranges; `item_id` strings are a random
    numbering, so ids carry no category information."""

    def __init__(self, scale: Scale, rng: np.random.Generator):
        self.scale = scale
        self.lex = Lexicon(scale)
        self._build_items(scale.items, rng)
        self._build_shops(scale.shops, rng)
        self._build_users(scale.users, rng)
        self.t0 = int(datetime(DAY1.year, DAY1.month, DAY1.day, tzinfo=timezone.utc).timestamp()) - HISTORY_DAYS * 86_400
        w = np.array([SLOT_WEIGHTS[s % SLOTS_PER_DAY] for s in range(TOTAL_DAYS * SLOTS_PER_DAY)])
        self.slot_p = w / w.sum()

    # -- catalog --------------------------------------------------------------------
    def _build_items(self, n: int, rng) -> None:
        lex = self.lex
        if n < 2 * lex.L:
            raise ValueError(f"{n} items cannot fill {lex.L} leaf categories")
        leaf_w = rng.lognormal(0.0, 0.5, lex.L)
        # Two items per leaf first, so every leaf (and every query) has something relevant.
        leaf = np.concatenate([np.repeat(np.arange(lex.L), 2), rng.choice(lex.L, n - 2 * lex.L, p=leaf_w / leaf_w.sum())])
        top = lex.leaf_top[leaf]
        nb = lex.brand_hi - lex.brand_lo
        zipf = 1.0 / np.arange(1, nb.max() + 1) ** 1.1
        brand_rank = _zipf_draw(rng, zipf, nb[top])
        brand = np.where(rng.random(n) < 0.85, lex.brand_lo[top] + brand_rank, -1)
        colour = _pick_padded(rng, lex.top_colours, lex.top_ncolours, top)
        style = lex.style_lo[top] + (rng.random(n) * (lex.style_hi - lex.style_lo)[top]).astype(np.int64)
        material = np.where(rng.random(n) < 0.8, _pick_padded(rng, lex.top_materials, lex.top_nmaterials, top), -1)
        season = np.where(lex.top_seasonal[top] & (rng.random(n) < 0.8), rng.integers(0, len(SEASONS), n), -1)
        price_level = rng.choice(len(PRICE_LEVEL_P), n, p=PRICE_LEVEL_P)
        raw_price = lex.leaf_price[leaf] * np.array(PRICE_LEVEL_MULT)[price_level] * rng.lognormal(0, 0.15, n)
        price = np.maximum(np.round(raw_price) - 0.1, 0.9).round(1)  # shop-style prices: 158.9
        pop = rng.lognormal(0.0, 1.0, n)
        title_tok, title_sep = self._title_tokens(rng, leaf, top, brand, colour, style, material, season)

        order = np.lexsort((np.where(brand >= 0, brand, lex.B), leaf))
        self.item_leaf, self.item_top, self.item_brand = leaf[order], top[order], brand[order]
        self.item_colour, self.item_style, self.item_material = colour[order], style[order], material[order]
        self.item_season, self.item_price_level, self.item_price = season[order], price_level[order], price[order]
        self.item_log_pop = np.log(pop[order])
        self._title_tok, self._title_sep = title_tok[order], title_sep[order]
        self.n_items = n
        cum = np.concatenate([[0.0], np.cumsum(pop[order])])
        self.pop_cum = cum
        self.leaf_lo = np.searchsorted(self.item_leaf, np.arange(lex.L), "left")
        self.leaf_hi = np.searchsorted(self.item_leaf, np.arange(lex.L), "right")
        self._group_key = self.item_leaf.astype(np.int64) * (lex.B + 1) + np.where(self.item_brand >= 0, self.item_brand, lex.B)
        width = len(str(n))
        ids = rng.permutation(n)
        self.item_num = ids
        self.id_order = np.argsort(ids)  # internal index of the items in item_id order
        self.item_ids_py = [f"i{k:0{width}d}" for k in ids]

    def group_range(self, leaf: np.ndarray, brand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index range of the items of (leaf, brand); brand -1 means brandless."""
        key = leaf.astype(np.int64) * (self.lex.B + 1) + np.where(brand >= 0, brand, self.lex.B)
        return np.searchsorted(self._group_key, key, "left"), np.searchsorted(self._group_key, key, "right")

    def _title_tokens(self, rng, leaf, top, brand, colour, style, material, season):
        """Token ids of each title, [n, 13], in a per-item word order, and separators."""
        lex, n = self.lex, leaf.size
        r = rng.random
        slots = np.zeros((n, 13), dtype=np.int64)
        slots[:, 0] = np.where(r(n) < 0.15, lex.front_tok[rng.integers(0, len(lex.front_tok), n)], 0)
        surf = rng.choice(6, n, p=(0.5, 0.2, 0.08, 0.0, 0.04, 0.18))  # zh, latin, Latin, -, FW, zh+latin
        slots[:, 1] = np.where(brand >= 0, lex.brand_surf[np.maximum(brand, 0), surf], 0)
        slots[:, 2] = np.where(season >= 0, lex.season_tok[np.maximum(season, 0)], 0)
        year = np.where(r(n) < 0.85, 0, 1)
        slots[:, 3] = np.where((season >= 0) & (r(n) < 0.3), lex.year_tok[year], 0)
        slots[:, 4] = np.where(r(n) < 0.45, lex.new_tok, 0)
        slots[:, 5] = np.where(r(n) < 0.7, lex.style_tok[style], 0)
        slots[:, 6] = _pick_padded_tok(rng, lex.top_details, lex.top_ndetails, top, 0.7)
        slots[:, 7] = np.where((colour >= 0) & (r(n) < 0.75), lex.colour_tok[np.maximum(colour, 0)], 0)
        slots[:, 8] = np.where((material >= 0) & (r(n) < 0.6), lex.material_tok[np.maximum(material, 0)], 0)
        # Category word: canonical, a synonym, or synonym + canonical ("短袖T恤").
        u = r(n)
        syn = _pick_padded_tok(rng, lex.leaf_syn, lex.leaf_nsyn, leaf, 1.0)
        combo = _pick_padded_tok(rng, lex.leaf_combo, lex.leaf_ncombo, leaf, 1.0)
        slots[:, 9] = np.where(u < 0.6, lex.leaf_canon_tok[leaf], np.where(u < 0.82, syn, combo))
        slots[:, 10] = _pick_padded_tok(rng, lex.top_details, lex.top_ndetails, top, 0.4)
        slots[:, 11] = _pick_padded_tok(rng, lex.top_gender, lex.top_ngender, top, 0.75)
        slots[:, 12] = np.where(r(n) < 0.15, lex.end_tok[rng.integers(0, len(lex.end_tok), n)], 0)
        # Word order: brand first or after season/新款, a shuffled attribute block, and
        # sometimes a descriptor after the category word.
        base_a = np.array([0, 1, 3, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        base_b = np.array([0, 3, 2, 4, 1, 5, 6, 7, 8, 9, 10, 11, 12])
        perm = np.where((r(n) < 0.6)[:, None], base_a, base_b)
        mid = np.argsort(r((n, 4)), axis=1) + 5
        perm[:, 5:9] = np.take_along_axis(perm, mid, axis=1)
        swap = r(n) < 0.25
        perm[swap, 9], perm[swap, 10] = perm[swap, 10], perm[swap, 9].copy()
        sep = (r(n) < 0.15).astype(np.int8)  # 1: words separated by spaces
        return np.take_along_axis(slots, perm, axis=1), sep

    def titles(self, index: np.ndarray):
        """Titles of the items at `index` as an Arrow string array."""
        return _join_tokens(self.lex.tokens.words, self._title_tok[index], self._title_sep[index])

    def _build_shops(self, n_shops: int, rng) -> None:
        """Shops mostly sell one top category; each item is sold by one shop."""
        lex, n = self.lex, self.n_items
        items_per_top = np.bincount(self.item_top, minlength=len(lex.tops)).astype(np.float64)
        shop_top = np.sort(rng.choice(len(lex.tops), n_shops, p=items_per_top / items_per_top.sum()))
        shop_w = rng.lognormal(0.0, 1.0, n_shops)
        cum = np.concatenate([[0.0], np.cumsum(shop_w)])
        lo = np.searchsorted(shop_top, np.arange(len(lex.tops)), "left")
        hi = np.searchsorted(shop_top, np.arange(len(lex.tops)), "right")
        own, ok = _sample_ranges(rng, cum, lo[self.item_top], hi[self.item_top], 1)
        anywhere = _sample_ranges(rng, cum, np.zeros(n, np.int64), np.full(n, n_shops), 1)[0]
        shop = np.where(ok[:, 0] & (rng.random(n) < 0.9), own[:, 0], anywhere[:, 0])
        width = len(str(n_shops))
        names = rng.permutation(n_shops)
        self.shop_ids_py = [f"s{k:0{width}d}" for k in names]
        self.item_shop = shop

    # -- users ----------------------------------------------------------------------
    def _build_users(self, n: int, rng) -> None:
        """Lasting tastes: three favourite leaves, a brand and a style per top category,
        a colour and a price level; activity varies lognormally across users."""
        lex = self.lex
        leaf_sizes = (self.leaf_hi - self.leaf_lo).astype(np.float64)
        leaf_p = leaf_sizes / leaf_sizes.sum()
        first = rng.choice(lex.L, n, p=leaf_p)
        favs = [first]
        for _ in range(2):
            top = lex.leaf_top[first]
            same = lex.top_leaves[top, (rng.random(n) * lex.top_nleaves[top]).astype(np.int64)]
            favs.append(np.where(rng.random(n) < 0.6, same, rng.choice(lex.L, n, p=leaf_p)))
        self.user_leaves = np.stack(favs, axis=1)
        self.leaf_p = leaf_p
        nb = lex.brand_hi - lex.brand_lo
        # Flatter than the catalog's brand sizes: fans spread over more brands than stock does.
        zipf = 1.0 / np.arange(1, nb.max() + 1) ** USER_BRAND_ZIPF
        tops = np.arange(len(lex.tops))
        self.user_brand = lex.brand_lo[tops] + _zipf_draw(rng, zipf, np.broadcast_to(nb, (n, len(tops))))
        ns = lex.style_hi - lex.style_lo
        self.user_style = lex.style_lo[tops] + (rng.random((n, len(tops))) * ns).astype(np.int64)
        self.user_colour = rng.integers(0, max(lex.C, 1), n)
        self.user_price_level = rng.choice(len(PRICE_LEVEL_P), n, p=PRICE_LEVEL_P)
        self.user_rate = SESSIONS_PER_DAY * rng.lognormal(-0.18, 0.6, n)  # mean ~= SESSIONS_PER_DAY
        width = len(str(n))
        self.user_ids_py = [f"u{k:0{width}d}" for k in range(n)]
        self.n_users = n

    def arrow(self, name: str):
        """`item_ids`, `user_ids` or `shop_ids` as a cached Arrow string array."""
        cache = self.__dict__.setdefault("_arrow", {})
        if name not in cache:
            import pyarrow as pa

            cache[name] = pa.array(getattr(self, name + "_py"), pa.string())
        return cache[name]

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Log-odds taste of each user for each item; users [r, 1] or [r], items [r, k]."""
        u = users.reshape(-1, 1) if items.ndim == 2 else users
        top = self.item_top[items]
        s = W_POPULARITY * self.item_log_pop[items]
        s = s + W_BRAND * (self.item_brand[items] == self.user_brand[u, top])
        s = s + W_STYLE * (self.item_style[items] == self.user_style[u, top])
        s = s + W_COLOUR * (self.item_colour[items] == self.user_colour[u])
        return s - W_PRICE * np.abs(self.item_price_level[items] - self.user_price_level[u])

    def relevant(self, items, leaf, brand, colour, style) -> np.ndarray:
        """Whether items match an intent (leaf and every attribute the query names)."""
        ok = self.item_leaf[items] == leaf
        ok &= (brand < 0) | (self.item_brand[items] == brand)
        ok &= (colour < 0) | (self.item_colour[items] == colour)
        return ok & ((style < 0) | (self.item_style[items] == style))

    def pick_by_taste(self, rng, users, leaf, k: int = 8) -> np.ndarray:
        """One item per row from `leaf`, half the candidates from the user's brand there,
        chosen by popularity and taste (Gumbel-max sampling)."""
        pref_brand = self.user_brand[users, self.lex.leaf_top[leaf]]
        c1, v1 = _sample_ranges(rng, self.pop_cum, self.leaf_lo[leaf], self.leaf_hi[leaf], k)
        c2, v2 = _sample_ranges(rng, self.pop_cum, *self.group_range(leaf, pref_brand), k)
        cand, valid = np.hstack([c1, c2]), np.hstack([v1, v2])
        score = np.where(valid, self.affinity(users, cand) + _gumbel(rng, cand.shape), -np.inf)
        return cand[np.arange(cand.shape[0]), np.argmax(score, axis=1)]


def _zipf_draw(rng, weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rank draws with P(rank) ~ weights[rank] restricted to rank < count (per element)."""
    cum = np.cumsum(weights)
    target = rng.random(counts.shape) * cum[counts - 1]
    return np.minimum(np.searchsorted(cum, target, "right"), counts - 1)


def _pick_padded(rng, table: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A random entry of table[row, :counts[row]] per element, -1 where the row is empty."""
    c = counts[rows]
    pick = table[rows, (rng.random(rows.shape) * np.maximum(c, 1)).astype(np.int64)]
    return np.where(c > 0, pick, -1)


def _pick_padded_tok(rng, table, counts, rows, p: float) -> np.ndarray:
    """Like `_pick_padded` for token tables, giving token 0 ('') with probability 1 - p."""
    pick = _pick_padded(rng, table, counts, rows)
    return np.where((pick >= 0) & (rng.random(rows.shape) < p), np.maximum(pick, 0), 0)


def _sample_ranges(rng, cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int):
    """k popularity-weighted draws (with replacement) per row from index ranges [lo, hi).

    cum: cumulative weights, length n + 1. Returns (index [rows, k], valid [rows, k]);
    rows with an empty range are invalid."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    a, b = cum[lo][:, None], cum[hi][:, None]
    idx = np.searchsorted(cum, a + rng.random((lo.size, k)) * (b - a), "right") - 1
    idx = np.clip(idx, lo[:, None], np.maximum(hi - 1, lo)[:, None])
    idx = np.minimum(idx, cum.size - 2)
    return idx, np.broadcast_to((hi > lo)[:, None], idx.shape).copy()


def _join_tokens(words: list[str], tok: np.ndarray, sep: np.ndarray):
    """Arrow strings from token-id rows: words joined directly or by single spaces."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.array(words, pa.string())
    cols = [table.take(pa.array(tok[:, j])) for j in range(tok.shape[1])]
    seps = pa.array(np.where(sep == 1, " ", ""), pa.string())
    joined = pc.binary_join_element_wise(*cols, seps)
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(joined, r" {2,}", " "))


def _normalize_arrow(strings):
    """`features.normalize` for the generated vocabulary (no punctuation in queries),
    vectorised: NFKC, lower case, single spaces."""
    import pyarrow.compute as pc

    out = pc.utf8_lower(pc.utf8_normalize(strings, form="NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(out, r"\s+", " "))


# ---------------------------------------------------------------------------------
# Simulation of one chunk of users.
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phenomena:
    """Shares of the searches that carry each phenomenon (docs/synthetic_world.md)."""

    typo: float = TYPO
    new_spelling: float = NEW_SPELLING
    history_intent: float = HISTORY_INTENT


# Per-search ground truth: which phenomena a search carries (truth/searches.<ext>).
SEARCH_COUNTS = ("typo", "new_spelling", "test_day_brand_searches", "history_intent", "history_from_session")


@dataclass
class _Chunk:
    events: object  # pyarrow.Table
    queries: object  # pyarrow.Table of distinct (query, key)
    searches_truth: object  # pyarrow.Table, one row per search
    searches: int
    search_clicks: int
    noisy_clicks: int
    counts: dict  # SEARCH_COUNTS -> searches


class _QueryBinder:
    """Keeps every normalised query string bound to one intent across chunks."""

    def __init__(self, lex: Lexicon):
        self.lex = lex
        self.bound: dict[str, int] = {}
        self.fixed = 0

    def bind(self, queries, keys: np.ndarray):
        """Returns the queries, a clashing one replaced by its intent's canonical form, and
        whether each was replaced."""
        import pyarrow as pa
        import pyarrow.compute as pc

        norm = _normalize_arrow(queries)
        pairs = pa.table({"n": norm, "k": pa.array(keys)}).group_by(["n", "k"]).aggregate([])
        clash = set()
        for q, k in zip(pairs["n"].to_pylist(), pairs["k"].to_pylist()):
            if self.bound.setdefault(q, k) != k:
                clash.add(q)
        respelled = np.zeros(len(queries), bool)
        if not clash:
            return queries, respelled
        rows = np.flatnonzero(pc.is_in(norm, value_set=pa.array(sorted(clash))).to_numpy(zero_copy_only=False))
        py = queries.to_pylist()
        norm_py = norm.take(pa.array(rows)).to_pylist()
        for r, q in zip(rows, norm_py):
            k = int(keys[r])
            if self.bound[q] != k:  # an ambiguous concatenation: fall back to the spaced canonical form
                canon = self.lex.canonical_query(k)
                canon_norm = features.normalize(canon)
                if self.bound.setdefault(canon_norm, k) != k:
                    raise RuntimeError(f"canonical query {canon!r} bound to two intents")
                py[r] = canon
                respelled[r] = True
                self.fixed += 1
        return pa.array(py, pa.string()), respelled


def _query_strings(w: World, rng, leaf, brand, colour, style, typo_at, typo_v, new_spelling):
    """Surface forms of search intents: word order, synonyms, Latin aliases, optional
    gender word and 新款, with or without spaces; the brand's new spelling where
    `new_spelling`, misspelling `typo_v` of the brand (`typo_at` 1) or category word (4).
    Returns the strings and, per search, the token of the misspelled word and of its
    misspelling (0 and 0 where nothing is misspelled)."""
    lex, n = w.lex, leaf.size
    r = rng.random
    top = lex.leaf_top[leaf]
    slots = np.zeros((n, 6), dtype=np.int64)
    slots[:, 0] = np.where(r(n) < 0.06, lex.new_tok, 0)
    surf = rng.choice(6, n, p=(0.55, 0.30, 0.08, 0.04, 0.03, 0.0))
    slots[:, 1] = np.where(brand >= 0, lex.brand_surf[np.maximum(brand, 0), surf], 0)
    slots[:, 2] = np.where(style >= 0, lex.style_tok[np.maximum(style, 0)], 0)
    slots[:, 3] = np.where(colour >= 0, lex.colour_tok[np.maximum(colour, 0)], 0)
    syn = _pick_padded_tok(rng, lex.leaf_syn, lex.leaf_nsyn, leaf, 1.0)
    slots[:, 4] = np.where((r(n) < 0.55) | (syn == 0), lex.leaf_canon_tok[leaf], syn)
    slots[:, 5] = _pick_padded_tok(rng, lex.top_gender, lex.top_ngender, top, 0.35)
    rows = np.flatnonzero(typo_at > 0)
    typo_of, typo = np.zeros(n, np.int64), np.zeros(n, np.int64)
    typo_of[rows] = slots[rows, typo_at[rows]]
    typo[rows] = lex.typo_tok[typo_of[rows], typo_v[rows]]
    typo_of[typo == 0] = 0  # a word without misspellings stays as it is
    rows = rows[typo[rows] > 0]
    slots[rows, typo_at[rows]] = typo[rows]
    slots[:, 1] = np.where(new_spelling, lex.brand_new_tok[np.maximum(brand, 0)], slots[:, 1])
    orders = np.array([[0, 1, 2, 3, 4, 5], [0, 2, 3, 1, 4, 5], [0, 4, 1, 3, 2, 5], [0, 1, 4, 3, 2, 5]])
    perm = orders[rng.choice(4, n, p=(0.45, 0.15, 0.2, 0.2))]
    sep = (r(n) < 0.4).astype(np.int8)
    return _join_tokens(lex.tokens.words, np.take_along_axis(slots, perm, axis=1), sep), typo_of, typo


def _history_intents(w: World, rng, share: float, q_user, q_sess, leaf, i_brand):
    """Picks a `share` of the searches to name only their category while the user wants one
    brand: the brand named by the latest earlier search of the same session, else the
    user's favourite brand in the category's top category. Such a search moves to a leaf
    of that brand's top category where the brand sells (its own leaf first); one that finds
    none stays an ordinary search. Returns the wanted brand [S] (-1: no history intent),
    whether it came from the session [S], and the leaves [S]."""
    lex, S = w.lex, leaf.size
    chosen = rng.random(S) < share
    named = (i_brand >= 0) & ~chosen
    prev = np.r_[-1, np.maximum.accumulate(np.where(named, np.arange(S), -1))[:-1]]
    session = chosen & (prev >= 0) & (q_sess[np.maximum(prev, 0)] == q_sess)
    brand = np.where(session, i_brand[np.maximum(prev, 0)], w.user_brand[q_user, lex.leaf_top[leaf]])
    h = np.flatnonzero(chosen)
    top = lex.brand_top[brand[h]]
    r = (rng.random((h.size, HISTORY_LEAF_TRIES)) * lex.top_nleaves[top][:, None]).astype(np.int64)
    cand = np.hstack([leaf[h][:, None], lex.top_leaves[top[:, None], r]])
    lo, hi = w.group_range(cand.ravel(), np.repeat(brand[h], cand.shape[1]))
    ok = (lex.leaf_top[cand] == top[:, None]) & (hi > lo).reshape(cand.shape)
    pick = np.argmax(ok, axis=1)
    found = ok[np.arange(h.size), pick]
    leaf = leaf.copy()
    leaf[h[found]] = cand[np.arange(h.size), pick][found]
    chosen[h[~found]] = False
    return np.where(chosen, brand, -1), session & chosen, leaf


def _simulate(w: World, users: np.ndarray, rng, noise: float, binder: _QueryBinder, ph: Phenomena) -> _Chunk:
    import pyarrow as pa
    import pyarrow.compute as pc

    lex = w.lex
    # Sessions: distinct 2-hour slots over the 38 days, sorted by user then time.
    n_sess = np.maximum(1, rng.poisson(w.user_rate[users] * TOTAL_DAYS))
    n_slots = TOTAL_DAYS * SLOTS_PER_DAY
    key = np.unique(np.repeat(users.astype(np.int64), n_sess) * n_slots + rng.choice(n_slots, n_sess.sum(), p=w.slot_p))
    s_user, slot = np.divmod(key, n_slots)
    s_start = w.t0 + (slot // SLOTS_PER_DAY) * 86_400 + (slot % SLOTS_PER_DAY) * SLOT_SECONDS + rng.integers(0, 600, key.size)
    new_user = np.r_[True, s_user[1:] != s_user[:-1]]
    pos = np.arange(key.size)
    s_num = pos - np.maximum.accumulate(np.where(new_user, pos, 0))
    # Steps within a session, seconds apart; each a search or a behaviour without one.
    n_steps = np.minimum(1 + rng.poisson(STEPS_MEAN, key.size), MAX_STEPS)
    st_sess = np.repeat(np.arange(key.size), n_steps)
    first = np.r_[0, np.cumsum(n_steps)[:-1]]
    gap = rng.integers(STEP_GAP_SECONDS[0], STEP_GAP_SECONDS[1] + 1, st_sess.size)
    gap[first] = 0
    cs = np.cumsum(gap)
    st_ts = s_start[st_sess] + cs - cs[first][st_sess]
    is_search = rng.random(st_sess.size) < SEARCH_SHARE

    # ---- searches: intent from an item the user would like, then clicks ----
    sq = np.flatnonzero(is_search)
    S = sq.size
    q_user, q_ts, q_sess = s_user[st_sess[sq]], st_ts[sq], st_sess[sq]
    fav = w.user_leaves[q_user, rng.choice(3, S, p=PREF_LEAF_WEIGHTS)]
    leaf = np.where(rng.random(S) < P_PREF_LEAF, fav, rng.choice(lex.L, S, p=w.leaf_p))
    target = w.pick_by_taste(rng, q_user, leaf)
    i_brand = np.where((w.item_brand[target] >= 0) & (rng.random(S) < P_QUERY_BRAND), w.item_brand[target], -1)
    i_colour = np.where((w.item_colour[target] >= 0) & (rng.random(S) < P_QUERY_COLOUR), w.item_colour[target], -1)
    i_style = np.where(rng.random(S) < P_QUERY_STYLE, w.item_style[target], -1)

    # History-dependent intents: the query names only the category (its truth intent),
    # while the user clicks only the brand the session or their taste implies.
    h_brand, h_session, leaf = _history_intents(w, rng, ph.history_intent, q_user, q_sess, leaf, i_brand)
    hist = h_brand >= 0
    h = np.flatnonzero(hist)
    c, v = _sample_ranges(rng, w.pop_cum, *w.group_range(leaf[h], h_brand[h]), 8)
    score = np.where(v, w.affinity(q_user[h], c) + _gumbel(rng, c.shape), -np.inf)
    target[h] = c[np.arange(h.size), np.argmax(score, axis=1)]
    i_brand, i_colour, i_style = (np.where(hist, -1, a) for a in (i_brand, i_colour, i_style))
    click_brand = np.where(hist, h_brand, i_brand)

    # Relevant clicks: candidates from the leaf and from the named (or favourite) brand
    # there; the relevant ones compete by taste + Gumbel noise (a softmax draw).
    group_brand = np.where(click_brand >= 0, click_brand, w.user_brand[q_user, lex.leaf_top[leaf]])
    c1, v1 = _sample_ranges(rng, w.pop_cum, w.leaf_lo[leaf], w.leaf_hi[leaf], 12)
    c2, v2 = _sample_ranges(rng, w.pop_cum, *w.group_range(leaf, group_brand), 12)
    cand = np.hstack([target[:, None], c1, c2])
    valid = np.hstack([np.ones((S, 1), bool), v1, v2])
    valid &= w.relevant(cand, leaf[:, None], click_brand[:, None], i_colour[:, None], i_style[:, None])
    valid &= ~_duplicates(cand)
    score = np.where(valid, w.affinity(q_user, cand) + _gumbel(rng, cand.shape), -np.inf)
    n_rel = np.minimum(1 + rng.poisson(EXTRA_CLICKS_MEAN, S), valid.sum(axis=1))
    order = np.argsort(-score, axis=1)
    take = np.arange(cand.shape[1])[None, :] < n_rel[:, None]
    rel_s = np.nonzero(take)[0]
    rel_item = np.take_along_axis(cand, order, axis=1)[take]

    # Noisy clicks: Poisson(n_rel * noise / (1 - noise)) per search, so noisy clicks
    # are a `noise` share of all search clicks in expectation.
    if noise > 0:
        n_noisy = rng.poisson(n_rel * noise / (1.0 - noise))
        nz_s = np.repeat(np.arange(S), n_noisy)
        nz_item = _noisy_items(w, rng, nz_s, q_user, leaf, i_brand, i_colour, i_style)
        # A search clicks an item once: redraw repeats instead of dropping them, which
        # would bias the realised noise share low.
        for _ in range(NOISE_REDRAWS):
            keys = np.concatenate([rel_s * w.n_items + rel_item, nz_s * w.n_items + nz_item])
            _, first_at = np.unique(keys, return_index=True)
            repeat = np.ones(keys.size, bool)
            repeat[first_at] = False
            again = np.flatnonzero(repeat[rel_s.size:])
            if not again.size:
                break
            nz_item[again] = _noisy_items(w, rng, nz_s[again], q_user, leaf, i_brand, i_colour, i_style)
    else:
        nz_s = nz_item = np.zeros(0, np.int64)
    click_s = np.concatenate([rel_s, nz_s])
    click_item = np.concatenate([rel_item, nz_item])
    pair = np.unique(click_s.astype(np.int64) * w.n_items + click_item)  # repeats left after the redraws
    click_s, click_item = np.divmod(pair, w.n_items)
    is_rel = w.relevant(click_item, leaf[click_s], i_brand[click_s], i_colour[click_s], i_style[click_s])

    # Purchases, carts and collects follow some clicks (relevant ones far more often).
    nc = click_s.size
    p_buy = np.where(
        is_rel,
        P_PURCHASE_RELEVANT + P_PURCHASE_PRICE_MATCH * (w.item_price_level[click_item] == w.user_price_level[q_user[click_s]]),
        P_PURCHASE_NOISY,
    )
    extra = [(rng.random(nc) < p, code) for p, code in ((P_CART, CART), (P_COLLECT, COLLECT), (p_buy, PURCHASE))]
    ev_s = np.concatenate([click_s] + [click_s[m] for m, _ in extra])
    ev_item = np.concatenate([click_item] + [click_item[m] for m, _ in extra])
    ev_act = np.concatenate([np.full(nc, CLICK)] + [np.full(m.sum(), code) for m, code in extra])

    # ---- behaviours without a search: feed clicks, carts, collects ----
    bq = np.flatnonzero(~is_search)
    b_user = s_user[st_sess[bq]]
    b_fav = w.user_leaves[b_user, rng.choice(3, bq.size, p=PREF_LEAF_WEIGHTS)]
    b_leaf = np.where(rng.random(bq.size) < 0.9, b_fav, rng.choice(lex.L, bq.size, p=w.leaf_p))
    b_item = w.pick_by_taste(rng, b_user, b_leaf)
    b_act = rng.choice(4, bq.size, p=BROWSE_ACTION_P)

    # ---- assemble, ordered by user, time, then click before what follows it ----
    e_user = np.concatenate([q_user[ev_s], b_user])
    e_ts = np.concatenate([q_ts[ev_s], st_ts[bq]])
    e_sess = np.concatenate([q_sess[ev_s], st_sess[bq]])
    e_q = np.concatenate([ev_s, np.full(bq.size, S)])
    e_item = np.concatenate([ev_item, b_item])
    e_act = np.concatenate([ev_act, b_act])
    o = np.lexsort((e_act, e_item, e_ts, e_user))

    # Spellings: a brand's new spelling in some of the test day's branded searches, and
    # misspelled brand or category words in any search.
    q_keys = lex.intent_key(leaf, i_brand, i_colour, i_style)
    test_day = q_ts >= w.t0 + (TOTAL_DAYS - 1) * 86_400
    new_spelling = test_day & (i_brand >= 0) & (rng.random(S) < ph.new_spelling)
    typo_brand = (i_brand >= 0) & ~new_spelling & (rng.random(S) < P_TYPO_BRAND)
    typo_at = np.where(rng.random(S) < ph.typo, np.where(typo_brand, 1, 4), 0)
    strings, typo_of, typo = _query_strings(
        w, rng, leaf, i_brand, i_colour, i_style, typo_at, rng.integers(0, TYPO_VARIANTS, S), new_spelling
    )
    queries, respelled = binder.bind(strings, q_keys)
    typo[respelled] = typo_of[respelled] = 0  # the canonical form replaced the query
    new_spelling &= ~respelled
    user_ids = w.arrow("user_ids")
    sess_ids = pc.binary_join_element_wise(
        user_ids.take(pa.array(s_user)), pc.cast(pa.array(s_num), pa.string()), "-"
    )
    words = pa.array(lex.tokens.words, pa.string())
    searches = pa.table(
        {
            "user_id": user_ids.take(pa.array(q_user)),
            "ts": pa.array(q_ts, pa.int64()),
            "session_id": sess_ids.take(pa.array(q_sess)),
            "query": queries,
            "typo": pa.array(typo > 0),
            "typo_word": words.take(pa.array(typo)),
            "typo_of": words.take(pa.array(typo_of)),
            "new_spelling": pa.array(new_spelling),
            "history_intent": pa.array(hist),
            "history_brand": pa.array([b[0] for b in lex.brands] + [""], pa.string()).take(
                pa.array(np.where(hist, h_brand, lex.B))
            ),
            "history_source": pa.array(np.where(h_session, "session", np.where(hist, "favourite", ""))),
        }
    )
    counts = dict(zip(SEARCH_COUNTS, (
        int((typo > 0).sum()), int(new_spelling.sum()), int((test_day & (i_brand >= 0)).sum()),
        int(hist.sum()), int(h_session.sum()),
    )))
    events = pa.table(
        {
            "user_id": user_ids.take(pa.array(e_user[o])),
            "ts": pa.array(e_ts[o], pa.int64()),
            "session_id": sess_ids.take(pa.array(e_sess[o])),
            "query": pa.concat_arrays([queries, pa.array([""], pa.string())]).take(pa.array(e_q[o])),
            "item_id": w.arrow("item_ids").take(pa.array(e_item[o])),
            "action": pa.array(ACTIONS, pa.string()).take(pa.array(e_act[o])),
        }
    )
    distinct = pa.table({"query": queries, "key": pa.array(q_keys)}).group_by(["query", "key"]).aggregate([])
    return _Chunk(events, distinct, searches, S, int(nc), int((~is_rel).sum()), counts)


def _duplicates(cand: np.ndarray) -> np.ndarray:
    """True for a repeat of an earlier candidate in the same row."""
    o = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, o, axis=1)
    dup_sorted = np.hstack([np.zeros((cand.shape[0], 1), bool), s[:, 1:] == s[:, :-1]])
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, o, dup_sorted, axis=1)
    return dup


def _noisy_items(w: World, rng, nz_s, q_user, leaf, i_brand, i_colour, i_style) -> np.ndarray:
    """Irrelevant items clicked under a search: another leaf of the same top category,
    the same leaf with a brand/colour/style the query did not ask for (the adidas query
    that clicks a Nike shoe), or something from the user's other favourite categories."""
    lex, m = w.lex, nz_s.size
    users, q_leaf = q_user[nz_s], leaf[nz_s]
    kind = rng.choice(3, m, p=NOISE_KIND_P)
    out = np.full(m, -1, np.int64)

    # b: same leaf, attribute mismatch (only when the query names an attribute).
    has_attr = (i_brand[nz_s] >= 0) | (i_colour[nz_s] >= 0) | (i_style[nz_s] >= 0)
    b = np.flatnonzero((kind == 1) & has_attr)
    if b.size:
        cand, valid = _sample_ranges(rng, w.pop_cum, w.leaf_lo[q_leaf[b]], w.leaf_hi[q_leaf[b]], 8)
        s = nz_s[b][:, None]
        valid &= ~w.relevant(cand, leaf[s], i_brand[s], i_colour[s], i_style[s])
        score = np.where(valid, w.affinity(users[b], cand) + _gumbel(rng, cand.shape), -np.inf)
        best = np.argmax(score, axis=1)
        ok = valid[np.arange(b.size), best]
        out[b[ok]] = cand[np.arange(b.size), best][ok]

    # c: one of the user's other favourite leaves.
    other_leaf = np.full(m, -1, np.int64)
    c = np.flatnonzero(kind == 2)
    if c.size:
        favs = w.user_leaves[users[c]]
        ok = favs != q_leaf[c][:, None]
        pick = np.argmax(np.where(ok, rng.random(ok.shape), -1.0), axis=1)
        found = ok[np.arange(c.size), pick]
        other_leaf[c[found]] = favs[np.arange(c.size), pick][found]

    # a (and every fallback): another leaf of the same top category.
    a = np.flatnonzero((out < 0) & (other_leaf < 0))
    if a.size:
        top = lex.leaf_top[q_leaf[a]]
        r = (rng.random(a.size) * (lex.top_nleaves[top] - 1)).astype(np.int64)
        r += r >= lex.leaf_pos[q_leaf[a]]
        other_leaf[a] = lex.top_leaves[top, r]
    need = np.flatnonzero(out < 0)
    out[need] = w.pick_by_taste(rng, users[need], other_leaf[need], k=4)
    return out


# ---------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------


def item_schema():
    import pyarrow as pa

    return pa.schema(
        [("item_id", pa.string()), ("title", pa.string()), ("leaf_category", pa.string()),
         ("top_category", pa.string()), ("brand", pa.string()), ("shop", pa.string()), ("price", pa.float64())]
    )


def search_schema():
    import pyarrow as pa

    return pa.schema(
        [("user_id", pa.string()), ("ts", pa.int64()), ("session_id", pa.string()), ("query", pa.string()),
         ("typo", pa.bool_()), ("typo_word", pa.string()), ("typo_of", pa.string()), ("new_spelling", pa.bool_()),
         ("history_intent", pa.bool_()), ("history_brand", pa.string()), ("history_source", pa.string())]
    )


def event_schema():
    import pyarrow as pa

    return pa.schema(
        [("user_id", pa.string()), ("ts", pa.int64()), ("session_id", pa.string()), ("query", pa.string()),
         ("item_id", pa.string()), ("action", pa.string())]
    )


class TableWriter:
    """Appends Arrow tables to one file in the format its extension names (jsonl, csv,
    parquet), chunk by chunk, so a large world or dataset never sits in memory whole.
    JSON Lines omit null fields; CSV writes them empty."""

    def __init__(self, path: str, schema):
        self.path, self.schema = path, schema
        self.fmt = contract.format_of(path)
        self.rows = 0
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._pq = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            self._f = open(path, "w", encoding="utf-8", newline="")
            if self.fmt == "csv":
                self._csv = csv.writer(self._f)
                self._csv.writerow(schema.names)

    def write(self, table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        if self.fmt == "parquet":
            self._pq.write_table(table, row_group_size=1 << 20)
            return
        for batch in table.to_batches(max_chunksize=65_536):
            rows = batch.to_pylist()
            if self.fmt == "jsonl":
                self._f.write(
                    "".join(json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n" for r in rows)
                )
            else:
                self._csv.writerows(["" if v is None else v for v in r.values()] for r in rows)

    def close(self) -> None:
        if self.fmt == "parquet":
            self._pq.close()
        else:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _write_jsonl(f, table) -> None:
    """Appends a table to an open text file as JSON Lines (every field, '' kept)."""
    for batch in table.to_batches(max_chunksize=65_536):
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch.to_pylist()))


def _item_tables(w: World, lo: int, hi: int):
    """Catalog rows and ground-truth rows of items lo..hi (in item_id order)."""
    import pyarrow as pa

    lex = w.lex
    idx = w.id_order[lo:hi]
    words = lambda names, codes: pa.array(names + [""], pa.string()).take(pa.array(np.where(codes >= 0, codes, len(names))))  # noqa: E731
    item_id = w.arrow("item_ids").take(pa.array(idx))
    brand = pa.array([b[0] for b in lex.brands] + [""], pa.string()).take(
        pa.array(np.where(w.item_brand[idx] >= 0, w.item_brand[idx], lex.B))
    )
    leaf = words(lex.leaf_names, w.item_leaf[idx])
    top = words(lex.tops, w.item_top[idx])
    items = pa.table(
        {
            "item_id": item_id, "title": w.titles(idx), "leaf_category": leaf, "top_category": top,
            "brand": brand, "shop": w.arrow("shop_ids").take(pa.array(w.item_shop[idx])),
            "price": pa.array(w.item_price[idx], pa.float64()),
        }
    )
    truth = pa.table(
        {
            "item_id": item_id, "leaf_category": leaf, "top_category": top, "brand": brand,
            "colour": words(lex.colours, w.item_colour[idx]), "style": words(lex.styles, w.item_style[idx]),
            "season": words(list(SEASONS), w.item_season[idx]), "material": words(lex.materials, w.item_material[idx]),
            "price_level": pa.array(w.item_price_level[idx], pa.int64()),
        }
    )
    return items, truth


# ---------------------------------------------------------------------------------
# Public API and CLI.
# ---------------------------------------------------------------------------------


def generate(
    out_dir: str,
    scale: str = "tiny",
    seed: int = 0,
    fmt: str | None = None,
    noise: float = 0.2,
    progress: bool = True,
    typo: float = TYPO,
    new_spelling: float = NEW_SPELLING,
    history_intent: float = HISTORY_INTENT,
) -> dict:
    """Writes a synthetic world to `out_dir` and returns its summary: counts of items,
    users, events, searches, search clicks and noisy clicks, days, the realised noise
    share (noisy / all clicks under searches, judged against the ground truth), the
    searches carrying each phenomenon with its realised share, and the paths written.

    typo: share of searches with a misspelled category or brand word; new_spelling: share
    of the test day's searches naming a brand that use its new spelling; history_intent:
    share of searches naming only the category whose clicks follow the user's brand."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm import tqdm

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
    cfg = SCALES[scale]
    fmt = fmt or cfg.fmt
    if fmt not in contract.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {contract.FORMATS}")
    if not 0.0 <= noise < MAX_NOISE:
        raise ValueError(f"noise {noise} must be in [0, {MAX_NOISE})")
    ph = Phenomena(typo, new_spelling, history_intent)
    for name, share in vars(ph).items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} {share} must be in [0, 1]")
    started = time.time()
    seeds = np.random.SeedSequence([seed, 0x5EED])
    world_seed, sim_seed = seeds.spawn(2)
    w = World(cfg, np.random.default_rng(world_seed))
    os.makedirs(os.path.join(out_dir, "truth"), exist_ok=True)
    paths = {
        "items": os.path.join(out_dir, f"items.{fmt}"),
        "events": os.path.join(out_dir, f"events.{fmt}"),
        "truth_items": os.path.join(out_dir, "truth", "items.jsonl"),
        "truth_queries": os.path.join(out_dir, "truth", "queries.jsonl"),
        "truth_searches": os.path.join(out_dir, "truth", f"searches.{'parquet' if fmt == 'parquet' else 'jsonl'}"),
        "lexicon": os.path.join(out_dir, "truth", "lexicon.json"),
        "spellings": os.path.join(out_dir, "truth", "spellings.json"),
        "world": os.path.join(out_dir, "world.json"),
    }

    item_chunk = 250_000
    n_user_chunks = -(-w.n_users // cfg.chunk_users)
    bar = tqdm(total=-(-w.n_items // item_chunk) + n_user_chunks, desc=f"synth {scale}", unit="chunk", disable=not progress)
    with TableWriter(paths["items"], item_schema()) as items_out, open(paths["truth_items"], "w", encoding="utf-8") as truth_out:
        for lo in range(0, w.n_items, item_chunk):
            items, truth = _item_tables(w, lo, min(lo + item_chunk, w.n_items))
            items_out.write(items)
            _write_jsonl(truth_out, truth)
            bar.update(1)

    binder = _QueryBinder(w.lex)
    chunk_rngs = np.random.SeedSequence(sim_seed.entropy, spawn_key=(1,)).spawn(n_user_chunks)
    n_events = n_searches = n_clicks = n_noisy = 0
    first_ts, last_ts = None, None
    distinct = []
    actions = dict.fromkeys(ACTIONS, 0)
    counts = dict.fromkeys(SEARCH_COUNTS, 0)
    with TableWriter(paths["events"], event_schema()) as events_out, \
            TableWriter(paths["truth_searches"], search_schema()) as searches_out:
        for c in range(n_user_chunks):
            users = np.arange(c * cfg.chunk_users, min((c + 1) * cfg.chunk_users, w.n_users))
            ch = _simulate(w, users, np.random.default_rng(chunk_rngs[c]), noise, binder, ph)
            events_out.write(ch.events)
            searches_out.write(ch.searches_truth)
            for k, n in ch.counts.items():
                counts[k] += n
            n_events += ch.events.num_rows
            n_searches += ch.searches
            n_clicks += ch.search_clicks
            n_noisy += ch.noisy_clicks
            mm = pc.min_max(ch.events["ts"]).as_py()
            first_ts = mm["min"] if first_ts is None else min(first_ts, mm["min"])
            last_ts = mm["max"] if last_ts is None else max(last_ts, mm["max"])
            for row in pc.value_counts(ch.events["action"]).to_pylist():
                actions[row["values"]] += row["counts"]
            distinct.append(ch.queries)
            bar.update(1)
            bar.set_postfix(events=n_events)
    bar.close()

    # Ground truth of the queries: one line per distinct query string.
    qt = pa.concat_tables(distinct).group_by(["query", "key"]).aggregate([]).sort_by("query")
    leaf, brand, colour, style = w.lex.intent_of(qt["key"].to_numpy())
    lex = w.lex
    pick = lambda names, codes: pa.array(names + [""], pa.string()).take(pa.array(np.where(codes >= 0, codes, len(names))))  # noqa: E731
    with open(paths["truth_queries"], "w", encoding="utf-8") as f:
        _write_jsonl(f, pa.table(
            {
                "query": qt["query"], "leaf_category": pick(lex.leaf_names, leaf),
                "top_category": pick(lex.tops, lex.leaf_top[leaf]), "brand": pick([b[0] for b in lex.brands], brand),
                "colour": pick(lex.colours, colour), "style": pick(lex.styles, style),
            }
        ))
    with open(paths["lexicon"], "w", encoding="utf-8") as f:
        json.dump(lex.to_json(), f, ensure_ascii=False, indent=1)
    with open(paths["spellings"], "w", encoding="utf-8") as f:
        json.dump(lex.spellings_json(), f, ensure_ascii=False, indent=1)
    phenomena = {
        **vars(ph),
        "searches": {k: counts[k] for k in SEARCH_COUNTS},
        "realised": {
            "typo": counts["typo"] / max(n_searches, 1),
            "new_spelling": counts["new_spelling"] / max(counts["test_day_brand_searches"], 1),
            "history_intent": counts["history_intent"] / max(n_searches, 1),
        },
    }

    summary = {
        "scale": scale,
        "seed": seed,
        "format": fmt,
        "noise": noise,
        "items": w.n_items,
        "users": w.n_users,
        "events": n_events,
        "actions": actions,
        "searches": n_searches,
        "search_clicks": n_clicks,
        "noisy_clicks": n_noisy,
        "noise_realised": n_noisy / max(n_clicks, 1),
        "distinct_queries": qt.num_rows,
        "queries_respelled": binder.fixed,
        "phenomena": phenomena,
        "day1": DAY1.isoformat(),
        "days": WINDOW_DAYS,
        "history_days": HISTORY_DAYS,
        "first_ts": first_ts,
        "last_ts": last_ts,
        "seconds": round(time.time() - started, 2),
        "paths": paths,
    }
    world = {
        "scale": scale,
        "seed": seed,
        "noise": noise,
        "day1": DAY1.isoformat(),
        "days": WINDOW_DAYS,
        "history_days": HISTORY_DAYS,
        "history_start": (DAY1 - timedelta(days=HISTORY_DAYS)).isoformat(),
        "last_day": (DAY1 + timedelta(days=WINDOW_DAYS - 1)).isoformat(),
        "timezone": "UTC",
        "counts": {k: summary[k] for k in ("items", "users", "events", "searches", "search_clicks", "noisy_clicks", "distinct_queries")},
        "noise_realised": summary["noise_realised"],
        "phenomena": phenomena,
        "actions": actions,
        "files": {k: os.path.relpath(v, out_dir) for k, v in paths.items()},
    }
    with open(paths["world"], "w", encoding="utf-8") as f:
        json.dump(world, f, ensure_ascii=False, indent=1)
    return summary


def add_arguments(parser) -> None:
    parser.add_argument("--scale", choices=sorted(SCALES, key=lambda s: SCALES[s].items), default="tiny",
                        help="tiny ~300 items / 60 users (tests), small ~3k / 600 (demo), "
                             "medium ~30k / 6k (benchmarks), large 1.2M / 120k (>10M events)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same world")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", dest="fmt", choices=contract.FORMATS, default=None,
                        help="items/events file format (default: jsonl; parquet for large)")
    parser.add_argument("--noise", type=float, default=0.2,
                        help="share of clicks under searches that land on irrelevant items (default 0.2)")
    parser.add_argument("--typo", type=float, default=TYPO,
                        help=f"share of searches whose category or brand word is misspelled (default {TYPO})")
    parser.add_argument("--new-spelling", type=float, default=NEW_SPELLING,
                        help="share of the test day's searches naming a brand that use a spelling of it "
                             f"never seen before (default {NEW_SPELLING})")
    parser.add_argument("--history-intent", type=float, default=HISTORY_INTENT,
                        help="share of searches naming only the category whose clicks follow the brand of "
                             f"an earlier search in the session or the user's favourite (default {HISTORY_INTENT})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    summary = generate(args.out, scale=args.scale, seed=args.seed, fmt=args.fmt, noise=args.noise,
                       progress=not args.no_progress, typo=args.typo, new_spelling=args.new_spelling,
                       history_intent=args.history_intent)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    sys.exit(main(p.parse_args()))
