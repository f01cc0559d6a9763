"""Qwen2-MoE: exact parity with transformers' Qwen2MoeForCausalLM (logits, aux loss, gradients) in both
checkpoint directions, per-expert HF keys, both dispatch paths, and a short training run."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Qwen2MoeForCausalLM as HFQwen2Moe

import qwen25
from qwen25.model import CheckpointError, KVCache, ModelConfig, build_model, get_preset
from qwen25.model import moe as moe_module
from tests.conftest import hf_qwen2_moe

# norm_topk_prob on and off; MHA and GQA 2/4; a dense layer by mlp_only_layers and by decoder_sparse_step.
CONFIGS = {
    "mha-topk-raw": dict(num_attention_heads=4, num_key_value_heads=4, norm_topk_prob=False),
    "gqa2-topk-norm-mlp-only": dict(num_experts=6, num_experts_per_tok=3, norm_topk_prob=True, mlp_only_layers=[1]),
    "gqa4-sparse-step-2": dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=4,
                               num_experts=16, num_experts_per_tok=4, decoder_sparse_step=2),
}
TOL, AUX_TOL = 1e-5, 1e-6


def _inputs(vocab: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 41), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    mask[2, :30] = 0
    return ids, mask


def _compare(hf, ours, ids, mask):
    """Max |logit diff| on real tokens and |aux diff|, without and with padding."""
    results = []
    with torch.no_grad():
        for m in (None, mask):
            ref = hf(ids, attention_mask=m, output_router_logits=True)
            out = ours(ids, attention_mask=m, return_router_stats=True)
            got, stats = out.logits, out.router
            real = torch.ones_like(ids, dtype=torch.bool) if m is None else m.bool()
            results.append(((ref.logits[real] - got[real]).abs().max().item(),
                            (ref.aux_loss - stats.aux_loss).abs().item()))
            k = ours.config.num_experts_per_tok
            assert stats.tokens_per_expert.sum(dim=1).tolist() == [k * int(real.sum())] * len(stats.layers)
    return results


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_saves_qwen25_loads(name, tmp_path):
    hf = hf_qwen2_moe(**CONFIGS[name])
    hf.save_pretrained(tmp_path)
    ours = qwen25.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert ours.config.is_moe and ours.config == ModelConfig.from_file(tmp_path)
    for logit_diff, aux_diff in _compare(hf, ours, *_inputs(hf.config.vocab_size)):
        assert logit_diff <= TOL and aux_diff <= AUX_TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_qwen25_saves_transformers_loads(name, tmp_path):
    cfg = ModelConfig.from_hf_dict(hf_qwen2_moe(**CONFIGS[name]).config.to_dict()).replace(dtype="float32")
    ours = build_model(cfg, seed=3).eval()
    with torch.no_grad():  # larger weights than the default init, so logits and routing are not all alike
        for name_, p in ours.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name_.endswith("mlp.gate.weight") else 0.05))
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Qwen2MoeForCausalLM"]
    hf = HFQwen2Moe.from_pretrained(tmp_path, dtype=torch.float32).eval()
    for logit_diff, aux_diff in _compare(hf, ours, *_inputs(cfg.vocab_size, seed=2)):
        assert logit_diff <= TOL and aux_diff <= AUX_TOL


def test_gradients_match_transformers(tmp_path):
    """ce + coef * aux: the same gradients reach the router, the experts, the shared expert and its gate."""
    hf = hf_qwen2_moe(seed=4, router_aux_loss_coef=0.5, **CONFIGS["gqa2-topk-norm-mlp-only"]).train()
    hf.save_pretrained(tmp_path)
    ours = qwen25.from_pretrained(tmp_path, dtype=torch.float32).train()
    ids, mask = _inputs(hf.config.vocab_size, seed=3)
    labels = ids.clone()  # no target is predicted from a padding position (its output is undefined)
    labels[:, 0] = -100
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    hf(ids, attention_mask=mask, labels=labels, output_router_logits=True).loss.backward()
    out = ours(ids, attention_mask=mask)
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    (ce + out.router.weighted_aux_loss).backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        stacked = name.endswith(("mlp.experts.gate_up", "mlp.experts.down"))  # transformers: [E, out, in] `*_proj`
        ref = theirs[name + "_proj"].grad.transpose(1, 2) if stacked else theirs[name].grad
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert (p.grad - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item()), name



def test_checkpoint_holds_the_per_expert_hf_keys(tmp_path):
    hf = hf_qwen2_moe(**CONFIGS["gqa2-topk-norm-mlp-only"])
    hf.save_pretrained(tmp_path / "hf")
    qwen25.from_pretrained(tmp_path / "hf", dtype=torch.float32).save_pretrained(tmp_path / "ours")
    theirs, ours = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "ours" / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert theirs["model.layers.0.mlp.experts.5.down_proj.weight"].shape == (128, 64)
    assert "model.layers.1.mlp.gate_proj.weight" in ours and "model.layers.1.mlp.gate.weight" not in ours


def test_sharded_moe_round_trip(tmp_path):
    model = build_model(get_preset("qwen25-moe-tiny")[0], seed=1)
    model.save_pretrained(tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == 4 * (8 * 3 + 14) + 2  # per layer: 8 experts x 3, 14 others; embed, norm
    loaded = qwen25.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.fixture
def saved_moe(tmp_path):
    hf_qwen2_moe().save_pretrained(tmp_path)
    return tmp_path


def _rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_expert_is_named(saved_moe):
    _rewrite(saved_moe, lambda t: t.pop("model.layers.2.mlp.experts.7.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.2\.mlp\.experts\.7\.up_proj\.weight'"):
        qwen25.from_pretrained(saved_moe)


def test_extra_expert_is_named(saved_moe):
    _rewrite(saved_moe, lambda t: t.update({"model.layers.0.mlp.experts.8.gate_proj.weight": torch.zeros(64, 128)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor "
                                              r"'model\.layers\.0\.mlp\.experts\.8\.gate_proj\.weight'"):
        qwen25.from_pretrained(saved_moe)


def test_misshaped_expert_is_named(saved_moe):
    _rewrite(saved_moe, lambda t: t.update({"model.layers.1.mlp.experts.3.down_proj.weight": torch.zeros(128, 32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.experts\.3\.down_"
                                              r"proj\.weight' has shape \[128, 32\], the config implies \[128, 64\]"):
        qwen25.from_pretrained(saved_moe)


def _forward_backward(model, ids):
    model.zero_grad()
    out = model(ids)
    (out.logits.square().mean() + out.aux_loss).backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, out.router


def test_expert_loop_equals_grouped_mm(monkeypatch):
    """The fallback (a loop over experts) and the grouped matmul give the same values and gradients, including
    experts that receive no token."""
    cfg = get_preset("qwen25-moe-tiny")[0].replace(num_experts=32, num_experts_per_tok=3)
    model = build_model(cfg, seed=2)
    ids = torch.randint(0, cfg.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    logits, grads, stats = _forward_backward(model, ids)
    assert (stats.tokens_per_expert == 0).any()
    monkeypatch.setattr(moe_module, "grouped_mm_usable", lambda x, w: False)
    loop_logits, loop_grads, _ = _forward_backward(model, ids)
    assert (logits - loop_logits).abs().max() <= 1e-6
    assert all((grads[n] - loop_grads[n]).abs().max() <= 1e-6 for n in grads)


def test_bf16_autocast_runs_experts_in_bf16():
    model = build_model(get_preset("qwen25-moe-tiny")[0], seed=3)
    ids = torch.randint(0, 8192, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    seen = []
    model.model.layers[0].mlp.experts.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
        logits = out.logits
        loss = logits.float().square().mean() + out.aux_loss
    loss.backward()
    assert model.model.layers[0].mlp.experts.gate_up.grad.dtype == torch.float32
    assert seen == [torch.float32]  # accumulated back into the fp32 residual stream
    assert (logits.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_cached_decode_equals_full_forward():
    model = build_model(get_preset("qwen25-moe-tiny")[0], seed=4).eval()
    ids = torch.randint(0, 8192, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache.for_model(model, batch=2, capacity=4)
        steps = [model(ids[:, :12], cache=cache).logits] + [model(ids[:, t:t + 1], cache=cache).logits for t in range(12, 20)]
    assert (full - torch.cat(steps, dim=1)).abs().max() <= 1e-5


def test_greedy_generation_matches_transformers(tmp_path):
    hf = hf_qwen2_moe(seed=7, initializer_range=0.08, **CONFIGS["gqa2-topk-norm-mlp-only"])
    hf.save_pretrained(tmp_path)
    ours = qwen25.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = [5, 17, 256, 499, 3, 42, 7]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    assert qwen25.generate(ours, [prompt], qwen25.SamplingParams(max_new_tokens=16)) == [ref[0, len(prompt):].tolist()]


def test_tiny_moe_preset_trains_with_aux_loss_logged():
    cfg, _ = get_preset("qwen25-moe-tiny")
    model = build_model(cfg, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    # Sequences with structure to learn: each is a random start followed by +1 steps (mod 64).
    starts = torch.randint(0, 64, (4, 1), generator=g)
    ids = (starts + torch.arange(32)) % 64
    log = []
    for _ in range(15):
        out = model(ids)
        ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        stats = out.router
        loss = ce + stats.weighted_aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append({"ce": ce.item(), "aux": stats.aux_loss.item(), "load": stats.tokens_per_expert.tolist()})
    assert len(log) == 15 and all(0 < r["aux"] < float("inf") for r in log)
    assert log[-1]["ce"] < 0.6 * log[0]["ce"]
    assert sum(log[-1]["load"][0]) == 4 * 32 * cfg.num_experts_per_tok


def test_moe_config_round_trips_through_transformers(tmp_path):
    from transformers import Qwen2MoeConfig

    cfg = get_preset("qwen2-57b-a14b-instruct")[0].replace(mlp_only_layers=[0, 27], norm_topk_prob=True)
    cfg.save(tmp_path)
    ref = Qwen2MoeConfig.from_pretrained(tmp_path)
    assert (ref.num_experts, ref.num_experts_per_tok, ref.moe_intermediate_size, ref.shared_expert_intermediate_size,
            ref.mlp_only_layers, ref.norm_topk_prob) == (64, 8, 2560, 20480, [0, 27], True)
    assert ModelConfig.from_file(tmp_path) == cfg
    ref.save_pretrained(tmp_path / "hf")
    back = ModelConfig.from_file(tmp_path / "hf")
    assert back.replace(extra={}, max_window_layers=None, sliding_window=None) == cfg.replace(extra={})
    dense = get_preset("qwen2.5-0.5b")[0].to_hf_dict()
    assert dense["model_type"] == "qwen2" and "num_experts" not in dense


@pytest.mark.parametrize("change, message", [
    (dict(num_experts_per_tok=9), r"field 'num_experts_per_tok' \(9\) is larger than num_experts \(8\)"),
    (dict(num_experts_per_tok=0), r"field 'num_experts_per_tok' must be a positive integer"),
    (dict(moe_intermediate_size=0), r"field 'moe_intermediate_size' must be a positive integer"),
    (dict(shared_expert_intermediate_size=None), r"field 'shared_expert_intermediate_size' must be a positive"),
    (dict(decoder_sparse_step=0), r"field 'decoder_sparse_step' must be a positive integer"),
    (dict(mlp_only_layers=[4]), r"field 'mlp_only_layers' must be a list of layer indices in \[0, 4\)"),
    (dict(num_experts=-1), r"field 'num_experts' must be a non-negative integer"),
    (dict(router_aux_loss_coef=-0.1), r"field 'router_aux_loss_coef' must be a number >= 0"),
])
def test_bad_moe_fields_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        get_preset("qwen25-moe-tiny")[0].replace(**change)


def test_model_type_and_experts_must_agree():
    raw = get_preset("qwen25-moe-tiny")[0].to_hf_dict()
    with pytest.raises(ValueError, match=r"x\.json: field 'num_experts' is 8 but model_type is 'qwen2'"):
        ModelConfig.from_hf_dict({**raw, "model_type": "qwen2"}, source="x.json")
    without = {k: v for k, v in raw.items() if k != "moe_intermediate_size"}
    with pytest.raises(ValueError, match=r"required field 'moe_intermediate_size' is missing"):
        ModelConfig.from_hf_dict(without)
    with pytest.raises(ValueError, match=r"field 'qkv_bias' is False"):
        ModelConfig.from_hf_dict({**raw, "qkv_bias": False})
    assert ModelConfig.from_hf_dict({**raw, "mlp_only_layers": None}).mlp_only_layers == []


def test_published_moe_presets():
    a27, gen = get_preset("qwen1.5-moe-a2.7b-chat")
    assert (a27.num_experts, a27.num_experts_per_tok, a27.eos_token_id, gen["eos_token_id"]) == (60, 4, 151645,
                                                                                                 [151645, 151643])
    assert get_preset("qwen1.5-moe-a2.7b")[0].max_position_embeddings == 8192
    assert get_preset("qwen2-57b-a14b")[0].max_position_embeddings == 131072
    layers = get_preset("qwen25-moe-tiny")[0].replace(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    assert [layers.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]


# Qwen/Qwen2-57B-A14B config.json as released (transformers 4.40 form).
QWEN2_57B_A14B = {
    "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
    "model_type": "qwen2_moe", "moe_intermediate_size": 2560, "norm_topk_prob": False, "num_attention_heads": 28,
    "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 20480, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}


def test_released_config_reads_as_the_preset():
    cfg = ModelConfig.from_hf_dict(QWEN2_57B_A14B)
    assert cfg.replace(sliding_window=None, max_window_layers=None, extra={}) == get_preset("qwen2-57b-a14b")[0]
    assert cfg.to_hf_dict()["output_router_logits"] is False  # unknown keys are kept


def test_two_forwards_in_one_step_have_independent_aux_losses():
    """Nothing is stashed on modules: a second forward (a reference model, the rejected half of a DPO pair) does
    not overwrite the first forward's routing statistics."""
    model = build_model(get_preset("qwen25-moe-tiny")[0], seed=5)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 8192, (2, 16), generator=g), torch.randint(0, 8192, (3, 9), generator=g)
    alone_a, alone_b = model(a).router, model(b).router
    first, second = model(a), model(b)
    assert torch.equal(first.aux_loss, alone_a.aux_loss) and torch.equal(second.aux_loss, alone_b.aux_loss)
    assert not torch.equal(first.aux_loss, second.aux_loss)
    assert first.router.tokens_per_expert.sum() == 2 * 16 * model.config.num_experts_per_tok * len(first.router.layers)
    (first.aux_loss + second.aux_loss).backward()  # both graphs are alive
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
