"""The official Qwen2.5 tokenizer built offline: ids equal tiktoken's on real text, transformers loads it,
decoding round-trips, control tokens behave as released."""

import itertools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen25.data import sources
from qwen25.tokenizer import CONTROL_TOKENS, PAT, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("qwen2.5")


def test_reference_ids(tok):
    assert tok.encode("Hello world, 你好世界!") == [9707, 1879, 11, 220, 108386, 99489, 0]


def test_vocabulary_layout(tok):
    assert tok.num_regular_tokens == 151643 and tok.vocab_size == 151665
    assert [tok.control_ids[t] for t in CONTROL_TOKENS] == list(range(151643, 151665))
    assert tok.eos_id == 151645 and tok.pad_id == 151643
    # the first 14 are special (dropped by skip_special_tokens), the last 8 are not
    ids = [tok.control_ids[t] for t in CONTROL_TOKENS]
    assert tok.decode(ids, skip_special_tokens=True) == "".join(CONTROL_TOKENS[14:])


def test_ids_equal_tiktoken_on_2mb_of_real_text(tok):
    import tiktoken

    from qwen25.tokenizer.official import find_tiktoken_file, load_tiktoken_ranks

    enc = tiktoken.Encoding("qwen", pat_str=PAT, mergeable_ranks=load_tiktoken_ranks(find_tiktoken_file()),
                            special_tokens={t: 151643 + i for i, t in enumerate(CONTROL_TOKENS)})
    docs = sources.mixed_sample(700_000, ("python_stdlib", "nlp_corpus", "python_docs", "people_daily"))
    assert sum(len(d.encode()) for d in docs) >= 2_000_000
    ours = tok.encode_batch(docs)
    theirs = enc.encode_ordinary_batch(docs)
    mismatched = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatched, f"{len(mismatched)} documents differ, first: {docs[mismatched[0]][:200]!r}"


def test_transformers_loads_the_directory_and_agrees(tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok.path)
    samples = ["Hello world, 你好世界!", "def f(x):\n    return x ** 2  # 平方\n", "<|im_start|>user\nhi<|im_end|>\n",
               "  leading spaces\n\n\ttabs\r\n", "<tool_call>\n{}\n</tool_call>", "数字 1234567 and ÅÅ Ω ﬁ"]
    for s in samples:
        assert hf.encode(s, add_special_tokens=False) == tok.encode(s), s
    assert hf.eos_token == "<|im_end|>" and hf.pad_token == "<|endoftext|>"
    assert hf.convert_tokens_to_ids("<|file_sep|>") == 151664


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_decode_encode_round_trips_to_nfc(text):
    tok = load_tokenizer("qwen2.5")
    nfc = unicodedata.normalize("NFC", text)
    assert tok.decode(tok.encode(text)) == nfc
    assert tok.decode(tok.encode_ordinary(text)) == nfc


def test_ordinary_encoding_never_yields_control_ids(tok):
    text = "".join(CONTROL_TOKENS) + " and <|im_start|>system"
    ids = tok.encode_ordinary(text)
    assert not set(ids) & set(tok.control_ids.values())
    assert tok.decode(ids) == text
    assert tok.encode(text)[:22] == list(range(151643, 151665))


def test_batch_equals_single(tok):
    docs = [d[:2000] for d in itertools.islice(sources.python_docs(), 20)]
    assert tok.encode_batch(docs) == [tok.encode_ordinary(d) for d in docs]
