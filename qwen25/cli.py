"""`qwen25 <verb>`: one command line for every stage."""

from __future__ import annotations

import argparse
import sys


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cmd_info(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qwen25.model import ModelConfig, build_model, count_activated_parameters, count_parameters, get_preset

    if Path(args.model).exists():
        cfg = ModelConfig.from_file(args.model)
    else:
        cfg, _ = get_preset(args.model)
    model = build_model(cfg, device="meta")
    total, non_embedding = count_parameters(model)
    print(args.model)
    print(f"  total parameters:         {total:>15,} ({_human(total)})")
    print(f"  non-embedding parameters: {non_embedding:>15,} ({_human(non_embedding)})")
    if cfg.is_moe:
        activated = count_activated_parameters(model)
        print(f"  activated parameters:     {activated:>15,} ({_human(activated)}) per token")
    print(f"  layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.kv_head_dim}, "
          f"vocab {cfg.vocab_size}, tied embeddings {'yes' if cfg.tie_word_embeddings else 'no'}")
    print(f"  max positions {cfg.max_position_embeddings}, rope_theta {cfg.rope_theta:g}, "
          f"rms_norm_eps {cfg.rms_norm_eps:g}, eos {cfg.eos_token_id}, dtype {cfg.dtype}")
    if cfg.is_moe:
        sparse = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        print(f"  experts {cfg.num_experts}, {cfg.num_experts_per_tok} per token, moe intermediate "
              f"{cfg.moe_intermediate_size}, shared expert intermediate {cfg.shared_expert_intermediate_size}, "
              f"norm_topk_prob {str(cfg.norm_topk_prob).lower()}, {sparse}/{cfg.num_hidden_layers} layers sparse, "
              f"aux loss coef {cfg.router_aux_loss_coef:g}")


def _parse_ids(text: str) -> list[int] | None:
    parts = text.replace(",", " ").split()
    if parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def cmd_generate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from qwen25.generation import SamplingParams, stream
    from qwen25.model import load_model
    from qwen25.tokenizer import load_tokenizer

    model = load_model(args.model, dtype=args.dtype).eval()
    tok = None
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    elif (Path(args.model) / "tokenizer.json").is_file():
        tok = load_tokenizer(args.model)
    prompt = _parse_ids(args.prompt) if not args.chat else None
    if prompt is None:
        if tok is None:
            raise SystemExit("error: a text prompt needs a tokenizer: the model directory has no tokenizer.json; "
                             "pass --tokenizer DIR (or 'qwen2.5'), or give token ids")
        if args.chat:
            prompt, _ = tok.encode_chat([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        else:
            prompt = tok.encode_ordinary(args.prompt)
    if any(not 0 <= t < model.config.vocab_size for t in prompt):
        raise SystemExit(f"error: --prompt has ids outside the vocabulary of {model.config.vocab_size}")
    params = SamplingParams.from_generation_config(
        model.generation_config, max_new_tokens=args.max_new_tokens, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        do_sample=True if args.sample else (False if args.greedy else None),
    )
    if tok is None or args.ids:
        for token in stream(model, prompt, params):
            print(token, end=" ", flush=True)
        print()
        return
    generated: list[int] = []
    shown = ""
    for token in stream(model, prompt, params):
        generated.append(token)
        text = tok.decode(generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(shown):], end="", flush=True)
            shown = text
    print()


def cmd_tokenizer_build_qwen(args: argparse.Namespace) -> None:
    from qwen25.tokenizer.official import build_official, official_tokenizer

    if args.out:
        tok = build_official(args.tiktoken)
        tok.save(args.out)
    else:
        tok = official_tokenizer(rebuild=args.rebuild)
    print(f"{tok.path}: {tok.vocab_size} tokens ({tok.num_regular_tokens} regular + 22 control), "
          f"'Hello world, 你好世界!' -> {tok.encode('Hello world, 你好世界!')}")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from qwen25.tokenizer import load_tokenizer
    from qwen25.tokenizer.train import bytes_per_token, iter_texts, train_bbpe

    tok = train_bbpe(iter_texts(args.inputs, args.jsonl_field), args.vocab_size, args.min_frequency)
    tok.save(args.out)
    print(f"saved {args.out}: {tok.vocab_size} tokens ({tok.num_regular_tokens} regular + 22 control)")
    if args.heldout:
        heldout = list(iter_texts(args.heldout, args.jsonl_field))
        bad = [i for i, t in enumerate(heldout) if tok.decode(tok.encode_ordinary(t)) != _nfc(t)]
        print(f"held-out round trip: {len(heldout) - len(bad)}/{len(heldout)} documents exact")
        print(f"bytes per token on held-out text: trained {bytes_per_token(tok, heldout):.3f}, "
              f"official qwen2.5 {bytes_per_token(load_tokenizer('qwen2.5'), heldout):.3f}")


def _nfc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", text)


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else open(args.file, encoding="utf-8").read()
    ids = tok.encode_ordinary(text) if args.ordinary else tok.encode(text)
    print(" ".join(map(str, ids)))


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from qwen25.data.sources import fetch_sources, sources_dir

    fetch_sources(quiet=not args.verbose)
    print(f"sources cached in {sources_dir()}")


def cmd_pretrain_run(args: argparse.Namespace) -> None:
    from qwen25.pretraining.pipeline import run_pipeline
    from qwen25.pretraining.recipe import load_recipe

    run_pipeline(load_recipe(args.recipe, args.set), resume=args.resume, fresh=args.fresh)


def cmd_pretrain_export(args: argparse.Namespace) -> None:
    from qwen25.pretraining.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.tokenizer)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen25", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("info", help="parameter counts and shape of a preset or checkpoint directory")
    p.add_argument("model", help="preset name (e.g. qwen2.5-7b) or HF model directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate from a preset (random weights) or a checkpoint directory")
    p.add_argument("--model", required=True, help="preset name or HF model directory")
    p.add_argument("--prompt", required=True, help="text (needs a tokenizer) or token ids, space separated")
    p.add_argument("--tokenizer", help="tokenizer directory or 'qwen2.5' (default: the model directory's)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the chat template")
    p.add_argument("--ids", action="store_true", help="print token ids instead of text")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding (overrides generation_config)")
    mode.add_argument("--sample", action="store_true", help="sampling (overrides generation_config)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_generate)

    tok = sub.add_parser("tokenizer", help="build, train and use tokenizers").add_subparsers(dest="action", required=True)
    p = tok.add_parser("build-qwen", help="build the official Qwen2.5 tokenizer offline from qwen.tiktoken")
    p.add_argument("--out", help="write here instead of the per-machine cache")
    p.add_argument("--tiktoken", help="path to qwen.tiktoken (default: from the cached qwen-agent wheel)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached copy")
    p.set_defaults(func=cmd_tokenizer_build_qwen)
    p = tok.add_parser("train", help="train a byte-level BPE tokenizer of the Qwen2.5 design")
    p.add_argument("inputs", nargs="+", help="text files (one document each) or .jsonl files")
    p.add_argument("--vocab-size", type=int, required=True, help="total size, the 22 control tokens included")
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", nargs="*", help="held-out files: report round trip and bytes per token")
    p.add_argument("--jsonl-field", default="text")
    p.add_argument("--min-frequency", type=int, default=2)
    p.set_defaults(func=cmd_tokenizer_train)
    p = tok.add_parser("encode", help="print token ids")
    p.add_argument("--tokenizer", default="qwen2.5", help="'qwen2.5' or a tokenizer directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file")
    p.add_argument("--ordinary", action="store_true", help="never turn text into control tokens")
    p.set_defaults(func=cmd_tokenizer_encode)

    pre = sub.add_parser("pretrain", help="staged pretraining").add_subparsers(dest="action", required=True)
    p = pre.add_parser("run", help="corpus -> tokenizer -> shards -> stages -> report (torchrun-aware)")
    p.add_argument("--recipe", required=True, help="TOML recipe, e.g. recipes/tiny.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.micro_batch=8 --set stages.1.tokens=2e6")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    mode.add_argument("--fresh", action="store_true",
                      help="start over in the run's directory (its checkpoints and report are deleted; data kept)")
    p.set_defaults(func=cmd_pretrain_run)
    p = pre.add_parser("export", help="write an HF model directory from a training checkpoint")
    p.add_argument("--checkpoint", required=True, help="runs/NAME/checkpoints/step-XXXXXXXX")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="tokenizer to copy beside the model (default: the run's)")
    p.set_defaults(func=cmd_pretrain_export)

    data = sub.add_parser("data", help="offline corpus").add_subparsers(dest="action", required=True)
    p = data.add_parser("fetch", help="download the pinned source archives once (setup step)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_data_fetch)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
