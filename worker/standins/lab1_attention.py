"""The pack's stand-in for lab 1, used when a later lab is graded on its own.

It meets lab 1's contract with torch's fused attention. It is the grader's code, not a model answer: a lab file
that calls torch's fused attention is rejected by the grader (see labs/lab1_attention.py's rules).
"""
import torch
import torch.nn.functional as F


def causal_mask(T: int, device=None) -> torch.Tensor:
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # the weights are the same attention applied to the identity matrix (weights @ I == weights)
    eye = torch.eye(k.size(-2), dtype=q.dtype, device=q.device).expand(*k.shape[:-1], k.size(-2))
    return out, F.scaled_dot_product_attention(q, k, eye, attn_mask=mask)
