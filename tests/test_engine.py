"""The inference engine: per-request sampling in shared batches, requests joining a running batch, n samples
from one prefill, stop strings, log-probs against a full forward, scoring, cancellation, the ragged KV cache."""

import pytest
import torch

import qwen25
from qwen25 import Engine, QueueFull, SamplingParams
from qwen25.inference.detokenize import IncrementalDetokenizer, StopStrings
from qwen25.model import KVCache
from tests.conftest import hf_qwen2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Peaked logits (so batch company's rounding never flips a greedy token), fp32, 1000-token vocabulary."""
    hf = hf_qwen2(seed=5, vocab_size=1000, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, initializer_range=0.08)
    path = tmp_path_factory.mktemp("engine")
    hf.save_pretrained(path)
    return qwen25.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tok():
    """The official tokenizer: the model's ids 0..999 are byte tokens and short merges, so sampled text has
    multi-byte characters split across tokens and invalid bytes, as real output can."""
    return qwen25.load_tokenizer("qwen2.5")


MIXED = [
    SamplingParams(max_new_tokens=12),
    SamplingParams(max_new_tokens=9, do_sample=True, temperature=1.3, seed=7),
    SamplingParams(max_new_tokens=14, do_sample=True, top_k=20, top_p=0.9, seed=11, top_logprobs=3),
    SamplingParams(max_new_tokens=10, do_sample=True, temperature=0.8, min_p=0.1, repetition_penalty=1.3, seed=3),
    SamplingParams(max_new_tokens=11, presence_penalty=0.8, frequency_penalty=0.5),
    SamplingParams(max_new_tokens=8, repetition_penalty=2.0),
]
PROMPTS = [[1, 2, 3], [400, 500, 600, 700, 800, 900, 10], [77], [9, 8, 7, 6, 5], [31, 41, 59, 26], [5] * 12]


def alone(model, prompt, params, tokenizer=None):
    return Engine(model, tokenizer, max_batch=params.n).generate([prompt], params)[0]


def test_rows_with_different_params_in_one_batch_each_get_what_they_get_alone(model, tok):
    engine = Engine(model, tok, max_batch=8)
    together = engine.generate(PROMPTS, MIXED)
    assert engine.stats["prefill_forwards"] == 1  # the six prompts went through one left-padded forward
    assert engine.stats["decode_steps"] == max(p.max_new_tokens for p in MIXED) - 1  # and decoded together
    for out, prompt, params in zip(together, PROMPTS, MIXED):
        single = alone(model, prompt, params, tok)
        assert out.completions[0].token_ids == single.completions[0].token_ids
        assert out.completions[0].text == single.completions[0].text
        assert out.completions[0].logprobs == pytest.approx(single.completions[0].logprobs, abs=1e-5)
        assert len(out.completions[0].token_ids) == params.max_new_tokens
        assert out.completions[0].finish_reason == "length"
    tops = together[2].completions[0].top_logprobs
    assert len(tops) == 14 and all(len(t) == 3 for t in tops)


def test_a_request_that_joins_a_running_batch_gets_what_it_gets_alone(model):
    engine = Engine(model, max_batch=4)
    first = SamplingParams(max_new_tokens=30, do_sample=True, temperature=1.2, seed=1)
    late = [SamplingParams(max_new_tokens=12), SamplingParams(max_new_tokens=12, do_sample=True, seed=5)]
    a = engine.submit([1, 2, 3, 4, 5, 6, 7, 8], first)
    got = {a: [], "b": [], "c": []}
    rows_seen = []
    for step in range(40):
        if step == 5:
            engine.submit([600, 601], late[0], request_id="b")
        if step == 9:
            engine.submit([42] * 9, late[1], request_id="c")
        for delta in engine.step():
            got[delta.request_id] += delta.token_ids
        rows_seen.append(engine.metrics().rows)
        if not engine.has_work:
            break
    assert max(rows_seen) == 3  # all three decoded together
    assert got[a] == alone(model, [1, 2, 3, 4, 5, 6, 7, 8], first).completions[0].token_ids
    assert got["b"] == alone(model, [600, 601], late[0]).completions[0].token_ids
    assert got["c"] == alone(model, [42] * 9, late[1]).completions[0].token_ids


def count_prefills(model):
    """Forward calls of the decoder with more than one token per row (prefill chunks), by shape."""
    calls = []
    handle = model.model.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    return calls, handle


def test_n_samples_share_one_prefill_and_equal_n_seeded_requests(model):
    prompt = list(range(100, 140))
    params = SamplingParams(max_new_tokens=10, do_sample=True, temperature=1.5, seed=123, n=4)
    engine = Engine(model, max_batch=4)
    calls, handle = count_prefills(model)
    try:
        out = engine.generate([prompt], params)[0]
    finally:
        handle.remove()
    assert [shape for shape in calls if shape[1] > 1] == [(1, 40)]  # one prefill of the prompt
    assert engine.stats["prefill_tokens"] == 40 and engine.stats["prefill_forwards"] == 1
    assert all(shape == (4, 1) for shape in calls[1:])  # then the 4 samples decode together
    samples = [c.token_ids for c in out.completions]
    assert len({tuple(s) for s in samples}) == 4  # they differ
    separate = [alone(model, prompt, SamplingParams(max_new_tokens=10, do_sample=True, temperature=1.5,
                                                    seed=123 + i)).completions[0].token_ids for i in range(4)]
    assert samples == separate


def test_returned_logprobs_equal_log_softmax_of_a_full_forward(model):
    prompt = [3, 14, 15, 92, 65]
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=0.9, top_k=50, seed=2, top_logprobs=4,
                            repetition_penalty=1.2)
    c = Engine(model).generate([prompt], params)[0].completions[0]
    with torch.no_grad():
        full = model(torch.tensor([prompt + c.token_ids])).logits[0].float().log_softmax(-1)
    rows = full[len(prompt) - 1:-1]  # the distribution each generated token was drawn from
    expected = rows.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-5)
    for row, top in zip(rows, c.top_logprobs):
        values, ids = row.topk(4)
        assert list(top) == ids.tolist()
        assert torch.allclose(torch.tensor(list(top.values())), values, atol=1e-5)


