"""Cross-entropy over the LM head without materialising the logits.

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
