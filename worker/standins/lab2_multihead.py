"""The pack's stand-in for lab 2, used when a later lab is graded on its own.

It meets lab 2's contract (qkv and proj, the fused [queries | keys | values] layout) with torch's fused
multi-head attention, which a lab file may not call. It is the grader's code, not a model answer.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(1)
        hidden = ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))  # True: may not attend
        x = x.transpose(0, 1)  # torch's multi-head attention takes (T, B, D)
        out, _ = F.multi_head_attention_forward(
            x, x, x, self.qkv.in_features, self.n_heads, self.qkv.weight, self.qkv.bias, None, None, False,
            self.dropout.p, self.proj.weight, self.proj.bias, training=self.training, need_weights=False,
            attn_mask=hidden, is_causal=True)
        return out.transpose(0, 1)


mha = MultiHeadAttention(d_model=16, n_heads=4)
