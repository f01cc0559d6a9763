"""Losses over the LM head without materialising the logits: summed cross-entropy and per-token log-probs.

The LM head plus cross-entropy is the largest single cost of training a small model with a large
vocabulary: the [tokens, vocab] logits are written in the matmul dtype, copied to fp32, passed through
log-softmax, and their gradient built again in backward, each a full pass over memory. Here rows are
processed in chunks through two reused buffers: for each chunk the logits, the log-sum-exp, the loss and
the gradient (softmax - one-hot) are computed at once; the gradient with respect to the hidden states is
finished per chunk, and the one with respect to the head weight is one matmul over the stored logit
gradients (kept in the matmul dtype, half the size of fp32 logits). Backward only scales them. Same result
as `F.cross_entropy(h @ W.T, labels, reduction="sum")`, with the softmax in fp32.
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int,
                compute_dtype: torch.dtype) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        h_all = hidden.to(compute_dtype)
        n, vocab = hidden.shape[0], weight.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h_all) if need_h else None
        # d loss / d logits for every row, kept in the matmul dtype for one weight-gradient matmul at the end
        grad_logits = torch.empty((n, vocab), dtype=compute_dtype, device=hidden.device) if need_w else None
        # two chunk buffers reused across chunks: fresh multi-MB allocations page-fault on every touch on CPU
        # `raw` holds matmul-dtype logits (bf16 runs) or, when no weight gradient is stored, the chunk's gradient
        need_raw = compute_dtype != torch.float32 or (need_h and not need_w)
        raw = torch.empty((min(chunk_rows, n), vocab), dtype=compute_dtype, device=hidden.device) if need_raw else None
        work = torch.empty((min(chunk_rows, n), vocab), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            h = h_all[start:start + chunk_rows]
            rows = h.shape[0]
            y = labels[start:start + chunk_rows]
            valid = y != -100
            target = torch.where(valid, y, 0)[:, None]
            logits = work[:rows]
            if compute_dtype == torch.float32:
                torch.mm(h, w.t(), out=logits)
            else:
                torch.mm(h, w.t(), out=raw[:rows])
                logits.copy_(raw[:rows])
            top = logits.amax(dim=-1, keepdim=True)
            logits.sub_(top)
            picked = logits.gather(1, target).squeeze(1)
            logits.exp_()
            total = logits.sum(dim=-1)
            loss += torch.where(valid, total.log() - picked, 0.0).sum()
            if need_h or need_w:
                logits.div_(total[:, None])  # softmax
                logits.scatter_add_(1, target, torch.full_like(picked, -1.0)[:, None])
                logits.mul_(valid[:, None])
                grad = grad_logits[start:start + rows] if need_w else raw[:rows]
                grad.copy_(logits)
                if need_h:
                    torch.mm(grad, w, out=grad_h[start:start + rows])
        grad_w = (grad_logits.t() @ h_all).float() if need_w else None
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        gh = None if grad_h is None else (grad_h * grad_output).to(h_dtype)
        gw = None if grad_w is None else (grad_w * grad_output).to(w_dtype)
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """sum over rows with label != -100 of CE(hidden @ weight.T, label); hidden [N, H], weight [V, H].

    Under autocast the matmuls run in the autocast dtype, like an autocast `nn.Linear` would."""
    if chunk_rows is None:
        chunk_rows = 256
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk_rows, compute_dtype)


class _LinearLogProbs(torch.autograd.Function):
    """log p(label) per row through the LM head, in chunks, never holding [N, vocab].

    Unlike the summed cross-entropy above, the weight each row's log-prob gets in the loss is unknown until
    backward (a DPO or GRPO loss mixes them), so forward keeps only the per-row log-sum-exp (fp32) and backward
    recomputes each chunk's logits: d logp_i / d logits_i = onehot(y_i) - softmax_i, scaled by the incoming grad.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int,
                compute_dtype: torch.dtype) -> torch.Tensor:
        w, h_all = weight.to(compute_dtype), hidden.to(compute_dtype)
        n = hidden.shape[0]
        out = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            y = labels[start:start + chunk_rows]
            valid = y != -100
            logits = (h_all[start:start + chunk_rows] @ w.t()).float()
            chunk_lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, torch.where(valid, y, 0)[:, None]).squeeze(1)
            out[start:start + chunk_rows] = torch.where(valid, picked - chunk_lse, 0.0)
            lse[start:start + chunk_rows] = chunk_lse
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_rows, ctx.compute_dtype = chunk_rows, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w, h_all = weight.to(ctx.compute_dtype), hidden.to(ctx.compute_dtype)
        grad_h = torch.empty_like(h_all) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            h = h_all[start:start + ctx.chunk_rows]
            y = labels[start:start + ctx.chunk_rows]
            valid = y != -100
            g = torch.where(valid, grad_out[start:start + ctx.chunk_rows].float(), 0.0)
            grad = (h @ w.t()).float().sub_(lse[start:start + ctx.chunk_rows, None]).exp_().mul_(-g[:, None])
            grad.scatter_add_(1, torch.where(valid, y, 0)[:, None], g[:, None])
            grad = grad.to(ctx.compute_dtype)
            if need_h:
                torch.mm(grad, w, out=grad_h[start:start + len(h)])
            if need_w:
                grad_w += (grad.t() @ h).float()
        return (None if grad_h is None else grad_h.to(hidden.dtype),
                None if grad_w is None else grad_w.to(weight.dtype), None, None, None)


def linear_log_probs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     chunk_rows: int = 256) -> torch.Tensor:
    """[N] log softmax(hidden @ weight.T)[label] in fp32 (0 where label == -100); hidden [N, H], weight [V, H].

    Differentiable with respect to hidden and weight; under autocast the matmuls run in the autocast dtype."""
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _LinearLogProbs.apply(hidden, weight, labels, chunk_rows, compute_dtype)
