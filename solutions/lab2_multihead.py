"""Lab 2: multi-head causal self-attention, built on lab 1.

Contract:

class MultiHeadAttention(nn.Module)
    __init__(self, d_model, n_heads, dropout=0.0)
        self.n_heads, self.d_head (= d_model // n_heads), kept on the instance:
        instances with other settings are independent
        dropout: the probability of an nn.Dropout in forward, active in
        training mode only (none at all at 0)
        self.qkv  = nn.Linear(d_model, 3 * d_model)   fused projection
        self.proj = nn.Linear(d_model, d_model)       output projection
        Layout of qkv's output: features [0, D) are queries, [D, 2D) keys,
        [2D, 3D) values; head h owns features h*d_head:(h+1)*d_head of each.
    forward(x): (B, T, D) -> (B, T, D), causal self-attention using lab 1;
        backward reaches every parameter, the query, key and value rows of
        qkv alike.

mha = MultiHeadAttention(d_model=16, n_heads=4)   (module level, dropout 0)

Rules: no built-in attention functions or modules. Run `python grader.py lab2`.
"""
import torch
import torch.nn as nn

from lab1_attention import causal_mask, scaled_dot_product_attention


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        # BEGIN SOLUTION: create self.qkv = nn.Linear(d_model, 3 * d_model) and self.proj = nn.Linear(d_model, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)  # q, k, v in one matmul
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        # BEGIN SOLUTION: split qkv into q, k, v; reshape each to (B, n_heads, T, d_head); attend with a causal mask; merge heads; project
        q, k, v = self.qkv(x).split(D, dim=-1)  # each (B, T, D)
        # (B, T, D) -> (B, n_heads, T, d_head): each head attends on its own slice
        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        out, _ = scaled_dot_product_attention(q, k, v, causal_mask(T, device=x.device))  # (B, n_heads, T, d_head)
        out = out.transpose(1, 2).contiguous().view(B, T, D)  # heads side by side again
        return self.dropout(self.proj(out))
        # END SOLUTION


mha = MultiHeadAttention(d_model=16, n_heads=4)
