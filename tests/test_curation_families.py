"""The post-training data families beyond plain rejection sampling: templated system prompts, long responses
by back-translation, cross-lingual queries and the critic filter. Logic with scripted generators (every
decision checked exactly), plumbing on a tiny random model (real engine, deterministic, scores equal to a
direct forward)."""

from __future__ import annotations

import json

import pytest
import torch

from qwen25.data.backtranslation import (BacktranslationConfig, backtranslate, document_problems,
                                         run_backtranslation)
from qwen25.data.critic import CriticConfig, critic_filter, judge, parse_rating
from qwen25.data.crosslingual import agreement, crosslingual_queries
from qwen25.data.curation import verify_response
from qwen25.data.queries import Query, build_queries, write_queries
from qwen25.data.system_prompts import catalog, with_system_prompts
from tests.test_curation import tiny_model_dir  # noqa: F401  (fixture)

DOC = ("Composting turns kitchen scraps and garden waste into a dark, crumbly soil conditioner. " * 1
       + "Start with a bin or a corner of the garden that drains well. Layer green material such as vegetable "
       "peelings and grass clippings with brown material such as dry leaves, cardboard and straw. Keep the pile "
       "about as moist as a wrung-out sponge and turn it every week or two so that air reaches the middle. "
       "Avoid meat, dairy and oily food, which attract pests and smell. In warm weather a well-managed pile is "
       "ready in two to three months; in winter it slows down. The finished compost smells of earth, and you "
       "can dig it into beds, spread it around shrubs or mix it into potting soil for containers.")


# ---- system prompts --------------------------------------------------------------------------------------

def test_catalog_has_hundreds_of_distinct_system_prompts():
    prompts = catalog()
    assert len({text for text, _ in prompts}) == len(prompts) >= 300
    assert sum(rule is not None for _, rule in prompts) >= 200


def test_system_prompt_rules_join_the_verifier():
    queries = build_queries({"math": 40}, seed=0)
    with_sys = with_system_prompts(queries, share=1.0, seed=3)
    assert with_sys == with_system_prompts(queries, share=1.0, seed=3)  # a function of the seed
    assert all(q.messages[0]["role"] == "system" and "system prompt" in q.source for q in with_sys)
    assert len({q.messages[0]["content"] for q in with_sys}) > 20
    ruled = [(q, orig) for q, orig in zip(with_sys, queries) if q.verifier["kind"] == "all_of"]
    assert ruled, "some prompts carry a rule"
    for q, orig in ruled:
        rule = q.verifier["verifiers"][1]["constraints"][0]
        assert q.verifier["verifiers"][0] == orig.verifier
        assert not verify_response(q, orig.reference).passed  # the bare reference breaks the system prompt's rule
        phrase = rule["params"].get("phrase") or rule["params"].get("marker")
        following = (f"{phrase} {orig.reference}" if rule["rule"] == "starts_with"
                     else f"{orig.reference}\n{phrase}" + (" thanks" if rule["rule"] == "postscript" else ""))
        assert verify_response(q, following).passed, (rule, following)
    none = with_system_prompts(queries, share=0.0)
    assert none == queries
    half = with_system_prompts(build_queries({"math": 200}, seed=0), share=0.5)
    assert 70 < sum(q.messages[0]["role"] == "system" for q in half) < 130
    with pytest.raises(ValueError, match=r"share .* \[0, 1\]"):
        with_system_prompts(queries, share=1.5)


def test_all_of_names_an_unknown_nested_kind():
    q = Query("q1", "x", [{"role": "user", "content": "hi"}],
              {"kind": "all_of", "verifiers": [{"kind": "math", "reference": "1"}, {"kind": "vibes"}]}, "test")
    with pytest.raises(ValueError, match=r"query q1: unknown verifier kind 'vibes'"):
        verify_response(q, "1")


# ---- back-translation ------------------------------------------------------------------------------------

class ScriptedModel:
    """Writes fixed candidate requests; scores a document higher after a request that mentions compost."""
    name = "scripted"

    def __init__(self, asks):
        self.asks = asks
        self.calls = []

    def __call__(self, prompts, k, seeds):
        self.calls.append((len(prompts), k, list(seeds)))
        return [self.asks[:k] for _ in prompts]

    def mean_logprob(self, prompts, responses):
        return [-1.0 if "compost" in p[-1]["content"].lower() else -2.0 if "garden" in p[-1]["content"] else -3.0
                for p in prompts]


def test_document_checks():
    cfg = BacktranslationConfig(min_chars=100, max_chars=2000)
    assert document_problems(DOC, cfg) == []
    assert document_problems("short", cfg) == ["length 5 outside [100, 2000]"]
    assert "repeated lines" in document_problems("same line here\n" * 20, cfg)
    assert "repeated word 3-grams" in document_problems("the cat sat on the mat " * 30, cfg)
    assert "too few letters" in document_problems("1234 5678 90-12 " * 20, cfg)


