"""Preference pairs: the curation pipeline's format and TRL's conversational form read the same way, completions
are the assistant turn's tokens, and bad lines are reported with file and line."""

import pytest

from qwen25.posttraining.pairs import PairError, PairStats, collate_pairs, load_pairs
from qwen25.tokenizer import load_tokenizer
from tests.align_helpers import PAIRS, write_jsonl


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("qwen2.5")


def test_pairs_encode_prompt_and_completion_tokens(tok, tmp_path):
    stats = PairStats()
    pairs = load_pairs([write_jsonl(tmp_path / "p.jsonl", PAIRS)], tok, 512, stats)
    assert stats.kept == 4 and dict(stats.categories) == {"math": 2, "conciseness": 1, "instructions": 1}
    first = pairs[0]
    assert tok.decode(first.prompt.tolist()).endswith("<|im_start|>assistant\n")
    assert tok.decode(first.chosen.tolist()) == "2 + 3 = 5. The answer is 5.<|im_end|>"
    assert tok.decode(pairs[2].chosen.tolist()) == "你好<|im_end|>"
    batch = collate_pairs(pairs, [0, 1], tok.pad_id)
    assert batch.input_ids.shape[0] == 4 and batch.categories == ["math", "conciseness"]
    row = batch.input_ids[2]  # the first pair's rejected row
    targets = [int(t) for t in batch.labels[2] if t != -100]
    assert targets == pairs[0].rejected.tolist()
    assert int(row[batch.last[2]]) == tok.control_ids["<|im_end|>"]


@pytest.mark.parametrize("line, message", [
    ({"prompt": "hi", "rejected": "no"}, r"bad\.jsonl:2: missing field 'chosen'"),
    ({"chosen": "a", "rejected": "b"}, r"bad\.jsonl:2: missing field 'prompt'"),
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, r"bad\.jsonl:2: 'chosen' and 'rejected' are identical"),
    ({"prompt": "hi", "chosen": "ok", "rejected": "  "}, r"bad\.jsonl:2: 'rejected' is an empty completion"),
    ({"prompt": "hi", "chosen": 3, "rejected": "x"}, r"bad\.jsonl:2: 'chosen' must be a string"),
    ({"prompt": [{"role": "wizard", "content": "x"}], "chosen": "a", "rejected": "b"},
     r"bad\.jsonl:2: messages\[0\]: unknown role 'wizard'"),
    ({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "chosen": "a",
      "rejected": "b"}, r"bad\.jsonl:2: 'prompt' ends with an assistant message"),
    ('{"prompt": "hi", "chosen"', r"bad\.jsonl:2: not valid JSON"),
])
def test_bad_pairs_name_file_and_line(tok, tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], line])
    with pytest.raises(ValueError, match=message):
        load_pairs([path], tok, 512)


def test_overlong_pairs_are_dropped_and_counted(tok, tmp_path):
    long = {"prompt": "Repeat.", "chosen": "word " * 300, "rejected": "no"}
    stats = PairStats()
    pairs = load_pairs([write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], long])], tok, 100, stats)
    assert len(pairs) == 1 and stats.dropped == {"longer than 100 tokens": 1}


def test_missing_file_is_named(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl: preference pair file not found"):
        load_pairs([tmp_path / "nowhere.jsonl"], tok, 100)
    assert issubclass(PairError, ValueError)