def test_stop_strings_cut_the_text_exactly(model, tok):
    prompt = [300, 301, 302]
    free = Engine(model, tok).generate([prompt], SamplingParams(max_new_tokens=40))[0].completions[0]
    assert free.text == tok.decode(free.token_ids, skip_special_tokens=True)
    # a stop string that straddles tokens, taken from the middle of the free text
    pieces = [tok.decode(free.token_ids[:i], skip_special_tokens=True) for i in range(len(free.token_ids) + 1)]
    cut = len(pieces[12]) - 2
    stop = free.text[cut:cut + 4]
    assert len(stop) == 4 and "\ufffd" not in stop
    first = free.text.index(stop)
    params = SamplingParams(max_new_tokens=40, stop=["never there", stop])
    engine = Engine(model, tok)
    streamed = list(engine.stream(prompt, params))
    c = streamed[-1].completion
    assert c.text == free.text[:first]
    assert "".join(d.text for d in streamed) == c.text  # the stream never showed part of the stop string
    assert c.finish_reason == "stop" and c.stop_reason == stop
    done = next(i for i in range(len(pieces)) if stop in pieces[i])
    assert c.token_ids == free.token_ids[:done]  # tokens keep the one that completed the stop string


def test_stop_token_ends_a_sample_and_stays_out_of_the_text(model, tok):
    free = Engine(model, tok).generate([[7, 8, 9]], SamplingParams(max_new_tokens=12))[0].completions[0]
    stop_id = free.token_ids[5]
    c = Engine(model, tok).generate([[7, 8, 9]], SamplingParams(max_new_tokens=12, stop_token_ids=[stop_id]))[0]
    c = c.completions[0]
    end = free.token_ids.index(stop_id)
    assert c.token_ids == free.token_ids[:end + 1]
    assert c.finish_reason == "stop" and c.stop_reason == stop_id
    assert c.text == tok.decode(free.token_ids[:end], skip_special_tokens=True)


def test_incremental_detokenizer_never_splits_a_character(tok):
    text = "héllo 你好世界 🎉 ok"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert " 🎉" in pieces  # its three tokens gave it out in one piece, once complete
    # an incomplete character at the end is flushed as decode shows it
    detok = IncrementalDetokenizer(tok)
    ids = tok.encode("a 🎉")[:-1]
    assert [detok.add([i]) for i in ids] == ["a", "", ""]
    assert detok.flush() == tok.decode(ids)[1:]


def test_stop_strings_hold_back_a_possible_start():
    stops = StopStrings(["STOP"])
    assert stops.feed("abcST") == ("abc", False)
    assert stops.feed("O") == ("", False)
    assert stops.feed("x") == ("STOx", False)
    assert stops.feed("yS") == ("y", False)
    assert stops.feed("TOPz") == ("", True)
    assert stops.text == "abcSTOxy" and stops.found == "STOP"
    final = StopStrings(["</s>"])
    assert final.feed("a</", final=True) == ("a</", False)


