"""How much a quantized model departs from the model it came from, on held-out text: greedy top-1 agreement
and perplexity, position by position over the same windows.

Held-out text is Python's own standard library source and reference documentation (`qwen25.data.sources`),
on every machine without a download and never an evaluation set. Logits are computed in fp32 from each
model's final hidden states and its LM head's weight (dequantized for a quantized head): a bf16 model's bf16
logits tie exactly at the top at a few percent of positions (bf16 keeps 8 bits of mantissa; logits near 20
are 0.125 apart), and which of two tied tokens `argmax` picks says nothing about quantization. Agreement
on the bf16 logits the models return is reported beside it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from qwen25.data.sources import python_docs, python_stdlib
from qwen25.tokenizer import QwenTokenizer

SKIP_DOCUMENTS = 40  # the first files of the standard library (in sorted order) are tiny package stubs


def heldout_windows(tokenizer: QwenTokenizer, windows: int = 4, length: int = 512) -> torch.Tensor:
    """[windows, length] token ids: half from standard-library source, half from the documentation."""
    rows: list[list[int]] = []
    for reader, count in ((python_stdlib, (windows + 1) // 2), (python_docs, windows // 2)):
        ids: list[int] = []
        for doc in itertools.islice(reader(), SKIP_DOCUMENTS, None):
            ids += tokenizer.encode_ordinary(doc)
            if len(ids) >= count * length:
                break
        if len(ids) < count * length:
            raise ValueError(f"{reader.__name__} has only {len(ids)} tokens after its first {SKIP_DOCUMENTS} "
                             f"documents; {count} windows of {length} need {count * length}")
        rows += [ids[i * length:(i + 1) * length] for i in range(count)]
    return torch.tensor(rows)


@dataclass
class Predictions:
    top1: torch.Tensor  # [positions] argmax of the fp32 logits
    top1_bf16: torch.Tensor  # [positions] argmax of the logits in the model's own dtype
    nll: torch.Tensor  # [positions] fp32 negative log-likelihood of the next token

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll.double().mean().item())


@torch.inference_mode()
def predictions(model: torch.nn.Module, windows: torch.Tensor) -> Predictions:
    """Next-token predictions at every position but the last of each window (one window per forward)."""
    top1, top1_own, nll = [], [], []
    head = model.lm_head
    weight = head.weight.float()
    for row in windows:
        ids = row[None]
        hidden, _ = model.model(ids)
        logits = (hidden.float() @ weight.t())[0, :-1]
        top1.append(logits.argmax(-1))
        top1_own.append(head(hidden)[0, :-1].argmax(-1))
        nll.append(-logits.log_softmax(-1).gather(-1, row[1:, None]).squeeze(-1))
    return Predictions(torch.cat(top1), torch.cat(top1_own), torch.cat(nll))


@dataclass
class Comparison:
    positions: int
    agreement: float  # fraction of positions whose fp32 top-1 matches the reference's
    agreement_bf16: float  # the same on the models' own-dtype logits
    reference_perplexity: float
    perplexity: float

    @property
    def perplexity_change(self) -> float:
        return self.perplexity / self.reference_perplexity - 1


def compare(reference: Predictions, candidate: Predictions) -> Comparison:
    return Comparison(len(reference.top1), (reference.top1 == candidate.top1).double().mean().item(),
                      (reference.top1_bf16 == candidate.top1_bf16).double().mean().item(),
                      reference.perplexity, candidate.perplexity)
