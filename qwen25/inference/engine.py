"""The inference engine: requests with their own sampling, run by continuous batching.

Requests wait in a queue. Each step, the engine (1) takes in new requests and cancellations, (2) prefills
waiting prompts, at most `prefill_chunk` tokens per step so running sequences keep decoding while a long
prompt is read, and (3) runs one decode step for every running sequence. A prompt is prefilled once into a
cache of its own; its `n` samples then join the batch as `n` copies of that row (`KVCache.append_rows`), so a
GRPO group of 8 costs one prefill. The batch cache gives every row its own length, so sequences join and
leave between steps and each gets the tokens it would get alone. A finished or cancelled sequence leaves at
once; the last row moves into its slot.

Models whose attention or RoPE is chosen from the request's length (dual chunk attention, sparse prefill,
dynamic YaRN) keep the batch's rows at one length: requests whose prompts have the same length start
together (a request's samples always do), and new ones wait until the batch is empty.

Every sample carries its tokens, their log-probs (the model's own, see `sampling`), optionally the top
log-probs, its text (incremental UTF-8 decoding, stop strings cut exactly) and why it finished: "stop" (a
stop token or string), "length" (max_new_tokens) or "cancelled".

`step()` returns what each sample gained (`Delta`), which a server streams; `generate` and `stream` drive the
engine for one caller; `score` gives log p(continuation | context) for several continuations that share one
prefilled context. `submit` and `cancel` may be called from other threads; `step`, `generate`, `stream` and
`score` from one.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from qwen25.inference.detokenize import Decoder, IncrementalDetokenizer, StopStrings
from qwen25.inference.kernels import install_kernels
from qwen25.inference.sampling import Sampler, SamplingParams, choose, token_logprobs
from qwen25.model.kv_cache import KVCache

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"


class QueueFull(RuntimeError):
    """The engine's waiting queue is at `max_waiting`; try again later (a server answers 429/503)."""


@dataclass
class Completion:
    """One sample of a request, as far as it has got. `top_logprobs` has one {token: log-prob} per token when
    the request asked for them. `stop_reason`: the stop token id or stop string that ended it."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] | None = None
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class Delta:
    """What one step added to one sample: new tokens (none when only cancelled), their log-probs, the text now
    safe to show, and `finish_reason` once the sample is done. `completion` is the whole sample so far."""

    request_id: str
    index: int
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[dict[int, float]] | None
    text: str
    finish_reason: str | None
    completion: Completion


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    completions: list[Completion]
    time_to_first_token: float | None = None  # seconds from submit to the first generated token


@dataclass
class ContinuationScore:
    """log p of each continuation token given the context and the tokens before it; `greedy`: every token
    was the most likely one (lm-eval's `is_greedy`)."""

    logprobs: list[float]
    greedy: bool

    @property
    def total(self) -> float:
        return sum(self.logprobs)


@dataclass
class EngineMetrics:
    waiting: int  # requests queued, not started
    running: int  # requests being prefilled or decoded
    rows: int  # sequences in the decode batch
    prefill_tokens: int  # prompt tokens run through the model, since the engine started
    generated_tokens: int
    prefill_forwards: int
    decode_steps: int
    tokens_per_second: float  # generated tokens per second over the last `window` seconds
    mean_time_to_first_token: float | None  # seconds, over the latest 1000 requests that got a first token


class _Request:
    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, seed: int) -> None:
        self.id = request_id
        self.prompt = prompt
        self.params = params
        self.seed = seed
        self.arrival = time.perf_counter()
        self.first_token: float | None = None
        self.cache: KVCache | None = None  # its own cache while its prompt is prefilled
        self.prefilled = 0
        self.sequences: list[_Sequence] = []
        self.unfinished = params.n

    def output(self) -> RequestOutput:
        ttft = None if self.first_token is None else self.first_token - self.arrival
        return RequestOutput(self.id, self.prompt, [seq.completion for seq in self.sequences], ttft)


