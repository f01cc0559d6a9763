"""Synthetic long-context tasks that need no download: passkey retrieval and RULER-style tasks.

Each generator builds a prompt of about `length` tokens (measured with the given tokenizer: any object with
`encode(text) -> list[int]`) for a base model to continue, and the strings the continuation must contain.
Templates follow the passkey test of the report and RULER's (Hsieh et al., 2024) synthetic tasks; the
haystack is the repeated "The grass is green..." filler (RULER's noise haystack), so the tasks run offline.

Scoring is RULER's "string match all": the share of expected strings found in the output, case-insensitive.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Sample:
    task: str
    prompt: str
    answers: tuple[str, ...]  # every one must appear in the output
    depth: float  # where the (first) needle sits, 0 = start of the haystack, 1 = end
    max_new_tokens: int


def string_match_all(answers: tuple[str, ...] | list[str], output: str) -> float:
    """Share of the expected answers that appear in `output`, case-insensitive (RULER's string_match_all)."""
    text = output.lower()
    return sum(answer.lower() in text for answer in answers) / len(answers)


def score(sample: Sample, output: str) -> float:
    return string_match_all(sample.answers, output)


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                 "I will quiz you about the important information there.\n\n")

# Words for keys and word lists (RULER draws them from the `wonderwords` package; these are built in).
WORDS = tuple("""
able acid aged also area army away baby back ball band bank base bath bear beat bell belt best bird blow
blue boat body bone book boot born boss both bowl bulk burn bush busy cake call calm came camp card care
case cash cast cell chat chip city club coal coat code cold come cook cool cope copy core cost crew crop
dark data date dawn days dead deal dear debt deep deny desk dial diet disc dish door dose down draw drew
drop drug dual duke dust duty each earn ease east easy edge else even ever evil exit face fact fail fair
fall farm fast fate fear feed feel file fill film find fine fire firm fish five flat flow food foot ford
form fort four free from fuel full fund gain game gate gave gear gift girl give glad goal gold golf gone
good gray grew grey grow gulf hair half hall hand hang hard harm hate have head hear heat held hell help
here hero high hill hire hold hole holy home hope host hour huge hung hunt hurt idea inch into iron item
jack jane jean john join jump jury just keen keep kent kept kick kill kind king knee knew know lack lady
laid lake land lane last late lead left less life lift like line link list live load loan lock long look
lord lose loss lost love luck made mail main make male many mark mass meal mean meat meet menu mere mild
mile milk mill mind mine miss mode mood moon more most move much must name navy near neck need news next
nice nick nine none nose note okay once only open oral over pace pack page paid pain pair palm park part
pass past path peak pick pink pipe plan play plot plug plus poll pool poor port post pull pure push race
rail rain rank rare rate read real rear rely rent rest rice rich ride ring rise risk road rock role roll
roof room root rose rule rush safe said sake sale salt same sand save seat seed seek seem seen self sell
send sent ship shop shot show shut sick side sign site size skin slip slow snow soft soil sold sole some
song soon sort soul spot star stay step stop such suit sure take tale talk tall tank tape task team tech
tell tend term test text than that them then they thin this thus tide tile time tiny told tone took tool
tour town tree trip true tune turn twin type unit upon used user vast very vice view vote wage wait wake
walk wall want ward warm wash wave ways weak wear week well went were west what when whom wide wife wild
will wind wine wing wire wise wish with wood word wore work yard yeah year your zero zone
""".split())


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _haystack_with(tokenizer: Tokenizer, length: int, head: str, needles: list[str], tail: str,
                   depths: list[float]) -> str:
    """head + filler with each needle at its depth + tail, about `length` tokens in all."""
    fixed = len(tokenizer.encode(head + " ".join(needles) + tail))
    per_unit = max(1, len(tokenizer.encode(FILLER * 8)) / 8)
    units = max(0, int((length - fixed) / per_unit))
    pieces = [FILLER] * units
    for needle, depth in sorted(zip(needles, depths), key=lambda p: -p[1]):
        pieces.insert(round(depth * units), needle + " ")
    return head + "".join(pieces) + tail


