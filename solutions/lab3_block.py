"""Lab 3: a pre-norm transformer block.

Contract:

class MLP(nn.Module)
    __init__(self, d_model, expansion=4): self.fc = nn.Linear(D, expansion * D),
        a GELU (exact or tanh approximation), self.proj = nn.Linear(expansion * D, D)
    forward(x): (B, T, D) -> (B, T, D)

class TransformerBlock(nn.Module)
    __init__(self, d_model, n_heads, dropout=0.0): self.ln1, self.attn (lab 2's
        MultiHeadAttention), self.ln2, self.mlp
        ln1, ln2: LayerNorms over d_model (nn.LayerNorm, any eps: the checks
        use the eps each one holds)
        dropout: passed on to attn and used in forward, in training mode only
    forward(x): pre-norm residuals, shape preserved:
        x = x + attn(ln1(x))
        x = x + mlp(ln2(x))

Run `python grader.py lab3`.
"""
import torch
import torch.nn as nn

from lab2_multihead import MultiHeadAttention


class MLP(nn.Module):
    def __init__(self, d_model: int, expansion: int = 4):
        super().__init__()
        # BEGIN SOLUTION: create self.fc = nn.Linear(d_model, expansion * d_model), a GELU, and self.proj back to d_model
        self.fc = nn.Linear(d_model, expansion * d_model)
        self.act = nn.GELU()
        self.proj = nn.Linear(expansion * d_model, d_model)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION: fc, then GELU, then proj
        return self.proj(self.act(self.fc(x)))  # (B, T, 4D) inside, (B, T, D) out
        # END SOLUTION


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        # BEGIN SOLUTION: create self.ln1, self.attn (MultiHeadAttention), self.ln2 and self.mlp (MLP)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)
        self.dropout = nn.Dropout(dropout)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION: pre-norm: x = x + attn(ln1(x)), then x = x + mlp(ln2(x))
        x = x + self.attn(self.ln1(x))  # tokens talk to each other
        x = x + self.dropout(self.mlp(self.ln2(x)))  # each token thinks on its own
        return x
        # END SOLUTION
