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
    from qwen25.generation import SamplingParams, stream
    from qwen25.model import load_model

    model = load_model(args.model, dtype=args.dtype).eval()
    prompt = _parse_ids(args.prompt)
    if prompt is None:
        raise SystemExit("error: --prompt must be token ids (e.g. '9707 1879 11') until a tokenizer is given")
    if any(not 0 <= t < model.config.vocab_size for t in prompt):
        raise SystemExit(f"error: --prompt has ids outside the vocabulary of {model.config.vocab_size}")
    params = SamplingParams.from_generation_config(
        model.generation_config, max_new_tokens=args.max_new_tokens, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        do_sample=True if args.sample else (False if args.greedy else None),
    )
    for token in stream(model, prompt, params):
        print(token, end=" ", flush=True)
    print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen25", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("info", help="parameter counts and shape of a preset or checkpoint directory")
    p.add_argument("model", help="preset name (e.g. qwen2.5-7b) or HF model directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate from a preset (random weights) or a checkpoint directory")
    p.add_argument("--model", required=True, help="preset name or HF model directory")
    p.add_argument("--prompt", required=True, help="token ids, space or comma separated")
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
