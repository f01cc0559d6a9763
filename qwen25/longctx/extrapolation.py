"""Length extrapolation, shown end to end on a model small enough to train on a CPU in minutes.

A tiny Qwen2 model learns token-level passkey retrieval on sequences of L tokens: random filler tokens,
somewhere a KEY marker followed by five digits, and at the end QUERY KEY, after which the model must emit
the five digits. It is then asked the same at L, 2L, 4L and 8L tokens with plain RoPE, static YaRN
(factor = the largest multiple), dynamic YaRN (factor = length / L per request) and dual chunk attention
(chunk_size L, local_size L/8, logit scaling beyond L), and with sparse prefill (vertical-slash, small
budgets) on top of plain RoPE and of DCA; the exact-match accuracy is printed as a table.

    python -m qwen25.longctx.extrapolation                 # or: qwen25 longctx extrapolate
    python -m qwen25.longctx.extrapolation --length 128 --steps 200 --samples 20   # quicker
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from qwen25.argtypes import int_at_least, positive_float, positive_int
from qwen25.generation import SamplingParams, generate
from qwen25.longctx.configure import configure
from qwen25.longctx.sparse import SparseConfig
from qwen25.model.config import DualChunkConfig, ModelConfig, SparseHeadPattern
from qwen25.model.qwen2 import Qwen2ForCausalLM, build_model

KEY, QUERY, FIRST_FILLER, VOCAB = 10, 11, 12, 64  # tokens 0-9 are the digits
DIGITS = 5
METHODS = ("plain RoPE", "static YaRN", "dynamic YaRN", "DCA", "plain RoPE + sparse", "DCA + sparse")
# Sparse prefill sized for these short prompts (MInference's budgets assume 100K+): 32 columns and 64 diagonals
# per head in 16-token blocks (fewer when DCA's chunk minus local window is not a multiple of 16), from the last 64 queries, from the first token on; at 8L = 1024 a query sees
# about an eighth of the keys.
SPARSE_DEMO = SparseHeadPattern("vertical_and_slash", 32, 64)


def make_batch(batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of `length` tokens ending with the 5 answer digits -> (ids [B, length], digits [B, 5])."""
    ids = torch.randint(FIRST_FILLER, VOCAB, (batch, length), generator=gen)
    digits = torch.rand(batch, 10, generator=gen).argsort(-1)[:, :DIGITS]  # distinct: one way to read each
    needle = DIGITS + 1
    room = length - DIGITS - 2 - needle  # filler slots where the needle may start
    starts = torch.randint(0, room + 1, (batch,), generator=gen)
    for row in range(batch):
        s = int(starts[row])
        ids[row, s] = KEY
        ids[row, s + 1:s + needle] = digits[row]
    ids[:, -DIGITS - 2] = QUERY
    ids[:, -DIGITS - 1] = KEY
    ids[:, -DIGITS:] = digits
    return ids, digits


def model_config(length: int) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length,
                       rope_theta=10_000.0, tie_word_embeddings=True, dtype="float32")


def train(length: int, steps: int, batch: int, lr: float, seed: int, log=print) -> Qwen2ForCausalLM:
    """AdamW with warmup and cosine decay; the loss is on the five answer digits only."""
    torch.manual_seed(seed)
    model = build_model(model_config(length), seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 10)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        ids, digits = make_batch(batch, length, gen)
        logits = model(ids, logits_to_keep=DIGITS + 1).logits[:, :-1]  # predictions for the answer positions
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), digits.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == digits).all(-1).float().mean()
            log(f"step {step:4d}  loss {loss.item():.4f}  exact {acc:.2f}  {time.perf_counter() - start:.0f}s")
    return model.eval()


def use_method(model: Qwen2ForCausalLM, method: str, length: int, largest_multiple: int) -> None:
    if method == "plain RoPE":
        configure(model, rope="plain", attention="dense")
    elif method == "static YaRN":
        configure(model, rope="yarn", attention="dense",
                  yarn={"factor": float(largest_multiple), "original_max_position_embeddings": length})
    elif method == "dynamic YaRN":
        configure(model, rope="dynamic-yarn", attention="dense", yarn={"original_max_position_embeddings": length})
    else:
        cfg = model.config
        sparse = SparseConfig(((SPARSE_DEMO,) * cfg.num_attention_heads,) * cfg.num_hidden_layers, threshold=0,
                              block=math.gcd(16, length - length // 8)) if method.endswith("sparse") else None
        if method.startswith("plain RoPE"):
            configure(model, rope="plain", attention="sparse", sparse=sparse)
        else:
            configure(model, rope="plain", attention="dca", sparse=sparse, dual_chunk=DualChunkConfig(
                chunk_size=length, local_size=length // 8, original_max_position_embeddings=length))


def exact_match(model: Qwen2ForCausalLM, length: int, samples: int, seed: int, batch: int = 16) -> float:
    """Share of prompts of `length` tokens (answer included) whose 5 digits come out exactly, greedily."""
    gen = torch.Generator().manual_seed(seed)
    hits = 0
    for done in range(0, samples, batch):
        ids, digits = make_batch(min(batch, samples - done), length, gen)
        out = generate(model, ids[:, :-DIGITS].tolist(), SamplingParams(max_new_tokens=DIGITS))
        hits += int((torch.tensor(out) == digits).all(-1).sum())
    return hits / samples


def run(length: int, multiples: list[int], steps: int, batch: int, lr: float, samples: int, seed: int,
        save: Path | None = None, log=print) -> str:
    """Train, evaluate every method at every multiple of `length`, and return the markdown table."""
    model = train(length, steps, batch, lr, seed, log)
    if save is not None:
        model.save_pretrained(save)
        log(f"saved the trained model to {save}")
    header = "| method | " + " | ".join(f"{m}L = {m * length}" for m in multiples) + " |"
    lines = [header, "|---" * (len(multiples) + 1) + "|"]
    for method in METHODS:
        use_method(model, method, length, max(multiples))
        row = [exact_match(model, m * length, samples, seed + 1 + m) for m in multiples]
        lines.append(f"| {method} | " + " | ".join(f"{100 * a:.0f}" for a in row) + " |")
        log(lines[-1])
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int_at_least(64), default=128, help="training length L (tokens)")
    parser.add_argument("--multiples", type=int_at_least(1, 64), nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=positive_int, default=600)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    parser.add_argument("--samples", type=positive_int, default=100, help="prompts per method and length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="also save the trained model here (HF format)")


def main(args: argparse.Namespace) -> None:
    if args.length < 64 or args.length % 8:
        raise ValueError(f"--length must be a multiple of 8 and at least 64, got {args.length}")
    table = run(args.length, args.multiples, args.steps, args.batch, args.lr, args.samples, args.seed, args.save)
    print("\nexact-match passkey accuracy (%) by prompt length, model trained at L =", args.length)
    print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