def test_score_reuses_the_context_and_equals_a_full_forward(model):
    context = [5, 6, 7, 8, 9, 10]
    continuations = [[11], [12, 13, 14], [15, 16], [900, 901, 902, 903, 904]]
    engine = Engine(model, prefill_chunk=4)
    calls, handle = count_prefills(model)
    try:
        scores = engine.score(context, continuations, max_tokens_per_forward=8)
    finally:
        handle.remove()
    assert calls[:2] == [(1, 4), (1, 2)]  # the context once, in chunks
    assert all(shape[0] > 1 or shape[1] > 1 for shape in calls[2:])  # then continuations on its copies
    with torch.no_grad():
        for cont, score in zip(continuations, scores):
            full = model(torch.tensor([context + cont])).logits[0].float().log_softmax(-1)
            rows = full[len(context) - 1:-1]
            expected = rows.gather(1, torch.tensor(cont)[:, None]).squeeze(1)
            assert torch.allclose(torch.tensor(score.logprobs), expected, atol=1e-5)
            assert score.greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
            assert score.total == pytest.approx(float(expected.sum()), abs=1e-4)
    greedy = Engine(model).generate([context], SamplingParams(max_new_tokens=3))[0].completions[0].token_ids
    assert engine.score(context, [greedy])[0].greedy


def full_forward_scores(model, context, continuations):
    """(log-probs, greedy) of each continuation from one plain forward over context + continuation."""
    out = []
    with torch.no_grad():
        for cont in continuations:
            full = model(torch.tensor([context + cont])).logits[0].float().log_softmax(-1)
            rows = full[len(context) - 1:-1]
            out.append((rows.gather(1, torch.tensor(cont)[:, None]).squeeze(1),
                        bool((rows.argmax(-1) == torch.tensor(cont)).all())))
    return out


def test_score_many_prefills_contexts_together_and_equals_full_forwards(model):
    requests = [([5, 6, 7, 8, 9, 10], [[11], [12, 13, 14], [15, 16]]),
                ([20, 21], [[22, 23], [24], [25, 26, 27, 28]]),
                ([30, 31, 32, 33, 34, 35, 36, 37, 38], [[39], [40]]),  # one-token answers: no continuation forward
                ([50, 51, 52], [[53, 54, 55, 56, 57, 58]])]
    engine = Engine(model, prefill_chunk=4)
    calls, handle = count_prefills(model)
    try:
        scores = engine.score_many(requests, max_tokens_per_forward=8, max_context_tokens=40)
    finally:
        handle.remove()
    assert calls[0] == (4, 9)  # the four contexts in one left-padded forward (9 = the longest)
    assert len(calls) < 1 + sum(len(c) for _, c in requests)  # continuations of several contexts share forwards
    for (context, continuations), got in zip(requests, scores):
        assert len(got) == len(continuations)
        for score, (expected, greedy) in zip(got, full_forward_scores(model, context, continuations)):
            assert torch.allclose(torch.tensor(score.logprobs), expected, atol=1e-5)
            assert score.greedy == greedy
    alone = [engine.score(c, conts) for c, conts in requests]
    assert [[round(s.total, 4) for s in r] for r in alone] == [[round(s.total, 4) for s in r] for r in scores]
    small = engine.score_many(requests, max_context_tokens=10)  # a budget of one context per forward
    assert [[round(s.total, 4) for s in r] for r in small] == [[round(s.total, 4) for s in r] for r in scores]
    with pytest.raises(ValueError, match="request 1: every continuation needs at least one token"):
        engine.score_many([([1, 2], [[3]]), ([1, 2], [[3], []])])


def test_score_many_takes_one_context_per_forward_for_request_length_dependent_models():
    from qwen25.longctx import configure

    model = qwen25.load_model("qwen25-tiny", dtype="float32").eval()
    configure(model, rope="dynamic-yarn", yarn={"original_max_position_embeddings": 4})
    requests = [([1, 2, 3, 4, 5, 6], [[7, 8], [9]]), ([10, 11], [[12, 13, 14]])]
    calls, handle = count_prefills(model)
    try:
        scores = Engine(model).score_many(requests)
    finally:
        handle.remove()
    assert (2, 6) not in calls and calls[0][0] == 1  # never two contexts in one forward
    # (the RoPE factor is fixed by the context's length at prefill, so a full forward is not the reference)
    for (context, continuations), got in zip(requests, scores):
        assert got == Engine(model).score(context, continuations)


