"""GGUF in and out, on small files written with gguf's own writer (random weights, several tensor types,
tied and untied). The reference is transformers' Qwen2ForCausalLM on gguf's dequantized tensors
(tests/gguf_helpers.py), which shares no code with the importer."""

import json

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as Q

import qwen25
from qwen25.inference.gguf import GGUFError, convert_gguf, export_gguf
from qwen25.tokenizer import QwenTokenizer
from tests.gguf_helpers import logits, random_hf, reference_from_gguf, small_tokenizer, tokenizer_json, write_gguf

TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer() -> QwenTokenizer:
    return small_tokenizer()


def _name(value) -> str:
    return value.name if isinstance(value, Q) else ("tied" if value else "untied")


IDS = torch.randint(0, 300, (2, 37), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("qtype,tied", [(Q.F32, False), (Q.F16, True), (Q.BF16, False), (Q.Q8_0, False),
                                        (Q.Q8_0, True), (Q.Q5_0, False), (Q.Q4_0, True)], ids=_name)
def test_import_matches_transformers_on_dequantized_weights(tmp_path, tokenizer, qtype, tied):
    source = random_hf(tied)
    path = tmp_path / "m.gguf"
    write_gguf(path, source, tokenizer, qtype)
    out = convert_gguf(path, tmp_path / "hf", dtype="float32")
    ours = qwen25.from_pretrained(out, dtype=torch.float32).eval()
    ref = reference_from_gguf(path, source.config)
    expected = logits(ref, IDS)
    assert (logits(ours, IDS) - expected).abs().max() <= TOL
    if qtype not in (Q.F32,):  # the file really is quantized: the reference is not the source model
        assert (logits(source, IDS) - expected).abs().max() > 1e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["vocab_size"] == 320 and cfg["torch_dtype"] == "float32"
    assert (cfg["num_key_value_heads"], cfg["rope_theta"], cfg["rms_norm_eps"]) == (2, 1_000_000.0, 1e-6)
    assert ("lm_head.weight" in ours.state_dict()) and (ours.lm_head.weight.data_ptr() ==
                                                        ours.model.embed_tokens.weight.data_ptr()) is tied


def test_tokenizer_and_generation_config_come_from_the_file(tmp_path, tokenizer):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_hf(False), tokenizer, Q.F16)
    out = convert_gguf(path, tmp_path / "hf")
    tok = QwenTokenizer.from_dir(out)
    assert tokenizer_json(tok) == tokenizer_json(tokenizer)
    text = "def f(x):\n    return 你好 + x  <|im_end|>"
    assert tok.encode(text) == tokenizer.encode(text)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == "{{ messages }}" and config["eos_token"] == "<|im_end|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tokenizer.control_ids["<|im_end|>"], tokenizer.endoftext_id]
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"  # the default dtype
    assert qwen25.from_pretrained(out).model.embed_tokens.weight.dtype == torch.bfloat16


def test_sharded_output_loads_the_same(tmp_path, tokenizer):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_hf(False), tokenizer, Q.Q8_0)
    one = convert_gguf(path, tmp_path / "one", dtype="float32")
    many = convert_gguf(path, tmp_path / "many", dtype="float32", max_shard_bytes=100_000)
    assert len(list(many.glob("model-*-of-*.safetensors"))) > 2 and (many / "model.safetensors.index.json").is_file()
    a, b = qwen25.from_pretrained(one).state_dict(), qwen25.from_pretrained(many).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- bad input ---------------------------------------------------------------------------------------

def test_truncated_file_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_hf(False), tokenizer, Q.F16)
    data = path.read_bytes()
    for cut in (len(data) - 1000, 2000, 20):  # in the tensor data, in the metadata, in the header
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=f"cannot read this GGUF file of {cut:,} bytes .*probably truncated") as e:
            convert_gguf(bad, tmp_path / f"out{cut}")
        assert str(bad) in str(e.value)
        assert not (tmp_path / f"out{cut}").exists()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        convert_gguf(junk, tmp_path / "junk")


def test_other_architecture_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "llama.gguf"
    write_gguf(path, random_hf(False), tokenizer, Q.F16, arch="llama")
    with pytest.raises(GGUFError, match=r"llama\.gguf: general\.architecture is 'llama'; qwen25 converts 'qwen2'"):
        convert_gguf(path, tmp_path / "hf")


def test_missing_tensor_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_hf(False), tokenizer, Q.F16, skip="blk.1.ffn_up.weight")
    with pytest.raises(GGUFError, match=r"m\.gguf: tensor 'blk\.1\.ffn_up\.weight' \(model\.layers\.1\.mlp\.up_proj"
                                        r"\.weight\) is missing"):
        convert_gguf(path, tmp_path / "hf")


def test_existing_output_directory_is_not_overwritten_silently(tmp_path, tokenizer):
    path = tmp_path / "m.gguf"
    write_gguf(path, random_hf(False), tokenizer, Q.F16)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_gguf(path, tmp_path / "hf")
    convert_gguf(path, tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists() and (tmp_path / "hf" / "config.json").is_file()


# ---- export ------------------------------------------------------------------------------------------

def _saved_model(tmp_path, tokenizer, tied: bool):
    source = random_hf(tied)
    directory = tmp_path / "src"
    source.save_pretrained(directory)
    tokenizer.save(directory)
    return source, directory


@pytest.mark.parametrize("kind,tied", [("f32", False), ("f16", True), ("bf16", False), ("q8_0", False),
                                       ("q8_0", True)])
def test_export_then_import(tmp_path, tokenizer, kind, tied):
    source, directory = _saved_model(tmp_path, tokenizer, tied)
    file = export_gguf(directory, tmp_path / "out.gguf", kind)
    reader = gguf.GGUFReader(file)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"].name == kind.upper() and types["blk.0.attn_q.bias"] == Q.F32
    assert ("output.weight" in types) is not tied
    assert reader.get_field("general.architecture").contents() == "qwen2"
    assert reader.get_field("tokenizer.ggml.tokens").contents()[-1] == "[PAD319]"

    back = qwen25.from_pretrained(convert_gguf(file, tmp_path / "back", dtype="float32"))
    got = back.state_dict()
    for key, want in source.state_dict().items():
        if "rotary" in key:
            continue
        have = got[key]
        if kind == "f32" or want.ndim == 1:  # vectors stay F32 whatever the type
            assert torch.equal(have, want), key
        elif kind in ("f16", "bf16"):
            assert torch.equal(have, want.to(torch.float16 if kind == "f16" else torch.bfloat16).float()), key
        else:  # Q8_0: blocks of 32, scale amax/127 stored in fp16: half a step plus the scale's rounding times 127
            blocks = want.reshape(-1, 32)
            step = blocks.abs().amax(1, keepdim=True) / 127
            assert ((have.reshape(-1, 32) - blocks).abs() <= step * (0.5 + 127 * 2**-11)).all(), key
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    src = json.loads((directory / "config.json").read_text())
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert cfg[name] == src[name], name
    assert tokenizer_json(QwenTokenizer.from_dir(tmp_path / "back")) == tokenizer_json(tokenizer)


def test_export_needs_a_tokenizer(tmp_path):
    random_hf(False).save_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        export_gguf(tmp_path / "src", tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