class _Sequence:
    """One sample being decoded: its sampler, text state, and the token it feeds at the next step."""

    def __init__(self, request: _Request, index: int, vocab_size: int, tokenizer: Decoder | None,
                 device: torch.device) -> None:
        p = request.params
        self.request = request
        self.sampler = Sampler(p, request.seed + index, request.prompt, vocab_size, device)
        self.detokenizer = IncrementalDetokenizer(tokenizer, p.skip_special_tokens) if tokenizer else None
        self.stops = StopStrings(p.stop) if p.stop else None
        self.completion = Completion(index, top_logprobs=[] if p.top_logprobs else None)
        self.pending = -1  # the last sampled token, fed at the next decode step


class Engine:
    """Continuous-batching inference over one model.

    tokenizer: gives text, stop strings and `str` prompts (anything with `decode(ids, skip_special_tokens)`;
      `encode(text)` for str prompts). Without one, results carry tokens and log-probs only.
    max_batch: most sequences decoded together (a request's n samples count n).
    prefill_chunk: most prompt tokens prefilled per step and per forward (None: whole prompts at once).
    max_waiting: bound of the waiting queue (`submit` raises QueueFull beyond it; None: unbounded).
    kernels: the decode matmul kernels, see `qwen25.inference.kernels.install_kernels` ("auto" measures once
      per machine; None: the QWEN25_KERNELS environment variable, else "auto").
    window: seconds over which `metrics().tokens_per_second` is taken.
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, max_batch: int = 16, prefill_chunk: int | None = 512,
                 max_waiting: int | None = None, kernels: str | None = None, window: float = 10.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive number of tokens or None, got {prefill_chunk}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_waiting = max_waiting
        self.window = window
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        inner = getattr(model, "model", None)
        # attention or RoPE chosen from the request's length: the batch's rows must keep one length
        self.uniform_rows = inner is not None and (inner.attention is not None or inner.rotary_emb.dynamic)
        self.kernels = install_kernels(model, kernels)
        self.cache = KVCache.for_model(model, 0, 256, rows=max_batch)
        self._rows: list[_Sequence] = []  # row i of the batch cache
        self._waiting: deque[_Request] = deque()
        self._prefilling: _Request | None = None
        self._lock = threading.Lock()  # guards the three below, which submit/cancel touch from other threads
        self._requests: dict[str, _Request] = {}  # submitted and not finished
        self._inbox: list[_Request] = []
        self._cancels: list[str] = []
        self._ids = itertools.count()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens generated) of recent steps
        self._ttft: deque[float] = deque(maxlen=1000)  # times to first token of the latest requests
        self.stats = {"prefill_tokens": 0, "generated_tokens": 0, "prefill_forwards": 0, "decode_steps": 0}

    # ---- requests --------------------------------------------------------------------------------

    def submit(self, prompt: Sequence[int] | str, params: SamplingParams | None = None,
               request_id: str | None = None) -> str:
        """Queue a request; returns its id. Thread-safe."""
        params = params or SamplingParams()
        ids = self._encode(prompt)
        if params.n > self.max_batch:
            raise ValueError(f"n = {params.n} samples exceed the engine's max_batch of {self.max_batch}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer: pass tokenizer= to the Engine")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        with self._lock:
            if self.max_waiting is not None and len(self._waiting) + len(self._inbox) >= self.max_waiting:
                raise QueueFull(f"{self.max_waiting} requests are already waiting")
            if request_id is None:
                request_id = next(r for r in (f"req-{i}" for i in self._ids) if r not in self._requests)
            elif request_id in self._requests:
                raise ValueError(f"request id {request_id!r} is already in use")
            request = _Request(request_id, ids, params, seed)
            self._requests[request_id] = request
            self._inbox.append(request)
        return request_id

    def _encode(self, prompt: Sequence[int] | str) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer: pass tokenizer= to the Engine, or give token ids")
            prompt = self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("every prompt needs at least one token")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt has ids outside the vocabulary of {self.vocab_size}: {bad[:5]}")
        return ids

    def cancel(self, request_id: str) -> None:
        """Stop a request: it leaves the queue or frees its rows at the next step, which reports its samples
        as "cancelled". Unknown or finished ids are ignored. Thread-safe."""
        with self._lock:
            self._cancels.append(request_id)

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._requests or self._cancels)

    def metrics(self) -> EngineMetrics:
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if t >= now - self.window]
        span = now - recent[0][0] if recent else 0.0
        with self._lock:
            waiting = len(self._waiting) + len(self._inbox)
            running = len(self._requests) - waiting
        return EngineMetrics(
            waiting=waiting, running=running, rows=len(self._rows),
            tokens_per_second=sum(n for _, n in recent) / span if span > 0 else 0.0,
            mean_time_to_first_token=sum(self._ttft) / len(self._ttft) if self._ttft else None, **self.stats)

    # ---- the step ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Delta]:
        """Take in submissions and cancellations, prefill within the step's budget, decode every running
        sequence once. Returns what each sample gained."""
        deltas: list[Delta] = []
        self._take_inbox(deltas)
        self._prefill(deltas)
        if self._rows:
            self._decode(deltas)
        return deltas

    def _take_inbox(self, deltas: list[Delta]) -> None:
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            cancels, self._cancels = self._cancels, []
            requests = [self._requests[r] for r in dict.fromkeys(cancels) if r in self._requests]
        for request in requests:
            if request in self._waiting:
                self._waiting.remove(request)
            if request is self._prefilling:
                self._prefilling = None
            self._remove_rows([i for i, seq in enumerate(self._rows) if seq.request is request])
            completions = ([seq.completion for seq in request.sequences] if request.sequences
                           else [Completion(i) for i in range(request.params.n)])
            for c in completions:
                if c.finish_reason is None:
                    c.finish_reason = CANCELLED
                    deltas.append(Delta(request.id, c.index, [], [], None, "", CANCELLED, c))
            self._finish(request)

    def _fits(self, request: _Request, rows: int) -> bool:
        """Whether the request's samples fit in the batch beside `rows` sequences."""
        if self.uniform_rows and rows:
            return False  # rows of one length: a batch starts together and nobody joins it
        return rows + request.params.n <= self.max_batch

    def _prefill(self, deltas: list[Delta]) -> None:
        """Prefill within the step's budget of `prefill_chunk` tokens (None: no limit). A long prompt under way
        continues chunk by chunk; otherwise the waiting prompts that fit whole go through one forward together;
        a prompt longer than the budget starts its chunks at the start of a step."""
        budget = self.prefill_chunk
        fresh = True  # nothing prefilled yet this step
        while (self._waiting or self._prefilling is not None) and (budget is None or budget > 0):
            if self._prefilling is None:
                group = self._whole_prompts(budget)
                if group:
                    self._prefill_together(group, deltas)
                    if budget is not None:
                        budget -= sum(len(r.prompt) for r in group)
                    fresh = False
                    continue
                head = self._waiting[0]
                if not fresh or not self._fits(head, len(self._rows)):
                    return  # it waits for a new step's budget, or for free rows
                self._waiting.popleft()
                head.cache = KVCache.for_model(self.model, 1, len(head.prompt))
                head.cache.prompt_length = len(head.prompt)  # per-request choices (dynamic YaRN) see all of it
                self._prefilling = head
            request = self._prefilling
            n = len(request.prompt) - request.prefilled
            n = n if budget is None else min(n, budget)
            ids = torch.tensor([request.prompt[request.prefilled:request.prefilled + n]], device=self.device)
            logits = self.model(ids, cache=request.cache, logits_to_keep=1).logits[:, -1]
            request.prefilled += n
            self._count_prefill(n)
            fresh = False
            if budget is not None:
                budget -= n
            if request.prefilled == len(request.prompt):
                self._prefilling = None
                self._join(request, logits, request.cache, 0, 0, deltas)

    def _whole_prompts(self, budget: int | None) -> list[_Request]:
        """Waiting requests, in order, whose whole prompts fit in the budget and whose samples fit in the batch;
        taken off the queue."""
        group: list[_Request] = []
        rows, tokens = len(self._rows), 0
        for request in self._waiting:
            if budget is not None and tokens + len(request.prompt) > budget:
                break
            if rows + request.params.n > self.max_batch:
                break
            if self.uniform_rows and (self._rows or (group and len(request.prompt) != len(group[0].prompt))):
                break  # rows of one length: an empty batch, and prompts of the first one's length
            group.append(request)
            rows += request.params.n
            tokens += len(request.prompt)
        for _ in group:
            self._waiting.popleft()
        return group

    def _prefill_together(self, group: list[_Request], deltas: list[Delta]) -> None:
        """Whole prompts in one forward, left-padded (positions count real tokens, so each row gets what it
        would alone); each then joins from its row of the temporary cache."""
        cache, out, width = self._prefill_left_padded([r.prompt for r in group])
        self._count_prefill(sum(len(r.prompt) for r in group))
        for row, request in enumerate(group):
            request.prefilled = len(request.prompt)
            self._join(request, out.logits[row:row + 1, -1], cache, row, width - len(request.prompt), deltas)

    def _count_prefill(self, tokens: int) -> None:
        self.stats["prefill_tokens"] += tokens
        self.stats["prefill_forwards"] += 1

    def _join(self, request: _Request, logits: torch.Tensor, cache: KVCache, row: int, start: int,
              deltas: list[Delta]) -> None:
        """Sample each sample's first token from the prompt's last logits [1, vocab]; the unfinished samples
        join the batch as copies of the prompt's keys/values: `cache` row `row` from slot `start` on."""
        n = request.params.n
        request.sequences = [_Sequence(request, i, self.vocab_size, self.tokenizer, self.device) for i in range(n)]
        request.cache = None
        if request.params.max_new_tokens == 0:
            for seq in request.sequences:
                seq.completion.finish_reason = LENGTH
                deltas.append(Delta(request.id, seq.completion.index, [], [], None, "", LENGTH, seq.completion))
            self._finish(request)
            return
        joined = self._sample(request.sequences, logits.expand(n, -1).contiguous(), deltas)
        if joined:
            self.cache.append_rows(cache, row, copies=len(joined), start=start)
            self._rows.extend(joined)

    def _decode(self, deltas: list[Delta]) -> None:
        ids = torch.tensor([[seq.pending] for seq in self._rows], device=self.device)
        logits = self.model(ids, cache=self.cache, logits_to_keep=1).logits[:, -1]
        self.stats["decode_steps"] += 1
        running = set(map(id, self._sample(self._rows, logits, deltas)))
        self._remove_rows([i for i, seq in enumerate(self._rows) if id(seq) not in running])

    def _sample(self, sequences: list[_Sequence], logits: torch.Tensor, deltas: list[Delta]) -> list[_Sequence]:
        """Choose, record and emit one token per sequence; returns the sequences still running."""
        tokens = choose(logits, [seq.sampler for seq in sequences])
        logprobs, tops = token_logprobs(logits, tokens, [seq.sampler.params.top_logprobs for seq in sequences])
        now = time.perf_counter()
        self._recent.append((now, len(sequences)))
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()
        self.stats["generated_tokens"] += len(sequences)
        running = []
        for seq, token, logprob, top in zip(sequences, tokens.tolist(), logprobs, tops):
            request = seq.request
            if request.first_token is None:
                request.first_token = now
                self._ttft.append(now - request.arrival)
            deltas.append(self._record(seq, token, logprob, top))
            if seq.completion.finish_reason is None:
                seq.pending = token
                running.append(seq)
            else:
                request.unfinished -= 1
                if request.unfinished == 0:
                    self._finish(request)
        return running

    def _record(self, seq: _Sequence, token: int, logprob: float, top: dict[int, float] | None) -> Delta:
        p, c = seq.sampler.params, seq.completion
        seq.sampler.observe(token)
        c.token_ids.append(token)
        c.logprobs.append(logprob)
        if c.top_logprobs is not None:
            c.top_logprobs.append(top)
        if token in p.stop_token_ids:
            c.finish_reason, c.stop_reason = STOP, token
        elif len(c.token_ids) >= p.max_new_tokens:
            c.finish_reason = LENGTH
        text = ""
        if seq.detokenizer is not None:
            piece = seq.detokenizer.add([token]) if c.stop_reason is None else ""  # a stop token adds no text
            if c.finish_reason is not None:
                piece += seq.detokenizer.flush()
            if seq.stops is not None:
                text, hit = seq.stops.feed(piece, final=c.finish_reason is not None)
                if hit and c.stop_reason is None:
                    c.finish_reason, c.stop_reason = STOP, seq.stops.found
            else:
                text = piece
            c.text += text
        return Delta(seq.request.id, c.index, [token], [logprob], None if top is None else [top], text,
                     c.finish_reason, c)

    def _remove_rows(self, rows: list[int]) -> None:
        for row in sorted(rows, reverse=True):  # the row moved into a gap is a later one, still running
            moved = self.cache.remove_row(row)
            if moved is not None:
                self._rows[row] = self._rows[moved]
            self._rows.pop()

    def _finish(self, request: _Request) -> None:
        request.cache = None
        with self._lock:
            self._requests.pop(request.id, None)

    # ---- driving the engine for one caller ----------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int] | str],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run these prompts to completion (each with its own params when a list is given); outputs in order."""
        if isinstance(params, SamplingParams) or params is None:
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        self._check_idle()
        ids = [self.submit(prompt, p) for prompt, p in zip(prompts, params)]
        with self._lock:  # keep our own references: requests leave the engine's table when they finish
            requests = [self._requests[r] for r in ids]
        while self.has_work:
            self.step()
        return [r.output() for r in requests]

    def stream(self, prompt: Sequence[int] | str, params: SamplingParams | None = None) -> Iterator[Delta]:
        """Run one request, yielding each step's deltas of its samples as they come. Closing the iterator
        early cancels the request."""
        self._check_idle()
        request_id = self.submit(prompt, params)
        done = False
        try:
            while self.has_work:
                yield from self.step()
            done = True
        finally:
            if not done:
                self.cancel(request_id)
                self.step()

    def _check_idle(self) -> None:
        if self.has_work:
            raise RuntimeError("generate/stream drive the engine alone; this engine has requests of other "
                               "callers (use submit/step)")

    # ---- scoring -----------------------------------------------------------------------------------

    def score(self, context: Sequence[int], continuations: Sequence[Sequence[int]],
              max_tokens_per_forward: int = 256) -> list[ContinuationScore]:
        """log p(continuation | context) of each continuation (lm-eval's `loglikelihood`): `score_many` with one
        context."""
        return self.score_many([(context, continuations)], max_tokens_per_forward)[0]

    @torch.inference_mode()
    def score_many(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                   max_tokens_per_forward: int = 256, max_context_tokens: int = 2048) -> list[list[ContinuationScore]]:
        """Scores of every (context, continuations) request, in order. Each context is prefilled once and its
        continuations run on copies of its cached keys/values, so a multiple-choice question costs its context
        plus its answers, never the context once per answer. Contexts are prefilled several at a time (sorted
        by length, left-padded, up to `max_context_tokens` padded tokens per forward) and the continuations of
        those contexts run together on a cache whose rows keep their own context's length: a forward does the
        work of many questions, which is what keeps a CPU's matmuls efficient. `max_tokens_per_forward`:
        continuation tokens per forward (each takes [tokens, vocab] fp32 logits). Models whose attention or
        RoPE depends on the request's length (`uniform_rows`) take one context per forward."""
        encoded = []
        for n, (context, continuations) in enumerate(requests):
            where = "" if len(requests) == 1 else f"request {n}: "
            context = self._encode(context)
            conts = [[int(t) for t in c] for c in continuations]
            if not conts or any(not c for c in conts):
                raise ValueError(f"{where}every continuation needs at least one token")
            bad = [t for c in conts for t in c if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"{where}continuation has ids outside the vocabulary of {self.vocab_size}: "
                                 f"{bad[:5]}")
            encoded.append((context, conts))
        results: list[list[ContinuationScore | None]] = [[None] * len(c) for _, c in encoded]
        group: list[int] = []
        for n in sorted(range(len(encoded)), key=lambda n: len(encoded[n][0])):
            width = len(encoded[n][0])  # the longest so far: contexts come shortest first
            if group and (self.uniform_rows or (len(group) + 1) * width > max_context_tokens):
                self._score_contexts(encoded, group, results, max_tokens_per_forward)
                group = []
            group.append(n)
        if group:
            self._score_contexts(encoded, group, results, max_tokens_per_forward)
        return results  # type: ignore[return-value]

    def _prefill_contexts(self, contexts: list[list[int]]) -> tuple[KVCache, torch.Tensor, list[int]]:
        """(cache, last logits [G, vocab] fp32, left padding per row) of the contexts, left-padded in one forward
        (a lone context in chunks of `prefill_chunk`)."""
        if len(contexts) == 1:
            context = contexts[0]
            cache = KVCache.for_model(self.model, 1, len(context))
            cache.prompt_length = len(context)
            step = self.prefill_chunk or len(context)
            for start in range(0, len(context), step):
                ids = torch.tensor([context[start:start + step]], device=self.device)
                last = self.model(ids, cache=cache, logits_to_keep=1).logits[:, -1].float()
            return cache, last, [0]
        cache, out, width = self._prefill_left_padded(contexts)
        return cache, out.logits[:, -1].float(), [width - len(c) for c in contexts]

    def _prefill_left_padded(self, prompts: list[list[int]]):
        """(cache, model output with the last position's logits, width) of whole prompts in one forward,
        left-padded to the longest (positions count real tokens, so each row gets what it would alone)."""
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        cache = KVCache.for_model(self.model, len(prompts), width)
        cache.prompt_length = width
        padded = any(len(p) != width for p in prompts)
        out = self.model(ids, attention_mask=mask if padded else None, cache=cache, logits_to_keep=1)
        return cache, out, width

    def _score_contexts(self, encoded: list[tuple[list[int], list[list[int]]]], group: list[int],
                        results: list[list[ContinuationScore | None]], max_tokens: int) -> None:
        """Prefill the group's contexts together, then score all their continuations, similar lengths sharing
        a forward."""
        cache, last, pads = self._prefill_contexts([encoded[n][0] for n in group])
        rows = sorted(((r, j) for r, n in enumerate(group) for j in range(len(encoded[n][1]))),
                      key=lambda rj: len(encoded[group[rj[0]]][1][rj[1]]))
        batch: list[tuple[int, int]] = []
        for r, j in rows:
            if batch and (len(batch) + 1) * len(encoded[group[r]][1][j]) > max_tokens:
                self._score_continuations(encoded, group, cache, last, pads, batch, results)
                batch = []
            batch.append((r, j))
        self._score_continuations(encoded, group, cache, last, pads, batch, results)

    def _score_continuations(self, encoded, group: list[int], context: KVCache, last: torch.Tensor,
                             pads: list[int], batch: list[tuple[int, int]],
                             results: list[list[ContinuationScore | None]]) -> None:
        """Score continuation j of the group's context r for each (r, j) in `batch`, on copies of the contexts'
        cached rows (each row at its own context's length); `last`: the contexts' last logits."""
        conts = [encoded[group[r]][1][j] for r, j in batch]
        width = max(len(c) for c in conts)
        rest = None  # [B, width - 1, vocab] in the model's dtype: the logits after each continuation token
        if width > 1:
            cache = KVCache.for_model(self.model, 0, context.length + width, rows=len(batch))
            for r, _ in batch:
                cache.append_rows(context, r, start=pads[r])
            # right-padded: in a causal model no position sees the padding after it
            ids = torch.tensor([c[:-1] + [0] * (width - len(c)) for c in conts], device=self.device)
            rest = self.model(ids, cache=cache).logits
        for b, ((r, j), cont) in enumerate(zip(batch, conts)):
            # one continuation's positions at a time, in fp32: a few MB that stay in cache, never the padding
            lg = last[r:r + 1]
            if len(cont) > 1:
                lg = torch.cat([lg, rest[b, :len(cont) - 1].float()])
            target = torch.tensor(cont, device=self.device)
            picked = lg.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(lg, dim=-1)
            greedy = bool((lg.argmax(-1) == target).all())
            results[group[r]][j] = ContinuationScore(picked.tolist(), greedy)
