"""Planted junk: known-bad documents mixed into a corpus so each pipeline step's removals can be scored
(precision and recall per step). Every planted record carries `planted` (its kind) and, for copies, `planted_from`
(the id of the document it copies).

Kinds: templated machine text (listings, bulletins, logs filled from templates), boilerplate (navigation,
cookie banners, footers), symbol soup (hex and base64 dumps), exact duplicates, near-duplicates with small
edits, and benchmark items (a small hand-made test set, `BENCHMARK_ITEMS`, alone or between halves of two real documents).
Everything is a function of the seed.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence

KINDS = ("templated", "boilerplate", "symbols", "exact_duplicate", "near_duplicate", "benchmark")

# A hand-made stand-in for an evaluation set (decontamination tests and measurements plant these).
BENCHMARK_ITEMS = [
    "Question: A train leaves the station at 9:40 and arrives at 13:05. How many minutes does the journey take?\n"
    "Answer: 205",
    "Question: Mira reads 18 pages every evening. After 12 evenings she has 31 pages left. How many pages does "
    "the book have?\nAnswer: 247",
    "Question: A rectangle has a perimeter of 54 cm and a width of 9 cm. What is its area in square centimetres?\n"
    "Answer: 162",
    "Question: Tickets cost 7 dollars for children and 12 dollars for adults. A group of 5 adults and 8 children "
    "pays with two 100-dollar notes. How much change do they get?\nAnswer: 84",
    "Question: The sum of three consecutive odd numbers is 147. What is the largest of them?\nAnswer: 51",
    "Question: A tank holds 360 litres and drains at 15 litres per minute while a pipe fills it at 6 litres per "
    "minute. How many minutes until it is empty?\nAnswer: 40",
    "def interleave_lists(a: list, b: list) -> list:\n    \"\"\"Return a list alternating elements of a and b, "
    "starting with a; the rest of the longer list goes at the end.\n    >>> interleave_lists([1, 3], [2, 4, 6, 8])"
    "\n    [1, 2, 3, 4, 6, 8]\n    \"\"\"",
    "def count_vowel_runs(text: str) -> int:\n    \"\"\"Count maximal runs of consecutive vowels (a, e, i, o, u, any "
    "case) in text.\n    >>> count_vowel_runs('Queueing theory')\n    3\n    \"\"\"",
    "def balanced_brackets(s: str) -> bool:\n    \"\"\"True when every (, [ and { in s is closed in the right order;"
    " other characters are ignored.\n    >>> balanced_brackets('a[b(c)d]{e}')\n    True\n    \"\"\"",
    "def nth_weekday_name(n: int) -> str:\n    \"\"\"Name of the weekday n days after a Monday, for any integer n.\n"
    "    >>> nth_weekday_name(9)\n    'Wednesday'\n    \"\"\"",
    "问题：一本书有240页，小华第一天看了全书的四分之一，第二天看了剩下的三分之一。还剩多少页没有看？\n答案：120",
    "问题：甲乙两地相距360千米，一辆汽车每小时行驶72千米。从甲地到乙地需要几小时？\n答案：5",
]

_EN_PRODUCTS = ["wireless earbuds", "phone case", "yoga mat", "coffee grinder", "desk lamp", "travel mug",
                "running shoes", "backpack", "water bottle", "bluetooth speaker", "office chair", "air fryer"]
_COLORS = ["black", "white", "blue", "red", "grey", "green", "pink", "silver"]
_ADJS = ["premium", "best", "cheap", "top rated", "new", "hot", "discount", "original"]
_CITIES = ["Springfield", "Riverton", "Lakeside", "Greenville", "Fairview", "Oakdale", "Hillcrest", "Bayview"]
_ZH_PRODUCTS = ["蓝牙耳机", "手机壳", "保温杯", "充电宝", "运动鞋", "双肩包", "台灯", "电饭煲"]


def _listing(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(15, 30)):
        item, color, adj = rng.choice(_EN_PRODUCTS), rng.choice(_COLORS), rng.choice(_ADJS)
        lines.append(f"{adj.title()} {item} in {color} - SKU {rng.randint(10000, 99999)} - only "
                     f"${rng.randint(5, 199)}.{rng.randint(0, 99):02d} - rated {rng.randint(1, 5)}/5 by "
                     f"{rng.randint(3, 900)} buyers - free shipping - order now!")
    return "\n".join(lines)


def _bulletin(rng: random.Random) -> str:
    lines = []
    for city in rng.sample(_CITIES, len(_CITIES)) * rng.randint(2, 3):
        lines.append(f"Weather update for {city}: temperature {rng.randint(-5, 35)} C, humidity {rng.randint(20, 99)}%, "
                     f"wind {rng.randint(0, 60)} km/h, chance of rain {rng.randint(0, 100)}%. Stay tuned for more "
                     f"updates for {city}.")
    return "\n".join(lines)


def _log(rng: random.Random) -> str:
    levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG"]
    lines = []
    for i in range(rng.randint(25, 50)):
        lines.append(f"2024-0{rng.randint(1, 9)}-{rng.randint(10, 28)} {rng.randint(10, 23)}:{rng.randint(10, 59)}:"
                     f"{rng.randint(10, 59)} {rng.choice(levels)} worker-{rng.randint(1, 8)} request "
                     f"id={rng.randint(100000, 999999)} status={rng.choice([200, 200, 200, 404, 500])} "
                     f"latency={rng.randint(1, 900)}ms")
    return "\n".join(lines)


def _zh_listing(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(15, 30)):
        lines.append(f"【爆款特价】{rng.choice(_ZH_PRODUCTS)}，原价{rng.randint(100, 500)}元，现价只要{rng.randint(9, 99)}元！"
                     f"已售{rng.randint(100, 9999)}件，好评率{rng.randint(90, 99)}%，包邮到家，立即抢购！")
    return "\n".join(lines)


_BOILERPLATE = [
    "Home | About us | Products | Blog | Contact", "Skip to main content", "Sign in / Register",
    "Your cart is empty", "We use cookies to give you the best experience on our website. By continuing to browse "
    "you agree to our use of cookies. Accept | Manage preferences", "Subscribe to our newsletter for the latest "
    "news and offers", "Follow us on Facebook, Twitter and Instagram", "Copyright © 2024 Example Media Group. All "
    "rights reserved.", "Privacy Policy | Terms of Use | Cookie Policy | Sitemap", "Share this page: Email | "
    "Print", "Back to top", "Powered by WordPress", "Click here to download our free app", "Loading...",
    "Related posts", "Leave a comment", "You might also like", "首页 | 关于我们 | 联系我们", "版权所有 © 2024 保留所有权利",
]


def _boilerplate(rng: random.Random) -> str:
    lines = [rng.choice(_BOILERPLATE) for _ in range(rng.randint(12, 30))]
    return "\n".join(lines)


def _symbols(rng: random.Random) -> str:
    blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(600, 1500)))
    if rng.random() < 0.5:
        text = base64.b64encode(blob).decode()
        return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    return "\n".join(" ".join(f"{b:02x}" for b in blob[i:i + 16]) for i in range(0, len(blob), 16))


_TEMPLATES = [_listing, _bulletin, _log, _zh_listing]


def _near_copy(text: str, rng: random.Random, edit_rate: float = 0.03) -> str:
    """A few small edits: words (or CJK characters) dropped, doubled or swapped for another from the text."""
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in text[:500]) > 50
    units = list(text) if cjk else text.split(" ")
    out = []
    for unit in units:
        r = rng.random()
        if r < edit_rate / 3:
            continue
        out.append(unit)
        if r < 2 * edit_rate / 3:
            out.append(unit)
        elif r < edit_rate:
            out[-1] = rng.choice(units)
    return ("" if cjk else " ").join(out)


def planted_documents(real: Sequence[dict], counts: dict[str, int], seed: int) -> list[dict]:
    """Planted records of each kind in `counts`, copies drawn from `real` (records with "text" and "id")."""
    unknown = sorted(set(counts) - set(KINDS))
    if unknown:
        raise ValueError(f"planted: unknown kinds {unknown}; known: {list(KINDS)}")
    rng = random.Random(seed)
    out = []
    for kind in KINDS:
        for i in range(counts.get(kind, 0)):
            record = {"id": f"planted/{kind}/{i}", "source": f"planted_{kind}", "license": "generated by qwen25 "
                      "(qwen25/data/pipeline/planted.py)", "planted": kind}
            if kind == "templated":
                record.update(text=rng.choice(_TEMPLATES)(rng), domain=rng.choice(["en", "en", "zh"]))
            elif kind == "boilerplate":
                record.update(text=_boilerplate(rng), domain="en")
            elif kind == "symbols":
                record.update(text=_symbols(rng), domain="code")
            elif kind == "benchmark":
                item = BENCHMARK_ITEMS[i % len(BENCHMARK_ITEMS)]
                a, b = rng.choice(real), rng.choice(real)
                # alone, or between halves of two real documents (not a near-copy of either)
                text = item if i % 2 == 0 else f"{a['text'][:len(a['text']) // 2]}\n\n{item}\n\n" \
                                               f"{b['text'][len(b['text']) // 2:]}"
                record.update(text=text, domain=a["domain"], planted_item=i % len(BENCHMARK_ITEMS))
            else:
                original = rng.choice(real)
                text = original["text"] if kind == "exact_duplicate" else _near_copy(original["text"], rng)
                record.update(text=text, domain=original["domain"], planted_from=original["id"])
            out.append(record)
    return out


def mix(real: Sequence[dict], planted: Sequence[dict], seed: int) -> list[dict]:
    """Real and planted records in one deterministic order (planted ones spread through the corpus)."""
    rng = random.Random(seed)
    keyed = [(rng.random(), i, r) for i, r in enumerate([*real, *planted])]
    return [r for _, _, r in sorted(keyed, key=lambda x: (x[0], x[1]))]