def test_cancel_frees_the_rows_at_the_next_step(model):
    engine = Engine(model, max_batch=4)
    keep = engine.submit([1, 2, 3], SamplingParams(max_new_tokens=15))
    drop = engine.submit([4, 5, 6], SamplingParams(max_new_tokens=15, n=2, do_sample=True, seed=0))
    tokens = []
    for _ in range(3):
        tokens += [d.token_ids[0] for d in engine.step() if d.request_id == keep]
    assert engine.metrics().rows == 3
    engine.cancel(drop)
    deltas = engine.step()
    assert [(d.index, d.finish_reason) for d in deltas if d.request_id == drop] == [(0, "cancelled"), (1, "cancelled")]
    assert engine.metrics().rows == 1
    tokens += [d.token_ids[0] for d in deltas if d.request_id == keep]
    while engine.has_work:
        tokens += [d.token_ids[0] for d in engine.step() if d.request_id == keep]
    assert tokens == alone(model, [1, 2, 3], SamplingParams(max_new_tokens=15)).completions[0].token_ids
    waiting = engine.submit([1], SamplingParams())
    engine.cancel(waiting)
    assert [d.finish_reason for d in engine.step()] == ["cancelled"]
    assert not engine.has_work


def test_waiting_queue_is_bounded_and_metrics_count(model):
    engine = Engine(model, max_batch=2, max_waiting=2)
    engine.submit([1, 2], SamplingParams(max_new_tokens=3))
    engine.submit([3, 4], SamplingParams(max_new_tokens=3, n=2))
    with pytest.raises(QueueFull):
        engine.submit([5], SamplingParams())
    m = engine.metrics()
    assert (m.waiting, m.running, m.rows) == (2, 0, 0)
    engine.step()
    m = engine.metrics()
    assert (m.waiting, m.running, m.rows) == (1, 1, 1)  # the pair waits for two free rows
    while engine.has_work:
        engine.step()
    m = engine.metrics()
    assert m.generated_tokens == 9 and m.prefill_tokens == 4 and m.tokens_per_second > 0
    assert m.mean_time_to_first_token is not None and (m.waiting, m.running) == (0, 0)


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(model):
    long_prompt = list(range(10, 70))
    engine = Engine(model, max_batch=4, prefill_chunk=16)
    first = engine.submit([1, 2, 3], SamplingParams(max_new_tokens=12))
    engine.step()
    second = engine.submit(long_prompt, SamplingParams(max_new_tokens=5))
    steps = []
    while engine.has_work:
        steps.append({d.request_id for d in engine.step()})
    assert steps[:4] == [{first}] * 3 + [{first, second}]  # 60 tokens in 4 chunks, decoding meanwhile
    out = Engine(model, prefill_chunk=None).generate([long_prompt], SamplingParams(max_new_tokens=5))[0]
    assert engine.stats["prefill_forwards"] == 1 + 4
    chunked = Engine(model, prefill_chunk=7).generate([long_prompt], SamplingParams(max_new_tokens=5))[0]
    assert chunked.completions[0].token_ids == out.completions[0].token_ids


def test_logits_processors_mask_before_sampling(model):
    free = alone(model, [1, 2, 3], SamplingParams(max_new_tokens=8)).completions[0].token_ids
    banned = set(free)

    def ban(output, scores):
        scores[list(banned)] = float("-inf")
        return scores

    out = alone(model, [1, 2, 3], SamplingParams(max_new_tokens=8, logits_processors=[ban])).completions[0]
    assert not banned & set(out.token_ids)
    seen = []

    def force(output, scores):
        seen.append(list(output))
        forced = torch.full_like(scores, float("-inf"))
        forced[len(output) + 500] = 0.0
        return forced

    out = alone(model, [1, 2, 3], SamplingParams(max_new_tokens=4, do_sample=True, seed=0, logits_processors=[force]))
    assert out.completions[0].token_ids == [500, 501, 502, 503]
    assert seen == [[], [500], [500, 501], [500, 501, 502]]


