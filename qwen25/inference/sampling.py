"""Per-request sampling: the parameters, the logits pipeline, and each sequence's own random stream.

The pipeline, in order: the request's logits processors (e.g. a grammar's mask), then the penalties
(repetition as transformers applies it, over prompt and output; presence and frequency as OpenAI and vLLM
apply them, over the output), then for sampled rows transformers' warpers in transformers' order
(temperature, top-k, top-p, min-p), so the same settings mean the same thing here and there. Each row is
processed with its own parameters, so rows with different settings share a batch.

A sampled sequence draws exactly one uniform number per token from its own `torch.Generator` (seeded with the
request's seed + the sample's index) and picks the token by inverse CDF: its tokens depend on its seed and
its logits only, never on which other requests share the batch or in which order they came.

Log-probabilities are the model's own (log-softmax of the raw logits, before processors, penalties and
temperature), as vLLM returns them by default: the quantity a full forward gives (`model(ids).logits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch

# (output token ids so far, fp32 scores [vocab]) -> scores; e.g. a grammar setting forbidden tokens to -inf
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass
class SamplingParams:
    """How one request is decoded. Greedy unless `do_sample`.

    n: samples of the prompt; they share one prefill. Sample i draws from seed + i.
    seed: None draws one from torch's global generator when the request is submitted (so `torch.manual_seed`
      makes a script reproducible).
    stop_token_ids: a generated id among these ends the sample (kept in its tokens, not in its text).
    stop: strings that end the sample; the text is cut right before the first one (the tokens keep the token
      that completed it).
    top_logprobs: also return, per generated token, this many most likely tokens with their log-probs.
    logits_processors: called per step on each sample's scores before anything else (see `LogitsProcessor`).
    skip_special_tokens: leave control tokens such as <|im_end|> out of the text.
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    top_logprobs: int = 0
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} (greedy: do_sample=False)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if any(not isinstance(t, int) or isinstance(t, bool) for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be ints, got {self.stop_token_ids!r}")

    @classmethod
    def from_generation_config(cls, gen: dict, **overrides) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json (eos ids become stop ids), then overrides."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in gen.items() if k in names and v is not None}
        eos = gen.get("eos_token_id")
        if eos is not None:
            values["stop_token_ids"] = list(eos) if isinstance(eos, list) else [eos]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


class Sampler:
    """One sequence's sampling state: its parameters, its random stream, and what the penalties count."""

    def __init__(self, params: SamplingParams, seed: int, prompt: Sequence[int], vocab_size: int,
                 device: torch.device) -> None:
        self.params = params
        self.generator = torch.Generator(device="cpu").manual_seed(seed) if params.do_sample else None
        self.output: list[int] = []
        self.seen = self.counts = None
        if params.repetition_penalty != 1.0:  # transformers: over the prompt and the output
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(list(prompt), device=device).clamp(max=vocab_size - 1)] = True
        if params.presence_penalty or params.frequency_penalty:  # OpenAI / vLLM: over the output
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)

    def observe(self, token: int) -> None:
        self.output.append(token)
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1

    def draw(self) -> float:
        """This sequence's next uniform number in [0, 1)."""
        return float(torch.rand((), generator=self.generator))


def apply_penalties(scores: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
                    counts: torch.Tensor | None) -> torch.Tensor:
    """scores [..., V] fp32; seen: tokens in prompt or output (bool); counts: occurrences in the output."""
    if seen is not None and params.repetition_penalty != 1.0:
        r = params.repetition_penalty
        scores = torch.where(seen, torch.where(scores < 0, scores * r, scores / r), scores)
    if counts is not None:
        scores = scores - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).float()
    return scores


def apply_warpers(scores: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p on scores [B, V] fp32, row b with params[b] (transformers' warpers,
    same order and tie rules; a row that does not sample is returned unchanged)."""
    B, V = scores.shape
    device = scores.device
    sampled = [b for b, p in enumerate(params) if p.do_sample]
    if not sampled:
        return scores
    scores = scores.clone()
    temps = torch.tensor([params[b].temperature for b in sampled], device=device)[:, None]
    rows = torch.tensor(sampled, device=device)
    if bool((temps != 1.0).any()):
        scores[rows] = scores[rows] / temps
    topk = [(b, params[b].top_k) for b in sampled if 0 < params[b].top_k < V]
    if topk:
        idx = torch.tensor([b for b, _ in topk], device=device)
        ks = torch.tensor([k for _, k in topk], device=device)
        sub = scores[idx]
        kth = torch.topk(sub, int(ks.max()), dim=-1).values.gather(1, (ks - 1)[:, None])
        scores[idx] = sub.masked_fill(sub < kth, float("-inf"))
    topp = [(b, params[b].top_p) for b in sampled if params[b].top_p < 1.0]
    if topp:
        idx = torch.tensor([b for b, _ in topp], device=device)
        ps = torch.tensor([p for _, p in topp], device=device, dtype=torch.float32)
        sub = scores[idx]
        sorted_scores, order = torch.sort(sub, dim=-1)  # ascending
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= (1 - ps)[:, None]
        drop_sorted[:, -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores[idx] = sub.masked_fill(drop, float("-inf"))
    minp = [(b, params[b].min_p) for b in sampled if params[b].min_p > 0.0]
    if minp:
        idx = torch.tensor([b for b, _ in minp], device=device)
        mins = torch.tensor([m for _, m in minp], device=device, dtype=torch.float32)
        sub = scores[idx]
        probs = sub.softmax(-1)
        drop = probs < mins[:, None] * probs.amax(-1, keepdim=True)  # never the most likely token
        scores[idx] = sub.masked_fill(drop, float("-inf"))
    return scores


def choose(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """The next token of each row: logits [B, V] (any dtype), row b decoded by samplers[b]. Returns [B] ids."""
    scores = logits.float()
    if any(s.params.logits_processors or s.params.penalised for s in samplers):
        scores = scores.clone()
        for b, s in enumerate(samplers):
            row = scores[b]
            for processor in s.params.logits_processors:
                row = processor(list(s.output), row)
            scores[b] = apply_penalties(row, s.params, s.seen, s.counts)
    params = [s.params for s in samplers]
    scores = apply_warpers(scores, params)
    tokens = scores.argmax(-1)
    sampled = [b for b, p in enumerate(params) if p.do_sample]
    if sampled:
        rows = torch.tensor(sampled, device=scores.device)
        probs = scores[rows].softmax(-1)
        cdf = probs.cumsum(-1)
        u = torch.tensor([samplers[b].draw() for b in sampled], device=scores.device, dtype=cdf.dtype)
        # the first token whose cumulative probability exceeds u * total: never a token of probability 0
        picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        tokens[rows] = picked.clamp(max=scores.shape[-1] - 1)
    return tokens


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: Sequence[int]
                   ) -> tuple[list[float], list[dict[int, float] | None]]:
    """log p(token) of each row under the raw logits [B, V], and the top[b] most likely tokens of row b with
    their log-probs (None where top[b] is 0)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    chosen = (logits.gather(1, tokens[:, None]).squeeze(1) - lse).tolist()
    tops: list[dict[int, float] | None] = []
    for b, k in enumerate(top):
        if not k:
            tops.append(None)
            continue
        values, ids = torch.topk(logits[b], min(k, logits.shape[-1]))
        tops.append(dict(zip(ids.tolist(), (values - lse[b]).tolist())))
    return chosen, tops