def test_backtranslation_keeps_the_best_request_when_it_explains_the_document():
    cfg = BacktranslationConfig(min_chars=100, max_chars=2000, min_gain=0.5)
    docs = [{"text": DOC, "source": "a"}, {"text": "too short", "source": "b"}]
    model = ScriptedModel(["How do I start a garden?", "How do I make compost at home?", "",
                           DOC[:40]])
    records, judged = backtranslate(docs, model, k=4, seed=1, cfg=cfg)
    assert len(model.calls) == 1  # the short document is never sent
    assert [r["messages"][0]["content"] for r in records] == ["How do I make compost at home?"]
    assert records[0]["messages"][1]["content"] == DOC and records[0]["provenance"]["gain"] == pytest.approx(2.0)
    cands = {c["instruction"]: c for c in judged[0]["candidates"]}
    assert cands[""]["problems"] == ["empty instruction"] and cands[""]["gain"] is None
    assert cands[DOC[:40]]["problems"] == ["instruction copied from the document"]
    assert cands["How do I start a garden?"]["gain"] == pytest.approx(1.0)
    assert judged[1]["problems"] and not judged[1]["kept"]
    strict = BacktranslationConfig(min_chars=100, max_chars=2000, min_gain=2.5)
    records, judged = backtranslate(docs, ScriptedModel(["How do I make compost?"]), k=1, cfg=strict)
    assert records == [] and judged[0]["problems"] == ["best gain 2.000 < 2.5"]


