"""`make run` until pretraining lands: build a small preset, save it in HF format, reload it, check the
reloaded model computes the same logits, and generate from it."""

from __future__ import annotations

import tempfile

import torch

import qwen25
from qwen25.generation import SamplingParams, generate


def main() -> None:
    model = qwen25.load_model("qwen25-tiny", seed=0).eval()
    total, non_embedding = qwen25.count_parameters(model)
    print(f"built qwen25-tiny: {total:,} parameters ({non_embedding:,} non-embedding)")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        reloaded = qwen25.from_pretrained(tmp).eval()
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (model(ids) - reloaded(ids)).abs().max().item()
        print(f"saved and reloaded {tmp}: max logit difference {diff:.1e}")
        out = generate(reloaded, [[1, 2, 3, 4], [5, 6]], SamplingParams(max_new_tokens=12))
        for row in out:
            print("generated:", row)


if __name__ == "__main__":
    main()
