"""KV-cache decoding, greedy parity with transformers' generate, batch invariance, sampling controls."""

import pytest
import torch

import qwen25
from qwen25.generation import SamplingParams, generate, stream
from qwen25.inference.sampling import apply_penalties, apply_warpers
from qwen25.model import KVCache
from tests.conftest import hf_qwen2


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A transformers model with peaked logits and its qwen25 twin."""
    hf = hf_qwen2(seed=5, vocab_size=1000, hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                  num_hidden_layers=3, initializer_range=0.08)
    path = tmp_path_factory.mktemp("gen")
    hf.save_pretrained(path)
    return hf, qwen25.from_pretrained(path, dtype=torch.float32).eval()


def test_greedy_32_tokens_match_transformers_generate(pair):
    hf, ours = pair
    prompt = [5, 17, 256, 999, 3, 42, 7]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    ref_new = ref[0, len(prompt):].tolist()
    assert len(ref_new) == 32
    assert generate(ours, [prompt], SamplingParams(max_new_tokens=32)) == [ref_new]
    assert list(stream(ours, prompt, SamplingParams(max_new_tokens=32))) == ref_new


@pytest.fixture(scope="module")
def default_init_model(tmp_path_factory):
    """transformers' default init (std 0.02): logits of ordinary size, where fp32 rounding stays << 1e-5."""
    hf = hf_qwen2(seed=6, vocab_size=1000, hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                  num_hidden_layers=3)
    path = tmp_path_factory.mktemp("gen-default")
    hf.save_pretrained(path)
    return qwen25.from_pretrained(path, dtype=torch.float32).eval()


def test_cached_decode_equals_full_forward(default_init_model):
    ours = default_init_model
    ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = ours(ids).logits
        cache = KVCache.for_model(ours, batch=2, capacity=8)  # small on purpose: the cache must grow
        steps = [ours(ids[:, :25], cache=cache).logits]
        for t in range(25, 40):
            steps.append(ours(ids[:, t:t + 1], cache=cache).logits)
        cached = torch.cat(steps, dim=1)
    assert cache.length == 40
    assert (full - cached).abs().max() <= 1e-5


def test_chunked_prefill_with_cache_equals_full_forward(default_init_model):
    ours = default_init_model
    ids = torch.randint(0, 1000, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = ours(ids).logits
        cache = KVCache.for_model(ours, batch=1, capacity=48)
        chunks = [ours(ids[:, i:i + 16], cache=cache).logits for i in range(0, 48, 16)]
    assert (full - torch.cat(chunks, dim=1)).abs().max() <= 1e-5


def test_batch_of_different_lengths_matches_each_row_alone(pair):
    _, ours = pair
    prompts = [[1, 2, 3], [400, 500, 600, 700, 800, 900, 10], [77], [9, 8, 7, 6, 5]]
    params = SamplingParams(max_new_tokens=20)
    batched = generate(ours, prompts, params)
    alone = [generate(ours, [p], params)[0] for p in prompts]
    assert batched == alone


def test_left_padded_forward_matches_each_row_alone(pair):
    """The model's own padding path (attention_mask), which batched scoring and training use."""
    _, ours = pair
    prompts = [[1, 2, 3], [400, 500, 600, 700, 800]]
    ids = torch.tensor([[0, 0] + prompts[0], prompts[1]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = ours(ids, attention_mask=mask).logits
        for row, prompt in enumerate(prompts):
            alone = ours(torch.tensor([prompt])).logits[0]
            assert (padded[row, -len(prompt):] - alone).abs().max() <= 1e-5


def test_stop_ids_end_each_row(pair):
    _, ours = pair
    prompts = [[1, 2, 3], [400, 500, 600]]
    free = generate(ours, prompts, SamplingParams(max_new_tokens=12))
    stop_a, stop_b = free[0][4], free[1][2]
    out = generate(ours, prompts, SamplingParams(max_new_tokens=12, stop_token_ids=[stop_a, stop_b]))
    for row, free_row in zip(out, free):
        cut = min(i for i, t in enumerate(free_row) if t in (stop_a, stop_b))
        assert row == free_row[: cut + 1]


def test_sampling_is_seeded_and_topk1_is_greedy(pair):
    _, ours = pair
    prompt = [[11, 22, 33]]
    sample = SamplingParams(max_new_tokens=16, do_sample=True, temperature=1.5, seed=123)
    assert generate(ours, prompt, sample) == generate(ours, prompt, sample)
    other = SamplingParams(max_new_tokens=16, do_sample=True, temperature=1.5, seed=124)
    assert generate(ours, prompt, sample) != generate(ours, prompt, other)
    greedy = generate(ours, prompt, SamplingParams(max_new_tokens=16))
    assert generate(ours, prompt, SamplingParams(max_new_tokens=16, do_sample=True, top_k=1, seed=0)) == greedy
    assert generate(ours, prompt, SamplingParams(max_new_tokens=16, do_sample=True, top_p=1e-6, seed=0)) == greedy


def test_logits_processing_matches_transformers():
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 300, generator=g) * 3
    history = torch.randint(0, 300, (4, 25), generator=g)
    seen = torch.zeros(4, 300, dtype=torch.bool).scatter_(1, history, True)
    for p, warpers in [
        (SamplingParams(do_sample=True, temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3),
         (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8))),
        (SamplingParams(do_sample=True, temperature=1.3, min_p=0.05, repetition_penalty=1.3),
         (TemperatureLogitsWarper(1.3), MinPLogitsWarper(0.05))),
    ]:
        ref = RepetitionPenaltyLogitsProcessor(1.3)(history, scores.clone())
        for warper in warpers:
            ref = warper(history, ref)
        ours = apply_warpers(apply_penalties(scores.clone(), p, seen, None), [p] * 4)
        assert torch.equal(torch.isinf(ref), torch.isinf(ours))
        finite = ~torch.isinf(ref)
        assert torch.allclose(ref[finite], ours[finite], atol=1e-6)


def test_each_row_is_warped_with_its_own_params():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 200, generator=g) * 3
    params = [SamplingParams(do_sample=True, top_k=5), SamplingParams(), SamplingParams(do_sample=True, top_p=0.5,
                                                                                         temperature=0.5)]
    together = apply_warpers(scores, params)
    for row, p in enumerate(params):
        assert torch.equal(together[row], apply_warpers(scores[row:row + 1], [p])[0])
    assert int(torch.isfinite(together[0]).sum()) == 5
    assert torch.equal(together[1], scores[1])  # greedy rows are left alone


def test_presence_and_frequency_penalties_follow_openai():
    scores = torch.zeros(1, 6)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0, 0.0]])
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(scores, p, None, counts)
    assert out.tolist() == [[0.0, -0.75, -1.25, 0.0, 0.0, 0.0]]


def test_repetition_penalty_changes_greedy_path(pair):
    _, ours = pair
    prompt = [[3, 3, 3, 3]]
    plain = generate(ours, prompt, SamplingParams(max_new_tokens=24))
    penalised = generate(ours, prompt, SamplingParams(max_new_tokens=24, repetition_penalty=5.0))
    assert plain != penalised
    assert len(set(penalised[0])) >= len(set(plain[0]))


def test_bad_sampling_params_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(min_p=1.5)
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="stop strings"):
        SamplingParams(stop=[""])


def test_empty_prompt_is_rejected(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="at least one token"):
        generate(ours, [[]])