def passkey(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    key = str(rng.randint(10000, 99999))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    prompt = _haystack_with(tokenizer, length, PASSKEY_INTRO, [needle], "\nWhat is the pass key? The pass key is",
                            [depth])
    return Sample("passkey", prompt, (key,), depth, 12)


def _magic(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def _key(rng: random.Random) -> str:
    return f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"


NIAH_HEAD = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the numbers afterwards.\n")


def niah_single(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    key, value = _key(rng), _number(rng)
    tail = (f"\nWhat is the special magic number for {key} mentioned in the provided text? "
            f"The special magic number for {key} mentioned in the provided text is")
    prompt = _haystack_with(tokenizer, length, NIAH_HEAD, [_magic(key, value)], tail, [depth])
    return Sample("niah_single", prompt, (value,), depth, 32)


def niah_multikey(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    """One needle answers the question; three others with different keys distract."""
    keys = set()
    while len(keys) < 4:
        keys.add(_key(rng))
    keys, values = sorted(keys), [_number(rng) for _ in range(4)]
    target = rng.randrange(4)
    depths = [depth if i == target else rng.random() for i in range(4)]
    tail = (f"\nWhat is the special magic number for {keys[target]} mentioned in the provided text? "
            f"The special magic number for {keys[target]} mentioned in the provided text is")
    prompt = _haystack_with(tokenizer, length, NIAH_HEAD, [_magic(k, v) for k, v in zip(keys, values)], tail, depths)
    return Sample("niah_multikey", prompt, (values[target],), depth, 32)


def niah_multivalue(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    """Four needles share one key; every value must be recalled."""
    key, values = _key(rng), [_number(rng) for _ in range(4)]
    depths = [depth] + [rng.random() for _ in range(3)]
    tail = (f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
            f"The special magic numbers for {key} mentioned in the provided text are")
    prompt = _haystack_with(tokenizer, length, NIAH_HEAD, [_magic(key, v) for v in values], tail, depths)
    return Sample("niah_multivalue", prompt, tuple(values), depth, 64)


def variable_tracking(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    """A chain VAR A = N, VAR B = VAR A, ... spread through the haystack; name every variable holding N."""
    value = str(rng.randint(10000, 99999))
    names = []
    while len(names) < 5:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    depths = sorted([depth] + [rng.random() for _ in range(len(statements) - 1)])
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    tail = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: "
            f"According to the chain(s) of variable assignment in the text above, {len(names)} variables are "
            f"assigned the value {value}, they are:")
    prompt = _haystack_with(tokenizer, length, head, statements, tail, depths)
    return Sample("variable_tracking", prompt, tuple(names), depth, 30)


def _word_list_prompt(tokenizer: Tokenizer, length: int, head: str, tail: str,
                      make: Callable[[int], list[str]]) -> str:
    """The longest list from `make(n)` whose prompt stays within `length` tokens (n found by doubling/halving)."""
    def build(n: int) -> str:
        return head + " ".join(f"{i + 1}. {w}" for i, w in enumerate(make(n))) + tail

    n = 16
    while len(tokenizer.encode(build(n * 2))) <= length:
        n *= 2
    step = n // 2
    while step >= 1:
        if len(tokenizer.encode(build(n + step))) <= length:
            n += step
        step //= 2
    return build(n)


def common_words(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    """A numbered word list: ten common words repeated r times (r up to 30, as RULER), every other word three
    times; name the ten most common."""
    pool = list(WORDS)
    rng.shuffle(pool)
    common, rare = pool[:10], pool[10:]
    seed = rng.random()

    def make(n: int) -> list[str]:
        repeat = min(30, max(4, n // 30))
        n_rare = max(0, n - 10 * repeat) // 3
        # Past the built-in list, rare words are pairs of list words: new words, never one of the ten.
        extra = list(itertools.islice((a + b for a in rare for b in rare), max(0, n_rare - len(rare))))
        words = common * repeat + (rare + extra)[:n_rare] * 3
        random.Random(seed).shuffle(words)
        return words

    head = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
    tail = ("\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that "
            "appear most often in the list are:")
    return Sample("common_words", _word_list_prompt(tokenizer, length, head, tail, make), tuple(common), depth, 120)


def frequent_words(tokenizer: Tokenizer, length: int, depth: float, rng: random.Random) -> Sample:
    """Coded words drawn from a Zipf law (s = 2) over a vocabulary; name the three most frequent."""
    vocab = ["".join(rng.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(200)]
    weights = [1 / (rank + 1) ** 2 for rank in range(len(vocab))]
    seed = rng.random()

    def make(n: int) -> list[str]:
        return random.Random(seed).choices(vocab, weights, k=n)

    head = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words.\n")
    tail = ("\nQuestion: Do not provide any explanation. What are the three most frequently appeared words in the "
            "above coded text? Answer: According to the coded text above, the three most frequently appeared "
            "words are:")
    prompt = _word_list_prompt(tokenizer, length, head, tail, make)
    return Sample("frequent_words", prompt, tuple(vocab[:3]), depth, 50)


TASKS: dict[str, Callable[[Tokenizer, int, float, random.Random], Sample]] = {
    "passkey": passkey, "niah_single": niah_single, "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue, "variable_tracking": variable_tracking, "common_words": common_words,
    "frequent_words": frequent_words,
}


def make_sample(task: str, tokenizer: Tokenizer, length: int, depth: float, seed: int) -> Sample:
    """One sample of `task`, about `length` tokens, needle at `depth`, reproducible from `seed`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    return TASKS[task](tokenizer, length, depth, random.Random(f"{task}/{length}/{depth}/{seed}"))