def test_text_prompts_zero_tokens_and_errors(model, tok):
    engine = Engine(model, tok)
    out = engine.generate(["in the"], SamplingParams(max_new_tokens=0))[0]
    assert out.prompt_token_ids == [258, 279] and out.completions[0].token_ids == []
    assert out.completions[0].finish_reason == "length"
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Engine(model).submit("Hi")
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        Engine(model).submit([1], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit([1000])
    with pytest.raises(ValueError, match="exceed the engine's max_batch"):
        Engine(model, max_batch=2).submit([1], SamplingParams(n=3))
    engine.submit([1], request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.submit([2], request_id="x")
    with pytest.raises(RuntimeError, match="drive the engine alone"):
        engine.generate([[1]])


def test_stream_yields_deltas_and_closing_it_cancels(model, tok):
    params = SamplingParams(max_new_tokens=10, do_sample=True, seed=4)
    whole = alone(model, [8, 9], params, tok).completions[0]
    engine = Engine(model, tok)
    deltas = list(engine.stream([8, 9], params))
    assert [t for d in deltas for t in d.token_ids] == whole.token_ids
    assert "".join(d.text for d in deltas) == whole.text
    it = engine.stream([8, 9], params)
    next(it)
    it.close()
    assert not engine.has_work and engine.metrics().rows == 0


def test_ragged_cache_gives_each_row_what_it_gets_alone(model):
    """Rows of lengths 3, 7 and 5 in one cache, fed one and then three tokens per step."""
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (3 + 4, 7 + 4, 5 + 4)]
    prompts = [s[:-4] for s in seqs]
    cache = KVCache.for_model(model, 0, 4)
    with torch.no_grad():
        for p in prompts:
            one = KVCache.for_model(model, 1, len(p))
            model(torch.tensor([p]), cache=one)
            cache.append_rows(one)
        assert cache.ragged and cache.lengths == [3, 7, 5]
        step1 = model(torch.tensor([[s[len(p)]] for s, p in zip(seqs, prompts)]), cache=cache).logits
        step3 = model(torch.tensor([s[len(p) + 1:] for s, p in zip(seqs, prompts)]), cache=cache).logits
        assert cache.lengths == [7, 11, 9]
        for row, s in enumerate(seqs):
            full = model(torch.tensor([s])).logits[0]
            assert (step1[row, 0] - full[len(prompts[row])]).abs().max() <= 1e-5
            assert (step3[row] - full[len(prompts[row]) + 1:]).abs().max() <= 1e-5
        moved = cache.remove_row(0)
        assert moved == 2 and cache.lengths == [9, 11]
        with pytest.raises(ValueError, match="attention_mask"):
            model(torch.tensor([[1], [2]]), cache=cache, attention_mask=torch.ones(2, 12))


def test_request_length_dependent_models_batch_only_rows_of_one_length():
    from qwen25.longctx import configure

    model = qwen25.load_model("qwen25-tiny", dtype="float32").eval()
    configure(model, rope="dynamic-yarn", yarn={"original_max_position_embeddings": 4})
    engine = Engine(model, max_batch=4)
    params = SamplingParams(max_new_tokens=6)
    a, b = engine.submit([1, 2, 3, 4, 5], params), engine.submit([6, 7, 8, 9, 10], params)
    c = engine.submit([1, 2, 3, 4, 5, 6, 7], params)
    first = engine.step()
    assert {d.request_id for d in first} == {a, b} and engine.metrics().rows == 2  # c waits: another length
    got = {a: [], b: [], c: []}
    for delta in first:
        got[delta.request_id] += delta.token_ids
    while engine.has_work:
        for delta in engine.step():
            got[delta.request_id] += delta.token_ids
    for request_id, prompt in ((a, [1, 2, 3, 4, 5]), (b, [6, 7, 8, 9, 10]), (c, [1, 2, 3, 4, 5, 6, 7])):
        assert got[request_id] == alone(model, prompt, params).completions[0].token_ids


def test_generate_command_streams_the_engines_text(tok):
    import io

    from qwen25.inference.commands import generate_to

    out = io.StringIO()
    generate_to(out, model="qwen25-tiny", prompt_ids="1 2 3", tokenizer="qwen2.5", max_new_tokens=12, do_sample=False)
    model = qwen25.load_model("qwen25-tiny").eval()
    expected = Engine(model, tok).generate([[1, 2, 3]], SamplingParams(max_new_tokens=12))[0].completions[0]
    assert out.getvalue() == expected.text + "\n"
    ids = io.StringIO()
    generate_to(ids, model="qwen25-tiny", prompt_ids="1 2 3", print_ids=True, max_new_tokens=12, do_sample=False)
    assert ids.getvalue().split() == [str(t) for t in expected.token_ids]
