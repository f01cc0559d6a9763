"""The tiktoken-core ordinary encoder gives the ids of the `tokenizers` pipeline it replaces: on 2 MB of real
text and on generated strings, for the official and a trained vocabulary, one at a time, batched and in the
shard builder; vocabularies where tiktoken's rank rule could give other ids keep the `tokenizers` path; and
the regex and NFC tables the equivalence rests on agree between the libraries."""

import json
import unicodedata

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from qwen25.data import sources
from qwen25.data.shards import ShardSet, build_shards
from qwen25.tokenizer import CONTROL_TOKENS, QwenTokenizer, load_tokenizer
from qwen25.tokenizer.core import add_control_tokens, apply_byte_level_pipeline, tokenizer_config
from qwen25.tokenizer.fast import bytes_to_unicode, byte_ranks, merge_problem
from qwen25.tokenizer.train import train_bbpe

READERS = ("python_stdlib", "nlp_corpus", "python_docs", "people_daily")


def reference(tok: QwenTokenizer, texts: list[str]) -> list[list[int]]:
    """The tokenizers pipeline (NFC, Split(PAT), ByteLevel, BPE merges) that encode_ordinary replaces."""
    return [e.ids for e in tok._ordinary.encode_batch_fast(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def official():
    return load_tokenizer("qwen2.5")


@pytest.fixture(scope="module")
def trained():
    docs = sources.mixed_sample(300_000, READERS)
    return train_bbpe(docs, vocab_size=4096, show_progress=False)


@pytest.fixture(scope="module")
def real_text():
    """2 MB of code, English and Chinese (NFC), plus every 10th document in NFD to exercise normalisation."""
    docs = sources.mixed_sample(520_000, READERS)
    assert sum(len(d.encode()) for d in docs) >= 2_000_000
    return docs + [unicodedata.normalize("NFD", d) for d in docs[::10]]


@pytest.mark.parametrize("name", ["official", "trained"])
def test_both_vocabularies_use_the_tiktoken_core(name, request):
    assert request.getfixturevalue(name).ordinary_backend == "tiktoken"


@pytest.mark.parametrize("name", ["official", "trained"])
def test_ids_equal_the_tokenizers_pipeline_on_2mb_of_real_text(name, request, real_text):
    tok = request.getfixturevalue(name)
    expected = reference(tok, real_text)
    for label, got in (("batch", tok.encode_batch(real_text)), ("one at a time", [tok.encode_ordinary(d) for d in real_text])):
        mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
        assert len(got) == len(expected) and not mismatched, \
            f"{label}: {len(mismatched)} documents differ, first: {real_text[mismatched[0]][:200]!r}"


# Characters and pieces where the regexes, NFC or the merges could disagree: every Unicode whitespace, digits
# of other scripts, emoji sequences, composed/decomposed forms, marks whose combining class only Python's
# newer Unicode tables know, contractions with case folding (ſ folds to s), control-token spellings.
FRAGMENTS = [
    " ", "  ", "   ", "\t", "\n", "\r\n", "\r", " \n ", "\n\n\t", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u2000",
    "\u2009", "\u200b", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff",
    "0", "12", "345", "٣٤", "०१", "①", "½", "Ⅻ", "𝟗", "¹",
    "🙂", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "🇨🇳", "#️⃣", "\ufe0f",
    "e\u0301", "é", "Å", "\u212b", "\u1100\u1161\u11a8", "각", "\uf900", ">\u0338", "≯", "ﬁ", "ǅ", "ẛ\u0323",
    "a\u0316\u0301", "a\u0301\u0316", "\u0301", "\u0345\u0301", "\U00011935\U00011930", "\U00011938", "a\u1ac1\u0301",
    "\u0898", "x\u0898\u0316", "\u1715", "\U00016ff0",
    "'s", "'S", "'ſ", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "'D", "'x", "''",
    "中文", "你好，世界。", "日本語", "한국어", "Ελληνικά", "русский", "عربى", "עברית", "हिन्दी",
    "def f(x):\n    return x ** 2  # 平方\n", "    ", "\t\t", "}\n\n", "...", "!!", "«»", "—", "$", "_", "@@",
    *CONTROL_TOKENS, "<|im_start|>user\nhi", "<|",
]
texts = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=25).map("".join),
)