def test_backtranslation_on_a_tiny_model_is_deterministic_and_scores_like_a_forward(tmp_path, tiny_model_dir):  # noqa: F811
    from qwen25.data.generators import ModelGenerator

    gen = ModelGenerator.load(tiny_model_dir, max_new_tokens=6)
    prompt = [{"role": "user", "content": "Say hi."}]
    got = gen.mean_logprob([prompt], ["hello there"])[0]
    context = gen.tokenizer.encode_chat(prompt, add_generation_prompt=True)[0]
    cont = gen.tokenizer.encode("hello there") + [gen.tokenizer.eos_id]
    with torch.no_grad():
        logits = gen.model(torch.tensor([context + cont])).logits[0].float()
    logp = torch.log_softmax(logits, -1)[len(context) - 1:-1].gather(1, torch.tensor(cont)[:, None])
    assert got == pytest.approx(logp.mean().item(), abs=1e-4)

    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": DOC, "source": "doc"}) + "\n"
                                         + json.dumps({"text": "x" * 10}) + "\n")
    cfg = BacktranslationConfig(min_chars=100, max_chars=2000, min_gain=-100.0)
    print(run_backtranslation(tmp_path / "docs.jsonl", gen, tmp_path / "a", k=2, seed=4, cfg=cfg))
    run_backtranslation(tmp_path / "docs.jsonl", ModelGenerator.load(tiny_model_dir, max_new_tokens=6),
                        tmp_path / "b", k=2, seed=4, cfg=cfg)
    for name in ("judged.jsonl", "sft.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    judged = [json.loads(line) for line in (tmp_path / "a" / "judged.jsonl").read_text().splitlines()]
    assert len(judged) == 2 and len(judged[0]["candidates"]) == 2 and judged[1]["problems"]
    assert judged[1]["source"].endswith("docs.jsonl:2")


# ---- cross-lingual ---------------------------------------------------------------------------------------

class Translator:
    """A dictionary translator; `garble` changes numbers on the way back for the named queries."""
    name = "translator"

    def __init__(self, table, garble=()):
        self.table, self.garble = table, garble

    def __call__(self, prompts, k, seeds):
        out = []
        for p in prompts:
            text = p[-1]["content"].split("\n\n", 1)[1]
            result = self.table.get(text, text)
            if any(g in result for g in self.garble):
                result = result.replace("24", "42")
            out.append([result] * k)
        return out


def test_crosslingual_keeps_translations_whose_back_translation_agrees():
    en1, zh1 = "Tom has 24 apples and eats 4. How many are left?", "汤姆有24个苹果，吃了4个。还剩多少个？"
    en2, zh2 = "Ann has 24 pens and loses 4. How many are left?", "安有24支笔，丢了4支。还剩多少？"
    en3 = "Bob has 30 cards and gives away 6. How many are left?"
    queries = [Query(f"m{i}", "math", [{"role": "user", "content": en}], {"kind": "math", "reference": ans}, "t")
               for i, (en, ans) in enumerate([(en1, "20"), (en2, "20"), (en3, "24")])]
    table = {en1: zh1, zh1: en1, en2: zh2, zh2: "Ann has 42 pens and loses 4. How many remain?",
             en3: "Bob has 30 cards and gives away 6.", }  # en3 "translated" into English: wrong language
    kept, judged = crosslingual_queries(queries, Translator(table), ["zh"], seed=0)
    assert [q.id for q in kept] == ["m0-zh"]
    assert kept[0].messages == [{"role": "user", "content": zh1}] and kept[0].family == "math_zh"
    assert judged[1]["problems"] == ["numbers changed"]
    assert any("detected as en" in p for p in judged[2]["problems"])
    assert agreement(en1, en1) == 1.0 and agreement(en1, "") == 0.0
    assert verify_response(kept[0], "汤姆还剩下20个苹果。答案是 \\boxed{20}").passed
    assert not verify_response(kept[0], "Tom has 20 apples left, so the answer is \\boxed{20}.").passed
    assert not verify_response(kept[0], "汤姆还剩下21个苹果。答案是 \\boxed{21}").passed
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        crosslingual_queries(queries, Translator(table), ["xx"])


# ---- critic ----------------------------------------------------------------------------------------------

class Critic:
    """Rates by the response's first word; fluency by length."""
    name = "critic"

    def __call__(self, prompts, k, seeds):
        out = []
        for p in prompts:
            response = p[-1]["content"].split("[Response]\n", 1)[1]
            rating = {"Great": 10, "Good": 9, "Meh": 5}.get(response.split()[0], 1)
            out.append([f"Fine.\nRating: {rating}"] * (k - 1) + [f"Rating: **{min(rating, 9)}**"])
        return out

    def mean_logprob(self, prompts, responses):
        return [-0.5 if len(r) < 200 else -3.0 for r in responses]


def _record(response, passed=None, request="Explain the water cycle."):
    prov = {} if passed is None else {"verdict": {"passed": passed}}
    return {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": response}],
            "provenance": prov}


def test_critic_filter_keeps_only_what_every_scorer_rates_top(tmp_path):
    assert parse_rating("so... Rating: 7\nRating: 9") == 9 and parse_rating("Rating: 11") is None
    assert parse_rating("评分：8") is None and parse_rating("Rating：8") == 8
    records = [_record("Great answer about evaporation and rain."),
               _record("Meh answer about clouds."),
               _record("Great answer but " + "x" * 300),
               _record("Great answer that failed its verifier.", passed=False),
               _record("Great answer answer answer answer answer answer answer answer answer answer"),
               _record("Great 回答：水在海洋中蒸发，形成云，然后降雨。"),
               _record("Good and verified answer about the cycle of water.", passed=True)]
    judged = judge(records, Critic(), cfg=CriticConfig(samples=2))
    assert [j["kept"] for j in judged] == [True, False, False, False, False, False, True]
    not_top = [sorted(n for n, v in j["scores"].items() if not v["top"]) for j in judged]
    assert not_top == [[], ["critic"], ["fluency"], ["verifier"], ["repetition"], ["language"], []]
    assert judged[0]["scores"]["critic"]["ratings"] == [10, 9]
    strict = judge(records, Critic(), cfg=CriticConfig(samples=2, top_rating=10))
    assert [j["kept"] for j in strict] == [False] * 7  # the second judgement of the best is only 9
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = critic_filter(path, Critic(), tmp_path / "kept.jsonl")
    assert "7 records, 2 kept" in summary and "critic: 1" in summary and "language: 1" in summary
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept[1]["provenance"]["verdict"] == {"passed": True} and kept[1]["provenance"]["critic"]["model"] == "critic"
    assert len((tmp_path / "kept.jsonl.judged.jsonl").read_text().splitlines()) == 7
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"sft.jsonl:1: expected an SFT record"):
        critic_filter(path, Critic(), tmp_path / "kept.jsonl")


def test_crosslingual_and_critic_on_a_tiny_model(tmp_path, tiny_model_dir):  # noqa: F811
    from qwen25.data.generators import ModelGenerator

    gen = ModelGenerator.load(tiny_model_dir, max_new_tokens=5)
    queries = build_queries({"math": 2}, seed=0)
    kept, judged = crosslingual_queries(queries, gen, ["zh", "fr"], seed=2)
    again = crosslingual_queries(queries, ModelGenerator.load(tiny_model_dir, max_new_tokens=5), ["zh", "fr"], 2)
    assert (kept, judged) == again
    assert [(j["query_id"], j["language"]) for j in judged] == [(q.id, lang) for q in queries for lang in ("zh", "fr")]
    assert all(j["problems"] for j in judged)  # random weights translate nothing
    write_queries(queries, tmp_path / "q.jsonl")
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(_record(q.reference, True, q.messages[0]["content"])) + "\n" for q in queries))
    summary = critic_filter(path, gen, tmp_path / "kept.jsonl", cfg=CriticConfig(samples=2))
    assert "2 records, 0 kept" in summary and "critic: 2" in summary  # no rating in random text
    judged = [json.loads(line) for line in (tmp_path / "kept.jsonl.judged.jsonl").read_text().splitlines()]
    assert all(len(j["critic_replies"]) == 2 and j["scores"]["fluency"]["mean_logprob"] < 0 for j in judged)
