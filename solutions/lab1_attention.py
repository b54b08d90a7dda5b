"""Lab 1: scaled dot-product attention with a causal mask.

Contract (the checkers rely on it exactly):

causal_mask(T, device=None) -> BoolTensor of shape (T, T)
    True on and below the diagonal: query i may attend to key j when j <= i.

scaled_dot_product_attention(q, k, v, mask=None) -> (out, weights)
    q: (..., Tq, d_k)   k: (..., Tk, d_k)   v: (..., Tk, d_v)   (any Tq, Tk >= 1)
    mask: optional bool tensor broadcastable to (..., Tq, Tk); True = may attend.
        One (Tq, Tk) mask for everything, or one per batch item, (B, Tq, Tk) or
        (B, 1, Tq, Tk), or per head: use it as given, by broadcasting.
    out: (..., Tq, d_v)   weights: (..., Tq, Tk), each row sums to 1.
    Scale the scores by 1 / sqrt(d_k) and apply the mask *before* the softmax.
    q, k, v may be non-contiguous views (lab 2 passes transposed ones), and they
    and the mask must be left unchanged (no in-place operations on arguments).

Rules: write the maths yourself. Built-in attention functions and modules
(torch's fused attention, its multi-head attention and transformer layers) are
rejected by the grader. Run `python grader.py lab1` to check your work.
"""
import math

import torch


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool mask, True where key j is visible to query i (j <= i)."""
    # BEGIN SOLUTION: return a (T, T) bool tensor on `device`, True on and below the diagonal (see torch.tril)
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))
    # END SOLUTION


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    """softmax(q @ k^T / sqrt(d_k), masked) @ v; returns (out, weights)."""
    # BEGIN SOLUTION: scores = q @ k^T / sqrt(d_k); masked_fill(~mask, -inf); softmax over keys; out = weights @ v
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # hidden keys get zero weight
    weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk), rows sum to 1
    out = weights @ v  # (..., Tq, d_v)
    return out, weights
    # END SOLUTION
