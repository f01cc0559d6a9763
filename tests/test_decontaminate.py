"""Decontamination: the fast path decides exactly as the rule on brute-force LCS, planted copies are caught."""

import json
import random

import pytest

from qwen25.cli import main
from qwen25.eval.decontaminate import (ContaminationIndex, contaminated, lcs_length, lcs_length_reference,
                                       meets_rule, multiset_overlap, needed_lcs)
from qwen25.eval.tasks import TaskSpec, build_task


def with_lcs(k: int, len_a: int, len_b: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Two sequences whose LCS is exactly k: k distinct shared tokens in order, the rest from disjoint ranges."""
    assert k <= min(len_a, len_b)

    def spread(length: int, filler: int) -> list[int]:
        keep = sorted(rng.sample(range(length), k))
        out = [filler + rng.randrange(50) for _ in range(length)]
        for token, at in enumerate(keep):
            out[at] = token
        return out

    return spread(len_a, 1000), spread(len_b, 2000)


def test_fast_path_agrees_with_brute_force_on_10000_pairs():
    rng = random.Random(1234)
    pairs = []
    # exactly at the thresholds: LCS 13 (0.6 rule slack) and LCS = 0.6 * min exactly, and one below each
    for _ in range(400):
        n = rng.randint(13, 21)  # 13 >= 0.6 * 21: only the 13-token floor binds
        pairs.append(with_lcs(13, n, rng.randint(n, 60), rng))
        pairs.append(with_lcs(12, n, rng.randint(n, 60), rng))
        m = 5 * rng.randint(5, 10)  # 25..50: 0.6 * m is a whole number >= 15
        pairs.append(with_lcs(3 * m // 5, m, rng.randint(m, 80), rng))
        pairs.append(with_lcs(3 * m // 5 - 1, m, rng.randint(m, 80), rng))
    # random pairs over small alphabets, so common subsequences are long and near the thresholds
    while len(pairs) < 10_000:
        alphabet = rng.choice([2, 3, 4, 6, 12, 40])
        a = [rng.randrange(alphabet) for _ in range(rng.randint(0, 45))]
        b = [rng.randrange(alphabet) for _ in range(rng.randint(0, 45))]
        pairs.append((a, b) if rng.random() < 0.5 else (b, a))
    decided = {True: 0, False: 0}
    at_13 = at_06 = 0
    for a, b in pairs:
        lcs = lcs_length_reference(a, b)
        assert lcs_length(a, b) == lcs
        assert multiset_overlap(a, b) >= lcs  # the bound the fast path prunes with
        expected = lcs >= 13 and 5 * lcs >= 3 * min(len(a), len(b))
        assert contaminated(a, b) == expected == meets_rule(lcs, len(a), len(b)), (a, b, lcs)
        decided[expected] += 1
        at_13 += expected and lcs == 13
        at_06 += expected and 5 * lcs == 3 * min(len(a), len(b))
    assert decided[True] > 1500 and decided[False] > 1500 and at_13 >= 400 and at_06 >= 400
    assert needed_lcs(25, 100) == 15 and needed_lcs(26, 100) == 16 and needed_lcs(5, 9) == 13


def test_index_finds_exactly_the_pairs_the_rule_names():
    rng = random.Random(7)
    tests = [[rng.randrange(30) for _ in range(rng.randint(3, 40))] for _ in range(300)]
    index = ContaminationIndex(tests)
    for _ in range(150):
        doc = [rng.randrange(45) for _ in range(rng.randint(0, 150))]
        found = dict(index.matches(doc))
        assert set(found) == {i for i, t in enumerate(tests) if contaminated(doc, t)}
        assert all(lcs == lcs_length_reference(doc, tests[i]) for i, lcs in found.items())


def test_windows_find_what_whole_documents_find_inside_them():
    rng = random.Random(11)
    tests = [[rng.randrange(500) for _ in range(rng.randint(19, 60))] for _ in range(50)]  # >= 13 after 30% edits
    index = ContaminationIndex(tests)
    for n in range(20):
        filler = [rng.randrange(500, 900) for _ in range(rng.randint(0, 700))]
        at = rng.randrange(len(filler) + 1)
        doc = filler[:at] + _edit(tests[n], 0.25, rng) + filler[at:]
        assert n in dict(index.matches(doc))
        assert n in dict(index.window_matches(doc, 128))  # a test of <= 64 tokens lies whole inside one window


def _edit(ids: list[int], share: float, rng: random.Random) -> list[int]:
    """Edit `share` of the tokens: substitutions, deletions and insertions in equal parts."""
    out = list(ids)
    for _ in range(round(share * len(ids))):
        at = rng.randrange(len(out))
        kind = rng.randrange(3)
        if kind == 0:
            out[at] = rng.randrange(151_000)
        elif kind == 1 and len(out) > 1:
            del out[at]
        else:
            out.insert(at, rng.randrange(151_000))
    return out


def test_planted_contamination_is_caught():
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer("qwen2.5")
    rng = random.Random(3)
    items = [i.text for name in ("gsm8k", "humaneval", "mmlu", "arc_challenge")
             for i in build_task(TaskSpec(name, limit=25)).items]
    test_ids = tok.encode_batch(items)
    index = ContaminationIndex(test_ids)
    filler = tok.encode_batch([i.text for i in build_task(TaskSpec("hellaswag", limit=400)).items])
    caught = 0
    for n, ids in enumerate(test_ids):
        if len(ids) < 19:  # too short to stay >= 13 tokens after 30% edits
            continue
        planted = _edit(ids, rng.uniform(0.1, 0.3), rng)
        before = [t for doc in rng.sample(filler, 6) for t in doc]
        after = [t for doc in rng.sample(filler, 6) for t in doc]
        document = before + planted + after
        found = dict(index.matches(document))
        assert n in found, f"item {n} not caught: {len(ids)} tokens"
        assert found[n] >= needed_lcs(len(document), len(ids))
        caught += 1
    assert caught >= 90


def test_decontaminate_command(tmp_path, capsys):
    from qwen25.tokenizer import load_tokenizer

    problem = build_task(TaskSpec("humaneval", limit=3)).items[2]
    docs = [{"text": "An ordinary document about gardens and weather. " * 20},
            {"text": "Before.\n" + problem.text.replace("    ", "  ") + "\nAfter.", "source": "x"},
            {"text": "def add(a, b):\n    return a + b\n"}]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "clean.jsonl"
    main(["data", "decontaminate", "--input", str(src), "--against", "humaneval", "--out", str(out)])
    assert "kept 2/3 documents" in capsys.readouterr().out
    assert [json.loads(line) for line in out.read_text().splitlines()] == [docs[0], docs[2]]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["removed_by_task"]["humaneval"]["documents"] == 1
    example = report["removed_by_task"]["humaneval"]["examples"][0]
    assert example["line"] == 2 and example["item"] == problem.id
    tok = load_tokenizer("qwen2.5")
    assert contaminated(tok.encode(docs[1]["text"]), tok.encode(problem.text))

    src.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(SystemExit) as exit_:
        main(["data", "decontaminate", "--input", str(src), "--against", "humaneval", "--out", str(out)])
    assert exit_.value.code == 2 and "docs.jsonl:2" in capsys.readouterr().err
    src.write_text('{"text": "fine"}\n')
    with pytest.raises(SystemExit):
        main(["data", "decontaminate", "--input", str(src), "--against", "passkey", "--out", str(out)])
    assert "synthetic" in capsys.readouterr().err
