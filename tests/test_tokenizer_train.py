"""Training a byte-level BPE tokenizer of the Qwen2.5 design on the offline corpus."""

import json
import subprocess
import sys
import unicodedata

import pytest

from qwen25.data import sources
from qwen25.tokenizer import CONTROL_TOKENS, load_tokenizer
from qwen25.tokenizer.train import bytes_per_token, iter_texts, train_bbpe


def take(reader, n_bytes):
    out, size = [], 0
    for doc in reader():
        out.append(doc)
        size += len(doc.encode())
        if size >= n_bytes:
            return out
    return out


@pytest.fixture(scope="module")
def corpus():
    """About 3 MB for training and 300 KB held out, code + English + Chinese."""
    train, heldout = [], []
    for reader in (sources.python_stdlib, sources.nlp_corpus_english, sources.people_daily):
        docs = take(reader, 1_100_000)
        train += docs[:-10]
        heldout += docs[-10:]
    return train, heldout


@pytest.fixture(scope="module")
def trained(corpus):
    return train_bbpe(corpus[0], vocab_size=8192, show_progress=False)


def test_layout_matches_the_official_design(trained):
    assert trained.vocab_size == 8192 and trained.num_regular_tokens == 8170
    assert [trained.control_ids[t] for t in CONTROL_TOKENS] == list(range(8170, 8192))
    assert trained.encode("<|im_start|>") == [8171]
    # digits are never merged, as in the official split regex
    assert len(trained.encode_ordinary("1234567890")) == 10


def test_round_trip_and_compression(trained, corpus):
    heldout = corpus[1]
    for doc in heldout:
        assert trained.decode(trained.encode_ordinary(doc)) == unicodedata.normalize("NFC", doc)
    ours, official = bytes_per_token(trained, heldout), bytes_per_token(load_tokenizer("qwen2.5"), heldout)
    print(f"bytes per token on held-out text: trained-8192 {ours:.3f}, official-151665 {official:.3f}")
    assert 2.0 < ours < official  # a 8K vocabulary compresses, but less than the 151K official one


def test_saved_directory_loads_in_transformers(trained, tmp_path):
    from transformers import AutoTokenizer

    trained.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    return '你好' + x  # <|im_end|>"
    assert hf.encode(text, add_special_tokens=False) == trained.encode(text)
    assert load_tokenizer(tmp_path).encode(text) == trained.encode(text)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert hf.apply_chat_template(messages, tokenize=False) == trained.apply_chat_template(messages)


def test_cli_train_reports_bytes_per_token(tmp_path, corpus):
    train_file, heldout_file = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus[0][:300]))
    heldout_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus[1]))
    out = subprocess.run([sys.executable, "-m", "qwen25.cli", "tokenizer", "train", str(train_file),
                          "--vocab-size", "2048", "--out", str(tmp_path / "tok"), "--heldout", str(heldout_file)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "held-out round trip: 30/30 documents exact" in out.stdout
    assert "bytes per token on held-out text: trained" in out.stdout and "official qwen2.5" in out.stdout


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="needs at least 256"):
        train_bbpe(["abc"], vocab_size=200)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected an object with a string 'text' field"):
        list(iter_texts([bad]))
