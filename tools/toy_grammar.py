"""A small English grammar with correct German and Chinese translations, for the toy speech corpus.

``Grammar(seed).sentence() -> Triple(en, de, zh)`` draws one sentence. The grammar covers what makes
translation hard for a small model without being templated: German gender, case (nominative,
accusative, dative, verbs that govern the dative), adjective declension after definite, indefinite
and no determiner, weak masculine nouns, dative plural -n, separable verbs, the perfect with haben or
sein, the future with werden, verb-second order after a fronted time adverbial, verb-final order in
subordinate clauses (weil, dass, wenn) and relative clauses, verb-first questions, nicht/kein;
Chinese measure words, 了/没/不/会, prenominal relative clauses (...的), 给-constructions, the
place of time and location phrases, 都 after 每; numbers up to 999 in all three languages.

Everything is drawn from one ``random.Random(seed)``: the same seed gives the same sentences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# ----------------------------------------------------------------------------- numbers

_EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_DE_ONES = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
            "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
_DE_TENS = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]
_ZH_DIGITS = "零一二三四五六七八九"


def number_en(n: int) -> str:
    """1..999 in English words (British 'and' after hundreds: 'three hundred and twelve')."""
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _EN_TENS[t] + (f"-{_EN_ONES[o]}" if o else "")
    h, r = divmod(n, 100)
    return f"{_EN_ONES[h]} hundred" + (f" and {number_en(r)}" if r else "")


def number_de(n: int, *, attributive: bool = False) -> str:
    """1..999 in German words, one word ('dreihundertzwölf'); 1 is 'ein' before a noun."""
    if n < 20:
        word = _DE_ONES[n]
        return "ein" if attributive and n == 1 else word
    if n < 100:
        t, o = divmod(n, 10)
        return (("ein" if o == 1 else _DE_ONES[o]) + "und" if o else "") + _DE_TENS[t]
    h, r = divmod(n, 100)
    return ("ein" if h == 1 else _DE_ONES[h]) + "hundert" + (number_de(r, attributive=attributive) if r else "")


def number_zh(n: int, *, counting: bool = False) -> str:
    """1..999 in Chinese numerals; ``counting`` uses 两 for a bare 2 (两本书, 两岁) as before a measure word."""
    if n == 2 and counting:
        return "两"
    if n < 10:
        return _ZH_DIGITS[n]
    if n < 20:
        return "十" + (_ZH_DIGITS[n - 10] if n > 10 else "")
    if n < 100:
        t, o = divmod(n, 10)
        return _ZH_DIGITS[t] + "十" + (_ZH_DIGITS[o] if o else "")
    h, r = divmod(n, 100)
    head = ("两" if h == 2 else _ZH_DIGITS[h]) + "百"
    if r == 0:
        return head
    if r < 10:
        return head + "零" + _ZH_DIGITS[r]
    t, o = divmod(r, 10)
    return head + _ZH_DIGITS[t] + "十" + (_ZH_DIGITS[o] if o else "")


# ----------------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    de: str
    gender: str  # m, f, n
    de_pl: str
    zh: str
    mw: str  # Chinese measure word
    kind: str  # human, animal, thing, food
    weak: str = ""  # n-declension suffix of weak masculine nouns (den Nachbarn, dem Jungen)
    tags: frozenset = frozenset()


def _n(en, en_pl, de, g, de_pl, zh, mw, kind, weak="", tags=()):
    return Noun(en, en_pl, de, g, de_pl, zh, mw, kind, weak, frozenset(tags))


NOUNS = [
    # people
    _n("man", "men", "Mann", "m", "Männer", "男人", "个", "human"),
    _n("woman", "women", "Frau", "f", "Frauen", "女人", "个", "human"),
    _n("child", "children", "Kind", "n", "Kinder", "孩子", "个", "human"),
    _n("teacher", "teachers", "Lehrer", "m", "Lehrer", "老师", "位", "human"),
    _n("doctor", "doctors", "Arzt", "m", "Ärzte", "医生", "位", "human"),
    _n("student", "students", "Student", "m", "Studenten", "学生", "个", "human", weak="en"),
    _n("neighbour", "neighbours", "Nachbar", "m", "Nachbarn", "邻居", "个", "human", weak="n"),
    _n("boy", "boys", "Junge", "m", "Jungen", "男孩", "个", "human", weak="n"),
    _n("girl", "girls", "Mädchen", "n", "Mädchen", "女孩", "个", "human"),
    _n("friend", "friends", "Freund", "m", "Freunde", "朋友", "个", "human"),
    _n("sister", "sisters", "Schwester", "f", "Schwestern", "姐姐", "个", "human"),
    _n("brother", "brothers", "Bruder", "m", "Brüder", "哥哥", "个", "human"),
    _n("farmer", "farmers", "Bauer", "m", "Bauern", "农民", "个", "human", weak="n"),
    _n("cook", "cooks", "Koch", "m", "Köche", "厨师", "位", "human"),
    _n("driver", "drivers", "Fahrer", "m", "Fahrer", "司机", "位", "human"),
    _n("baker", "bakers", "Bäcker", "m", "Bäcker", "面包师", "个", "human"),
    _n("grandmother", "grandmothers", "Großmutter", "f", "Großmütter", "奶奶", "位", "human"),
    _n("police officer", "police officers", "Polizist", "m", "Polizisten", "警察", "个", "human", weak="en"),
    _n("nurse", "nurses", "Krankenschwester", "f", "Krankenschwestern", "护士", "个", "human"),
    _n("guest", "guests", "Gast", "m", "Gäste", "客人", "位", "human"),
    # animals
    _n("dog", "dogs", "Hund", "m", "Hunde", "狗", "只", "animal"),
    _n("cat", "cats", "Katze", "f", "Katzen", "猫", "只", "animal"),
    _n("horse", "horses", "Pferd", "n", "Pferde", "马", "匹", "animal"),
    _n("bird", "birds", "Vogel", "m", "Vögel", "鸟", "只", "animal"),
    _n("mouse", "mice", "Maus", "f", "Mäuse", "老鼠", "只", "animal"),
    _n("cow", "cows", "Kuh", "f", "Kühe", "牛", "头", "animal"),
    _n("rabbit", "rabbits", "Kaninchen", "n", "Kaninchen", "兔子", "只", "animal"),
    _n("sheep", "sheep", "Schaf", "n", "Schafe", "羊", "只", "animal"),
    _n("duck", "ducks", "Ente", "f", "Enten", "鸭子", "只", "animal"),
    _n("pig", "pigs", "Schwein", "n", "Schweine", "猪", "头", "animal"),
    # things
    _n("book", "books", "Buch", "n", "Bücher", "书", "本", "thing", tags=("read", "write", "give")),
    _n("letter", "letters", "Brief", "m", "Briefe", "信", "封", "thing", tags=("read", "write", "open", "give", "send")),
    _n("car", "cars", "Auto", "n", "Autos", "汽车", "辆", "thing", tags=("wash", "big")),
    _n("bicycle", "bicycles", "Fahrrad", "n", "Fahrräder", "自行车", "辆", "thing", tags=("wash", "big")),
    _n("table", "tables", "Tisch", "m", "Tische", "桌子", "张", "thing", tags=("carry", "big")),
    _n("chair", "chairs", "Stuhl", "m", "Stühle", "椅子", "把", "thing", tags=("carry",)),
    _n("key", "keys", "Schlüssel", "m", "Schlüssel", "钥匙", "把", "thing", tags=("give",)),
    _n("bag", "bags", "Tasche", "f", "Taschen", "包", "个", "thing", tags=("carry", "open", "give")),
    _n("lamp", "lamps", "Lampe", "f", "Lampen", "灯", "盏", "thing", tags=("carry",)),
    _n("computer", "computers", "Computer", "m", "Computer", "电脑", "台", "thing", tags=("carry",)),
    _n("phone", "phones", "Telefon", "n", "Telefone", "手机", "部", "thing", tags=("give",)),
    _n("picture", "pictures", "Bild", "n", "Bilder", "画", "幅", "thing", tags=("give", "show")),
    _n("newspaper", "newspapers", "Zeitung", "f", "Zeitungen", "报纸", "份", "thing", tags=("read", "give")),
    _n("box", "boxes", "Kiste", "f", "Kisten", "箱子", "个", "thing", tags=("carry", "open")),
    _n("ball", "balls", "Ball", "m", "Bälle", "球", "个", "thing", tags=("give",)),
    _n("umbrella", "umbrellas", "Regenschirm", "m", "Regenschirme", "雨伞", "把", "thing", tags=("give", "open")),
    _n("watch", "watches", "Uhr", "f", "Uhren", "手表", "块", "thing", tags=("give",)),
    _n("shirt", "shirts", "Hemd", "n", "Hemden", "衬衫", "件", "thing", tags=("wash", "give")),
    _n("coat", "coats", "Mantel", "m", "Mäntel", "大衣", "件", "thing", tags=("wash", "give")),
    _n("ticket", "tickets", "Fahrkarte", "f", "Fahrkarten", "车票", "张", "thing", tags=("give", "show")),
    _n("present", "presents", "Geschenk", "n", "Geschenke", "礼物", "份", "thing", tags=("give", "open", "send")),
    _n("bottle", "bottles", "Flasche", "f", "Flaschen", "瓶子", "个", "thing", tags=("open", "carry")),
    _n("map", "maps", "Karte", "f", "Karten", "地图", "张", "thing", tags=("read", "show", "give")),
    _n("photo", "photos", "Foto", "n", "Fotos", "照片", "张", "thing", tags=("show", "send", "give")),
    _n("cup", "cups", "Tasse", "f", "Tassen", "杯子", "个", "thing", tags=("wash", "give")),
    # food
    _n("apple", "apples", "Apfel", "m", "Äpfel", "苹果", "个", "food", tags=("wash", "give")),
    _n("cake", "cakes", "Kuchen", "m", "Kuchen", "蛋糕", "块", "food", tags=("cook", "give")),
    _n("egg", "eggs", "Ei", "n", "Eier", "鸡蛋", "个", "food", tags=("cook",)),
    _n("banana", "bananas", "Banane", "f", "Bananen", "香蕉", "根", "food", tags=("give",)),
    _n("orange", "oranges", "Orange", "f", "Orangen", "橙子", "个", "food", tags=("give",)),
    _n("potato", "potatoes", "Kartoffel", "f", "Kartoffeln", "土豆", "个", "food", tags=("cook", "wash")),
    _n("pear", "pears", "Birne", "f", "Birnen", "梨", "个", "food", tags=("wash", "give")),
    _n("sausage", "sausages", "Wurst", "f", "Würste", "香肠", "根", "food", tags=("cook",)),
    _n("soup", "soups", "Suppe", "f", "Suppen", "汤", "碗", "food", tags=("cook",)),
    _n("sandwich", "sandwiches", "Brötchen", "n", "Brötchen", "三明治", "个", "food", tags=("give",)),
]


@dataclass(frozen=True)
class Adjective:
    en: str
    de: str  # predicative form
    de_stem: str  # stem the endings attach to (teuer -> teur-e)
    zh_attr: str  # before a noun (大, 漂亮的, 红色的)
    zh_core: str  # predicate without 很 (大, 漂亮) or the whole predicate for non-gradable ones (是红色的)
    kinds: frozenset
    gradable: bool = True


def _a(en, de, zh_attr, zh_core, kinds, stem=None, gradable=True):
    return Adjective(en, de, stem or de, zh_attr, zh_core, frozenset(kinds.split()), gradable)


ANY = "human animal thing food"
ADJECTIVES = [
    _a("big", "groß", "大", "大", "animal thing food"),
    _a("small", "klein", "小", "小", "animal thing food"),
    _a("old", "alt", "老", "老", "human animal"),
    _a("old", "alt", "旧", "旧", "thing"),
    _a("new", "neu", "新", "新", "thing"),
    _a("young", "jung", "年轻的", "年轻", "human"),
    _a("beautiful", "schön", "漂亮的", "漂亮", "human animal thing"),
    _a("expensive", "teuer", "贵的", "贵", "thing food", stem="teur"),
    _a("cheap", "billig", "便宜的", "便宜", "thing food"),
    _a("heavy", "schwer", "重的", "重", "thing"),
    _a("hungry", "hungrig", "饿的", "饿", "human animal"),
    _a("tired", "müde", "累的", "累", "human animal", stem="müd"),
    _a("happy", "glücklich", "高兴的", "高兴", "human"),
    _a("friendly", "freundlich", "友好的", "友好", "human animal"),
    _a("clean", "sauber", "干净的", "干净", "thing animal"),
    _a("dirty", "schmutzig", "脏的", "脏", "thing animal"),
    _a("fresh", "frisch", "新鲜的", "新鲜", "food"),
    _a("sweet", "süß", "甜的", "甜", "food"),
    _a("cold", "kalt", "凉的", "凉", "food"),
    _a("dark", "dunkel", "深色的", "是深色的", "thing", stem="dunkl", gradable=False),
    _a("red", "rot", "红色的", "是红色的", "thing", gradable=False),
    _a("blue", "blau", "蓝色的", "是蓝色的", "thing", gradable=False),
    _a("green", "grün", "绿色的", "是绿色的", "thing food", gradable=False),
    _a("black", "schwarz", "黑色的", "是黑色的", "thing animal", gradable=False),
    _a("white", "weiß", "白色的", "是白色的", "thing animal", gradable=False),
    _a("yellow", "gelb", "黄色的", "是黄色的", "thing food", gradable=False),
]


@dataclass(frozen=True)
class Place:
    en: str  # "the kitchen"
    en_at: str  # "in the kitchen"
    en_to: str  # "to the kitchen"
    de_at: str  # "in der Küche"
    de_to: str  # "in die Küche"
    zh: str  # 厨房
    zh_at: str  # 在厨房里


PLACES = [
    Place("kitchen", "in the kitchen", "to the kitchen", "in der Küche", "in die Küche", "厨房", "在厨房里"),
    Place("garden", "in the garden", "to the garden", "im Garten", "in den Garten", "花园", "在花园里"),
    Place("park", "in the park", "to the park", "im Park", "in den Park", "公园", "在公园里"),
    Place("school", "at the school", "to the school", "in der Schule", "zur Schule", "学校", "在学校"),
    Place("city", "in the city", "to the city", "in der Stadt", "in die Stadt", "城市", "在城市里"),
    Place("office", "in the office", "to the office", "im Büro", "ins Büro", "办公室", "在办公室"),
    Place("station", "at the station", "to the station", "am Bahnhof", "zum Bahnhof", "火车站", "在火车站"),
    Place("library", "in the library", "to the library", "in der Bibliothek", "in die Bibliothek", "图书馆", "在图书馆"),
    Place("market", "at the market", "to the market", "auf dem Markt", "auf den Markt", "市场", "在市场上"),
    Place("hospital", "in the hospital", "to the hospital", "im Krankenhaus", "ins Krankenhaus", "医院", "在医院"),
    Place("restaurant", "in the restaurant", "to the restaurant", "im Restaurant", "ins Restaurant", "餐馆", "在餐馆里"),
    Place("village", "in the village", "to the village", "im Dorf", "ins Dorf", "村子", "在村子里"),
    Place("forest", "in the forest", "to the forest", "im Wald", "in den Wald", "森林", "在森林里"),
    Place("museum", "in the museum", "to the museum", "im Museum", "ins Museum", "博物馆", "在博物馆里"),
    Place("beach", "on the beach", "to the beach", "am Strand", "an den Strand", "海滩", "在海滩上"),
]


@dataclass(frozen=True)
class Verb:
    """A verb with everything the three languages need.

    ``de`` present forms for ich, du, er/sie/es, wir, sie (plural); ``part`` the participle;
    ``sep`` a separable prefix (its forms in ``de`` are without it); ``aux`` haben or sein;
    ``case`` of the object (acc or dat); ``frame`` intr, tr, dir (with a direction) or ditr.
    ``zh`` a template: {O} object, {D} recipient, {P} direction, {A} where 了 goes.
    """

    en: str  # base
    en3: str  # 3rd person singular present
    en_past: str
    de: tuple
    part: str
    zh: str
    frame: str
    objects: frozenset = frozenset()  # allowed object kinds or tags ("tag:read")
    subjects: frozenset = frozenset({"human"})
    sep: str = ""
    aux: str = "haben"
    case: str = "acc"
    en_particle: str = ""  # "looks for", "picks up": goes after the verb (before a noun object)
    zh_aspect: bool = True  # 了 after the verb in the past; False for states (喜欢, 需要)


def _reg(stem, t=False):
    """Present forms of a regular German verb (t: stems in -t/-d/-n insert -e-: arbeitest, öffnet;
    stems in -s/-z/-ß take -t for du: tanzt)."""
    e = "e" if t else ""
    du = stem + "t" if stem.endswith(("s", "z", "ß", "x")) else stem + e + "st"
    return (stem + "e", du, stem + e + "t", stem + "en", stem + "en")


def _v(en, en3, en_past, de, part, zh, frame, objects="", subjects="human", **kw):
    return Verb(en, en3, en_past, tuple(de), part, zh, frame, frozenset(objects.split()),
                frozenset(subjects.split()), **kw)


CONCRETE = "human animal thing food"
VERBS = [
    # transitive
    _v("see", "sees", "saw", ("sehe", "siehst", "sieht", "sehen", "sehen"), "gesehen", "看见{A}{O}", "tr", CONCRETE, "human animal"),
    _v("buy", "buys", "bought", _reg("kauf"), "gekauft", "买{A}{O}", "tr", "thing food animal"),
    _v("sell", "sells", "sold", _reg("verkauf"), "verkauft", "卖{A}{O}", "tr", "thing food animal"),
    _v("eat", "eats", "ate", ("esse", "isst", "isst", "essen", "essen"), "gegessen", "吃{A}{O}", "tr", "food", "human animal"),
    _v("find", "finds", "found", _reg("find", True), "gefunden", "找到{A}{O}", "tr", "thing animal food", "human animal"),
    _v("look", "looks", "looked", _reg("such"), "gesucht", "找{A}{O}", "tr", "human animal thing", en_particle="for"),
    _v("carry", "carries", "carried", ("trage", "trägst", "trägt", "tragen", "tragen"), "getragen", "搬{A}{O}", "tr", "tag:carry"),
    _v("read", "reads", "read", ("lese", "liest", "liest", "lesen", "lesen"), "gelesen", "读{A}{O}", "tr", "tag:read"),
    _v("write", "writes", "wrote", _reg("schreib"), "geschrieben", "写{A}{O}", "tr", "tag:write"),
    _v("open", "opens", "opened", _reg("öffn", True), "geöffnet", "打开{A}{O}", "tr", "tag:open"),
    _v("wash", "washes", "washed", ("wasche", "wäschst", "wäscht", "waschen", "waschen"), "gewaschen", "洗{A}{O}", "tr", "tag:wash animal"),
    _v("visit", "visits", "visited", _reg("besuch"), "besucht", "拜访{A}{O}", "tr", "human"),
    _v("ask", "asks", "asked", _reg("frag"), "gefragt", "问{A}{O}", "tr", "human"),
    _v("like", "likes", "liked", ("mag", "magst", "mag", "mögen", "mögen"), "gemocht", "喜欢{O}", "tr", CONCRETE, zh_aspect=False),
    _v("need", "needs", "needed", _reg("brauch"), "gebraucht", "需要{O}", "tr", "thing food", zh_aspect=False),
    _v("call", "calls", "called", _reg("ruf"), "angerufen", "给{O}打{A}电话", "tr", "human", sep="an"),
    _v("pick", "picks", "picked", _reg("hol"), "abgeholt", "接{A}{O}", "tr", "human", sep="ab", en_particle="up"),
    _v("help", "helps", "helped", ("helfe", "hilfst", "hilft", "helfen", "helfen"), "geholfen", "帮助{A}{O}", "tr", "human", case="dat"),
    _v("thank", "thanks", "thanked", _reg("dank"), "gedankt", "感谢{A}{O}", "tr", "human", case="dat"),
    _v("follow", "follows", "followed", _reg("folg"), "gefolgt", "跟着{O}", "tr", "human animal", "human animal", case="dat", aux="sein", zh_aspect=False),
    _v("cook", "cooks", "cooked", _reg("koch"), "gekocht", "做{A}{O}", "tr", "tag:cook"),
    _v("feed", "feeds", "fed", ("füttere", "fütterst", "füttert", "füttern", "füttern"), "gefüttert", "喂{A}{O}", "tr", "animal"),
    _v("paint", "paints", "painted", _reg("mal"), "gemalt", "画{A}{O}", "tr", "human animal"),
    # ditransitive: X gives Y (dative) Z (accusative)
    _v("give", "gives", "gave", ("gebe", "gibst", "gibt", "geben", "geben"), "gegeben", "给{A}{D}{O}", "ditr", "tag:give"),
    _v("show", "shows", "showed", _reg("zeig"), "gezeigt", "给{D}看{A}{O}", "ditr", "tag:show"),
    _v("send", "sends", "sent", _reg("schick"), "geschickt", "给{D}寄{A}{O}", "ditr", "tag:send"),
    _v("bring", "brings", "brought", _reg("bring"), "gebracht", "给{D}带{A}{O}", "ditr", "tag:give food"),
    # intransitive
    _v("sleep", "sleeps", "slept", ("schlafe", "schläfst", "schläft", "schlafen", "schlafen"), "geschlafen", "睡觉{A}", "intr", subjects="human animal"),
    _v("work", "works", "worked", _reg("arbeit", True), "gearbeitet", "工作{A}", "intr"),
    _v("wait", "waits", "waited", _reg("wart", True), "gewartet", "等{A}", "intr", subjects="human animal"),
    _v("sing", "sings", "sang", _reg("sing"), "gesungen", "唱歌{A}", "intr", subjects="human animal"),
    _v("play", "plays", "played", _reg("spiel"), "gespielt", "玩{A}", "intr", subjects="human animal"),
    _v("laugh", "laughs", "laughed", _reg("lach"), "gelacht", "笑{A}", "intr"),
    _v("dance", "dances", "danced", _reg("tanz"), "getanzt", "跳舞{A}", "intr"),
    _v("eat", "eats", "ate", ("esse", "isst", "isst", "essen", "essen"), "gegessen", "吃饭{A}", "intr"),
    # with a direction
    _v("go", "goes", "went", ("gehe", "gehst", "geht", "gehen", "gehen"), "gegangen", "去{A}{P}", "dir", subjects="human animal", aux="sein"),
    _v("come", "comes", "came", _reg("komm"), "gekommen", "来{A}{P}", "dir", subjects="human animal", aux="sein"),
    _v("drive", "drives", "drove", ("fahre", "fährst", "fährt", "fahren", "fahren"), "gefahren", "开车去{A}{P}", "dir", aux="sein"),
    _v("run", "runs", "ran", ("laufe", "läufst", "läuft", "laufen", "laufen"), "gelaufen", "跑去{A}{P}", "dir", subjects="human animal", aux="sein"),
]

# person/number index into German present forms: ich, du, er/sie/es, wir, sie (plural)
P1SG, P2SG, P3SG, P1PL, P3PL = range(5)
_DE_AUX = {
    "haben": ("habe", "hast", "hat", "haben", "haben"),
    "sein": ("bin", "bist", "ist", "sind", "sind"),
    "werden": ("werde", "wirst", "wird", "werden", "werden"),
    "sein_past": ("war", "warst", "war", "waren", "waren"),
}


@dataclass(frozen=True)
class Pronoun:
    en: str
    en_obj: str
    de: str
    de_acc: str
    de_dat: str
    zh: str
    person: int
    poss_en: str
    poss_de: str  # ein-type stem
    poss_zh: str


PRONOUNS = [
    Pronoun("I", "me", "ich", "mich", "mir", "我", P1SG, "my", "mein", "我的"),
    Pronoun("you", "you", "du", "dich", "dir", "你", P2SG, "your", "dein", "你的"),
    Pronoun("he", "him", "er", "ihn", "ihm", "他", P3SG, "his", "sein", "他的"),
    Pronoun("she", "her", "sie", "sie", "ihr", "她", P3SG, "her", "ihr", "她的"),
    Pronoun("we", "us", "wir", "uns", "uns", "我们", P1PL, "our", "unser", "我们的"),
    Pronoun("they", "them", "sie", "sie", "ihnen", "他们", P3PL, "their", "ihr", "他们的"),
]


@dataclass(frozen=True)
class TimePhrase:
    en: str
    de: str
    zh: str
    tenses: frozenset


def _t(en, de, zh, tenses):
    return TimePhrase(en, de, zh, frozenset(tenses.split()))


_DAYS = [("Monday", "Montag", "星期一"), ("Tuesday", "Dienstag", "星期二"), ("Wednesday", "Mittwoch", "星期三"),
         ("Thursday", "Donnerstag", "星期四"), ("Friday", "Freitag", "星期五"), ("Saturday", "Samstag", "星期六"),
         ("Sunday", "Sonntag", "星期天")]
TIMES = [
    _t("yesterday", "gestern", "昨天", "past"),
    _t("today", "heute", "今天", "present past future"),
    _t("tomorrow", "morgen", "明天", "future"),
    _t("every day", "jeden Tag", "每天", "present"),
    _t("last week", "letzte Woche", "上个星期", "past"),
    _t("next week", "nächste Woche", "下个星期", "future"),
    _t("in the morning", "am Morgen", "早上", "present past future"),
    _t("in the evening", "am Abend", "晚上", "present past future"),
    *[_t(f"on {en}", f"am {de}", zh, "present past future") for en, de, zh in _DAYS],
]

# ----------------------------------------------------------------------------- German declension

_DEF = {"m": ("der", "den", "dem"), "f": ("die", "die", "der"), "n": ("das", "das", "dem"), "pl": ("die", "die", "den")}
_DIESER = {"m": ("er", "en", "em"), "f": ("e", "e", "er"), "n": ("es", "es", "em"), "pl": ("e", "e", "en")}
_EIN = {"m": ("", "en", "em"), "f": ("e", "e", "er"), "n": ("", "", "em"), "pl": ("e", "e", "en")}
_CASES = {"nom": 0, "acc": 1, "dat": 2}
# adjective endings by determiner class
_ADJ_WEAK = {"m": ("e", "en", "en"), "f": ("e", "e", "en"), "n": ("e", "e", "en"), "pl": ("en", "en", "en")}
_ADJ_MIXED = {"m": ("er", "en", "en"), "f": ("e", "e", "en"), "n": ("es", "es", "en"), "pl": ("en", "en", "en")}
_ADJ_STRONG_PL = ("e", "e", "en")


def de_noun_form(noun: Noun, plural: bool, case: str) -> str:
    if plural:
        form = noun.de_pl
        if case == "dat" and not form.endswith(("n", "s")):
            form += "n"
        return form
    if noun.weak and case != "nom":
        return noun.de + noun.weak
    return noun.de


# ----------------------------------------------------------------------------- phrases


@dataclass
class NP:
    """A realised noun phrase: English text, German forms by case, Chinese text, and agreement facts."""

    en: str
    de: dict  # case -> text
    zh: str
    person: int  # German verb agreement index
    en_3sg: bool
    definite: bool  # takes nicht (not kein) under negation
    negatable: bool = True  # False for numbers/some/many objects (no natural kein/nicht form)
    de_neg: dict | None = None  # kein- forms, for indefinite singular objects
    zh_neg: str | None = None  # Chinese under negation (no 一+MW)
    is_every: bool = False
    pronoun: bool = False


@dataclass
class Clause:
    """A clause ready to be put into any order: German and Chinese parts and the English string pieces."""

    en_subj: str
    en_3sg: bool
    en_person: int
    de_subj: str
    de_person: int
    zh_subj: str
    verb: Verb | None  # None for copular clauses
    tense: str  # present, past, future
    negated: bool
    de_middle: list  # (slot, text) between finite verb and right bracket; slots order them (see _SLOT)
    de_pred: list  # right end of the middle field, after nicht (direction PPs, predicate adjectives)
    en_rest: str  # after the verb (objects, PPs)
    zh_pre: list  # between subject and verb phrase (time, 都, 在..., 和...一起)
    zh_vp: str  # verb phrase without negation/aspect prefixes (filled template)
    zh_vp_neg: str | None = None
    time: TimePhrase | None = None
    time_front: bool = False
    copula: tuple | None = None  # (en_pred, de_pred, zh_aff, zh_neg, zh_q) for copular clauses
    is_every: bool = False
    de_nicht: bool = False  # negation by nicht (False when the object took kein)


# German middle field order: unstressed pronoun objects, time, place, dative noun, object noun,
# then nicht and the predicate part (direction, predicate adjective).
_SLOT = {"pron": 0, "time": 1, "place": 2, "dat": 3, "obj": 4}


@dataclass(frozen=True)
class Triple:
    en: str
    de: str
    zh: str
    kind: str


# A smaller lexicon for a teacher trained on CPU in under an hour: the same constructions, fewer words.
SMALL_LEXICON = {
    "nouns": {"human": 8, "animal": 5, "thing": 10, "food": 5},
    "verbs": ("see", "buy", "sell", "eat", "find", "read", "open", "wash", "visit", "like", "call", "help",
              "give", "sleep", "work", "play", "go", "come"),
    "adjectives": ("big", "small", "old", "new", "young", "hungry", "tired", "red", "blue", "black"),
    "places": 8,
    "times": 8,
}
# Simple clauses only, fewer words and numbers up to 30: learnable by a small model in well under an
# hour of CPU training (the small and full levels need a GPU's worth of steps).
TINY_LEXICON = {
    "nouns": {"human": 5, "animal": 4, "thing": 8, "food": 4},
    "verbs": ("see", "buy", "eat", "read", "open", "like", "help", "give", "sleep", "play", "go"),
    "adjectives": ("big", "small", "old", "new", "hungry", "red", "black"),
    "places": 5,
    "times": 6,
}
LEVEL_LEXICON = {"small": SMALL_LEXICON, "tiny": TINY_LEXICON, "phrases": TINY_LEXICON}
LEVEL_MAX_NUMBER = {"full": 999, "small": 999, "tiny": 30, "phrases": 30}
LEVEL_WEIGHTS = {
    "full": {"simple": 30, "question": 8, "because": 10, "when": 8, "that": 10, "relative": 10,
             "copula": 10, "age": 4, "cost": 4, "but": 6},
    "small": {"simple": 40, "question": 10, "because": 7, "when": 5, "that": 8, "relative": 8,
              "copula": 12, "age": 4, "cost": 4, "but": 2},
    # phrases (a noun phrase or a number alone) cannot be guessed from the context: they teach a model
    # trained from scratch to listen before the clauses do
    "tiny": {"phrase": 30, "simple": 40, "question": 10, "copula": 14, "age": 3, "cost": 3},
    # the first stage of a curriculum for a model trained from scratch: the tiny lexicon, phrases only
    "phrases": {"phrase": 1},
}


@dataclass
class Grammar:
    """Sentence generator. ``level`` "full" (every word), "small" (``SMALL_LEXICON``) or "tiny"
    (``TINY_LEXICON``, simple clauses); ``weights`` (default by level) sets how often each sentence
    type is drawn."""

    seed: int = 0
    level: str = "full"
    weights: dict | None = None
    p_adjective: float = 0.35
    p_time: float = 0.45
    p_place: float = 0.35
    p_negation: float = 0.2

    def __post_init__(self):
        if self.level not in LEVEL_WEIGHTS:
            raise ValueError(f"level must be one of {', '.join(LEVEL_WEIGHTS)}, not {self.level!r}")
        self.rng = random.Random(self.seed)
        self.weights = dict(self.weights or LEVEL_WEIGHTS[self.level])
        nouns, verbs, adjectives, places, times = NOUNS, VERBS, ADJECTIVES, PLACES, TIMES
        self.max_number = LEVEL_MAX_NUMBER[self.level]
        if self.level in LEVEL_LEXICON:
            lex = LEVEL_LEXICON[self.level]
            nouns = [n for k, m in lex["nouns"].items() for n in [x for x in NOUNS if x.kind == k][:m]]
            adjectives = [a for a in ADJECTIVES if a.en in lex["adjectives"]]
            places, times = PLACES[: lex["places"]], TIMES[: lex["times"]]
            verbs = [v for v in VERBS if v.en in lex["verbs"]]
        self.lex_nouns, self.lex_adjectives, self.lex_places, self.lex_times = nouns, adjectives, places, times
        # a verb stays only if the lexicon has objects it can take
        self.lex_verbs = [v for v in verbs if v.frame not in ("tr", "ditr") or self.nouns(v.objects)]

    # -- helpers
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def nouns(self, kinds) -> list[Noun]:
        """Nouns whose kind or tag is in ``kinds`` (strings like "human" or "tag:read")."""
        out = []
        for n in self.lex_nouns:
            if n.kind in kinds or any(k.startswith("tag:") and k[4:] in n.tags for k in kinds):
                out.append(n)
        return out

    def count(self) -> int:
        r = self.rng.random()
        if r < 0.55 or self.max_number <= 12:
            return self.rng.randint(2, 12)
        if r < 0.9 or self.max_number < 100:
            return self.rng.randint(13, min(99, self.max_number))
        return self.rng.randint(100, self.max_number)

    # -- noun phrases
    def noun_phrase(self, kinds, *, role: str = "obj", allow_every=False, allow_pronoun=True,
                    allow_quant=True, adjective=None) -> NP:
        """Draw a noun phrase whose head is of ``kinds``; German forms for all three cases."""
        if allow_pronoun and "human" in kinds and self.chance(0.25 if role == "subj" else 0.15):
            p = self.pick(PRONOUNS)
            return NP(en=p.en if role == "subj" else p.en_obj,
                      de={"nom": p.de, "acc": p.de_acc, "dat": p.de_dat}, zh=p.zh, person=p.person,
                      en_3sg=p.person == P3SG, definite=True, pronoun=True)
        noun = self.pick(self.nouns(kinds))
        dets = ["the"] * 6 + ["a"] * 4 + ["this", "these", "poss", "poss"]
        if allow_quant:
            dets += ["num"] * 3 + ["some", "many"]
        if allow_every:
            dets += ["every"]
        det = self.pick(dets)
        plural = det in ("these", "num", "some", "many") or (det in ("the", "poss") and self.chance(0.3))
        adj = adjective
        if adj is None and self.chance(self.p_adjective):
            adj = self.pick([a for a in self.lex_adjectives if noun.kind in a.kinds])
        g = "pl" if plural else noun.gender
        en_noun = noun.en_pl if plural else noun.en
        en_head = (adj.en + " " if adj else "") + en_noun
        de, de_neg = {}, None
        zh_noun = noun.zh
        zh_adj = adj.zh_attr if adj else ""
        negatable, definite = True, True
        if det == "the":
            en = "the " + en_head
            for c, i in _CASES.items():
                de[c] = _DEF[g][i] + self._de_adj(adj, _ADJ_WEAK[g][i]) + " " + de_noun_form(noun, plural, c)
            zh = zh_adj + zh_noun + ("们" if plural and noun.kind == "human" and not adj else "")
        elif det == "a":
            en = ("an " if en_head[0] in "aeiou" else "a ") + en_head
            definite = False
            de_neg = {}
            for c, i in _CASES.items():
                tail = self._de_adj(adj, _ADJ_MIXED[g][i]) + " " + de_noun_form(noun, False, c)
                de[c] = "ein" + _EIN[g][i] + tail
                de_neg[c] = "kein" + _EIN[g][i] + tail
            zh = "一" + noun.mw + zh_adj + zh_noun
        elif det in ("this", "these"):
            en = det + " " + en_head
            for c, i in _CASES.items():
                de[c] = "dies" + _DIESER[g][i] + self._de_adj(adj, _ADJ_WEAK[g][i]) + " " + de_noun_form(noun, plural, c)
            zh = ("这些" if plural else "这" + noun.mw) + zh_adj + zh_noun
        elif det == "every":
            en = "every " + en_head
            for c, i in _CASES.items():
                de[c] = "jed" + _DIESER[g][i] + self._de_adj(adj, _ADJ_WEAK[g][i]) + " " + de_noun_form(noun, False, c)
            zh = "每" + noun.mw + zh_adj + zh_noun
        elif det == "poss":
            p = self.pick(PRONOUNS)
            en = p.poss_en + " " + en_head
            for c, i in _CASES.items():
                de[c] = p.poss_de + _EIN[g][i] + self._de_adj(adj, _ADJ_MIXED[g][i]) + " " + de_noun_form(noun, plural, c)
            # unser + e -> unsere (stem keeps its e); mein/dein/sein/ihr likewise
            zh = p.poss_zh + zh_adj + zh_noun
        else:  # num, some, many: plural, strong adjective endings
            negatable, definite = False, False
            if det == "num":
                num = self.count()
                en_det, de_det, zh_det = number_en(num), number_de(num, attributive=True), number_zh(num, counting=True) + noun.mw
            elif det == "some":
                en_det, de_det, zh_det = "some", "einig", "一些"
            else:
                en_det, de_det, zh_det = "many", "viel", "很多"
            en = en_det + " " + en_head
            for c, i in _CASES.items():
                d = de_det if det == "num" else de_det + _ADJ_STRONG_PL[i]
                de[c] = d + self._de_adj(adj, _ADJ_STRONG_PL[i]) + " " + de_noun_form(noun, True, c)
            zh = zh_det + zh_adj + zh_noun
        zh_neg = (zh_adj + zh_noun) if det == "a" else None
        return NP(en=en, de=de, zh=zh, person=P3PL if plural else P3SG, en_3sg=not plural, definite=definite,
                  negatable=negatable, de_neg=de_neg, zh_neg=zh_neg, is_every=det == "every")

    @staticmethod
    def _de_adj(adj: Adjective | None, ending: str) -> str:
        return " " + adj.de_stem + ending if adj else ""

    # -- clauses
    def clause(self, *, allow_time=True, tense=None, allow_negation=True,
               subject: NP | None = None, allow_every=True) -> Clause:
        """Draw a verbal clause; the caller orders it as a main, subordinate or question clause."""
        verb = self.pick(self.lex_verbs)
        subj_kinds = verb.subjects
        subj = subject or self.noun_phrase(subj_kinds, role="subj", allow_every=allow_every)
        tense = tense or self.pick(["present", "present", "past", "past", "future"])
        negated = allow_negation and not subj.is_every and self.chance(self.p_negation)
        en_parts, de_mid, de_pred, zh_pre = [], [], [], []
        time = None
        if allow_time and self.chance(self.p_time):
            time = self.pick([t for t in self.lex_times if tense in t.tenses])
        fill = {"A": "", "O": "", "D": "", "P": ""}
        zh_neg_fill = None
        if verb.frame in ("tr", "ditr"):
            if verb.frame == "ditr":
                rec = self.noun_phrase({"human"})
                obj = self.noun_phrase(verb.objects, allow_pronoun=False)
            else:
                obj = self.noun_phrase(verb.objects)
            if negated and not obj.negatable:
                negated = False
            if verb.frame == "ditr":
                if rec.pronoun or self.chance(0.5):
                    en_parts += [rec.en, obj.en]
                else:
                    en_parts += [obj.en, "to " + rec.en]
                de_mid.append((_SLOT["pron" if rec.pronoun else "dat"], rec.de["dat"]))
                fill["D"] = rec.zh
            else:
                if verb.en_particle == "up" and obj.pronoun:
                    en_parts += [obj.en, verb.en_particle]
                else:
                    en_parts += ([verb.en_particle] if verb.en_particle else []) + [obj.en]
            use_kein = negated and not obj.definite
            de_mid.append((_SLOT["pron" if obj.pronoun else "obj"], (obj.de_neg if use_kein else obj.de)[verb.case]))
            fill["O"] = obj.zh
            if negated and obj.zh_neg:
                zh_neg_fill = obj.zh_neg
            if use_kein:
                negated_de_nicht = False
            else:
                negated_de_nicht = negated
        else:
            negated_de_nicht = negated
            if verb.en_particle:
                en_parts.append(verb.en_particle)
        if verb.frame == "dir":
            place = self.pick(self.lex_places)
            en_parts.append(place.en_to)
            de_pred.append(place.de_to)
            fill["P"] = place.zh
        elif not negated and self.chance(self.p_place):
            place = self.pick(self.lex_places)
            en_parts.append(place.en_at)
            de_mid.append((_SLOT["place"], place.de_at))
            zh_pre.append(place.zh_at)
        zh_vp = verb.zh.format(**{**fill, "A": "了" if tense == "past" and verb.zh_aspect and not negated else ""})
        zh_vp_neg = None
        if zh_neg_fill is not None:
            zh_vp_neg = verb.zh.format(**{**fill, "O": zh_neg_fill, "A": ""})
        c = Clause(en_subj=subj.en, en_3sg=subj.en_3sg, en_person=subj.person, de_subj=subj.de["nom"],
                   de_person=subj.person, zh_subj=subj.zh, verb=verb, tense=tense, negated=negated,
                   de_middle=de_mid, de_pred=de_pred, en_rest=" ".join(en_parts), zh_pre=zh_pre, zh_vp=zh_vp,
                   zh_vp_neg=zh_vp_neg, time=time, is_every=subj.is_every, de_nicht=negated_de_nicht)
        return c

    def copula_clause(self, subject: NP, kind: str | None = None, *, tense=None, allow_time=True) -> Clause:
        """'The dog is (not) hungry'; the adjective suits ``kind`` (the subject's noun kind) when given."""
        subj = subject
        adjs = [a for a in self.lex_adjectives if kind in a.kinds] if kind else self.lex_adjectives
        adj = self.pick(adjs)
        tense = tense or self.pick(["present", "present", "past"])
        negated = not subj.is_every and self.chance(self.p_negation)
        time = self.pick([t for t in self.lex_times if tense in t.tenses]) if allow_time and self.chance(self.p_time * 0.6) else None
        if adj.gradable:
            zh_aff, zh_neg, zh_q = "很" + adj.zh_core, "不" + adj.zh_core, adj.zh_core + "吗"
        else:
            zh_aff, zh_neg, zh_q = adj.zh_core, "不" + adj.zh_core, adj.zh_core + "吗"
        c = Clause(en_subj=subj.en, en_3sg=subj.en_3sg, en_person=subj.person, de_subj=subj.de["nom"],
                   de_person=subj.person, zh_subj=subj.zh, verb=None, tense=tense, negated=negated, de_middle=[],
                   de_pred=[adj.de], en_rest=adj.en, zh_pre=[], zh_vp="", time=time,
                   copula=(adj.en, adj.de, zh_aff, zh_neg, zh_q), is_every=subj.is_every, de_nicht=negated)
        return c

    # -- realisation
    def en_verb(self, c: Clause, *, question=False) -> tuple[str, str]:
        """(auxiliary-or-verb, rest-of-verb-group) in English; question puts the first part before the subject."""
        if c.copula:
            be = {"present": ("am" if c.en_subj == "I" else "is" if c.en_3sg else "are"),
                  "past": ("was" if c.en_3sg or c.en_subj == "I" else "were")}.get(c.tense)
            if c.tense == "future":
                return "will", ("not be" if c.negated else "be")
            return be, ("not" if c.negated else "")
        v = c.verb
        if c.tense == "future":
            return "will", ("not " if c.negated else "") + v.en
        if c.negated or question:
            do = "did" if c.tense == "past" else ("does" if c.en_3sg else "do")
            return do, ("not " if c.negated else "") + v.en
        return (v.en_past if c.tense == "past" else v.en3 if c.en_3sg else v.en), ""

    def en_clause(self, c: Clause, *, question=False, front_time=None) -> str:
        first, rest = self.en_verb(c, question=question)
        time = c.time.en if c.time else ""
        front = front_time if front_time is not None else c.time_front
        if question:
            words = [first, c.en_subj, rest, c.en_rest]
        else:
            words = [c.en_subj, first, rest, c.en_rest]
        if time and not front:
            words.append(time)
        s = " ".join(w for w in words if w)
        if time and front:
            s = time + ", " + s
        return s

    def de_parts(self, c: Clause, *, with_time=True) -> tuple[str, list, list]:
        """(finite verb, middle field incl. time and nicht, right bracket words) of a German clause."""
        p = c.de_person
        items = list(c.de_middle) + ([(_SLOT["time"], c.time.de)] if c.time and with_time else [])
        mid = [text for _, text in sorted(items, key=lambda x: x[0])] + (["nicht"] if c.de_nicht else [])
        if c.copula:
            finite = _DE_AUX["sein_past" if c.tense == "past" else "sein"][p]
            right = list(c.de_pred)
            if c.tense == "future":
                finite = _DE_AUX["werden"][p]
                right = right + ["sein"]
            return finite, mid, right
        v = c.verb
        mid += list(c.de_pred)
        if c.tense == "present":
            return v.de[p], mid, ([v.sep] if v.sep else [])
        if c.tense == "past":
            return _DE_AUX[v.aux][p], mid, [v.part]
        return _DE_AUX["werden"][p], mid, [v.sep + v.de[P1PL]]

    def de_main(self, c: Clause, *, inverted_by: str | None = None) -> str:
        """Verb-second main clause. ``inverted_by`` is a fronted element ("" after a fronted subordinate clause)."""
        front_time = inverted_by is None and c.time is not None and c.time_front
        finite, mid, right = self.de_parts(c, with_time=not front_time)
        if front_time:
            inverted_by = c.time.de
        if inverted_by is not None:
            return _join([inverted_by, finite, c.de_subj] + mid + right)
        return _join([c.de_subj, finite] + mid + right)

    def de_question(self, c: Clause) -> str:
        finite, mid, right = self.de_parts(c)
        return _join([finite, c.de_subj] + mid + right)

    def de_sub(self, c: Clause, conj: str) -> str:
        """Verb-final subordinate clause: 'weil der Mann den Hund nicht gesehen hat'."""
        finite, mid, right = self.de_parts(c)
        if c.verb is not None and c.tense == "present" and c.verb.sep:
            tail = [c.verb.sep + finite]
        else:
            tail = right + [finite]
        return _join([conj, c.de_subj] + mid + tail)

    def zh_clause(self, c: Clause, *, question=False) -> str:
        time = c.time.zh if c.time else ""
        dou = "都" if c.is_every else ""
        if c.copula:
            _, _, aff, neg, q = c.copula
            pred = neg if c.negated else (q if question else aff)
            if c.tense == "future":
                pred = ("不会" if c.negated else "会") + (pred[1:] if pred.startswith("不") else pred.removeprefix("很"))
                if question:
                    pred += "吗"
        else:
            vp = "".join(c.zh_pre) + (c.zh_vp_neg if (c.negated and c.zh_vp_neg) else c.zh_vp)
            # negation and 会 come before a place phrase: 她会在市场上睡觉
            if c.negated:
                if c.tense == "past":
                    neg = "没" if c.verb.zh_aspect else "不"
                elif c.tense == "future":
                    neg = "不会"
                else:
                    neg = "不"
                vp = neg + vp
            elif c.tense == "future":
                vp = "会" + vp
            pred = vp + ("吗" if question else "")
            if c.negated and c.zh_pre:
                raise AssertionError("negated clauses carry no place phrase")
        if time and c.time_front:
            return time + c.zh_subj + dou + pred
        return c.zh_subj + time + dou + pred

    # -- sentences
    def sentence(self) -> Triple:
        kinds = list(self.weights)
        kind = self.rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        en, de, zh = getattr(self, "_s_" + kind)()
        if en.endswith("?"):  # a question drawn inside another type (copula)
            return Triple(_cap(en), _cap(de), zh, kind)
        q = kind == "question"
        return Triple(_cap(en + ("?" if q else ".")), _cap(de + ("?" if q else ".")), zh + ("？" if q else "。"), kind)

    def _s_simple(self):
        c = self.clause()
        c.time_front = bool(c.time) and self.chance(0.5)
        return self.en_clause(c), self.de_main(c), self.zh_clause(c)

    def _s_question(self):
        c = self.clause(allow_every=False, allow_negation=False)
        return self.en_clause(c, question=True), self.de_question(c), self.zh_clause(c, question=True)

    def _s_because(self):
        a = self.clause(allow_time=False)
        b = self.clause()
        return (self.en_clause(a) + " because " + self.en_clause(b),
                self.de_main(a) + ", " + self.de_sub(b, "weil"),
                self.zh_clause(a) + "，因为" + self.zh_clause(b))

    def _s_when(self):
        # wenn-clause first: the main clause then starts with its finite verb (Wenn ..., singen die Kinder)
        sub = self.clause(allow_time=False, tense="present", allow_negation=False)
        main = self.clause(allow_time=False, tense=self.pick(["present", "future"]))
        conj_en, conj_de, zh_a, zh_b = self.pick([("when", "wenn", "", "的时候，"), ("if", "wenn", "如果", "，")])
        de_sub = self.de_sub(sub, conj_de)
        return (conj_en + " " + self.en_clause(sub) + ", " + self.en_clause(main),
                de_sub + ", " + self.de_main(main, inverted_by=""),
                zh_a + self.zh_clause(sub) + zh_b + self.zh_clause(main))

    def _s_that(self):
        who = self.noun_phrase({"human"}, role="subj", allow_quant=False)
        en_v, de_v, zh_v = self.pick([("think", ("glaube", "glaubst", "glaubt", "glauben", "glauben"), "觉得"),
                                      ("know", ("weiß", "weißt", "weiß", "wissen", "wissen"), "知道"),
                                      ("say", ("sage", "sagst", "sagt", "sagen", "sagen"), "说"),
                                      ("hope", ("hoffe", "hoffst", "hofft", "hoffen", "hoffen"), "希望")])
        en_fin = {"know": "knows", "say": "says", "think": "thinks", "hope": "hopes"}[en_v] if who.en_3sg else en_v
        b = self.clause(allow_every=False)
        return (who.en + " " + en_fin + " that " + self.en_clause(b),
                who.de["nom"] + " " + de_v[who.person] + ", " + self.de_sub(b, "dass"),
                who.zh + zh_v + self.zh_clause(b))

    def _s_relative(self):
        """Subject or object modified by 'who/that' + a subject-gap relative clause."""
        head_kinds = self.pick([{"human"}, {"human"}, {"animal"}])
        noun = self.pick(self.nouns(head_kinds))
        det = self.pick(["the", "the", "a", "this"])
        plural = det == "the" and self.chance(0.3)
        g = "pl" if plural else noun.gender
        rverb = self.pick([v for v in self.lex_verbs if v.frame == "tr" and noun.kind in v.subjects])
        rtense = self.pick(["present", "past"])
        robj = self.noun_phrase(rverb.objects, allow_pronoun=False, allow_quant=False)
        person = P3PL if plural else P3SG
        # English
        en_noun = noun.en_pl if plural else noun.en
        en_det = {"the": "the", "this": "these" if plural else "this",
                  "a": "an" if en_noun[0] in "aeiou" else "a"}[det]
        rel_en = ("who" if noun.kind == "human" else "that") + " "
        if rtense == "past":
            rel_en += rverb.en_past
        else:
            rel_en += rverb.en3 if not plural else rverb.en
        rel_en += (" " + rverb.en_particle if rverb.en_particle else "") + " " + robj.en
        # German relative clause, verb final
        rel_de_pron = {"m": "der", "f": "die", "n": "das", "pl": "die"}[g]
        robj_de = robj.de[rverb.case]
        if rtense == "past":
            tail = [rverb.part, _DE_AUX[rverb.aux][person]]
        else:
            tail = [rverb.sep + rverb.de[person]]
        rel_de = _join([rel_de_pron, robj_de] + tail)
        # Chinese: prenominal, [VP]的 + noun
        rel_zh = rverb.zh.format(O=robj.zh, D="", P="", A="了" if rtense == "past" and rverb.zh_aspect else "") + "的"

        def head(case):
            i = _CASES[case]
            if det == "the":
                art = _DEF[g][i]
            elif det == "a":
                art = "ein" + _EIN[g][i]
            else:
                art = "dies" + _DIESER[g][i]
            return art + " " + de_noun_form(noun, plural, case)

        zh_det = {"the": "", "a": "一" + noun.mw, "this": ("这些" if plural else "这" + noun.mw)}[det]
        zh_np = zh_det + rel_zh + noun.zh
        en_np = en_det + " " + en_noun + " " + rel_en
        if self.chance(0.5):
            # as subject of the main clause
            subj = NP(en=en_np, de={c: head(c) + ", " + rel_de + "," for c in _CASES}, zh=zh_np, person=person,
                      en_3sg=not plural, definite=True)
            c = self.clause(subject=subj) if noun.kind in ("human",) else self._clause_with_subject_kind(subj, noun.kind)
            c.time_front = bool(c.time) and self.chance(0.5)
            return self.en_clause(c), self.de_main(c), self.zh_clause(c)
        # as object of a main-clause verb that takes this kind
        mverb = self.pick([v for v in self.lex_verbs if v.frame == "tr" and (noun.kind in v.objects)])
        msubj = self.noun_phrase(mverb.subjects, role="subj", allow_every=False)
        tense = self.pick(["present", "past", "future"])
        obj = NP(en=en_np, de={c: head(c) + ", " + rel_de + "," for c in _CASES}, zh=zh_np, person=person,
                 en_3sg=not plural, definite=True)
        fill = {"A": "了" if tense == "past" and mverb.zh_aspect else "", "O": obj.zh, "D": "", "P": ""}
        c = Clause(en_subj=msubj.en, en_3sg=msubj.en_3sg, en_person=msubj.person, de_subj=msubj.de["nom"],
                   de_person=msubj.person, zh_subj=msubj.zh, verb=mverb, tense=tense, negated=False,
                   de_middle=[(_SLOT["obj"], obj.de[mverb.case])], de_pred=[],
                   en_rest=" ".join(([mverb.en_particle] if mverb.en_particle else []) + [obj.en]),
                   zh_pre=[], zh_vp=mverb.zh.format(**fill), is_every=False)
        return self.en_clause(c), self.de_main(c), self.zh_clause(c)

    def _clause_with_subject_kind(self, subj: NP, kind: str) -> Clause:
        for _ in range(100):
            c = self.clause(subject=subj)
            if kind in c.verb.subjects:
                return c
        raise RuntimeError(f"no verb takes a {kind} subject")

    def _s_phrase(self):
        """A noun phrase alone ('three red apples' -> 'Drei rote Äpfel.' -> '三个红色的苹果。') or a number."""
        if self.chance(0.15):
            n = self.rng.randint(1, self.max_number)
            return number_en(n), number_de(n), number_zh(n)
        np_ = self.noun_phrase({"human", "animal", "thing", "food"}, role="subj", allow_pronoun=False)
        return np_.en, np_.de["nom"], np_.zh

    def _s_copula(self):
        kind = self.pick(["human", "animal", "thing", "food"])
        subj = self.noun_phrase({kind}, role="subj", allow_quant=False)
        c = self.copula_clause(subj, kind)
        if not c.negated and self.chance(0.25):
            return self.en_clause(c, question=True) + "?", self.de_question(c) + "?", self.zh_clause(c, question=True) + "？"
        c.time_front = bool(c.time) and self.chance(0.5)
        return self.en_clause(c), self.de_main(c), self.zh_clause(c)

    def _s_age(self):
        subj = self.noun_phrase({"human", "animal"}, role="subj", allow_quant=False, allow_every=False)
        top = min(99, self.max_number)
        n = self.rng.randint(1, top) if subj.en_3sg or subj.pronoun else self.rng.randint(2, top)
        be = ("am" if subj.en == "I" else "is" if subj.en_3sg else "are")
        years_en = "year" if n == 1 else "years"
        years_de = "Jahr" if n == 1 else "Jahre"
        de_be = _DE_AUX["sein"][subj.person]
        return (f"{subj.en} {be} {number_en(n)} {years_en} old",
                f"{subj.de['nom']} {de_be} {number_de(n, attributive=True)} {years_de} alt",
                f"{subj.zh}{number_zh(n, counting=True)}岁")

    def _s_cost(self):
        kinds = {"thing", "food"}
        subj = self.noun_phrase(kinds, role="subj", allow_pronoun=False, allow_quant=False, allow_every=False)
        n = self.rng.randint(2, self.max_number)
        cost_en = "costs" if subj.en_3sg else "cost"
        cost_de = "kostet" if subj.en_3sg else "kosten"
        return (f"{subj.en} {cost_en} {number_en(n)} euros",
                f"{subj.de['nom']} {cost_de} {number_de(n, attributive=True)} Euro",
                f"{subj.zh}要{number_zh(n, counting=True)}欧元")

    def _s_but(self):
        a = self.clause(allow_time=False)
        b = self.clause(allow_time=False, tense=a.tense)
        return (self.en_clause(a) + ", but " + self.en_clause(b),
                self.de_main(a) + ", aber " + self.de_main(b),
                self.zh_clause(a) + "，但是" + self.zh_clause(b))


def _join(words) -> str:
    s = " ".join(w for w in words if w)
    # a relative clause at the end of a clause keeps no closing comma
    while ",," in s or ", ," in s:
        s = s.replace(", ,", ",").replace(",,", ",")
    return s.replace(" ,", ",")


def _cap(s: str) -> str:
    s = s.replace(",.", ".").replace(",?", "?")
    return s[:1].upper() + s[1:]


def generate(n: int, seed: int = 0, **options) -> list[Triple]:
    """``n`` distinct sentences (by English text) drawn with ``seed``."""
    g = Grammar(seed=seed, **options)
    seen, out = set(), []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could only draw {len(out)} distinct sentences out of {n}")
        t = g.sentence()
        if t.en in seen:
            continue
        seen.add(t.en)
        out.append(t)
    return out


if __name__ == "__main__":
    import sys

    for t in generate(int(sys.argv[1]) if len(sys.argv) > 1 else 20, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0):
        print(f"[{t.kind}] {t.en}\n    {t.de}\n    {t.zh}")