@settings(max_examples=600, deadline=None)
@given(texts)
def test_ids_equal_the_tokenizers_pipeline_on_generated_strings(official, trained, text):
    for tok in (official, trained):
        expected = reference(tok, [text])[0]
        assert tok.encode_ordinary(text) == expected
        assert tok.encode_ordinary_with_offsets(text)[0] == expected
        assert not set(expected) & set(tok.control_ids.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, max_size=40))
def test_batch_equals_one_at_a_time(official, trained, batch):
    for tok in (official, trained):
        expected = reference(tok, batch)
        assert tok.encode_batch(batch) == expected
        assert tok.encode_batch(batch, num_threads=3) == expected
        assert tok.encode_batch(batch, num_threads=1) == expected


def test_bad_inputs_raise_as_the_tokenizers_path_does(official):
    for bad in ("a\ud800b", None, b"bytes"):
        with pytest.raises(TypeError, match="must be str"):
            official.encode_ordinary(bad)
    with pytest.raises(TypeError, match="must be str"):
        official.encode_batch(["fine", "a\ud800b"])


def test_shard_builder_writes_the_same_ids(trained, tmp_path):
    docs = [{"text": t, "domain": d} for t, d in zip(sources.mixed_sample(20_000, READERS), ["a", "b"] * 1000)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    trained.save(tmp_path / "tok")
    build_shards(corpus, tmp_path / "tok", tmp_path / "shards", workers=1)
    shards = ShardSet.open(tmp_path / "shards", load_tokenizer(tmp_path / "tok"))
    for domain in ("a", "b"):
        texts = [d["text"] for d in docs if d["domain"] == domain]
        expected = [i for ids in reference(trained, texts) for i in ids + [trained.endoftext_id]]
        assert np.concatenate(shards.domains[domain]).tolist() == expected


# ---- vocabularies where the rank rule and the merge rule disagree ---------------------------------------

def small_tokenizer(merges: list[tuple[str, str]], ids: dict[str, int]) -> QwenTokenizer:
    """Byte tokens with id = byte value, plus `ids` for the merged tokens, with the Qwen2.5 pipeline."""
    vocab = {u: b for b, u in bytes_to_unicode().items()} | ids
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    apply_byte_level_pipeline(tok)
    add_control_tokens(tok)
    return QwenTokenizer(tok, tokenizer_config())


def tiktoken_ids(tok: QwenTokenizer, text: str) -> list[int]:
    vocab = tok.tok.get_vocab(with_added_tokens=False)
    return tiktoken.Encoding("t", pat_str=r"\w+", mergeable_ranks=byte_ranks(vocab), special_tokens={}).encode_ordinary(text)


def test_merges_in_id_order_are_not_enough():
    """bc, ab, abc in merge and id order, abc made from ab + c: merging "abc" gives a + bc, which has no
    merge, while tiktoken joins a + bc by rank. The own-bytes check catches it."""
    tok = small_tokenizer([("b", "c"), ("a", "b"), ("ab", "c")], {"bc": 256, "ab": 257, "abc": 258})
    assert tiktoken_ids(tok, "abc") == [258]
    assert tok._ordinary.encode("abc").ids == [97, 256]
    assert tok.ordinary_backend == "tokenizers (token 258 ('abc') merges from its own bytes into [97, 256], not itself)"
    assert tok.encode_ordinary("abc") == [97, 256] and tok.encode_batch(["abc", "xabcx"]) == [[97, 256], [120, 97, 256, 120]]


def test_merges_out_of_id_order_keep_the_tokenizers_path():
    tok = small_tokenizer([("a", "b"), ("b", "c")], {"bc": 256, "ab": 257})
    assert tiktoken_ids(tok, "abc") == [97, 256]
    assert tok.encode_ordinary("abc") == [257, 99]
    assert "makes id 256, not above the previous merge's 257" in tok.ordinary_backend


def test_another_pipeline_keeps_the_tokenizers_path(official):
    raw = json.loads(official.tok.to_str())
    raw["normalizer"] = None
    tok = QwenTokenizer(Tokenizer.from_str(json.dumps(raw)))
    assert tok.ordinary_backend == "tokenizers (its normalizer is not the Qwen2.5 design's)"
    assert tok.encode_ordinary("e\u0301") == reference(tok, ["e\u0301"])[0] != official.encode_ordinary("e\u0301")


def test_merge_problem_checks_model_flags_and_alphabet(official):
    model = json.loads(official.tok.to_str())["model"]
    assert merge_problem(model | {"byte_fallback": True}, official.tok.model) == "model byte_fallback is True, not False"
    assert merge_problem(model | {"continuing_subword_prefix": "##"}, official.tok.model) == "model continuing_subword_prefix is '##'"
    assert merge_problem(model | {"vocab": model["vocab"] | {"a b": 999999}}, official.tok.model) == \
        "token 999999 ('a b') has a character outside the byte-level alphabet"


# ---- the tables the equivalence rests on ---------------------------------------------------------------

ALL_CHARS = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000)


