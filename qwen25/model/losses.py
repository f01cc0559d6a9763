"""Cross-entropy over the LM head without materialising the logits.

The LM head plus cross-entropy is the largest single cost of training a small-vocabulary-heavy model: the
[tokens, vocab] logits are written in the matmul dtype, copied to fp32, passed through log-softmax, and
their gradient built again in backward, each a full pass over memory. Here the rows are processed in
chunks that fit in cache: for each chunk the logits, the log-sum-exp, the loss and the gradient
(softmax - one-hot) are computed at once, and the gradients with respect to the hidden states and the head
weight are accumulated during the forward pass; backward only scales them. Same result as
`F.cross_entropy(h @ W.T, labels, reduction="sum")`, computed in fp32.
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int,
                compute_dtype: torch.dtype) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        h_all = hidden.to(compute_dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(h_all) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h = h_all[start:start + chunk_rows]
            y = labels[start:start + chunk_rows]
            valid = y != -100
            target = torch.where(valid, y, 0)
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            loss += torch.where(valid, lse - picked, 0.0).sum()
            if need_grad:
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place in the chunk's buffer
                grad.scatter_add_(1, target[:, None], torch.full_like(picked, -1.0)[:, None])
                grad.mul_(valid[:, None])
                grad = grad.to(compute_dtype)
                if grad_h is not None:
                    grad_h[start:start + chunk_rows] = grad @ w
                if grad_w is not None:
                    grad_w += (grad.t() @ h).float()
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
                         chunk_rows: int = 1024) -> torch.Tensor:
    """sum over rows with label != -100 of CE(hidden @ weight.T, label); hidden [N, H], weight [V, H].

    Under autocast the matmuls run in the autocast dtype, like an autocast `nn.Linear` would."""
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk_rows, compute_dtype)