@pytest.mark.slow
def test_regex_classes_agree_between_fancy_regex_and_oniguruma():
    """tiktoken splits with fancy-regex, tokenizers with Oniguruma: every code point must fall in the same
    \\p{L}, \\p{N}, \\s classes, and the contractions' letters must fold the same way (ſ is s)."""
    def fancy(pattern, text):
        enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks={bytes([b]): b for b in range(256)},
                                special_tokens={})
        return bytes(enc.encode_ordinary(text)).decode()  # the matched characters only

    def oniguruma(pattern, text):
        unmatched = set().union(*(s for s, _ in pre_tokenizers.Split(Regex(pattern), "removed").pre_tokenize_str(text)))
        return "".join(c for c in text if c not in unmatched)

    for pattern in (r"\p{L}", r"\p{N}", r"\s"):
        assert fancy(pattern, ALL_CHARS) == oniguruma(pattern, ALL_CHARS), pattern
    folding = fancy(r"(?i:[strevmld])", ALL_CHARS)
    assert folding == oniguruma(r"(?i:[strevmld])", ALL_CHARS) and "ſ" in folding
    for letter in "strevmld":
        assert fancy(f"(?i:{letter})", folding) == oniguruma(f"(?i:{letter})", folding), letter


def test_tokenizers_nfc_tables_are_a_subset_of_pythons():
    """Every character the tokenizers NFC decomposes, reorders or composes, Python's unicodedata treats the
    same; Python knows more (newer Unicode). Then text Python calls NFC is left alone by tokenizers, which
    is why the fast path skips the normaliser for it."""
    def hf(form, strings):
        out = form.normalize_str("\x00".join(strings)).split("\x00")
        assert len(out) == len(strings)
        return out

    chars = list(ALL_CHARS)
    nfd, nfc = normalizers.NFD(), normalizers.NFC()
    decomposed = {c: d for c, d in zip(chars, hf(nfd, chars)) if d != c}
    assert len(decomposed) > 2000
    assert all(unicodedata.normalize("NFD", c) == d for c, d in decomposed.items())
    parts = list(decomposed.values())
    assert hf(nfc, parts) == [unicodedata.normalize("NFC", p) for p in parts]
    # non-starters (decomposing ones are covered above): a mark of class 230 moves after one of a lower class,
    # and one of class 220 before one of a higher class
    chars = [c for c in chars if c not in decomposed]
    before = hf(nfd, ["\u0301" + c for c in chars])
    after = hf(nfd, [c + "\u0316" for c in chars])
    marks = [c for c, b, a in zip(chars, before, after) if b != "\u0301" + c or a != c + "\u0316"]
    assert all(unicodedata.combining(c) for c in marks) and len(marks) > 500
    one_per_class = list({unicodedata.combining(c): c for c in marks}.values())
    pairs = [m + c for m in marks for c in one_per_class]
    assert hf(nfd, pairs) == [unicodedata.normalize("NFD", p) for p in pairs]
